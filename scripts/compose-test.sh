#!/bin/bash
# compose-test.sh - the Docker Compose test (make compose-test; issue 5).
#
#  1. base image (deploy/build-base-image.sh, skipped when the tag exists),
#     images built, the stack up with delivery=3 relay-session=2 notifier=2
#     gateway=2 and the demo profile; every health check passes; the demo
#     message is relayed and traced; relay-session replicas split the
#     partitions; TLS and WebSocket upgrades through the edge proxy.
#  2. From the host, through the published NATS port and entry point:
#     agents registered, messages sent to a connector agent (bob) and a
#     webhook agent (web), traced end to end. One relay-session replica is
#     killed (docker kill) while messages flow: every accepted message
#     arrives once. `compose restart nats` while messages flow: the stack
#     recovers by itself and every accepted message arrives once.
#  3. Right after the killed replica got its partitions back, a message
#     with a 2 s TTL to an agent that is offline is accepted within 3 s, and
#     `clawrelay follow` on the host sees its expiry notice.
#  4. `down` leaves no container; the data is still there (volumes) until
#     `down -v`, which removes it.
#  5. The cluster profile (deploy/cluster.env): three NATS nodes, every KV
#     bucket with 3 replicas, a message relayed while one node is stopped.
#
# Uses its own compose project names (clawrelay-ctest, clawrelay-ctest-cluster)
# and host ports on 127.0.0.1 (14222 NATS, 18080 HTTP, 18443 HTTPS, or free
# ones nearby); removes what it started. Settings: COMPOSE (the compose
# command; default `docker compose` if it works, else `docker-compose`),
# COMPOSE_TEST_CLUSTER=0 skips step 5, COMPOSE_TEST_KEEP=1 leaves the stack up.
set -u
cd "$(dirname "$0")/.."
ROOT=$(pwd)
BIN=$ROOT/bin
RUN=$ROOT/run/compose-test
PROJECT=clawrelay-ctest
T0=$(date +%s)

if [ -z "${COMPOSE:-}" ]; then
	if docker compose version >/dev/null 2>&1; then COMPOSE="docker compose"
	elif command -v docker-compose >/dev/null 2>&1; then COMPOSE=docker-compose
	else echo "compose-test: neither 'docker compose' nor 'docker-compose' is installed" >&2; exit 1
	fi
fi

say() { printf '[%4ds] %s\n' $(( $(date +%s) - T0 )) "$*"; }
fail() {
	say "FAIL: $*"
	FAILED=1
	if [ -n "${CUR_PROJECT:-}" ]; then
		echo "--- last log lines of $CUR_PROJECT:" >&2
		$COMPOSE -p "$CUR_PROJECT" $FILES --profile demo logs --no-color --tail 15 2>&1 | tail -150 >&2
	fi
	exit 1
}
PASSES=0
pass() { PASSES=$((PASSES + 1)); say "ok: $*"; }

# --- ports: the usual ones, or the next free ones on 127.0.0.1 -------------
port_free() { ! (echo >"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }
pick_port() {
	p=$1
	while ! port_free "$p"; do p=$((p + 1)); done
	echo "$p"
}
export CLAWRELAY_NATS_PORT=$(pick_port 14222)
export CLAWRELAY_EDGE_PORT=$(pick_port 18080)
export CLAWRELAY_EDGE_TLS_PORT=$(pick_port 18443)
export CLAWRELAY_HEALTH_INTERVAL=${CLAWRELAY_HEALTH_INTERVAL:-2s}
export CLAWRELAY_TLS_DIR=$RUN/tls
unset CLAWRELAY_NATS_URL CLAWRELAY_KV_REPLICAS CLAWRELAY_NATS_CONFIG CLAWRELAY_ENV_FILE COMPOSE_PROFILES
NATS=nats://127.0.0.1:$CLAWRELAY_NATS_PORT
GW=http://127.0.0.1:$CLAWRELAY_EDGE_PORT
CLI() { "$BIN/clawrelay" --nats "$NATS" --gateway "$GW" --timeout-ms 15000 "$@"; }
FILES="-f docker-compose.yml -f deploy/compose-test.yml"
SCALE="--scale delivery=3 --scale relay-session=2 --scale notifier=2 --scale gateway=2"

BGPIDS=""
cleanup() {
	for p in $BGPIDS; do kill "$p" 2>/dev/null; done
	wait 2>/dev/null
	if [ "${COMPOSE_TEST_KEEP:-0}" = 1 ] && [ -n "${CUR_PROJECT:-}" ]; then
		say "COMPOSE_TEST_KEEP=1: $CUR_PROJECT left running ($COMPOSE -p $CUR_PROJECT $FILES --profile demo down -v stops it)"
		return
	fi
	for p in "$PROJECT" "$PROJECT-cluster"; do
		$COMPOSE -p "$p" $FILES --profile demo --profile cluster down -v --remove-orphans >/dev/null 2>&1
	done
}
trap cleanup EXIT
trap 'exit 130' INT TERM

ctr() { # service: ids of the running containers of a service of the current project
	docker ps -q --filter "label=com.docker.compose.project=$CUR_PROJECT" \
	    --filter "label=com.docker.compose.service=$1" | sort
}

# every running container with a health check healthy, one-shots exited 0
wait_healthy() { # timeout_s
	local deadline=$(( $(date +%s) + $1 )) bad
	while :; do
		bad=$(docker ps -a --filter "label=com.docker.compose.project=$CUR_PROJECT" \
		    --format '{{.ID}} {{.Names}} {{.Status}}' |
		    awk -v skip="${SKIP_CTR:-none}" 'index($1, skip) == 1 || index(skip, $1) == 1 { next }
			/\(healthy\)/ { next } /Exited \(0\)/ { next } { print }')
		[ -z "$bad" ] && return 0
		if [ "$(date +%s)" -ge "$deadline" ]; then
			echo "$bad" >&2
			return 1
		fi
		sleep 1
	done
}

# "correlation-id message-id" of every request a hook logged (one line each)
hook_msgs() { # service
	for c in $(ctr "$1"); do docker logs "$c" 2>/dev/null; done | python3 -c '
import json, sys
for line in sys.stdin:
    if line.startswith("{"):
        try:
            d = json.loads(line)
        except ValueError:
            continue
        print(d.get("correlation_id", ""), d.get("message_id", ""))'
}
hook_cids() { hook_msgs "$1" | cut -d' ' -f1; }

# send messages (alternately to bob and web) until $RUN/stop.<tag> exists or
# max were sent, each retried with its own idempotency key until the gateway
# accepts it; accepted IDs to $RUN/sent.<tag>, one line per retry to retries.<tag>
sender() { # tag max
	local tag=$1 n=$2 i to cid tries
	: >"$RUN/sent.$tag"
	for i in $(seq 1 "$n"); do
		[ -e "$RUN/stop.$tag" ] && break
		if [ $((i % 2)) = 0 ]; then to=web; else to=bob; fi
		cid=$tag-$i-$to
		tries=0
		until CLI send --from tester --key "$RUN/keys/tester.key" "$to" --data "message $i of $tag" \
		    --correlation-id "$cid" --idempotency-key "$cid" --quiet >/dev/null 2>>"$RUN/sender.$tag.err"; do
			tries=$((tries + 1))
			if [ $tries -gt 240 ]; then echo "GAVE-UP $cid" >>"$RUN/sent.$tag"; break; fi
			sleep 0.25
		done
		[ $tries -le 240 ] && echo "$cid" >>"$RUN/sent.$tag"
		[ $tries -gt 0 ] && echo "$cid: accepted after $tries retries" >>"$RUN/retries.$tag"
	done
	return 0
}
sent() { wc -l <"$RUN/sent.$1" 2>/dev/null || echo 0; }
# wait until n more messages of tag were accepted (at most 120 s), then stop its sender
stop_after() { # tag n
	local goal=$(( $(sent "$1") + $2 )) deadline=$(( $(date +%s) + 120 ))
	while [ "$(sent "$1")" -lt "$goal" ] && [ "$(date +%s)" -lt "$deadline" ]; do sleep 0.2; done
	touch "$RUN/stop.$1"
}

# every accepted message of tag at its hook: at bob's connector exactly once;
# at the webhook at least once, a repeat (an attempt in flight when its
# relay-session replica died is made again: DESIGN 7) with the same message ID
check_arrivals() { # tag timeout_s
	local tag=$1 deadline=$(( $(date +%s) + $2 )) missing dups wdups
	grep -q GAVE-UP "$RUN/sent.$tag" && fail "$tag: the sender gave up on $(grep -c GAVE-UP "$RUN/sent.$tag") messages"
	while :; do
		{ hook_msgs hook-bob; hook_msgs hook-web; } | grep "^$tag-" | sort >"$RUN/got.$tag"
		missing=$(sort -u "$RUN/sent.$tag" | comm -23 - <(cut -d' ' -f1 "$RUN/got.$tag" | sort -u) | wc -l)
		[ "$missing" = 0 ] && break
		if [ "$(date +%s)" -ge "$deadline" ]; then
			fail "$tag: $missing of $(wc -l <"$RUN/sent.$tag") accepted messages never reached their hook (e.g. $(sort -u "$RUN/sent.$tag" | comm -23 - <(cut -d' ' -f1 "$RUN/got.$tag" | sort -u) | head -3 | tr '\n' ' '))"
		fi
		sleep 1
	done
	sleep 2	# a duplicate would come soon after
	{ hook_msgs hook-bob; hook_msgs hook-web; } | grep "^$tag-" | sort >"$RUN/got.$tag"
	dups=$(grep -- '-bob ' "$RUN/got.$tag" | cut -d' ' -f1 | uniq -d)
	[ -z "$dups" ] || fail "$tag: handed to bob's hook more than once: $(echo "$dups" | head -5 | tr '\n' ' ')"
	# one message (one message ID) per accepted send, however often it came
	[ "$(sort -u "$RUN/got.$tag" | cut -d' ' -f1 | uniq -d | wc -l)" = 0 ] ||
	    fail "$tag: one send became two messages: $(sort -u "$RUN/got.$tag" | cut -d' ' -f1 | uniq -d | head -3 | tr '\n' ' ')"
	wdups=$(grep -- '-web ' "$RUN/got.$tag" | cut -d' ' -f1 | uniq -d | wc -l)
	pass "$tag: all $(wc -l <"$RUN/sent.$tag") accepted messages arrived: $(grep -c -- '-bob$' "$RUN/sent.$tag") at bob's connector exactly once, $(grep -c -- '-web$' "$RUN/sent.$tag") at the webhook ($wdups of them twice, with the same message ID); $(wc -l <"$RUN/retries.$tag" 2>/dev/null || echo 0) sends needed retries ($(cat "$RUN/retries.$tag" 2>/dev/null | awk '{n += $4} END {print n + 0}') retries after a 503 or no answer), each still one message"
}

session_status() { # container -> "owned others [partitions]"
	docker exec "$1" curl -fsS http://127.0.0.1:8081/v1/status 2>/dev/null | python3 -c '
import json, sys
d = json.load(sys.stdin)
print(d["partitionsOwned"], d["otherReplicasSeen"], ",".join(str(p["partition"]) for p in d["partitions"]))'
}

# ============================================================================
rm -rf "$RUN"
mkdir -p "$RUN/keys" "$RUN/tls"
CUR_PROJECT=$PROJECT
say "compose-test: $COMPOSE ($($COMPOSE version --short 2>/dev/null || $COMPOSE version | head -1)), project $PROJECT, ports 127.0.0.1:$CLAWRELAY_NATS_PORT (NATS) :$CLAWRELAY_EDGE_PORT (HTTP) :$CLAWRELAY_EDGE_TLS_PORT (HTTPS)"
$COMPOSE -p "$PROJECT" $FILES --profile demo --profile cluster down -v --remove-orphans >/dev/null 2>&1
$COMPOSE -p "$PROJECT-cluster" $FILES --profile demo --profile cluster down -v --remove-orphans >/dev/null 2>&1

# --- 1. images, up, health ---------------------------------------------------
sh deploy/build-base-image.sh || fail "base image"
say "building the images ($COMPOSE build)"
b0=$(date +%s)
$COMPOSE -p "$PROJECT" $FILES --profile demo build >"$RUN/build.log" 2>&1 || { tail -30 "$RUN/build.log"; fail "image build (log: $RUN/build.log)"; }
say "images built in $(( $(date +%s) - b0 )) s: $(docker images --format '{{.Repository}}:{{.Tag}} {{.Size}}' | grep '^clawrelay/' | tr '\n' ' ')"

# a self-signed certificate for the edge proxy's TLS port
openssl req -x509 -newkey rsa:2048 -nodes -days 2 -subj /CN=localhost \
    -addext subjectAltName=DNS:localhost,IP:127.0.0.1 \
    -keyout "$RUN/tls/tls.key" -out "$RUN/tls/tls.crt" >/dev/null 2>&1 || fail "openssl"
chmod 644 "$RUN/tls/tls.key"	# read by the proxy's unprivileged user (a test key)

say "up: $SCALE, profile demo"
u0=$(date +%s)
$COMPOSE -p "$PROJECT" $FILES --profile demo up -d $SCALE >"$RUN/up.log" 2>&1 || { tail -30 "$RUN/up.log"; fail "compose up"; }
wait_healthy 240 || fail "not every container became healthy"
pass "every container healthy $(( $(date +%s) - u0 )) s after up: $(docker ps --filter "label=com.docker.compose.project=$PROJECT" --format '{{.Label "com.docker.compose.service"}}' | sort | uniq -c | awk '{printf "%s%s=%s", (NR > 1 ? " " : ""), $2, $1}')"
for s in delivery:3 relay-session:2 notifier:2 gateway:2; do
	[ "$(ctr "${s%:*}" | wc -l)" = "${s#*:}" ] || fail "${s%:*}: $(ctr "${s%:*}" | wc -l) replicas running, not ${s#*:}"
done
for c in $(docker ps -q --filter "label=com.docker.compose.project=$PROJECT"); do
	u=$(docker exec "$c" id -u 2>/dev/null)
	[ "$u" != 0 ] || fail "$(docker inspect -f '{{.Name}}' "$c") runs as root"
done
pass "every container runs as a non-root user"

dsend=$(docker ps -aq --filter "label=com.docker.compose.project=$PROJECT" --filter label=com.docker.compose.service=demo-send)
docker logs "$dsend" >"$RUN/demo-send.log" 2>&1
grep -q hook_answered "$RUN/demo-send.log" || { cat "$RUN/demo-send.log"; fail "demo profile: no traced message"; }
pass "demo profile: alice's message reached bob's hook, traced ($(grep -c 'ms  ' "$RUN/demo-send.log") hops)"

# relay-session replicas split the 16 partitions (one may first take them all
# and hand the extra ones over, one a second)
deadline=$(( $(date +%s) + 40 ))
while :; do
	split=""
	for c in $(ctr relay-session); do split="$split $(session_status "$c" | cut -d' ' -f1)"; done
	[ "$(echo $split)" = "8 8" ] && break
	[ "$(date +%s)" -ge "$deadline" ] && fail "relay-session partitions not split 8/8:$split"
	sleep 1
done
pass "relay-session replicas split the partitions 8/8 (one shared volume, leases in KV)"

# the edge proxy: TLS with the given certificate, WebSocket upgrades carried
code=$(curl -sS -o /dev/null -w '%{http_code}' --cacert "$RUN/tls/tls.crt" "https://localhost:$CLAWRELAY_EDGE_TLS_PORT/readyz") || true
[ "$code" = 200 ] || fail "https://localhost:$CLAWRELAY_EDGE_TLS_PORT/readyz answered $code"
ws=$(curl -sS -i --max-time 5 --cacert "$RUN/tls/tls.crt" -H 'Connection: Upgrade' -H 'Upgrade: websocket' \
    -H 'Sec-WebSocket-Version: 13' -H 'Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==' \
    "https://localhost:$CLAWRELAY_EDGE_TLS_PORT/v1/connect" 2>/dev/null | head -1 | tr -d '\r')
case $ws in *401*) ;; *) fail "unsigned WebSocket upgrade over TLS: '$ws', not the gateway's 401";; esac
pass "edge: HTTPS with the mounted certificate; an unsigned WebSocket upgrade reaches a gateway (401 from it); the connectors' sockets run through the proxy"

# --- 2. agents, traffic, a relay-session replica killed, NATS restarted --------
for a in tester web carol; do
	CLI keygen --out "$RUN/keys/$a" >/dev/null || fail "keygen $a"
done
CLI agent add tester --pubkey "$RUN/keys/tester.pub" >/dev/null &&
CLI agent add web --pubkey "$RUN/keys/web.pub" --webhook http://hook-web:9000/hook >/dev/null &&
CLI agent add carol --pubkey "$RUN/keys/carol.pub" >/dev/null &&
# the test sends hundreds a minute per pair: above the default pair rate (60/min)
LIMITS="--rate-per-min 100000 --burst 10000"
CLI trust add tester bob $LIMITS >/dev/null && CLI trust add tester web $LIMITS >/dev/null &&
CLI trust add tester carol >/dev/null || fail "registering agents through NATS on 127.0.0.1:$CLAWRELAY_NATS_PORT"
pass "agents tester, web (webhook), carol registered from the host through 127.0.0.1:$CLAWRELAY_NATS_PORT"

cid=one-bob
CLI send --from tester --key "$RUN/keys/tester.key" bob --data hello-bob --correlation-id $cid --quiet >/dev/null || fail "send to bob through $GW"
CLI send --from tester --key "$RUN/keys/tester.key" web --data hello-web --correlation-id one-web --quiet >/dev/null || fail "send to web through $GW"
for t in one-bob:hook_answered one-web:webhook_answered; do
	i=0
	until CLI trace "${t%:*}" 2>/dev/null | grep -q "${t#*:}"; do
		i=$((i + 1)); [ $i -gt 100 ] && { CLI trace "${t%:*}"; fail "trace of ${t%:*} has no ${t#*:}"; }
		sleep 0.2
	done
done
CLI trace one-bob >"$RUN/trace.one-bob"; CLI trace one-web >"$RUN/trace.one-web"
pass "sent through the entry point $GW and traced end to end: bob $(awk '/^total/ {print $2, $3, "over", $5, "hops"}' "$RUN/trace.one-bob"), web $(awk '/^total/ {print $2, $3, "over", $5, "hops"}' "$RUN/trace.one-web")"

# which replica serves bob's partition: that one is killed
bobp=$(CLI subject bob --subjects | awk '/^partition/ {print $2}')
victim=""
for c in $(ctr relay-session); do
	case ",$(session_status "$c" | cut -d' ' -f3)," in *",$bobp,"*) victim=$c;; esac
done
[ -n "$victim" ] || fail "no relay-session replica serves partition $bobp"
sender kill 2000 &
SPID=$!; BGPIDS="$BGPIDS $SPID"
while [ "$(sent kill)" -lt 60 ]; do sleep 0.2; done
docker kill "$victim" >/dev/null || fail "docker kill"
say "killed relay-session $(docker inspect -f '{{.Name}}' "$victim" | tr -d /) (bob's partition $bobp) after 60 messages; sending goes on for 150 more"
stop_after kill 150
wait $SPID
pass "kill: sender done ($(wc -l <"$RUN/sent.kill") accepted)"
check_arrivals kill 120
SKIP_CTR=$victim	# stays down until it is started again below
for c in $(ctr relay-session); do [ "$c" = "$victim" ] || survivor=$c; done
say "after the kill: $(ctr relay-session | wc -l) relay-session replica(s) running (the killed one $(docker inspect -f '{{.State.Status}}, restarted {{.RestartCount}} times' "$victim")); the survivor owns $(session_status "$survivor" | cut -d' ' -f1) partitions"

sender restart 2000 &
SPID=$!; BGPIDS="$BGPIDS $SPID"
while [ "$(sent restart)" -lt 30 ]; do sleep 0.2; done
say "restarting nats after 30 messages ($COMPOSE restart nats); sending goes on"
$COMPOSE -p "$PROJECT" $FILES restart nats >/dev/null 2>&1 || fail "compose restart nats"
say "nats restarted after $(sent restart) messages; sending goes on for 60 more"
stop_after restart 60
wait $SPID
pass "nats restart: sender done ($(wc -l <"$RUN/sent.restart") accepted)"
check_arrivals restart 180
wait_healthy 120 || fail "not every container healthy again after the NATS restart"
pass "every container healthy again after the NATS restart, without any action"

# the killed replica comes back (same host name, same instance id) and gets its share back
docker start "$victim" >/dev/null || fail "docker start of the killed replica"
SKIP_CTR=""
deadline=$(( $(date +%s) + 60 ))
while :; do
	split=""
	for c in $(ctr relay-session); do split="$split $(session_status "$c" | cut -d' ' -f1)"; done
	[ "$(echo $split)" = "8 8" ] && break
	[ "$(date +%s)" -ge "$deadline" ] && fail "after the killed replica came back, partitions not split 8/8:$split"
	sleep 1
done
pass "the killed replica, started again, got its 8 partitions back"

# --- 3. a failure notice seen from the host --------------------------------
CLI follow --json --no-delayed --count 1 >"$RUN/follow.out" 2>"$RUN/follow.err" &
FPID=$!; BGPIDS="$BGPIDS $FPID"
i=0; until grep -q following "$RUN/follow.err" 2>/dev/null; do i=$((i + 1)); [ $i -gt 100 ] && fail "clawrelay follow did not start: $(cat "$RUN/follow.err")"; sleep 0.1; done
# once the stack is healthy again (the rebalance above just ended) a send is
# accepted at once: no breaker, pool or proxy still recovering may hold it
ts=$(date +%s%N)
CLI send --from tester --key "$RUN/keys/tester.key" carol --data "for nobody" --ttl 2 \
    --correlation-id expire-1 --quiet >/dev/null || fail "send to carol"
sms=$(( ($(date +%s%N) - ts) / 1000000 ))
[ "$sms" -le 3000 ] || fail "the send to carol took $sms ms to be accepted (more than 3 s with the stack healthy)"
# `clawrelay follow --json` prints one object per notice, with snake_case
# fields (message_id, correlation_id, reason, ...)
i=0
until grep -q '"correlation_id":"expire-1"' "$RUN/follow.out" 2>/dev/null; do
	i=$((i + 1)); [ $i -gt 300 ] && fail "no failure notice for expire-1 on clawrelay.notify.failure.> within 30 s (follow printed: $(head -c 400 "$RUN/follow.out"))"
	sleep 0.1
done
grep -q '"reason":"expired"' "$RUN/follow.out" || fail "the notice is not 'expired': $(cat "$RUN/follow.out")"
pass "a send accepted $sms ms after the rebalance; its failure notice on clawrelay.notify.failure.> seen from the host $(( ($(date +%s%N) - ts) / 1000000 )) ms after the message with a 2 s TTL was sent: $(head -c 160 "$RUN/follow.out")..."

# queue groups: the work spread over the replicas
dl=""; for c in $(ctr delivery); do dl="$dl $(docker exec "$c" curl -fsS http://127.0.0.1:8082/metrics 2>/dev/null | awk '/^clawrelay_delivery_attempts_total\{outcome="delivered"\}/ {print $2}')"; done
nt=""; for c in $(ctr notifier); do nt="$nt $(docker exec "$c" curl -fsS http://127.0.0.1:8083/metrics 2>/dev/null | awk '/^clawrelay_notifier_receipts_total/ {print $2}')"; done
up=$(docker logs "$(ctr edge)" 2>/dev/null | grep '"request":"POST' | grep -o '"upstream":"[^"]*"' | sort -u | wc -l)
say "work per replica: delivery attempts delivered:$dl; notifier receipts:$nt; POSTs went to $up gateway address(es)"
[ "$(echo $dl | wc -w)" -lt 3 ] || [ "$(for v in $dl; do [ "$v" != 0 ] && echo x; done | wc -l)" -ge 2 ] || fail "one delivery replica did all the work:$dl"
[ "$up" -ge 2 ] || fail "every POST went to one gateway"
pass "delivery replicas share the work (queue group); the edge spreads requests over both gateways"

# --- 4. down, data kept, down -v ------------------------------------------------
$COMPOSE -p "$PROJECT" $FILES --profile demo down >/dev/null 2>&1 || fail "compose down"
n=$(docker ps -aq --filter "label=com.docker.compose.project=$PROJECT" | wc -l)
[ "$n" = 0 ] || fail "$n containers left after down"
nv=$(docker volume ls -q --filter "label=com.docker.compose.project=$PROJECT" | wc -l)
$COMPOSE -p "$PROJECT" $FILES up -d nats >/dev/null 2>&1 || fail "up nats again"
i=0; until CLI agent list 2>/dev/null | grep -q '^tester'; do i=$((i + 1)); [ $i -gt 60 ] && fail "the registry did not survive down/up"; sleep 0.5; done
$COMPOSE -p "$PROJECT" $FILES --profile demo down -v >/dev/null 2>&1 || fail "compose down -v"
[ "$(docker ps -aq --filter "label=com.docker.compose.project=$PROJECT" | wc -l)" = 0 ] || fail "containers left after down -v"
nv2=$(docker volume ls -q --filter "label=com.docker.compose.project=$PROJECT" | wc -l)
[ "$nv2" = 0 ] || fail "$nv2 volumes left after down -v"
pass "down: no container left, $nv volumes kept (the registry was still there on the next up); down -v: no volume left"

# --- 5. the cluster profile -------------------------------------------------------
if [ "${COMPOSE_TEST_CLUSTER:-1}" = 1 ]; then
	CUR_PROJECT=$PROJECT-cluster
	say "cluster profile: $COMPOSE --env-file deploy/cluster.env up (3 NATS nodes, CLAWRELAY_KV_REPLICAS=3)"
	u0=$(date +%s)
	$COMPOSE -p "$CUR_PROJECT" --env-file deploy/cluster.env $FILES up -d >"$RUN/up-cluster.log" 2>&1 || { tail -30 "$RUN/up-cluster.log"; fail "cluster up"; }
	wait_healthy 240 || fail "cluster: not every container became healthy"
	[ "$(ctr nats-2 | wc -l)$(ctr nats-3 | wc -l)" = 11 ] || fail "cluster: nats-2 and nats-3 are not running"
	CLI keygen --out "$RUN/keys/tester2" >/dev/null
	CLI agent add tester --pubkey "$RUN/keys/tester2.pub" >/dev/null && CLI agent add web --pubkey "$RUN/keys/web.pub" --webhook http://hook-web:9000/hook >/dev/null &&
	    CLI trust add tester web >/dev/null || fail "cluster: registering agents"
	CLI send --from tester --key "$RUN/keys/tester2.key" web --data c1 --correlation-id cluster-1 --quiet >/dev/null || fail "cluster: send"
	i=0; until hook_cids hook-web | grep -qx cluster-1; do i=$((i + 1)); [ $i -gt 100 ] && fail "cluster: message not delivered"; sleep 0.2; done
	jsz=$(docker exec "$(ctr nats)" curl -fsS 'http://127.0.0.1:8222/jsz?streams=true&config=true')
	repl=$(echo "$jsz" | python3 -c '
import json, sys
d = json.load(sys.stdin)
out = []
for a in d.get("account_details", []):
    for s in a.get("stream_detail", []):
        if s["name"].startswith("KV_"):
            out.append("%s=%d" % (s["name"][3:], s["config"].get("num_replicas", 1)))
print(" ".join(sorted(out)))')
	echo "$repl" | grep -q . || fail "cluster: no KV buckets found"
	echo "$repl" | tr ' ' '\n' | grep -qv '=3$' && fail "cluster: a KV bucket without 3 replicas: $repl"
	pass "cluster: 3 NATS nodes, every KV bucket on 3 replicas ($repl)"
	docker stop "$(ctr nats-2)" >/dev/null
	tries=0
	until CLI send --from tester --key "$RUN/keys/tester2.key" web --data c2 --correlation-id cluster-2 \
	    --idempotency-key cluster-2 --quiet >/dev/null 2>&1; do
		tries=$((tries + 1)); [ $tries -gt 120 ] && fail "cluster: no send accepted with nats-2 stopped"; sleep 0.5
	done
	i=0; until hook_cids hook-web | grep -qx cluster-2; do i=$((i + 1)); [ $i -gt 150 ] && fail "cluster: message not delivered with nats-2 stopped"; sleep 0.2; done
	pass "cluster: with nats-2 stopped a message is accepted (after $tries retries) and delivered"
	$COMPOSE -p "$CUR_PROJECT" --env-file deploy/cluster.env $FILES down -v >/dev/null 2>&1 || fail "cluster down -v"
	[ "$(docker ps -aq --filter "label=com.docker.compose.project=$CUR_PROJECT" | wc -l)" = 0 ] || fail "cluster: containers left"
	CUR_PROJECT=""
else
	say "cluster profile skipped (COMPOSE_TEST_CLUSTER=0)"
fi

CUR_PROJECT=""
say "compose-test: $PASSES passed, 0 failed in $(( $(date +%s) - T0 )) s"
echo "$PASSES passed, 0 failed"
