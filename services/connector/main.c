/*
 * main.c - clawrelay-connector: runs beside one agent. Local outbound API
 * with a durable outbox, WebSocket to a gateway with the reconnect
 * handshake, durable inbox, and in-order replay to the agent's hook, with a
 * circuit breaker at each of its two boundaries (hook, gateway). It never
 * talks NATS (no_bus).
 *
 * Start-up order: config checks, key, inbox and outbox (one LMDB), hook
 * worker, outbox worker, socket, HTTP routes; teardown is the reverse
 * (socket, outbox worker, hook worker, outbox, inbox).
 * Threads: init/tick/drain/fini on the main thread; see conn.h for the rest.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <curl/curl.h>

#include "auth.h"
#include "conn.h"
#include "log.h"

static void brk_sink(void *arg, const char *json, size_t len);

static struct conn g_state;

static const struct cfg_item conn_cfg[] = {
	{ "AGENT_ID", CFG_STR, "", 0, 128, "this agent's ID (required)", &g_state.cfg.agent_id },
	{ "KEY_FILE", CFG_STR, "", 0, 4096, "Ed25519 private key PEM (clawrelay keygen; required)",
	  &g_state.cfg.key_file },
	{ "GATEWAY_URL", CFG_STR, "http://127.0.0.1:8080", 0, 1024,
	  "gateway base URL; the socket uses ws(s):// of the same host", &g_state.cfg.gateway_url },
	{ "HOOK_URL", CFG_STR, "http://127.0.0.1:9000/hook", 0, 2048,
	  "the local agent's hook: every inbound message is POSTed there", &g_state.cfg.hook_url },
	{ "DATA_DIR", CFG_STR, "./data/connector", 0, 1024, "LMDB directory (inbox, dead letters)",
	  &g_state.cfg.data_dir },
	{ "INBOX_MAX", CFG_INT, "10000", 1, 10000000,
	  "inbox capacity; deliveries beyond it are refused (inbox_full)", &g_state.cfg.inbox_max },
	{ "HOOK_TIMEOUT_MS", CFG_INT, "10000", 10, 600000, "timeout of one hook call",
	  &g_state.cfg.hook_timeout_ms },
	{ "HOOK_MAX_ATTEMPTS", CFG_INT, "10", 1, 1000,
	  "hook attempts before a message is dead-lettered", &g_state.cfg.hook_max_attempts },
	{ "HOOK_BACKOFF_BASE_MS", CFG_INT, "200", 1, 600000, "first hook retry delay",
	  &g_state.cfg.hook_backoff_base_ms },
	{ "HOOK_BACKOFF_CAP_MS", CFG_INT, "30000", 1, 3600000, "longest hook retry delay",
	  &g_state.cfg.hook_backoff_cap_ms },
	{ "RECONNECT_BASE_MS", CFG_INT, "500", 1, 600000, "first reconnect delay",
	  &g_state.cfg.reconnect_base_ms },
	{ "RECONNECT_CAP_MS", CFG_INT, "30000", 1, 3600000, "longest reconnect delay",
	  &g_state.cfg.reconnect_cap_ms },
	{ "HEARTBEAT_S", CFG_INT, "15", 1, 3600,
	  "heartbeat period; 3 silent periods close the socket", &g_state.cfg.heartbeat_s },
	{ "REORDER_MS", CFG_INT, "20", 0, 10000,
	  "a message waits this long in the inbox before its first hook call, so that one "
	  "arriving slightly out of order still goes first", &g_state.cfg.reorder_ms },
	{ "DONE_RETENTION_S", CFG_INT, "86400", 60, 31536000,
	  "how long processed message IDs are remembered to drop duplicates",
	  &g_state.cfg.done_retention_s },
	{ "EVENT_QUEUE_MAX", CFG_INT, "50000", 1, 10000000,
	  "hop events kept while the socket is down (oldest dropped)", &g_state.cfg.event_queue_max },
	{ "ENQUEUE_TIMEOUT_MS", CFG_INT, "10000", 100, 600000,
	  "how long an outbound message waits for the gateway's answer",
	  &g_state.cfg.enqueue_timeout_ms },
	{ "MAX_BODY", CFG_INT, "1048576", 0, 8000000, "largest outbound payload, bytes",
	  &g_state.cfg.max_body },
	{ "STORE_MAP_MB", CFG_INT, "1024", 16, 1048576, "LMDB map size, MiB",
	  &g_state.cfg.store_map_mb },
	{ "EVENT_BATCH", CFG_BOOL, "true", 0, 0,
	  "send hop events to the gateway in event_batch frames (several per frame) instead "
	  "of one event frame each (false: for a gateway older than event_batch)",
	  &g_state.cfg.event_batch },
	{ "STORE_NOSYNC", CFG_BOOL, "false", 0, 0, "skip fsync on commit (tests only)",
	  &g_state.cfg.store_nosync },
	/* both breakers (hook, gateway); see conn_hook.c and conn_outbox.c for
	 * what counts as a failure at each */
	BRKSET_CFG_ITEMS(g_state.cfg.brk),
	{ "OUTBOX_MAX", CFG_INT, "10000", 1, 10000000,
	  "outbox capacity in messages; beyond it the local API answers 507",
	  &g_state.cfg.outbox_max },
	{ "OUTBOX_MAX_MB", CFG_INT, "256", 1, 1048576,
	  "outbox capacity in MiB of stored messages; beyond it the local API answers 507 "
	  "(keep it below STORE_MAP_MB)", &g_state.cfg.outbox_max_mb },
	{ "OUTBOX_FAILED_MAX", CFG_INT, "1000", 1, 1000000,
	  "outboxed messages the gateway refused for good, kept for GET /v1/outbox (oldest "
	  "dropped)", &g_state.cfg.outbox_failed_max },
};

static int conn_init(struct svc *s, void *st)
{
	struct conn *c = st;
	const char *why = NULL;
	enum cr_err e;

	c->svc = s;
	if (auth_check_agent_id(c->cfg.agent_id, &why) != CR_OK) {
		fprintf(stderr, "CLAWRELAY_AGENT_ID: %s\n", why ? why : "required");
		return 1;
	}
	if (!c->cfg.key_file[0]) {
		fprintf(stderr, "CLAWRELAY_KEY_FILE: required (a key from `clawrelay keygen`)\n");
		return 1;
	}
	if ((e = auth_key_load_private(c->cfg.key_file, &c->key)) != CR_OK) {
		fprintf(stderr, "CLAWRELAY_KEY_FILE: cannot load %s: %s\n", c->cfg.key_file,
		    cr_strerror(e));
		return 1;
	}
	if (conn_gw_parse(c->cfg.gateway_url, &c->gw) != 0) {
		fprintf(stderr, "CLAWRELAY_GATEWAY_URL: not http(s)://host[:port][/path]: %s\n",
		    c->cfg.gateway_url);
		return 1;
	}
	if (strncmp(c->cfg.hook_url, "http://", 7) != 0 &&
	    strncmp(c->cfg.hook_url, "https://", 8) != 0) {
		fprintf(stderr, "CLAWRELAY_HOOK_URL: not an http(s) URL: %s\n", c->cfg.hook_url);
		return 1;
	}
	if (c->cfg.hook_backoff_cap_ms < c->cfg.hook_backoff_base_ms ||
	    c->cfg.reconnect_cap_ms < c->cfg.reconnect_base_ms) {
		fprintf(stderr, "CLAWRELAY_*_CAP_MS must not be below its *_BASE_MS\n");
		return 1;
	}
	if (c->cfg.brk.probe_timeout_ms && (c->cfg.brk.probe_timeout_ms <= c->cfg.hook_timeout_ms ||
	    c->cfg.brk.probe_timeout_ms <= 2 * c->cfg.enqueue_timeout_ms)) {
		fprintf(stderr, "CLAWRELAY_BREAKER_PROBE_TIMEOUT_MS must be above "
		    "CLAWRELAY_HOOK_TIMEOUT_MS and twice CLAWRELAY_ENQUEUE_TIMEOUT_MS (a probe is one "
		    "hook call, or one send: the socket, then a POST), or 0\n");
		return 1;
	}
	if (!(c->brks = brkset_new(NULL, "connector", svc_instance(s), &c->cfg.brk))) {
		fprintf(stderr, "CLAWRELAY_BREAKER_*: inconsistent (BREAKER_OPEN_MAX_MS below "
		    "BREAKER_OPEN_MS?)\n");
		return 1;
	}
	pthread_mutex_init(&c->sink_mu, NULL);
	brkset_set_sink(c->brks, brk_sink, c);
	if (c->cfg.outbox_max_mb >= c->cfg.store_map_mb) {
		fprintf(stderr, "CLAWRELAY_OUTBOX_MAX_MB must be below CLAWRELAY_STORE_MAP_MB "
		    "(the inbox shares the store)\n");
		return 1;
	}
	if (curl_global_init(CURL_GLOBAL_DEFAULT) != CURLE_OK) {
		fprintf(stderr, "curl_global_init failed\n");
		return 1;
	}
	if ((e = conn_inbox_open(c)) != CR_OK) {
		fprintf(stderr, "CLAWRELAY_DATA_DIR: cannot open the inbox in %s: %s\n",
		    c->cfg.data_dir, cr_strerror(e));
		return 1;
	}
	if ((e = conn_outbox_open(c)) != CR_OK) {
		fprintf(stderr, "CLAWRELAY_DATA_DIR: cannot open the outbox in %s: %s\n",
		    c->cfg.data_dir, cr_strerror(e));
		return 1;
	}
	if ((e = conn_hook_start(c)) != CR_OK || (e = conn_outbox_start(c)) != CR_OK ||
	    (e = conn_ws_start(c)) != CR_OK) {
		fprintf(stderr, "connector: cannot start its threads: %s\n", cr_strerror(e));
		return 1;
	}
	pthread_mutex_lock(&c->sink_mu);
	c->sink_on = 1;		/* the socket's queue exists now */
	pthread_mutex_unlock(&c->sink_mu);
	svc_route(s, "/v1/outbound", conn_api_outbound, c);
	svc_route(s, "/v1/outbox", conn_outbox_api, c);
	log_info(NULL, "connector for %s: gateway %s, hook %s", c->cfg.agent_id,
	    c->cfg.gateway_url, c->cfg.hook_url);
	return 0;
}

static void conn_tick(struct svc *s, void *st)
{
	struct conn *c = st;
	static uint64_t last_prune, last_online;
	uint64_t now = mono_ms();

	(void)s;
	if (now - last_prune > 60000) {
		last_prune = now;
		conn_inbox_prune(c);
	}
	/* remember when we were last online: offline_since_ms after a crash */
	if (now - last_online > 10000 && conn_ws_is_open(c)) {
		char t[32];

		last_online = now;
		snprintf(t, sizeof(t), "%llu", (unsigned long long)now_ms());
		conn_inbox_meta_put(c, "online_at_ms", t);
	}
}

static int conn_ready(struct svc *s, void *st)
{
	(void)s;
	return conn_ws_is_open(st);
}

static void conn_status(struct svc *s, void *st, cJSON *obj)
{
	struct conn *c = st;

	(void)s;
	cJSON_AddStringToObject(obj, "agent", c->cfg.agent_id);
	conn_ws_status(c, obj);
	conn_inbox_status(c, obj);
	conn_hook_status(c, obj);
	conn_outbox_status(c, obj);
	if (c->brks)
		brkset_status(c->brks, obj);
}

static void conn_metrics(struct svc *s, void *st, struct strbuf *sb)
{
	struct conn *c = st;

	(void)s;
	if (c->brks)
		brkset_metrics(c->brks, sb);
}

/* a breaker's state change goes to the gateway, which publishes it on
 * <P>.breaker.connector (the connector has no NATS of its own); queued like
 * a dead letter, so it survives a reconnect */
static void brk_sink(void *arg, const char *json, size_t len)
{
	struct conn *c = arg;
	Frame f = CLAWRELAY__V1__FRAME__INIT;
	char buf[1024];

	if (len >= sizeof(buf))
		return;
	memcpy(buf, json, len + 1);
	f.schema_version = ENV_SCHEMA;
	f.body_case = CLAWRELAY__V1__FRAME__BODY_BREAKER_EVENT;
	f.breaker_event = buf;
	pthread_mutex_lock(&c->sink_mu);
	if (c->sink_on)
		(void)conn_ws_send(c, &f, CONN_FK_KEEP);
	pthread_mutex_unlock(&c->sink_mu);
}

/* from now on breaker events stay local (the socket is about to go) */
static void brk_sink_off(struct conn *c)
{
	if (c->brks == NULL)
		return;
	pthread_mutex_lock(&c->sink_mu);
	c->sink_on = 0;
	pthread_mutex_unlock(&c->sink_mu);
}

static void conn_drain(struct svc *s, void *st)
{
	struct conn *c = st;

	(void)s;
	brk_sink_off(c);
	/* stop taking deliveries first, then let the calls in progress end */
	conn_ws_stop(c);
	conn_outbox_stop(c);
	conn_hook_stop(c);
}

static void conn_fini(struct svc *s, void *st)
{
	struct conn *c = st;

	(void)s;
	brk_sink_off(c);
	conn_ws_stop(c);
	conn_outbox_stop(c);
	conn_hook_stop(c);
	conn_outbox_close(c);
	conn_inbox_close(c);
	brkset_free(c->brks);
	c->brks = NULL;
	auth_key_free(c->key);
	c->key = NULL;
	curl_global_cleanup();
}

int main(int argc, char **argv)
{
	static const struct svc_def def = {
		.name = "connector",
		.summary = "agent-side connector: local API, socket to a gateway, inbox, hook replay",
		.default_port = "8090",
		.cfg = conn_cfg,
		.ncfg = sizeof(conn_cfg) / sizeof(conn_cfg[0]),
		.no_bus = 1,
		.init = conn_init,
		.tick = conn_tick,
		.ready = conn_ready,
		.status = conn_status,
		.metrics = conn_metrics,
		.drain = conn_drain,
		.fini = conn_fini,
	};

	return svc_main(argc, argv, &def, &g_state);
}
