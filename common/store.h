/*
 * store.h - durable key/value storage over LMDB, with group commit.
 *
 * One struct store is one LMDB environment (a directory). Named databases
 * (store_db) hold the tables: relay-session's per-partition queues, the
 * connector's inbox/outbox, metrics-collector's traces. Keys are byte strings
 * (1..STORE_KEY_MAX bytes, NUL bytes allowed) ordered by memcmp, so a key
 * "<agent>\0<lane><seq as big-endian u64>" iterates in queue order.
 *
 * Writes come in three sizes:
 *   - store_put / store_del: one op, one write txn, one fsync;
 *   - store_batch_commit: many ops on any databases, one txn, all or nothing;
 *   - store_committer: many callers' batches grouped by one writer thread
 *     into one txn and one fsync; each caller is told the result (through a
 *     callback, after the fsync) so a 202 can be sent only once durable.
 *     A "lazy" batch (store_committer_submit_lazy) needs no fsync of its
 *     own: it waits for the next group of ordinary batches and rides in its
 *     txn, or is committed alone once its wait runs out. Meant for writes
 *     whose loss in a crash is harmless (relay-session's delete after a
 *     delivery: the message is delivered again and dropped as a duplicate).
 *
 * Threads:
 *   - LMDB allows one write txn at a time per environment; it serializes
 *     writers with its own lock, so store_put/store_del/store_batch_commit
 *     may be called from any thread, and they queue behind the committer's
 *     txn. For throughput, send writes through one committer.
 *   - The environment is opened with MDB_NOTLS: read txns (store_get,
 *     store_count, store_iter) are not tied to a thread, run concurrently
 *     with each other and with the writer, and never block.
 *   - A struct store_iter is used by one thread at a time (it may move
 *     between threads). It holds a read snapshot: keep it short-lived, a
 *     long-lived reader stops LMDB from reusing freed pages.
 *   - store_db must finish before other threads use the returned handle;
 *     open every database at start-up.
 *   - A struct store_batch belongs to one thread until it is submitted.
 *   - store_stats may be read from any thread (atomic counters).
 *   - Open one environment (directory) once per process, and never use a
 *     store across fork(): open it again in the child.
 *
 * Durability: each commit syncs the data pages (fdatasync) and then the meta
 * page (LMDB writes it through a descriptor opened O_DSYNC), so a committed
 * group survives a process crash, an OS crash and a power cut alike: a
 * caller may acknowledge what a commit returned for. MDB_NOMETASYNC is never
 * used: it would leave the meta page to the next commit's sync, and a power
 * cut could undo the last acknowledged group. Commits are grouped instead
 * (store_committer), which is what keeps two syncs per commit cheap.
 * STORE_NOSYNC skips syncing altogether (tests, benchmarks).
 */
#ifndef CR_STORE_H
#define CR_STORE_H

#include <stddef.h>
#include <stdint.h>

#include "err.h"

/* store_open flags */
#define STORE_NOSYNC   0x1 /* no fsync on commit: tests and benchmarks only */
#define STORE_RDONLY   0x4 /* open read-only (tools) */

#define STORE_KEY_MAX 511            /* LMDB's default maximum key size */
#define STORE_DEFAULT_MAP_SIZE ((size_t)1 << 30) /* when map_size is 0 */
#define STORE_DEFAULT_MAX_DBS 16u    /* when max_dbs is 0 */
#define STORE_COUNTERS_MAX 32u       /* counters in a store_batch_add_u64 value */

struct store;
struct store_batch;
struct store_committer;
struct store_iter;

/* Counters for metrics; a snapshot, each field read atomically. */
struct store_stats {
	uint64_t commits;          /* write txns committed (all paths) */
	uint64_t syncs;            /* of them, synced to disk (fdatasync) */
	uint64_t lazy_batches;     /* lazy committer batches acknowledged */
	uint64_t lazy_commits;     /* committer txns of lazy batches only */
	uint64_t commit_failures;  /* write txns that failed */
	uint64_t ops;              /* put/del ops committed */
	uint64_t batches;          /* committer batches acknowledged CR_OK */
	uint64_t last_commit_us;   /* latency of the last commit (txn + fsync) */
	uint64_t last_batch_ops;   /* ops in the last committed txn */
	uint64_t last_group_batches; /* committer batches in the last group */
	int last_rc;               /* result of the last write txn: 0, or an LMDB/errno
	                            * code (store_rc_text) while writes fail */
	uint64_t failing_since_ms; /* unix ms of the first of the failures in a row; 0 */
};

/* store_committed_at_us - inside a done callback: the wall clock (us since
 * the epoch) at which its commit returned. What a commit made visible may be
 * acted on (by an earlier batch's callback) before a later batch's own
 * callback runs: a hop of "committed" takes this time, not its callback's. */
uint64_t store_committed_at_us(void);

/* store_rc_text - what a store_stats.last_rc means (static text) */
const char *store_rc_text(int rc);

/* store_open - open (creating dir, mkdir -p) an LMDB environment with the
 * given map size (0: STORE_DEFAULT_MAP_SIZE), named-database limit (0:
 * STORE_DEFAULT_MAX_DBS) and STORE_* flags; *out is freed with store_close */
enum cr_err store_open(const char *dir, size_t map_size_bytes, unsigned max_dbs,
    int flags, struct store **out);

/* store_close - close the environment; NULL does nothing. Every committer and
 * iterator on it must be freed first. */
void store_close(struct store *st);

/* store_db - open (creating) the named database; name NULL is the unnamed
 * main database. The handle stays valid until store_close. */
enum cr_err store_db(struct store *st, const char *name, unsigned *dbi_out);

/* store_put - insert or replace key in its own txn (one fsync); copies both */
enum cr_err store_put(struct store *st, unsigned dbi, const void *key,
    size_t klen, const void *val, size_t vlen);

/* store_get - look key up; *val is a copy the caller frees with free();
 * CR_ERR_NOT_FOUND when absent */
enum cr_err store_get(struct store *st, unsigned dbi, const void *key,
    size_t klen, void **val, size_t *vlen);

/* store_del - delete key in its own txn; CR_ERR_NOT_FOUND when absent */
enum cr_err store_del(struct store *st, unsigned dbi, const void *key,
    size_t klen);

/* store_count - number of entries in the database */
enum cr_err store_count(struct store *st, unsigned dbi, size_t *out);

/* store_get_count - key's value in dbi (a copy the caller frees; NULL and 0
 * when absent) and the number of entries of count_dbi, from one snapshot */
enum cr_err store_get_count(struct store *st, unsigned dbi, const void *key, size_t klen,
    void **val, size_t *vlen, unsigned count_dbi, uint64_t *count);

/* store_stats - snapshot of the store's counters; callable from any thread */
void store_stats(const struct store *st, struct store_stats *out);
/* store_bytes - bytes in the pages of DBs dbis[0..n) and the main DB (what
 * the data takes, not the file's high-water mark), and the map size */
enum cr_err store_bytes(struct store *st, const unsigned *dbis, size_t n, uint64_t *used,
    uint64_t *map);

/* store_batch_new - an empty batch of ops; free with store_batch_free, or
 * hand it to store_committer_submit which takes ownership. NULL on ENOMEM. */
struct store_batch *store_batch_new(void);

/* store_batch_free - free a batch; NULL does nothing */
void store_batch_free(struct store_batch *b);

/* store_batch_put - add a put of key->val on dbi; copies key and val.
 * CR_ERR_INVALID for an empty key, CR_ERR_TOO_BIG over STORE_KEY_MAX */
enum cr_err store_batch_put(struct store_batch *b, unsigned dbi,
    const void *key, size_t klen, const void *val, size_t vlen);

/* store_batch_del - add a delete of key on dbi; copies key. Deleting a
 * missing key inside a batch is not an error. */
enum cr_err store_batch_del(struct store_batch *b, unsigned dbi,
    const void *key, size_t klen);

/* store_batch_add_u64 - add delta to counter idx (< STORE_COUNTERS_MAX) of
 * key's value, an array of big-endian u64 counters (missing ones count 0),
 * inside the txn that applies the batch: counters move exactly with what the
 * same commit does, and not at all when it fails */
enum cr_err store_batch_add_u64(struct store_batch *b, unsigned dbi, const void *key,
    size_t klen, unsigned idx, uint64_t delta);

/* store_batch_len - number of ops in the batch */
size_t store_batch_len(const struct store_batch *b);

/* store_batch_commit - apply every op in one write txn, all or nothing;
 * the batch stays the caller's (it may be committed again or freed) */
enum cr_err store_batch_commit(struct store *st, const struct store_batch *b);

/* Called once per submitted batch, on the committer's thread, after the
 * group's txn committed (and synced) or failed. It must not block for long
 * and must not call store_committer_free; it may submit more batches. */
typedef void (*store_done_fn)(void *arg, enum cr_err result);

/* store_committer_new - start a writer thread that groups submitted batches:
 * it takes every pending batch, up to max_batch ops per txn (a bigger batch
 * goes alone), waiting at most max_delay_us for a group to fill (0: never
 * wait; grouping then comes from batches that arrive during the previous
 * fsync). If a group's txn fails and it held several batches, each batch is
 * retried alone so that one bad or oversized batch fails only itself.
 * Free with store_committer_free before store_close. NULL on failure. */
struct store_committer *store_committer_new(struct store *st,
    unsigned max_batch, unsigned max_delay_us);

/* store_committer_free - commit everything already submitted (calling its
 * callbacks), then stop and join the thread; NULL does nothing */
void store_committer_free(struct store_committer *c);

/* store_committer_submit - queue b for the next group; takes ownership of b
 * (freed by the committer). On CR_OK done(arg, result) is called exactly
 * once, later, on the writer thread. On error (NULL arguments, stopping) b
 * is freed at once and done is never called. */
enum cr_err store_committer_submit(struct store_committer *c,
    struct store_batch *b, store_done_fn done, void *arg);

/* store_committer_submit_lazy - like store_committer_submit, but b needs no
 * commit (and fsync) of its own: it is added to the next group that holds an
 * ordinary batch, or committed alone (synced) once max_wait_us has passed
 * without one. Its done callback runs after that commit. Lazy batches never
 * wake the writer while ordinary work is pending; store_committer_free
 * commits them at once. */
enum cr_err store_committer_submit_lazy(struct store_committer *c,
    struct store_batch *b, store_done_fn done, void *arg,
    unsigned max_wait_us);

/* store_committer_submit_wait - submit b (takes ownership) and block until
 * its group committed; returns the batch's result. Never call it from a
 * done callback. */
enum cr_err store_committer_submit_wait(struct store_committer *c,
    struct store_batch *b);

/* store_iter_new - iterate dbi in key order over keys starting with prefix
 * (plen 0: every key), in a read snapshot taken now; free with
 * store_iter_free before store_close. The prefix is copied. */
enum cr_err store_iter_new(struct store *st, unsigned dbi, const void *prefix,
    size_t plen, struct store_iter **out);

/* store_iter_new_at - like store_iter_new but start at the first key >= start
 * (still bounded by prefix); used to page a queue in from the last seq seen */
enum cr_err store_iter_new_at(struct store *st, unsigned dbi,
    const void *prefix, size_t plen, const void *start, size_t slen,
    struct store_iter **out);

/* store_iter_next - next entry: 1 with *k and *v pointing into the map (borrowed
 * until the next call or store_iter_free; never write through them), 0 past
 * the prefix or at the end, -1 on a storage error (see store_iter_err) */
int store_iter_next(struct store_iter *it, const void **k, size_t *kl,
    const void **v, size_t *vl);

/* store_iter_err - CR_OK, or the error that made store_iter_next return -1 */
enum cr_err store_iter_err(const struct store_iter *it);

/* store_iter_free - end the read snapshot and free; NULL does nothing */
void store_iter_free(struct store_iter *it);

#endif
