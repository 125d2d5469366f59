#!/bin/sh
# send.sh - the demo profile's message (service demo-send): alice's agent
# hands a message for bob to its connector's local API; it goes through the
# edge proxy, a gateway, relay-session, delivery and a gateway again to bob's
# connector, which hands it to bob's hook (docker compose logs hook-bob).
# Then the message's hop trace is printed. Exit 0 once bob's hook answered.
set -u
CID="demo-$(date +%s)-$$"
echo "demo: alice -> bob through alice's connector, correlation ID $CID"
curl -sS -X POST http://connector-alice:8090/v1/outbound/bob \
    -H "X-Claw-Correlation-Id: $CID" -H 'Content-Type: application/json' \
    -d '{"text":"hello bob, from alice (docker compose demo)"}'
echo
i=0
until clawrelay trace "$CID" 2>/dev/null | grep -q hook_answered; do
	i=$((i + 1))
	if [ $i -gt 150 ]; then
		echo "demo: bob's hook has not answered after 30 s; the trace so far:"
		clawrelay trace "$CID"
		exit 1
	fi
	sleep 0.2
done
sleep 0.5	# the last hop events (delivered, processed) follow within milliseconds
echo "demo: clawrelay trace $CID"
clawrelay trace "$CID"
echo "demo: bob's hook logged it: docker compose logs hook-bob"
