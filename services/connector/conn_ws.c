/*
 * conn_ws.c - the connector's WebSocket client to the gateway (libwebsockets).
 *
 * One lws context runs on its own thread ("lws thread"). It connects to
 * <gateway>/v1/connect with the DESIGN section 5 proof on the upgrade, sends
 * reconnect{last_received_id, offline_since_ms} as the first frame, and once
 * the reconnect_ack arrives the socket is OPEN: queued frames flow, deliver
 * frames go to the inbox, enqueue_acks wake the local API's waiters. On any
 * close or failure it reconnects after a jittered exponential backoff
 * (backoff_ms, reset by each reconnect_ack). A heartbeat goes out every
 * HEARTBEAT_S; silence for three heartbeats closes the socket.
 *
 * Outgoing frames: three queues under ws.mu. ctrl (acks, enqueue,
 * heartbeats) is only taken while OPEN and is emptied when the socket goes
 * (an ack for a gone socket means nothing: the relay redelivers and the inbox
 * drops the duplicate); keep (dead letters) and ev (hop events as packed
 * HopEvents, bounded, oldest dropped) survive reconnects and drain after the
 * next reconnect_ack. The writer drains ctrl, then keep, then ev, several
 * frames per writable callback (as long as lws buffered no partial write);
 * queued events leave as one event_batch frame (CLAWRELAY_EVENT_BATCH) or
 * as single event frames, built by hand around the packed events.
 *
 * Wake-ups: another thread's frame makes one lws_cancel_service until the
 * lws thread saw it (ws.kicked), so a burst costs one wake-up. Events do
 * not wake the lws thread on their own: they ride with the next control
 * frame, or when the event pacer thread (ev_pacer: every EV_FLUSH_US while
 * events flow, asleep after an idle period) kicks the lws thread.
 *
 * Threads: wsi, rx, need_hello, attempt, last_rx_mono and the timers belong
 * to the lws thread; the pacer only takes ws.mu and kicks. Other threads only take ws.mu, queue, and call
 * lws_cancel_service (under ws.mu, so it never races the context's
 * destruction); the lws thread then asks for a writable callback.
 */
#include <errno.h>
#include <stddef.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <libwebsockets.h>

#include "auth.h"
#include "conn.h"
#include "log.h"
#include "metrics.h"

struct conn_waiter {
	struct conn_waiter *next;
	uint32_t req_id;
	int done;
	EnqueueAck *ack;
	pthread_cond_t cv;
};

/* timers: the lws thread only */
static lws_sorted_usec_list_t sul_connect, sul_heartbeat;
/* events that no control frame took along wait at most about this long */
#define EV_FLUSH_US 5000
static struct conn *g_conn;   /* the one connector; set before the thread starts */
static char ws_path[300];
static char ws_host[300];
static uint64_t hs_started_mono;
static int active;            /* a connection attempt or socket exists */
static struct metric *m_connects, *m_up, *m_ev_dropped;

/* conn_gw_parse - split a gateway URL into *gw; -1 if it is not http(s)://host[:port][/path] */
int conn_gw_parse(const char *url, struct conn_gw *gw)
{
	const char *p, *h, *hend, *slash;
	size_t n;
	long port;

	memset(gw, 0, sizeof(*gw));
	if (strncmp(url, "http://", 7) == 0 || strncmp(url, "ws://", 5) == 0) {
		p = url + (url[0] == 'h' ? 7 : 5);
		gw->port = 80;
	} else if (strncmp(url, "https://", 8) == 0 || strncmp(url, "wss://", 6) == 0) {
		p = url + (url[0] == 'h' ? 8 : 6);
		gw->tls = 1;
		gw->port = 443;
	} else {
		return -1;
	}
	h = p;
	slash = strchr(h, '/');
	hend = slash ? slash : h + strlen(h);
	{
		const char *colon = memchr(h, ':', (size_t)(hend - h));

		if (colon) {
			char *end;

			port = strtol(colon + 1, &end, 10);
			if (end != hend || port < 1 || port > 65535)
				return -1;
			gw->port = (int)port;
			hend = colon;
		}
	}
	n = (size_t)(hend - h);
	if (n == 0 || n >= sizeof(gw->host))
		return -1;
	memcpy(gw->host, h, n);
	gw->host[n] = '\0';
	if (slash) {
		n = strlen(slash);
		while (n > 0 && slash[n - 1] == '/')
			n--;
		if (n >= sizeof(gw->base))
			return -1;
		memcpy(gw->base, slash, n);
		gw->base[n] = '\0';
	}
	return 0;
}

/* --- frame queues (ws.mu held) --------------------------------------- */

static void fq_push(struct conn_fq *q, struct conn_frame *fr)
{
	fr->next = NULL;
	if (q->tail)
		q->tail->next = fr;
	else
		q->head = fr;
	q->tail = fr;
	q->n++;
}

static struct conn_frame *fq_pop(struct conn_fq *q)
{
	struct conn_frame *fr = q->head;

	if (fr) {
		q->head = fr->next;
		if (!q->head)
			q->tail = NULL;
		q->n--;
	}
	return fr;
}

static void frame_free(struct conn_frame *fr)
{
	if (fr) {
		if (!fr->inline_buf)
			free(fr->buf);
		free(fr);
	}
}

static void fq_clear(struct conn_fq *q)
{
	struct conn_frame *fr;

	while ((fr = fq_pop(q)))
		frame_free(fr);
}

static struct conn_frame *frame_pack(const Frame *f)
{
	size_t n = protobuf_c_message_get_packed_size(&f->base), len = 0;
	struct conn_frame *fr = calloc(1, sizeof(*fr));

	if (!fr || !(fr->buf = malloc(LWS_PRE + n + 1)))
		goto fail;
	fr->inline_buf = 0;
	if (env_pack_into(&f->base, fr->buf + LWS_PRE, n + 1, &len) != CR_OK)
		goto fail;
	fr->len = len;
	return fr;
fail:
	frame_free(fr);
	return NULL;
}

/* ws.mu held: make the lws thread look at the queues. One kick is enough
 * until the lws thread has seen it (EVENT_WAIT_CANCELLED clears the flag),
 * so a burst of frames costs one wake-up, not one pipe write each. */
static void kick_locked(struct conn_ws *ws)
{
	if (!ws->kicked && ws->ctx && ws->state == CONN_WS_OPEN) {
		ws->kicked = 1;
		lws_cancel_service(ws->ctx);
	}
}

/* conn_ws_send - pack f (borrowed) and queue it; any thread */
enum cr_err conn_ws_send(struct conn *c, const Frame *f, enum conn_fk kind)
{
	struct conn_ws *ws = &c->ws;
	struct conn_frame *fr = frame_pack(f);
	enum cr_err e = CR_OK;

	if (!fr)
		return CR_ERR_NOMEM;
	if (kind == CONN_FK_EVENT) {
		/* only HopEvent bodies go on the event queue (see conn_ws_queue_event) */
		frame_free(fr);
		return f->body_case == CLAWRELAY__V1__FRAME__BODY_EVENT && f->event ?
		    conn_ws_queue_event(c, f->event) : CR_ERR_INVALID;
	}
	pthread_mutex_lock(&ws->mu);
	if (kind == CONN_FK_CTRL && ws->state != CONN_WS_OPEN) {
		e = CR_ERR_UNAVAILABLE;
	} else {
		fq_push(kind == CONN_FK_CTRL ? &ws->q_ctrl : &ws->q_keep, fr);
		fr = NULL;
		kick_locked(ws);
	}
	pthread_mutex_unlock(&ws->mu);
	frame_free(fr);
	return e;
}

/* conn_ws_queue_event - pack ev (borrowed) onto the bounded event queue; the
 * writer wraps queued events into event / event_batch frames. Any thread. */
enum cr_err conn_ws_queue_event(struct conn *c, const HopEvent *ev)
{
	struct conn_ws *ws = &c->ws;
	size_t n = protobuf_c_message_get_packed_size(&ev->base), len = 0;
	struct conn_frame *fr = malloc(sizeof(*fr) + n + 1), *old = NULL;

	if (!fr)
		return CR_ERR_NOMEM;
	fr->buf = (unsigned char *)(fr + 1);
	if (env_pack_into(&ev->base, fr->buf, n + 1, &len) != CR_OK) {
		free(fr);
		return CR_ERR_INTERNAL;
	}
	fr->len = len;
	fr->inline_buf = 1;
	pthread_mutex_lock(&ws->mu);
	if ((long long)ws->q_ev.n >= c->cfg.event_queue_max) {
		old = fq_pop(&ws->q_ev);
		ws->ev_dropped++;
	}
	fq_push(&ws->q_ev, fr);
	ws->ev_seq++;
	/* events ride with the next control frame, or go when the pacer says;
	 * only a dormant pacer needs waking */
	if (!ws->ev_timer_on && ws->state == CONN_WS_OPEN) {
		ws->ev_timer_on = 1;
		pthread_cond_signal(&ws->ev_cv);
	}
	pthread_mutex_unlock(&ws->mu);
	if (old) {
		metric_add(m_ev_dropped, 1);
		frame_free(old);
	}
	return CR_OK;
}

/* conn_ws_event_ids - the same from bare IDs (any may be NULL); any thread */
void conn_ws_event_ids(struct conn *c, const char *correlation_id, const char *message_id,
    const char *sender, const char *recipient, const char *trace_id,
    Clawrelay__V1__HopKind hop, const char *outcome, const char *detail)
{
	HopEvent ev = CLAWRELAY__V1__HOP_EVENT__INIT;
	uint64_t us = now_us();

	ev.schema_version = ENV_SCHEMA;
	ev.correlation_id = conn_str(correlation_id);
	ev.message_id = conn_str(message_id);
	ev.hop = hop;
	ev.ts_us = us;
	ev.ts_ms = us / 1000u;
	ev.service = conn_str("connector");
	ev.instance = conn_str(svc_instance(c->svc));
	ev.outcome = conn_str(outcome);
	ev.detail = conn_str(detail);
	ev.sender = conn_str(sender);
	ev.recipient = conn_str(recipient);
	ev.trace_id = conn_str(trace_id);
	conn_ws_queue_event(c, &ev);
}

/* conn_ws_event - queue a hop event for envelope e (borrowed); any thread */
void conn_ws_event(struct conn *c, const Envelope *e, Clawrelay__V1__HopKind hop,
    const char *outcome, const char *detail)
{
	conn_ws_event_ids(c, e->correlation_id, e->message_id, e->sender, e->recipient,
	    e->trace_id, hop, outcome, detail);
}

/* conn_ws_is_open - socket up and reconnect_ack received? */
int conn_ws_is_open(struct conn *c)
{
	int open;

	pthread_mutex_lock(&c->ws.mu);
	open = c->ws.state == CONN_WS_OPEN;
	pthread_mutex_unlock(&c->ws.mu);
	return open;
}

/* ws.mu held: the socket went away */
static void fail_waiters_locked(struct conn_ws *ws)
{
	struct conn_waiter *w;

	for (w = ws->waiters; w; w = w->next) {
		w->done = 1;
		pthread_cond_signal(&w->cv);
	}
}

/* conn_ws_enqueue - send enqueue{e} and wait up to timeout_ms for its ack;
 * *out (caller frees with protobuf_c_message_free_unpacked) is NULL when the
 * socket closed or timed out first: CR_ERR_UNAVAILABLE / CR_ERR_TIMEOUT */
enum cr_err conn_ws_enqueue(struct conn *c, const Envelope *e, uint64_t timeout_ms,
    EnqueueAck **out)
{
	struct conn_ws *ws = &c->ws;
	struct conn_waiter w, **pp;
	struct conn_frame *fr = NULL;
	Frame f = CLAWRELAY__V1__FRAME__INIT;
	struct timespec ts;
	uint64_t ns;
	enum cr_err err = CR_OK;

	*out = NULL;
	memset(&w, 0, sizeof(w));
	pthread_cond_init(&w.cv, NULL);
	pthread_mutex_lock(&ws->mu);
	if (ws->state != CONN_WS_OPEN) {
		pthread_mutex_unlock(&ws->mu);
		err = CR_ERR_UNAVAILABLE;
		goto out;
	}
	if (++ws->next_req_id == 0)
		ws->next_req_id = 1;
	w.req_id = ws->next_req_id;
	pthread_mutex_unlock(&ws->mu);

	f.schema_version = ENV_SCHEMA;
	f.request_id = w.req_id;
	f.body_case = CLAWRELAY__V1__FRAME__BODY_ENQUEUE;
	f.enqueue = (Envelope *)(uintptr_t)e;
	if (!(fr = frame_pack(&f))) {
		err = CR_ERR_NOMEM;
		goto out;
	}

	clock_gettime(CLOCK_REALTIME, &ts);
	ns = (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec + timeout_ms * 1000000ull;
	ts.tv_sec = (time_t)(ns / 1000000000ull);
	ts.tv_nsec = (long)(ns % 1000000000ull);

	pthread_mutex_lock(&ws->mu);
	if (ws->state != CONN_WS_OPEN) {
		pthread_mutex_unlock(&ws->mu);
		err = CR_ERR_UNAVAILABLE;
		goto out;
	}
	w.next = ws->waiters;
	ws->waiters = &w;
	fq_push(&ws->q_ctrl, fr);
	fr = NULL;
	kick_locked(ws);
	while (!w.done) {
		if (pthread_cond_timedwait(&w.cv, &ws->mu, &ts) == ETIMEDOUT)
			break;
	}
	for (pp = &ws->waiters; *pp; pp = &(*pp)->next) {
		if (*pp == &w) {
			*pp = w.next;
			break;
		}
	}
	pthread_mutex_unlock(&ws->mu);
	if (w.ack)
		*out = w.ack;
	else
		err = w.done ? CR_ERR_UNAVAILABLE : CR_ERR_TIMEOUT;
out:
	frame_free(fr);
	pthread_cond_destroy(&w.cv);
	return err;
}

/* --- the lws thread ---------------------------------------------------- */

static void schedule_connect(struct conn *c, uint64_t delay_ms);

static void on_down(struct conn *c, const char *why)
{
	struct conn_ws *ws = &c->ws;
	int was_open;

	pthread_mutex_lock(&ws->mu);
	was_open = ws->state == CONN_WS_OPEN;
	if (ws->state == CONN_WS_OPEN || ws->state == CONN_WS_HANDSHAKE)
		ws->disconnects++;
	if (was_open)
		ws->offline_since_ms = now_ms();
	ws->state = CONN_WS_DOWN;
	if (why)
		snprintf(ws->last_error, sizeof(ws->last_error), "%s", why);
	fq_clear(&ws->q_ctrl);
	fail_waiters_locked(ws);
	pthread_mutex_unlock(&ws->mu);
	ws->wsi = NULL;
	ws->rx.len = 0;
	active = 0;
	metric_set(m_up, 0);
	if (was_open) {
		char t[32];

		snprintf(t, sizeof(t), "%llu", (unsigned long long)now_ms());
		conn_inbox_meta_put(c, "online_at_ms", t);
	}
	if (!atomic_load(&ws->stop)) {
		uint64_t d = backoff_ms(ws->attempt, (uint64_t)c->cfg.reconnect_base_ms,
		    (uint64_t)c->cfg.reconnect_cap_ms);

		if (ws->attempt < 30)
			ws->attempt++;
		log_warn(NULL, "socket down (%s): reconnecting in %llu ms", why ? why : "closed",
		    (unsigned long long)d);
		schedule_connect(c, d);
	}
}

static void connect_cb(lws_sorted_usec_list_t *sul)
{
	struct conn *c = g_conn;
	struct conn_ws *ws = &c->ws;
	struct lws_client_connect_info ci;

	(void)sul;
	if (atomic_load(&ws->stop))
		return;
	memset(&ci, 0, sizeof(ci));
	ci.context = ws->ctx;
	ci.address = c->gw.host;
	ci.port = c->gw.port;
	ci.ssl_connection = c->gw.tls ? LCCSCF_USE_SSL : 0;
	ci.path = ws_path;
	ci.host = ws_host;
	ci.origin = NULL;
	ci.protocol = NULL;
	ci.local_protocol_name = "clawrelay";
	pthread_mutex_lock(&ws->mu);
	ws->state = CONN_WS_CONNECTING;
	pthread_mutex_unlock(&ws->mu);
	hs_started_mono = mono_ms();
	active = 1;
	log_debug(NULL, "connecting to %s://%s:%d%s", c->gw.tls ? "wss" : "ws", c->gw.host,
	    c->gw.port, ws_path);
	if (!lws_client_connect_via_info(&ci) && active)
		on_down(c, "connect failed");
}

static void schedule_connect(struct conn *c, uint64_t delay_ms)
{
	lws_sul_schedule(c->ws.ctx, 0, &sul_connect, connect_cb,
	    (lws_usec_t)delay_ms * LWS_US_PER_MS);
}

static void heartbeat_cb(lws_sorted_usec_list_t *sul)
{
	struct conn *c = g_conn;
	struct conn_ws *ws = &c->ws;
	uint64_t now = mono_ms(), limit = (uint64_t)c->cfg.heartbeat_s * 3000u;
	enum conn_ws_state st;

	(void)sul;
	if (atomic_load(&ws->stop))
		return;
	pthread_mutex_lock(&ws->mu);
	st = ws->state;
	pthread_mutex_unlock(&ws->mu);
	if (ws->wsi && st == CONN_WS_OPEN) {
		if (now - ws->last_rx_mono > limit) {
			log_warn(NULL, "no frame from the gateway for %llu ms: closing",
			    (unsigned long long)(now - ws->last_rx_mono));
			lws_set_timeout(ws->wsi, PENDING_TIMEOUT_USER_OK, LWS_TO_KILL_ASYNC);
		} else {
			Frame f = CLAWRELAY__V1__FRAME__INIT;
			Heartbeat hb = CLAWRELAY__V1__HEARTBEAT__INIT;

			hb.ts_ms = now_ms();
			f.schema_version = ENV_SCHEMA;
			f.body_case = CLAWRELAY__V1__FRAME__BODY_HEARTBEAT;
			f.heartbeat = &hb;
			conn_ws_send(c, &f, CONN_FK_CTRL);
		}
	} else if (ws->wsi && (st == CONN_WS_HANDSHAKE || st == CONN_WS_CONNECTING) &&
	    now - hs_started_mono > limit) {
		log_warn(NULL, "no reconnect_ack within %llu ms: closing", (unsigned long long)limit);
		lws_set_timeout(ws->wsi, PENDING_TIMEOUT_USER_OK, LWS_TO_KILL_ASYNC);
	}
	lws_sul_schedule(ws->ctx, 0, &sul_heartbeat, heartbeat_cb,
	    (lws_usec_t)c->cfg.heartbeat_s * LWS_USEC_PER_SEC);
}

static int add_hdr(struct lws *wsi, const char *name, const char *val, unsigned char **p,
    unsigned char *end)
{
	return lws_add_http_header_by_name(wsi, (const unsigned char *)name,
	    (const unsigned char *)val, (int)strlen(val), p, end);
}

static int append_proof(struct conn *c, struct lws *wsi, unsigned char **p, unsigned char *end)
{
	struct auth_proof_input in;
	char ts[24], nonce[40], body[AUTH_SHA256_B64_SIZE], sig[AUTH_SIG_B64_SIZE];

	snprintf(ts, sizeof(ts), "%llu", (unsigned long long)(now_ms() / 1000u));
	rand_hex(nonce, 16);
	if (auth_sha256_b64url("", 0, body) != CR_OK)
		return -1;
	memset(&in, 0, sizeof(in));
	in.method = "GET";
	in.path = ws_path;
	in.query = NULL;
	in.agent = c->cfg.agent_id;
	in.timestamp = ts;
	in.nonce = nonce;
	in.body_sha256 = body;
	if (auth_sign_request(c->key, &in, sig) != CR_OK) {
		log_error(NULL, "signing the upgrade failed");
		return -1;
	}
	if (add_hdr(wsi, "X-Claw-Agent:", c->cfg.agent_id, p, end) ||
	    add_hdr(wsi, "X-Claw-Timestamp:", ts, p, end) ||
	    add_hdr(wsi, "X-Claw-Nonce:", nonce, p, end) ||
	    add_hdr(wsi, "X-Claw-Body-SHA256:", body, p, end) ||
	    add_hdr(wsi, "X-Claw-Proof:", sig, p, end))
		return -1;
	return 0;
}

static int write_frame(struct lws *wsi, struct conn_frame *fr)
{
	int n = lws_write(wsi, fr->buf + LWS_PRE, fr->len, LWS_WRITE_BINARY);

	return n < (int)fr->len ? -1 : 0;
}

static int send_hello(struct conn *c, struct lws *wsi)
{
	struct conn_ws *ws = &c->ws;
	Frame f = CLAWRELAY__V1__FRAME__INIT;
	Reconnect r = CLAWRELAY__V1__RECONNECT__INIT;
	struct conn_frame *fr;
	char last[64];
	int rc;

	pthread_mutex_lock(&ws->mu);
	memcpy(last, ws->last_received_id, sizeof(last));
	r.offline_since_ms = ws->offline_since_ms;
	pthread_mutex_unlock(&ws->mu);
	r.last_received_id = last;
	f.schema_version = ENV_SCHEMA;
	f.body_case = CLAWRELAY__V1__FRAME__BODY_RECONNECT;
	f.reconnect = &r;
	if (!(fr = frame_pack(&f)))
		return -1;
	rc = write_frame(wsi, fr);
	frame_free(fr);
	log_info(NULL, "socket upgraded: sent reconnect last_received_id=%s offline_since_ms=%llu",
	    last[0] ? last : "-", (unsigned long long)r.offline_since_ms);
	return rc;
}

static size_t varint_len(uint64_t v)
{
	size_t n = 1;

	while (v >= 0x80) {
		v >>= 7;
		n++;
	}
	return n;
}

static unsigned char *put_varint(unsigned char *p, uint64_t v)
{
	while (v >= 0x80) {
		*p++ = (unsigned char)(v | 0x80);
		v >>= 7;
	}
	*p++ = (unsigned char)v;
	return p;
}

/* Frame keys, written by hand so queued events (already packed HopEvents)
 * need no unpack/repack: field 1 varint, field 8 (event) and field 14
 * (event_batch) length-delimited; HopBatch field 1 varint, field 2 LD. */
#define FK_SCHEMA 0x08u
#define FK_EVENT 0x42u
#define FK_EVENT_BATCH 0x72u
#define HB_EVENTS 0x12u
#define EV_BATCH_MAX 256u
#define EV_BATCH_BYTES (60u * 1024u)

/* lws thread: wrap the events of list (linked by next, n of them) into one
 * frame in ws->evout; returns the frame length, 0 on ENOMEM */
static size_t build_event_frame(struct conn_ws *ws, struct conn_frame *list, int batch)
{
	struct conn_frame *fr;
	size_t inner = 0, total, need;
	unsigned char *p;

	for (fr = list; fr; fr = fr->next)
		inner += 1 + varint_len(fr->len) + fr->len;
	if (batch) {
		inner += 2;
		total = 2 + 1 + varint_len(inner) + inner;
	} else {
		/* one event: inner is exactly its LD field; drop the key and length */
		inner = list->len;
		total = 2 + 1 + varint_len(inner) + inner;
	}
	need = LWS_PRE + total;
	if (need > ws->evcap) {
		unsigned char *nb = realloc(ws->evout, need + 4096);

		if (!nb)
			return 0;
		ws->evout = nb;
		ws->evcap = need + 4096;
	}
	p = ws->evout + LWS_PRE;
	*p++ = FK_SCHEMA;
	*p++ = ENV_SCHEMA;
	*p++ = batch ? FK_EVENT_BATCH : FK_EVENT;
	p = put_varint(p, inner);
	if (batch) {
		*p++ = FK_SCHEMA;
		*p++ = ENV_SCHEMA;
		for (fr = list; fr; fr = fr->next) {
			*p++ = HB_EVENTS;
			p = put_varint(p, fr->len);
			memcpy(p, fr->buf, fr->len);
			p += fr->len;
		}
	} else {
		memcpy(p, list->buf, list->len);
		p += list->len;
	}
	return (size_t)(p - (ws->evout + LWS_PRE));
}

/* ws.mu held: detach the events for the next frame (one, or a batch) */
static struct conn_frame *pop_events(struct conn *c)
{
	struct conn_ws *ws = &c->ws;
	struct conn_frame *head = NULL, **tail = &head, *fr;
	size_t n = 0, bytes = 0;
	unsigned max = c->cfg.event_batch ? EV_BATCH_MAX : 1;

	while (n < max && ws->q_ev.head &&
	    (n == 0 || bytes + ws->q_ev.head->len + 8 <= EV_BATCH_BYTES)) {
		fr = fq_pop(&ws->q_ev);
		bytes += fr->len + 8;
		fr->next = NULL;
		*tail = fr;
		tail = &fr->next;
		n++;
	}
	return head;
}

static void free_list(struct conn_frame *fr)
{
	struct conn_frame *nx;

	for (; fr; fr = nx) {
		nx = fr->next;
		frame_free(fr);
	}
}

/* frames written per writable callback at most (each is one send) */
#define WRITES_PER_ROUND 64

static int on_writable(struct conn *c, struct lws *wsi)
{
	struct conn_ws *ws = &c->ws;
	struct conn_frame *fr, *evs;
	int more = 0, rc = 0, i;
	size_t len;

	if (ws->need_hello) {
		ws->need_hello = 0;
		rc = send_hello(c, wsi);
		if (rc == 0)
			lws_callback_on_writable(wsi);
		return rc;
	}
	/* several frames per round: lws takes another write as long as the
	 * previous one went out whole (no partial buffered) */
	for (i = 0; i < WRITES_PER_ROUND && rc == 0; i++) {
		if (i > 0 && lws_partial_buffered(wsi)) {
			more = 1;
			break;
		}
		fr = evs = NULL;
		pthread_mutex_lock(&ws->mu);
		if (ws->state == CONN_WS_OPEN) {
			if (!(fr = fq_pop(&ws->q_ctrl)) && !(fr = fq_pop(&ws->q_keep)))
				evs = pop_events(c);
			more = ws->q_ctrl.n || ws->q_keep.n || ws->q_ev.n;
		}
		pthread_mutex_unlock(&ws->mu);
		if (fr) {
			rc = write_frame(wsi, fr);
			frame_free(fr);
		} else if (evs) {
			len = build_event_frame(ws, evs, c->cfg.event_batch != 0);
			if (len) {
				int n = lws_write(wsi, ws->evout + LWS_PRE, len, LWS_WRITE_BINARY);

				rc = n < (int)len ? -1 : 0;
			}
			free_list(evs);
		} else {
			break;
		}
		if (!more)
			break;
	}
	if (rc == 0 && more)
		lws_callback_on_writable(wsi);
	return rc;
}

/* The event pacer (its own thread): every EV_FLUSH_US while events keep
 * coming it asks the lws thread to send what no control frame took along,
 * and it goes dormant after a period without any; the next event wakes it.
 * So events cost at most ~1000000/EV_FLUSH_US wake-ups of the lws thread a
 * second, whatever the message rate. It is not an lws timer on purpose:
 * libwebsockets 4.1 rounds the time left to a timer down to whole
 * milliseconds for poll(), so it spins with a zero timeout through the last
 * millisecond before every timer; with a 5 ms timer that was a fifth of the
 * time, ~130,000 polls a second, 10% of a core per connector. A condition
 * variable waits to the nanosecond. */
static void *ev_pacer(void *arg)
{
	struct conn *c = arg;
	struct conn_ws *ws = &c->ws;
	struct timespec ts;

	pthread_mutex_lock(&ws->mu);
	while (!atomic_load(&ws->stop)) {
		if (!ws->ev_timer_on) {
			pthread_cond_wait(&ws->ev_cv, &ws->mu);
			continue;
		}
		clock_gettime(CLOCK_REALTIME, &ts);
		ts.tv_nsec += EV_FLUSH_US * 1000L;
		if (ts.tv_nsec >= 1000000000L) {
			ts.tv_sec++;
			ts.tv_nsec -= 1000000000L;
		}
		pthread_cond_timedwait(&ws->ev_cv, &ws->mu, &ts);
		if (atomic_load(&ws->stop))
			break;
		if (ws->state == CONN_WS_OPEN && ws->q_ev.n) {
			ws->ev_flush = 1;
			kick_locked(ws);
		}
		if (ws->ev_seq == ws->ev_seq_seen)
			ws->ev_timer_on = 0;	/* a period without events: dormant */
		ws->ev_seq_seen = ws->ev_seq;
	}
	pthread_mutex_unlock(&ws->mu);
	return NULL;
}

static void on_reconnect_ack(struct conn *c, const ReconnectAck *a)
{
	struct conn_ws *ws = &c->ws;

	pthread_mutex_lock(&ws->mu);
	ws->last_ack = *a;
	ws->last_ack.error = NULL;
	ws->last_ack_at_ms = now_ms();
	ws->have_ack = 1;
	ws->state = CONN_WS_OPEN;
	ws->connected_at_ms = now_ms();
	ws->connects++;
	ws->last_error[0] = '\0';
	/* the writable callback after the ack drains every queued event; a
	 * kick lost with the old socket must not leave the timer marked on */
	ws->ev_timer_on = 0;
	pthread_mutex_unlock(&ws->mu);
	ws->attempt = 0;
	conn_inbox_session_reset(c);
	/* the gateway is back: what waits in the outbox may go (as the breaker allows) */
	conn_outbox_kick(c);
	metric_add(m_connects, 1);
	metric_set(m_up, 1);
	if (a->error && a->error[0])
		log_warn(NULL, "reconnect_ack carries an error: %s", a->error);
	log_info(NULL, "reconnect_ack queued_critical=%llu queued_normal=%llu queued_low=%llu "
	    "oldest_queued_at_ms=%llu expired=%llu shed=%llu failed=%llu",
	    (unsigned long long)a->queued_critical, (unsigned long long)a->queued_normal,
	    (unsigned long long)a->queued_low, (unsigned long long)a->oldest_queued_at_ms,
	    (unsigned long long)a->expired_count, (unsigned long long)a->shed_count,
	    (unsigned long long)a->failed_count);
}

static void on_enqueue_ack(struct conn *c, Frame *f)
{
	struct conn_ws *ws = &c->ws;
	struct conn_waiter *w;
	EnqueueAck *a = f->enqueue_ack;
	uint32_t id = a->request_id ? a->request_id : f->request_id;

	pthread_mutex_lock(&ws->mu);
	for (w = ws->waiters; w; w = w->next) {
		if (w->req_id == id && !w->done) {
			w->ack = a;
			w->done = 1;
			/* the waiter owns the ack now: detach it from the frame */
			f->enqueue_ack = NULL;
			f->body_case = CLAWRELAY__V1__FRAME__BODY__NOT_SET;
			pthread_cond_signal(&w->cv);
			break;
		}
	}
	pthread_mutex_unlock(&ws->mu);
	if (!w)
		log_debug(NULL, "enqueue_ack for unknown request %u (timed out?)", id);
}

/* a deliver_batch frame: invalid envelopes are refused one by one, the
 * rest go to the inbox together */
static void on_deliver_batch(struct conn *c, const DeliverBatch *b)
{
	Envelope **ok = calloc(b->n_envelopes ? b->n_envelopes : 1, sizeof(*ok));
	size_t n = 0;

	if (!ok) {
		log_error(NULL, "deliver_batch of %zu: out of memory (the relay redelivers)",
		    b->n_envelopes);
		return;
	}
	for (size_t i = 0; i < b->n_envelopes; i++) {
		const char *why = NULL;

		if (env_validate(b->envelopes[i], &why) != CR_OK) {
			Frame r = CLAWRELAY__V1__FRAME__INIT;
			DeliverAck a = CLAWRELAY__V1__DELIVER_ACK__INIT;

			log_warn(NULL, "invalid envelope in deliver_batch refused: %s", why ? why : "?");
			a.message_id = b->envelopes[i]->message_id;
			a.reason = conn_str("invalid");
			r.schema_version = ENV_SCHEMA;
			r.body_case = CLAWRELAY__V1__FRAME__BODY_DELIVER_ACK;
			r.deliver_ack = &a;
			conn_ws_send(c, &r, CONN_FK_CTRL);
			continue;
		}
		ok[n++] = b->envelopes[i];
	}
	if (n)
		conn_inbox_deliver_many(c, ok, n);
	free(ok);
}

static void on_frame(struct conn *c, struct lws *wsi, const void *data, size_t len)
{
	ProtobufCMessage *m = NULL;
	Frame *f;

	if (env_unpack_msg(&clawrelay__v1__frame__descriptor, data, len, &m) != CR_OK) {
		log_warn(NULL, "undecodable frame (%zu bytes) ignored", len);
		return;
	}
	f = (Frame *)m;
	switch (f->body_case) {
	case CLAWRELAY__V1__FRAME__BODY_RECONNECT_ACK:
		on_reconnect_ack(c, f->reconnect_ack);
		lws_callback_on_writable(wsi);
		break;
	case CLAWRELAY__V1__FRAME__BODY_DELIVER: {
		/* one envelope: the batch path with a batch of one */
		DeliverBatch one = CLAWRELAY__V1__DELIVER_BATCH__INIT;
		Envelope *e = f->deliver;

		one.n_envelopes = 1;
		one.envelopes = &e;
		on_deliver_batch(c, &one);
		break;
	}
	case CLAWRELAY__V1__FRAME__BODY_DELIVER_BATCH:
		on_deliver_batch(c, f->deliver_batch);
		break;
	case CLAWRELAY__V1__FRAME__BODY_ENQUEUE_ACK:
		on_enqueue_ack(c, f);
		break;
	case CLAWRELAY__V1__FRAME__BODY_HEARTBEAT: {
		Frame r = CLAWRELAY__V1__FRAME__INIT;
		Heartbeat hb = CLAWRELAY__V1__HEARTBEAT__INIT;

		hb.ts_ms = now_ms();
		r.schema_version = ENV_SCHEMA;
		r.body_case = CLAWRELAY__V1__FRAME__BODY_HEARTBEAT_ACK;
		r.heartbeat_ack = &hb;
		conn_ws_send(c, &r, CONN_FK_CTRL);
		break;
	}
	case CLAWRELAY__V1__FRAME__BODY_HEARTBEAT_ACK:
		break;
	case CLAWRELAY__V1__FRAME__BODY_ERROR:
		log_warn(NULL, "gateway error frame: %s: %s",
		    f->error->code ? f->error->code : "", f->error->message ? f->error->message : "");
		pthread_mutex_lock(&c->ws.mu);
		snprintf(c->ws.last_error, sizeof(c->ws.last_error), "%s: %s",
		    f->error->code ? f->error->code : "", f->error->message ? f->error->message : "");
		pthread_mutex_unlock(&c->ws.mu);
		break;
	default:
		log_debug(NULL, "frame kind %d ignored", (int)f->body_case);
		break;
	}
	protobuf_c_message_free_unpacked(m, NULL);
}

static int ws_cb(struct lws *wsi, enum lws_callback_reasons reason, void *user, void *in,
    size_t len)
{
	struct conn *c = g_conn;
	struct conn_ws *ws;

	(void)user;
	if (!c)
		return 0;
	ws = &c->ws;
	switch (reason) {
	case LWS_CALLBACK_CLIENT_APPEND_HANDSHAKE_HEADER: {
		unsigned char **p = (unsigned char **)in;

		return append_proof(c, wsi, p, *p + len);
	}
	case LWS_CALLBACK_CLIENT_ESTABLISHED:
		ws->wsi = wsi;
		ws->need_hello = 1;
		ws->last_rx_mono = mono_ms();
		hs_started_mono = mono_ms();
		pthread_mutex_lock(&ws->mu);
		ws->state = CONN_WS_HANDSHAKE;
		pthread_mutex_unlock(&ws->mu);
		lws_callback_on_writable(wsi);
		break;
	case LWS_CALLBACK_CLIENT_RECEIVE:
		ws->last_rx_mono = mono_ms();
		if (lws_is_first_fragment(wsi))
			ws->rx.len = 0;
		if (ws->rx.len + len > ENV_MAX_WIRE) {
			log_error(NULL, "frame over %u bytes: closing", ENV_MAX_WIRE);
			return -1;
		}
		if (sb_append(&ws->rx, in, len) != 0)
			return -1;
		if (lws_is_final_fragment(wsi) && lws_remaining_packet_payload(wsi) == 0) {
			on_frame(c, wsi, ws->rx.data, ws->rx.len);
			ws->rx.len = 0;
		}
		break;
	case LWS_CALLBACK_CLIENT_WRITEABLE:
		return on_writable(c, wsi);
	case LWS_CALLBACK_CLIENT_CONNECTION_ERROR: {
		char why[160];

		snprintf(why, sizeof(why), "connect error: %.*s", in ? (int)len : 0,
		    in ? (const char *)in : "");
		if (active)
			on_down(c, why);
		break;
	}
	case LWS_CALLBACK_CLIENT_CLOSED:
		if (active)
			on_down(c, "closed");
		break;
	case LWS_CALLBACK_EVENT_WAIT_CANCELLED: {
		int now_w;

		pthread_mutex_lock(&ws->mu);
		ws->kicked = 0;
		now_w = ws->state == CONN_WS_OPEN &&
		    (ws->q_ctrl.n || ws->q_keep.n || (ws->ev_flush && ws->q_ev.n));
		ws->ev_flush = 0;
		pthread_mutex_unlock(&ws->mu);
		if (ws->wsi && now_w)
			lws_callback_on_writable(ws->wsi);
		break;
	}
	default:
		break;
	}
	return 0;
}

static const struct lws_protocols protocols[] = {
	{ "clawrelay", ws_cb, 0, 65536, 0, NULL, 0 },
	{ NULL, NULL, 0, 0, 0, NULL, 0 }
};

static void lws_log(int level, const char *line)
{
	char buf[300];
	size_t n;

	snprintf(buf, sizeof(buf), "%s", line);
	n = strlen(buf);
	while (n && (buf[n - 1] == '\n' || buf[n - 1] == '\r'))
		buf[--n] = '\0';
	if (level & LLL_ERR)
		log_error(NULL, "lws: %s", buf);
	else
		log_debug(NULL, "lws: %s", buf);
}

static void *ws_thread(void *arg)
{
	struct conn *c = arg;
	struct conn_ws *ws = &c->ws;
	struct lws_context *ctx;

	schedule_connect(c, 0);
	lws_sul_schedule(ws->ctx, 0, &sul_heartbeat, heartbeat_cb,
	    (lws_usec_t)c->cfg.heartbeat_s * LWS_USEC_PER_SEC);
	while (!atomic_load(&ws->stop)) {
		if (lws_service(ws->ctx, 0) < 0)
			break;
	}
	lws_sul_cancel(&sul_connect);
	lws_sul_cancel(&sul_heartbeat);
	pthread_mutex_lock(&ws->mu);
	ctx = ws->ctx;
	ws->ctx = NULL;
	pthread_mutex_unlock(&ws->mu);
	lws_context_destroy(ctx);
	return NULL;
}

/* conn_ws_start - start the lws thread (connects at once, reconnects forever) */
enum cr_err conn_ws_start(struct conn *c)
{
	struct conn_ws *ws = &c->ws;
	struct lws_context_creation_info info;
	char last[64], since[32];

	m_connects = metric_counter("clawrelay_connector_connects_total", NULL,
	    "sockets opened (reconnect_ack received)");
	m_up = metric_gauge("clawrelay_connector_socket_up", NULL, "1 while the socket is open");
	m_ev_dropped = metric_counter("clawrelay_connector_events_dropped_total", NULL,
	    "hop events dropped because the event queue was full");
	pthread_mutex_init(&ws->mu, NULL);
	pthread_cond_init(&ws->ev_cv, NULL);
	sb_init(&ws->rx);
	g_conn = c;
	if (conn_inbox_meta_get(c, "last_received_id", last, sizeof(last)) == 0)
		snprintf(ws->last_received_id, sizeof(ws->last_received_id), "%s", last);
	if (conn_inbox_meta_get(c, "online_at_ms", since, sizeof(since)) == 0)
		ws->offline_since_ms = strtoull(since, NULL, 10);
	snprintf(ws_path, sizeof(ws_path), "%s/v1/connect", c->gw.base);
	if ((c->gw.tls && c->gw.port == 443) || (!c->gw.tls && c->gw.port == 80))
		snprintf(ws_host, sizeof(ws_host), "%s", c->gw.host);
	else
		snprintf(ws_host, sizeof(ws_host), "%s:%d", c->gw.host, c->gw.port);

	lws_set_log_level(LLL_ERR | (log_enabled(LOG_DEBUG) ? LLL_WARN : 0), lws_log);
	memset(&info, 0, sizeof(info));
	info.port = CONTEXT_PORT_NO_LISTEN;
	info.protocols = protocols;
	info.gid = -1;
	info.uid = -1;
	if (c->gw.tls)
		info.options |= LWS_SERVER_OPTION_DO_SSL_GLOBAL_INIT;
	ws->ctx = lws_create_context(&info);
	if (!ws->ctx)
		return CR_ERR_INTERNAL;
	if (pthread_create(&ws->thread, NULL, ws_thread, c) != 0) {
		lws_context_destroy(ws->ctx);
		ws->ctx = NULL;
		return CR_ERR_INTERNAL;
	}
	ws->started = 1;
	if (pthread_create(&ws->ev_thread, NULL, ev_pacer, c) == 0)
		ws->ev_started = 1;
	else
		log_error(NULL, "event pacer thread: events go only with control frames");
	return CR_OK;
}

/* conn_ws_stop - close the socket, stop and join the thread, free the queues */
void conn_ws_stop(struct conn *c)
{
	struct conn_ws *ws = &c->ws;

	if (ws->started) {
		atomic_store(&ws->stop, 1);
		pthread_mutex_lock(&ws->mu);
		if (ws->ctx)
			lws_cancel_service(ws->ctx);
		pthread_mutex_unlock(&ws->mu);
		pthread_join(ws->thread, NULL);
		ws->started = 0;
	}
	if (ws->ev_started) {
		atomic_store(&ws->stop, 1);
		pthread_mutex_lock(&ws->mu);
		pthread_cond_signal(&ws->ev_cv);
		pthread_mutex_unlock(&ws->mu);
		pthread_join(ws->ev_thread, NULL);
		ws->ev_started = 0;
	}
	pthread_mutex_lock(&ws->mu);
	ws->state = CONN_WS_DOWN;
	fq_clear(&ws->q_ctrl);
	fq_clear(&ws->q_keep);
	fq_clear(&ws->q_ev);
	fail_waiters_locked(ws);
	pthread_mutex_unlock(&ws->mu);
	sb_free(&ws->rx);
	free(ws->evout);
	ws->evout = NULL;
	ws->evcap = 0;
	g_conn = NULL;
}

static const char *state_name(enum conn_ws_state s)
{
	switch (s) {
	case CONN_WS_DOWN: return "down";
	case CONN_WS_CONNECTING: return "connecting";
	case CONN_WS_HANDSHAKE: return "handshake";
	case CONN_WS_OPEN: return "open";
	}
	return "?";
}

/* conn_ws_status - add the socket's state to a /v1/status object */
void conn_ws_status(struct conn *c, cJSON *obj)
{
	struct conn_ws *ws = &c->ws;
	cJSON *o = cJSON_AddObjectToObject(obj, "socket"), *a;

	if (!o)
		return;
	pthread_mutex_lock(&ws->mu);
	cJSON_AddStringToObject(o, "state", state_name(ws->state));
	cJSON_AddStringToObject(o, "gateway", c->cfg.gateway_url);
	cJSON_AddNumberToObject(o, "connects", (double)ws->connects);
	cJSON_AddNumberToObject(o, "disconnects", (double)ws->disconnects);
	cJSON_AddNumberToObject(o, "connectedAtMs", (double)ws->connected_at_ms);
	cJSON_AddNumberToObject(o, "offlineSinceMs", (double)ws->offline_since_ms);
	cJSON_AddStringToObject(o, "lastError", ws->last_error);
	cJSON_AddStringToObject(o, "lastReceivedId", ws->last_received_id);
	cJSON_AddNumberToObject(o, "queuedControlFrames", (double)ws->q_ctrl.n);
	cJSON_AddNumberToObject(o, "queuedDeadLetterFrames", (double)ws->q_keep.n);
	cJSON_AddNumberToObject(o, "queuedEvents", (double)ws->q_ev.n);
	cJSON_AddNumberToObject(o, "eventsDropped", (double)ws->ev_dropped);
	if (ws->have_ack && (a = cJSON_AddObjectToObject(obj, "lastReconnectAck"))) {
		cJSON_AddNumberToObject(a, "atMs", (double)ws->last_ack_at_ms);
		cJSON_AddNumberToObject(a, "queuedCritical", (double)ws->last_ack.queued_critical);
		cJSON_AddNumberToObject(a, "queuedNormal", (double)ws->last_ack.queued_normal);
		cJSON_AddNumberToObject(a, "queuedLow", (double)ws->last_ack.queued_low);
		cJSON_AddNumberToObject(a, "oldestQueuedAtMs", (double)ws->last_ack.oldest_queued_at_ms);
		cJSON_AddNumberToObject(a, "expired", (double)ws->last_ack.expired_count);
		cJSON_AddNumberToObject(a, "shed", (double)ws->last_ack.shed_count);
		cJSON_AddNumberToObject(a, "failed", (double)ws->last_ack.failed_count);
	}
	pthread_mutex_unlock(&ws->mu);
}
