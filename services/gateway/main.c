/*
 * main.c - clawrelay-gateway: the HTTP + WebSocket edge (DESIGN 5, 6).
 *
 * Its settings table and one call into the service skeleton. gw_init binds
 * the registry and nonce buckets and registers the routes; the skeleton's
 * main thread calls the tick, status, drain and fini callbacks.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "gateway.h"
#include "hop.h"
#include "log.h"

static struct gw gw;

static const struct cfg_item gw_cfg_items[] = {
	{ "MAX_BODY_BYTES", CFG_INT, "1048576", 1, 4 * 1024 * 1024,
	  "largest message body (payload) taken, bytes; larger is a 413", &gw.cfg.max_body_bytes },
	{ "CLOCK_WINDOW_S", CFG_INT, "300", 1, 3600,
	  "X-Claw-Timestamp may differ from the gateway's clock by this much; nonces are kept twice as long",
	  &gw.cfg.clock_window_s },
	{ "DEFAULT_TTL_S", CFG_INT, "86400", 1, 604800,
	  "message TTL when X-Claw-Ttl-Seconds is absent", &gw.cfg.default_ttl_s },
	{ "SESSION_TIMEOUT_MS", CFG_INT, "5000", 10, 60000,
	  "how long to wait for relay-session (enqueue, connect) before a 503", &gw.cfg.session_timeout_ms },
	{ "TRACE_TIMEOUT_MS", CFG_INT, "2000", 10, 60000,
	  "how long to wait for metrics-collector's trace answer", &gw.cfg.trace_timeout_ms },
	{ "REGISTRY_CACHE_MS", CFG_INT, "10000", 0, 3600000,
	  "how long registry entries (keys, trust pairs) are served from the cache", &gw.cfg.registry_cache_ms },
	{ "WS_MAX_BAD_FRAMES", CFG_INT, "5", 1, 1000,
	  "a socket is closed after this many malformed frames", &gw.cfg.ws_max_bad_frames },
	{ "WS_ENQUEUE_WINDOW", CFG_INT, "256", 1, 65536,
	  "enqueue frames of one socket in flight to relay-session", &gw.cfg.ws_enqueue_window },
	{ "WS_PENDING_MAX", CFG_INT, "4096", 1, 1000000,
	  "deliver frames of one socket awaiting deliver_ack", &gw.cfg.ws_pending_max },
	{ "WS_PENDING_MS", CFG_INT, "120000", 1000, 3600000,
	  "a deliver frame unacknowledged this long is forgotten", &gw.cfg.ws_pending_ms },
	{ "SENDER_RATE_PER_MIN", CFG_INT, "600", 0, 100000000,
	  "messages per minute one sender may send through this gateway replica, to all "
	  "recipients together (token bucket; 0: no limit); beyond it 429 + Retry-After",
	  &gw.cfg.sender_rate_per_min },
	{ "SENDER_BURST", CFG_INT, "0", 0, 100000000,
	  "token bucket size of the sender rate limit (0: one minute's worth)", &gw.cfg.sender_burst },
	BRKSET_CFG_ITEMS(gw.cfg.brk),
	{ "PARTITION_BREAKER_OPEN_MAX_MS", CFG_INT, "3000", 1, 86400000,
	  "longest open time of a relay-session partition's breaker (a partition moves between "
	  "replicas within about a lease time)", &gw.cfg.part_open_max_ms },
};

static int
gw_init(struct svc *s, void *st)
{
	struct gw *g = st;
	enum cr_err e;

	g->svc = s;
	g->bus = svc_bus(s);
	(void)bus_notice_stream(g->bus, NULL);	/* failures wait there for the notifier */
	g->partitions = svc_partitions(s);
	pthread_mutex_init(&g->sock_mu, NULL);
	pthread_mutex_init(&g->status_mu, NULL);
	gw_auth_init(g);

	e = reg_open(g->bus, &g->reg_kv);
	if (e != CR_OK) {
		log_error(NULL, "registry bucket %s: %s", REG_BUCKET, cr_strerror(e));
		return 1;
	}
	g->reg = reg_cache_new(g->reg_kv, (uint64_t)g->cfg.registry_cache_ms);
	if (g->reg == NULL)
		return 1;
	e = bus_kv(g->bus, GW_NONCE_BUCKET, 1, 2 * g->cfg.clock_window_s * 1000, &g->nonce_kv);
	if (e != CR_OK) {
		log_error(NULL, "nonce bucket %s: %s", GW_NONCE_BUCKET, cr_strerror(e));
		return 1;
	}

	if (gw_reqpool_init(g) < 0 || gw_enqbatch_init(g) < 0 || gw_limits_init(g) < 0)
		return 1;

	g->m_accepted_http = metric_counter("clawrelay_gateway_messages_accepted_total",
	    "via=\"http\"", "messages relay-session took (202/200)");
	g->m_accepted_ws = metric_counter("clawrelay_gateway_messages_accepted_total",
	    "via=\"ws\"", "messages relay-session took (202/200)");
	g->m_sockets = metric_gauge("clawrelay_gateway_sockets", NULL, "connector sockets open");
	g->m_delivers = metric_counter("clawrelay_gateway_deliver_frames_total", NULL,
	    "deliver frames written to connectors");
	g->m_deliver_acks = metric_counter("clawrelay_gateway_deliver_acks_total", NULL,
	    "deliver_ack frames from connectors");
	g->m_events = metric_counter("clawrelay_gateway_events_forwarded_total", NULL,
	    "connector hop events forwarded");
	g->m_frames_in = metric_counter("clawrelay_gateway_frames_in_total", NULL,
	    "frames read from connectors");
	g->m_frames_bad = metric_counter("clawrelay_gateway_frames_bad_total", NULL,
	    "malformed or unexpected frames from connectors");

	svc_route(s, "/v1/agents/", gw_handle_post, g);
	svc_route(s, "/v1/messages/", gw_handle_message, g);
	svc_route(s, "/v1/traces/", gw_handle_trace, g);
	gw_ws_init(g);
	hop_stats_extra(gw_ws_stats_extra, g);
	return 0;
}

static void
gw_tick(struct svc *s, void *st)
{
	gw_ws_tick(st);
	gw_reqpool_tick();
}

static int
gw_ready(struct svc *s, void *st)
{
	struct gw *g = st;
	return g->reg_kv != NULL && g->nonce_kv != NULL && bus_is_connected(g->bus) &&
	    gw_reqpool_connected();
}

static void
gw_status(struct svc *s, void *st, cJSON *obj)
{
	struct gw *g = st;
	cJSON *m = cJSON_AddObjectToObject(obj, "counters");

	gw_ws_status(g, obj);
	if (m == NULL)
		return;
	cJSON_AddNumberToObject(m, "acceptedHttp", (double)metric_value(g->m_accepted_http));
	cJSON_AddNumberToObject(m, "acceptedWs", (double)metric_value(g->m_accepted_ws));
	cJSON_AddNumberToObject(m, "deliverFrames", (double)metric_value(g->m_delivers));
	cJSON_AddNumberToObject(m, "deliverAcks", (double)metric_value(g->m_deliver_acks));
	cJSON_AddNumberToObject(m, "eventsForwarded", (double)metric_value(g->m_events));
	cJSON_AddNumberToObject(m, "framesIn", (double)metric_value(g->m_frames_in));
	cJSON_AddNumberToObject(m, "framesBad", (double)metric_value(g->m_frames_bad));
	cJSON_AddNumberToObject(m, "busRequestsPending",
	    (double)(bus_pending_requests(g->bus) + gw_reqpool_pending()));
	if (g->brk != NULL)
		brkset_status(g->brk, obj);
}

static void
gw_metrics(struct svc *s, void *st, struct strbuf *sb)
{
	struct gw *g = st;

	if (g->brk != NULL)
		brkset_metrics(g->brk, sb);
}

static void
gw_drain(struct svc *s, void *st)
{
	struct gw *g = st;

	gw_ws_close_all(g);
	/* nats.c is closed before gw_fini: the pool must go now */
	gw_reqpool_stop((int)g->cfg.session_timeout_ms + 1000);
}

static void
gw_fini(struct svc *s, void *st)
{
	struct gw *g = st;

	gw_limits_fini(g);
	reg_cache_free(g->reg);
	g->reg = NULL;
	if (g->status_kv != NULL)
		kvStore_Destroy(g->status_kv);
	g->status_kv = NULL;
	gw_auth_fini(g);
	gw_reqpool_fini();
	gw_enqbatch_fini(g);
	pthread_mutex_destroy(&g->status_mu);
	pthread_mutex_destroy(&g->sock_mu);
}

static const struct svc_def gw_def = {
	.name = "gateway",
	.summary = "HTTP + WebSocket edge: signed ingress, connector sockets, status and traces",
	.default_port = "8080",
	.cfg = gw_cfg_items,
	.ncfg = sizeof(gw_cfg_items) / sizeof(gw_cfg_items[0]),
	.init = gw_init,
	.tick = gw_tick,
	.ready = gw_ready,
	.status = gw_status,
	.metrics = gw_metrics,
	.drain = gw_drain,
	.fini = gw_fini,
};

int
main(int argc, char **argv)
{
	return svc_main(argc, argv, &gw_def, &gw);
}
