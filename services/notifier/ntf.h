/*
 * ntf.h - private header of clawrelay-notifier (nothing outside
 * services/notifier/ includes it).
 *
 * Receipts arrive on nats.c's subscription threads; each is turned into a
 * delta (struct ntf_rec with only what it reports) and merged
 * into the pending table of one shard, chosen by a hash of the correlation
 * ID. Each shard's writer thread takes every entry COALESCE_MS after its
 * message's first delta (on its next tick; under load, a message not yet
 * done, i.e. failed or both delivered and processed, is held up to 20 such
 * windows for the rest) and folds the merged delta into the StatusRecord in
 * KV with one write (compare-and-set on the last revision), published
 * without waiting for its ack (notifier_kv.c), at most one in flight per
 * message. A correlation ID always maps to the same shard, so its writes
 * are ordered within this replica; CAS keeps replicas from losing each
 * other's updates.
 *
 * Failures and delay warnings come from the notice stream instead
 * (notifier_notice.c): worker threads fold a failure into its record at
 * once (ntf_status_write), publish its notice and enqueue the sender's
 * DELIVERY_STATUS message, each exactly once across replicas.
 */
#ifndef NTF_H
#define NTF_H

#include <stdatomic.h>
#include <stddef.h>
#include <stdint.h>

#include <cJSON.h>

#include "bus.h"
#include "env.h"
#include "metrics.h"
#include "svc.h"


/* states in round-trip order; a record's state is the highest one seen */
enum ntf_state {
	NTF_ACCEPTED = 0, NTF_QUEUED, NTF_DISPATCHED, NTF_DELIVERED, NTF_PROCESSED,
	NTF_FAILED, NTF_NSTATES
};

#define NTF_ID_MAX 128
#define NTF_OWNER_MAX 160           /* "<instance>/<random>/<worker>" of a claim */
#define NTF_BATCH_ARENA (256u * 1024)
#define NTF_ERR_MAX 256
/* a packed StatusRecord: four IDs, six history entries, the error, framing */
#define NTF_PACK_MAX (4 * (NTF_ID_MAX + 3) + NTF_NSTATES * 32 + NTF_ERR_MAX + 3 + 128)

/* One StatusRecord in memory (also used as a delta: only what one or more
 * receipts/failures reported). */
struct ntf_rec {
	char correlation_id[NTF_ID_MAX + 1];
	char message_id[NTF_ID_MAX + 1];
	char sender[NTF_ID_MAX + 1];
	char recipient[NTF_ID_MAX + 1];
	uint64_t at[NTF_NSTATES];     /* first time of each state; 0 = not reached */
	uint32_t attempts;
	int failure_reason;           /* FailureReason, -1 = none */
	char last_error[NTF_ERR_MAX];
	uint64_t updated_at_ms;
};

struct ntf_shard;
struct ntf_worker;

struct ntf {
	/* settings */
	long long status_ttl_s;
	long long coalesce_ms;
	long long writers;
	long long cache_max;
	long long cache_ms;
	long long notice_workers;
	long long notice_max_age_s;
	long long notice_max_bytes;
	long long notice_max_msgs;
	long long notice_replicas;
	long long notice_ack_wait_s;
	long long notice_claim_s;
	long long enqueue_timeout_ms;
	int delivery_status;

	/* set by init, read-only afterwards */
	struct svc *svc;
	struct bus *bus;
	kvStore *kv;                 /* synchronous reads and retried writes */
	natsConnection *kv_nc;       /* async writes (the bus's buffered connection) */
	natsSubscription *kv_sub;    /* their acks */
	char kv_inbox[64];           /* acks come to <inbox>.<shard>.<write id> */
	char kv_prefix[64];          /* "$KV.<bucket>." */
	struct ntf_shard **shards;
	unsigned nshards;
	unsigned char *batch_arena;  /* NTF_BATCH_ARENA bytes: the receipt-batch
	                              * subscription's thread decodes into it */
	char stream[96];             /* the notice stream's name */
	struct ntf_worker *workers;  /* notifier_notice.c */
	unsigned nworkers;
	atomic_int notice_stop;

	/* counters, any thread */
	atomic_ullong receipts, failures, bad, notices, notice_errors;
	atomic_ullong delayed, notices_delayed, notices_skipped, redeliveries, naks;
	atomic_ullong claim_waits, takeovers;
	atomic_ullong ds_queued, ds_duplicates, ds_retries, ds_refused;
	atomic_ullong coalesced, kv_writes, kv_skipped, kv_conflicts, kv_errors, kv_gets;
	struct metric *m_receipts, *m_failures, *m_bad, *m_notices, *m_kv_writes,
	    *m_kv_conflicts, *m_kv_errors, *m_notices_delayed, *m_ds_queued;
};

/* ntf_state_rank - state name to enum ntf_state; -1 if unknown */
int ntf_state_rank(const char *name);
/* ntf_state_name - enum ntf_state to its name */
const char *ntf_state_name(int rank);
/* ntf_copy - the C string src into dst (sz bytes), cut to fit */
void ntf_copy(char *dst, size_t sz, const char *src);
/* ntf_rec_init - empty record (no state, no failure) */
void ntf_rec_init(struct ntf_rec *r);
/* ntf_rec_merge - fold delta d into r: states only move forward, the first
 * time of each state is kept, failed is final; returns 1 if r changed */
int ntf_rec_merge(struct ntf_rec *r, const struct ntf_rec *d);
/* ntf_rec_state - highest state reached, -1 if none */
int ntf_rec_state(const struct ntf_rec *r);
/* ntf_rec_from_proto - decode a StatusRecord (borrowed) into r */
void ntf_rec_from_proto(struct ntf_rec *r, const StatusRecord *p);
/* ntf_rec_pack - r as a packed StatusRecord into buf (cap bytes; NTF_PACK_MAX
 * always suffices) */
enum cr_err ntf_rec_pack(const struct ntf_rec *r, void *buf, size_t cap, size_t *len);
/* ntf_shards_start - create and start n shards; 0 on success */
int ntf_shards_start(struct ntf *n, unsigned count);
/* ntf_shards_add - merge delta d (copied) into its shard's pending table */
void ntf_shards_add(struct ntf *n, const struct ntf_rec *d);
/* ntf_shards_stop - write everything pending, stop and free the shards */
void ntf_shards_stop(struct ntf *n);
/* ntf_shards_counts - pending deltas, cached records and writes awaiting
 * their ack over all shards */
void ntf_shards_counts(struct ntf *n, size_t *pending, size_t *cached, size_t *inflight);
/* ntf_shards_acked - the ack of write wid of shard (ack handler's thread):
 * rev the new revision, 0 if the write failed (conflict: CAS mismatch) */
void ntf_shards_acked(struct ntf *n, unsigned shard, uint64_t wid, uint64_t rev, int conflict);

/* ntf_status_write - fold delta d into the stored record now (read, merge,
 * compare-and-set, retried on conflicts; any thread); 0 with the record and
 * its revision in *out / *rev, -1 if the update was lost */
int ntf_status_write(struct ntf *n, const struct ntf_rec *d, struct ntf_rec *out, uint64_t *rev);

/* ntf_notices_start - the notice stream, its durable consumer and the
 * NOTICE_WORKERS threads that tell each failure and delay once; 0 on success */
int ntf_notices_start(struct ntf *n);
/* ntf_notices_stop - finish the notices in hand, hand back the rest, stop
 * the workers (the bus must still be up); idempotent */
void ntf_notices_stop(struct ntf *n);
/* ntf_notices_status - the consumer's backlog, into obj (civetweb thread) */
void ntf_notices_status(struct ntf *n, cJSON *obj);
/* ntf_status_text - the sentence a sender's agent reads about failure f
 * (borrowed) into out (sz bytes) */
void ntf_status_text(const Failure *f, char *out, size_t sz);
/* ntf_status_payload - the DELIVERY_STATUS JSON for f; caller frees with
 * cJSON_free; NULL when out of memory */
char *ntf_status_payload(const Failure *f);

/* ntf_kv_open - subscribe the reply inbox of async writes; 0 on success */
int ntf_kv_open(struct ntf *n);
/* ntf_kv_close - unsubscribe once the ack handler has returned for the last
 * time (after the writers stopped); idempotent */
void ntf_kv_close(struct ntf *n);
/* ntf_kv_send - publish packed record buf (borrowed) as key's value if its
 * last revision is rev (0: if the key does not exist); its ack goes to
 * ntf_shards_acked(n, shard, wid, ...) */
enum cr_err ntf_kv_send(struct ntf *n, unsigned shard, uint64_t wid, const char *key,
    uint64_t rev, const void *buf, size_t len);

/* ntf_on_receipt - bus handler of one Receipt; msg borrowed */
void ntf_on_receipt(void *arg, natsMsg *msg);
/* ntf_on_receipt_batch - <P>.receipts.<service>: a ReceiptBatch; msg borrowed */
void ntf_on_receipt_batch(void *arg, natsMsg *msg);

#endif
