#!/bin/sh
# demo.sh - start the whole relay as local processes, register two agents,
# relay one message from alice to bob, print its trace, keep running until
# Ctrl-C (or `make stop`). State lives in run/demo/ (git-ignored).
#   sh scripts/demo.sh        start
#   sh scripts/demo.sh stop   stop what a previous start left running
set -u
cd "$(dirname "$0")/.."
ROOT=$(pwd)
RUN=$ROOT/run/demo
BIN=$ROOT/bin
PIDS=$RUN/pids
NATS_PORT=${DEMO_NATS_PORT:-4222}
GW_PORT=${DEMO_GATEWAY_PORT:-8080}

stop_all() {
	[ -f "$PIDS" ] || return 0
	# newest first, so connectors go before the gateway and NATS goes last
	tac "$PIDS" | while read -r pid name; do
		if kill -0 "$pid" 2>/dev/null; then
			kill -TERM "$pid" 2>/dev/null
			i=0
			while kill -0 "$pid" 2>/dev/null && [ $i -lt 50 ]; do sleep 0.1; i=$((i + 1)); done
			kill -0 "$pid" 2>/dev/null && kill -KILL "$pid" 2>/dev/null
			echo "stopped $name ($pid)"
		fi
	done
	rm -f "$PIDS"
}

if [ "${1:-}" = "stop" ]; then
	stop_all
	exit 0
fi


if [ -f "$PIDS" ]; then
	echo "demo: a demo seems to be running already (run 'make stop' first)" >&2
	exit 1
fi
for p in $NATS_PORT $GW_PORT 8081 8082 8083 8084 8090 8091 9001 9002; do
	if bash -c "echo >/dev/tcp/127.0.0.1/$p" 2>/dev/null; then
		echo "demo: port $p on 127.0.0.1 is in use; stop what uses it (or set DEMO_NATS_PORT / DEMO_GATEWAY_PORT)" >&2
		exit 1
	fi
done

rm -rf "$RUN"
mkdir -p "$RUN/logs" "$RUN/keys"
trap 'echo; echo "demo: stopping"; stop_all; exit 0' INT TERM

export CLAWRELAY_NATS_URL=nats://127.0.0.1:$NATS_PORT
export CLAWRELAY_GATEWAY_URL=http://127.0.0.1:$GW_PORT

start() { # name port cmd... (env already set by caller)
	name=$1; shift
	"$@" >>"$RUN/logs/$name.log" 2>&1 &
	echo "$! $name" >>"$PIDS"
}
wait_ready() { # name port
	i=0
	until curl -fs "http://127.0.0.1:$2/readyz" >/dev/null 2>&1; do
		i=$((i + 1))
		if [ $i -gt 200 ]; then
			echo "demo: $1 did not become ready; its log:" >&2
			tail -20 "$RUN/logs/$1.log" >&2
			stop_all; exit 1
		fi
		sleep 0.1
	done
	echo "  $1 ready on :$2"
}

echo "demo: starting nats-server (JetStream) on 127.0.0.1:$NATS_PORT"
start nats nats-server -js -a 127.0.0.1 -p "$NATS_PORT" -sd "$RUN/nats"
i=0; until bash -c "echo >/dev/tcp/127.0.0.1/$NATS_PORT" 2>/dev/null; do
	i=$((i + 1)); [ $i -gt 100 ] && { echo "demo: nats-server did not start" >&2; stop_all; exit 1; }
	sleep 0.1
done

echo "demo: starting the services"
port=8081
for svc in relay-session delivery notifier metrics-collector; do
	CLAWRELAY_HTTP_PORT=$port CLAWRELAY_DATA_DIR=$RUN/data/$svc \
	    start "$svc" "$BIN/clawrelay-$svc"
	wait_ready "$svc" $port
	port=$((port + 1))
done
CLAWRELAY_HTTP_PORT=$GW_PORT start gateway "$BIN/clawrelay-gateway"
wait_ready gateway "$GW_PORT"

echo "demo: registering agents alice and bob (keys in run/demo/keys)"
for a in alice bob; do
	"$BIN/clawrelay" keygen --out "$RUN/keys/$a" >/dev/null || { stop_all; exit 1; }
	"$BIN/clawrelay" agent add "$a" --pubkey "$RUN/keys/$a.pub" || { stop_all; exit 1; }
done
"$BIN/clawrelay" trust add alice bob && "$BIN/clawrelay" trust add bob alice || { stop_all; exit 1; }

echo "demo: starting the agents' hooks and connectors"
start hook-alice "$BIN/clawrelay-demo-hook" --port 9001 --name alice
start hook-bob "$BIN/clawrelay-demo-hook" --port 9002 --name bob
cport=8090
for a in alice bob; do
	hport=$([ $a = alice ] && echo 9001 || echo 9002)
	CLAWRELAY_AGENT_ID=$a CLAWRELAY_KEY_FILE=$RUN/keys/$a.key CLAWRELAY_HOOK_URL=http://127.0.0.1:$hport/hook \
	CLAWRELAY_HTTP_PORT=$cport CLAWRELAY_DATA_DIR=$RUN/data/connector-$a \
	    start "connector-$a" "$BIN/clawrelay-connector"
	wait_ready "connector-$a" $cport
	cport=$((cport + 1))
done
i=0
until grep -q reconnect_ack "$RUN/logs/connector-bob.log" 2>/dev/null; do
	i=$((i + 1)); [ $i -gt 100 ] && break; sleep 0.1
done

CID="demo-$(date +%s)"
echo
echo "demo: alice's agent sends a message to bob through its connector (correlation ID $CID):"
echo "  curl -X POST http://127.0.0.1:8090/v1/outbound/bob -H 'X-Claw-Correlation-Id: $CID' -d '{\"text\":\"hello bob\"}'"
curl -s -X POST http://127.0.0.1:8090/v1/outbound/bob -H "X-Claw-Correlation-Id: $CID" \
    -H 'Content-Type: application/json' -d '{"text":"hello bob"}'
echo
i=0
until grep -q "$CID" "$RUN/logs/hook-bob.log" 2>/dev/null; do
	i=$((i + 1)); [ $i -gt 100 ] && { echo "demo: bob's hook did not get it (logs in run/demo/logs)"; break; }
	sleep 0.1
done
echo
echo "demo: bob's hook received:"
grep "$CID" "$RUN/logs/hook-bob.log"
sleep 0.5
echo
echo "demo: clawrelay status $CID"
"$BIN/clawrelay" status "$CID"
echo
echo "demo: clawrelay trace $CID"
"$BIN/clawrelay" trace "$CID"
cat <<EOT

demo: the relay is running. Try:
  curl -X POST http://127.0.0.1:8091/v1/outbound/alice -d 'hi alice'      # bob -> alice
  bin/clawrelay send --from alice --key run/demo/keys/alice.key bob --data 'signed POST'
  bin/clawrelay trace <correlation-id>
  curl http://127.0.0.1:8081/v1/status                                     # relay-session
Logs: run/demo/logs/. Ctrl-C here (or 'make stop' elsewhere) stops everything.
EOT
tail -n 0 -f "$RUN/logs/hook-alice.log" "$RUN/logs/hook-bob.log" &
echo "$! tail" >>"$PIDS"
while :; do sleep 1; [ -f "$PIDS" ] || exit 0; done
