/*
 * test_store.c - Check suite for common/store.c (LMDB store, group commit).
 *
 * Each test makes its own directory under $TMPDIR (default /tmp) and removes
 * it. Threads: the committer tests start their own submitter threads; the
 * callbacks run on the committer's thread and only touch atomics.
 */
#include <check.h>
#include <errno.h>
#include <ftw.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "store.h"

static char tmpdir[256];

static int
rm_one(const char *path, const struct stat *sb, int flag, struct FTW *ftw)
{
	return remove(path);
}

static void
dir_setup(void)
{
	const char *base = getenv("TMPDIR");

	snprintf(tmpdir, sizeof(tmpdir), "%s/test_store.XXXXXX",
	    base ? base : "/tmp");
	ck_assert_ptr_nonnull(mkdtemp(tmpdir));
}

static void
dir_teardown(void)
{
	nftw(tmpdir, rm_one, 16, FTW_DEPTH | FTW_PHYS);
}

/* a subdirectory that does not exist yet: store_open must mkdir -p it */
static const char *
subdir(const char *name)
{
	static char path[512];

	snprintf(path, sizeof(path), "%s/%s/db", tmpdir, name);
	return path;
}

static double
now_s(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

/* queue key "<agent>\0<lane><seq be64>" as DESIGN §7's queues use */
static size_t
qkey(unsigned char *buf, const char *agent, unsigned lane, uint64_t seq)
{
	size_t n = strlen(agent), i;

	memcpy(buf, agent, n);
	buf[n++] = '\0';
	buf[n++] = (unsigned char)lane;
	for (i = 0; i < 8; i++)
		buf[n++] = (unsigned char)(seq >> (56 - 8 * i));
	return n;
}

static uint64_t
qkey_seq(const unsigned char *k, size_t kl)
{
	uint64_t s = 0;
	size_t i;

	for (i = kl - 8; i < kl; i++)
		s = s << 8 | k[i];
	return s;
}

/* --- simple ops --- */

static const struct {
	const char *key;
	size_t klen;
	const char *val;
	size_t vlen;
} kv_cases[] = {
	{ "a", 1, "1", 1 },
	{ "hello", 5, "world", 5 },
	{ "nul\0inside", 10, "v\0v", 3 },
	{ "\0", 1, "zero key byte", 13 },
	{ "empty-value", 11, "", 0 },
};
#define NKV (sizeof(kv_cases) / sizeof(kv_cases[0]))

START_TEST(test_put_get_del_count)
{
	struct store *st;
	unsigned db;
	size_t i, n, vlen;
	void *v;

	ck_assert_int_eq(store_open(subdir("simple"), 1 << 20, 4, STORE_NOSYNC,
	    &st), CR_OK);
	ck_assert_int_eq(store_db(st, "t", &db), CR_OK);
	for (i = 0; i < NKV; i++)
		ck_assert_int_eq(store_put(st, db, kv_cases[i].key,
		    kv_cases[i].klen, kv_cases[i].val, kv_cases[i].vlen), CR_OK);
	ck_assert_int_eq(store_count(st, db, &n), CR_OK);
	ck_assert_uint_eq(n, NKV);
	for (i = 0; i < NKV; i++) {
		ck_assert_int_eq(store_get(st, db, kv_cases[i].key,
		    kv_cases[i].klen, &v, &vlen), CR_OK);
		ck_assert_uint_eq(vlen, kv_cases[i].vlen);
		ck_assert_ptr_nonnull(v);
		ck_assert_int_eq(memcmp(v, kv_cases[i].val, vlen), 0);
		free(v);
	}
	/* replace keeps the count */
	ck_assert_int_eq(store_put(st, db, "a", 1, "22", 2), CR_OK);
	ck_assert_int_eq(store_get(st, db, "a", 1, &v, &vlen), CR_OK);
	ck_assert_uint_eq(vlen, 2);
	ck_assert_int_eq(memcmp(v, "22", 2), 0);
	free(v);
	ck_assert_int_eq(store_count(st, db, &n), CR_OK);
	ck_assert_uint_eq(n, NKV);
	for (i = 0; i < NKV; i++) {
		ck_assert_int_eq(store_del(st, db, kv_cases[i].key,
		    kv_cases[i].klen), CR_OK);
		ck_assert_int_eq(store_count(st, db, &n), CR_OK);
		ck_assert_uint_eq(n, NKV - i - 1);
	}
	store_close(st);
}
END_TEST

START_TEST(test_missing_and_bad_keys)
{
	static const struct {
		size_t klen;
		enum cr_err want_get; /* for a missing key of this length */
	} cases[] = {
		{ 1, CR_ERR_NOT_FOUND },
		{ 5, CR_ERR_NOT_FOUND },
		{ STORE_KEY_MAX, CR_ERR_NOT_FOUND },
		{ 0, CR_ERR_INVALID },
		{ STORE_KEY_MAX + 1, CR_ERR_TOO_BIG },
	};
	unsigned char key[STORE_KEY_MAX + 1];
	struct store *st;
	struct store_stats ss;
	unsigned db, other;
	size_t i, vlen;
	void *v;

	memset(key, 'k', sizeof(key));
	ck_assert_int_eq(store_open(subdir("missing"), 1 << 20, 4,
	    STORE_NOSYNC, &st), CR_OK);
	ck_assert_int_eq(store_db(st, "t", &db), CR_OK);
	ck_assert_int_eq(store_db(st, "other", &other), CR_OK);
	/* the same key in another database is not this one */
	ck_assert_int_eq(store_put(st, other, key, 5, "x", 1), CR_OK);
	for (i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
		v = (void *)1;
		ck_assert_int_eq(store_get(st, db, key, cases[i].klen, &v,
		    &vlen), cases[i].want_get);
		ck_assert_ptr_null(v);
		ck_assert_int_eq(store_del(st, db, key, cases[i].klen),
		    cases[i].want_get);
	}
	/* a put of a too-long key is refused, not truncated */
	ck_assert_int_eq(store_put(st, db, key, STORE_KEY_MAX + 1, "x", 1),
	    CR_ERR_TOO_BIG);
	ck_assert_int_eq(store_put(st, db, key, STORE_KEY_MAX, "x", 1), CR_OK);
	store_stats(st, &ss);
	ck_assert_uint_eq(ss.commits, 2);
	ck_assert_uint_eq(ss.commit_failures, 0);
	store_close(st);
	store_close(NULL);
}
END_TEST

/* --- batches --- */

START_TEST(test_batch_atomic)
{
	struct store_batch *b;
	struct store *st;
	unsigned q, idx;
	size_t n, vlen;
	void *v;
	char key[32];
	int i;

	ck_assert_int_eq(store_open(subdir("batch"), 1 << 20, 4, STORE_NOSYNC,
	    &st), CR_OK);
	ck_assert_int_eq(store_db(st, "queue", &q), CR_OK);
	ck_assert_int_eq(store_db(st, "index", &idx), CR_OK);
	ck_assert_int_eq(store_put(st, q, "old", 3, "x", 1), CR_OK);

	/* ops on two databases, a delete, a missing delete: one txn */
	ck_assert_ptr_nonnull(b = store_batch_new());
	for (i = 0; i < 100; i++) {
		int kl = snprintf(key, sizeof(key), "k%03d", i);
		ck_assert_int_eq(store_batch_put(b, q, key, (size_t)kl, key,
		    (size_t)kl), CR_OK);
	}
	ck_assert_int_eq(store_batch_put(b, idx, "k000", 4, "q", 1), CR_OK);
	ck_assert_int_eq(store_batch_del(b, q, "old", 3), CR_OK);
	ck_assert_int_eq(store_batch_del(b, q, "never", 5), CR_OK);
	ck_assert_int_eq(store_batch_put(b, q, "", 0, "x", 1), CR_ERR_INVALID);
	ck_assert_uint_eq(store_batch_len(b), 103);
	ck_assert_int_eq(store_batch_commit(st, b), CR_OK);
	store_batch_free(b);
	ck_assert_int_eq(store_count(st, q, &n), CR_OK);
	ck_assert_uint_eq(n, 100);
	ck_assert_int_eq(store_count(st, idx, &n), CR_OK);
	ck_assert_uint_eq(n, 1);
	ck_assert_int_eq(store_get(st, q, "old", 3, &v, &vlen),
	    CR_ERR_NOT_FOUND);

	/* a failing op late in a batch undoes the ops before it */
	ck_assert_ptr_nonnull(b = store_batch_new());
	ck_assert_int_eq(store_batch_del(b, q, "k000", 4), CR_OK);
	ck_assert_int_eq(store_batch_put(b, q, "new", 3, "y", 1), CR_OK);
	ck_assert_int_eq(store_batch_put(b, 999, "bad", 3, "z", 1), CR_OK);
	ck_assert_int_ne(store_batch_commit(st, b), CR_OK);
	store_batch_free(b);
	ck_assert_int_eq(store_count(st, q, &n), CR_OK);
	ck_assert_uint_eq(n, 100);
	ck_assert_int_eq(store_get(st, q, "k000", 4, &v, &vlen), CR_OK);
	free(v);
	ck_assert_int_eq(store_get(st, q, "new", 3, &v, &vlen),
	    CR_ERR_NOT_FOUND);
	store_batch_free(NULL);
	store_close(st);
}
END_TEST

/* --- iteration --- */

START_TEST(test_iter_order_and_prefix)
{
	/* inserted out of order; seqs chosen so little-endian or text order
	 * would sort them wrongly */
	static const struct {
		const char *agent;
		unsigned lane;
		uint64_t seq;
	} items[] = {
		{ "alice", 1, 256 }, { "alice", 0, 65536 }, { "alice", 2, 1 },
		{ "alice", 1, 1 }, { "alic", 0, 7 }, { "alice2", 0, 3 },
		{ "alice", 0, 1 }, { "alice", 1, 255 }, { "alice", 0, 256 },
		{ "bob", 0, 1 }, { "alice", 1, UINT64_C(1) << 40 },
	};
	static const struct {
		const char *agent;
		int lane;           /* -1: whole agent */
		uint64_t from;      /* 0: no start key */
		size_t want;
		uint64_t first_seq;
	} cases[] = {
		{ "alice", -1, 0, 8, 1 },
		{ "alice", 0, 0, 3, 1 },
		{ "alice", 1, 0, 4, 1 },
		{ "alice", 1, 256, 2, 256 },
		{ "alice", 1, 257, 1, UINT64_C(1) << 40 },
		{ "alice", 2, 0, 1, 1 },
		{ "alice", 3, 0, 0, 0 },
		{ "alic", -1, 0, 1, 7 },
		{ "bob", -1, 0, 1, 1 },
		{ "carol", -1, 0, 0, 0 },
		{ "zed", -1, 0, 0, 0 },
	};
	unsigned char key[64], pfx[64], start[64], prev[64];
	const void *k, *v;
	size_t kl, vl, plen, slen, prevlen, i, got, n;
	struct store_iter *it;
	struct store *st;
	unsigned db;
	int r;

	ck_assert_int_eq(store_open(subdir("iter"), 1 << 20, 4, STORE_NOSYNC,
	    &st), CR_OK);
	ck_assert_int_eq(store_db(st, "q", &db), CR_OK);
	for (i = 0; i < sizeof(items) / sizeof(items[0]); i++) {
		kl = qkey(key, items[i].agent, items[i].lane, items[i].seq);
		ck_assert_int_eq(store_put(st, db, key, kl, &items[i].seq,
		    sizeof(items[i].seq)), CR_OK);
	}
	for (i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
		/* prefix "<agent>\0" or "<agent>\0<lane>" */
		plen = strlen(cases[i].agent) + 1;
		memcpy(pfx, cases[i].agent, plen);
		if (cases[i].lane >= 0)
			pfx[plen++] = (unsigned char)cases[i].lane;
		if (cases[i].from > 0) {
			slen = qkey(start, cases[i].agent,
			    (unsigned)cases[i].lane, cases[i].from);
			ck_assert_int_eq(store_iter_new_at(st, db, pfx, plen,
			    start, slen, &it), CR_OK);
		} else {
			ck_assert_int_eq(store_iter_new(st, db, pfx, plen,
			    &it), CR_OK);
		}
		got = 0;
		prevlen = 0;
		while ((r = store_iter_next(it, &k, &kl, &v, &vl)) == 1) {
			ck_assert_uint_ge(kl, plen);
			ck_assert_int_eq(memcmp(k, pfx, plen), 0);
			ck_assert_uint_eq(vl, 8);
			uint64_t seq;
			memcpy(&seq, v, 8);
			ck_assert_uint_eq(seq, qkey_seq(k, kl));
			if (got == 0)
				ck_assert_uint_eq(seq, cases[i].first_seq);
			if (prevlen > 0) {
				/* strictly increasing (lane, seq) */
				n = prevlen < kl ? prevlen : kl;
				ck_assert_int_lt(memcmp(prev, k, n), 0);
			}
			memcpy(prev, k, kl);
			prevlen = kl;
			got++;
		}
		ck_assert_int_eq(r, 0);
		/* at the end it stays at the end */
		ck_assert_int_eq(store_iter_next(it, &k, &kl, &v, &vl), 0);
		ck_assert_int_eq(store_iter_err(it), CR_OK);
		ck_assert_msg(got == cases[i].want,
		    "case %zu (%s lane %d): got %zu want %zu", i,
		    cases[i].agent, cases[i].lane, got, cases[i].want);
		store_iter_free(it);
	}
	/* empty prefix walks everything */
	ck_assert_int_eq(store_iter_new(st, db, NULL, 0, &it), CR_OK);
	for (got = 0; store_iter_next(it, &k, &kl, &v, &vl) == 1; got++)
		;
	ck_assert_uint_eq(got, sizeof(items) / sizeof(items[0]));
	store_iter_free(it);
	store_iter_free(NULL);
	store_close(st);
}
END_TEST

/* an iterator is a snapshot: writes after it started are not seen */
START_TEST(test_iter_snapshot)
{
	const void *k, *v;
	size_t kl, vl, got;
	struct store_iter *it;
	struct store *st;
	unsigned db;

	ck_assert_int_eq(store_open(subdir("snap"), 1 << 20, 4, STORE_NOSYNC,
	    &st), CR_OK);
	ck_assert_int_eq(store_db(st, "q", &db), CR_OK);
	ck_assert_int_eq(store_put(st, db, "p1", 2, "", 0), CR_OK);
	ck_assert_int_eq(store_iter_new(st, db, "p", 1, &it), CR_OK);
	ck_assert_int_eq(store_put(st, db, "p2", 2, "", 0), CR_OK);
	for (got = 0; store_iter_next(it, &k, &kl, &v, &vl) == 1; got++)
		;
	ck_assert_uint_eq(got, 1);
	store_iter_free(it);
	store_close(st);
}
END_TEST

/* --- durability --- */

START_TEST(test_reopen_keeps_data)
{
	struct store *st;
	unsigned db;
	size_t vlen, n;
	void *v;

	ck_assert_int_eq(store_open(subdir("reopen"), 1 << 20, 4, 0, &st),
	    CR_OK);
	ck_assert_int_eq(store_db(st, "q", &db), CR_OK);
	ck_assert_int_eq(store_put(st, db, "k", 1, "v1", 2), CR_OK);
	store_close(st);
	ck_assert_int_eq(store_open(subdir("reopen"), 1 << 20, 4, 0, &st),
	    CR_OK);
	ck_assert_int_eq(store_db(st, "q", &db), CR_OK);
	ck_assert_int_eq(store_get(st, db, "k", 1, &v, &vlen), CR_OK);
	ck_assert_uint_eq(vlen, 2);
	ck_assert_int_eq(memcmp(v, "v1", 2), 0);
	free(v);
	ck_assert_int_eq(store_count(st, db, &n), CR_OK);
	ck_assert_uint_eq(n, 1);
	store_close(st);

	/* read-only (tools): reads work, writes are refused */
	ck_assert_int_eq(store_open(subdir("reopen"), 1 << 20, 4, STORE_RDONLY,
	    &st), CR_OK);
	ck_assert_int_eq(store_db(st, "q", &db), CR_OK);
	ck_assert_int_eq(store_get(st, db, "k", 1, &v, &vlen), CR_OK);
	free(v);
	ck_assert_int_ne(store_put(st, db, "k2", 2, "v", 1), CR_OK);
	ck_assert_ptr_null(store_committer_new(st, 16, 0));
	store_close(st);
	/* and a missing directory is not created for a reader */
	ck_assert_int_ne(store_open(subdir("absent"), 1 << 20, 4,
	    STORE_RDONLY, &st), CR_OK);
	ck_assert_ptr_null(st);
}
END_TEST

#define FORK_ITEMS 2000
#define FORK_EXIT_AFTER 1000

/* kept global so that the child's _exit leaves them reachable */
static struct store *child_st;
static struct store_committer *child_c;
static int ack_fd;
static atomic_uint child_acked;

static void
child_done(void *arg, enum cr_err result)
{
	uint32_t idx = (uint32_t)(uintptr_t)arg;

	if (result != CR_OK)
		return;
	/* 4-byte pipe writes are atomic; the parent trusts only these */
	if (write(ack_fd, &idx, sizeof(idx)) != sizeof(idx))
		_exit(3);
	atomic_fetch_add(&child_acked, 1);
}

static void
child_run(const char *dir)
{
	struct store_batch *b;
	unsigned db;
	char key[16];
	uint32_t i;

	if (store_open(dir, 1 << 24, 4, 0, &child_st) != CR_OK ||
	    store_db(child_st, "q", &db) != CR_OK ||
	    (child_c = store_committer_new(child_st, 256, 0)) == NULL)
		_exit(2);
	for (i = 0; i < FORK_ITEMS; i++) {
		int kl = snprintf(key, sizeof(key), "m%06u", (unsigned)i);
		if ((b = store_batch_new()) == NULL ||
		    store_batch_put(b, db, key, (size_t)kl, key,
		    (size_t)kl) != CR_OK ||
		    store_committer_submit(child_c, b, child_done,
		    (void *)(uintptr_t)i) != CR_OK)
			_exit(2);
		/* after the first half is acknowledged, burst the rest in
		 * and exit at once, so the exit lands mid-stream */
		if (i + 1 == FORK_EXIT_AFTER)
			while (atomic_load(&child_acked) < FORK_EXIT_AFTER)
				usleep(100);
	}
	/* a crash stand-in once part of the burst is acknowledged: no close,
	 * no drain, the rest still in flight */
	while (atomic_load(&child_acked) <= FORK_EXIT_AFTER)
		usleep(50);
	_exit(0);
}

START_TEST(test_fork_exit_keeps_acknowledged)
{
	static unsigned char seen[FORK_ITEMS];
	int fds[2], status;
	struct store *st;
	unsigned db;
	uint32_t idx;
	size_t acked = 0, vlen, n, i;
	ssize_t r;
	pid_t pid;
	void *v;
	char key[16];
	const char *dir = subdir("fork");

	ck_assert_int_eq(pipe(fds), 0);
	pid = fork();
	ck_assert_int_ge(pid, 0);
	if (pid == 0) {
		close(fds[0]);
		ack_fd = fds[1];
		child_run(dir);
	}
	close(fds[1]);
	memset(seen, 0, sizeof(seen));
	while ((r = read(fds[0], &idx, sizeof(idx))) == sizeof(idx)) {
		ck_assert_uint_lt(idx, FORK_ITEMS);
		seen[idx] = 1;
		acked++;
	}
	close(fds[0]);
	ck_assert_int_eq(waitpid(pid, &status, 0), pid);
	ck_assert_msg(WIFEXITED(status) && WEXITSTATUS(status) != 2 &&
	    WEXITSTATUS(status) != 3, "child failed: status %d", status);
	ck_assert_uint_ge(acked, FORK_EXIT_AFTER);

	ck_assert_int_eq(store_open(dir, 1 << 24, 4, 0, &st), CR_OK);
	ck_assert_int_eq(store_db(st, "q", &db), CR_OK);
	for (i = 0; i < FORK_ITEMS; i++) {
		if (!seen[i])
			continue;
		int kl = snprintf(key, sizeof(key), "m%06u", (unsigned)i);
		ck_assert_msg(store_get(st, db, key, (size_t)kl, &v, &vlen) ==
		    CR_OK, "acknowledged item %zu lost", i);
		free(v);
	}
	ck_assert_int_eq(store_count(st, db, &n), CR_OK);
	ck_assert_uint_ge(n, acked);
	printf("fork: %zu of %d acknowledged before exit, %zu on disk, all "
	    "acknowledged present\n", acked, FORK_ITEMS, n);
	store_close(st);
}
END_TEST

/* --- committer --- */

#define CC_THREADS 4
#define CC_BATCHES 10000
#define CC_PER_THREAD (CC_BATCHES / CC_THREADS)

struct cc_ctx {
	struct store_committer *c;
	unsigned db;
	unsigned thread;
};

static atomic_uint cc_calls[CC_BATCHES];
static atomic_uint cc_ok, cc_total;

static void
cc_done(void *arg, enum cr_err result)
{
	atomic_fetch_add(&cc_calls[(uintptr_t)arg], 1);
	if (result == CR_OK)
		atomic_fetch_add(&cc_ok, 1);
	atomic_fetch_add(&cc_total, 1);
}

static void *
cc_submitter(void *arg)
{
	struct cc_ctx *x = arg;
	struct store_batch *b;
	char key[32];
	unsigned i;

	for (i = 0; i < CC_PER_THREAD; i++) {
		unsigned id = x->thread * CC_PER_THREAD + i;
		int kl = snprintf(key, sizeof(key), "b%05u", id);
		b = store_batch_new();
		ck_assert_ptr_nonnull(b);
		/* two ops a batch: the item and a per-thread high-water mark */
		ck_assert_int_eq(store_batch_put(b, x->db, key, (size_t)kl,
		    &id, sizeof(id)), CR_OK);
		kl = snprintf(key, sizeof(key), "hw%u", x->thread);
		ck_assert_int_eq(store_batch_put(b, x->db, key, (size_t)kl,
		    &id, sizeof(id)), CR_OK);
		ck_assert_int_eq(store_committer_submit(x->c, b, cc_done,
		    (void *)(uintptr_t)id), CR_OK);
	}
	return NULL;
}

START_TEST(test_committer_concurrent)
{
	struct cc_ctx ctx[CC_THREADS];
	pthread_t th[CC_THREADS];
	struct store_stats ss;
	struct store *st;
	unsigned db, i;
	size_t n, vlen;
	void *v;
	double t0, dt;

	for (i = 0; i < CC_BATCHES; i++)
		atomic_store(&cc_calls[i], 0);
	atomic_store(&cc_ok, 0);
	atomic_store(&cc_total, 0);
	/* durable, as in production: grouping is what makes this fast */
	ck_assert_int_eq(store_open(subdir("cc"), 1 << 26, 4, 0, &st), CR_OK);
	ck_assert_int_eq(store_db(st, "q", &db), CR_OK);
	struct store_committer *c = store_committer_new(st, 1024, 0);
	ck_assert_ptr_nonnull(c);
	t0 = now_s();
	for (i = 0; i < CC_THREADS; i++) {
		ctx[i] = (struct cc_ctx){ c, db, i };
		ck_assert_int_eq(pthread_create(&th[i], NULL, cc_submitter,
		    &ctx[i]), 0);
	}
	for (i = 0; i < CC_THREADS; i++)
		pthread_join(th[i], NULL);
	store_committer_free(c); /* drains */
	dt = now_s() - t0;
	/* every callback ran before free returned, each exactly once */
	ck_assert_uint_eq(atomic_load(&cc_total), CC_BATCHES);
	ck_assert_uint_eq(atomic_load(&cc_ok), CC_BATCHES);
	for (i = 0; i < CC_BATCHES; i++)
		ck_assert_msg(atomic_load(&cc_calls[i]) == 1,
		    "batch %u called %u times", i, atomic_load(&cc_calls[i]));
	ck_assert_int_eq(store_count(st, db, &n), CR_OK);
	ck_assert_uint_eq(n, CC_BATCHES + CC_THREADS);
	for (i = 0; i < CC_THREADS; i++) {
		/* FIFO per submitter: the last write of each thread wins */
		char key[8];
		int kl = snprintf(key, sizeof(key), "hw%u", i);
		unsigned hw;
		ck_assert_int_eq(store_get(st, db, key, (size_t)kl, &v, &vlen),
		    CR_OK);
		memcpy(&hw, v, sizeof(hw));
		free(v);
		ck_assert_uint_eq(hw, i * CC_PER_THREAD + CC_PER_THREAD - 1);
	}
	store_stats(st, &ss);
	printf("committer: %d batches from %d threads in %llu commits "
	    "(ratio %.4f, %.1f batches/commit), %.0f batches/s durable\n",
	    CC_BATCHES, CC_THREADS, (unsigned long long)ss.commits,
	    (double)ss.commits / CC_BATCHES,
	    (double)CC_BATCHES / (double)ss.commits, CC_BATCHES / dt);
	ck_assert_uint_eq(ss.batches, CC_BATCHES);
	ck_assert_uint_eq(ss.ops, 2 * CC_BATCHES);
	ck_assert_uint_lt(ss.commits, CC_BATCHES / 2);
	ck_assert_uint_gt(ss.last_commit_us, 0);
	store_close(st);
}
END_TEST

/* after free, submitting is refused and the batch is freed, not leaked */
START_TEST(test_committer_wait_and_edges)
{
	struct store_batch *b;
	struct store *st;
	struct store_committer *c;
	unsigned db;
	size_t n;

	ck_assert_int_eq(store_open(subdir("edge"), 1 << 20, 4, STORE_NOSYNC,
	    &st), CR_OK);
	ck_assert_int_eq(store_db(st, "q", &db), CR_OK);
	ck_assert_ptr_nonnull(c = store_committer_new(st, 16, 1000));
	b = store_batch_new();
	ck_assert_int_eq(store_batch_put(b, db, "a", 1, "1", 1), CR_OK);
	ck_assert_int_eq(store_committer_submit_wait(c, b), CR_OK);
	/* an empty batch commits trivially */
	ck_assert_int_eq(store_committer_submit_wait(c, store_batch_new()),
	    CR_OK);
	/* a batch bigger than max_batch goes alone */
	b = store_batch_new();
	for (unsigned i = 0; i < 40; i++)
		ck_assert_int_eq(store_batch_put(b, db, &i, sizeof(i), "", 0),
		    CR_OK);
	ck_assert_int_eq(store_committer_submit_wait(c, b), CR_OK);
	ck_assert_int_eq(store_committer_submit(c, NULL, cc_done, NULL),
	    CR_ERR_INVALID);
	ck_assert_int_eq(store_committer_submit(c, store_batch_new(), NULL,
	    NULL), CR_ERR_INVALID);
	store_committer_free(c);
	store_committer_free(NULL);
	ck_assert_int_eq(store_count(st, db, &n), CR_OK);
	ck_assert_uint_eq(n, 41);
	store_close(st);
}
END_TEST

/* --- lazy batches --- */

struct lazy_res {
	atomic_int called;
	atomic_int result;
	_Atomic double at;	/* now_s() when the callback ran */
};

static void
lazy_done(void *arg, enum cr_err result)
{
	struct lazy_res *r = arg;

	atomic_store(&r->result, (int)result);
	atomic_store(&r->at, now_s());
	atomic_fetch_add(&r->called, 1);
}

static void
lazy_wait_called(struct lazy_res *r, double limit_s)
{
	double t0 = now_s();

	while (atomic_load(&r->called) == 0 && now_s() - t0 < limit_s)
		usleep(1000);
	ck_assert_int_eq(atomic_load(&r->called), 1);
	ck_assert_int_eq(atomic_load(&r->result), CR_OK);
}

/* a lazy batch waits for an ordinary one and shares its commit (and sync);
 * alone it is committed once its wait is over, not before; free commits a
 * waiting one at once */
START_TEST(test_committer_lazy)
{
	struct store_batch *b;
	struct store *st;
	struct store_committer *c;
	struct store_stats s0, s1;
	struct lazy_res r1 = {0}, r2 = {0}, r3 = {0};
	unsigned db;
	void *v;
	size_t vl, n;
	double t0;

	/* a syncing store: the sync counter is what relay-session reports */
	ck_assert_int_eq(store_open(subdir("lazy"), 1 << 20, 4, 0, &st), CR_OK);
	ck_assert_int_eq(store_db(st, "q", &db), CR_OK);
	ck_assert_ptr_nonnull(c = store_committer_new(st, 1024, 0));

	/* 1. rides with the next ordinary batch: one commit, one sync */
	store_stats(st, &s0);
	b = store_batch_new();
	ck_assert_int_eq(store_batch_put(b, db, "lazy", 4, "1", 1), CR_OK);
	ck_assert_int_eq(store_committer_submit_lazy(c, b, lazy_done, &r1,
	    10 * 1000 * 1000), CR_OK);
	usleep(50 * 1000);
	ck_assert_int_eq(atomic_load(&r1.called), 0);
	ck_assert_int_eq(store_get(st, db, "lazy", 4, &v, &vl), CR_ERR_NOT_FOUND);
	b = store_batch_new();
	ck_assert_int_eq(store_batch_put(b, db, "durable", 7, "2", 1), CR_OK);
	ck_assert_int_eq(store_committer_submit_wait(c, b), CR_OK);
	lazy_wait_called(&r1, 1.0);
	store_stats(st, &s1);
	ck_assert_uint_eq(s1.commits - s0.commits, 1);
	ck_assert_uint_eq(s1.syncs - s0.syncs, 1);
	ck_assert_uint_eq(s1.lazy_batches - s0.lazy_batches, 1);
	ck_assert_uint_eq(s1.lazy_commits - s0.lazy_commits, 0);
	ck_assert_uint_eq(s1.batches - s0.batches, 2);
	ck_assert_int_eq(store_get(st, db, "lazy", 4, &v, &vl), CR_OK);
	free(v);

	/* 2. alone: committed after its wait (150 ms), not much before */
	t0 = now_s();
	b = store_batch_new();
	ck_assert_int_eq(store_batch_del(b, db, "lazy", 4), CR_OK);
	ck_assert_int_eq(store_committer_submit_lazy(c, b, lazy_done, &r2,
	    150 * 1000), CR_OK);
	lazy_wait_called(&r2, 5.0);
	ck_assert(atomic_load(&r2.at) - t0 >= 0.140);
	store_stats(st, &s0);
	ck_assert_uint_eq(s0.lazy_commits - s1.lazy_commits, 1);
	ck_assert_int_eq(store_get(st, db, "lazy", 4, &v, &vl), CR_ERR_NOT_FOUND);

	/* 3. free does not wait for the deadline */
	b = store_batch_new();
	ck_assert_int_eq(store_batch_put(b, db, "late", 4, "3", 1), CR_OK);
	ck_assert_int_eq(store_committer_submit_lazy(c, b, lazy_done, &r3,
	    60u * 1000 * 1000), CR_OK);
	t0 = now_s();
	store_committer_free(c);
	ck_assert(now_s() - t0 < 5.0);
	ck_assert_int_eq(atomic_load(&r3.called), 1);
	ck_assert_int_eq(store_count(st, db, &n), CR_OK);
	ck_assert_uint_eq(n, 2);	/* durable, late */
	store_close(st);
}
END_TEST

/* --- map full --- */

struct full_res {
	atomic_int result;
	atomic_int called;
};

static void
full_done(void *arg, enum cr_err result)
{
	struct full_res *r = arg;

	atomic_store(&r->result, (int)result);
	atomic_fetch_add(&r->called, 1);
}

START_TEST(test_map_full)
{
	unsigned char val[100], big[2000];
	struct full_res res[4];
	struct store_batch *b;
	struct store_committer *c;
	struct store *st;
	enum cr_err err = CR_OK;
	unsigned db, i, stored = 0;
	size_t n, vlen;
	void *v;

	memset(val, 'v', sizeof(val));
	memset(big, 'B', sizeof(big));
	ck_assert_int_eq(store_open(subdir("full"), 64 * 1024, 4, STORE_NOSYNC,
	    &st), CR_OK);
	ck_assert_int_eq(store_db(st, "q", &db), CR_OK);

	/* the committer's documented choice: a group that fails is retried
	 * batch by batch, so only the oversized batch fails */
	ck_assert_ptr_nonnull(c = store_committer_new(st, 100000, 200000));
	for (i = 0; i < 4; i++) {
		atomic_store(&res[i].called, 0);
		b = store_batch_new();
		if (i == 1) {
			for (unsigned j = 0; j < 100; j++)
				ck_assert_int_eq(store_batch_put(b, db, &j,
				    sizeof(j), big, sizeof(big)), CR_OK);
		} else {
			ck_assert_int_eq(store_batch_put(b, db, "small\0\0\0", 5 + i,
			    "ok", 2), CR_OK);
		}
		ck_assert_int_eq(store_committer_submit(c, b, full_done,
		    &res[i]), CR_OK);
	}
	store_committer_free(c);
	for (i = 0; i < 4; i++) {
		ck_assert_int_eq(atomic_load(&res[i].called), 1);
		ck_assert_int_eq(atomic_load(&res[i].result),
		    i == 1 ? CR_ERR_FULL : CR_OK);
	}
	ck_assert_int_eq(store_count(st, db, &n), CR_OK);
	ck_assert_uint_eq(n, 3);

	/* fill the map one put at a time */
	for (i = 0; i < 100000; i++) {
		char key[16];
		int kl = snprintf(key, sizeof(key), "f%06u", i);
		if ((err = store_put(st, db, key, (size_t)kl, val,
		    sizeof(val))) != CR_OK)
			break;
		stored++;
	}
	ck_assert_int_eq(err, CR_ERR_FULL);
	ck_assert_uint_gt(stored, 10);
	/* still readable, and a committer sees FULL too */
	ck_assert_int_eq(store_count(st, db, &n), CR_OK);
	ck_assert_uint_eq(n, stored + 3);
	ck_assert_int_eq(store_get(st, db, "f000000", 7, &v, &vlen), CR_OK);
	ck_assert_uint_eq(vlen, sizeof(val));
	free(v);
	ck_assert_ptr_nonnull(c = store_committer_new(st, 64, 0));
	b = store_batch_new();
	for (i = 0; i < 20; i++)
		ck_assert_int_eq(store_batch_put(b, db, "more", 4 + (i % 2),
		    big, sizeof(big)), CR_OK);
	ck_assert_int_eq(store_committer_submit_wait(c, b), CR_ERR_FULL);
	store_committer_free(c);
	ck_assert_int_eq(store_get(st, db, "small", 5, &v, &vlen), CR_OK);
	free(v);
	{
		struct store_stats ss;
		store_stats(st, &ss);
		ck_assert_uint_ge(ss.commit_failures, 3);
	}
	store_close(st);
}
END_TEST

/* --- throughput (printed, not asserted) --- */

#define TP_THREADS 8
#define TP_ITEMS 20000

struct tp_ctx {
	struct store_committer *c;
	unsigned db, thread;
};

static void *
tp_waiter(void *arg)
{
	struct tp_ctx *x = arg;
	unsigned char val[256];
	unsigned i;

	memset(val, 'p', sizeof(val));
	for (i = 0; i < TP_ITEMS / TP_THREADS; i++) {
		unsigned char key[32];
		size_t kl = qkey(key, "agent", x->thread, i);
		struct store_batch *b = store_batch_new();
		ck_assert_int_eq(store_batch_put(b, x->db, key, kl, val,
		    sizeof(val)), CR_OK);
		ck_assert_int_eq(store_committer_submit_wait(x->c, b), CR_OK);
	}
	return NULL;
}

static atomic_uint tp_acked;

static void
tp_done(void *arg, enum cr_err result)
{
	if (result == CR_OK)
		atomic_fetch_add(&tp_acked, 1);
}

static void *
tp_async(void *arg)
{
	struct tp_ctx *x = arg;
	unsigned char val[256];
	unsigned i;

	memset(val, 'p', sizeof(val));
	for (i = 0; i < TP_ITEMS / TP_THREADS; i++) {
		unsigned char key[32];
		size_t kl = qkey(key, "agent2", x->thread, i);
		struct store_batch *b = store_batch_new();
		ck_assert_int_eq(store_batch_put(b, x->db, key, kl, val,
		    sizeof(val)), CR_OK);
		ck_assert_int_eq(store_committer_submit(x->c, b, tp_done,
		    NULL), CR_OK);
	}
	return NULL;
}

static void
tp_run(void *(*fn)(void *), const char *what)
{
	struct tp_ctx ctx[TP_THREADS];
	pthread_t th[TP_THREADS];
	struct store_committer *c;
	struct store_stats ss;
	struct store *st;
	unsigned db, i;
	size_t n;
	double t0, dt;

	ck_assert_int_eq(store_open(subdir(what), 1 << 28, 4, 0, &st), CR_OK);
	ck_assert_int_eq(store_db(st, "q", &db), CR_OK);
	ck_assert_ptr_nonnull(c = store_committer_new(st, 1024, 0));
	atomic_store(&tp_acked, 0);
	t0 = now_s();
	for (i = 0; i < TP_THREADS; i++) {
		ctx[i] = (struct tp_ctx){ c, db, i };
		ck_assert_int_eq(pthread_create(&th[i], NULL, fn, &ctx[i]), 0);
	}
	for (i = 0; i < TP_THREADS; i++)
		pthread_join(th[i], NULL);
	store_committer_free(c);
	dt = now_s() - t0;
	store_stats(st, &ss);
	ck_assert_int_eq(store_count(st, db, &n), CR_OK);
	ck_assert_uint_eq(n, TP_ITEMS);
	printf("throughput (%s): %d durable 256 B puts from %d threads in "
	    "%.3f s = %.0f items/s, %llu commits (%.1f items/commit)\n", what,
	    TP_ITEMS, TP_THREADS, dt, TP_ITEMS / dt,
	    (unsigned long long)ss.commits, (double)TP_ITEMS /
	    (double)ss.commits);
	store_close(st);
}

START_TEST(test_committer_throughput)
{
	/* each thread waits for its own ack: at most 8 in flight */
	tp_run(tp_waiter, "submit_wait");
	/* callbacks: as a service replying from the done callback would */
	tp_run(tp_async, "submit_async");
	ck_assert_uint_eq(atomic_load(&tp_acked), TP_ITEMS);
}
END_TEST

static Suite *
store_suite(void)
{
	Suite *s = suite_create("store");
	TCase *tc = tcase_create("store");

	tcase_add_checked_fixture(tc, dir_setup, dir_teardown);
	/* generous: valgrind runs these 20-50x slower */
	tcase_set_timeout(tc, 600);
	tcase_add_test(tc, test_put_get_del_count);
	tcase_add_test(tc, test_missing_and_bad_keys);
	tcase_add_test(tc, test_batch_atomic);
	tcase_add_test(tc, test_iter_order_and_prefix);
	tcase_add_test(tc, test_iter_snapshot);
	tcase_add_test(tc, test_reopen_keeps_data);
	tcase_add_test(tc, test_fork_exit_keeps_acknowledged);
	tcase_add_test(tc, test_committer_concurrent);
	tcase_add_test(tc, test_committer_wait_and_edges);
	tcase_add_test(tc, test_committer_lazy);
	tcase_add_test(tc, test_map_full);
	tcase_add_test(tc, test_committer_throughput);
	suite_add_tcase(s, tc);
	return s;
}

int
main(void)
{
	SRunner *sr = srunner_create(store_suite());
	int failed;

	srunner_run_all(sr, CK_NORMAL);
	failed = srunner_ntests_failed(sr);
	srunner_free(sr);
	return failed == 0 ? EXIT_SUCCESS : EXIT_FAILURE;
}
