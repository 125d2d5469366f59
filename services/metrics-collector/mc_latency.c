/*
 * mc_latency.c - the end-to-end latency histogram (gateway accepted ->
 * delivered, per message) and the memory it is computed from.
 *
 * The events thread remembers when each recent message was accepted (a
 * HOP_GATEWAY_ACCEPTED hop) in a table of MC_ACC_SLOTS entries: a ring in
 * arrival order, so the oldest entry makes room for the newest, with a hash
 * index keyed by a 64-bit hash of (correlation ID, message ID). A
 * HOP_DELIVERED hop looks its message up there; only a message the table
 * no longer (or never) held, e.g. one delivered long after it was accepted
 * or accepted before this process started, costs a read of its trace from
 * the store, as every delivered hop did before.
 *
 * Threads: mc_latency_accepted/mc_latency_delivered with mc->mu held
 * (the stream consumer's thread); the caller records the latency in the
 * minute's rollup and the /metrics histogram.
 */
#include <stdlib.h>
#include <string.h>

#include "mc.h"
#include "util.h"

#define MC_ACC_SLOTS (1u << 17)        /* messages remembered: 4 MiB, ~25 s at 5,000 msg/s */
#define MC_ACC_BUCKETS (1u << 16)
#define MC_ACC_MAX_AGE_MS (15 * 60 * 1000ull)
#define MC_ID_MAX 128

struct mc_acc_ent {
	uint64_t key;          /* acc_key(correlation ID, message ID); 0 = free */
	uint64_t ts_us;        /* the accepted hop's time */
	uint64_t seen_ms;      /* mono_ms when it was recorded */
	uint32_t next;         /* next slot + 1 in the bucket's chain; 0 = end */
};

struct mc_acc {
	struct mc_acc_ent *ring;
	uint32_t *heads;       /* per bucket: first slot + 1; 0 = empty */
	uint32_t pos;          /* the slot the next entry takes */
};

/* FNV-1a, 64 bits, over "<correlation ID>\0<message ID>"; never 0 */
static uint64_t
acc_key(const char *corr, const unsigned char *mid, size_t mlen)
{
	uint64_t h = 1469598103934665603ull;

	for (const unsigned char *p = (const unsigned char *)corr; *p; p++)
		h = (h ^ *p) * 1099511628211ull;
	h *= 1099511628211ull;	/* the separator */
	for (size_t i = 0; i < mlen; i++)
		h = (h ^ mid[i]) * 1099511628211ull;
	return h ? h : 1;
}

static struct mc_acc_ent *
acc_find(struct mc_acc *a, uint64_t key)
{
	for (uint32_t i = a->heads[key % MC_ACC_BUCKETS]; i != 0; i = a->ring[i - 1].next)
		if (a->ring[i - 1].key == key)
			return &a->ring[i - 1];
	return NULL;
}

/* mc_latency_new - the accepted-time table; NULL on ENOMEM. Free with
 * mc_latency_free. */
struct mc_acc *
mc_latency_new(void)
{
	struct mc_acc *a = calloc(1, sizeof(*a));

	if (a == NULL)
		return NULL;
	a->ring = calloc(MC_ACC_SLOTS, sizeof(*a->ring));
	a->heads = calloc(MC_ACC_BUCKETS, sizeof(*a->heads));
	if (a->ring == NULL || a->heads == NULL) {
		mc_latency_free(a);
		return NULL;
	}
	return a;
}

/* mc_latency_free - NULL does nothing */
void
mc_latency_free(struct mc_acc *a)
{
	if (a == NULL)
		return;
	free(a->ring);
	free(a->heads);
	free(a);
}

/* mc_latency_accepted - remember when a message was accepted (the
 * earliest time, if it is seen twice) */
void
mc_latency_accepted(struct mc *m, const char *corr, const unsigned char *mid, size_t mlen,
    uint64_t ts_us)
{
	struct mc_acc *a = m->acc;
	uint64_t key = acc_key(corr, mid, mlen);
	struct mc_acc_ent *e = acc_find(a, key);

	if (e != NULL) {
		if (ts_us < e->ts_us)
			e->ts_us = ts_us;
		return;
	}
	e = &a->ring[a->pos];
	if (e->key != 0) {
		/* the oldest entry makes room: unlink it from its chain */
		uint32_t *pp = &a->heads[e->key % MC_ACC_BUCKETS];
		while (*pp != a->pos + 1)
			pp = &a->ring[*pp - 1].next;
		*pp = e->next;
	}
	e->key = key;
	e->ts_us = ts_us;
	e->seen_ms = mono_ms();
	e->next = a->heads[key % MC_ACC_BUCKETS];
	a->heads[key % MC_ACC_BUCKETS] = a->pos + 1;
	a->pos = (a->pos + 1) % MC_ACC_SLOTS;
}

/* the accepted time from the stored trace: the first accepted hop of the
 * same message (of any message of the correlation ID if mid is empty) */
static uint64_t
accepted_from_store(struct mc *m, const char *corr, const unsigned char *mid, size_t mlen)
{
	struct mc_trace t = { NULL, 0 };
	uint64_t acc = 0;

	if (mlen > MC_ID_MAX || mc_trace_load(m, corr, (size_t)m->max_trace_hops, &t) != CR_OK)
		return 0;
	for (size_t i = 0; i < t.n; i++) {
		if (t.hops[i]->hop == CLAWRELAY__V1__HOP_KIND__HOP_GATEWAY_ACCEPTED &&
		    (mlen == 0 || (strlen(t.hops[i]->message_id) == mlen &&
		    memcmp(t.hops[i]->message_id, mid, mlen) == 0))) {
			acc = t.hops[i]->ts_us;
			break;
		}
	}
	mc_trace_free(&t);
	return acc;
}

/* mc_latency_delivered - accepted -> delivered of a message, seconds; -1
 * when its accepted time is unknown */
double
mc_latency_delivered(struct mc *m, const char *corr, const unsigned char *mid, size_t mlen,
    uint64_t ts_us)
{
	struct mc_acc_ent *e = NULL;
	uint64_t acc = 0;

	if (mlen > 0)
		e = acc_find(m->acc, acc_key(corr, mid, mlen));
	if (e != NULL && mono_ms() - e->seen_ms <= MC_ACC_MAX_AGE_MS)
		acc = e->ts_us;
	else
		acc = accepted_from_store(m, corr, mid, mlen);
	if (acc == 0 || ts_us < acc)
		return -1;
	return (double)(ts_us - acc) / 1e6;
}
