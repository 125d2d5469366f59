/*
 * main.c - clawrelay-notifier: turns receipts and failures into status
 * records (KV bucket clawrelay_status) and public failure notices.
 *
 * Threads: init/drain/fini on the main thread; receipts and failures on
 * two nats.c subscription threads; KV writes on the shards' writer threads
 * (notifier_shard.c) and their acks on a third subscription thread
 * (notifier_kv.c); status/metrics on civetweb workers, reading atomics and
 * the shards' counts only.
 */
#include <stdio.h>
#include <stdlib.h>

#include "log.h"
#include "ntf.h"
#include "status.h"

static struct ntf state;

static const struct cfg_item ntf_cfg[] = {
	{ "STATUS_TTL_S", CFG_INT, "604800", 60, 31536000,
	  "how long a status record is kept after its last update (bucket TTL)",
	  &state.status_ttl_s },
	{ "COALESCE_MS", CFG_INT, "50", 1, 5000,
	  "updates of one message within this window become one KV write",
	  &state.coalesce_ms },
	{ "STATUS_WRITERS", CFG_INT, "4", 1, 64,
	  "KV writer threads (shards by correlation ID)", &state.writers },
	{ "STATUS_CACHE_MAX", CFG_INT, "50000", 0, 10000000,
	  "records remembered with their revision (saves a KV get per update)",
	  &state.cache_max },
	{ "STATUS_CACHE_MS", CFG_INT, "60000", 0, 86400000,
	  "how long an idle record stays remembered", &state.cache_ms },
};

static int
ntf_init(struct svc *s, void *st)
{
	struct ntf *n = st;
	char subj[256];
	enum cr_err err;

	n->svc = s;
	n->bus = svc_bus(s);
	n->m_receipts = metric_counter("clawrelay_notifier_receipts_total", NULL, "receipts folded");
	n->m_failures = metric_counter("clawrelay_notifier_failures_total", NULL, "failures folded");
	n->m_bad = metric_counter("clawrelay_notifier_bad_messages_total", NULL,
	    "receipts/failures dropped as malformed");
	n->m_notices = metric_counter("clawrelay_notifier_notices_total", NULL,
	    "failure notices published");
	n->m_kv_writes = metric_counter("clawrelay_notifier_kv_writes_total", NULL,
	    "status record writes");
	n->m_kv_conflicts = metric_counter("clawrelay_notifier_kv_conflicts_total", NULL,
	    "status writes retried after a concurrent update");
	n->m_kv_errors = metric_counter("clawrelay_notifier_kv_errors_total", NULL,
	    "status updates lost");
	err = bus_kv(n->bus, STATUS_BUCKET, 1, n->status_ttl_s * 1000, &n->kv);
	if (err != CR_OK) {
		log_error(NULL, "bucket %s: %s", STATUS_BUCKET, cr_strerror(err));
		return 1;
	}
	n->batch_arena = malloc(NTF_BATCH_ARENA);	/* malloc aligns to 16 */
	if (n->batch_arena == NULL || ntf_shards_start(n, (unsigned)n->writers) != 0)
		return 1;
	if (bus_subj(n->bus, subj, sizeof(subj), "receipt.>") < 0 ||
	    bus_subscribe(n->bus, subj, "notifier", ntf_on_receipt, n) != CR_OK)
		return 1;
	if (bus_subj(n->bus, subj, sizeof(subj), "receipts.>") < 0 ||
	    bus_subscribe(n->bus, subj, "notifier", ntf_on_receipt_batch, n) != CR_OK)
		return 1;
	if (bus_subj(n->bus, subj, sizeof(subj), "failure.>") < 0 ||
	    bus_subscribe(n->bus, subj, "notifier", ntf_on_failure, n) != CR_OK)
		return 1;
	log_info(NULL, "folding receipts and failures into %s (%lld writers, window %lld ms)",
	    STATUS_BUCKET, n->writers, n->coalesce_ms);
	return 0;
}

static void
ntf_status(struct svc *s, void *st, cJSON *obj)
{
	struct ntf *n = st;
	size_t pending = 0, cached = 0, inflight = 0;
	cJSON *o;

	if (n->shards != NULL)
		ntf_shards_counts(n, &pending, &cached, &inflight);
	o = cJSON_AddObjectToObject(obj, "received");
	cJSON_AddNumberToObject(o, "receipts", (double)atomic_load(&n->receipts));
	cJSON_AddNumberToObject(o, "failures", (double)atomic_load(&n->failures));
	cJSON_AddNumberToObject(o, "malformed", (double)atomic_load(&n->bad));
	cJSON_AddNumberToObject(o, "coalesced", (double)atomic_load(&n->coalesced));
	o = cJSON_AddObjectToObject(obj, "notices");
	cJSON_AddNumberToObject(o, "published", (double)atomic_load(&n->notices));
	cJSON_AddNumberToObject(o, "errors", (double)atomic_load(&n->notice_errors));
	o = cJSON_AddObjectToObject(obj, "statusStore");
	cJSON_AddStringToObject(o, "bucket", STATUS_BUCKET);
	cJSON_AddNumberToObject(o, "writes", (double)atomic_load(&n->kv_writes));
	cJSON_AddNumberToObject(o, "unchanged", (double)atomic_load(&n->kv_skipped));
	cJSON_AddNumberToObject(o, "gets", (double)atomic_load(&n->kv_gets));
	cJSON_AddNumberToObject(o, "conflicts", (double)atomic_load(&n->kv_conflicts));
	cJSON_AddNumberToObject(o, "lost", (double)atomic_load(&n->kv_errors));
	cJSON_AddNumberToObject(o, "pending", (double)pending);
	cJSON_AddNumberToObject(o, "inFlight", (double)inflight);
	cJSON_AddNumberToObject(o, "cached", (double)cached);
	cJSON_AddNumberToObject(o, "writers", (double)n->writers);
}

static void
ntf_metrics(struct svc *s, void *st, struct strbuf *sb)
{
	struct ntf *n = st;
	size_t pending = 0, cached = 0, inflight = 0;

	if (n->shards != NULL)
		ntf_shards_counts(n, &pending, &cached, &inflight);
	sb_printf(sb, "# HELP clawrelay_notifier_pending status updates waiting for their write\n"
	    "# TYPE clawrelay_notifier_pending gauge\nclawrelay_notifier_pending %zu\n", pending);
}

static void
ntf_drain(struct svc *s, void *st)
{
	struct ntf *n = st;

	/* stop taking receipts, then write what is pending while the bus is up */
	bus_drain_subs(n->bus);
	ntf_shards_stop(n);
}

static void
ntf_fini(struct svc *s, void *st)
{
	struct ntf *n = st;

	ntf_shards_stop(n);
	free(n->batch_arena);	/* the bus and its subscriptions are gone */
	n->batch_arena = NULL;
}

static const struct svc_def ntf_def = {
	.name = "notifier",
	.summary = "folds receipts and failures into status records; publishes failure notices",
	.default_port = "8083",
	.cfg = ntf_cfg,
	.ncfg = sizeof(ntf_cfg) / sizeof(ntf_cfg[0]),
	.init = ntf_init,
	.status = ntf_status,
	.metrics = ntf_metrics,
	.drain = ntf_drain,
	.fini = ntf_fini,
};

int
main(int argc, char **argv)
{
	return svc_main(argc, argv, &ntf_def, &state);
}
