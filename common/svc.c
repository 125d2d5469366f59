/*
 * svc.c - the service skeleton (see svc.h).
 *
 * Start-up: args -> config -> log -> signals -> bus -> hop events -> HTTP ->
 * def->init -> "ready" loop with def->tick. Shutdown on SIGTERM/SIGINT (the
 * handler only sets a flag): def->drain -> HTTP stop -> bus subscriptions
 * drained -> bus closed -> def->fini -> config freed. Reverse of start-up.
 */
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <curl/curl.h>

#include "hop.h"
#include "http.h"
#include "log.h"
#include "metrics.h"
#include "svc.h"

struct svc {
	const struct svc_def *def;
	void *st;
	struct bus *bus;
	struct mg_context *http;
	char *nats_url, *prefix, *http_addr, *log_level, *instance;
	long long http_port, http_threads, tick_ms, partitions, kv_replicas;
	int hop_events;
	char instance_buf[160];
	uint64_t started_ms;
	volatile sig_atomic_t stop;
	atomic_int inited;      /* def->init returned (civetweb's threads read it) */
};

static volatile sig_atomic_t got_signal;

static void
on_signal(int sig)
{
	got_signal = sig;
}

struct bus *svc_bus(struct svc *s) { return s->bus; }
struct mg_context *svc_http(struct svc *s) { return s->http; }
const char *svc_instance(const struct svc *s) { return s->instance_buf; }
const char *svc_name(const struct svc *s) { return s->def->name; }
int svc_http_port(const struct svc *s) { return (int)s->http_port; }
uint32_t svc_partitions(const struct svc *s) { return (uint32_t)s->partitions; }
int svc_stopping(const struct svc *s) { return s->stop || got_signal; }

/* svc_request_stop - ask the main loop to drain and stop (any thread) */
void
svc_request_stop(struct svc *s)
{
	s->stop = 1;
}

/* svc_route - add an HTTP handler */
void
svc_route(struct svc *s, const char *uri, mg_request_handler h, void *arg)
{
	mg_set_request_handler(s->http, uri, h, arg);
}

static int
is_ready(struct svc *s)
{
	/* the HTTP server answers while init still loads (a collector reading a
	 * day of rollups): not ready until it is done */
	if (!atomic_load(&s->inited))
		return 0;
	if (!s->def->no_bus && !bus_is_connected(s->bus))
		return 0;
	if (s->def->ready)
		return s->def->ready(s, s->st);
	return 1;
}

static int
h_healthz(struct mg_connection *c, void *arg)
{
	http_json(c, 200, "{\"status\":\"ok\"}");
	return 200;
}

static int
h_readyz(struct mg_connection *c, void *arg)
{
	struct svc *s = arg;
	if (!svc_stopping(s) && is_ready(s))
		http_json(c, 200, "{\"status\":\"ready\"}");
	else
		http_json(c, 503, "{\"status\":\"not_ready\"}");
	return 200;
}

static int
h_status(struct mg_connection *c, void *arg)
{
	struct svc *s = arg;
	cJSON *o = cJSON_CreateObject();
	cJSON_AddStringToObject(o, "service", s->def->name);
	cJSON_AddStringToObject(o, "instance", s->instance_buf);
	cJSON_AddNumberToObject(o, "uptimeMs", (double)(now_ms() - s->started_ms));
	cJSON_AddBoolToObject(o, "ready", is_ready(s));
	if (!s->def->no_bus)
		cJSON_AddBoolToObject(o, "natsConnected", bus_is_connected(s->bus));
	if (s->def->status)
		s->def->status(s, s->st, o);
	char *txt = cJSON_PrintUnformatted(o);
	http_json(c, 200, txt ? txt : "{}");
	free(txt);
	cJSON_Delete(o);
	return 200;
}

static int
h_metrics(struct mg_connection *c, void *arg)
{
	struct svc *s = arg;
	struct strbuf sb;
	sb_init(&sb);
	sb_printf(&sb, "# HELP clawrelay_up Whether the service is ready.\n# TYPE clawrelay_up gauge\n"
	    "clawrelay_up{service=\"%s\"} %d\n", s->def->name, is_ready(s));
	metrics_render(&sb);
	if (s->def->metrics)
		s->def->metrics(s, s->st, &sb);
	http_reply(c, 200, "text/plain; version=0.0.4", NULL, sb.data ? sb.data : "", sb.len);
	sb_free(&sb);
	return 200;
}

static int
log_civetweb(const struct mg_connection *c, const char *msg)
{
	log_warn(NULL, "http: %s", msg);
	return 1;
}

static void
usage(const struct svc_def *def, const struct cfg_item *common, size_t ncommon, FILE *f)
{
	fprintf(f, "usage: clawrelay-%s [--help] [--print-config]\n\n%s\n\n"
	    "Settings (environment variables):\n", def->name, def->summary);
	cfg_print_help(common, ncommon, f);
	cfg_print_help(def->cfg, def->ncfg, f);
}

/* svc_main - run the service; returns the process exit code */
int
svc_main(int argc, char **argv, const struct svc_def *def, void *st)
{
	struct svc s;
	char err[512];
	int rc = 1, print_config = 0, markdown = 0;
	struct sigaction sa;

	memset(&s, 0, sizeof(s));
	s.def = def;
	s.st = st;
	const struct cfg_item common[] = {
		{ "NATS_URL", CFG_STR, "nats://127.0.0.1:4222", 1, 1024,
		  "NATS server URL(s), comma-separated", &s.nats_url },
		{ "SUBJECT_PREFIX", CFG_STR, "clawrelay", 1, 32,
		  "first token of every subject", &s.prefix },
		{ "HTTP_ADDR", CFG_STR, "127.0.0.1", 1, 64,
		  "address of the HTTP port (health, status, metrics, API)", &s.http_addr },
		{ "HTTP_PORT", CFG_INT, def->default_port, 1, 65535,
		  "HTTP port of this service", &s.http_port },
		{ "HTTP_THREADS", CFG_INT, "64", 2, 4096,
		  "HTTP worker threads (each keep-alive or WebSocket connection holds one)", &s.http_threads },
		{ "LOG_LEVEL", CFG_STR, "info", 1, 5, "debug, info, warn or error", &s.log_level },
		{ "INSTANCE", CFG_STR, "", 0, 128, "instance name in logs and events (default host-pid)", &s.instance },
		{ "TICK_MS", CFG_INT, "100", 5, 10000, "period of the service's timer tick", &s.tick_ms },
		{ "PARTITIONS", CFG_INT, "16", 1, 1024, "number of relay-session partitions", &s.partitions },
		{ "HOP_EVENTS", CFG_BOOL, "true", 0, 0,
		  "emit hop events (traces, end-to-end latency); false only to measure their cost",
		  &s.hop_events },
		{ "KV_REPLICAS", CFG_INT, "1", 1, 5,
		  "replicas of the NATS KV buckets this service creates (3 on a 3-node cluster; a bucket that exists keeps its own)",
		  &s.kv_replicas },
	};
	const size_t ncommon = sizeof(common) / sizeof(common[0]);

	for (int i = 1; i < argc; i++) {
		if (!strcmp(argv[i], "--help") || !strcmp(argv[i], "-h")) {
			usage(def, common, ncommon, stdout);
			return 0;
		} else if (!strcmp(argv[i], "--print-config")) {
			print_config = 1;
		} else if (!strcmp(argv[i], "--config-markdown")) {
			markdown = 1;
		} else {
			fprintf(stderr, "clawrelay-%s: unknown argument %s (try --help)\n", def->name, argv[i]);
			return 2;
		}
	}
	if (markdown) {
		cfg_print_markdown(common, ncommon, stdout);
		cfg_print_markdown(def->cfg, def->ncfg, stdout);
		return 0;
	}
	if (cfg_load(common, ncommon, err, sizeof(err)) < 0 ||
	    cfg_load(def->cfg, def->ncfg, err, sizeof(err)) < 0) {
		fprintf(stderr, "clawrelay-%s: bad setting: %s\n", def->name, err);
		goto out_cfg;
	}
	int lvl = log_level_parse(s.log_level);
	if (lvl < 0) {
		fprintf(stderr, "clawrelay-%s: bad setting: CLAWRELAY_LOG_LEVEL: \"%s\" is not debug, info, warn or error\n",
		    def->name, s.log_level);
		goto out_cfg;
	}
	if (print_config) {
		cfg_print(common, ncommon, stdout);
		cfg_print(def->cfg, def->ncfg, stdout);
		rc = 0;
		goto out_cfg;
	}
	if (*s.instance)
		snprintf(s.instance_buf, sizeof(s.instance_buf), "%s", s.instance);
	else {
		char host[64] = "host";
		gethostname(host, sizeof(host) - 1);
		snprintf(s.instance_buf, sizeof(s.instance_buf), "%s-%d", host, (int)getpid());
	}
	log_init(def->name, s.instance_buf, (enum log_level)lvl);
	hop_set_enabled(s.hop_events);
	s.started_ms = now_ms();
	log_info(NULL, "starting");
	if (log_enabled(LOG_DEBUG)) {
		/* the effective config, one debug line per setting */
		char *buf = NULL;
		size_t len = 0;
		FILE *f = open_memstream(&buf, &len);
		if (f) {
			cfg_print(common, ncommon, f);
			cfg_print(def->cfg, def->ncfg, f);
			fclose(f);
			for (char *save = NULL, *l = strtok_r(buf, "\n", &save); l; l = strtok_r(NULL, "\n", &save))
				log_debug(NULL, "config %s", l);
			free(buf);
		}
	}

	memset(&sa, 0, sizeof(sa));
	sa.sa_handler = on_signal;
	sigemptyset(&sa.sa_mask);
	sigaction(SIGTERM, &sa, NULL);
	sigaction(SIGINT, &sa, NULL);
	signal(SIGPIPE, SIG_IGN);
	curl_global_init(CURL_GLOBAL_DEFAULT);

	if (!def->no_bus) {
		char cname[256];
		snprintf(cname, sizeof(cname), "clawrelay-%s/%s", def->name, s.instance_buf);
		/* no lock spinning: on a machine with few cores a spinning waiter
		 * burns the CPU the lock holder needs (a no-op if already opened) */
		nats_Open(0);
		log_info(NULL, "connecting to NATS at %s (waits until it answers)", s.nats_url);
		if (bus_connect(s.nats_url, cname, s.prefix, &s.bus) != CR_OK) {
			fprintf(stderr, "clawrelay-%s: cannot use CLAWRELAY_NATS_URL=%s\n", def->name, s.nats_url);
			goto out_curl;
		}
		bus_set_kv_replicas(s.bus, (int)s.kv_replicas);
		hop_init(s.bus, def->name, s.instance_buf);
	}

	char ports[96], threads[16];
	snprintf(ports, sizeof(ports), "%s:%lld", s.http_addr, s.http_port);
	snprintf(threads, sizeof(threads), "%lld", s.http_threads);
	const char *opts[] = {
		"listening_ports", ports,
		"num_threads", threads,
		"enable_keep_alive", "yes",
		"keep_alive_timeout_ms", "30000",
		"tcp_nodelay", "1",
		"request_timeout_ms", "30000",
		"enable_websocket_ping_pong", "no",
		"websocket_timeout_ms", "3600000",
		NULL,
	};
	struct mg_callbacks cb;
	memset(&cb, 0, sizeof(cb));
	cb.log_message = log_civetweb;
	mg_init_library(0);
	s.http = mg_start(&cb, &s, opts);
	if (s.http == NULL) {
		fprintf(stderr, "clawrelay-%s: cannot listen on CLAWRELAY_HTTP_ADDR:CLAWRELAY_HTTP_PORT = %s\n",
		    def->name, ports);
		goto out_bus;
	}
	mg_set_request_handler(s.http, "/healthz$", h_healthz, &s);
	mg_set_request_handler(s.http, "/readyz$", h_readyz, &s);
	mg_set_request_handler(s.http, "/v1/status$", h_status, &s);
	mg_set_request_handler(s.http, "/metrics$", h_metrics, &s);

	if (def->init && def->init(&s, st) != 0) {
		log_error(NULL, "start-up failed");
		goto out_http;
	}
	atomic_store(&s.inited, 1);
	log_info(NULL, "ready on %s", ports);

	while (!svc_stopping(&s)) {
		struct timespec ts = { (time_t)(s.tick_ms / 1000), (long)(s.tick_ms % 1000) * 1000000L };
		nanosleep(&ts, NULL);
		if (svc_stopping(&s))
			break;
		if (def->tick)
			def->tick(&s, st);
	}
	log_info(NULL, "draining");
	if (def->drain)
		def->drain(&s, st);
	rc = 0;
out_http:
	mg_stop(s.http);
	mg_exit_library();
out_bus:
	if (s.bus)
		bus_drain_subs(s.bus);
	hop_init(NULL, def->name, s.instance_buf);	/* flush pending hop events */
	bus_free(s.bus);
	s.bus = NULL;
	if (!def->no_bus)
		nats_CloseAndWait(2000);	/* nats.c's own threads and memory */
	if (def->fini)
		def->fini(&s, st);
	log_info(NULL, "stopped");
out_curl:
	curl_global_cleanup();
	metrics_free_all();
out_cfg:
	cfg_free(common, ncommon);
	cfg_free(def->cfg, def->ncfg);
	return rc;
}
