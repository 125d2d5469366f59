/*
 * gateway_ws.c - GET /v1/connect: connector sockets (DESIGN 6, PROTOCOL.md
 * "WebSocket frames").
 *
 * The upgrade is authenticated in a civetweb auth handler (so that a refusal
 * is a complete HTTP 401), which marks the connection; the connect handler
 * then creates a struct gw_sock. The first frame must be `reconnect`: the
 * gateway makes the socket its agent's current one (closing an older socket
 * of the same agent, whose pending deliveries move over), subscribes
 * <P>.ws.<tok(agent)>, asks relay-session (<P>.session.<p>.connect) and sends
 * back `reconnect_ack`. Deliver requests from the bus (a DeliverBatch: one or
 * more envelopes) become one `deliver_batch` frame each and are answered
 * with one DeliverAckBatch when the connector has acked (`deliver_ack` or
 * `deliver_ack_batch`) or the gateway has refused every envelope. `enqueue`
 * frames are queued asynchronously (a window per socket, the reader only
 * waits when the window is full) and answered with `enqueue_ack`. Per
 * socket and partition one enqueue_batch request is out at a time: frames
 * that come while it is out wait and leave together when it is answered
 * (as Nagle's algorithm does for TCP), so a busy socket costs relay-session
 * one request per round trip, while a lone frame leaves at once. `event`,
 * `event_batch` and `dead_letter` frames are checked and forwarded;
 * `heartbeat` is acked.
 *
 * Threads and ownership:
 *   - A socket's connect, data and close handlers run on its one civetweb
 *     thread; deliver requests on the nats.c thread of its subscription;
 *     enqueue answers on the bus's reply or timer thread.
 *   - Writes to the connection are serialized by sk->wmu, and none happens
 *     after the close handler set sk->wclosed (civetweb frees the connection
 *     after the close handler).
 *   - sk->mu guards the handshake state, the subscription handle, the pending
 *     deliveries, the enqueue window and `closed`; sk->cv signals changes.
 *   - g->sock_mu guards the socket list and `registered`.
 *   - Lock order: g->sock_mu, then sk->mu (an older socket's before the
 *     newer's); sk->wmu is a leaf: nothing is locked while it is held.
 *   - A socket is reference-counted: one for the connection (dropped in the
 *     close handler), one for the subscription (dropped by nats.c's
 *     completion callback), one per enqueue in flight.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>

#include "gateway.h"
#include "hop.h"
#include "http.h"
#include "log.h"
#include "notice.h"
#include "util.h"

#define WS_OP_CONT  0x0
#define WS_OP_TEXT  0x1
#define WS_OP_BIN   0x2
#define WS_OP_CLOSE 0x8
#define WS_OP_PING  0x9
#define WS_OP_PONG  0xa
#define WS_FIN      0x80
#define WS_HDR_MAX  10     /* an unmasked frame header: 2 + 8 length bytes */
#define WS_OUT_MAX  65536  /* held-back frames of one socket sent at this size */
#define WS_DIRTY_MAX 64    /* sockets one reply thread holds acks back for */
#define WS_TEXT_MAX 1024   /* outcome/detail/reason strings kept from frames */
#define WS_STATUS_MAX 500  /* agents listed in /v1/status */

/* A deliver request from the bus: the answers for its envelopes, sent as
 * one DeliverAckBatch when the last is in. Each envelope is resolved once
 * (by the thread that took its pend off a list, or refused it up front),
 * which writes its own slot first; `left` counts the rest. */
struct gw_dreq {
	struct gw *g;
	char *reply;                  /* NULL: nobody waits */
	size_t n;
	size_t left;                  /* atomic */
	DeliverAck *acks;             /* n */
	DeliverAck **ackp;            /* n pointers into acks, for packing */
	char (*ids)[AUTH_ID_MAX + 1]; /* n message IDs */
	char **reasons;               /* n, owned, NULL = none */
};

/* A delivered envelope whose ack has not come yet. */
struct gw_pend {
	char message_id[AUTH_ID_MAX + 1];
	struct gw_dreq *req;
	size_t idx;
	uint64_t at_ms;
	struct gw_pend *next;
};

struct gw_sock {
	struct gw *g;
	struct mg_connection *conn;
	char agent[AUTH_ID_MAX + 1];
	char socket_id[ULID_LEN + 1];
	uint64_t connected_at_ms;
	int refs;                     /* atomic */
	int superseded;               /* atomic: close at the next frame */

	pthread_mutex_t wmu;
	int wclosed;                  /* under wmu */
	struct strbuf out;            /* under wmu: frames held back, sent with the next write */

	pthread_mutex_t mu;
	pthread_cond_t cv;
	int closed, ready;            /* under mu */
	natsSubscription *sub;        /* under mu */
	struct gw_pend *pend;         /* under mu */
	size_t npend;
	long long inflight;           /* enqueues awaiting relay-session, under mu */
	struct gw_bq *eq;             /* under mu: per partition, allocated at the first enqueue */

	int registered;               /* under g->sock_mu */
	struct gw_sock *next;         /* under g->sock_mu */

	unsigned bad;                 /* reader thread only */
	struct strbuf frag;           /* reader thread only */
};

/* An enqueue batch request: its frames in order. */
struct gw_enq_batch {
	struct gw_sock *sk;
	uint32_t part;
	size_t n;
	struct gw_enq_ctx *ctx[];
};

/* An enqueue frame on its way to relay-session. */
struct gw_enq_ctx {
	struct gw_bq_item q;          /* first: the packed Envelope, queue link */
	struct gw_sock *sk;
	uint32_t part;
	uint32_t request_id;
	char message_id[ULID_LEN + 1];
	char correlation_id[AUTH_ID_MAX + 1];
	char recipient[AUTH_ID_MAX + 1];
};

static char auth_mark;  /* connection data set by the auth handler */

static struct mg_connection *
conn_mut(const struct mg_connection *c)
{
	union { const struct mg_connection *c; struct mg_connection *m; } u = { c };
	return u.m;
}

static void
sock_ref(struct gw_sock *sk)
{
	__atomic_add_fetch(&sk->refs, 1, __ATOMIC_ACQ_REL);
}

static char no_reason[1];

static void
dreq_free(struct gw_dreq *r)
{
	if (r == NULL)
		return;
	for (size_t i = 0; r->reasons != NULL && i < r->n; i++)
		free(r->reasons[i]);
	free(r->reasons);
	free(r->ids);
	free(r->ackp);
	free(r->acks);
	free(r->reply);
	free(r);
}

/* a request with n envelopes, ids not set yet; NULL when out of memory */
static struct gw_dreq *
dreq_new(struct gw *g, const char *reply, size_t n)
{
	struct gw_dreq *r = calloc(1, sizeof(*r));

	if (r == NULL)
		return NULL;
	r->g = g;
	r->n = n;
	r->left = n;
	if ((reply != NULL && reply[0] != '\0' && (r->reply = strdup(reply)) == NULL) ||
	    (r->acks = calloc(n ? n : 1, sizeof(*r->acks))) == NULL ||
	    (r->ackp = calloc(n ? n : 1, sizeof(*r->ackp))) == NULL ||
	    (r->ids = calloc(n ? n : 1, sizeof(*r->ids))) == NULL ||
	    (r->reasons = calloc(n ? n : 1, sizeof(*r->reasons))) == NULL) {
		dreq_free(r);
		return NULL;
	}
	for (size_t i = 0; i < n; i++) {
		clawrelay__v1__deliver_ack__init(&r->acks[i]);
		r->acks[i].message_id = r->ids[i];
		r->acks[i].reason = no_reason;
		r->ackp[i] = &r->acks[i];
	}
	return r;
}

/* publish the DeliverAckBatch and free r */
static void
dreq_answer(struct gw_dreq *r)
{
	DeliverAckBatch b = CLAWRELAY__V1__DELIVER_ACK_BATCH__INIT;
	unsigned char buf[4096];
	void *heap = NULL;
	const void *wire;
	size_t len = 0;

	if (r->reply != NULL) {
		b.n_acks = r->n;
		b.acks = r->ackp;
		if ((wire = env_pack_buf(&b.base, buf, sizeof(buf), &heap, &len)) != NULL)
			gw_publish_asap(r->g, r->reply, wire, len);
		free(heap);
	}
	dreq_free(r);
}

/* drop one count of r (the last answers) */
static void
dreq_release(struct gw_dreq *r)
{
	if (__atomic_sub_fetch(&r->left, 1, __ATOMIC_ACQ_REL) == 0)
		dreq_answer(r);
}

/* resolve envelope idx of r: accepted or not, and why */
static void
dreq_set(struct gw_dreq *r, size_t idx, int accepted, const char *reason)
{
	r->acks[idx].accepted = accepted ? 1 : 0;
	if (reason != NULL && reason[0] != '\0' &&
	    (r->reasons[idx] = strndup(reason, WS_TEXT_MAX)) != NULL)
		r->acks[idx].reason = r->reasons[idx];
	dreq_release(r);
}

/* resolve a pend taken off its list, and free it */
static void
pend_resolve(struct gw_pend *p, int accepted, const char *reason)
{
	if (p != NULL) {
		dreq_set(p->req, p->idx, accepted, reason);
		free(p);
	}
}

static void
sock_unref(struct gw_sock *sk)
{
	if (__atomic_sub_fetch(&sk->refs, 1, __ATOMIC_ACQ_REL) != 0)
		return;
	while (sk->pend != NULL) {
		struct gw_pend *p = sk->pend;
		sk->pend = p->next;
		pend_resolve(p, 0, "closed");
	}
	free(sk->eq);
	sb_free(&sk->frag);
	sb_free(&sk->out);
	pthread_cond_destroy(&sk->cv);
	pthread_mutex_destroy(&sk->mu);
	pthread_mutex_destroy(&sk->wmu);
	free(sk);
}

/* the header of an unmasked server frame (FIN set) for a payload of len
 * bytes, written so that it ends at end; returns its length */
static size_t
ws_header(unsigned char *end, int opcode, size_t len)
{
	unsigned char h[WS_HDR_MAX];
	size_t n = 0;

	h[n++] = (unsigned char)(WS_FIN | (opcode & 0x0f));
	if (len < 126) {
		h[n++] = (unsigned char)len;
	} else if (len <= 0xffff) {
		h[n++] = 126;
		h[n++] = (unsigned char)(len >> 8);
		h[n++] = (unsigned char)len;
	} else {
		h[n++] = 127;
		for (int i = 7; i >= 0; i--)
			h[n++] = (unsigned char)((uint64_t)len >> (8 * i));
	}
	memcpy(end - n, h, n);
	return n;
}

/* send n bytes; called with wmu held */
static int
sock_put(struct gw_sock *sk, const void *data, size_t n)
{
	int rc = -1;

	mg_lock_connection(sk->conn);
	if (mg_write(sk->conn, data, n) == (int)n)
		rc = 0;
	mg_unlock_connection(sk->conn);
	return rc;
}

/* write (or, with defer, hold back) one WebSocket message whose payload
 * (len bytes) starts at buf + WS_HDR_MAX: the header goes in front of it,
 * so that header and frame leave in one send (mg_websocket_write makes
 * two), together with whatever was held back before. A held-back message
 * goes out with the next write or sock_flush; its writer must make sure
 * one comes. -1 once the socket is closed or broken. */
static int
sock_send_ex(struct gw_sock *sk, int opcode, unsigned char *buf, size_t len, int defer)
{
	size_t hl = ws_header(buf + WS_HDR_MAX, opcode, len);
	const unsigned char *start = buf + WS_HDR_MAX - hl;
	int rc = -1;

	pthread_mutex_lock(&sk->wmu);
	if (sk->wclosed) {
		sk->out.len = 0;
	} else if (defer || sk->out.len > 0) {
		rc = sb_append(&sk->out, start, hl + len);
		if (rc == 0 && (!defer || sk->out.len >= WS_OUT_MAX))
			rc = sock_put(sk, sk->out.data, sk->out.len);
		if (rc < 0 || !defer || sk->out.len >= WS_OUT_MAX)
			sk->out.len = 0;
	} else {
		rc = sock_put(sk, start, hl + len);
	}
	pthread_mutex_unlock(&sk->wmu);
	return rc;
}

static int
sock_send(struct gw_sock *sk, int opcode, unsigned char *buf, size_t len)
{
	return sock_send_ex(sk, opcode, buf, len, 0);
}

/* send what was held back */
static void
sock_flush(struct gw_sock *sk)
{
	pthread_mutex_lock(&sk->wmu);
	if (sk->out.len > 0 && !sk->wclosed)
		sock_put(sk, sk->out.data, sk->out.len);
	sk->out.len = 0;
	pthread_mutex_unlock(&sk->wmu);
}

/* write one WebSocket message from a payload anywhere (small control frames) */
static int
sock_write_raw(struct gw_sock *sk, int opcode, const void *data, size_t len)
{
	unsigned char buf[WS_HDR_MAX + 256];

	if (len > sizeof(buf) - WS_HDR_MAX)
		len = sizeof(buf) - WS_HDR_MAX;	/* control frames are at most 125 bytes */
	if (len > 0)
		memcpy(buf + WS_HDR_MAX, data, len);
	return sock_send(sk, opcode, buf, len);
}

/* pack and write (defer: hold back, see sock_send_ex) one Frame */
static int
sock_write_frame_ex(struct gw_sock *sk, Frame *f, int defer)
{
	unsigned char stack[4096];
	unsigned char *heap;
	size_t len = 0;
	int rc;

	f->schema_version = ENV_SCHEMA;
	len = protobuf_c_message_get_packed_size(&f->base);
	if (len <= sizeof(stack) - WS_HDR_MAX) {
		protobuf_c_message_pack(&f->base, stack + WS_HDR_MAX);
		return sock_send_ex(sk, WS_OP_BIN, stack, len, defer);
	}
	if ((heap = malloc(WS_HDR_MAX + len)) == NULL)
		return -1;
	protobuf_c_message_pack(&f->base, heap + WS_HDR_MAX);
	rc = sock_send_ex(sk, WS_OP_BIN, heap, len, defer);
	free(heap);
	return rc;
}

static int
sock_write_frame(struct gw_sock *sk, Frame *f)
{
	return sock_write_frame_ex(sk, f, 0);
}

static void
send_error(struct gw_sock *sk, const char *code, const char *msg)
{
	Frame f = CLAWRELAY__V1__FRAME__INIT;
	ErrorFrame ef = CLAWRELAY__V1__ERROR_FRAME__INIT;

	ef.code = gw_mut(code);
	ef.message = gw_mut(msg);
	f.body_case = CLAWRELAY__V1__FRAME__BODY_ERROR;
	f.error = &ef;
	sock_write_frame(sk, &f);
}

static void
send_close(struct gw_sock *sk, unsigned code, const char *reason)
{
	unsigned char buf[128];
	size_t n = strlen(reason);

	if (n > sizeof(buf) - 2)
		n = sizeof(buf) - 2;
	buf[0] = (unsigned char)(code >> 8);
	buf[1] = (unsigned char)(code & 0xff);
	memcpy(buf + 2, reason, n);
	sock_write_raw(sk, WS_OP_CLOSE, buf, n + 2);
}

/* a bad frame: an error frame, a log line, a counter; 0 = close now */
static int
bad_frame(struct gw_sock *sk, const char *code, const char *msg)
{
	struct gw *g = sk->g;
	struct gw_refusal rf = { .status = 400, .code = code };

	snprintf(rf.message, sizeof(rf.message), "%s", msg);
	gw_refusal_count(&rf, "frame", sk->agent, NULL);
	metric_add(g->m_frames_bad, 1);
	send_error(sk, code, msg);
	if (++sk->bad >= (unsigned)g->cfg.ws_max_bad_frames) {
		struct log_ctx lc = { NULL, NULL, sk->agent, NULL };
		log_warn(&lc, "closing socket %s after %u bad frames", sk->socket_id, sk->bad);
		send_close(sk, 1008, "too many bad frames");
		return 0;
	}
	return 1;
}

/* unsubscribe (the completion callback drops the subscription's ref) */
static void
sub_close(natsSubscription *sub)
{
	if (sub == NULL)
		return;
	natsSubscription_Unsubscribe(sub);
	natsSubscription_Destroy(sub);
}

/* --- deliveries ------------------------------------------------------- */

static void
on_sub_done(void *closure)
{
	sock_unref(closure);
}

/* a deliver request from the bus: <P>.ws.<tok(agent)> (nats.c thread) */
static void
on_deliver(natsConnection *nc, natsSubscription *sub, natsMsg *msg, void *closure)
{
	struct gw_sock *sk = closure;
	struct gw *g = sk->g;
	const char *reply = natsMsg_GetReply(msg);
	DeliverBatch *db = NULL, fb = CLAWRELAY__V1__DELIVER_BATCH__INIT;
	struct gw_dreq *r = NULL;
	struct gw_pend **pv = NULL, *old = NULL, *busy = NULL, *p, **pp;
	Envelope **out = NULL;
	size_t n = 0, nout = 0, len = (size_t)natsMsg_GetDataLength(msg);
	struct timespec dl;
	Frame f = CLAWRELAY__V1__FRAME__INIT;
	int more = 0;

	/* with more deliveries waiting for this socket, this thread writes them
	 * in one send after the last one (which always comes here) */
	if (natsSubscription_GetPending(sub, &more, NULL) != NATS_OK)
		more = 0;

	if (len <= ENV_MAX_WIRE)
		db = clawrelay__v1__deliver_batch__unpack(NULL, len,
		    (const uint8_t *)natsMsg_GetData(msg));
	n = db != NULL ? db->n_envelopes : 0;
	if ((r = dreq_new(g, reply, n)) == NULL) {
		log_error(NULL, "deliver request for %s: out of memory", sk->agent);
		goto out;
	}
	if (db == NULL || n == 0) {
		/* an empty answer: delivery retries every message of its request */
		log_warn(NULL, "deliver request for %s refused: %s", sk->agent,
		    db == NULL ? "undecodable" : "no envelopes");
		dreq_answer(r);
		r = NULL;
		goto out;
	}
	if ((pv = calloc(n, sizeof(*pv))) == NULL || (out = calloc(n, sizeof(*out))) == NULL) {
		for (size_t i = 0; i < n; i++)
			dreq_set(r, i, 0, "gateway_out_of_memory");
		r = NULL;
		goto out;
	}
	__atomic_add_fetch(&r->left, 1, __ATOMIC_ACQ_REL);	/* held until the end */
	for (size_t i = 0; i < n; i++) {
		const Envelope *e = db->envelopes[i];
		const char *why = NULL;

		snprintf(r->ids[i], sizeof(r->ids[i]), "%s", e->message_id ? e->message_id : "");
		if (e->schema_version != ENV_SCHEMA || env_validate(e, &why) != CR_OK) {
			log_warn(NULL, "deliver request for %s: envelope refused: %s", sk->agent,
			    why ? why : "unknown schema version");
			dreq_set(r, i, 0, "bad_envelope");
			continue;
		}
		if (strcmp(e->recipient, sk->agent) != 0) {
			struct log_ctx lc = { e->correlation_id, e->message_id, sk->agent, NULL };
			log_warn(&lc, "deliver request for another recipient %s", e->recipient);
			dreq_set(r, i, 0, "wrong_recipient");
			continue;
		}
		if ((pv[i] = calloc(1, sizeof(*pv[i]))) == NULL) {
			dreq_set(r, i, 0, "gateway_out_of_memory");
			continue;
		}
		snprintf(pv[i]->message_id, sizeof(pv[i]->message_id), "%s", e->message_id);
		pv[i]->req = r;
		pv[i]->idx = i;
		pv[i]->at_ms = mono_ms();
	}

	clock_gettime(CLOCK_REALTIME, &dl);
	dl.tv_sec += (time_t)(g->cfg.session_timeout_ms / 1000) + 1;
	pthread_mutex_lock(&sk->mu);
	/* a request can come between our subscription and the reconnect_ack */
	while (!sk->ready && !sk->closed) {
		if (pthread_cond_timedwait(&sk->cv, &sk->mu, &dl) != 0)
			break;
	}
	if (!sk->ready || sk->closed) {
		pthread_mutex_unlock(&sk->mu);
		for (size_t i = 0; i < n; i++)
			pend_resolve(pv[i], 0, "closed");
		goto out;
	}
	for (size_t i = 0; i < n; i++) {
		if ((p = pv[i]) == NULL)
			continue;
		/* a repeated delivery answers the older request's envelope */
		for (pp = &sk->pend; *pp != NULL; pp = &(*pp)->next) {
			if (strcmp((*pp)->message_id, p->message_id) == 0) {
				struct gw_pend *o = *pp;
				*pp = o->next;
				sk->npend--;
				o->next = old;
				old = o;
				break;
			}
		}
		if (sk->npend >= (size_t)g->cfg.ws_pending_max) {
			p->next = busy;
			busy = p;
			pv[i] = NULL;
			continue;
		}
		p->next = sk->pend;
		sk->pend = p;
		sk->npend++;
		out[nout++] = db->envelopes[i];
	}
	pthread_mutex_unlock(&sk->mu);
	while ((p = old) != NULL) {
		old = p->next;
		pend_resolve(p, 0, "redelivered");
	}
	while ((p = busy) != NULL) {
		busy = p->next;
		pend_resolve(p, 0, "busy");
	}
	if (nout == 0)
		goto out;

	fb.n_envelopes = nout;
	fb.envelopes = out;
	f.body_case = CLAWRELAY__V1__FRAME__BODY_DELIVER_BATCH;
	f.deliver_batch = &fb;
	/* stamped before the write: the connector may store it before we return */
	uint64_t sent_us = now_us();
	if (sock_write_frame_ex(sk, &f, more > 0) < 0) {
		struct gw_pend *mine = NULL;

		pthread_mutex_lock(&sk->mu);
		for (size_t i = 0; i < n; i++) {
			for (pp = &sk->pend; pv[i] != NULL && *pp != NULL; pp = &(*pp)->next) {
				if (*pp == pv[i]) {
					*pp = pv[i]->next;
					sk->npend--;
					pv[i]->next = mine;
					mine = pv[i];
					break;
				}
			}
		}
		pthread_mutex_unlock(&sk->mu);
		/* what the close handler took, it answers */
		while ((p = mine) != NULL) {
			mine = p->next;
			pend_resolve(p, 0, "closed");
		}
		log_info(NULL, "deliver frame for %s not written: socket closed", sk->agent);
		goto out;
	}
	metric_add(g->m_delivers, nout);
	for (size_t i = 0; i < nout; i++)
		hop_emit_at(out[i], CLAWRELAY__V1__HOP_KIND__HOP_SOCKET_SENT, "ok", NULL, sent_us);
out:
	if (r != NULL)
		dreq_release(r);
	if (more == 0)
		sock_flush(sk);
	free(pv);
	free(out);
	if (db != NULL)
		clawrelay__v1__deliver_batch__free_unpacked(db, NULL);
	natsMsg_Destroy(msg);
}

/* one ack from the connector: answer the envelope that waits for it */
static int
ack_one(struct gw_sock *sk, const DeliverAck *da)
{
	struct gw_pend *p = NULL, **pp;

	if (da == NULL || da->message_id == NULL || da->message_id[0] == '\0')
		return bad_frame(sk, "bad_deliver_ack", "deliver_ack needs a message_id");
	pthread_mutex_lock(&sk->mu);
	for (pp = &sk->pend; *pp != NULL; pp = &(*pp)->next) {
		if (strcmp((*pp)->message_id, da->message_id) == 0) {
			p = *pp;
			*pp = p->next;
			sk->npend--;
			break;
		}
	}
	pthread_mutex_unlock(&sk->mu);
	metric_add(sk->g->m_deliver_acks, 1);
	if (p == NULL) {
		struct log_ctx lc = { NULL, da->message_id, sk->agent, NULL };
		log_debug(&lc, "deliver_ack without a waiting request (late)");
		return 1;
	}
	pend_resolve(p, da->accepted, da->reason ? da->reason : "");
	return 1;
}

/* deliver_ack frame */
static int
frame_deliver_ack(struct gw_sock *sk, const DeliverAck *da)
{
	return ack_one(sk, da);
}

/* deliver_ack_batch frame: several acks */
static int
frame_deliver_ack_batch(struct gw_sock *sk, const DeliverAckBatch *b)
{
	if (b->n_acks == 0)
		return bad_frame(sk, "bad_deliver_ack", "deliver_ack_batch without acks");
	for (size_t i = 0; i < b->n_acks; i++)
		if (!ack_one(sk, b->acks[i]))
			return 0;
	return 1;
}

/* --- handshake -------------------------------------------------------- */

/* make sk its agent's current socket; returns the superseded one (with a
 * reference the caller drops) or NULL */
static struct gw_sock *
sock_register(struct gw *g, struct gw_sock *sk)
{
	struct gw_sock *old = NULL, *it;
	natsSubscription *old_sub = NULL;

	pthread_mutex_lock(&g->sock_mu);
	for (it = g->socks; it != NULL; it = it->next) {
		if (it != sk && it->registered && strcmp(it->agent, sk->agent) == 0) {
			old = it;
			break;
		}
	}
	if (old != NULL) {
		old->registered = 0;
		g->nregistered--;
		__atomic_store_n(&old->superseded, 1, __ATOMIC_RELEASE);
		sock_ref(old);
		pthread_mutex_lock(&old->mu);
		old_sub = old->sub;
		old->sub = NULL;
		struct gw_pend *moved = old->pend;
		size_t nmoved = old->npend;
		old->pend = NULL;
		old->npend = 0;
		pthread_mutex_unlock(&old->mu);
		if (moved != NULL) {
			struct gw_pend *tail = moved;
			while (tail->next != NULL)
				tail = tail->next;
			pthread_mutex_lock(&sk->mu);
			tail->next = sk->pend;
			sk->pend = moved;
			sk->npend += nmoved;
			pthread_mutex_unlock(&sk->mu);
		}
	}
	sk->registered = 1;
	g->nregistered++;
	pthread_mutex_unlock(&g->sock_mu);
	/* the older subscription goes first, so one request reaches one socket */
	sub_close(old_sub);
	return old;
}

static int
sock_subscribe(struct gw *g, struct gw_sock *sk)
{
	char subj[512];
	natsSubscription *sub = NULL;
	natsStatus s;
	int stale;

	if (bus_subj_agent(g->bus, subj, sizeof(subj), "ws", sk->agent) < 0)
		return -1;
	sock_ref(sk);	/* the subscription's, dropped in on_sub_done */
	s = natsConnection_Subscribe(&sub, bus_nc(g->bus), subj, on_deliver, sk);
	if (s != NATS_OK) {
		sock_unref(sk);
		log_warn(NULL, "subscribe %s: %s", subj, natsStatus_GetText(s));
		return -1;
	}
	natsSubscription_SetOnCompleteCB(sub, on_sub_done, sk);
	natsSubscription_SetPendingLimits(sub, 65536, 256 * 1024 * 1024);
	pthread_mutex_lock(&sk->mu);
	stale = __atomic_load_n(&sk->superseded, __ATOMIC_ACQUIRE) || sk->closed;
	if (!stale)
		sk->sub = sub;
	pthread_mutex_unlock(&sk->mu);
	if (stale) {
		sub_close(sub);
		return -1;
	}
	/* make sure the server has the interest before relay-session dispatches */
	natsConnection_FlushTimeout(bus_nc(g->bus), 2000);
	return 0;
}

/* reconnect frame: register, subscribe, ask relay-session, reconnect_ack */
static int
frame_reconnect(struct gw_sock *sk, const Reconnect *rc)
{
	struct gw *g = sk->g;
	struct gw_sock *old;
	ConnectRequest cr = CLAWRELAY__V1__CONNECT_REQUEST__INIT;
	ProtobufCMessage *m = NULL;
	Frame f = CLAWRELAY__V1__FRAME__INIT;
	natsMsg *reply = NULL;
	char subj[256];
	unsigned char buf[1024];
	size_t len = 0;
	enum cr_err err;
	int ok = 0;
	struct log_ctx lc = { NULL, NULL, sk->agent, NULL };

	old = sock_register(g, sk);
	if (old != NULL) {
		log_info(&lc, "socket %s supersedes %s", sk->socket_id, old->socket_id);
		send_error(old, "superseded", "a newer socket of this agent took over");
		send_close(old, 4000, "superseded");
		sock_unref(old);
	}
	if (sock_subscribe(g, sk) < 0) {
		send_error(sk, "unavailable", "the gateway cannot subscribe for deliveries");
		goto out;
	}
	cr.schema_version = ENV_SCHEMA;
	cr.agent_id = sk->agent;
	cr.gateway_id = gw_mut(svc_instance(g->svc));
	cr.last_received_id = gw_mut(rc->last_received_id ? rc->last_received_id : "");
	cr.offline_since_ms = rc->offline_since_ms;
	cr.socket_id = sk->socket_id;
	if (env_pack_into(&cr.base, buf, sizeof(buf), &len) != CR_OK ||
	    bus_subj(g->bus, subj, sizeof(subj), "session.%u.connect",
	    partition_of(sk->agent, g->partitions)) < 0) {
		send_error(sk, "internal", "the connect request cannot be encoded");
		goto out;
	}
	err = bus_request(g->bus, subj, buf, len, (int)g->cfg.session_timeout_ms, &reply);
	if (err != CR_OK) {
		log_warn(&lc, "connect request: %s", cr_strerror(err));
		send_error(sk, "relay_unavailable", "relay-session did not answer the reconnect");
		goto out;
	}
	if (env_unpack_msg(&clawrelay__v1__reconnect_ack__descriptor, natsMsg_GetData(reply),
	    (size_t)natsMsg_GetDataLength(reply), &m) != CR_OK) {
		log_warn(&lc, "connect request: undecodable answer");
		send_error(sk, "relay_bad_reply", "relay-session's answer cannot be decoded");
		goto out;
	}
	f.body_case = CLAWRELAY__V1__FRAME__BODY_RECONNECT_ACK;
	f.reconnect_ack = (ReconnectAck *)m;
	if (sock_write_frame(sk, &f) < 0)
		goto out;
	pthread_mutex_lock(&sk->mu);
	sk->ready = 1;
	pthread_cond_broadcast(&sk->cv);
	pthread_mutex_unlock(&sk->mu);
	ok = 1;
	log_info(&lc, "connector connected, socket %s, queued %llu/%llu/%llu", sk->socket_id,
	    (unsigned long long)f.reconnect_ack->queued_critical,
	    (unsigned long long)f.reconnect_ack->queued_normal,
	    (unsigned long long)f.reconnect_ack->queued_low);
out:
	if (m != NULL)
		protobuf_c_message_free_unpacked(m, NULL);
	if (reply != NULL)
		natsMsg_Destroy(reply);
	if (!ok)
		send_close(sk, 1011, "reconnect failed");
	return ok;
}

/* --- enqueue ---------------------------------------------------------- */

static void
send_enq_ack_ex(struct gw_sock *sk, uint32_t request_id, const struct gw_enq_result *r, int defer)
{
	Frame f = CLAWRELAY__V1__FRAME__INIT;
	EnqueueAck a = CLAWRELAY__V1__ENQUEUE_ACK__INIT;

	a.request_id = request_id;
	a.http_status = (uint32_t)r->status;
	a.message_id = gw_mut(r->message_id);
	a.correlation_id = gw_mut(r->correlation_id);
	a.error_code = gw_mut(r->code ? r->code : "");
	a.error_message = gw_mut(r->message);
	a.retry_after_s = r->retry_after_s;
	a.state = gw_mut(r->state);
	f.body_case = CLAWRELAY__V1__FRAME__BODY_ENQUEUE_ACK;
	f.enqueue_ack = &a;
	f.request_id = request_id;
	sock_write_frame_ex(sk, &f, defer);
}

static void
send_enq_ack(struct gw_sock *sk, uint32_t request_id, const struct gw_enq_result *r)
{
	send_enq_ack_ex(sk, request_id, r, 0);
}

/* Sockets whose enqueue_acks this (reply) thread holds back, with a
 * reference each, until the last answer of a burst. */
static __thread struct gw_sock *dirty[WS_DIRTY_MAX];
static __thread int ndirty;

/* gw_reply_flush - write what the calling thread's answers held back */
void
gw_reply_flush(void)
{
	while (ndirty > 0) {
		struct gw_sock *sk = dirty[--ndirty];
		sock_flush(sk);
		sock_unref(sk);
	}
}

/* hold sk's ack back (1), or 0 when this thread cannot track another socket */
static int
dirty_add(struct gw_sock *sk)
{
	for (int i = 0; i < ndirty; i++) {
		if (dirty[i] == sk)
			return 1;
	}
	if (ndirty >= WS_DIRTY_MAX)
		return 0;
	sock_ref(sk);
	dirty[ndirty++] = sk;
	return 1;
}

static int
enq_refuse(struct gw_sock *sk, uint32_t request_id, const struct gw_refusal *rf,
    const char *correlation_id)
{
	struct gw_enq_result r;

	memset(&r, 0, sizeof(r));
	r.status = rf->status;
	r.code = rf->code;
	r.retry_after_s = rf->retry_after_s;
	snprintf(r.message, sizeof(r.message), "%s", rf->message);
	snprintf(r.correlation_id, sizeof(r.correlation_id), "%s",
	    correlation_id ? correlation_id : "");
	gw_refusal_count(rf, "enqueue frame", sk->agent, correlation_id);
	send_enq_ack(sk, request_id, &r);
	return 1;
}

static void enq_send(struct gw_sock *sk, uint32_t part, struct gw_bq_item *list);

static void
enq_ctx_free(struct gw_enq_ctx *ctx)
{
	free((void *)(uintptr_t)ctx->q.wire);
	free(ctx);
}

/* relay-session's answer to an enqueue batch (pool inbox thread, or the
 * tick for a timeout); with more answers waiting, the acks are held back
 * and the socket's acks of the burst leave in one send */
static void
on_enq_batch_reply(void *arg, enum cr_err err, natsMsg *reply, int more)
{
	struct gw_enq_batch *b = arg;
	struct gw_sock *sk = b->sk;
	ProtobufCMessage *m = NULL;
	const EnqueueBatchReply *br = NULL;
	struct gw_bq_item *next;
	int hold;

	if (err == CR_OK && reply != NULL &&
	    env_unpack_msg(&clawrelay__v1__enqueue_batch_reply__descriptor,
	    natsMsg_GetData(reply), (size_t)natsMsg_GetDataLength(reply), &m) == CR_OK)
		br = (const EnqueueBatchReply *)m;
	gw_part_report(sk->g, b->part, err, reply);
	hold = dirty_add(sk);
	for (size_t i = 0; i < b->n; i++) {
		struct gw_enq_ctx *ctx = b->ctx[i];
		struct gw_enq_result r;
		Envelope e = CLAWRELAY__V1__ENVELOPE__INIT;

		e.message_id = ctx->message_id;
		e.correlation_id = ctx->correlation_id;
		if (br != NULL && i < br->n_replies && br->replies[i] != NULL)
			gw_enq_map_reply(br->replies[i], &e, &r);
		else if (err == CR_OK && reply != NULL)
			gw_enq_map(CR_ERR_INVALID, NULL, &e, &r);	/* no answer for it */
		else
			gw_enq_map(err, reply, &e, &r);
		if (r.status == 200 || r.status == 202) {
			metric_add(sk->g->m_accepted_ws, 1);
		} else {
			struct gw_refusal rf = { .status = r.status, .code = r.code,
			    .retry_after_s = r.retry_after_s };
			snprintf(rf.message, sizeof(rf.message), "%s", r.message);
			gw_refusal_count(&rf, "enqueue frame", sk->agent, r.correlation_id);
		}
		send_enq_ack_ex(sk, ctx->request_id, &r, hold || i + 1 < b->n);
	}
	protobuf_c_message_free_unpacked(m, NULL);
	pthread_mutex_lock(&sk->mu);
	sk->inflight -= (long long)b->n;
	next = gw_bq_take(&sk->eq[b->part]);
	pthread_cond_broadcast(&sk->cv);
	pthread_mutex_unlock(&sk->mu);
	if (next != NULL)
		enq_send(sk, b->part, next);
	for (size_t i = 0; i < b->n; i++) {
		enq_ctx_free(b->ctx[i]);
		sock_unref(sk);
	}
	free(b);
	if (!more)
		gw_reply_flush();
}

/* no memory for a batch: answer its frames 503 one by one, and let the
 * next waiting ones try (bounded: each round answers at least one frame) */
static void
enq_fail_unsent(struct gw_sock *sk, uint32_t part, struct gw_bq_item *list)
{
	struct gw_bq_item *it, *next;
	struct gw_refusal rf = { 0 };
	long long n = 0;

	log_error(NULL, "enqueue batch for %s: out of memory", sk->agent);
	gw_refuse(&rf, 503, "internal", "out of memory");
	rf.retry_after_s = 1;
	for (it = list; it != NULL; it = next) {
		struct gw_enq_ctx *c = (struct gw_enq_ctx *)it;

		next = it->next;
		enq_refuse(sk, c->request_id, &rf, c->correlation_id);
		enq_ctx_free(c);
		n++;
	}
	pthread_mutex_lock(&sk->mu);
	sk->inflight -= n;
	next = gw_bq_take(&sk->eq[part]);
	pthread_cond_broadcast(&sk->cv);
	pthread_mutex_unlock(&sk->mu);
	if (next != NULL)
		enq_send(sk, part, next);
	while (n-- > 0)
		sock_unref(sk);
}

/* send the frames of list (one partition, in order) as one enqueue_batch
 * request; each frame holds a socket reference and one window place */
static void
enq_send(struct gw_sock *sk, uint32_t part, struct gw_bq_item *list)
{
	struct gw *g = sk->g;
	struct gw_enq_batch *b;
	struct gw_bq_item *it;
	const void *wires[GW_BQ_MAX];
	size_t lens[GW_BQ_MAX], n = 0, len = 0;
	unsigned char *buf = NULL;
	char subj[256];

	for (it = list; it != NULL; it = it->next)
		n++;
	if ((b = malloc(sizeof(*b) + n * sizeof(b->ctx[0]))) == NULL) {
		enq_fail_unsent(sk, part, list);
		return;
	}
	b->sk = sk;
	b->part = part;
	b->n = n;
	n = 0;
	for (it = list; it != NULL; it = it->next) {
		b->ctx[n] = (struct gw_enq_ctx *)it;
		wires[n] = it->wire;
		lens[n] = it->wlen;
		n++;
	}
	if (gw_enq_subject(g, part, subj, sizeof(subj)) < 0 ||
	    (buf = gw_enq_batch_pack(wires, lens, n, &len)) == NULL ||
	    gw_request_async(g, subj, buf, len, (int)g->cfg.session_timeout_ms,
	    on_enq_batch_reply, b) != CR_OK)
		on_enq_batch_reply(b, CR_ERR_UNAVAILABLE, NULL, 0);
	free(buf);
}

/* enqueue frame: the POST's checks minus the proof, then an async request */
static int
frame_enqueue(struct gw_sock *sk, const Frame *fr)
{
	struct gw *g = sk->g;
	const Envelope *in = fr->enqueue;
	uint32_t rid = fr->request_id;
	struct gw_refusal rf = { 0 };
	struct gw_ids ids;
	struct gw_enq_ctx *ctx = NULL;
	struct reg_trust trust = { 0, 0, 0 };
	Envelope e;
	const char *why = NULL, *cid = NULL;
	uint32_t ttl_s = 0;
	uint64_t now = now_ms();
	void *wire = NULL;
	size_t wlen = 0;
	struct timespec dl;
	int full;

	if (in == NULL)
		return bad_frame(sk, "bad_enqueue", "enqueue frame without an envelope");
	if (in->correlation_id != NULL && in->correlation_id[0] != '\0') {
		if (auth_check_correlation_id(in->correlation_id, &why) != CR_OK) {
			gw_refuse(&rf, 400, "invalid_correlation_id", "%s", why);
			return enq_refuse(sk, rid, &rf, NULL);
		}
		cid = in->correlation_id;
	}
	if (in->sender != NULL && in->sender[0] != '\0' && strcmp(in->sender, sk->agent) != 0) {
		gw_refuse(&rf, 400, "invalid_sender", "the sender must be the socket's agent");
		return enq_refuse(sk, rid, &rf, cid);
	}
	if (auth_check_agent_id(in->recipient, &why) != CR_OK) {
		gw_refuse(&rf, 400, "invalid_recipient", "recipient %s", why);
		return enq_refuse(sk, rid, &rf, cid);
	}
	if (in->payload.len > (size_t)g->cfg.max_body_bytes) {
		gw_refuse(&rf, 413, "too_large", "the payload is larger than %lld bytes",
		    g->cfg.max_body_bytes);
		return enq_refuse(sk, rid, &rf, cid);
	}
	if (in->priority != CLAWRELAY__V1__PRIORITY__PRIORITY_NORMAL &&
	    in->priority != CLAWRELAY__V1__PRIORITY__PRIORITY_CRITICAL &&
	    in->priority != CLAWRELAY__V1__PRIORITY__PRIORITY_LOW) {
		gw_refuse(&rf, 400, "invalid_priority", "priority must be critical, normal or low");
		return enq_refuse(sk, rid, &rf, cid);
	}
	if (in->idempotency_key != NULL && in->idempotency_key[0] != '\0' &&
	    auth_check_idempotency_key(in->idempotency_key, &why) != CR_OK) {
		gw_refuse(&rf, 400, "invalid_idempotency_key", "%s", why);
		return enq_refuse(sk, rid, &rf, cid);
	}
	if (in->content_type != NULL && strlen(in->content_type) > GW_CT_MAX) {
		gw_refuse(&rf, 400, "invalid_content_type", "content_type must be at most %d characters",
		    GW_CT_MAX);
		return enq_refuse(sk, rid, &rf, cid);
	}
	if (in->expires_at_ms != 0) {
		uint64_t ttl_ms = in->expires_at_ms > now ? in->expires_at_ms - now : 0;
		ttl_s = (uint32_t)((ttl_ms + 999) / 1000 > AUTH_TTL_MAX_S + 1 ? AUTH_TTL_MAX_S + 1 :
		    (ttl_ms + 999) / 1000);
		if (ttl_s < 1 || ttl_s > AUTH_TTL_MAX_S) {
			gw_refuse(&rf, 400, "invalid_ttl",
			    "expires_at_ms must be 1 s to 604800 s from now");
			return enq_refuse(sk, rid, &rf, cid);
		}
	}
	if (gw_check_pair(g, sk->agent, in->recipient, &rf, &trust) < 0 ||
	    gw_sender_allow(g, sk->agent, &rf) < 0 ||
	    gw_part_allow(g, partition_of(in->recipient, g->partitions), &rf) < 0)
		return enq_refuse(sk, rid, &rf, cid);

	/* a shallow copy: the frame's own strings stay the frame's to free */
	e = *in;
	e.sender = sk->agent;
	e.message_id = NULL;
	e.nonce = gw_mut("");	/* frames carry no proof, hence no nonce */
	e.pair_queue_max = trust.queue_max;
	e.pair_rate_per_min = trust.rate_per_min;
	e.pair_burst = trust.burst;
	if (gw_envelope_finish(g, &e, &ids, ttl_s, &rf) < 0)
		return enq_refuse(sk, rid, &rf, cid);
	if (in->expires_at_ms != 0)
		e.expires_at_ms = in->expires_at_ms;
	cid = e.correlation_id;
	if (env_pack(&e.base, &wire, &wlen) != CR_OK) {
		gw_refuse(&rf, 503, "internal", "the message could not be encoded");
		return enq_refuse(sk, rid, &rf, cid);
	}

	/* the window: wait (bounded) rather than let one socket flood the bus */
	clock_gettime(CLOCK_REALTIME, &dl);
	dl.tv_sec += (time_t)(g->cfg.session_timeout_ms / 1000) + 1;
	pthread_mutex_lock(&sk->mu);
	while (sk->inflight >= g->cfg.ws_enqueue_window && !sk->closed) {
		if (pthread_cond_timedwait(&sk->cv, &sk->mu, &dl) != 0)
			break;
	}
	full = sk->inflight >= g->cfg.ws_enqueue_window;
	if (!full)
		sk->inflight++;
	pthread_mutex_unlock(&sk->mu);
	if (full) {
		free(wire);
		gw_refuse(&rf, 503, "busy", "too many enqueues in flight on this socket");
		return enq_refuse(sk, rid, &rf, cid);
	}

	ctx = calloc(1, sizeof(*ctx));
	/* before any other thread can see the frame: the trace's first hop */
	if (ctx != NULL)
		hop_emit(&e, CLAWRELAY__V1__HOP_KIND__HOP_GATEWAY_ACCEPTED, "ok", NULL);
	pthread_mutex_lock(&sk->mu);
	if (ctx != NULL && sk->eq == NULL)
		sk->eq = calloc((size_t)g->partitions, sizeof(*sk->eq));
	if (ctx == NULL || sk->eq == NULL) {
		sk->inflight--;
		pthread_cond_broadcast(&sk->cv);
		pthread_mutex_unlock(&sk->mu);
		free(ctx);
		free(wire);
		gw_refuse(&rf, 503, "internal", "out of memory");
		return enq_refuse(sk, rid, &rf, cid);
	}
	ctx->sk = sk;
	ctx->request_id = rid;
	ctx->q.wire = wire;
	ctx->q.wlen = wlen;
	ctx->part = partition_of(e.recipient, (uint32_t)g->partitions);
	snprintf(ctx->message_id, sizeof(ctx->message_id), "%s", e.message_id);
	snprintf(ctx->correlation_id, sizeof(ctx->correlation_id), "%s", e.correlation_id);
	snprintf(ctx->recipient, sizeof(ctx->recipient), "%s", e.recipient);
	sock_ref(sk);
	{
		int send_now = !gw_bq_enter(&sk->eq[ctx->part], &ctx->q);

		pthread_mutex_unlock(&sk->mu);
		if (send_now)
			enq_send(sk, ctx->part, &ctx->q);
	}
	return 1;
}

/* --- events and dead letters ----------------------------------------- */

static int
opt_id_ok(const char *s)
{
	return s == NULL || s[0] == '\0' || auth_check_agent_id(s, NULL) == CR_OK;
}

static int
short_text(const char *s)
{
	return s == NULL || strlen(s) <= WS_TEXT_MAX;
}

/* one connector hop event: checked, forwarded (hop_forward batches it) and,
 * for HOOK_ANSWERED ok, turned into the processed receipt and HOP_DELIVERED;
 * NULL, or why it is refused */
static const char *
event_one(struct gw_sock *sk, const HopEvent *in, uint64_t now)
{
	struct gw *g = sk->g;
	HopEvent ev;

	if (in == NULL || in->correlation_id == NULL ||
	    auth_check_correlation_id(in->correlation_id, NULL) != CR_OK)
		return "event needs a well-formed correlation_id";
	if (!opt_id_ok(in->message_id) || !opt_id_ok(in->sender) || !opt_id_ok(in->recipient))
		return "event IDs must be well-formed";
	if (in->hop <= CLAWRELAY__V1__HOP_KIND__HOP_UNKNOWN || in->hop > CLAWRELAY__V1__HOP_KIND__HOP_PROCESSED)
		return "unknown hop";
	if (!short_text(in->outcome) || !short_text(in->detail) || !short_text(in->service) ||
	    !short_text(in->instance) || !short_text(in->trace_id))
		return "event text fields are too long";
	ev = *in;	/* shallow copy: the frame keeps its strings */
	if ((ev.sender == NULL || ev.sender[0] == '\0') && (ev.recipient == NULL || ev.recipient[0] == '\0')) {
		if (ev.hop == CLAWRELAY__V1__HOP_KIND__HOP_CONNECTOR_SENT)
			ev.sender = sk->agent;
		else
			ev.recipient = sk->agent;
	}
	if (!((ev.sender && strcmp(ev.sender, sk->agent) == 0) ||
	    (ev.recipient && strcmp(ev.recipient, sk->agent) == 0)))
		return "the socket's agent must be the event's sender or recipient";
	if (ev.service == NULL || ev.service[0] == '\0')
		ev.service = gw_mut("connector");
	if (ev.instance == NULL || ev.instance[0] == '\0')
		ev.instance = sk->agent;
	if (ev.ts_ms == 0 || ev.ts_ms > now + 1000ull * (uint64_t)g->cfg.clock_window_s) {
		ev.ts_ms = now;
		ev.ts_us = now_us();
	} else if (ev.ts_us == 0) {
		ev.ts_us = ev.ts_ms * 1000;
	}
	ev.schema_version = ENV_SCHEMA;
	hop_forward(&ev);
	metric_add(g->m_events, 1);

	if (ev.hop == CLAWRELAY__V1__HOP_KIND__HOP_HOOK_ANSWERED && ev.outcome != NULL &&
	    strcmp(ev.outcome, "ok") == 0 && ev.recipient != NULL &&
	    strcmp(ev.recipient, sk->agent) == 0) {
		struct log_ctx lc = { ev.correlation_id, ev.message_id, sk->agent, NULL };
		if (ev.sender == NULL || ev.sender[0] == '\0') {
			log_warn(&lc, "hook_answered without a sender: no processed receipt");
			return NULL;
		}
		Receipt r = CLAWRELAY__V1__RECEIPT__INIT;
		r.schema_version = ENV_SCHEMA;
		r.message_id = ev.message_id;
		r.correlation_id = ev.correlation_id;
		r.sender = ev.sender;
		r.recipient = ev.recipient;
		r.state = gw_mut("processed");
		r.at_ms = ev.ts_ms;
		hop_receipt(&r, ev.sender);
		hop_emit_ids(ev.correlation_id, ev.message_id, ev.sender, ev.recipient, ev.trace_id,
		    CLAWRELAY__V1__HOP_KIND__HOP_DELIVERED, "ok", NULL);
		log_debug(&lc, "processed");
	}
	return NULL;
}

/* event frame: a connector's hop, checked and forwarded */
static int
frame_event(struct gw_sock *sk, const HopEvent *in)
{
	const char *why = event_one(sk, in, now_ms());
	return why == NULL ? 1 : bad_frame(sk, "bad_event", why);
}

/* event_batch frame: several hops; the good ones are forwarded, and a batch
 * holding bad ones counts as one bad frame */
static int
frame_event_batch(struct gw_sock *sk, const HopBatch *b)
{
	const char *why = NULL, *w;
	uint64_t now = now_ms();

	if (b == NULL)
		return bad_frame(sk, "bad_event", "event_batch without events");
	for (size_t i = 0; i < b->n_events; i++) {
		if ((w = event_one(sk, b->events[i], now)) != NULL && why == NULL)
			why = w;
	}
	return why == NULL ? 1 : bad_frame(sk, "bad_event", why);
}

/* breaker_event frame: one of the connector's breakers changed state; it
 * has no NATS, so the gateway publishes the event on <P>.breaker.connector,
 * naming the socket's (authenticated) agent */
static int
frame_breaker_event(struct gw_sock *sk, const char *json)
{
	struct brkset_event ev;
	cJSON *root = NULL;
	char subj[256], *out = NULL;
	int ok = 0;

	if (json == NULL || strlen(json) > 1024 ||
	    brkset_event_parse(json, strlen(json), &root, &ev) != 0 ||
	    strcmp(ev.service, "connector") != 0 || strlen(ev.boundary) > 64 ||
	    strlen(ev.name) > 256) {
		cJSON_Delete(root);
		return bad_frame(sk, "bad_breaker_event", "breaker_event must be a connector "
		    "breaker's JSON event (service, boundary, name, state)");
	}
	cJSON_DeleteItemFromObjectCaseSensitive(root, "agent");
	if (cJSON_AddStringToObject(root, "agent", sk->agent) != NULL &&
	    bus_subj(sk->g->bus, subj, sizeof(subj), "breaker.connector") >= 0 &&
	    (out = cJSON_PrintUnformatted(root)) != NULL)
		ok = bus_publish(sk->g->bus, subj, out, strlen(out)) == CR_OK;
	if (!ok)
		log_warn(NULL, "breaker event of %s's connector not published", sk->agent);
	free(out);
	cJSON_Delete(root);
	return 1;
}

/* dead_letter frame: the recipient's connector gave up; tell the sender */
static int
frame_dead_letter(struct gw_sock *sk, const DeadLetter *dl)
{
	struct gw *g = sk->g;
	struct reg_trust t;

	if (dl == NULL || dl->message_id == NULL || auth_check_correlation_id(dl->message_id, NULL) != CR_OK)
		return bad_frame(sk, "bad_dead_letter", "dead_letter needs a well-formed message_id");
	if (dl->correlation_id == NULL || auth_check_correlation_id(dl->correlation_id, NULL) != CR_OK)
		return bad_frame(sk, "bad_dead_letter", "dead_letter needs a well-formed correlation_id");
	if (dl->sender == NULL || auth_check_agent_id(dl->sender, NULL) != CR_OK)
		return bad_frame(sk, "bad_dead_letter", "dead_letter needs a well-formed sender");
	if (!short_text(dl->reason))
		return bad_frame(sk, "bad_dead_letter", "reason is too long");
	struct log_ctx lc = { dl->correlation_id, dl->message_id, sk->agent, NULL };
	/* only a sender that may send to this agent can have had a message here */
	if (reg_cache_trust(g->reg, dl->sender, sk->agent, &t) == CR_ERR_NOT_FOUND)
		return bad_frame(sk, "bad_dead_letter", "that sender may not send to this agent");
	struct notice n = { dl->message_id, dl->correlation_id, dl->sender, sk->agent,
		CLAWRELAY__V1__FAILURE_REASON__FAIL_DEAD_LETTERED, dl->reason, 0, 0 };
	if (notice_publish(g->bus, "failure", &n) != CR_OK)
		log_error(&lc, "dead letter not published");
	hop_emit_ids(dl->correlation_id, dl->message_id, dl->sender, sk->agent, NULL,
	    CLAWRELAY__V1__HOP_KIND__HOP_FAILED, "dead_lettered", dl->reason ? dl->reason : "");
	log_info(&lc, "dead-lettered by the recipient's connector: %s", dl->reason ? dl->reason : "");
	return 1;
}

/* --- civetweb handlers ------------------------------------------------ */

/* one whole frame from the connector; 0 = close the socket */
static int
frame_handle(struct gw_sock *sk, const char *data, size_t len)
{
	struct gw *g = sk->g;
	ProtobufCMessage *m = NULL;
	Frame *f;
	int keep = 1;

	metric_add(g->m_frames_in, 1);
	if (env_unpack_msg(&clawrelay__v1__frame__descriptor, data, len, &m) != CR_OK)
		return bad_frame(sk, "bad_frame", "not a Frame of a known schema version");
	f = (Frame *)m;
	if (!sk->ready && f->body_case != CLAWRELAY__V1__FRAME__BODY_RECONNECT) {
		send_error(sk, "reconnect_required", "the first frame must be reconnect");
		send_close(sk, 1008, "reconnect required");
		keep = 0;
		goto out;
	}
	switch (f->body_case) {
	case CLAWRELAY__V1__FRAME__BODY_RECONNECT:
		if (sk->ready)
			keep = bad_frame(sk, "bad_frame", "reconnect was already done on this socket");
		else
			keep = frame_reconnect(sk, f->reconnect);
		break;
	case CLAWRELAY__V1__FRAME__BODY_DELIVER_ACK:
		keep = frame_deliver_ack(sk, f->deliver_ack);
		break;
	case CLAWRELAY__V1__FRAME__BODY_DELIVER_ACK_BATCH:
		keep = frame_deliver_ack_batch(sk, f->deliver_ack_batch);
		break;
	case CLAWRELAY__V1__FRAME__BODY_ENQUEUE:
		keep = frame_enqueue(sk, f);
		break;
	case CLAWRELAY__V1__FRAME__BODY_EVENT:
		keep = frame_event(sk, f->event);
		break;
	case CLAWRELAY__V1__FRAME__BODY_EVENT_BATCH:
		keep = frame_event_batch(sk, f->event_batch);
		break;
	case CLAWRELAY__V1__FRAME__BODY_DEAD_LETTER:
		keep = frame_dead_letter(sk, f->dead_letter);
		break;
	case CLAWRELAY__V1__FRAME__BODY_BREAKER_EVENT:
		keep = frame_breaker_event(sk, f->breaker_event);
		break;
	case CLAWRELAY__V1__FRAME__BODY_HEARTBEAT: {
		Frame a = CLAWRELAY__V1__FRAME__INIT;
		Heartbeat hb = CLAWRELAY__V1__HEARTBEAT__INIT;
		hb.ts_ms = now_ms();
		a.body_case = CLAWRELAY__V1__FRAME__BODY_HEARTBEAT_ACK;
		a.heartbeat_ack = &hb;
		keep = sock_write_frame(sk, &a) == 0;
		break;
	}
	default:
		keep = bad_frame(sk, "unexpected_frame", "a connector does not send this frame");
		break;
	}
out:
	protobuf_c_message_free_unpacked(m, NULL);
	return keep;
}

static int
ws_auth(struct mg_connection *c, void *arg)
{
	struct gw *g = arg;
	const struct mg_request_info *ri = mg_get_request_info(c);
	const char *up = mg_get_header(c, "Upgrade");
	struct gw_refusal rf = { 0 };
	struct gw_req rq;

	memset(&rq, 0, sizeof(rq));
	if (strcmp(ri->request_method, "GET") != 0) {
		gw_refuse(&rf, 405, "method_not_allowed", "use GET with a WebSocket upgrade");
		goto refuse;
	}
	if (up == NULL || strcasecmp(up, "websocket") != 0 || mg_get_header(c, "Connection") == NULL) {
		gw_refuse(&rf, 400, "websocket_required", "GET /v1/connect needs a WebSocket upgrade");
		goto refuse;
	}
	if (svc_stopping(g->svc)) {
		gw_refuse(&rf, 503, "draining", "this gateway is shutting down");
		goto refuse;
	}
	if (gw_auth_request(g, c, "", 0, &rq, &rf) < 0 || gw_auth_nonce(g, &rq, &rf) < 0)
		goto refuse;
	mg_set_user_connection_data(c, &auth_mark);
	return 1;
refuse:
	gw_http_refuse(c, &rf, rq.agent, NULL);
	return 0;
}

static int
ws_connect(const struct mg_connection *c, void *arg)
{
	struct gw *g = arg;
	const char *agent = mg_get_header(c, "X-Claw-Agent");
	struct gw_sock *sk;

	/* only a connection the auth handler let through just now */
	if (mg_get_user_connection_data(c) != &auth_mark || agent == NULL)
		return 1;
	mg_set_user_connection_data(c, NULL);
	sk = calloc(1, sizeof(*sk));
	if (sk == NULL)
		return 1;
	sk->g = g;
	sk->conn = conn_mut(c);
	snprintf(sk->agent, sizeof(sk->agent), "%s", agent);
	ulid_new(sk->socket_id);
	sk->connected_at_ms = now_ms();
	sk->refs = 1;
	pthread_mutex_init(&sk->wmu, NULL);
	pthread_mutex_init(&sk->mu, NULL);
	pthread_cond_init(&sk->cv, NULL);
	sb_init(&sk->frag);
	sb_init(&sk->out);
	pthread_mutex_lock(&g->sock_mu);
	sk->next = g->socks;
	g->socks = sk;
	g->nsocks++;
	metric_set(g->m_sockets, (int64_t)g->nsocks);
	pthread_mutex_unlock(&g->sock_mu);
	mg_set_user_connection_data(c, sk);
	return 0;
}

static int
ws_data(struct mg_connection *c, int bits, char *data, size_t len, void *arg)
{
	struct gw *g = arg;
	struct gw_sock *sk = mg_get_user_connection_data(c);
	int op = bits & 0x0f, fin = (bits & WS_FIN) != 0;
	size_t cap = (size_t)g->cfg.max_body_bytes + 65536;
	int keep;

	if (sk == NULL || sk == (void *)&auth_mark)
		return 0;
	if (__atomic_load_n(&sk->superseded, __ATOMIC_ACQUIRE) || svc_stopping(g->svc))
		return 0;
	switch (op) {
	case WS_OP_CLOSE:
		return 0;
	case WS_OP_PING:
		sock_write_raw(sk, WS_OP_PONG, data, len);
		return 1;
	case WS_OP_PONG:
		return 1;
	case WS_OP_TEXT:
		return bad_frame(sk, "bad_frame", "frames are binary protobuf");
	case WS_OP_BIN:
		if (fin && sk->frag.len == 0)
			return frame_handle(sk, data, len);
		sk->frag.len = 0;
		/* fall through */
	case WS_OP_CONT:
		if (sk->frag.len + len > cap) {
			sk->frag.len = 0;
			send_error(sk, "too_large", "frame larger than the gateway takes");
			send_close(sk, 1009, "frame too large");
			return 0;
		}
		if (sb_append(&sk->frag, data, len) < 0)
			return 0;
		if (!fin)
			return 1;
		keep = frame_handle(sk, sk->frag.data, sk->frag.len);
		sk->frag.len = 0;
		return keep;
	default:
		return bad_frame(sk, "bad_frame", "unknown WebSocket opcode");
	}
}

static void
ws_close(const struct mg_connection *c, void *arg)
{
	struct gw *g = arg;
	struct gw_sock *sk = mg_get_user_connection_data(c);
	struct gw_sock **pp;
	struct gw_pend *pend;
	natsSubscription *sub;
	int was_registered, was_ready;

	if (sk == NULL || sk == (void *)&auth_mark) {
		mg_set_user_connection_data(c, NULL);
		return;
	}
	mg_set_user_connection_data(c, NULL);
	pthread_mutex_lock(&sk->wmu);
	sk->wclosed = 1;
	pthread_mutex_unlock(&sk->wmu);

	pthread_mutex_lock(&g->sock_mu);
	for (pp = &g->socks; *pp != NULL; pp = &(*pp)->next) {
		if (*pp == sk) {
			*pp = sk->next;
			g->nsocks--;
			break;
		}
	}
	was_registered = sk->registered;
	if (was_registered) {
		sk->registered = 0;
		g->nregistered--;
	}
	metric_set(g->m_sockets, (int64_t)g->nsocks);
	pthread_mutex_unlock(&g->sock_mu);

	pthread_mutex_lock(&sk->mu);
	sk->closed = 1;
	was_ready = sk->ready;
	sub = sk->sub;
	sk->sub = NULL;
	pend = sk->pend;
	sk->pend = NULL;
	sk->npend = 0;
	pthread_cond_broadcast(&sk->cv);
	pthread_mutex_unlock(&sk->mu);

	sub_close(sub);
	while (pend != NULL) {
		struct gw_pend *p = pend;
		pend = p->next;
		pend_resolve(p, 0, "closed");
	}
	struct log_ctx lc = { NULL, NULL, sk->agent, NULL };
	if (was_registered && was_ready) {
		ConnectRequest cr = CLAWRELAY__V1__CONNECT_REQUEST__INIT;
		unsigned char buf[1024];
		char subj[256];
		size_t len = 0;
		cr.schema_version = ENV_SCHEMA;
		cr.agent_id = sk->agent;
		cr.gateway_id = gw_mut(svc_instance(g->svc));
		cr.socket_id = sk->socket_id;
		cr.disconnect = 1;
		cr.offline_since_ms = now_ms();
		if (env_pack_into(&cr.base, buf, sizeof(buf), &len) == CR_OK &&
		    bus_subj(g->bus, subj, sizeof(subj), "session.%u.disconnect",
		    partition_of(sk->agent, g->partitions)) >= 0)
			bus_publish_asap(g->bus, subj, buf, len);
	}
	log_info(&lc, "connector disconnected, socket %s%s", sk->socket_id,
	    was_registered ? "" : " (superseded or never reconnected)");
	sock_unref(sk);
}

/* gw_ws_init - register the /v1/connect auth and WebSocket handlers */
void
gw_ws_init(struct gw *g)
{
	mg_set_auth_handler(svc_http(g->svc), "/v1/connect", ws_auth, g);
	mg_set_websocket_handler(svc_http(g->svc), "/v1/connect", ws_connect, NULL, ws_data,
	    ws_close, g);
}

/* gw_ws_status - sockets connected and their agents */
void
gw_ws_status(struct gw *g, cJSON *obj)
{
	cJSON *ws = cJSON_AddObjectToObject(obj, "sockets");
	cJSON *list;
	int n = 0;

	if (ws == NULL)
		return;
	pthread_mutex_lock(&g->sock_mu);
	cJSON_AddNumberToObject(ws, "open", (double)g->nsocks);
	cJSON_AddNumberToObject(ws, "connected", (double)g->nregistered);
	list = cJSON_AddArrayToObject(ws, "agents");
	for (struct gw_sock *sk = g->socks; sk != NULL && list != NULL; sk = sk->next) {
		if (!sk->registered || n++ >= WS_STATUS_MAX)
			continue;
		cJSON *a = cJSON_CreateObject();
		if (a == NULL)
			break;
		cJSON_AddStringToObject(a, "agent", sk->agent);
		cJSON_AddStringToObject(a, "socketId", sk->socket_id);
		cJSON_AddNumberToObject(a, "connectedAt", (double)sk->connected_at_ms);
		pthread_mutex_lock(&sk->mu);
		cJSON_AddNumberToObject(a, "pendingDeliveries", (double)sk->npend);
		cJSON_AddNumberToObject(a, "enqueuesInFlight", (double)sk->inflight);
		pthread_mutex_unlock(&sk->mu);
		cJSON_AddItemToArray(list, a);
	}
	pthread_mutex_unlock(&g->sock_mu);
}

/* gw_ws_tick - forget deliveries whose requester has long given up */
void
gw_ws_tick(struct gw *g)
{
	uint64_t cutoff = mono_ms();
	struct gw_pend *stale = NULL, *p;

	if (cutoff <= (uint64_t)g->cfg.ws_pending_ms)
		return;
	cutoff -= (uint64_t)g->cfg.ws_pending_ms;
	pthread_mutex_lock(&g->sock_mu);
	for (struct gw_sock *sk = g->socks; sk != NULL; sk = sk->next) {
		pthread_mutex_lock(&sk->mu);
		for (struct gw_pend **pp = &sk->pend; *pp != NULL;) {
			if ((*pp)->at_ms < cutoff) {
				p = *pp;
				*pp = p->next;
				sk->npend--;
				p->next = stale;
				stale = p;
			} else {
				pp = &(*pp)->next;
			}
		}
		pthread_mutex_unlock(&sk->mu);
	}
	pthread_mutex_unlock(&g->sock_mu);
	/* answered outside the locks (an answer is a publish) */
	while ((p = stale) != NULL) {
		stale = p->next;
		pend_resolve(p, 0, "timeout");
	}
}

/* gw_ws_close_all - ask every socket to close (drain): connectors reconnect
 * to another gateway */
void
gw_ws_close_all(struct gw *g)
{
	pthread_mutex_lock(&g->sock_mu);
	for (struct gw_sock *sk = g->socks; sk != NULL; sk = sk->next) {
		__atomic_store_n(&sk->superseded, 1, __ATOMIC_RELEASE);
		send_close(sk, 1001, "gateway shutting down");
	}
	pthread_mutex_unlock(&g->sock_mu);
}

/* gw_ws_stats_extra - the registered sockets for the stats the hop
 * flusher publishes (metrics-collector: connectors and their uptime):
 * x.sockets = [{agent, since_ms}]; runs on the flusher thread */
void
gw_ws_stats_extra(void *arg, cJSON *x)
{
	struct gw *g = arg;
	cJSON *list = cJSON_AddArrayToObject(x, "sockets");

	if (list == NULL)
		return;
	pthread_mutex_lock(&g->sock_mu);
	for (struct gw_sock *sk = g->socks; sk != NULL; sk = sk->next) {
		cJSON *a;
		if (!sk->registered || (a = cJSON_CreateObject()) == NULL)
			continue;
		cJSON_AddStringToObject(a, "agent", sk->agent);
		cJSON_AddNumberToObject(a, "since_ms", (double)sk->connected_at_ms);
		cJSON_AddItemToArray(list, a);
	}
	pthread_mutex_unlock(&g->sock_mu);
}
