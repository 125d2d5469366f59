/*
 * session.h - relay-session's private header: durable per-recipient queues
 * in LMDB, one environment per partition, served only under a lease.
 *
 * Storage layout of partition p (<DATA_DIR>/p<p>/):
 *   DB "q":    "<recipient>\0<lane byte 0|1|2><seq be64>" ->
 *              <expires_at_ms be64><accepted_at_ms be64><packed Envelope>
 *   DB "idem": "<sender>\0<idempotency key>" -> struct in session_queue.c
 *   DB "meta": "c<agent>" -> <expired be64><shed be64><failed be64>
 *              (failures since the agent's last reconnect_ack)
 *   DB "warn":  "<accepted_ms be64><recipient>\0<lane byte><seq be64>" ->
 *              (empty): messages to warn about (delayed notice) if still
 *              queued DELAY_WARN_S after acceptance; written in the
 *              message's commit, removed by the sweep (session_sweep.c)
 *   DB "nonce": "<seen_ms be64><sender>\0<nonce>" -> (empty): the request
 *              nonces of queued messages (replay check), written in the
 *              message's commit, kept NONCE_TTL_S, swept on the tick; looked
 *              up in memory (session_nonce.c)
 * seq is one counter per partition, started above every stored seq and
 * above the wall clock in microseconds, so a key never repeats.
 *
 * Threads and locks:
 *   - struct session_part.mu guards everything in the part below it
 *     (agents, slots, counters, open/gen, the store pointers). LMDB reads
 *     run under it (short); commits go to the part's group committer, and
 *     are submitted under mu so a close cannot free the committer first.
 *   - send_mu orders the dispatch requests of a partition on the wire:
 *     a thread collects requests under mu, takes send_mu, drops mu, sends.
 *     Lock order: mu -> send_mu -> (bus / committer internals).
 *   - Enqueue/connect/disconnect run on the partition subscription's nats.c
 *     thread, commit callbacks on the committer thread, dispatch replies on
 *     the bus reply/timer threads, lease/sweep/probe work on the main tick.
 *   - Deletes of delivered messages are lazy commits (no fsync of their
 *     own): they ride with the next enqueue group, or go alone after
 *     DELETE_DELAY_MS. Lost in a crash, the message is dispatched again and
 *     the connector's inbox drops it by message_id.
 *   - A callback that outlives its partition's open period is recognised by
 *     gen (bumped on every close) and only finishes what it owes others
 *     (the enqueue reply), never touching the agents.
 */
#ifndef SESSION_H
#define SESSION_H

#include <pthread.h>
#include <stdint.h>

#include <cJSON.h>
#include <nats/nats.h>

#include "brkset.h"
#include "bus.h"
#include "env.h"
#include "store.h"
#include "svc.h"

#define SESSION_LANES 3
#define SESSION_AGENT_BUCKETS 1024
#define SESSION_IDEM_BUCKETS 256
#define SESSION_PAIR_BUCKETS 4096
#define SESSION_VHDR 16            /* expires + accepted before the envelope */
#define SESSION_KEY_MAX (128 + 1 + 1 + 8)
/* protobuf-c fields are char *: borrowed strings are only read by pack */
#define SESSION_UNCONST(p) ((char *)(uintptr_t)(p))

enum session_slot_state {
	SLOT_INFLIGHT = 1,  /* dispatch request out, reply pending */
	SLOT_WAITING,       /* attempt failed, to be sent again */
	SLOT_DELETING       /* finished; its delete is being committed */
};

/* One message of an agent that the dispatcher holds (window member). */
struct session_slot {
	int state;
	uint8_t lane;
	uint64_t seq;
	uint32_t attempts;
	uint32_t token;          /* bumped per send; a reply must match it */
	uint64_t vlen;           /* stored value size (queue bytes) */
	char *message_id, *correlation_id, *sender, *idem_key, *trace_id;
	uint64_t created_at_ms;
};

enum session_presence { AG_UNKNOWN = 0, AG_ONLINE, AG_OFFLINE };

/* In-memory state of one recipient: counts and the dispatch window only;
 * the backlog stays in LMDB. */
struct session_agent {
	struct session_agent *next;     /* hash chain */
	char *id;
	uint64_t n[SESSION_LANES];      /* messages per lane (committed or being committed) */
	uint64_t bytes;                 /* their value bytes */
	uint64_t cursor[SESSION_LANES]; /* next seq the dispatcher looks at */
	uint64_t warned[SESSION_LANES]; /* next seq the delay warning looks at (DB meta "w") */
	uint64_t warn_due[SESSION_LANES]; /* wall ms: no message of the lane is due a warning before */
	struct session_slot *slots;
	size_t nslots, capslots;
	int presence;
	uint64_t online_since;          /* mono ms of the last connect */
	char socket_id[64];
	unsigned fails;                 /* consecutive failed attempts */
	uint64_t next_try;              /* mono ms: end of backoff / next probe */
	uint64_t crit_next_try;         /* mono ms: critical skips the backoff, not a base delay */
	uint64_t hold_until;            /* mono ms: destination breaker open until then */
	int held;                       /* hold_until was set: probe with one message after it */
	uint32_t round;                 /* bumped whenever a backoff starts */
	uint64_t expired, shed, failed; /* since the last reconnect_ack */
	uint64_t delivered;             /* since start (status) */
};

/* An idempotency entry whose commit is still pending. */
struct session_idem_pending {
	struct session_idem_pending *next;
	char *key;
	size_t klen;
	char message_id[ULID_LEN + 1];
	char *correlation_id, *recipient;
	unsigned char sha[32];
};

/* One (sender, recipient) pair: what it has queued and its token bucket. */
struct session_pair {
	struct session_pair *next;
	struct session_agent *a;        /* the recipient */
	char *sender;
	uint64_t n, bytes;              /* queued (committed or being committed) */
	double tokens;                  /* rate limit bucket */
	uint64_t refill_ms;             /* mono ms of the last refill */
};

/* The nonces seen within NONCE_TTL_S: 128 bits of SHA-256 each. */
struct session_nonce_ent {
	uint64_t a, b;
};
struct session_nonce_set {
	struct session_nonce_ent *t;
	size_t cap, used, tomb;
};

struct session;

struct session_part {
	pthread_mutex_t mu;
	pthread_mutex_t send_mu;
	struct session *s;
	uint32_t idx;
	int open;
	uint64_t gen;
	struct store *st;
	struct store_committer *com;
	unsigned dbq, dbidem, dbmeta, dbnonce;
	natsSubscription *sub;
	struct session_agent *agents[SESSION_AGENT_BUCKETS];
	uint64_t nagents;
	struct session_idem_pending *idem[SESSION_IDEM_BUCKETS];
	struct session_pair *pairs[SESSION_PAIR_BUCKETS];
	struct session_nonce_set nonces;
	uint64_t next_seq;
	uint64_t depth;                 /* messages in the partition (as n above) */
	uint64_t inflight;
	/* lease (main thread only) */
	int store_failing_seen;         /* session_health.c: failure logged */
	int leased;
	uint64_t lease_rev;
	uint64_t lease_ok;              /* mono ms of the last good create/update */
	uint64_t free_since;            /* mono ms since the key was seen free (0: not) */
	/* sweeps (main thread; read under mu) */
	unsigned char sweep_key[SESSION_KEY_MAX];
	size_t sweep_klen;
	unsigned char idem_key[STORE_KEY_MAX];
	size_t idem_klen;
	uint64_t idem_next;             /* mono ms of the next idem sweep */
	uint64_t delayed_sent;          /* delayed notices published (status) */
	struct metric *m_depth, *m_inflight;
};

struct session_cfg {
	char *data_dir;
	long long map_size_mb, lease_ms, queue_max, queue_max_bytes, inflight;
	long long dispatch_timeout_ms, backoff_base_ms, backoff_max_ms, max_attempts;
	long long offline_probe_ms, idem_window_s, default_ttl_s, commit_delay_us;
	long long sweep_batch, nonce_ttl_s, delete_delay_ms;
	long long shed_high_water_pct, pair_queue_max, pair_queue_max_bytes;
	long long pair_rate_per_min, pair_burst, delay_warn_s;
	struct brkset_cfg brk_cfg;
	int strict_order, fsync;
};

struct session {
	struct svc *svc;
	struct bus *bus;
	struct session_cfg cfg;
	uint32_t nparts;
	struct session_part *parts;
	kvStore *leases;
	uint64_t lease_next;            /* mono ms of the next lease pass */
	uint32_t others_seen;           /* other lease holders seen last pass */
	char dispatch_subj[128];
	struct brkset *brk;             /* "delivery": relay-session -> delivery */
	struct brk *dlv_brk;
	natsSubscription *brk_sub;      /* delivery's breaker events */
};

/* A batch of work collected under mu and carried out after it:
 * deletes to commit (with the slots they finish) and dispatches to send. */
struct session_send;
struct session_del;
struct session_work {
	struct session_send *head, *tail;
	struct store_batch *batch;
	struct session_del *del;
	int durable;                    /* batch needs its own durable commit */
};

static inline void
session_be64_put(unsigned char *p, uint64_t v)
{
	for (int i = 7; i >= 0; i--) {
		p[i] = (unsigned char)(v & 0xff);
		v >>= 8;
	}
}

static inline uint64_t
session_be64_get(const unsigned char *p)
{
	uint64_t v = 0;
	for (int i = 0; i < 8; i++)
		v = (v << 8) | p[i];
	return v;
}

/* session_part.c */
/* Idempotency entries (session_idem.c has their layout) */
#define SESSION_IDEM_FIXED (8 + 1 + 8 + 32)
#define SESSION_IDEM_DELIVERED 'D'
#define SESSION_IDEM_EXPIRED   'E'
#define SESSION_IDEM_FAILED    'F'
/* session_idem_finish - in w's batch, mark the entry of sl's message (if it
 * has a key) with its final state; caller holds mu; 0 or -1 */
int session_idem_finish(struct session_part *pp, const struct session_slot *sl, char final,
    struct session_work *w);
/* session_idem_final_state - the state an entry records for a message that
 * left the queue: "delivered", "expired" or "failed" */
const char *session_idem_final_state(const void *v, size_t vl);
/* the pending table of entries and claims whose commit has not landed
 * (caller holds mu): find; add (takes key; NULL when out of memory); remove */
struct session_idem_pending *session_idem_pending_find(struct session_part *pp, const char *key,
    size_t klen);
struct session_idem_pending *session_idem_pending_add(struct session_part *pp, char *key,
    size_t klen, const char *mid, const char *cid, const char *rcpt, const unsigned char *sha);
void session_idem_pending_remove(struct session_part *pp, struct session_idem_pending *ip);

/* Idempotency keys across partitions (session_claim.c) */
struct session_claim_owner {
	char message_id[ULID_LEN + 1];
	char correlation_id[256];
	char recipient[129];
};
enum { SESSION_CLAIM_OK = 0, SESSION_CLAIM_TAKEN, SESSION_CLAIM_ERROR };
struct session_claim_result {
	int status;                       /* SESSION_CLAIM_* */
	struct session_claim_owner owner; /* TAKEN: who holds the key */
	char error[160];                  /* ERROR: why */
};
typedef void (*session_claim_fn)(void *arg, const struct session_claim_result *r);
/* session_claim_ask - ask partition part's owner, in one request, to claim
 * the keys of n envelopes (senders in part) for their recipients; fn(args[i])
 * runs once each, in order (another thread, or at once on failure) */
void session_claim_ask(struct session *s, uint32_t part, Envelope *const *es,
    const unsigned char *const *shas, size_t n, session_claim_fn fn, void *const *args);
/* session_claim_handle - S's side: answer an IdemClaims request (msg borrowed) */
void session_claim_handle(struct session_part *pp, natsMsg *msg);
/* session_claim_taken_locked - in the sender's partition: is the key claimed
 * for another recipient? 1 with its owner; caller holds mu */
int session_claim_taken_locked(struct session_part *pp, const char *sender, const char *key,
    const char *rcpt, struct session_claim_owner *o);

/* The books of a partition (session_books.c): counter indexes */
#define SESSION_BOOKS_ACCEPTED 0
#define SESSION_BOOKS_DELIVERED 1
#define SESSION_BOOKS_FAILED 2             /* + FailureReason */
#define SESSION_BOOKS_NREASONS 6
#define SESSION_BOOKS_N (SESSION_BOOKS_FAILED + SESSION_BOOKS_NREASONS)
struct session_books {
	uint64_t c[SESSION_BOOKS_N];
	uint64_t accepted, delivered, failed, queued;
	int balanced;
};
/* session_books_add - count a message into counter idx in batch b (mu held); 0 or -1 */
int session_books_add(struct session_part *pp, struct store_batch *b, unsigned idx);
/* session_books_read - pp's books from one snapshot; -1 if not served */
int session_books_read(struct session_part *pp, struct session_books *out);
/* session_books_open - at open (mu held): start the books of an older store */
void session_books_open(struct session_part *pp, uint64_t queued);
/* session_books_status / _metrics - the books in /v1/status and /metrics */
void session_books_status(struct session *s, cJSON *obj);
void session_books_metrics(struct session *s, struct strbuf *sb);
/* session_books_handle - answer <P>.session.<p>.books (msg borrowed) */
void session_books_handle(struct session_part *pp, natsMsg *msg);

/* session_key_make - queue key of (recipient, lane, seq) into out
 * (SESSION_KEY_MAX bytes); returns its length, 0 if recipient is too long */
size_t session_key_make(unsigned char *out, const char *recipient, int lane, uint64_t seq);
/* session_key_parse - split a queue key; recipient gets 129 bytes; -1 if malformed */
int session_key_parse(const void *k, size_t kl, char *recipient, int *lane, uint64_t *seq);
/* session_agent_get - the agent's state (borrowed until the part closes);
 * create it if asked; NULL if absent or out of memory. Caller holds mu. */
struct session_agent *session_agent_get(struct session_part *pp, const char *id, int create);
/* session_slot_find - the agent's slot for (lane, seq) or NULL; caller holds mu */
struct session_slot *session_slot_find(struct session_agent *a, int lane, uint64_t seq);
/* session_slot_new - add a slot for a stored message, copying IDs from e
 * (borrowed); NULL on ENOMEM. Caller holds mu. */
struct session_slot *session_slot_new(struct session_agent *a, int lane, uint64_t seq,
    uint64_t vlen, const Envelope *e);
/* session_slot_remove - forget a slot (frees its strings); caller holds mu */
void session_slot_remove(struct session_agent *a, struct session_slot *sl);
/* session_counters_put - persist the agent's failure counters into w's batch */
void session_counters_put(struct session_part *pp, struct session_agent *a, struct session_work *w);
/* session_warned_put - persist the agent's delay-warning cursors into b */
void session_warned_put(struct session_part *pp, struct session_agent *a, struct store_batch *b);
/* session_part_open - open partition p's LMDB, rebuild its state, subscribe
 * (main thread, lease held) */
enum cr_err session_part_open(struct session *s, struct session_part *pp);
/* session_part_close - unsubscribe, finish commits, close the LMDB (main thread) */
void session_part_close(struct session *s, struct session_part *pp);

/* session_queue.c */
/* session_enqueue - handle one enqueue request (msg borrowed) */
void session_enqueue(struct session_part *pp, natsMsg *msg);
/* session_enqueue_batch - handle an enqueue_batch request (msg borrowed) */
void session_enqueue_batch(struct session_part *pp, natsMsg *msg);

/* session_dispatch.c */
/* session_work_init - an empty work list */
void session_work_init(struct session_work *w);
/* session_work_flush_unlock - submit w's deletes (under mu), then release mu
 * and send w's dispatches in order; w is empty afterwards */
void session_work_flush_unlock(struct session_part *pp, struct session_work *w);
/* session_collect - add the dispatches agent a may get now to w; caller holds mu */
void session_collect(struct session_part *pp, struct session_agent *a, struct session_work *w);
/* session_drop_locked - end slot sl's message for good: delete it (in w),
 * count it, publish the Failure notice and hop. Caller holds mu. */
void session_drop_locked(struct session_part *pp, struct session_agent *a,
    struct session_slot *sl, int reason, const char *detail, struct session_work *w);
/* session_publish_receipt - Receipt on <P>.receipt.<sender>; ids borrowed */
void session_publish_receipt(struct session *s, const char *message_id,
    const char *correlation_id, const char *sender, const char *recipient,
    const char *state, uint32_t attempts);

/* session_pair.c (all under mu) */
/* session_pair_get - the pair (a, sender); created if asked; NULL if absent/ENOMEM */
struct session_pair *session_pair_get(struct session_part *pp, struct session_agent *a,
    const char *sender, int create);
/* session_pair_sub - a message of (a, sender) of vlen bytes left the queue */
void session_pair_sub(struct session_part *pp, struct session_agent *a, const char *sender,
    uint64_t vlen);
/* session_pair_take - take a token of pr's bucket (rate per minute, burst);
 * 1 if taken, else 0 and *retry_s the seconds until one is free */
int session_pair_take(struct session_pair *pr, uint64_t rate_per_min, uint64_t burst,
    uint64_t now, uint32_t *retry_s);
/* session_pairs_free - forget every pair of the partition */
void session_pairs_free(struct session_part *pp);
/* session_agent_hold - the destination breaker of a is open for ms (0:
 * closed): hold dispatch, then probe with one message */
void session_agent_hold(struct session_part *pp, struct session_agent *a, uint64_t ms);
/* session_on_breaker - bus handler of delivery's breaker events */
void session_on_breaker(void *arg, natsMsg *msg);

/* session_nonce.c (all under mu) */
/* session_nonce_hash - the set's entry for "<sender>\0<nonce>"; -1 on error */
int session_nonce_hash(const unsigned char *key, size_t klen, struct session_nonce_ent *out);
/* session_nonce_has - 1 if e is in the set */
int session_nonce_has(const struct session_nonce_set *ns, const struct session_nonce_ent *e);
/* session_nonce_add - add e; -1 on ENOMEM */
int session_nonce_add(struct session_nonce_set *ns, const struct session_nonce_ent *e);
/* session_nonce_del - remove e if present */
void session_nonce_del(struct session_nonce_set *ns, const struct session_nonce_ent *e);
/* session_nonce_free - empty the set */
void session_nonce_free(struct session_nonce_set *ns);

/* session_sweep.c */
/* session_sweep - bounded expiry and idempotency sweeps, due dispatches (tick) */
void session_sweep(struct session *s, struct session_part *pp);
/* session_metrics_tick - queue gauges per partition and lane (main thread; session_metrics.c) */
void session_metrics_tick(struct session *s);
/* session_health_tick - probe stores whose writes failed, count them (main
 * thread; session_health.c) */
void session_health_tick(struct session *s);
/* session_health_status - the failing stores and their errors, for /v1/status */
void session_health_status(struct session *s, cJSON *obj);
/* session_health_failing - served partitions whose last write failed (any thread) */
int session_health_failing(struct session *s);

/* session_lease.c */
/* session_lease_tick - renew held leases, drop lost ones, take free ones (tick) */
void session_lease_tick(struct session *s);
/* session_lease_release_all - close every partition and delete its lease (drain) */
void session_lease_release_all(struct session *s);

#endif
