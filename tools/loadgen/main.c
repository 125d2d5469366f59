/*
 * main.c - clawrelay-loadgen: the load generator behind `make bench`.
 *
 *   clawrelay-loadgen run [options]      drive a running stack, print a report
 *   clawrelay-loadgen free-port [N]      print N free TCP ports on 127.0.0.1
 *   clawrelay-loadgen wait-ready URL S   wait up to S seconds for URL to answer 200
 *   clawrelay-loadgen get URL            print the body of GET URL (status >= 400: exit 1)
 *   clawrelay-loadgen machine-busy S     print how busy the CPUs were over S seconds
 *
 * `run` starts the embedded hook server (the receiving connectors' hook),
 * opens the socket senders' WebSockets when the socket scenario is asked
 * for, then runs each scenario in turn: a warm-up, then sending for
 * --seconds, then waiting until every accepted message has reached the hook
 * (or no new one arrived for --drain-seconds), then reporting.
 * scripts/bench.sh starts the stack and the connectors and calls it. Exit
 * code: 0 every floor met, 1 a floor not met, 2 usage or set-up error.
 *
 * Threads: main owns the run; lg_send_run starts and joins the sender
 * threads of one scenario (lg_sock_run those of the socket scenario);
 * the hook server's own thread runs the hook (lg_hook.c).
 */
#include <arpa/inet.h>
#include <getopt.h>
#include <netinet/in.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include <curl/curl.h>

#include "auth.h"
#include "lg.h"
#include "lg_http.h"
#include "util.h"

static void
usage(FILE *f)
{
	fprintf(f,
	    "usage: clawrelay-loadgen run --gateway URL --hook-port N --recipient ID...\n"
	    "                             [--sender ID=KEYFILE]... [--ws-sender ID=KEYFILE]...\n"
	    "                             [--connector URL]... [options]\n"
	    "       clawrelay-loadgen free-port [N]\n"
	    "       clawrelay-loadgen wait-ready URL SECONDS\n"
	    "       clawrelay-loadgen get URL\n"
	    "       clawrelay-loadgen machine-busy SECONDS\n"
	    "\n"
	    "run options:\n"
	    "  --gateway URL          gateway base URL (http://127.0.0.1:PORT)\n"
	    "  --hook-port N          port of the embedded hook; receiving connectors use\n"
	    "                         CLAWRELAY_HOOK_URL=http://127.0.0.1:N/hook/<agent>\n"
	    "  --recipient ID         a receiving agent (repeat; messages go round robin)\n"
	    "  --sender ID=KEYFILE    an HTTP sender and its private key (repeat)\n"
	    "  --ws-sender ID=KEYFILE a socket sender and its private key: the socket scenario\n"
	    "                         opens one WebSocket to the gateway per sender (repeat)\n"
	    "  --socket-window N      enqueue frames in flight per socket, 1-65536; at most the\n"
	    "                         gateway's CLAWRELAY_WS_ENQUEUE_WINDOW (default 256)\n"
	    "  --socket-backlog N     socket: at most N messages sent and not yet delivered (or\n"
	    "                         refused), all sockets together, so the stack is measured in\n"
	    "                         a steady state, not while it drains a growing backlog;\n"
	    "                         0 = no limit (default 1024)\n"
	    "  --socket-events 0|1    send a connector_sent hop event per message in event_batch\n"
	    "                         frames, as the connector does (default 1)\n"
	    "  --connector URL        a sending connector's local API base URL, for the\n"
	    "                         connector scenario (repeat)\n"
	    "  --scenario NAME        http | socket | fixed | connector (repeat; default: http,\n"
	    "                         socket, fixed as far as the senders allow, in that order)\n"
	    "  --seconds S            sending time of each scenario (default 10)\n"
	    "  --concurrency N        concurrent requests of http and connector, 1-1024 (default 32)\n"
	    "  --fixed-rate R         msg/s of the fixed scenario (default 1000)\n"
	    "  --fixed-concurrency N  sender threads of the fixed scenario (default 32)\n"
	    "  --payload-bytes B      payload size, 64-65536 (default 256)\n"
	    "  --drain-seconds S      give up waiting for deliveries after S s without one (default 15)\n"
	    "  --settle-seconds S     pause between scenarios (default 2)\n"
	    "  --warmup S             warm-up seconds per kind, not reported (default 2; 0 = none)\n"
	    "  --floor-http R         delivered msg/s floor of http (default 2500)\n"
	    "  --floor-socket R       delivered msg/s floor of socket (default 5000; connector\n"
	    "                         has none)\n"
	    "  --floor-p99-ms MS      p99 e2e floor of fixed (default 50)\n"
	    "  --watch NAME=PID       report that process's CPU per scenario (repeat)\n");
}

/* free-port: bind N sockets to port 0 at once, so the ports differ */
static int
cmd_free_port(int argc, char **argv)
{
	int n = argc > 1 ? atoi(argv[1]) : 1, fds[256];

	if (n < 1 || n > 256)
		return usage(stderr), 2;
	for (int i = 0; i < n; i++) {
		struct sockaddr_in a;
		socklen_t len = sizeof(a);
		memset(&a, 0, sizeof(a));
		a.sin_family = AF_INET;
		a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
		fds[i] = socket(AF_INET, SOCK_STREAM, 0);
		if (fds[i] < 0 || bind(fds[i], (struct sockaddr *)&a, sizeof(a)) < 0 ||
		    getsockname(fds[i], (struct sockaddr *)&a, &len) < 0) {
			perror("free-port");
			return 2;
		}
		printf("%d\n", ntohs(a.sin_port));
	}
	for (int i = 0; i < n; i++)
		close(fds[i]);
	return 0;
}

static size_t
discard(char *p, size_t s, size_t n, void *ud)
{
	return s * n;
}

/* wait-ready: GET URL until it answers 200 */
static int
cmd_wait_ready(int argc, char **argv)
{
	if (argc < 3)
		return usage(stderr), 2;
	uint64_t deadline = lg_mono_us() + (uint64_t)(atof(argv[2]) * 1e6);
	CURL *h = curl_easy_init();
	int rc = 1;

	if (h == NULL)
		return 2;
	curl_easy_setopt(h, CURLOPT_URL, argv[1]);
	curl_easy_setopt(h, CURLOPT_TIMEOUT_MS, 2000L);
	curl_easy_setopt(h, CURLOPT_NOSIGNAL, 1L);
	curl_easy_setopt(h, CURLOPT_WRITEFUNCTION, discard);
	while (lg_mono_us() < deadline) {
		long status = 0;
		if (curl_easy_perform(h) == CURLE_OK &&
		    curl_easy_getinfo(h, CURLINFO_RESPONSE_CODE, &status) == CURLE_OK &&
		    status == 200) {
			rc = 0;
			break;
		}
		lg_sleep_until_us(lg_mono_us() + 100000);
	}
	curl_easy_cleanup(h);
	if (rc)
		fprintf(stderr, "loadgen: %s not ready\n", argv[1]);
	return rc;
}

static size_t
to_stdout(char *p, size_t s, size_t n, void *ud)
{
	return fwrite(p, s, n, stdout) * s;
}

/* get: print the body of GET URL */
static int
cmd_get(int argc, char **argv)
{
	CURL *h;
	long status = 0;
	CURLcode rc;

	if (argc < 2)
		return usage(stderr), 2;
	if ((h = curl_easy_init()) == NULL)
		return 2;
	curl_easy_setopt(h, CURLOPT_URL, argv[1]);
	curl_easy_setopt(h, CURLOPT_TIMEOUT_MS, 5000L);
	curl_easy_setopt(h, CURLOPT_NOSIGNAL, 1L);
	curl_easy_setopt(h, CURLOPT_WRITEFUNCTION, to_stdout);
	rc = curl_easy_perform(h);
	if (rc == CURLE_OK)
		curl_easy_getinfo(h, CURLINFO_RESPONSE_CODE, &status);
	curl_easy_cleanup(h);
	if (rc != CURLE_OK)
		fprintf(stderr, "loadgen: GET %s: %s\n", argv[1], curl_easy_strerror(rc));
	return rc == CURLE_OK && status < 400 ? 0 : 1;
}

/* machine-busy: share of CPU time not idle over S seconds, in % of one core */
static int
cmd_machine_busy(int argc, char **argv)
{
	double secs = argc > 1 ? atof(argv[1]) : 1;
	unsigned long long a[8], b[8];
	FILE *f;

	if (secs <= 0 || secs > 600)
		return usage(stderr), 2;
	for (int k = 0; k < 2; k++) {
		unsigned long long *v = k ? b : a;
		if (k)
			lg_sleep_until_us(lg_mono_us() + (uint64_t)(secs * 1e6));
		if ((f = fopen("/proc/stat", "r")) == NULL)
			return 2;
		int got = fscanf(f, "cpu %llu %llu %llu %llu %llu %llu %llu %llu", &v[0], &v[1],
		    &v[2], &v[3], &v[4], &v[5], &v[6], &v[7]);
		fclose(f);
		if (got != 8)
			return 2;
	}
	unsigned long long tot = 0, idle = (b[3] - a[3]) + (b[4] - a[4]);
	for (int i = 0; i < 8; i++)
		tot += b[i] - a[i];
	long ncpu = sysconf(_SC_NPROCESSORS_ONLN);
	printf("%.0f%% of %ld00%%\n", tot ? 100.0 * (double)ncpu * (double)(tot - idle) /
	    (double)tot : 0, ncpu);
	return 0;
}

/* ID=KEYFILE into list[*n] */
static int
add_sender(struct lg_sender *list, int *n, const char *opt, const char *arg)
{
	const char *eq = strchr(arg, '=');
	char path[512];
	struct lg_sender *s;

	if (eq == NULL || eq == arg || *n >= LG_MAX_IDS || (size_t)(eq - arg) >= sizeof(s->id)) {
		fprintf(stderr, "loadgen: %s wants ID=KEYFILE: %s\n", opt, arg);
		return -1;
	}
	s = &list[*n];
	snprintf(s->id, sizeof(s->id), "%.*s", (int)(eq - arg), arg);
	snprintf(path, sizeof(path), "%s", eq + 1);
	if (auth_key_load_private(path, &s->key) != CR_OK) {
		fprintf(stderr, "loadgen: cannot load private key %s\n", path);
		return -1;
	}
	(*n)++;
	return 0;
}

static int
add_watch(struct lg_run *run, const char *arg)
{
	const char *eq = strchr(arg, '=');
	struct lg_watch *w;

	if (eq == NULL || run->nwatch >= LG_MAX_WATCH) {
		fprintf(stderr, "loadgen: --watch wants NAME=PID: %s\n", arg);
		return -1;
	}
	w = &run->watch[run->nwatch++];
	snprintf(w->name, sizeof(w->name), "%.*s", (int)(eq - arg), arg);
	w->pid = atoi(eq + 1);
	return 0;
}

static void
run_free(struct lg_run *run)
{
	for (int i = 0; i < run->nsenders; i++)
		auth_key_free(run->senders[i].key);
	for (int i = 0; i < run->nws; i++)
		auth_key_free(run->ws_senders[i].key);
}

/* run one scenario: send, drain, report; returns 1 if its floors were met */
static int
run_scenario(struct lg_run *run, const struct lg_scen *sc, int id)
{
	double rate_cap = sc->rate > 0 ? sc->rate : 40000.0;
	size_t cap = (size_t)(rate_cap * sc->seconds) + 1024;
	struct lg_rec *rec = lg_rec_new(id, cap);
	int met;

	if (rec == NULL) {
		fprintf(stderr, "loadgen: out of memory for %zu messages\n", cap);
		return 0;
	}
	lg_hook_set(rec);
	lg_watch_begin(run);
	rec->t0_us = lg_mono_us() + 20000;	/* let every thread start first */
	rec->t_end_us = rec->t0_us + (uint64_t)(sc->seconds * 1e6);
	atomic_store(&rec->t_last_send_us, rec->t0_us);
	if (sc->rate <= 0)
		lg_sleep_until_us(rec->t0_us);
	lg_send_run(run, sc, rec);

	/* drain: until every accepted message arrived, or none for drain_seconds */
	size_t last = atomic_load(&rec->delivered);
	uint64_t idle_since = lg_mono_us();
	while (atomic_load(&rec->delivered) < atomic_load(&rec->accepted)) {
		lg_sleep_until_us(lg_mono_us() + 50000);
		size_t now = atomic_load(&rec->delivered);
		if (now != last) {
			last = now;
			idle_since = lg_mono_us();
		} else if (lg_mono_us() - idle_since > (uint64_t)(run->drain_seconds * 1e6)) {
			break;
		}
	}
	double wall = (double)(lg_mono_us() - rec->t0_us) / 1e6;
	met = lg_report(run, sc, rec, wall);
	lg_hook_set(NULL);
	lg_rec_free(rec);
	return met;
}

static int
has_scen(char list[][16], int n, const char *name)
{
	for (int i = 0; i < n; i++)
		if (strcmp(list[i], name) == 0)
			return 1;
	return 0;
}

static int
cmd_run(int argc, char **argv)
{
	static struct lg_run run;
	char scen[LG_MAX_SCEN][16];
	int nscen = 0, hook_port = 0, conc = 32, fixed_conc = 32, rc = 2;
	double seconds = 10, fixed_rate = 1000, warmup = 2;
	double floor_http = 2500, floor_socket = 5000, floor_p99 = 50;
	long payload = 256;
	enum { O_GW = 1, O_HOOK, O_RCPT, O_SENDER, O_WS_SENDER, O_WS_WINDOW, O_WS_EVENTS, O_WS_BACKLOG, O_CONN, O_SCEN,
		O_SECS, O_CONC, O_FRATE, O_FCONC, O_PAYLOAD, O_DRAIN, O_SETTLE, O_WARM, O_FHTTP,
		O_FSOCK, O_FP99, O_WATCH, O_HELP };
	static const struct option opts[] = {
		{ "gateway", 1, NULL, O_GW }, { "hook-port", 1, NULL, O_HOOK },
		{ "recipient", 1, NULL, O_RCPT }, { "sender", 1, NULL, O_SENDER },
		{ "ws-sender", 1, NULL, O_WS_SENDER }, { "socket-window", 1, NULL, O_WS_WINDOW },
		{ "socket-events", 1, NULL, O_WS_EVENTS }, { "socket-backlog", 1, NULL, O_WS_BACKLOG },
		{ "connector", 1, NULL, O_CONN },
		{ "scenario", 1, NULL, O_SCEN },
		{ "seconds", 1, NULL, O_SECS }, { "concurrency", 1, NULL, O_CONC },
		{ "fixed-rate", 1, NULL, O_FRATE }, { "fixed-concurrency", 1, NULL, O_FCONC },
		{ "payload-bytes", 1, NULL, O_PAYLOAD }, { "drain-seconds", 1, NULL, O_DRAIN },
		{ "settle-seconds", 1, NULL, O_SETTLE }, { "warmup", 1, NULL, O_WARM },
		{ "floor-http", 1, NULL, O_FHTTP }, { "floor-socket", 1, NULL, O_FSOCK },
		{ "floor-p99-ms", 1, NULL, O_FP99 }, { "watch", 1, NULL, O_WATCH },
		{ "help", 0, NULL, O_HELP }, { NULL, 0, NULL, 0 }
	};
	int o;

	run.drain_seconds = 15;
	run.settle_seconds = 2;
	run.ws_window = 256;
	run.ws_events = 1;
	run.ws_backlog = 1024;
	while ((o = getopt_long(argc, argv, "", opts, NULL)) != -1) {
		switch (o) {
		case O_GW: snprintf(run.gateway, sizeof(run.gateway), "%s", optarg); break;
		case O_HOOK: hook_port = atoi(optarg); break;
		case O_RCPT:
			if (run.nrecipients >= LG_MAX_IDS)
				goto bad;
			snprintf(run.recipients[run.nrecipients++], sizeof(run.recipients[0]), "%s",
			    optarg);
			break;
		case O_SENDER:
			if (add_sender(run.senders, &run.nsenders, "--sender", optarg) != 0)
				goto out;
			break;
		case O_WS_SENDER:
			if (add_sender(run.ws_senders, &run.nws, "--ws-sender", optarg) != 0)
				goto out;
			break;
		case O_WS_WINDOW: run.ws_window = atoi(optarg); break;
		case O_WS_EVENTS: run.ws_events = atoi(optarg) != 0; break;
		case O_WS_BACKLOG: run.ws_backlog = atoi(optarg); break;
		case O_CONN: {
			struct lg_dest *d = &run.conns[run.nconn];
			if (run.nconn >= LG_MAX_IDS || lg_url_parse(optarg, d->host, sizeof(d->host),
			    &d->port, d->base, sizeof(d->base)) != 0) {
				fprintf(stderr, "loadgen: --connector wants http://host[:port]: %s\n", optarg);
				goto bad;
			}
			run.nconn++;
			break;
		}
		case O_SCEN:
			if (nscen >= LG_MAX_SCEN || (strcmp(optarg, "http") && strcmp(optarg, "socket") &&
			    strcmp(optarg, "fixed") && strcmp(optarg, "connector")))
				goto bad;
			snprintf(scen[nscen++], sizeof(scen[0]), "%s", optarg);
			break;
		case O_SECS: seconds = atof(optarg); break;
		case O_CONC: conc = atoi(optarg); break;
		case O_FRATE: fixed_rate = atof(optarg); break;
		case O_FCONC: fixed_conc = atoi(optarg); break;
		case O_PAYLOAD: payload = atol(optarg); break;
		case O_DRAIN: run.drain_seconds = atof(optarg); break;
		case O_SETTLE: run.settle_seconds = atof(optarg); break;
		case O_WARM: warmup = atof(optarg); break;
		case O_FHTTP: floor_http = atof(optarg); break;
		case O_FSOCK: floor_socket = atof(optarg); break;
		case O_FP99: floor_p99 = atof(optarg); break;
		case O_WATCH:
			if (add_watch(&run, optarg) != 0)
				goto out;
			break;
		case O_HELP: usage(stdout); rc = 0; goto out;
		default: goto bad;
		}
	}
	if (nscen == 0) {
		if (run.nsenders)
			snprintf(scen[nscen++], sizeof(scen[0]), "http");
		if (run.nws)
			snprintf(scen[nscen++], sizeof(scen[0]), "socket");
		if (run.nsenders)
			snprintf(scen[nscen++], sizeof(scen[0]), "fixed");
	}
	if (run.gateway[0] == '\0' || hook_port <= 0 || hook_port > 65535 ||
	    run.nrecipients == 0 || nscen == 0 || seconds <= 0 || conc < 1 || conc > 1024 ||
	    fixed_conc < 1 || fixed_conc > 1024 || fixed_rate <= 0 || payload < 64 ||
	    payload > LG_PAYLOAD_MAX || warmup < 0 || run.drain_seconds <= 0 ||
	    run.ws_window < 1 || run.ws_window > 65536 || run.ws_backlog < 0)
		goto bad;
	if (lg_url_parse(run.gateway, run.gw.host, sizeof(run.gw.host), &run.gw.port, run.gw.base,
	    sizeof(run.gw.base)) != 0) {
		fprintf(stderr, "loadgen: --gateway wants http://host[:port][/path]: %s\n", run.gateway);
		goto bad;
	}
	if ((has_scen(scen, nscen, "http") || has_scen(scen, nscen, "fixed")) && run.nsenders == 0) {
		fprintf(stderr, "loadgen: http and fixed scenarios need --sender\n");
		goto bad;
	}
	if (has_scen(scen, nscen, "socket") && run.nws == 0) {
		fprintf(stderr, "loadgen: the socket scenario needs --ws-sender\n");
		goto bad;
	}
	if (has_scen(scen, nscen, "connector") && run.nconn == 0) {
		fprintf(stderr, "loadgen: the connector scenario needs --connector\n");
		goto bad;
	}
	run.payload_bytes = (size_t)payload;
	rand_hex(run.run_tag, 8);
	add_watch(&run, "loadgen=0");
	run.watch[run.nwatch - 1].pid = (int)getpid();

	if (lg_hook_start(hook_port) != 0) {
		fprintf(stderr, "loadgen: cannot listen on 127.0.0.1:%d for the hook\n", hook_port);
		goto out;
	}
	printf("loadgen: %d recipients, %d HTTP senders, %d socket senders (window %d), "
	    "%d sending connectors, payload %zu B\n", run.nrecipients, run.nsenders, run.nws,
	    run.ws_window, run.nconn, run.payload_bytes);
	fflush(stdout);
	if (has_scen(scen, nscen, "socket")) {
		/* a stack that has just started may not own every partition yet
		 * (relay-session answers the reconnect only then): try for 30 s */
		int opened = -1;
		for (int t = 0; t < 30 && (opened = lg_sock_open_all(&run)) != 0; t++)
			sleep(1);
		if (opened != 0) {
			fprintf(stderr, "loadgen: the socket senders' sockets did not all open\n");
			lg_sock_close_all();
			lg_hook_stop();
			goto out;
		}
		printf("loadgen: %d sockets open (reconnect_ack received)\n", run.nws);
		fflush(stdout);
	}

	int id = 1, all_met = 1;
	if (warmup > 0) {
		/* as many senders as any scenario, so every connection is open */
		struct lg_scen w = { .concurrency = conc > fixed_conc ? conc : fixed_conc,
			.seconds = warmup, .report = 0 };
		if (run.nsenders && (has_scen(scen, nscen, "http") || has_scen(scen, nscen, "fixed"))) {
			snprintf(w.name, sizeof(w.name), "http");
			w.kind = LG_KIND_HTTP;
			run_scenario(&run, &w, id++);
		}
		if (has_scen(scen, nscen, "socket")) {
			struct lg_scen ws = w;
			snprintf(ws.name, sizeof(ws.name), "socket");
			ws.kind = LG_KIND_SOCKET;
			ws.concurrency = run.nws;
			ws.window = run.ws_window;
			run_scenario(&run, &ws, id++);
		}
		if (has_scen(scen, nscen, "connector")) {
			snprintf(w.name, sizeof(w.name), "connector");
			w.kind = LG_KIND_CONNECTOR;
			run_scenario(&run, &w, id++);
		}
		lg_sleep_until_us(lg_mono_us() + (uint64_t)(run.settle_seconds * 1e6));
	}
	for (int i = 0; i < nscen; i++) {
		struct lg_scen s = { .seconds = seconds, .report = 1 };
		snprintf(s.name, sizeof(s.name), "%s", scen[i]);
		if (strcmp(scen[i], "http") == 0) {
			s.kind = LG_KIND_HTTP;
			s.concurrency = conc;
			s.floor_rate = floor_http;
		} else if (strcmp(scen[i], "socket") == 0) {
			s.kind = LG_KIND_SOCKET;
			s.concurrency = run.nws;
			s.window = run.ws_window;
			s.floor_rate = floor_socket;
		} else if (strcmp(scen[i], "connector") == 0) {
			s.kind = LG_KIND_CONNECTOR;	/* informational: no floor */
			s.concurrency = conc;
		} else {
			s.kind = LG_KIND_HTTP;
			s.rate = fixed_rate;
			s.concurrency = fixed_conc;
			s.floor_p99_ms = floor_p99;
		}
		all_met &= run_scenario(&run, &s, id++);
		if (i + 1 < nscen)
			lg_sleep_until_us(lg_mono_us() + (uint64_t)(run.settle_seconds * 1e6));
	}
	printf("\nhook calls %zu, stray (late from an earlier scenario or unparsable) %zu\n",
	    lg_hook_calls(), lg_hook_stray());
	printf("FLOORS %s\n", all_met ? "ALL MET" : "NOT ALL MET");
	fflush(stdout);
	lg_send_cleanup();
	lg_sock_close_all();
	lg_hook_stop();
	rc = all_met ? 0 : 1;
	goto out;
bad:
	usage(stderr);
	rc = 2;
out:
	run_free(&run);
	return rc;
}

/* main - dispatch to run, free-port, wait-ready, get or machine-busy */
int
main(int argc, char **argv)
{
	int rc;

	if (argc < 2) {
		usage(stderr);
		return 2;
	}
	signal(SIGPIPE, SIG_IGN);
	curl_global_init(CURL_GLOBAL_DEFAULT);
	if (strcmp(argv[1], "free-port") == 0)
		rc = cmd_free_port(argc - 1, argv + 1);
	else if (strcmp(argv[1], "wait-ready") == 0)
		rc = cmd_wait_ready(argc - 1, argv + 1);
	else if (strcmp(argv[1], "get") == 0)
		rc = cmd_get(argc - 1, argv + 1);
	else if (strcmp(argv[1], "machine-busy") == 0)
		rc = cmd_machine_busy(argc - 1, argv + 1);
	else if (strcmp(argv[1], "run") == 0)
		rc = cmd_run(argc - 1, argv + 1);
	else if (strcmp(argv[1], "--help") == 0 || strcmp(argv[1], "-h") == 0)
		usage(stdout), rc = 0;
	else
		usage(stderr), rc = 2;
	curl_global_cleanup();
	return rc;
}
