/*
 * notifier_shard.c - coalescing writers of the status store.
 *
 * Each shard has a pending table (correlation ID -> merged delta), guarded
 * by the shard's mutex: bus handlers merge into it, the shard's writer
 * thread takes each entry out COALESCE_MS after the first delta of its
 * message arrived (the list is in arrival order, so it takes a prefix), so
 * the receipts of one message within COALESCE_MS of its first always become
 * one write (a fixed tick split them whenever a tick fell between them), and
 * writes each entry with one KV operation where it can:
 *   - a record this writer wrote recently is in its cache with its
 *     revision: kvStore_Update(last = that revision);
 *   - a new message (the delta has accepted or queued): kvStore_Create;
 *   - otherwise, or when the write fails (another replica wrote meanwhile:
 *     "wrong last sequence", or the key exists): kvStore_Get, merge, and
 *     try again with the revision just read (bounded retries).
 * The cache (correlation ID -> record, revision) belongs to the writer
 * thread alone; entries idle for CACHE_MS are dropped.
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
#define MAX_TRIES 8

struct ntf_ent {
	struct ntf_rec r;
	uint64_t rev;          /* cache: KV revision of r */
	uint64_t used;         /* cache: mono_ms of last use; pending: mono_ms it is due */
	uint32_t hash;
	struct ntf_ent *hnext; /* bucket chain */
	struct ntf_ent *lnext; /* pending: arrival order */
};

struct ntf_shard {
	struct ntf *n;
	unsigned idx;
	pthread_mutex_t mu;          /* guards ptab, plist, ptail, npending, quit */
	pthread_cond_t cv;
	struct ntf_ent *ptab[PEND_BUCKETS];
	struct ntf_ent *plist, *ptail;
	size_t npending;
	int quit;
	pthread_t thr;
	int started;
	/* writer thread only */
	struct ntf_ent *ctab[CACHE_BUCKETS];
	_Atomic size_t ncache;
	uint64_t last_sweep;
};

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
	e->used = mono_ms() + (uint64_t)n->coalesce_ms;
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

static struct ntf_ent *
cache_find(struct ntf_shard *sh, const struct ntf_ent *d)
{
	for (struct ntf_ent *e = sh->ctab[d->hash % CACHE_BUCKETS]; e; e = e->hnext)
		if (e->hash == d->hash && strcmp(e->r.correlation_id, d->r.correlation_id) == 0)
			return e;
	return NULL;
}

static void
cache_put(struct ntf_shard *sh, const struct ntf_ent *d, const struct ntf_rec *r, uint64_t rev)
{
	struct ntf_ent *e = cache_find(sh, d);
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
write_one(struct ntf_shard *sh, const struct ntf_ent *d)
{
	struct ntf *n = sh->n;
	struct log_ctx lc = { d->r.correlation_id, d->r.message_id, d->r.sender };
	struct ntf_ent *c = cache_find(sh, d);
	struct ntf_rec r;
	uint64_t rev = 0, newrev = 0;
	int known;	/* 1: r/rev are the stored record; 0: absent; -1: not read yet */
	char key[512];

	if (status_key(d->r.correlation_id, key, sizeof(key)) == 0) {
		atomic_fetch_add(&n->kv_errors, 1);
		return;
	}
	if (c != NULL) {
		r = c->r;
		rev = c->rev;
		known = 1;
	} else if (d->r.at[NTF_ACCEPTED] != 0 || d->r.at[NTF_QUEUED] != 0) {
		known = 0;	/* most likely a new message: try create first */
	} else {
		known = -1;
	}
	for (int tries = 0; tries < MAX_TRIES; tries++) {
		void *buf = NULL;
		size_t len = 0;
		natsStatus s;

		if (known < 0) {
			known = kv_read(n, key, &r, &rev);
			if (known < 0) {
				usleep(20000u << (tries < 4 ? tries : 4));
				continue;
			}
		}
		if (known == 0)
			ntf_rec_init(&r);
		if (!ntf_rec_merge(&r, &d->r)) {
			atomic_fetch_add(&n->kv_skipped, 1);	/* nothing new */
			cache_put(sh, d, &r, rev);
			return;
		}
		if (ntf_rec_pack(&r, &buf, &len) != CR_OK) {
			atomic_fetch_add(&n->kv_errors, 1);
			return;
		}
		if (known == 0)
			s = kvStore_Create(&newrev, n->kv, key, buf, (int)len);
		else
			s = kvStore_Update(&newrev, n->kv, key, buf, (int)len, rev);
		free(buf);
		if (s == NATS_OK) {
			atomic_fetch_add(&n->kv_writes, 1);
			metric_add(n->m_kv_writes, 1);
			cache_put(sh, d, &r, newrev);
			log_debug(&lc, "status %s (rev %llu)", ntf_state_name(ntf_rec_state(&r)),
			    (unsigned long long)newrev);
			return;
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
		cache_drop(sh, d);
		known = -1;
	}
	atomic_fetch_add(&n->kv_errors, 1);
	metric_add(n->m_kv_errors, 1);
	log_error(&lc, "status update lost after %d tries", MAX_TRIES);
}

static void *
writer_main(void *arg)
{
	struct ntf_shard *sh = arg;
	struct ntf *n = sh->n;

	for (;;) {
		struct ntf_ent *batch, **tailp;
		int quit;
		uint64_t now, wait_ms;
		struct timespec ts;

		pthread_mutex_lock(&sh->mu);
		now = mono_ms();
		if (!sh->quit && (sh->plist == NULL || sh->plist->used > now)) {
			wait_ms = sh->plist ? sh->plist->used - now : (uint64_t)n->coalesce_ms;
			clock_gettime(CLOCK_REALTIME, &ts);
			ts.tv_nsec += (long)(wait_ms % 1000) * 1000000L;
			ts.tv_sec += (time_t)(wait_ms / 1000);
			if (ts.tv_nsec >= 1000000000L) {
				ts.tv_sec++;
				ts.tv_nsec -= 1000000000L;
			}
			pthread_cond_timedwait(&sh->cv, &sh->mu, &ts);
			now = mono_ms();
		}
		quit = sh->quit;
		/* take the due prefix (all of it when quitting) out of the table */
		batch = sh->plist;
		tailp = &batch;
		while (*tailp != NULL && (quit || (*tailp)->used <= now)) {
			struct ntf_ent *e = *tailp, **pp;
			for (pp = &sh->ptab[(e->hash / n->nshards) % PEND_BUCKETS]; *pp != e;
			    pp = &(*pp)->hnext)
				;
			*pp = e->hnext;
			sh->npending--;
			tailp = &e->lnext;
		}
		sh->plist = *tailp;
		if (sh->plist == NULL)
			sh->ptail = NULL;
		*tailp = NULL;
		pthread_mutex_unlock(&sh->mu);

		while (batch != NULL) {
			struct ntf_ent *e = batch;
			batch = e->lnext;
			write_one(sh, e);
			free(e);
		}
		if (mono_ms() - sh->last_sweep >= 1000) {
			cache_sweep(sh, (uint64_t)n->cache_ms);
			sh->last_sweep = mono_ms();
		}
		if (quit)
			break;
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
	for (unsigned i = 0; i < count; i++) {
		struct ntf_shard *sh = calloc(1, sizeof(*sh));
		if (sh == NULL)
			return -1;
		sh->n = n;
		sh->idx = i;
		sh->last_sweep = mono_ms();
		pthread_mutex_init(&sh->mu, NULL);
		pthread_cond_init(&sh->cv, NULL);
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
	for (unsigned i = 0; i < n->nshards; i++) {
		struct ntf_shard *sh = n->shards[i];
		if (sh->started)
			pthread_join(sh->thr, NULL);
		/* anything merged after the last swap (handlers are drained by now) */
		while (sh->plist) {
			struct ntf_ent *e = sh->plist;
			sh->plist = e->lnext;
			free(e);
		}
		cache_sweep(sh, 0);
		pthread_cond_destroy(&sh->cv);
		pthread_mutex_destroy(&sh->mu);
		free(sh);
	}
	free(n->shards);
	n->shards = NULL;
	n->nshards = 0;
}

/* ntf_shards_counts - pending deltas and cached records over all shards */
void
ntf_shards_counts(struct ntf *n, size_t *pending, size_t *cached)
{
	*pending = 0;
	*cached = 0;
	for (unsigned i = 0; i < n->nshards; i++) {
		struct ntf_shard *sh = n->shards[i];
		pthread_mutex_lock(&sh->mu);
		*pending += sh->npending;
		pthread_mutex_unlock(&sh->mu);
		*cached += atomic_load(&sh->ncache);
	}
}
