/*
 * conn.h - private header of clawrelay-connector (nothing outside
 * services/connector includes it).
 *
 * The connector runs beside one agent. Its parts:
 *   conn_ws.c    - WebSocket client to the gateway (libwebsockets), on its own
 *                  thread; other threads hand it frames through a queue.
 *   conn_inbox.c - the LMDB inbox (deliveries, done IDs, dead letters) behind a
 *                  group committer.
 *   conn_hook.c  - one worker thread replaying the inbox, in order, to the
 *                  agent's hook with libcurl, behind the hook breaker.
 *   conn_api.c   - the local HTTP API (POST /v1/outbound/{recipient}).
 *   conn_out.c   - one outbound message to the gateway (socket or signed POST).
 *   conn_outbox.c- the LMDB outbox and its worker thread, behind the gateway
 *                  breaker; GET /v1/outbox.
 *   conn_brk.c   - short forms over the two breakers (one brkset).
 *   conn_key.c, conn_class.c - pure functions: idempotency keys, answer classes.
 *
 * Threads and ownership:
 *   - struct conn lives in main.c for the life of the process; its cfg and
 *     key are written once in init (main thread) and read-only afterwards.
 *   - struct conn_ws: wsi, rx buffer and timers belong to the lws thread;
 *     everything under ws.mu (queues, state, last ack, enqueue waiters,
 *     counters) may be touched by any thread holding ws.mu.
 *   - struct conn_inbox: the store is thread-safe; the pending set and the
 *     worker wake-up state are under inbox.mu; counts are atomics.
 *   - struct conn_hook: the curl handle and retry state belong to the hook
 *     thread; the stats are atomics.
 *   - struct conn_outbox: counts, the recipient map and the retry state are
 *     under outbox.mu (held across each outbox commit); the held-back
 *     recipients belong to the outbox thread.
 *   - the breakers (conn.brks) are thread-safe; created in init, freed in fini.
 */
#ifndef CONN_H
#define CONN_H

#include <pthread.h>
#include <stdatomic.h>
#include <stdint.h>

#include <cJSON.h>

#include "breaker.h"
#include "brkset.h"
#include "conn_class.h"
#include "env.h"
#include "err.h"
#include "svc.h"
#include "util.h"

struct auth_key;
struct lws_context;
struct lws;
struct store;
struct store_committer;
struct mg_connection;

/* settings (main.c's config table writes them) */
struct conn_cfg {
	char *agent_id;
	char *key_file;
	char *gateway_url;
	char *hook_url;
	char *data_dir;
	long long inbox_max;
	long long hook_timeout_ms;
	long long hook_max_attempts;
	long long hook_backoff_base_ms;
	long long hook_backoff_cap_ms;
	long long reconnect_base_ms;
	long long reconnect_cap_ms;
	long long heartbeat_s;
	long long reorder_ms;
	long long done_retention_s;
	long long event_queue_max;
	long long enqueue_timeout_ms;
	long long max_body;
	long long store_map_mb;
	int store_nosync;
	int event_batch;
	struct brkset_cfg brk;       /* CLAWRELAY_BREAKER_*: both breakers */
	long long outbox_max;
	long long outbox_max_mb;
	long long outbox_failed_max;
};

struct conn;

/* a parsed CLAWRELAY_GATEWAY_URL */
struct conn_gw {
	int tls;             /* https:// -> wss:// */
	char host[256];
	int port;
	char base[256];      /* path prefix without trailing '/', often "" */
};

/* kinds of queued frames */
enum conn_fk {
	CONN_FK_CTRL = 0,    /* acks, enqueue, heartbeats: dropped when the socket goes */
	CONN_FK_KEEP,        /* dead letters: survive reconnects */
	CONN_FK_EVENT        /* hop events: survive reconnects, bounded, oldest dropped */
};

struct conn_frame {
	struct conn_frame *next;
	size_t len;
	unsigned char *buf;  /* LWS_PRE bytes of room, then len bytes; events: a
	                        packed HopEvent right after the struct */
	int inline_buf;      /* buf is part of this allocation */
};

struct conn_fq {
	struct conn_frame *head, *tail;
	size_t n;
};

enum conn_ws_state {
	CONN_WS_DOWN = 0,
	CONN_WS_CONNECTING,
	CONN_WS_HANDSHAKE,   /* upgraded, reconnect sent, waiting for reconnect_ack */
	CONN_WS_OPEN
};

struct conn_waiter;

struct conn_ws {
	pthread_t thread;
	int started;
	struct lws_context *ctx;
	struct lws *wsi;             /* lws thread only */
	struct strbuf rx;            /* lws thread only */
	int need_hello;              /* lws thread only */
	unsigned attempt;            /* reconnect attempts since the last ack; lws thread */
	uint64_t last_rx_mono;       /* lws thread */
	unsigned char *evout;        /* lws thread: event frame being written */
	size_t evcap;
	atomic_int stop;

	pthread_mutex_t mu;          /* guards everything below */
	enum conn_ws_state state;
	struct conn_fq q_ctrl, q_keep, q_ev;
	int kicked;                  /* lws_cancel_service sent, not yet seen */
	int ev_timer_on;             /* the event pacer runs */
	int ev_flush;                /* the pacer asks the lws thread to send events */
	uint64_t ev_seq, ev_seq_seen; /* events queued; as of the pacer's last look */
	pthread_cond_t ev_cv;        /* wakes the pacer */
	pthread_t ev_thread;
	int ev_started;
	uint64_t ev_dropped;
	uint64_t connects, disconnects;
	uint64_t connected_at_ms, offline_since_ms;
	char last_error[160];
	ReconnectAck last_ack;
	uint64_t last_ack_at_ms;
	int have_ack;
	uint32_t next_req_id;
	struct conn_waiter *waiters;
	char last_received_id[64];
};

struct conn_pending;

/* an inbox key: lane digit, queue_seq (8 bytes), message_id (< 128) */
#define CONN_KEY_MAX 140

/* an entry the hook took whose removal is still being committed */
#define CONN_SKIP_MAX 256
struct conn_skip {
	char key[CONN_KEY_MAX];
	size_t klen;
	uint32_t hash;               /* fnv1a32 of the key: compared first */
	int committed;               /* set by the committer callback */
	int seen_committed;          /* hook thread: committed before the last snapshot */
	int used;
	struct conn *c;
};

struct conn_inbox {
	struct store *st;
	struct store_committer *com;
	unsigned db_inbox, db_done, db_dead, db_meta;
	atomic_llong n;              /* committed entries + reservations */
	atomic_llong dead_n;
	atomic_ullong stored, duplicates, refused_full, store_errors;

	pthread_mutex_t mu;          /* guards pending and wake-ups */
	pthread_cond_t cv;
	struct conn_pending **pending;   /* hash set of message IDs being committed */
	size_t npending_buckets;
	uint64_t gen;                /* bumped on each commit: wakes the hook worker */
	int stop;
	struct conn_skip skip[CONN_SKIP_MAX];  /* under mu */
	size_t nskip;
	/* lws thread only: queue_seq seen per lane, for the reorder hold */
	uint64_t max_seq[3];
	uint64_t disturbed_until_ms[3];
	/* lws thread only: per lane, the lowest queue_seq refused (inbox full)
	 * and not taken since, and when: later ones of the lane are refused too */
	uint64_t refused_seq[3];
	uint64_t refused_ms[3];
};

struct conn_hook {
	pthread_t thread;
	int started;
	struct brk *brk;             /* connector -> hook (in conn.brks) */
	atomic_ullong calls, ok, failed, unavailable, dead_lettered, expired;
	atomic_ullong last_status, last_latency_ms;
	atomic_int busy;
	atomic_int stop;
	char current[64];            /* hook thread only (head being retried) */
	unsigned current_tries;      /* its failed calls, counted or not (backoff) */
	uint64_t retry_at_mono;
};

struct conn_obrcpt;
struct conn_oblock;

struct conn_outbox {
	unsigned db_out, db_keys, db_failed;
	struct brk *brk;             /* connector -> gateway (in conn.brks) */
	pthread_t thread;
	int started;

	pthread_mutex_t mu;          /* guards everything below */
	pthread_cond_t cv;           /* wakes the worker */
	uint64_t gen;                /* bumped by every wake-up */
	int stop;
	uint64_t next_seq;
	long long n, bytes, failed_n;
	struct conn_obrcpt **rcpt;   /* recipient -> messages waiting (hash, chained) */
	size_t nrcpt_buckets;
	char last_error[200];
	uint64_t head_seq;           /* the entry being retried, its failed tries, */
	unsigned head_tries;         /* and when it goes again (mono) */
	uint64_t retry_at_mono;
	struct conn_oblock *blocked; /* worker only: recipients answered 429/507 */

	atomic_ullong outboxed, sent, failed, expired, duplicates, refused_full;
};

struct conn {
	struct conn_cfg cfg;
	struct conn_gw gw;
	struct svc *svc;
	struct auth_key *key;
	struct conn_ws ws;
	struct conn_inbox inbox;
	struct conn_hook hook;
	struct conn_outbox outbox;
	struct brkset *brks;         /* the two breakers: "hook" and "gateway" */
	pthread_mutex_t sink_mu;     /* guards sink_on: breaker events may go to the socket */
	int sink_on;
};

/* conn_str - a borrowed const string for a generated (char *) field; the
 * message is only packed, never freed through it */
static inline char *conn_str(const char *s)
{
	return (char *)(uintptr_t)s;
}

/* --- conn_brk.c ------------------------------------------------------ */

/* The two breakers live in one brkset (common/brkset.h: the same status
 * entries, metrics and log lines as every service's breakers); these are
 * the connector's short forms. Any thread. */

/* conn_brk_allow - BRK_GO, BRK_PROBE or BRK_REFUSE now (a go must be reported) */
int conn_brk_allow(struct brk *b);
/* conn_brk_result - report the call that went: ok (nonzero) or failed */
void conn_brk_result(struct brk *b, int ok);
/* conn_brk_state - the state now; *next_probe_mono (may be NULL): open: when
 * the probe may go, half-open: when an unanswered probe times out, else 0 */
enum brk_state conn_brk_state(struct brk *b, uint64_t *next_probe_mono);
/* conn_brk_json - the breaker as obj[name] in brkset's status fields
 * (boundary, state, failures, windowCalls, windowFailures, timesOpened,
 * next_probe_ms: wall ms, 0 unless open) */
void conn_brk_json(struct brk *b, const char *boundary, cJSON *obj, const char *name);

/* --- conn_ws.c ------------------------------------------------------- */

/* conn_gw_parse - split a gateway URL into *gw; -1 if it is not http(s)://host[:port][/path] */
int conn_gw_parse(const char *url, struct conn_gw *gw);
/* conn_ws_start - start the lws thread (connects at once, reconnects forever) */
enum cr_err conn_ws_start(struct conn *c);
/* conn_ws_stop - close the socket, stop and join the thread, free the queues */
void conn_ws_stop(struct conn *c);
/* conn_ws_send - pack f (borrowed) and queue it; any thread */
enum cr_err conn_ws_send(struct conn *c, const Frame *f, enum conn_fk kind);
/* conn_ws_queue_event - pack ev (borrowed) onto the bounded event queue; any thread */
enum cr_err conn_ws_queue_event(struct conn *c, const HopEvent *ev);
/* conn_ws_event - queue a hop event for envelope e (borrowed); any thread */
void conn_ws_event(struct conn *c, const Envelope *e, Clawrelay__V1__HopKind hop,
    const char *outcome, const char *detail);
/* conn_ws_event_ids - the same from bare IDs (any may be NULL); any thread */
void conn_ws_event_ids(struct conn *c, const char *correlation_id, const char *message_id,
    const char *sender, const char *recipient, const char *trace_id,
    Clawrelay__V1__HopKind hop, const char *outcome, const char *detail);
/* conn_ws_is_open - socket up and reconnect_ack received? */
int conn_ws_is_open(struct conn *c);
/* conn_ws_enqueue - send enqueue{e} and wait up to timeout_ms for its ack;
 * *out (caller frees with protobuf_c_message_free_unpacked) is NULL when the
 * socket closed or timed out first: CR_ERR_UNAVAILABLE / CR_ERR_TIMEOUT */
enum cr_err conn_ws_enqueue(struct conn *c, const Envelope *e, uint64_t timeout_ms,
    EnqueueAck **out);
/* conn_ws_status - add the socket's state to a /v1/status object */
void conn_ws_status(struct conn *c, cJSON *obj);

/* --- conn_inbox.c ---------------------------------------------------- */

/* One inbox entry handed to the hook worker; free with conn_entry_free. */
struct conn_entry {
	void *key;
	size_t klen;
	uint64_t due_ms;             /* first hook call not before (wall clock) */
	uint32_t attempts;
	Envelope *env;
};

/* conn_inbox_open - open the LMDB store under data_dir and start the committer */
enum cr_err conn_inbox_open(struct conn *c);
/* conn_inbox_close - stop the committer and close the store */
void conn_inbox_close(struct conn *c);
/* conn_inbox_deliver_many - handle the envelopes of a deliver(_batch) frame
 * (lws thread): duplicate -> ack at once; full -> refuse; the rest are
 * committed together, then acked in one frame with their events from the
 * committer thread. The envelopes are borrowed. */
void conn_inbox_deliver_many(struct conn *c, Envelope *const *v, size_t n);
/* conn_inbox_head - the first entry in (lane, queue_seq, message_id) order; 1 and *out
 * (caller frees with conn_entry_free) if there is one, 0 if empty, -1 on error */
int conn_inbox_head(struct conn *c, struct conn_entry **out);
/* conn_entry_free - NULL does nothing */
void conn_entry_free(struct conn_entry *en);
/* conn_inbox_done - the hook took it: remove, remember its ID as done. The
 * commit is asynchronous; until it lands, conn_inbox_head skips the entry. */
enum cr_err conn_inbox_done(struct conn *c, const struct conn_entry *en);
/* conn_inbox_retry - store the new attempt count of an entry */
enum cr_err conn_inbox_retry(struct conn *c, const struct conn_entry *en);
/* conn_inbox_dead - move an entry to the dead letters with reason (copied) */
enum cr_err conn_inbox_dead(struct conn *c, const struct conn_entry *en, const char *reason);
/* conn_inbox_wait - block the hook worker until a commit, stop, or
 * deadline_mono (0 = 1 s); returns nonzero when stopping */
int conn_inbox_wait(struct conn *c, uint64_t *seen_gen, uint64_t deadline_mono);
/* conn_inbox_session_reset - a new socket opened (lws thread): forget the
 * queue_seq high-water marks of the previous one */
void conn_inbox_session_reset(struct conn *c);
/* conn_inbox_wake_all - wake waiters for shutdown */
void conn_inbox_wake_all(struct conn *c);
/* conn_inbox_prune - drop done IDs older than the retention (main thread tick) */
void conn_inbox_prune(struct conn *c);
/* conn_inbox_status - add depth and counts to a /v1/status object */
void conn_inbox_status(struct conn *c, cJSON *obj);
/* conn_inbox_meta_get - read a small meta value into buf (NUL-terminated); -1 if absent */
int conn_inbox_meta_get(struct conn *c, const char *name, char *buf, size_t sz);
/* conn_inbox_meta_put - write a small meta value (one txn; not on hot paths) */
void conn_inbox_meta_put(struct conn *c, const char *name, const char *val);

/* --- conn_hook.c ----------------------------------------------------- */

/* conn_hook_start - start the replay worker */
enum cr_err conn_hook_start(struct conn *c);
/* conn_hook_stop - stop and join it (the call in progress finishes first) */
void conn_hook_stop(struct conn *c);
/* conn_hook_status - add hook stats to a /v1/status object */
void conn_hook_status(struct conn *c, cJSON *obj);

/* --- conn_out.c ------------------------------------------------------ */

/* the gateway's answer to one outbound message */
struct conn_out_res {
	int status;                  /* HTTP status (the socket's enqueue_ack carries it too); 0: none */
	int via_socket;
	int local_error;             /* the request could not be built (ours, not the gateway's) */
	int expired;                 /* not sent: past its expires_at_ms */
	int bare;                    /* an error answer without the gateway's JSON error */
	unsigned retry_after_s;
	char message_id[64];
	char correlation_id[130];
	char state[32];              /* queued, or the original's state for a duplicate */
	char code[64];               /* error code */
	char message[256];           /* error message */
	char detail[160];            /* transport error when status is 0 */
};

/* conn_out_send - send e (borrowed; message_id empty, idempotency key set)
 * over the socket when it is open, else as a signed POST; any thread */
void conn_out_send(struct conn *c, const Envelope *e, struct conn_out_res *res);
/* conn_out_class - what res means (conn_out_classify of its fields) */
enum conn_out_class conn_out_class(const struct conn_out_res *res);

/* --- conn_outbox.c --------------------------------------------------- */

/* conn_outbox_open - open its databases in the inbox's store, count what
 * waits, take the gateway breaker (main thread, after conn_inbox_open) */
enum cr_err conn_outbox_open(struct conn *c);
/* conn_outbox_start - start the worker that sends what waits */
enum cr_err conn_outbox_start(struct conn *c);
/* conn_outbox_stop - stop and join the worker (a send in progress ends first) */
void conn_outbox_stop(struct conn *c);
/* conn_outbox_close - free what open took (after stop) */
void conn_outbox_close(struct conn *c);
/* conn_outbox_put - store e (borrowed; idempotency key set) durably at the
 * end of the outbox; *id = its outbox ID. CR_ERR_EXISTS: a message with the
 * same key, recipient and payload already waits (*id = its ID);
 * CR_ERR_CONFLICT: the key waits with another recipient or payload;
 * CR_ERR_FULL: OUTBOX_MAX / OUTBOX_MAX_MB reached. Any thread. */
enum cr_err conn_outbox_put(struct conn *c, const Envelope *e, uint64_t *id);
/* conn_outbox_waiting - messages for recipient in the outbox (any thread) */
long long conn_outbox_waiting(struct conn *c, const char *recipient);
/* conn_outbox_kick - the gateway may be back (socket opened, a send
 * succeeded, the breaker changed): end the head's backoff, wake the worker */
void conn_outbox_kick(struct conn *c);
/* conn_outbox_status - add the outbox to a /v1/status object */
void conn_outbox_status(struct conn *c, cJSON *obj);
/* conn_outbox_api - civetweb handler of GET /v1/outbox and DELETE
 * /v1/outbox/failed; arg is struct conn */
int conn_outbox_api(struct mg_connection *mc, void *arg);

/* --- conn_api.c ------------------------------------------------------ */

/* conn_api_outbound - civetweb handler of POST /v1/outbound/{recipient}; arg is struct conn */
int conn_api_outbound(struct mg_connection *mc, void *arg);

#endif
