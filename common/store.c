/*
 * store.c - durable key/value storage over LMDB, with group commit.
 *
 * Invariants and threads (see store.h for the callers' rules):
 *   - struct store is immutable after store_open except its counters, which
 *     are C11 atomics (relaxed: they are metrics, not synchronization).
 *   - LMDB serializes write txns itself; every write path here opens,
 *     fills and ends its txn on one thread without holding any lock of ours.
 *   - struct store_committer: `mu` guards the pending FIFO (head/tail,
 *     pending_ops, stopping) and nothing else. Submitters append under it;
 *     the writer thread detaches a group under it, then runs the txn, the
 *     fsync and the callbacks with it released, so submitting never waits
 *     for the disk.
 *   - A batch is an op array plus one byte arena holding every key and value,
 *     so building one costs a few reallocs, not two mallocs per op.
 */
#include "metrics.h"
#include "store.h"

#include <errno.h>
#include <lmdb.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>

#define STORE_MAX_READERS 512

struct store {
	MDB_env *env;
	int flags;
	_Atomic uint64_t commits;
	_Atomic uint64_t syncs;
	_Atomic uint64_t lazy_batches;
	_Atomic uint64_t lazy_commits;
	_Atomic uint64_t commit_failures;
	_Atomic uint64_t ops;
	_Atomic uint64_t batches;
	_Atomic uint64_t last_commit_us;
	_Atomic uint64_t last_batch_ops;
	_Atomic uint64_t last_group_batches;
	_Atomic int last_rc;               /* of the last write txn (0: it committed) */
	_Atomic uint64_t failing_since_ms; /* wall clock of the first failure in a row */
};

enum store_op_kind { STORE_OP_PUT, STORE_OP_DEL, STORE_OP_ADD };

struct store_op {
	enum store_op_kind kind;
	MDB_dbi dbi;
	size_t koff, klen; /* offsets into the batch arena */
	size_t voff, vlen;
};

struct store_batch {
	struct store_op *ops;
	size_t nops, cap_ops;
	unsigned char *arena;
	size_t used, cap;
	/* set by store_committer_submit */
	store_done_fn done;
	void *arg;
	enum cr_err result;
	bool lazy;
	uint64_t deadline_us; /* lazy: commit alone after this (monotonic) */
	struct store_batch *next;
};

struct store_committer {
	struct store *st;
	unsigned max_batch;
	unsigned max_delay_us;
	pthread_t thread;
	pthread_mutex_t mu;
	pthread_cond_t cv; /* writer waits here for work */
	struct store_batch *head, *tail;
	size_t pending_ops;
	size_t pending_durable;  /* ordinary (not lazy) batches in the FIFO */
	uint64_t lazy_deadline;  /* earliest deadline of a pending lazy batch */
	bool stopping;
};

struct store_iter {
	MDB_txn *txn;
	MDB_cursor *cur;
	unsigned char *prefix;
	size_t plen;
	unsigned char *start;
	size_t slen;
	bool started;
	enum cr_err err;
};

static enum cr_err
err_from_mdb(int rc)
{
	switch (rc) {
	case MDB_SUCCESS:
		return CR_OK;
	case MDB_NOTFOUND:
		return CR_ERR_NOT_FOUND;
	case MDB_KEYEXIST:
		return CR_ERR_EXISTS;
	case MDB_MAP_FULL:
	case MDB_DBS_FULL:
	case MDB_READERS_FULL:
		return CR_ERR_FULL;
	case MDB_TXN_FULL:
	case MDB_BAD_VALSIZE:
		return CR_ERR_TOO_BIG;
	case MDB_BAD_DBI:
	case EINVAL:
	case EACCES:
		return CR_ERR_INVALID;
	case ENOMEM:
		return CR_ERR_NOMEM;
	default:
		return CR_ERR_IO;
	}
}

/* when this thread's last commit returned (store_committed_at_us) */
static _Thread_local uint64_t committed_at_us;

static uint64_t
store_wall_us(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_REALTIME, &ts);
	return (uint64_t)ts.tv_sec * 1000000 + (uint64_t)ts.tv_nsec / 1000;
}

static uint64_t
store_wall_ms(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_REALTIME, &ts);
	return (uint64_t)ts.tv_sec * 1000 + (uint64_t)ts.tv_nsec / 1000000;
}

static uint64_t
store_mono_us(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000000u + (uint64_t)ts.tv_nsec / 1000u;
}

/* mkdir -p; the path is copied so components can be cut in place */
static enum cr_err
mkdir_p(const char *dir)
{
	enum cr_err err = CR_OK;
	char *p, *path = strdup(dir);

	if (path == NULL)
		return CR_ERR_NOMEM;
	for (p = path + 1; ; p++) {
		if (*p != '/' && *p != '\0')
			continue;
		char c = *p;
		*p = '\0';
		if (mkdir(path, 0750) != 0 && errno != EEXIST) {
			err = errno == EACCES ? CR_ERR_INVALID : CR_ERR_IO;
			goto out;
		}
		*p = c;
		if (c == '\0')
			break;
	}
out:
	free(path);
	return err;
}

/* store_open - open (creating dir, mkdir -p) an LMDB environment; *out is
 * freed with store_close */
enum cr_err
store_open(const char *dir, size_t map_size_bytes, unsigned max_dbs,
    int flags, struct store **out)
{
	struct store *st = NULL;
	unsigned envflags = MDB_NOTLS;
	enum cr_err err;
	int rc;

	*out = NULL;
	if (dir == NULL || *dir == '\0')
		return CR_ERR_INVALID;
	if (!(flags & STORE_RDONLY) && (err = mkdir_p(dir)) != CR_OK)
		return err;
	if ((st = calloc(1, sizeof(*st))) == NULL)
		return CR_ERR_NOMEM;
	st->flags = flags;
	if ((rc = mdb_env_create(&st->env)) != 0)
		goto fail;
	/* LMDB's default map is 10 MiB: always set it */
	rc = mdb_env_set_mapsize(st->env,
	    map_size_bytes ? map_size_bytes : STORE_DEFAULT_MAP_SIZE);
	if (rc != 0)
		goto fail;
	if ((rc = mdb_env_set_maxdbs(st->env,
	    max_dbs ? max_dbs : STORE_DEFAULT_MAX_DBS)) != 0)
		goto fail;
	if ((rc = mdb_env_set_maxreaders(st->env, STORE_MAX_READERS)) != 0)
		goto fail;
	if (flags & STORE_NOSYNC)
		envflags |= MDB_NOSYNC;
	if (flags & STORE_RDONLY)
		envflags |= MDB_RDONLY;
	if ((rc = mdb_env_open(st->env, dir, envflags, 0640)) != 0)
		goto fail;
	*out = st;
	return CR_OK;
fail:
	store_close(st);
	return err_from_mdb(rc);
}

/* store_close - close the environment; NULL does nothing */
void
store_close(struct store *st)
{
	if (st == NULL)
		return;
	if (st->env != NULL)
		mdb_env_close(st->env);
	free(st);
}

/* store_db - open (creating) the named database; handle valid until close */
enum cr_err
store_db(struct store *st, const char *name, unsigned *dbi_out)
{
	bool rdonly = (st->flags & STORE_RDONLY) != 0;
	MDB_txn *txn = NULL;
	MDB_dbi dbi;
	int rc;

	if ((rc = mdb_txn_begin(st->env, NULL, rdonly ? MDB_RDONLY : 0,
	    &txn)) != 0)
		return err_from_mdb(rc);
	if ((rc = mdb_dbi_open(txn, name, rdonly ? 0 : MDB_CREATE, &dbi)) != 0) {
		mdb_txn_abort(txn);
		return err_from_mdb(rc);
	}
	if ((rc = mdb_txn_commit(txn)) != 0)
		return err_from_mdb(rc);
	*dbi_out = dbi;
	return CR_OK;
}

static struct metric_slot m_commit, m_commit_ops;
static const double ops_bounds[] = { 1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000, 10000 };

static void
count_commit(struct store *st, uint64_t t0, size_t nops, size_t nbatches,
    int rc)
{
	if (rc == 0) {
		metric_observe_us(metric_histogram_at(&m_commit, "clawrelay_store_commit_seconds", NULL,
		    "LMDB write txns: time to commit (and sync)", NULL, 0), store_mono_us() - t0);
		metric_observe(metric_histogram_at(&m_commit_ops, "clawrelay_store_commit_ops", NULL,
		    "LMDB write txns: operations (puts, deletes) per commit", ops_bounds,
		    (int)(sizeof(ops_bounds) / sizeof(ops_bounds[0]))), (double)nops);
	}
	if (rc != 0) {
		atomic_fetch_add_explicit(&st->commit_failures, 1,
		    memory_order_relaxed);
		if (atomic_exchange(&st->last_rc, rc) == 0)
			atomic_store(&st->failing_since_ms, store_wall_ms());
		return;
	}
	atomic_store(&st->last_rc, 0);
	atomic_fetch_add_explicit(&st->commits, 1, memory_order_relaxed);
	/* LMDB skips the sync of a txn that changed nothing */
	if (nops > 0 && !(st->flags & STORE_NOSYNC))
		atomic_fetch_add_explicit(&st->syncs, 1, memory_order_relaxed);
	atomic_fetch_add_explicit(&st->ops, nops, memory_order_relaxed);
	atomic_store_explicit(&st->last_commit_us, store_mono_us() - t0,
	    memory_order_relaxed);
	atomic_store_explicit(&st->last_batch_ops, nops, memory_order_relaxed);
	if (nbatches > 0)
		atomic_store_explicit(&st->last_group_batches, nbatches,
		    memory_order_relaxed);
}

static bool
key_ok(size_t klen)
{
	return klen > 0 && klen <= STORE_KEY_MAX;
}

/* store_put - insert or replace key in its own txn; copies both */
enum cr_err
store_put(struct store *st, unsigned dbi, const void *key, size_t klen,
    const void *val, size_t vlen)
{
	MDB_val k = { klen, (void *)(uintptr_t)key };
	MDB_val v = { vlen, (void *)(uintptr_t)val };
	MDB_txn *txn;
	uint64_t t0 = store_mono_us();
	int rc;

	if (!key_ok(klen))
		return klen == 0 ? CR_ERR_INVALID : CR_ERR_TOO_BIG;
	if ((rc = mdb_txn_begin(st->env, NULL, 0, &txn)) != 0)
		goto out;
	if ((rc = mdb_put(txn, dbi, &k, &v, 0)) != 0) {
		mdb_txn_abort(txn);
		goto out;
	}
	rc = mdb_txn_commit(txn);
out:
	count_commit(st, t0, 1, 0, rc);
	return err_from_mdb(rc);
}

/* store_get - look key up; caller frees *val with free() */
enum cr_err
store_get(struct store *st, unsigned dbi, const void *key, size_t klen,
    void **val, size_t *vlen)
{
	MDB_val k = { klen, (void *)(uintptr_t)key };
	MDB_val v;
	MDB_txn *txn;
	enum cr_err err = CR_OK;
	int rc;

	*val = NULL;
	*vlen = 0;
	if (!key_ok(klen))
		return klen == 0 ? CR_ERR_INVALID : CR_ERR_TOO_BIG;
	if ((rc = mdb_txn_begin(st->env, NULL, MDB_RDONLY, &txn)) != 0)
		return err_from_mdb(rc);
	if ((rc = mdb_get(txn, dbi, &k, &v)) != 0) {
		err = err_from_mdb(rc);
		goto out;
	}
	/* malloc(0) may return NULL: always hand back a real pointer */
	if ((*val = malloc(v.mv_size ? v.mv_size : 1)) == NULL) {
		err = CR_ERR_NOMEM;
		goto out;
	}
	if (v.mv_size > 0)
		memcpy(*val, v.mv_data, v.mv_size);
	*vlen = v.mv_size;
out:
	mdb_txn_abort(txn);
	return err;
}

/* store_del - delete key in its own txn; CR_ERR_NOT_FOUND when absent */
enum cr_err
store_del(struct store *st, unsigned dbi, const void *key, size_t klen)
{
	MDB_val k = { klen, (void *)(uintptr_t)key };
	MDB_txn *txn;
	uint64_t t0 = store_mono_us();
	int rc;

	if (!key_ok(klen))
		return klen == 0 ? CR_ERR_INVALID : CR_ERR_TOO_BIG;
	if ((rc = mdb_txn_begin(st->env, NULL, 0, &txn)) != 0)
		goto out;
	if ((rc = mdb_del(txn, dbi, &k, NULL)) != 0) {
		mdb_txn_abort(txn);
		/* a miss is the caller's answer, not a failed commit */
		if (rc == MDB_NOTFOUND)
			return CR_ERR_NOT_FOUND;
		goto out;
	}
	rc = mdb_txn_commit(txn);
out:
	count_commit(st, t0, 1, 0, rc);
	return err_from_mdb(rc);
}

/* store_count - number of entries in the database */
enum cr_err
store_count(struct store *st, unsigned dbi, size_t *out)
{
	MDB_txn *txn;
	MDB_stat ms;
	int rc;

	*out = 0;
	if ((rc = mdb_txn_begin(st->env, NULL, MDB_RDONLY, &txn)) != 0)
		return err_from_mdb(rc);
	rc = mdb_stat(txn, dbi, &ms);
	mdb_txn_abort(txn);
	if (rc != 0)
		return err_from_mdb(rc);
	*out = ms.ms_entries;
	return CR_OK;
}

/* store_get_count - key's value (a copy the caller frees; NULL/0 when
 * absent) and count_dbi's number of entries, from one read snapshot */
enum cr_err
store_get_count(struct store *st, unsigned dbi, const void *key, size_t klen, void **val,
    size_t *vlen, unsigned count_dbi, uint64_t *count)
{
	MDB_txn *txn;
	MDB_stat ms;
	MDB_val k = { klen, (void *)(uintptr_t)key }, v;
	int rc;

	*val = NULL;
	*vlen = 0;
	*count = 0;
	if ((rc = mdb_txn_begin(st->env, NULL, MDB_RDONLY, &txn)) != 0)
		return err_from_mdb(rc);
	if ((rc = mdb_stat(txn, count_dbi, &ms)) != 0)
		goto out;
	*count = ms.ms_entries;
	rc = mdb_get(txn, dbi, &k, &v);
	if (rc == MDB_NOTFOUND) {
		rc = 0;
		goto out;
	}
	if (rc != 0)
		goto out;
	if ((*val = malloc(v.mv_size ? v.mv_size : 1)) == NULL) {
		rc = ENOMEM;
		goto out;
	}
	memcpy(*val, v.mv_data, v.mv_size);
	*vlen = v.mv_size;
out:
	mdb_txn_abort(txn);
	return err_from_mdb(rc);
}

/* store_bytes - bytes of the pages the named DBs hold (and the main DB),
 * and the map size; what the data takes, unlike the file's high-water mark */
enum cr_err
store_bytes(struct store *st, const unsigned *dbis, size_t n, uint64_t *used, uint64_t *map)
{
	MDB_txn *txn;
	MDB_stat ms;
	MDB_envinfo ei;
	int rc;

	*used = 0;
	*map = 0;
	if ((rc = mdb_txn_begin(st->env, NULL, MDB_RDONLY, &txn)) != 0)
		return err_from_mdb(rc);
	for (size_t i = 0; i <= n && rc == 0; i++) {
		/* the main DB (dbi 1 in LMDB: the table of named DBs) last */
		if ((rc = mdb_stat(txn, i < n ? dbis[i] : 1, &ms)) == 0)
			*used += (uint64_t)ms.ms_psize * (ms.ms_branch_pages + ms.ms_leaf_pages +
			    ms.ms_overflow_pages);
	}
	mdb_txn_abort(txn);
	if (rc == 0 && (rc = mdb_env_info(st->env, &ei)) == 0)
		*map = ei.me_mapsize;
	return err_from_mdb(rc);
}

/* store_stats - snapshot of the store's counters; any thread */
void
store_stats(const struct store *st, struct store_stats *out)
{
	/* atomic_load needs a non-const object in C11 as GCC declares it */
	struct store *s = (struct store *)(uintptr_t)st;

	out->commits = atomic_load_explicit(&s->commits, memory_order_relaxed);
	out->syncs = atomic_load_explicit(&s->syncs, memory_order_relaxed);
	out->lazy_batches = atomic_load_explicit(&s->lazy_batches,
	    memory_order_relaxed);
	out->lazy_commits = atomic_load_explicit(&s->lazy_commits,
	    memory_order_relaxed);
	out->commit_failures = atomic_load_explicit(&s->commit_failures,
	    memory_order_relaxed);
	out->ops = atomic_load_explicit(&s->ops, memory_order_relaxed);
	out->batches = atomic_load_explicit(&s->batches, memory_order_relaxed);
	out->last_commit_us = atomic_load_explicit(&s->last_commit_us,
	    memory_order_relaxed);
	out->last_batch_ops = atomic_load_explicit(&s->last_batch_ops,
	    memory_order_relaxed);
	out->last_group_batches = atomic_load_explicit(&s->last_group_batches,
	    memory_order_relaxed);
	out->last_rc = atomic_load(&s->last_rc);
	out->failing_since_ms = out->last_rc != 0 ? atomic_load(&s->failing_since_ms) : 0;
}

/* store_rc_text - what a store_stats.last_rc means (LMDB's or the OS's
 * text, static) */
const char *
store_rc_text(int rc)
{
	return mdb_strerror(rc);
}

/* --- batches --- */

/* store_batch_new - an empty batch; free with store_batch_free */
struct store_batch *
store_batch_new(void)
{
	return calloc(1, sizeof(struct store_batch));
}

/* store_batch_free - free a batch; NULL does nothing */
void
store_batch_free(struct store_batch *b)
{
	if (b == NULL)
		return;
	free(b->ops);
	free(b->arena);
	free(b);
}

/* grow arrays so one more op with n arena bytes fits */
static enum cr_err
batch_reserve(struct store_batch *b, size_t n)
{
	if (b->nops == b->cap_ops) {
		size_t cap = b->cap_ops ? b->cap_ops * 2 : 8;
		struct store_op *ops = realloc(b->ops, cap * sizeof(*ops));
		if (ops == NULL)
			return CR_ERR_NOMEM;
		b->ops = ops;
		b->cap_ops = cap;
	}
	if (n > SIZE_MAX / 2 - b->used)
		return CR_ERR_TOO_BIG;
	if (b->used + n > b->cap) {
		size_t cap = b->cap ? b->cap : 256;
		while (cap < b->used + n)
			cap *= 2;
		unsigned char *a = realloc(b->arena, cap);
		if (a == NULL)
			return CR_ERR_NOMEM;
		b->arena = a;
		b->cap = cap;
	}
	return CR_OK;
}

static enum cr_err
batch_add(struct store_batch *b, enum store_op_kind kind, unsigned dbi,
    const void *key, size_t klen, const void *val, size_t vlen)
{
	struct store_op *op;
	enum cr_err err;

	if (b == NULL || key == NULL || (vlen > 0 && val == NULL))
		return CR_ERR_INVALID;
	if (!key_ok(klen))
		return klen == 0 ? CR_ERR_INVALID : CR_ERR_TOO_BIG;
	if ((err = batch_reserve(b, klen + vlen)) != CR_OK)
		return err;
	op = &b->ops[b->nops++];
	op->kind = kind;
	op->dbi = dbi;
	op->koff = b->used;
	op->klen = klen;
	memcpy(b->arena + b->used, key, klen);
	b->used += klen;
	op->voff = b->used;
	op->vlen = vlen;
	if (vlen > 0)
		memcpy(b->arena + b->used, val, vlen);
	b->used += vlen;
	return CR_OK;
}

/* store_batch_put - add a put; copies key and val */
enum cr_err
store_batch_put(struct store_batch *b, unsigned dbi, const void *key,
    size_t klen, const void *val, size_t vlen)
{
	return batch_add(b, STORE_OP_PUT, dbi, key, klen, val, vlen);
}

/* store_batch_del - add a delete; copies key */
enum cr_err
store_batch_del(struct store_batch *b, unsigned dbi, const void *key,
    size_t klen)
{
	return batch_add(b, STORE_OP_DEL, dbi, key, klen, NULL, 0);
}

/* store_batch_add_u64 - add delta to counter idx (< STORE_COUNTERS_MAX) of
 * key's value, an array of be64 counters (missing ones read as 0), when the
 * batch is applied: inside its txn, so the counters move exactly with what
 * the same commit does, and not at all if it fails */
enum cr_err
store_batch_add_u64(struct store_batch *b, unsigned dbi, const void *key, size_t klen,
    unsigned idx, uint64_t delta)
{
	unsigned char v[12];

	if (idx >= STORE_COUNTERS_MAX)
		return CR_ERR_INVALID;
	for (int i = 0; i < 4; i++)
		v[i] = (unsigned char)(idx >> (24 - 8 * i));
	for (int i = 0; i < 8; i++)
		v[4 + i] = (unsigned char)(delta >> (56 - 8 * i));
	return batch_add(b, STORE_OP_ADD, dbi, key, klen, v, sizeof(v));
}

/* apply a STORE_OP_ADD (its value: idx be32, delta be64) inside txn */
static int
counter_add(MDB_txn *txn, unsigned dbi, MDB_val *k, const unsigned char *op)
{
	unsigned char buf[STORE_COUNTERS_MAX * 8];
	unsigned idx = 0;
	uint64_t delta = 0, cur = 0;
	size_t n = 0;
	MDB_val v;
	int rc;

	for (int i = 0; i < 4; i++)
		idx = (idx << 8) | op[i];
	for (int i = 0; i < 8; i++)
		delta = (delta << 8) | op[4 + i];
	memset(buf, 0, sizeof(buf));
	rc = mdb_get(txn, dbi, k, &v);
	if (rc == 0) {
		n = v.mv_size > sizeof(buf) ? sizeof(buf) : v.mv_size - v.mv_size % 8;
		memcpy(buf, v.mv_data, n);
	} else if (rc != MDB_NOTFOUND) {
		return rc;
	}
	if (n < (size_t)(idx + 1) * 8)
		n = (size_t)(idx + 1) * 8;
	for (int i = 0; i < 8; i++)
		cur = (cur << 8) | buf[idx * 8 + i];
	cur += delta;
	for (int i = 7; i >= 0; i--) {
		buf[idx * 8 + i] = (unsigned char)(cur & 0xff);
		cur >>= 8;
	}
	v.mv_size = n;
	v.mv_data = buf;
	return mdb_put(txn, dbi, k, &v, 0);
}

/* store_batch_len - number of ops in the batch */
size_t
store_batch_len(const struct store_batch *b)
{
	return b ? b->nops : 0;
}

/* apply every op of b inside txn; returns an MDB code */
static int
batch_apply(MDB_txn *txn, const struct store_batch *b)
{
	size_t i;
	int rc;

	for (i = 0; i < b->nops; i++) {
		const struct store_op *op = &b->ops[i];
		MDB_val k = { op->klen, b->arena + op->koff };

		if (op->kind == STORE_OP_PUT) {
			MDB_val v = { op->vlen, b->arena + op->voff };
			rc = mdb_put(txn, op->dbi, &k, &v, 0);
		} else if (op->kind == STORE_OP_ADD) {
			rc = counter_add(txn, op->dbi, &k, b->arena + op->voff);
		} else {
			rc = mdb_del(txn, op->dbi, &k, NULL);
			if (rc == MDB_NOTFOUND)
				rc = 0;
		}
		if (rc != 0)
			return rc;
	}
	return 0;
}

/* apply a chain of batches (linked by next, n of them) in one txn */
static int
commit_chain(struct store *st, struct store_batch *first, size_t n)
{
	struct store_batch *b;
	MDB_txn *txn;
	uint64_t t0 = store_mono_us();
	size_t i, nops = 0;
	int rc;

	if ((rc = mdb_txn_begin(st->env, NULL, 0, &txn)) != 0)
		goto out;
	for (b = first, i = 0; i < n; b = b->next, i++) {
		if ((rc = batch_apply(txn, b)) != 0) {
			mdb_txn_abort(txn);
			goto out;
		}
		nops += b->nops;
	}
	rc = mdb_txn_commit(txn);
	if (rc == 0)
		committed_at_us = store_wall_us();
out:
	count_commit(st, t0, nops, n, rc);
	return rc;
}

/* store_committed_at_us - in a done callback (or after store_batch_commit
 * on the same thread): the wall clock, in us, when the commit returned */
uint64_t
store_committed_at_us(void)
{
	return committed_at_us;
}

/* store_batch_commit - apply every op in one write txn, all or nothing */
enum cr_err
store_batch_commit(struct store *st, const struct store_batch *b)
{
	struct store_batch one;

	if (st == NULL || b == NULL)
		return CR_ERR_INVALID;
	one = *b;
	one.next = NULL;
	return err_from_mdb(commit_chain(st, &one, 1));
}

/* --- group committer --- */

/* commit one detached group, retrying alone on failure, then call back */
static void
committer_run_group(struct store_committer *c, struct store_batch *group,
    size_t n)
{
	struct store_batch *b, *next;
	enum cr_err err;
	int rc;

	rc = commit_chain(c->st, group, n);
	if (rc == 0 || n == 1) {
		err = err_from_mdb(rc);
		for (b = group; b != NULL; b = b->next)
			b->result = err;
	} else {
		/* one oversized or bad batch must not fail its neighbours */
		for (b = group; b != NULL; b = b->next)
			b->result = err_from_mdb(commit_chain(c->st, b, 1));
	}
	for (b = group; b != NULL; b = next) {
		next = b->next;
		if (b->result == CR_OK) {
			atomic_fetch_add_explicit(&c->st->batches, 1,
			    memory_order_relaxed);
			if (b->lazy)
				atomic_fetch_add_explicit(&c->st->lazy_batches,
				    1, memory_order_relaxed);
		}
		b->done(b->arg, b->result);
		store_batch_free(b);
	}
}

static void
deadline_ts(struct timespec *ts, uint64_t us)
{
	ts->tv_sec = (time_t)(us / 1000000u);
	ts->tv_nsec = (long)(us % 1000000u) * 1000;
}

/* under mu: the earliest deadline among the pending lazy batches */
static uint64_t
lazy_deadline_scan(const struct store_committer *c)
{
	uint64_t d = UINT64_MAX;

	for (const struct store_batch *b = c->head; b != NULL; b = b->next)
		if (b->lazy && b->deadline_us < d)
			d = b->deadline_us;
	return d;
}

static void *
committer_main(void *arg)
{
	struct store_committer *c = arg;
	struct store_batch *group, *last;
	size_t n, ops, durable;

	pthread_mutex_lock(&c->mu);
	for (;;) {
		/* work: an ordinary batch, a lazy one past its deadline, a
		 * full FIFO, or stopping (which drains everything) */
		while (!c->stopping && c->pending_durable == 0 &&
		    c->pending_ops < c->max_batch) {
			if (c->head == NULL) {
				pthread_cond_wait(&c->cv, &c->mu);
			} else {
				struct timespec dl;

				if (store_mono_us() >= c->lazy_deadline)
					break;
				deadline_ts(&dl, c->lazy_deadline);
				pthread_cond_timedwait(&c->cv, &c->mu, &dl);
			}
		}
		if (c->head == NULL)
			break; /* stopping and drained */
		if (c->max_delay_us > 0 && !c->stopping &&
		    c->pending_durable > 0 &&
		    c->pending_ops < c->max_batch) {
			struct timespec dl;
			uint64_t ns;

			clock_gettime(CLOCK_MONOTONIC, &dl);
			ns = (uint64_t)dl.tv_nsec +
			    (uint64_t)c->max_delay_us * 1000u;
			dl.tv_sec += (time_t)(ns / 1000000000u);
			dl.tv_nsec = (long)(ns % 1000000000u);
			while (!c->stopping && c->pending_ops < c->max_batch &&
			    pthread_cond_timedwait(&c->cv, &c->mu, &dl) == 0)
				;
		}
		/* detach up to max_batch ops; a bigger batch goes alone */
		group = last = c->head;
		ops = group->nops;
		durable = !group->lazy;
		n = 1;
		while (last->next != NULL &&
		    ops + last->next->nops <= c->max_batch) {
			last = last->next;
			ops += last->nops;
			durable += !last->lazy;
			n++;
		}
		c->head = last->next;
		if (c->head == NULL)
			c->tail = NULL;
		last->next = NULL;
		c->pending_ops -= ops;
		c->pending_durable -= durable;
		if (durable == 0)
			atomic_fetch_add_explicit(&c->st->lazy_commits, 1,
			    memory_order_relaxed);
		c->lazy_deadline = lazy_deadline_scan(c);
		pthread_mutex_unlock(&c->mu);

		committer_run_group(c, group, n);

		pthread_mutex_lock(&c->mu);
	}
	pthread_mutex_unlock(&c->mu);
	return NULL;
}

/* store_committer_new - start a group-commit writer thread; free with
 * store_committer_free. NULL on failure. */
struct store_committer *
store_committer_new(struct store *st, unsigned max_batch,
    unsigned max_delay_us)
{
	struct store_committer *c;
	pthread_condattr_t ca;
	bool mu_ok = false, cv_ok = false;

	if (st == NULL || (st->flags & STORE_RDONLY))
		return NULL;
	if ((c = calloc(1, sizeof(*c))) == NULL)
		return NULL;
	c->st = st;
	c->max_batch = max_batch ? max_batch : 1;
	c->max_delay_us = max_delay_us;
	c->lazy_deadline = UINT64_MAX;
	if (pthread_mutex_init(&c->mu, NULL) != 0)
		goto fail;
	mu_ok = true;
	if (pthread_condattr_init(&ca) != 0)
		goto fail;
	/* the fill-up wait is a timeout: measure it on the monotonic clock */
	pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
	cv_ok = pthread_cond_init(&c->cv, &ca) == 0;
	pthread_condattr_destroy(&ca);
	if (!cv_ok)
		goto fail;
	if (pthread_create(&c->thread, NULL, committer_main, c) != 0)
		goto fail;
	return c;
fail:
	if (cv_ok)
		pthread_cond_destroy(&c->cv);
	if (mu_ok)
		pthread_mutex_destroy(&c->mu);
	free(c);
	return NULL;
}

/* store_committer_free - drain submitted work, stop and join; NULL ok */
void
store_committer_free(struct store_committer *c)
{
	if (c == NULL)
		return;
	pthread_mutex_lock(&c->mu);
	c->stopping = true;
	pthread_cond_signal(&c->cv);
	pthread_mutex_unlock(&c->mu);
	pthread_join(c->thread, NULL);
	pthread_cond_destroy(&c->cv);
	pthread_mutex_destroy(&c->mu);
	free(c);
}

static enum cr_err
committer_enqueue(struct store_committer *c, struct store_batch *b,
    store_done_fn done, void *arg, bool lazy, unsigned max_wait_us)
{
	bool wake;

	if (c == NULL || b == NULL || done == NULL) {
		store_batch_free(b);
		return CR_ERR_INVALID;
	}
	b->done = done;
	b->arg = arg;
	b->next = NULL;
	b->lazy = lazy;
	b->deadline_us = lazy ? store_mono_us() + max_wait_us : 0;
	pthread_mutex_lock(&c->mu);
	if (c->stopping) {
		pthread_mutex_unlock(&c->mu);
		store_batch_free(b);
		return CR_ERR_UNAVAILABLE;
	}
	/* the writer sleeps while it has no ordinary batch (untimed on an
	 * empty FIFO, else until the earliest lazy deadline), or while it
	 * fills a group: wake it when that changes */
	wake = c->pending_ops < c->max_batch &&
	    c->pending_ops + b->nops >= c->max_batch;
	if (lazy) {
		wake = wake || c->head == NULL ||
		    b->deadline_us < c->lazy_deadline;
		if (b->deadline_us < c->lazy_deadline)
			c->lazy_deadline = b->deadline_us;
	} else {
		wake = wake || c->pending_durable == 0;
		c->pending_durable++;
	}
	if (c->tail != NULL)
		c->tail->next = b;
	else
		c->head = b;
	c->tail = b;
	c->pending_ops += b->nops;
	if (wake)
		pthread_cond_signal(&c->cv);
	pthread_mutex_unlock(&c->mu);
	return CR_OK;
}

/* store_committer_submit - queue b (takes ownership); done is called once */
enum cr_err
store_committer_submit(struct store_committer *c, struct store_batch *b,
    store_done_fn done, void *arg)
{
	return committer_enqueue(c, b, done, arg, false, 0);
}

/* store_committer_submit_lazy - queue b (takes ownership) to ride with the
 * next ordinary group, or alone after max_wait_us; done is called once */
enum cr_err
store_committer_submit_lazy(struct store_committer *c, struct store_batch *b,
    store_done_fn done, void *arg, unsigned max_wait_us)
{
	return committer_enqueue(c, b, done, arg, true, max_wait_us);
}

struct store_waiter {
	pthread_mutex_t mu;
	pthread_cond_t cv;
	bool done;
	enum cr_err result;
};

static void
waiter_done(void *arg, enum cr_err result)
{
	struct store_waiter *w = arg;

	pthread_mutex_lock(&w->mu);
	w->result = result;
	w->done = true;
	pthread_cond_signal(&w->cv);
	pthread_mutex_unlock(&w->mu);
}

/* store_committer_submit_wait - submit b (takes ownership), wait for result */
enum cr_err
store_committer_submit_wait(struct store_committer *c, struct store_batch *b)
{
	struct store_waiter w = { .done = false, .result = CR_OK };
	enum cr_err err;

	pthread_mutex_init(&w.mu, NULL);
	pthread_cond_init(&w.cv, NULL);
	if ((err = store_committer_submit(c, b, waiter_done, &w)) != CR_OK)
		goto out;
	pthread_mutex_lock(&w.mu);
	while (!w.done)
		pthread_cond_wait(&w.cv, &w.mu);
	err = w.result;
	pthread_mutex_unlock(&w.mu);
out:
	pthread_cond_destroy(&w.cv);
	pthread_mutex_destroy(&w.mu);
	return err;
}

/* --- iteration --- */

/* store_iter_new_at - iterate keys with prefix, from the first key >= start;
 * free with store_iter_free */
enum cr_err
store_iter_new_at(struct store *st, unsigned dbi, const void *prefix,
    size_t plen, const void *start, size_t slen, struct store_iter **out)
{
	struct store_iter *it;
	enum cr_err err;
	int rc;

	*out = NULL;
	if ((plen > 0 && prefix == NULL) || (slen > 0 && start == NULL) ||
	    plen > STORE_KEY_MAX || slen > STORE_KEY_MAX)
		return CR_ERR_INVALID;
	if ((it = calloc(1, sizeof(*it))) == NULL)
		return CR_ERR_NOMEM;
	/* +1: malloc(0) may return NULL */
	if ((it->prefix = malloc(plen + 1)) == NULL ||
	    (it->start = malloc(slen + 1)) == NULL) {
		err = CR_ERR_NOMEM;
		goto fail;
	}
	if (plen > 0)
		memcpy(it->prefix, prefix, plen);
	if (slen > 0)
		memcpy(it->start, start, slen);
	it->plen = plen;
	it->slen = slen;
	if ((rc = mdb_txn_begin(st->env, NULL, MDB_RDONLY, &it->txn)) != 0 ||
	    (rc = mdb_cursor_open(it->txn, dbi, &it->cur)) != 0) {
		err = err_from_mdb(rc);
		goto fail;
	}
	*out = it;
	return CR_OK;
fail:
	store_iter_free(it);
	return err;
}

/* store_iter_new - iterate keys with prefix in key order; free with
 * store_iter_free */
enum cr_err
store_iter_new(struct store *st, unsigned dbi, const void *prefix,
    size_t plen, struct store_iter **out)
{
	return store_iter_new_at(st, dbi, prefix, plen, NULL, 0, out);
}

/* store_iter_next - 1 and the next entry (borrowed until the next call),
 * 0 at the end of the prefix, -1 on error */
int
store_iter_next(struct store_iter *it, const void **k, size_t *kl,
    const void **v, size_t *vl)
{
	MDB_val key, val;
	int rc;

	if (it->err != CR_OK)
		return -1;
	if (!it->started) {
		it->started = true;
		/* start at max(prefix, start): both lower bounds hold */
		const unsigned char *from = it->prefix;
		size_t flen = it->plen;
		if (it->slen > 0) {
			size_t m = it->slen < it->plen ? it->slen : it->plen;
			int cmp = memcmp(it->start, it->prefix, m);
			if (cmp > 0 || (cmp == 0 && it->slen > it->plen)) {
				from = it->start;
				flen = it->slen;
			}
		}
		if (flen == 0) {
			rc = mdb_cursor_get(it->cur, &key, &val, MDB_FIRST);
		} else {
			key.mv_size = flen;
			key.mv_data = (void *)(uintptr_t)from;
			rc = mdb_cursor_get(it->cur, &key, &val,
			    MDB_SET_RANGE);
		}
	} else {
		rc = mdb_cursor_get(it->cur, &key, &val, MDB_NEXT);
	}
	if (rc == MDB_NOTFOUND)
		return 0;
	if (rc != 0) {
		it->err = err_from_mdb(rc);
		return -1;
	}
	if (key.mv_size < it->plen ||
	    memcmp(key.mv_data, it->prefix, it->plen) != 0)
		return 0;
	*k = key.mv_data;
	*kl = key.mv_size;
	*v = val.mv_data;
	*vl = val.mv_size;
	return 1;
}

/* store_iter_err - the error behind a -1 from store_iter_next, or CR_OK */
enum cr_err
store_iter_err(const struct store_iter *it)
{
	return it->err;
}

/* store_iter_free - end the read snapshot and free; NULL does nothing */
void
store_iter_free(struct store_iter *it)
{
	if (it == NULL)
		return;
	if (it->cur != NULL)
		mdb_cursor_close(it->cur);
	if (it->txn != NULL)
		mdb_txn_abort(it->txn);
	free(it->prefix);
	free(it->start);
	free(it);
}
