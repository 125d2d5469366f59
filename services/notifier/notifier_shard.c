/*
 * notifier_shard.c - coalescing writers of the status store.
 *
 * Each shard has a pending table (correlation ID -> merged delta), guarded
 * by the shard's mutex: bus handlers merge into it, the shard's writer
 * thread takes each entry out COALESCE_MS after the first delta of its
 * message arrived (the list is in arrival order, so it takes a prefix), so
 * the receipts of one message within COALESCE_MS of its first always become
 * one write. Writers take due entries only on ticks (multiples of
 * NTF_TICK_MS of the monotonic clock, the same instants for every shard), so
 * the writes due meanwhile leave together, in one socket write, and
 * nats-server handles them as one batch (measured: ~50-80 us of its CPU for
 * a lone KV write, ~10-25 us for one in a batch); a write may leave up to a
 * tick late, never split.
 *
 * Under load (more than NTF_BUSY_DELTAS receipts and failures a second,
 * ~1,000 messages) a message that is due but not done (rec_done: failed, or
 * both delivered and processed) is held (the held list, in arrival order)
 * until it is, or until NTF_HOLD_WINDOWS x COALESCE_MS after its first
 * delta: a relay with a backlog takes longer than COALESCE_MS from queued
 * to processed, and without the hold every such message costs two or three
 * writes (the record, then its updates), and each write costs nats-server
 * more than the whole rest of the message's status. The recorded times do
 * not change, only when a queued state becomes visible; a message that is
 * done is written on the next tick. Below that rate, records are written
 * COALESCE_MS after their first delta.
 *
 * It writes each entry with one KV operation where it can, published
 * without waiting for the ack (ntf_kv_send; the ack handler marks the
 * entry through ntf_shards_acked and the writer finishes it on its next
 * pass):
 *   - a record this writer wrote recently is in its cache with its
 *     revision: update with last = that revision;
 *   - a new message (the delta has accepted or queued): create;
 *   - otherwise, or when the write fails (another replica wrote meanwhile:
 *     "wrong last sequence"), no ack came within NTF_ACK_TIMEOUT_MS, or the
 *     publish itself failed: synchronously kvStore_Get, merge, and write
 *     with the revision just read (bounded retries).
 * One write per message is in flight at a time: a delta that becomes due
 * while its message's write awaits the ack waits for it (merged into
 * `later`), then goes out with the revision the ack reported.
 *
 * Ownership: the cache (correlation ID -> record, revision, for messages not
 * done; entries idle for CACHE_MS are dropped), the in-flight list and its
 * table by correlation ID belong to the writer thread alone. The table of
 * in-flight writes by write id and the entries' ack fields are shared with
 * the ack handler, under the shard's second mutex (fmu), so that acks and
 * receipts (mu) never wait for each other.
 */
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "log.h"
#include "ntf.h"
#include "status.h"
#include "util.h"

#define PEND_BUCKETS 4096u
#define CACHE_BUCKETS 16384u
#define FLIGHT_BUCKETS 1024u
#define MAX_TRIES 8
#define NTF_TICK_MS 10            /* a writer takes due entries at most this often */
#define NTF_FLIGHT_MAX 2048u      /* writes awaiting their ack, per shard */
#define NTF_ACK_TIMEOUT_MS 5000   /* then the write is redone synchronously */
#define NTF_BUSY_DELTAS 3000      /* receipts + failures a second that make the writers hold */
#define NTF_BUSY_WINDOW_MS 100    /* ... measured over this long */
#define NTF_HOLD_WINDOWS 20       /* a held record waits at most this many COALESCE_MS */

/* ack states of an in-flight entry */
enum { ACK_WAITING = 0, ACK_OK, ACK_FAILED, ACK_CONFLICT, ACK_TIMEOUT };

struct ntf_ent {
	struct ntf_rec r;      /* pending: merged delta; cache and in flight: the record */
	uint64_t rev;          /* cache: KV revision of r; in flight: the one it replaces */
	uint64_t used;         /* cache: mono_ms of last use; pending: mono_ms it is due;
	                        * in flight: mono_ms its ack is overdue */
	uint64_t first;        /* pending: mono_ms of its first delta */
	int held;              /* pending: on the held list */
	uint64_t wid;          /* in flight: write id (last token of its reply subject) */
	uint64_t newrev;       /* in flight: revision its ack reported (under fmu) */
	int ack;               /* in flight: ACK_* (under fmu) */
	uint32_t hash;
	struct ntf_ent *hnext; /* bucket chain by correlation ID (pending, cache, in flight) */
	struct ntf_ent *wnext; /* in flight: bucket chain by write id (under fmu) */
	struct ntf_ent *lnext; /* pending: arrival order; in flight: send order */
	struct ntf_ent *lprev; /* held: arrival order, backwards */
	struct ntf_ent *later; /* in flight: deltas of its message that became due meanwhile */
};

struct ntf_shard {
	struct ntf *n;
	unsigned idx;
	pthread_mutex_t mu;          /* guards ptab, plist, ptail, hlist, htail,
	                              * npending, busy, quit */
	pthread_cond_t cv;           /* the writer sleeps until its next tick */
	struct ntf_ent *ptab[PEND_BUCKETS];
	struct ntf_ent *plist, *ptail;   /* pending, in arrival order (due order) */
	struct ntf_ent *hlist, *htail;   /* held, in arrival order */
	size_t npending;                 /* entries in ptab (both lists) */
	int busy;                        /* hold records (see the file header) */
	int quit;
	/* a lock of its own, so acks and receipts do not contend */
	pthread_mutex_t fmu;         /* guards wtab, the in-flight entries' ack/newrev, waiting */
	pthread_cond_t fcv;          /* the writer waits for an ack */
	struct ntf_ent *wtab[FLIGHT_BUCKETS];
	int waiting;
	pthread_t thr;
	int started;
	/* writer thread only */
	struct ntf_ent *ctab[CACHE_BUCKETS];
	struct ntf_ent *ftab[FLIGHT_BUCKETS];
	struct ntf_ent *fhead, *ftail;   /* in flight, in send order */
	struct ntf_ent *redo;            /* deltas whose wait for an ack is over */
	uint64_t next_wid;
	_Atomic size_t ncache, nflight;
	uint64_t last_sweep;
	uint64_t rate_ms, rate_deltas;   /* start of the load measurement, deltas then */
};

/* nothing more to come: failed, or processed and delivered (those two
 * receipts come from different services, in either order) */
static int
rec_done(const struct ntf_rec *r)
{
	return r->at[NTF_FAILED] != 0 || (r->at[NTF_PROCESSED] != 0 && r->at[NTF_DELIVERED] != 0);
}

/* ntf_shards_add - merge d into its shard's pending table */
void
ntf_shards_add(struct ntf *n, const struct ntf_rec *d)
{
	uint32_t h = fnv1a32(d->correlation_id);
	struct ntf_shard *sh = n->shards[h % n->nshards];
	struct ntf_ent *e;
	unsigned b = (h / n->nshards) % PEND_BUCKETS;

	pthread_mutex_lock(&sh->mu);
	for (e = sh->ptab[b]; e; e = e->hnext) {
		if (e->hash == h && strcmp(e->r.correlation_id, d->correlation_id) == 0) {
			ntf_rec_merge(&e->r, d);
			if (e->held && rec_done(&e->r)) {
				/* what it waited for: due now, at the head of the
				 * pending list (which stays in due order) */
				*(e->lprev ? &e->lprev->lnext : &sh->hlist) = e->lnext;
				*(e->lnext ? &e->lnext->lprev : &sh->htail) = e->lprev;
				e->held = 0;
				e->used = mono_ms();
				if (sh->plist != NULL && sh->plist->used < e->used)
					e->used = sh->plist->used;
				e->lnext = sh->plist;
				sh->plist = e;
				if (sh->ptail == NULL)
					sh->ptail = e;
			}
			pthread_mutex_unlock(&sh->mu);
			atomic_fetch_add(&n->coalesced, 1);
			return;
		}
	}
	e = malloc(sizeof(*e));
	if (e == NULL) {
		pthread_mutex_unlock(&sh->mu);
		atomic_fetch_add(&n->kv_errors, 1);
		log_error(NULL, "status update dropped: out of memory");
		return;
	}
	e->r = *d;
	e->hash = h;
	e->rev = 0;
	e->first = mono_ms();
	e->used = e->first + (uint64_t)n->coalesce_ms;
	e->held = 0;
	e->hnext = sh->ptab[b];
	sh->ptab[b] = e;
	e->lnext = NULL;
	if (sh->ptail)
		sh->ptail->lnext = e;
	else
		sh->plist = e;
	sh->ptail = e;
	sh->npending++;
	pthread_mutex_unlock(&sh->mu);
}

/* the entry for d's correlation ID in a table chained by hnext, or NULL */
static struct ntf_ent *
tab_find(struct ntf_ent **tab, unsigned nb, const struct ntf_ent *d)
{
	for (struct ntf_ent *e = tab[d->hash % nb]; e; e = e->hnext)
		if (e->hash == d->hash && strcmp(e->r.correlation_id, d->r.correlation_id) == 0)
			return e;
	return NULL;
}

static void cache_drop(struct ntf_shard *sh, const struct ntf_ent *d);

static void
cache_put(struct ntf_shard *sh, const struct ntf_ent *d, const struct ntf_rec *r, uint64_t rev)
{
	struct ntf_ent *e;

	if (rec_done(r)) {
		/* rarely written again, while its room in a full cache would
		 * save a read for a message still on its way */
		cache_drop(sh, d);
		return;
	}
	e = tab_find(sh->ctab, CACHE_BUCKETS, d);
	if (e == NULL) {
		if (atomic_load(&sh->ncache) >= (size_t)(sh->n->cache_max / sh->n->nshards + 1))
			return;	/* full: the sweep makes room */
		e = malloc(sizeof(*e));
		if (e == NULL)
			return;
		e->hash = d->hash;
		e->hnext = sh->ctab[d->hash % CACHE_BUCKETS];
		sh->ctab[d->hash % CACHE_BUCKETS] = e;
		atomic_fetch_add(&sh->ncache, 1);
	}
	e->r = *r;
	e->rev = rev;
	e->used = mono_ms();
}

static void
cache_drop(struct ntf_shard *sh, const struct ntf_ent *d)
{
	for (struct ntf_ent **pp = &sh->ctab[d->hash % CACHE_BUCKETS]; *pp; pp = &(*pp)->hnext) {
		if ((*pp)->hash == d->hash && strcmp((*pp)->r.correlation_id, d->r.correlation_id) == 0) {
			struct ntf_ent *e = *pp;
			*pp = e->hnext;
			free(e);
			atomic_fetch_sub(&sh->ncache, 1);
			return;
		}
	}
}

static void
cache_sweep(struct ntf_shard *sh, uint64_t max_idle)
{
	uint64_t now = mono_ms();
	for (unsigned i = 0; i < CACHE_BUCKETS; i++) {
		struct ntf_ent **pp = &sh->ctab[i];
		while (*pp) {
			if (now - (*pp)->used >= max_idle) {
				struct ntf_ent *e = *pp;
				*pp = e->hnext;
				free(e);
				atomic_fetch_sub(&sh->ncache, 1);
			} else {
				pp = &(*pp)->hnext;
			}
		}
	}
}

/* read the stored record: 1 found (r, rev set), 0 absent, -1 error */
static int
kv_read(struct ntf *n, const char *key, struct ntf_rec *r, uint64_t *rev)
{
	kvEntry *e = NULL;
	natsStatus s = kvStore_Get(&e, n->kv, key);
	ProtobufCMessage *m = NULL;

	atomic_fetch_add(&n->kv_gets, 1);
	if (s == NATS_NOT_FOUND)
		return 0;
	if (s != NATS_OK) {
		log_warn(NULL, "status get %s: %s", key, natsStatus_GetText(s));
		return -1;
	}
	*rev = kvEntry_Revision(e);
	ntf_rec_init(r);
	if (env_unpack_msg(&clawrelay__v1__status_record__descriptor, kvEntry_Value(e),
	    (size_t)kvEntry_ValueLen(e), &m) == CR_OK) {
		ntf_rec_from_proto(r, (const StatusRecord *)m);
		protobuf_c_message_free_unpacked(m, NULL);
	} else {
		log_warn(NULL, "status record %s undecodable: rewriting it", key);
	}
	kvEntry_Destroy(e);
	return 1;
}

static void
count_write(struct ntf *n, const struct ntf_rec *r, uint64_t rev)
{
	struct log_ctx lc = { r->correlation_id, r->message_id, r->sender, NULL };

	atomic_fetch_add(&n->kv_writes, 1);
	metric_add(n->m_kv_writes, 1);
	log_debug(&lc, "status %s (rev %llu)", ntf_state_name(ntf_rec_state(r)),
	    (unsigned long long)rev);
}

/* ntf_status_write - read the stored record, fold d into it and write it
 * back with compare-and-set, synchronously, retrying on conflicts */
int
ntf_status_write(struct ntf *n, const struct ntf_rec *d, struct ntf_rec *out, uint64_t *out_rev)
{
	struct log_ctx lc = { d->correlation_id, d->message_id, d->sender, NULL };
	struct ntf_rec r;
	uint64_t rev = 0, newrev = 0;
	unsigned char buf[NTF_PACK_MAX];
	char key[512];

	if (status_key(d->correlation_id, key, sizeof(key)) == 0) {
		atomic_fetch_add(&n->kv_errors, 1);
		return -1;
	}
	for (int tries = 0; tries < MAX_TRIES; tries++) {
		size_t len = 0;
		natsStatus s;
		int known = kv_read(n, key, &r, &rev);

		if (known < 0) {
			usleep(20000u << (tries < 4 ? tries : 4));
			continue;
		}
		if (known == 0)
			ntf_rec_init(&r);
		if (!ntf_rec_merge(&r, d)) {
			atomic_fetch_add(&n->kv_skipped, 1);	/* nothing new */
			*out = r;
			*out_rev = rev;
			return 0;
		}
		if (ntf_rec_pack(&r, buf, sizeof(buf), &len) != CR_OK) {
			atomic_fetch_add(&n->kv_errors, 1);
			return -1;
		}
		if (known == 0)
			s = kvStore_Create(&newrev, n->kv, key, buf, (int)len);
		else
			s = kvStore_Update(&newrev, n->kv, key, buf, (int)len, rev);
		if (s == NATS_OK) {
			count_write(n, &r, newrev);
			*out = r;
			*out_rev = newrev;
			return 0;
		}
		/* someone else wrote it (CAS conflict, or it exists): read again */
		const char *why = nats_GetLastError(NULL);
		if (why != NULL && (strstr(why, "wrong last sequence") || strstr(why, "exists"))) {
			atomic_fetch_add(&n->kv_conflicts, 1);
			metric_add(n->m_kv_conflicts, 1);
		} else {
			log_warn(&lc, "status write %s: %s", key, why ? why : natsStatus_GetText(s));
			usleep(20000u << (tries < 4 ? tries : 4));
		}
	}
	atomic_fetch_add(&n->kv_errors, 1);
	metric_add(n->m_kv_errors, 1);
	log_error(&lc, "status update lost after %d tries", MAX_TRIES);
	return -1;
}

/* the slow path: ntf_status_write, remembering the result in the cache */
static void
write_sync(struct ntf_shard *sh, const struct ntf_ent *d)
{
	struct ntf_rec r;
	uint64_t rev = 0;

	cache_drop(sh, d);
	if (ntf_status_write(sh->n, &d->r, &r, &rev) == 0)
		cache_put(sh, d, &r, rev);
}

/* ntf_shards_acked - record the ack of write wid (ack handler's thread) */
void
ntf_shards_acked(struct ntf *n, unsigned shard, uint64_t wid, uint64_t rev, int conflict)
{
	struct ntf_shard *sh = n->shards[shard];

	pthread_mutex_lock(&sh->fmu);
	/* absent: it timed out and was redone; this ack is stale */
	for (struct ntf_ent **pp = &sh->wtab[wid % FLIGHT_BUCKETS]; *pp; pp = &(*pp)->wnext) {
		struct ntf_ent *e = *pp;
		if (e->wid == wid) {
			*pp = e->wnext;
			e->newrev = rev;
			e->ack = rev != 0 ? ACK_OK : conflict ? ACK_CONFLICT : ACK_FAILED;
			if (sh->waiting)
				pthread_cond_signal(&sh->fcv);
			break;
		}
	}
	pthread_mutex_unlock(&sh->fmu);
}

/* under fmu: take e out of the table by write id (if its ack has not) */
static void
wtab_remove(struct ntf_shard *sh, const struct ntf_ent *e)
{
	for (struct ntf_ent **pp = &sh->wtab[e->wid % FLIGHT_BUCKETS]; *pp; pp = &(*pp)->wnext) {
		if (*pp == e) {
			*pp = e->wnext;
			return;
		}
	}
}

static void
ftab_remove(struct ntf_shard *sh, const struct ntf_ent *e)
{
	for (struct ntf_ent **pp = &sh->ftab[e->hash % FLIGHT_BUCKETS]; *pp; pp = &(*pp)->hnext) {
		if (*pp == e) {
			*pp = e->hnext;
			return;
		}
	}
}

/* finish the in-flight writes at the head of the send order whose ack came
 * (or is overdue): cache the new revision or redo the write synchronously;
 * deltas that waited for them go to sh->redo */
static void
flights_finish(struct ntf_shard *sh)
{
	struct ntf *n = sh->n;
	struct ntf_ent *done = NULL, **tail = &done, *e;
	uint64_t now = mono_ms();

	if (sh->fhead == NULL)
		return;
	pthread_mutex_lock(&sh->fmu);
	/* acks come in send order (one connection, one stream), so the head
	 * is the one to look at */
	while ((e = sh->fhead) != NULL) {
		if (e->ack == ACK_WAITING) {
			if (now < e->used)
				break;
			wtab_remove(sh, e);	/* a late ack finds nothing */
			e->ack = ACK_TIMEOUT;
		}
		sh->fhead = e->lnext;
		*tail = e;
		tail = &e->lnext;
	}
	*tail = NULL;
	if (sh->fhead == NULL)
		sh->ftail = NULL;
	pthread_mutex_unlock(&sh->fmu);

	while ((e = done) != NULL) {
		done = e->lnext;
		ftab_remove(sh, e);
		atomic_fetch_sub(&sh->nflight, 1);
		switch (e->ack) {
		case ACK_OK:
			count_write(n, &e->r, e->newrev);
			cache_put(sh, e, &e->r, e->newrev);
			break;
		case ACK_CONFLICT:	/* another replica wrote it meanwhile */
			atomic_fetch_add(&n->kv_conflicts, 1);
			metric_add(n->m_kv_conflicts, 1);
			write_sync(sh, e);
			break;
		default: {
			struct log_ctx lc = { e->r.correlation_id, e->r.message_id, e->r.sender, NULL };
			log_warn(&lc, "status write %s: writing it again",
			    e->ack == ACK_TIMEOUT ? "not acknowledged in time" : "refused");
			write_sync(sh, e);
			break;
		}
		}
		if (e->later != NULL) {
			e->later->lnext = sh->redo;
			sh->redo = e->later;
		}
		free(e);
	}
}

/* sleep until the oldest in-flight write is acknowledged (or overdue) */
static void
flights_wait(struct ntf_shard *sh)
{
	struct ntf_ent *e = sh->fhead;

	if (e == NULL)
		return;
	pthread_mutex_lock(&sh->fmu);
	if (e->ack == ACK_WAITING) {
		uint64_t now = mono_ms(), ms = e->used > now ? e->used - now : 0;
		struct timespec ts;

		if (ms > 100)
			ms = 100;
		clock_gettime(CLOCK_REALTIME, &ts);
		ts.tv_nsec += (long)ms * 1000000L;
		if (ts.tv_nsec >= 1000000000L) {
			ts.tv_sec++;
			ts.tv_nsec -= 1000000000L;
		}
		sh->waiting = 1;
		pthread_cond_timedwait(&sh->fcv, &sh->fmu, &ts);
		sh->waiting = 0;
	}
	pthread_mutex_unlock(&sh->fmu);
	flights_finish(sh);
}

/* write the due delta d (takes it): fold it into the cached record and
 * publish the result, or leave it to the slow path */
static void
submit(struct ntf_shard *sh, struct ntf_ent *d)
{
	struct ntf *n = sh->n;
	struct ntf_ent *f, *c;
	struct ntf_rec r;
	uint64_t rev;
	unsigned char buf[NTF_PACK_MAX];
	size_t len = 0;
	char key[512];

	while (atomic_load(&sh->nflight) >= NTF_FLIGHT_MAX)
		flights_wait(sh);
	if ((f = tab_find(sh->ftab, FLIGHT_BUCKETS, d)) != NULL) {
		/* its message's write awaits the ack: go after it */
		if (f->later != NULL) {
			ntf_rec_merge(&f->later->r, &d->r);
			free(d);
		} else {
			d->lnext = NULL;
			f->later = d;
		}
		return;
	}
	if (status_key(d->r.correlation_id, key, sizeof(key)) == 0) {
		atomic_fetch_add(&n->kv_errors, 1);
		free(d);
		return;
	}
	if ((c = tab_find(sh->ctab, CACHE_BUCKETS, d)) != NULL) {
		r = c->r;
		rev = c->rev;
	} else if (d->r.at[NTF_ACCEPTED] != 0 || d->r.at[NTF_QUEUED] != 0) {
		ntf_rec_init(&r);	/* most likely a new message: create */
		rev = 0;
	} else {
		write_sync(sh, d);	/* written before, not by this writer lately */
		free(d);
		return;
	}
	if (!ntf_rec_merge(&r, &d->r)) {
		atomic_fetch_add(&n->kv_skipped, 1);	/* nothing new */
		if (c != NULL)
			c->used = mono_ms();
		free(d);
		return;
	}
	if (ntf_rec_pack(&r, buf, sizeof(buf), &len) != CR_OK) {
		atomic_fetch_add(&n->kv_errors, 1);
		free(d);
		return;
	}
	d->r = r;
	d->rev = rev;
	d->wid = ++sh->next_wid;
	d->ack = ACK_WAITING;
	d->later = NULL;
	d->lnext = NULL;
	d->used = mono_ms() + NTF_ACK_TIMEOUT_MS;
	/* in the table before the publish: the ack may come at once */
	pthread_mutex_lock(&sh->fmu);
	d->wnext = sh->wtab[d->wid % FLIGHT_BUCKETS];
	sh->wtab[d->wid % FLIGHT_BUCKETS] = d;
	pthread_mutex_unlock(&sh->fmu);
	if (ntf_kv_send(n, sh->idx, d->wid, key, rev, buf, len) != CR_OK) {
		pthread_mutex_lock(&sh->fmu);
		wtab_remove(sh, d);
		pthread_mutex_unlock(&sh->fmu);
		write_sync(sh, d);
		free(d);
		return;
	}
	d->hnext = sh->ftab[d->hash % FLIGHT_BUCKETS];
	sh->ftab[d->hash % FLIGHT_BUCKETS] = d;
	if (sh->ftail != NULL)
		sh->ftail->lnext = d;
	else
		sh->fhead = d;
	sh->ftail = d;
	atomic_fetch_add(&sh->nflight, 1);
}

/* submit the deltas whose wait for an ack is over */
static void
submit_redo(struct ntf_shard *sh)
{
	while (sh->redo != NULL) {
		struct ntf_ent *e = sh->redo;
		sh->redo = e->lnext;
		submit(sh, e);
	}
}

/* under mu: take e out of the pending table */
static void
pend_remove(struct ntf_shard *sh, struct ntf_ent *e)
{
	struct ntf_ent **pp = &sh->ptab[(e->hash / sh->n->nshards) % PEND_BUCKETS];

	while (*pp != e)
		pp = &(*pp)->hnext;
	*pp = e->hnext;
	e->held = 0;
	sh->npending--;
}

/* under mu: every NTF_BUSY_WINDOW_MS, is the process taking enough
 * receipts and failures that records not yet done should be held? (A short
 * window: until it says so, a burst's messages cost two writes each.) */
static void
busy_update(struct ntf_shard *sh, uint64_t now)
{
	struct ntf *n = sh->n;
	uint64_t deltas = atomic_load(&n->receipts) + atomic_load(&n->failures);

	if (now - sh->rate_ms < NTF_BUSY_WINDOW_MS)
		return;
	sh->busy = (deltas - sh->rate_deltas) * 1000 >= NTF_BUSY_DELTAS * (now - sh->rate_ms);
	sh->rate_ms = now;
	sh->rate_deltas = deltas;
}

static void *
writer_main(void *arg)
{
	struct ntf_shard *sh = arg;
	struct ntf *n = sh->n;

	for (;;) {
		struct ntf_ent *batch, **tailp;
		int quit;
		uint64_t now, wake;
		struct timespec ts;

		pthread_mutex_lock(&sh->mu);
		now = mono_ms();
		/* due entries on the next tick (every shard's tick is the same
		 * instant, so their writes leave together); acks overdue */
		wake = sh->plist ? sh->plist->used : now + (uint64_t)n->coalesce_ms;
		if (sh->hlist != NULL && sh->hlist->used < wake)
			wake = sh->hlist->used;
		wake += NTF_TICK_MS - 1 - (wake + NTF_TICK_MS - 1) % NTF_TICK_MS;
		if (sh->fhead != NULL && sh->fhead->used < wake)
			wake = sh->fhead->used;
		if (!sh->quit && wake > now) {
			clock_gettime(CLOCK_REALTIME, &ts);
			ts.tv_nsec += (long)((wake - now) % 1000) * 1000000L;
			ts.tv_sec += (time_t)((wake - now) / 1000);
			if (ts.tv_nsec >= 1000000000L) {
				ts.tv_sec++;
				ts.tv_nsec -= 1000000000L;
			}
			pthread_cond_timedwait(&sh->cv, &sh->mu, &ts);
			now = mono_ms();
		}
		quit = sh->quit;
		busy_update(sh, now);
		/* take the due entries (all of them when quitting) out of the
		 * table; under load, hold the ones not yet final */
		batch = NULL;
		tailp = &batch;
		while (sh->plist != NULL && (quit || sh->plist->used <= now)) {
			struct ntf_ent *e = sh->plist;
			sh->plist = e->lnext;
			if (!quit && sh->busy && !rec_done(&e->r) &&
			    now < e->first + NTF_HOLD_WINDOWS * (uint64_t)n->coalesce_ms) {
				e->held = 1;
				e->used = e->first + NTF_HOLD_WINDOWS * (uint64_t)n->coalesce_ms;
				e->lnext = NULL;
				e->lprev = sh->htail;
				*(sh->htail ? &sh->htail->lnext : &sh->hlist) = e;
				sh->htail = e;
				continue;
			}
			pend_remove(sh, e);
			*tailp = e;
			tailp = &e->lnext;
		}
		if (sh->plist == NULL)
			sh->ptail = NULL;
		while (sh->hlist != NULL && (quit || sh->hlist->used <= now)) {
			struct ntf_ent *e = sh->hlist;
			sh->hlist = e->lnext;
			if (sh->hlist != NULL)
				sh->hlist->lprev = NULL;
			else
				sh->htail = NULL;
			pend_remove(sh, e);
			*tailp = e;
			tailp = &e->lnext;
		}
		*tailp = NULL;
		pthread_mutex_unlock(&sh->mu);

		flights_finish(sh);
		submit_redo(sh);
		while (batch != NULL) {
			struct ntf_ent *e = batch;
			batch = e->lnext;
			submit(sh, e);
		}
		if (mono_ms() - sh->last_sweep >= 1000) {
			cache_sweep(sh, (uint64_t)n->cache_ms);
			sh->last_sweep = mono_ms();
		}
		if (quit) {
			/* everything is out: wait for the acks (or redo the writes) */
			while (sh->fhead != NULL || sh->redo != NULL) {
				flights_wait(sh);
				submit_redo(sh);
			}
			break;
		}
	}
	return NULL;
}

/* ntf_shards_start - create and start count shards */
int
ntf_shards_start(struct ntf *n, unsigned count)
{
	n->shards = calloc(count, sizeof(*n->shards));
	if (n->shards == NULL)
		return -1;
	if (ntf_kv_open(n) != 0)
		return -1;
	for (unsigned i = 0; i < count; i++) {
		struct ntf_shard *sh = calloc(1, sizeof(*sh));
		if (sh == NULL)
			return -1;
		sh->n = n;
		sh->idx = i;
		sh->last_sweep = mono_ms();
		sh->rate_ms = mono_ms();
		pthread_mutex_init(&sh->mu, NULL);
		pthread_cond_init(&sh->cv, NULL);
		pthread_mutex_init(&sh->fmu, NULL);
		pthread_cond_init(&sh->fcv, NULL);
		n->shards[i] = sh;
		n->nshards = i + 1;
		if (pthread_create(&sh->thr, NULL, writer_main, sh) != 0) {
			log_error(NULL, "status writer %u: cannot start a thread", i);
			return -1;
		}
		sh->started = 1;
	}
	return 0;
}

/* ntf_shards_stop - write everything pending, stop and free the shards */
void
ntf_shards_stop(struct ntf *n)
{
	for (unsigned i = 0; i < n->nshards; i++) {
		struct ntf_shard *sh = n->shards[i];
		pthread_mutex_lock(&sh->mu);
		sh->quit = 1;
		pthread_cond_signal(&sh->cv);
		pthread_mutex_unlock(&sh->mu);
	}
	for (unsigned i = 0; i < n->nshards; i++)
		if (n->shards[i]->started)
			pthread_join(n->shards[i]->thr, NULL);
	/* no more acks can reach the shards once this returns */
	ntf_kv_close(n);
	for (unsigned i = 0; i < n->nshards; i++) {
		struct ntf_shard *sh = n->shards[i];
		/* anything merged after the last swap (handlers are drained by now) */
		while (sh->plist) {
			struct ntf_ent *e = sh->plist;
			sh->plist = e->lnext;
			free(e);
		}
		while (sh->hlist) {
			struct ntf_ent *e = sh->hlist;
			sh->hlist = e->lnext;
			free(e);
		}
		cache_sweep(sh, 0);
		pthread_cond_destroy(&sh->fcv);
		pthread_mutex_destroy(&sh->fmu);
		pthread_cond_destroy(&sh->cv);
		pthread_mutex_destroy(&sh->mu);
		free(sh);
	}
	free(n->shards);
	n->shards = NULL;
	n->nshards = 0;
}

/* ntf_shards_counts - pending deltas, cached records, writes in flight */
void
ntf_shards_counts(struct ntf *n, size_t *pending, size_t *cached, size_t *inflight)
{
	*pending = 0;
	*cached = 0;
	*inflight = 0;
	for (unsigned i = 0; i < n->nshards; i++) {
		struct ntf_shard *sh = n->shards[i];
		pthread_mutex_lock(&sh->mu);
		*pending += sh->npending;
		pthread_mutex_unlock(&sh->mu);
		*cached += atomic_load(&sh->ncache);
		*inflight += atomic_load(&sh->nflight);
	}
}
