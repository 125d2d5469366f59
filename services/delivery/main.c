/*
 * main.c - clawrelay-delivery: performs each delivery attempt that
 * relay-session dispatches, to a connected connector (through the gateway
 * holding its socket) or to the agent's webhook URL.
 *
 * Threads: init/drain/fini and status/metrics callbacks run on the skeleton's
 * threads (main, civetweb workers) and only read atomics and the pool's
 * counters; dispatch requests arrive on one nats.c subscription thread;
 * webhook calls run on the pool's workers; socket answers on the bus's reply
 * and timer threads. See dlv.h for who owns an attempt.
 */
#include <stdio.h>
#include <stdlib.h>
#include <unistd.h>

#include <curl/curl.h>

#include "dlv.h"
#include "log.h"

static struct dlv state;

static const struct cfg_item dlv_cfg[] = {
	{ "WEBHOOK_TIMEOUT_MS", CFG_INT, "10000", 100, 600000,
	  "time limit of one webhook call (connect + answer)", &state.webhook_timeout_ms },
	{ "SOCKET_TIMEOUT_MS", CFG_INT, "5000", 50, 600000,
	  "time limit for a connector's deliver_ack through its gateway", &state.socket_timeout_ms },
	{ "WEBHOOK_WORKERS", CFG_INT, "8", 1, 512,
	  "webhook calls in progress at once (worker threads)", &state.webhook_workers },
	{ "WEBHOOK_QUEUE_MAX", CFG_INT, "10000", 1, 10000000,
	  "webhook attempts waiting for a worker; beyond it an attempt is answered retry",
	  &state.webhook_queue_max },
	{ "REGISTRY_CACHE_MS", CFG_INT, "5000", 0, 3600000,
	  "how long a registry entry (webhook URL) is cached", &state.registry_cache_ms },
	{ "DRAIN_WAIT_MS", CFG_INT, "5000", 0, 600000,
	  "on SIGTERM, how long to wait for attempts in progress", &state.drain_wait_ms },
	BRKSET_CFG_ITEMS(state.brk_cfg),
};

static int
dlv_init(struct svc *s, void *st)
{
	struct dlv *d = st;
	kvStore *kv = NULL;
	char subj[256];
	enum cr_err err;

	d->svc = s;
	d->bus = svc_bus(s);
	for (int i = 0; i < DLV_NOUTCOMES; i++) {
		char labels[64];
		snprintf(labels, sizeof(labels), "outcome=\"%s\"", dlv_outcome_name(i));
		d->m_outcome[i] = metric_counter("clawrelay_delivery_attempts_total", labels,
		    "delivery attempts by outcome");
	}
	d->m_bad = metric_counter("clawrelay_delivery_bad_requests_total", NULL,
	    "dispatch requests that could not be decoded");
	if (curl_global_init(CURL_GLOBAL_DEFAULT) != CURLE_OK) {
		log_error(NULL, "curl_global_init failed");
		return 1;
	}
	d->curl_inited = 1;
	err = reg_open(d->bus, &kv);
	if (err != CR_OK) {
		log_error(NULL, "registry bucket: %s", cr_strerror(err));
		return 1;
	}
	d->reg = reg_cache_new(kv, (uint64_t)d->registry_cache_ms);
	if (d->reg == NULL)
		return 1;
	d->brk = brkset_new(d->bus, "delivery", svc_instance(s), &d->brk_cfg);
	if (d->brk == NULL)
		return 1;
	reg_cache_set_breaker(d->reg, brkset_get(d->brk, "registry", ""));
	d->pool = dlv_pool_new(d, (unsigned)d->webhook_workers, (size_t)d->webhook_queue_max);
	if (d->pool == NULL)
		return 1;
	if (bus_subj(d->bus, subj, sizeof(subj), "delivery.dispatch") < 0)
		return 1;
	err = bus_subscribe(d->bus, subj, "delivery", dlv_on_dispatch, d);
	if (err != CR_OK) {
		log_error(NULL, "subscribe %s: %s", subj, cr_strerror(err));
		return 1;
	}
	log_info(NULL, "delivering from %s (webhook workers %lld, timeouts webhook %lld ms, "
	    "socket %lld ms)", subj, d->webhook_workers, d->webhook_timeout_ms,
	    d->socket_timeout_ms);
	return 0;
}

static void
dlv_status(struct svc *s, void *st, cJSON *obj)
{
	struct dlv *d = st;
	cJSON *o = cJSON_AddObjectToObject(obj, "attempts");
	size_t queued = 0, busy = 0;

	for (int i = 0; i < DLV_NOUTCOMES; i++)
		cJSON_AddNumberToObject(o, dlv_outcome_name(i),
		    (double)atomic_load(&d->outcomes[i]));
	cJSON_AddNumberToObject(obj, "badRequests", (double)atomic_load(&d->bad_requests));
	o = cJSON_AddObjectToObject(obj, "inFlight");
	cJSON_AddNumberToObject(o, "socket", (double)atomic_load(&d->inflight_socket));
	cJSON_AddNumberToObject(o, "webhook", (double)atomic_load(&d->inflight_webhook));
	if (d->pool != NULL)
		dlv_pool_counts(d->pool, &queued, &busy);
	o = cJSON_AddObjectToObject(obj, "webhookPool");
	cJSON_AddNumberToObject(o, "workers", (double)d->webhook_workers);
	cJSON_AddNumberToObject(o, "queued", (double)queued);
	cJSON_AddNumberToObject(o, "busy", (double)busy);
	cJSON_AddNumberToObject(o, "queueMax", (double)d->webhook_queue_max);
	if (d->brk != NULL)
		brkset_status(d->brk, obj);
}

static void
dlv_metrics(struct svc *s, void *st, struct strbuf *sb)
{
	struct dlv *d = st;
	size_t queued = 0, busy = 0;

	if (d->pool != NULL)
		dlv_pool_counts(d->pool, &queued, &busy);
	sb_printf(sb, "# HELP clawrelay_delivery_in_flight delivery attempts awaiting an answer\n"
	    "# TYPE clawrelay_delivery_in_flight gauge\n"
	    "clawrelay_delivery_in_flight{path=\"socket\"} %lld\n"
	    "clawrelay_delivery_in_flight{path=\"webhook\"} %lld\n"
	    "# HELP clawrelay_delivery_webhook_queued webhook attempts waiting for a worker\n"
	    "# TYPE clawrelay_delivery_webhook_queued gauge\n"
	    "clawrelay_delivery_webhook_queued %zu\n",
	    (long long)atomic_load(&d->inflight_socket),
	    (long long)atomic_load(&d->inflight_webhook), queued);
	if (d->brk != NULL)
		brkset_metrics(d->brk, sb);
}

static void
dlv_drain(struct svc *s, void *st)
{
	struct dlv *d = st;
	uint64_t until = mono_ms() + (uint64_t)d->drain_wait_ms;

	bus_drain_subs(d->bus);
	dlv_pool_drain(d->pool, (uint64_t)d->drain_wait_ms);
	/* socket attempts are answered by the bus (reply or timeout) */
	while (atomic_load(&d->inflight_socket) > 0 && mono_ms() < until)
		usleep(10000);
	log_info(NULL, "drained: %lld socket attempts still open",
	    (long long)atomic_load(&d->inflight_socket));
}

static void
dlv_fini(struct svc *s, void *st)
{
	struct dlv *d = st;

	dlv_pool_free(d->pool);
	d->pool = NULL;
	reg_cache_free(d->reg);
	d->reg = NULL;
	brkset_free(d->brk);
	d->brk = NULL;
	if (d->curl_inited)
		curl_global_cleanup();
	d->curl_inited = 0;
}

static const struct svc_def dlv_def = {
	.name = "delivery",
	.summary = "performs delivery attempts: connector sockets and agent webhooks",
	.default_port = "8082",
	.cfg = dlv_cfg,
	.ncfg = sizeof(dlv_cfg) / sizeof(dlv_cfg[0]),
	.init = dlv_init,
	.status = dlv_status,
	.metrics = dlv_metrics,
	.drain = dlv_drain,
	.fini = dlv_fini,
};

int
main(int argc, char **argv)
{
	return svc_main(argc, argv, &dlv_def, &state);
}
