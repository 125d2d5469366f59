#!/bin/sh
# bench.sh - what `make bench` runs: the whole stack on this machine, driven
# by bin/clawrelay-loadgen, with the floors of the first benchmark.
#
# Starts, in a temp dir and on free 127.0.0.1 ports: nats-server -js, one of
# each service (gateway, relay-session, delivery, notifier, metrics-collector,
# default settings: every message durable before its 202, hop events on) and
# BENCH_RECEIVERS receiving connectors whose hook is the load generator's
# embedded hook server. Registers the agents with the CLI, then runs the
# scenarios:
#   http       signed HTTP POSTs straight to the gateway, as fast as accepted
#              (floor 2500 msg/s end to end)
#   socket     socket ingress: the load generator opens one WebSocket to the
#              gateway's /v1/connect per socket sender (BENCH_SOCKET_SENDERS
#              agents with keys), with the connector's signed upgrade and
#              reconnect handshake, and pipelines `enqueue` frames on each, up
#              to BENCH_SOCKET_WINDOW in flight per socket and BENCH_SOCKET_BACKLOG
#              not yet delivered in all (floor 5000 msg/s end to end)
#   fixed      signed HTTP POSTs at BENCH_FIXED_RATE msg/s (floor: p99 e2e < 50 ms)
#   connector  informational, no floor, not run unless asked for: POSTs to
#              BENCH_CONNECTOR_SENDERS sending connectors' local API, which
#              forward each as an `enqueue` frame over their socket (the whole
#              sending connector, an HTTP request per message at the edge);
#              the sending connectors are only started for it
# Prints the report and writes it to run/bench/last.txt. Everything started
# is stopped by its PID on exit. Exit code: 0 all floors met, 1 not.
#
# Settings (environment):
#   BENCH_SECONDS          sending time per scenario (default 10)
#   BENCH_SCENARIOS        subset or order, e.g. "http fixed", "socket connector"
#                          (default "http socket fixed")
#   BENCH_RECEIVERS        receiving connectors (default 2: a connector runs on its
#                          agent's machine, not the relay's; here each one takes a
#                          share of the same two cores, and at 8 they take more
#                          of them than any relay service does. The README gives
#                          the numbers for 8 as well.)
#   BENCH_HTTP_SENDERS     HTTP sender identities (default 4)
#   BENCH_SOCKET_SENDERS   socket sender identities = sockets of the socket scenario (default 4)
#   BENCH_SOCKET_WINDOW    enqueue frames in flight per socket; also given to the gateway
#                          as CLAWRELAY_WS_ENQUEUE_WINDOW (default 256, the gateway's default)
#   BENCH_SOCKET_BACKLOG   the socket senders keep at most this many messages sent and not
#                          yet delivered (all sockets together), so the stack runs in a steady
#                          state instead of draining a growing backlog after the send window
#                          (0: no limit; default 1024)
#   BENCH_SOCKET_EVENTS    1: the socket senders send a connector_sent hop event per message
#                          (event_batch frames), as a connector does; 0: enqueue frames only
#                          (default 1)
#   BENCH_CONNECTOR_SENDERS sending connectors of the connector scenario (default 4)
#   BENCH_CONCURRENCY      concurrent requests of http and connector (default 32)
#   BENCH_FIXED_RATE       rate of the fixed scenario (default 1000)
#   BENCH_FIXED_CONCURRENCY sender threads of the fixed scenario (default 128, so
#                          the load generator keeps the rate even when answers are slow)
#   BENCH_PAYLOAD_BYTES    payload size (default 256)
#   BENCH_WARMUP           warm-up seconds per kind (default 2)
#   BENCH_DRAIN_SECONDS    give up on deliveries after this long without one (default 15)
#   BENCH_KEEP=1           keep the temp dir (logs, data) after the run
#   BENCH_PERF=1           count context switches and syscalls machine-wide with
#                          `perf stat -a` during the load generator's run
#   BENCH_SERVICE_ENV      extra "K=V K=V" given to every service (e.g. CLAWRELAY_LOG_LEVEL=warn)
set -u

ROOT=$(cd "$(dirname "$0")/.." && pwd)
BIN=${CLAWRELAY_BIN:-$ROOT/bin}
LG=$BIN/clawrelay-loadgen
SECS=${BENCH_SECONDS:-10}
SCENARIOS=${BENCH_SCENARIOS:-http socket fixed}
NRECV=${BENCH_RECEIVERS:-2}
NHTTP=${BENCH_HTTP_SENDERS:-4}
NSOCK=${BENCH_SOCKET_SENDERS:-4}
WSWIN=${BENCH_SOCKET_WINDOW:-256}
WSEV=${BENCH_SOCKET_EVENTS:-1}
WSBACK=${BENCH_SOCKET_BACKLOG:-1024}
NCONN=${BENCH_CONNECTOR_SENDERS:-4}
CONC=${BENCH_CONCURRENCY:-32}
RATE=${BENCH_FIXED_RATE:-1000}
FCONC=${BENCH_FIXED_CONCURRENCY:-128}
PAYLOAD=${BENCH_PAYLOAD_BYTES:-256}
WARMUP=${BENCH_WARMUP:-2}
DRAIN=${BENCH_DRAIN_SECONDS:-15}
SVC_ENV=${BENCH_SERVICE_ENV:-}

for p in clawrelay clawrelay-gateway clawrelay-relay-session clawrelay-delivery \
    clawrelay-notifier clawrelay-metrics-collector clawrelay-connector clawrelay-loadgen; do
	if [ ! -x "$BIN/$p" ]; then
		echo "bench: $BIN/$p is missing: run make first" >&2
		exit 2
	fi
done
command -v nats-server >/dev/null 2>&1 || { echo "bench: nats-server not found" >&2; exit 2; }
# sending connectors only for the connector scenario
case " $SCENARIOS " in
*" connector "*) ;;
*) NCONN=0 ;;
esac

WORK=$(mktemp -d /tmp/clawrelay-bench-XXXXXX)
PIDS=""
WATCH=""

cleanup() {
	# newest first, each by its PID: TERM, then KILL after 5 s
	for pid in $PIDS; do
		kill -TERM "$pid" 2>/dev/null
	done
	for pid in $PIDS; do
		i=0
		while kill -0 "$pid" 2>/dev/null && [ $i -lt 50 ]; do
			sleep 0.1
			i=$((i + 1))
		done
		kill -0 "$pid" 2>/dev/null && kill -KILL "$pid" 2>/dev/null
		wait "$pid" 2>/dev/null
	done
	if [ -n "${BENCH_KEEP:-}" ]; then
		echo "bench: kept $WORK" >&2
	else
		rm -rf "$WORK"
	fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

die() {
	echo "bench: $*" >&2
	exit 2
}

# started records a background process: $1 name, $2 pid
started() {
	PIDS="$2 $PIDS"
	WATCH="$WATCH --watch $1=$2"
}

# ports: one per line, all different
PORTS=$("$LG" free-port $((9 + NRECV + NCONN))) || die "no free ports"
port() { echo "$PORTS" | sed -n "$1p"; }
NATS_PORT=$(port 1)
HOOK_PORT=$(port 2)
GW_PORT=$(port 3)
MON_PORT=$(port $((9 + NRECV + NCONN)))
NATS_URL=nats://127.0.0.1:$NATS_PORT
GW_URL=http://127.0.0.1:$GW_PORT

echo "bench: working in $WORK" >&2
nats-server -js -a 127.0.0.1 -p "$NATS_PORT" -m "$MON_PORT" -sd "$WORK/jetstream" >"$WORK/nats.log" 2>&1 &
started nats-server $!
i=0
until grep -q "Server is ready" "$WORK/nats.log" 2>/dev/null; do
	i=$((i + 1))
	[ $i -gt 100 ] && die "nats-server did not start (see $WORK/nats.log)"
	sleep 0.1
done

# start_svc name port [extra env...]
start_svc() {
	name=$1
	sport=$2
	shift 2
	mkdir -p "$WORK/$name"
	# shellcheck disable=SC2086
	env CLAWRELAY_NATS_URL="$NATS_URL" CLAWRELAY_HTTP_PORT="$sport" \
	    CLAWRELAY_INSTANCE="$name" CLAWRELAY_DATA_DIR="$WORK/$name" \
	    CLAWRELAY_PAIR_RATE_PER_MIN=0 CLAWRELAY_SENDER_RATE_PER_MIN=0 \
	    CLAWRELAY_PAIR_QUEUE_MAX=1000000 $SVC_ENV "$@" \
	    "$BIN/clawrelay-$name" >"$WORK/$name.log" 2>&1 &
	started "$name" $!
}

start_svc relay-session "$(port 4)"
start_svc delivery "$(port 5)"
start_svc notifier "$(port 6)"
start_svc metrics-collector "$(port 7)"
MAXC=$CONC
[ "$FCONC" -gt "$MAXC" ] && MAXC=$FCONC
# civetweb holds a thread per connection: every sender and every socket, plus room
start_svc gateway "$GW_PORT" CLAWRELAY_HTTP_THREADS=$((MAXC + NRECV + NSOCK + NCONN + 64)) \
    CLAWRELAY_WS_ENQUEUE_WINDOW="$WSWIN"
for n in 4 5 6 7 3; do
	"$LG" wait-ready "http://127.0.0.1:$(port $n)/readyz" 30 ||
	    die "a service did not become ready (logs in $WORK; BENCH_KEEP=1 keeps them)"
done

cli() {
	CLAWRELAY_NATS_URL=$NATS_URL CLAWRELAY_GATEWAY_URL=$GW_URL "$BIN/clawrelay" "$@" \
	    >>"$WORK/cli.log" 2>&1 || die "clawrelay $* failed (see $WORK/cli.log)"
}
agent() {
	cli keygen --out "$WORK/keys/$1"
	cli agent add "$1" --pubkey "$WORK/keys/$1.pub"
}
mkdir -p "$WORK/keys"
RECV=""
i=1
while [ $i -le "$NRECV" ]; do RECV="$RECV bench-r$i"; i=$((i + 1)); done
HS=""
i=1
while [ $i -le "$NHTTP" ]; do HS="$HS bench-h$i"; i=$((i + 1)); done
SS=""
i=1
while [ $i -le "$NSOCK" ]; do SS="$SS bench-s$i"; i=$((i + 1)); done
CS=""
i=1
while [ $i -le "$NCONN" ]; do CS="$CS bench-c$i"; i=$((i + 1)); done
echo "bench: registering $NRECV receivers, $NHTTP HTTP senders, $NSOCK socket senders," \
    "$NCONN connector senders" >&2
for a in $RECV $HS $SS $CS; do agent "$a"; done
# the per-pair default limit (60/min) is for agents, not for a benchmark
for s in $HS $SS $CS; do
	for r in $RECV; do
		cli trust add "$s" "$r" --rate-per-min 1000000000 --burst 1000000
	done
done

# start_conn agent port hook_url
start_conn() {
	mkdir -p "$WORK/conn-$1"
	# shellcheck disable=SC2086
	env CLAWRELAY_AGENT_ID="$1" CLAWRELAY_KEY_FILE="$WORK/keys/$1.key" \
	    CLAWRELAY_GATEWAY_URL="$GW_URL" CLAWRELAY_HOOK_URL="$3" \
	    CLAWRELAY_DATA_DIR="$WORK/conn-$1" CLAWRELAY_HTTP_PORT="$2" \
	    CLAWRELAY_INSTANCE="conn-$1" $SVC_ENV \
	    "$BIN/clawrelay-connector" >"$WORK/conn-$1.log" 2>&1 &
	started "conn-$1" $!
}
n=9
CONN_PORTS=""
for a in $RECV; do
	start_conn "$a" "$(port $n)" "http://127.0.0.1:$HOOK_PORT/hook/$a"
	CONN_PORTS="$CONN_PORTS $(port $n)"
	n=$((n + 1))
done
CONN_ARGS=""
for a in $CS; do
	start_conn "$a" "$(port $n)" "http://127.0.0.1:$HOOK_PORT/hook/$a"
	CONN_PORTS="$CONN_PORTS $(port $n)"
	CONN_ARGS="$CONN_ARGS --connector http://127.0.0.1:$(port $n)"
	n=$((n + 1))
done
for p in $CONN_PORTS; do
	"$LG" wait-ready "http://127.0.0.1:$p/readyz" 30 ||
	    die "a connector did not connect (logs in $WORK; BENCH_KEEP=1 keeps them)"
done

LG_ARGS="--gateway $GW_URL --hook-port $HOOK_PORT --seconds $SECS --concurrency $CONC"
LG_ARGS="$LG_ARGS --fixed-rate $RATE --fixed-concurrency $FCONC --payload-bytes $PAYLOAD --warmup $WARMUP"
LG_ARGS="$LG_ARGS --drain-seconds $DRAIN --socket-window $WSWIN --socket-events $WSEV"
LG_ARGS="$LG_ARGS --socket-backlog $WSBACK"
for r in $RECV; do LG_ARGS="$LG_ARGS --recipient $r"; done
for s in $HS; do LG_ARGS="$LG_ARGS --sender $s=$WORK/keys/$s.key"; done
for s in $SS; do LG_ARGS="$LG_ARGS --ws-sender $s=$WORK/keys/$s.key"; done
for s in $SCENARIOS; do LG_ARGS="$LG_ARGS --scenario $s"; done

COMMIT=$(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null || echo unknown)
if [ -n "$(git -C "$ROOT" status --porcelain 2>/dev/null)" ]; then
	COMMIT="$COMMIT-dirty"
fi
CPU=$(sed -n 's/^model name[[:space:]]*: //p' /proc/cpuinfo | head -n 1)
BUSY=$("$LG" machine-busy 2)
MEM=$(awk '/^MemTotal/ { printf "%.1f GiB", $2 / 1048576 }' /proc/meminfo)
# every setting that shapes the run, so the line reproduces it exactly
RERUN="BENCH_RECEIVERS=$NRECV BENCH_HTTP_SENDERS=$NHTTP BENCH_SOCKET_SENDERS=$NSOCK"
RERUN="$RERUN BENCH_SOCKET_WINDOW=$WSWIN BENCH_SOCKET_EVENTS=$WSEV BENCH_SOCKET_BACKLOG=$WSBACK"
RERUN="$RERUN${CS:+ BENCH_CONNECTOR_SENDERS=$NCONN}"
RERUN="$RERUN BENCH_CONCURRENCY=$CONC BENCH_FIXED_RATE=$RATE BENCH_FIXED_CONCURRENCY=$FCONC"
RERUN="$RERUN BENCH_PAYLOAD_BYTES=$PAYLOAD BENCH_WARMUP=$WARMUP${SVC_ENV:+ BENCH_SERVICE_ENV=\"$SVC_ENV\"}"
RERUN="$RERUN BENCH_SECONDS=$SECS BENCH_SCENARIOS=\"$SCENARIOS\" sh scripts/bench.sh"

SOCK_EV="a connector_sent hop event per message"
[ "$WSEV" = 0 ] && SOCK_EV="no hop events from the senders"
mkdir -p "$ROOT/run/bench"
OUT=$ROOT/run/bench/last.txt
{
	echo "clawrelay benchmark"
	echo "  date        $(date -u '+%Y-%m-%d %H:%M:%S UTC')"
	echo "  commit      $COMMIT"
	echo "  machine     $(nproc) CPUs, $CPU, $MEM RAM, $(uname -sr)"
	echo "  nats-server $(nats-server --version 2>&1 | head -n 1)"
	echo "  background  CPU busy $BUSY over 2 s with the stack idle, before the run (other"
	echo "              programs on the machine; the CPU lines below show them during each scenario)"
	echo "  stack       1 each of gateway, relay-session, delivery, notifier, metrics-collector;"
	echo "              $NRECV receiving connectors (BENCH_RECEIVERS, default 2), one per recipient"
	echo "              agent, messages spread over them round-robin;"
	[ -n "$CS" ] && echo "              $NCONN sending connectors (for the connector scenario);"
	echo "              nats-server and the load generator (with the receivers' hook server"
	echo "              and the socket senders' sockets) on the same machine; default settings"
	echo "              (fsync before 202, hop events on), gateway enqueue window $WSWIN per"
	echo "              socket${SVC_ENV:+; extra service env: $SVC_ENV}"
	echo "  load        http: $NHTTP HTTP sender identities, $CONC concurrent requests; socket: $NSOCK"
	echo "              sockets (one per sender identity) opened by the load generator itself,"
	echo "              $WSWIN enqueue frames in flight on each, at most $WSBACK sent and not yet"
	echo "              delivered (0: no limit), $SOCK_EV;"
	echo "              payload $PAYLOAD B, $SECS s per scenario, fixed rate $RATE msg/s from"
	echo "              $FCONC sender threads"
	echo "  floors      http >= 2500 msg/s e2e; socket >= 5000 msg/s e2e; fixed: p99 e2e < 50 ms;"
	echo "              connector (if run): informational, no floor"
	echo
} >"$OUT"
cat "$OUT"

PERFPID=""
PERF_EV=context-switches,syscalls:sys_enter_futex,syscalls:sys_enter_sendto,syscalls:sys_enter_write
PERF_EV=$PERF_EV,syscalls:sys_enter_fdatasync,syscalls:sys_enter_fsync
if [ -n "${BENCH_PERF:-}" ] && command -v perf >/dev/null 2>&1; then
	# counts until the load generator is done (it then creates perf.stop)
	perf stat -a -x, -e "$PERF_EV" -o "$WORK/perf-stat.txt" -- \
	    sh -c "while [ ! -e '$WORK/perf.stop' ]; do sleep 0.2; done" >/dev/null 2>&1 &
	PERFPID=$!
	PIDS="$PERFPID $PIDS"
fi
# shellcheck disable=SC2086
"$LG" run $LG_ARGS $CONN_ARGS $WATCH >"$WORK/loadgen.out" 2>&1 &
LGPID=$!
PIDS="$LGPID $PIDS"
tail -f "$WORK/loadgen.out" --pid="$LGPID" 2>/dev/null
wait "$LGPID"
RC=$?
cat "$WORK/loadgen.out" >>"$OUT"
if [ -n "$PERFPID" ]; then
	touch "$WORK/perf.stop"
	wait "$PERFPID" 2>/dev/null
	CALLS=$(sed -n 's/^hook calls \([0-9]*\),.*/\1/p' "$WORK/loadgen.out")
	{
		echo
		echo "machine-wide counts during the whole load generator run (perf stat -a; other"
		echo "programs included), per hook call (= delivered message, warm-ups included):"
		awk -F, -v n="${CALLS:-0}" '$1 ~ /^[0-9]+$/ && n > 0 {
			printf "  %-32s %12d  %8.1f per message\n", $3, $1, $1 / n }' "$WORK/perf-stat.txt"
	} | tee -a "$OUT"
fi
# counters of every part after the run, for finding where the time went
SNAP=$ROOT/run/bench/last-metrics
rm -rf "$SNAP"
mkdir -p "$SNAP"
for pair in relay-session:4 delivery:5 notifier:6 metrics-collector:7 gateway:3; do
	"$LG" get "http://127.0.0.1:$(port "${pair#*:}")/metrics" >"$SNAP/${pair%%:*}.metrics" 2>&1
	"$LG" get "http://127.0.0.1:$(port "${pair#*:}")/v1/status" >"$SNAP/${pair%%:*}.status.json" 2>&1
done
set -- $CONN_PORTS
"$LG" get "http://127.0.0.1:$1/metrics" >"$SNAP/connector-receiver-1.metrics" 2>&1
"$LG" get "http://127.0.0.1:$1/v1/status" >"$SNAP/connector-receiver-1.status.json" 2>&1
"$LG" get "http://127.0.0.1:$MON_PORT/varz" >"$SNAP/nats-varz.json" 2>&1
"$LG" get "http://127.0.0.1:$MON_PORT/jsz?streams=true" >"$SNAP/nats-jsz.json" 2>&1
"$LG" get "http://127.0.0.1:$MON_PORT/connz?subs=false" >"$SNAP/nats-connz.json" 2>&1
{
	echo
	echo "rerun: $RERUN"
	echo "counters after the run (every service's /metrics and /v1/status, nats /varz /jsz): $SNAP"
} | tee -a "$OUT"
for f in "$WORK"/*.log; do
	n=$(grep -c '"level":"error"' "$f" 2>/dev/null)
	[ "${n:-0}" -gt 0 ] && echo "note: $(basename "$f") has $n error lines" | tee -a "$OUT"
done
echo "report written to $OUT" >&2
[ $RC -eq 0 ] && exit 0
[ $RC -eq 1 ] && exit 1
echo "bench: the load generator failed (exit $RC)" >&2
exit 2
