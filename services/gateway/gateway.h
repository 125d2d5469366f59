/*
 * gateway.h - private header of clawrelay-gateway (nothing outside
 * services/gateway/ includes it).
 *
 * The gateway is the HTTP + WebSocket edge (DESIGN 5, 6): it checks the
 * Ed25519 proof of every request, turns a POST (or an `enqueue` frame) into an
 * Envelope and asks relay-session to queue it, holds connector sockets and
 * relays `deliver` requests from the bus onto them, and answers status and
 * trace queries for a message's sender or recipient.
 *
 * Threads: struct gw is filled by gw_init on the main thread and is read-only
 * afterwards, except for what its own locks guard (key cache shards, socket
 * registry) and the metric pointers (atomic counters). HTTP handlers run on
 * civetweb's worker threads (one per connection, a socket's whole life on one
 * thread); deliver requests on nats.c's per-subscription threads; enqueue
 * replies on the bus's reply or timer thread.
 */
#ifndef GW_GATEWAY_H
#define GW_GATEWAY_H

#include <pthread.h>
#include <stddef.h>
#include <stdint.h>

#include <civetweb.h>
#include <cJSON.h>

#include "auth.h"
#include "brkset.h"
#include "bus.h"
#include "env.h"
#include "metrics.h"
#include "registry.h"
#include "svc.h"

#define GW_NONCE_BUCKET  "clawrelay_nonces"
#define GW_KEY_SHARDS    64
#define GW_CT_MAX        255  /* Content-Type bytes kept in an envelope */
#define GW_DEFAULT_CT    "application/octet-stream"
#define GW_ENQ_JSON_MAX  2048  /* escaped IDs (<= 6x 130) + state + the rest */
#define GW_WIRE_STACK    8192  /* envelopes up to this size are packed on the stack */

/* gw_mut - a protobuf-c string field from a borrowed const string; the
 * message is only packed, never modified through it */
static inline char *
gw_mut(const char *s)
{
	union { const char *c; char *m; } u = { s };
	return u.m;
}

/* Settings (CLAWRELAY_*) of the gateway itself. */
struct gw_cfg {
	long long max_body_bytes;
	long long clock_window_s;
	long long default_ttl_s;
	long long session_timeout_ms;
	long long trace_timeout_ms;
	long long registry_cache_ms;
	long long ws_max_bad_frames;
	long long ws_enqueue_window;
	long long ws_pending_max;
	long long ws_pending_ms;
	long long sender_rate_per_min, sender_burst, part_open_max_ms;
	struct brkset_cfg brk;
};

struct gw_key;   /* one cached verifier (gateway_auth.c) */
struct gw_sock;  /* one connector socket (gateway_ws.c) */

/* A shard of the verifier cache: agent ID -> struct auth_pubkey. */
struct gw_key_shard {
	pthread_mutex_t mu;
	struct gw_key *head;
};

/* The whole gateway state, one per process. */
struct gw {
	struct gw_cfg cfg;
	struct svc *svc;
	struct bus *bus;             /* borrowed from the skeleton */
	uint32_t partitions;
	kvStore *reg_kv, *nonce_kv;  /* handles belong to the bus */
	kvStore *status_kv;          /* the notifier's bucket, bound lazily; ours */
	pthread_mutex_t status_mu;   /* guards status_kv */
	struct reg_cache *reg;
	struct brkset *brk;          /* this gateway's breakers (gateway_limits.c) */
	struct brk **part_brk;       /* gateway -> relay-session, per partition */
	struct brk *reg_brk;         /* gateway -> registry */
	struct gw_hpart *hparts;     /* per partition: POSTs waiting to be batched */
	struct gw_key_shard keys[GW_KEY_SHARDS];
	struct gw_key *key_graveyard; /* replaced verifiers, freed in gw_fini */
	pthread_mutex_t grave_mu;

	/* socket registry: one mutex (not on the per-message path) */
	pthread_mutex_t sock_mu;
	struct gw_sock *socks;       /* every open socket, registered or not */
	size_t nsocks, nregistered;

	/* hot counters */
	struct metric *m_accepted_http, *m_accepted_ws, *m_sockets, *m_delivers,
	    *m_deliver_acks, *m_events, *m_frames_in, *m_frames_bad;
};

/* Why a request is refused: HTTP status, a code naming the rule, a message. */
struct gw_refusal {
	int status;
	const char *code;
	char message[256];
	unsigned retry_after_s;
};

/* The X-Claw-* headers of one request, borrowed from civetweb's request
 * info (valid until the handler returns); NULL when absent or empty. */
struct gw_req {
	const char *agent, *timestamp, *nonce, *body_sha256, *proof;
	const char *correlation_id, *idempotency_key, *priority, *ttl;
	const char *traceparent, *content_type;
	int priority_v;              /* Clawrelay__V1__Priority */
	uint32_t ttl_s;              /* 0 = default */
};

/* The outcome of one enqueue, for an HTTP answer or an enqueue_ack frame. */
struct gw_enq_result {
	int status;                  /* 202, 200, 409, 429, 507, 503, 400 */
	const char *code;            /* NULL on 200/202 */
	char message[256];
	unsigned retry_after_s;
	char message_id[130];
	char correlation_id[130];
	char state[32];
	uint64_t queue_depth;
};

/* --- gateway_auth.c --------------------------------------------------- */

/* gw_refuse - fill rf (status, code, printf message) and return -1 */
int gw_refuse(struct gw_refusal *rf, int status, const char *code, const char *fmt, ...)
	__attribute__((format(printf, 4, 5)));
/* gw_refusal_count - one log line and one metric for a refusal (any thread) */
void gw_refusal_count(const struct gw_refusal *rf, const char *what, const char *agent,
    const char *correlation_id);
/* gw_http_refuse - count and answer a refusal as a JSON error */
void gw_http_refuse(struct mg_connection *c, const struct gw_refusal *rf, const char *agent,
    const char *correlation_id);
/* gw_auth_request - the proof checks of DESIGN 5 for the current request
 * of c with its (already read) body: headers, body hash, sender, proof and
 * clock window, but not the nonce (gw_auth_nonce, or relay-session for
 * messages). On 0, rq holds the borrowed headers; on -1, rf says why. */
int gw_auth_request(struct gw *g, struct mg_connection *c, const void *body, size_t len,
    struct gw_req *rq, struct gw_refusal *rf);
/* gw_auth_nonce - claim rq's (sender, nonce) in the KV bucket
 * clawrelay_nonces (synchronous): 0, or -1 with rf (401 replay, 503) */
int gw_auth_nonce(struct gw *g, const struct gw_req *rq, struct gw_refusal *rf);
/* gw_check_pair - recipient known (else 404) and sender -> recipient
 * trusted (else 403); 0 or -1 with rf */
int gw_check_pair(struct gw *g, const char *sender, const char *recipient, struct gw_refusal *rf,
    struct reg_trust *trust);

/* --- gateway_limits.c ------------------------------------------------- */

/* gw_limits_init - the breakers (partition, registry) and sender buckets; 0 or -1 */
int gw_limits_init(struct gw *g);
/* gw_limits_fini - free them */
void gw_limits_fini(struct gw *g);
/* gw_sender_allow - the per-sender rate limit: 0, or -1 with rf (429) */
int gw_sender_allow(struct gw *g, const char *sender, struct gw_refusal *rf);
/* gw_part_allow - partition part's breaker lets an enqueue go: 0, or -1 with rf (503) */
int gw_part_allow(struct gw *g, uint32_t part, struct gw_refusal *rf);
/* gw_part_report - report an enqueue request's outcome to part's breaker */
void gw_part_report(struct gw *g, uint32_t part, enum cr_err err, const natsMsg *reply);
/* gw_auth_init / gw_auth_fini - verifier cache set-up and release */
void gw_auth_init(struct gw *g);
void gw_auth_fini(struct gw *g);

/* --- gateway_ingress.c ------------------------------------------------ */

/* gw_enq_map - turn a session answer (err, reply borrowed) into a result */
void gw_enq_map(enum cr_err err, natsMsg *reply, const Envelope *e, struct gw_enq_result *out);
/* gw_enq_map_reply - the same for an EnqueueReply already decoded */
void gw_enq_map_reply(const EnqueueReply *r, const Envelope *e, struct gw_enq_result *out);
/* gw_enq_subject - "<P>.session.<p>.enqueue_batch" for partition p into out */
int gw_enq_subject(struct gw *g, uint32_t part, char *out, size_t sz);
/* gw_fill_trace - trace_id/span_id from traceparent (NULL or malformed:
 * fresh random ones) into the caller's buffers; flags into *flags */
void gw_fill_trace(const char *traceparent, char trace_id[33], char span_id[17], unsigned *flags);
/* Buffers for the IDs the gateway assigns to an envelope. */
struct gw_ids {
	char message_id[ULID_LEN + 1];
	char correlation_id[AUTH_ID_MAX + 1];
	char trace_id[33], span_id[17];
};
/* gw_envelope_finish - the gateway's part of an envelope the caller filled
 * (sender, recipient, payload, priority, optional ids): a new message_id, a
 * correlation_id and trace ids when absent or malformed (strings in ids,
 * which must outlive e), times (ttl_s 0 = default), then env_validate.
 * 0, or -1 with rf (400) */
int gw_envelope_finish(struct gw *g, Envelope *e, struct gw_ids *ids, uint32_t ttl_s,
    struct gw_refusal *rf);
/* gw_enq_json - the JSON body of a 200/202 answer into out (sz bytes;
 * GW_ENQ_JSON_MAX always suffices); its length, or -1 */
int gw_enq_json(const struct gw_enq_result *r, char *out, size_t sz);
/* gw_handle_post - POST /v1/agents/{recipient}/messages (civetweb handler) */
int gw_handle_post(struct mg_connection *c, void *arg);

/* --- gateway_enqbatch.c ---------------------------------------------- */

#define GW_BQ_MAX 256                 /* envelopes in one enqueue_batch at most */
#define GW_BQ_BYTES (512u * 1024u)    /* and bytes */

/* A packed envelope waiting in a partition's batch queue; embedded first
 * in the socket path's frame context and in a POST's waiter. */
struct gw_bq_item {
	struct gw_bq_item *next;
	const void *wire;
	size_t wlen;
};
/* One partition's queue: `busy` while a batch of it is out. The owner's
 * mutex guards it. */
struct gw_bq {
	int busy;
	struct gw_bq_item *head, *tail;
};
/* gw_bq_enter - queue it (1: a batch is out, it waits) or mark the queue
 * busy and leave it alone (0: the caller sends it now as a batch of one) */
int gw_bq_enter(struct gw_bq *q, struct gw_bq_item *it);
/* gw_bq_take - detach the next batch (GW_BQ_MAX items, GW_BQ_BYTES), linked
 * by next; NULL when none waits, and the queue is idle again */
struct gw_bq_item *gw_bq_take(struct gw_bq *q);

struct gw_hpart;
/* gw_enqbatch_init / _fini - the per-partition queues of POSTs */
int gw_enqbatch_init(struct gw *g);
void gw_enqbatch_fini(struct gw *g);
/* gw_enq_http - enqueue a POST's packed envelope e (batched with other
 * POSTs of its partition) and wait for the answer in *out */
void gw_enq_http(struct gw *g, const char *recipient, const void *wire, size_t wlen,
    const Envelope *e, struct gw_enq_result *out);
/* gw_enq_batch_pack - an EnqueueBatch around n packed envelopes (malloc'd) */
unsigned char *gw_enq_batch_pack(const void *const *wires, const size_t *lens, size_t n,
    size_t *len);

/* --- gateway_reqpool.c ----------------------------------------------- */

/* gw_reqpool_init - the gateway's own send-asap connections for hot
 * requests and replies; 0 or -1 (main thread, in gw_init) */
int gw_reqpool_init(struct gw *g);
/* gw_publish_asap - like bus_publish_asap, on a pool connection */
enum cr_err gw_publish_asap(struct gw *g, const char *subj, const void *data, size_t len);
/* An async request's answer: err CR_OK with reply (borrowed), or
 * CR_ERR_UNAVAILABLE / CR_ERR_TIMEOUT with NULL; more = further answers are
 * already waiting on this thread (writes may be held back until the last) */
typedef void (*gw_reply_fn)(void *arg, enum cr_err err, natsMsg *reply, int more);
/* gw_request_async - a request on a pool connection, answered
 * through fn (inbox thread, or the tick for timeouts); on an error return
 * fn is not called */
enum cr_err gw_request_async(struct gw *g, const char *subj, const void *data, size_t len,
    int timeout_ms, gw_reply_fn fn, void *arg);
/* gw_reqpool_tick - fail async requests past their deadline (main thread) */
void gw_reqpool_tick(void);
/* gw_reqpool_pending - async requests awaiting an answer */
size_t gw_reqpool_pending(void);
/* gw_reply_flush - write what the calling thread's answers held back
 * (gateway_ws.c) */
void gw_reply_flush(void);
/* gw_reqpool_connected - every pool connection is up */
int gw_reqpool_connected(void);
/* gw_reqpool_stop - callers go to the bus from now on; wait up to wait_ms
 * for those inside, then close the pool (drain, main thread) */
void gw_reqpool_stop(int wait_ms);
/* gw_reqpool_fini - release the rest (fini, main thread) */
void gw_reqpool_fini(void);

/* --- gateway_query.c -------------------------------------------------- */

/* gw_handle_message - GET /v1/messages/{correlationId} */
int gw_handle_message(struct mg_connection *c, void *arg);
/* gw_handle_trace - GET /v1/traces/{correlationId} */
int gw_handle_trace(struct mg_connection *c, void *arg);
/* --- gateway_ws.c ----------------------------------------------------- */

/* gw_ws_init - register the /v1/connect auth and WebSocket handlers */
void gw_ws_init(struct gw *g);
/* gw_ws_status - sockets connected and their agents into obj */
void gw_ws_status(struct gw *g, cJSON *obj);
/* gw_ws_stats_extra - x.sockets for the stats on the bus (hop_stats_fn; arg = g) */
void gw_ws_stats_extra(void *arg, cJSON *x);
/* gw_ws_tick - forget deliveries whose requester has long given up */
void gw_ws_tick(struct gw *g);
/* gw_ws_close_all - ask every socket to close (drain) */
void gw_ws_close_all(struct gw *g);

#endif
