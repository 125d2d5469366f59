/*
 * session_books.c - the books of each partition: accepted = delivered +
 * failed (by reason) + queued, exactly, across restarts and takeovers.
 *
 * The counters live in the partition's store (DB meta, key "books": be64
 * counters, accepted, delivered, then one per FailureReason) and move by
 * store_batch_add_u64 inside the very commits that add a message to the
 * queue or remove it from it; queued is the queue DB's entry count. Read
 * from one snapshot, the equation holds at every instant; a difference is
 * a bug, and /v1/status, /metrics and `clawrelay accounting` say so.
 * A store from before the books were kept gets accepted = its queue when
 * the partition opens.
 *
 * Threads: session_books_add runs under the partition's mu (into a batch);
 * reads take a read snapshot and no lock beyond a look at pp->open; the
 * bus handler runs on the partition's subscription thread.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "log.h"
#include "session.h"

#define BOOKS_KEY "books"
#define BOOKS_KLEN (sizeof(BOOKS_KEY) - 1)

/* session_books_add - count one message into counter idx (SESSION_BOOKS_*)
 * in batch b, which commits it together with the queue change */
int
session_books_add(struct session_part *pp, struct store_batch *b, unsigned idx)
{
	return store_batch_add_u64(b, pp->dbmeta, BOOKS_KEY, BOOKS_KLEN, idx, 1) == CR_OK ? 0 : -1;
}

/* session_books_read - pp's books from one snapshot; -1 if not served or
 * unreadable. Caller holds no lock. */
int
session_books_read(struct session_part *pp, struct session_books *out)
{
	struct store *st;
	void *v = NULL;
	size_t vl = 0;
	uint64_t queued = 0;

	memset(out, 0, sizeof(*out));
	pthread_mutex_lock(&pp->mu);
	st = pp->open ? pp->st : NULL;
	/* the store is closed on the main thread, which also serves /v1/status
	 * only between ticks: reading after mu is released is safe there; the
	 * bus handler runs on the partition's own subscription, unsubscribed
	 * before the store closes */
	pthread_mutex_unlock(&pp->mu);
	if (st == NULL || store_get_count(st, pp->dbmeta, BOOKS_KEY, BOOKS_KLEN, &v, &vl, pp->dbq,
	    &queued) != CR_OK)
		return -1;
	for (size_t i = 0; i < SESSION_BOOKS_N && (i + 1) * 8 <= vl; i++)
		out->c[i] = session_be64_get((const unsigned char *)v + i * 8);
	free(v);
	out->queued = queued;
	out->accepted = out->c[SESSION_BOOKS_ACCEPTED];
	out->delivered = out->c[SESSION_BOOKS_DELIVERED];
	for (int r = 0; r < SESSION_BOOKS_NREASONS; r++)
		out->failed += out->c[SESSION_BOOKS_FAILED + r];
	out->balanced = out->accepted == out->delivered + out->failed + out->queued;
	return 0;
}

/* session_books_open - at partition open (mu held): a store without books
 * counts what it holds as accepted */
void
session_books_open(struct session_part *pp, uint64_t queued)
{
	void *v = NULL;
	size_t vl;

	if (store_get(pp->st, pp->dbmeta, BOOKS_KEY, BOOKS_KLEN, &v, &vl) == CR_OK) {
		free(v);
		return;
	}
	struct store_batch *b = store_batch_new();
	if (b == NULL || store_batch_add_u64(b, pp->dbmeta, BOOKS_KEY, BOOKS_KLEN,
	    SESSION_BOOKS_ACCEPTED, queued) != CR_OK || store_batch_commit(pp->st, b) != CR_OK)
		log_error(NULL, "partition %u: books not started (%llu queued)", pp->idx,
		    (unsigned long long)queued);
	store_batch_free(b);
}

static void
books_json(cJSON *o, const struct session_books *bk)
{
	cJSON *f = cJSON_AddObjectToObject(o, "failed");
	cJSON_AddNumberToObject(o, "accepted", (double)bk->accepted);
	cJSON_AddNumberToObject(o, "delivered", (double)bk->delivered);
	for (int r = 1; r < SESSION_BOOKS_NREASONS; r++)
		cJSON_AddNumberToObject(f, env_failure_reason_name(r),
		    (double)bk->c[SESSION_BOOKS_FAILED + r]);
	if (bk->c[SESSION_BOOKS_FAILED] != 0)
		cJSON_AddNumberToObject(f, "unknown", (double)bk->c[SESSION_BOOKS_FAILED]);
	cJSON_AddNumberToObject(o, "failedTotal", (double)bk->failed);
	cJSON_AddNumberToObject(o, "queued", (double)bk->queued);
	cJSON_AddBoolToObject(o, "balanced", bk->balanced);
}

/* session_books_status - "books" in /v1/status: the total and per served
 * partition */
void
session_books_status(struct session *s, cJSON *obj)
{
	cJSON *o = cJSON_AddObjectToObject(obj, "books"), *parts = cJSON_CreateArray();
	struct session_books tot;
	int all = 1;

	memset(&tot, 0, sizeof(tot));
	for (uint32_t p = 0; p < s->nparts; p++) {
		struct session_books bk;
		if (session_books_read(&s->parts[p], &bk) != 0)
			continue;
		cJSON *po = cJSON_CreateObject();
		cJSON_AddNumberToObject(po, "partition", p);
		books_json(po, &bk);
		cJSON_AddItemToArray(parts, po);
		for (size_t i = 0; i < SESSION_BOOKS_N; i++)
			tot.c[i] += bk.c[i];
		tot.accepted += bk.accepted;
		tot.delivered += bk.delivered;
		tot.failed += bk.failed;
		tot.queued += bk.queued;
		all &= bk.balanced;
	}
	tot.balanced = all;
	books_json(o, &tot);
	cJSON_AddItemToObject(o, "partitions", parts);
}

/* session_books_metrics - the books as Prometheus text (served partitions) */
void
session_books_metrics(struct session *s, struct strbuf *sb)
{
	sb_printf(sb, "# HELP clawrelay_session_books_accepted messages a partition accepted, "
	    "ever (persisted)\n# TYPE clawrelay_session_books_accepted gauge\n"
	    "# HELP clawrelay_session_books_delivered of them delivered\n"
	    "# TYPE clawrelay_session_books_delivered gauge\n"
	    "# HELP clawrelay_session_books_failed of them failed for good, by reason\n"
	    "# TYPE clawrelay_session_books_failed gauge\n"
	    "# HELP clawrelay_session_books_queued of them still queued\n"
	    "# TYPE clawrelay_session_books_queued gauge\n"
	    "# HELP clawrelay_session_books_balanced 1 when accepted = delivered + failed + queued\n"
	    "# TYPE clawrelay_session_books_balanced gauge\n");
	for (uint32_t p = 0; p < s->nparts; p++) {
		struct session_books bk;
		if (session_books_read(&s->parts[p], &bk) != 0)
			continue;
		sb_printf(sb, "clawrelay_session_books_accepted{partition=\"%u\"} %llu\n"
		    "clawrelay_session_books_delivered{partition=\"%u\"} %llu\n", p,
		    (unsigned long long)bk.accepted, p, (unsigned long long)bk.delivered);
		for (int r = 1; r < SESSION_BOOKS_NREASONS; r++)
			sb_printf(sb, "clawrelay_session_books_failed{partition=\"%u\",reason=\"%s\"} "
			    "%llu\n", p, env_failure_reason_name(r),
			    (unsigned long long)bk.c[SESSION_BOOKS_FAILED + r]);
		sb_printf(sb, "clawrelay_session_books_queued{partition=\"%u\"} %llu\n"
		    "clawrelay_session_books_balanced{partition=\"%u\"} %d\n", p,
		    (unsigned long long)bk.queued, p, bk.balanced);
	}
}

/* session_books_handle - answer <P>.session.<p>.books with Books (msg borrowed) */
void
session_books_handle(struct session_part *pp, natsMsg *msg)
{
	Books b = CLAWRELAY__V1__BOOKS__INIT;
	struct session_books bk;
	uint64_t failed[SESSION_BOOKS_NREASONS];
	unsigned char buf[512];
	size_t len;

	if (session_books_read(pp, &bk) != 0)
		return;	/* not served (any more): the asker times out or asks again */
	b.schema_version = ENV_SCHEMA;
	b.partition = pp->idx;
	b.accepted = bk.accepted;
	b.delivered = bk.delivered;
	for (int r = 0; r < SESSION_BOOKS_NREASONS; r++)
		failed[r] = bk.c[SESSION_BOOKS_FAILED + r];
	b.n_failed = SESSION_BOOKS_NREASONS;
	b.failed = failed;
	b.queued = bk.queued;
	b.instance = SESSION_UNCONST(svc_instance(pp->s->svc));
	if (env_pack_into(&b.base, buf, sizeof(buf), &len) == CR_OK)
		bus_reply(pp->s->bus, msg, buf, len);
}
