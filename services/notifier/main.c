/*
 * main.c - clawrelay-notifier: turns receipts and failures into status
 * records (KV bucket clawrelay_status); tells each failure and delay once:
 * public notices, and DELIVERY_STATUS messages to the senders.
 *
 * Threads: init/drain/fini on the main thread; receipts on two nats.c
 * subscription threads; KV writes on the shards' writer threads
 * (notifier_shard.c) and their acks on a third subscription thread
 * (notifier_kv.c); failures and delays on the notice workers
 * (notifier_notice.c); status/metrics on civetweb workers, reading atomics,
 * the shards' counts and the consumer's info only.
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
	{ "NOTICE_WORKERS", CFG_INT, "8", 1, 64,
	  "threads telling failures and delays, one at a time each (most of it is waiting for KV "
	  "and for relay-session's commit)", &state.notice_workers },
	{ "NOTICE_MAX_AGE_S", CFG_INT, "604800", 60, 31536000,
	  "the notice stream keeps a failure this long at most (stream max age)",
	  &state.notice_max_age_s },
	{ "NOTICE_MAX_BYTES", CFG_INT, "1073741824", 1048576, 1099511627776LL,
	  "bytes the notice stream keeps at most (then the oldest go)", &state.notice_max_bytes },
	{ "NOTICE_MAX_MSGS", CFG_INT, "5000000", 1000, 10000000000LL,
	  "failures and delays the notice stream keeps at most (then the oldest go)",
	  &state.notice_max_msgs },
	{ "NOTICE_REPLICAS", CFG_INT, "0", 0, 5,
	  "copies of the notice stream in a NATS cluster (0: as CLAWRELAY_KV_REPLICAS)",
	  &state.notice_replicas },
	{ "NOTICE_ACK_WAIT_S", CFG_INT, "60", 5, 3600,
	  "a notice taken by a replica that died is handed out again after this long",
	  &state.notice_ack_wait_s },
	{ "NOTICE_CLAIM_S", CFG_INT, "30", 1, 3600,
	  "a replica's claim on a notice it has not published yet is taken over after this long",
	  &state.notice_claim_s },
	{ "ENQUEUE_TIMEOUT_MS", CFG_INT, "5000", 100, 60000,
	  "time limit of one DELIVERY_STATUS enqueue request to relay-session",
	  &state.enqueue_timeout_ms },
	{ "DELIVERY_STATUS", CFG_BOOL, "1", 0, 0,
	  "send each failed message's sender a DELIVERY_STATUS message (0: notices only)",
	  &state.delivery_status },
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
	n->m_notices_delayed = metric_counter("clawrelay_notifier_delay_notices_total", NULL,
	    "delay notices published");
	n->m_ds_queued = metric_counter("clawrelay_notifier_delivery_status_total", NULL,
	    "DELIVERY_STATUS messages queued for senders");
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
	if (ntf_notices_start(n) != 0)
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
	cJSON_AddNumberToObject(o, "delays", (double)atomic_load(&n->delayed));
	o = cJSON_AddObjectToObject(obj, "notices");
	cJSON_AddNumberToObject(o, "published", (double)atomic_load(&n->notices));
	cJSON_AddNumberToObject(o, "delayPublished", (double)atomic_load(&n->notices_delayed));
	cJSON_AddNumberToObject(o, "toldBefore", (double)atomic_load(&n->notices_skipped));
	cJSON_AddNumberToObject(o, "errors", (double)atomic_load(&n->notice_errors));
	cJSON_AddNumberToObject(o, "redeliveries", (double)atomic_load(&n->redeliveries));
	cJSON_AddNumberToObject(o, "retriesLater", (double)atomic_load(&n->naks));
	cJSON_AddNumberToObject(o, "claimWaits", (double)atomic_load(&n->claim_waits));
	cJSON_AddNumberToObject(o, "claimTakeovers", (double)atomic_load(&n->takeovers));
	ntf_notices_status(n, o);
	o = cJSON_AddObjectToObject(obj, "deliveryStatus");
	cJSON_AddBoolToObject(o, "enabled", n->delivery_status != 0);
	cJSON_AddNumberToObject(o, "queued", (double)atomic_load(&n->ds_queued));
	cJSON_AddNumberToObject(o, "duplicates", (double)atomic_load(&n->ds_duplicates));
	cJSON_AddNumberToObject(o, "retries", (double)atomic_load(&n->ds_retries));
	cJSON_AddNumberToObject(o, "refused", (double)atomic_load(&n->ds_refused));
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

	/* stop taking receipts and notices, then write what is pending while
	 * the bus is up */
	bus_drain_subs(n->bus);
	ntf_notices_stop(n);
	ntf_shards_stop(n);
}

static void
ntf_fini(struct svc *s, void *st)
{
	struct ntf *n = st;

	ntf_notices_stop(n);
	ntf_shards_stop(n);
	free(n->batch_arena);	/* the bus and its subscriptions are gone */
	n->batch_arena = NULL;
}

static const struct svc_def ntf_def = {
	.name = "notifier",
	.summary = "folds receipts and failures into status records; tells each failure and "
	    "delay once (notices, DELIVERY_STATUS to the sender)",
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
