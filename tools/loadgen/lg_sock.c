/*
 * lg_sock.c - the `socket` scenario: the load generator talks to the
 * gateway's GET /v1/connect itself, as a connector does, one WebSocket per
 * sender identity (--ws-sender), and pipelines `enqueue` frames on it.
 *
 * Opening a socket (lg_sock_open_all, and again on a sender thread if a
 * socket died): the upgrade carries the connector's DESIGN 5 proof (GET of
 * <base>/v1/connect, empty body, a fresh nonce), the first frame is
 * `reconnect` and the socket is ready once the `reconnect_ack` arrives.
 * Sockets stay open across scenarios (the warm-up opens nothing new), and
 * lg_sock_close_all closes them.
 *
 * Sending (one thread per socket, poll()-driven, non-blocking): while fewer
 * than the window (--socket-window, at most the gateway's
 * CLAWRELAY_WS_ENQUEUE_WINDOW) are unanswered, the thread takes sequence
 * numbers from the record and queues one `enqueue` frame each, then writes
 * all queued frames at once. Each frame carries what the connector's local
 * API would put in it (correlation ID, idempotency key, sender, recipient,
 * priority normal, created_at_ms, content type, the payload with the send
 * time) and a request_id naming its slot in the window; the `enqueue_ack`
 * with that request_id frees the slot and counts its http_status (202
 * accepted; 429/503/507 and others refused, as in the http scenario). A
 * socket that breaks counts its unanswered frames as transport refusals.
 *
 * Threads: lg_sock_open_all and lg_sock_close_all run on the main thread
 * while no sender thread runs; during a scenario socket i belongs to sender
 * thread i only. Sender threads share the record (atomics, and the slots of
 * the sequence numbers each took) and the read-only run and scenario.
 */
#include <inttypes.h>
#include <poll.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "auth.h"
#include "env.h"
#include "lg.h"
#include "lg_ws.h"
#include "util.h"

#define SOCK_OPEN_TIMEOUT_MS 15000
#define SOCK_ACK_TIMEOUT_US  (30u * 1000000u)  /* an enqueue_ack later than this is lost */
#define SOCK_REFUSED_PAUSE_US 1000             /* after a refusal, as the http senders do */
#define SOCK_EVENTS_PER_FRAME 256              /* as the connector's event_batch frames */
#define SOCK_CID_MAX 64

/* socket i is used by sender thread i of the running scenario only */
static struct lg_ws socks[LG_MAX_IDS];
static int sock_open[LG_MAX_IDS];

/* one frame in flight: slot s of the window; rid = gen * window + s + 1 */
struct lg_slot {
	uint32_t rid;                /* 0 = free */
	size_t seq;
	uint64_t t_us;
};

struct lg_sworker {
	const struct lg_run *run;
	const struct lg_scen *sc;
	struct lg_rec *rec;
	int idx;
	pthread_t th;
	int started;
};

/* a string for a protobuf-c field (the generated structs take char *) */
static char *
mut(const char *s)
{
	union { const char *c; char *m; } u = { s };
	return u.m;
}

/* ws->why with context, printed once per socket problem */
static void
sock_warn(int i, const struct lg_run *run, const char *what, const char *why)
{
	fprintf(stderr, "loadgen: socket %d (%s): %s: %s\n", i, run->ws_senders[i].id, what, why);
}

/* wait (blocking, up to the open time limit) for the reconnect_ack */
static int
await_reconnect_ack(struct lg_ws *ws, char *why, size_t whysz)
{
	uint64_t deadline = mono_ms() + SOCK_OPEN_TIMEOUT_MS;

	for (;;) {
		const unsigned char *data;
		size_t len;
		int op, rc;

		while ((rc = lg_ws_next(ws, &op, &data, &len)) == 1) {
			ProtobufCMessage *m = NULL;
			Frame *f;
			int done = 0;

			if (op != LG_WS_OP_BIN ||
			    env_unpack_msg(&clawrelay__v1__frame__descriptor, data, len, &m) != CR_OK) {
				snprintf(why, whysz, "an undecodable frame before the reconnect_ack");
				return -1;
			}
			f = (Frame *)m;
			if (f->body_case == CLAWRELAY__V1__FRAME__BODY_RECONNECT_ACK) {
				done = 1;
			} else if (f->body_case == CLAWRELAY__V1__FRAME__BODY_ERROR) {
				snprintf(why, whysz, "error frame %s: %s",
				    f->error->code ? f->error->code : "",
				    f->error->message ? f->error->message : "");
				done = -1;
			}
			protobuf_c_message_free_unpacked(m, NULL);
			if (done)
				return done > 0 ? 0 : -1;
		}
		if (rc == LG_WS_CLOSED || lg_ws_flush(ws) < 0)
			break;
		uint64_t now = mono_ms();
		struct pollfd p = { .fd = ws->fd, .events = POLLIN };
		if (now >= deadline) {
			snprintf(why, whysz, "no reconnect_ack within %d ms", SOCK_OPEN_TIMEOUT_MS);
			return -1;
		}
		if (poll(&p, 1, (int)(deadline - now)) > 0 && lg_ws_read(ws) == LG_WS_CLOSED)
			break;
	}
	snprintf(why, whysz, "%s", ws->why);
	return -1;
}

/* open socket i as ws_senders[i]: signed upgrade, reconnect, reconnect_ack */
static int
sock_open_one(const struct lg_run *run, int i)
{
	const struct lg_sender *snd = &run->ws_senders[i];
	struct lg_ws *ws = &socks[i];
	char path[300], ts[24], nonce[40], sha[AUTH_SHA256_B64_SIZE], sig[AUTH_SIG_B64_SIZE];
	char hdrs[1024], why[256];
	int status = 0;

	snprintf(path, sizeof(path), "%s/v1/connect", run->gw.base);
	snprintf(ts, sizeof(ts), "%" PRIu64, now_ms() / 1000);
	rand_hex(nonce, 16);
	if (auth_sha256_b64url("", 0, sha) != CR_OK)
		return -1;
	struct auth_proof_input in = {
		.method = "GET", .path = path, .query = NULL, .agent = snd->id,
		.timestamp = ts, .nonce = nonce, .body_sha256 = sha,
	};
	if (auth_sign_request(snd->key, &in, sig) != CR_OK) {
		sock_warn(i, run, "open", "signing the upgrade failed");
		return -1;
	}
	snprintf(hdrs, sizeof(hdrs), "X-Claw-Agent: %s\r\nX-Claw-Timestamp: %s\r\n"
	    "X-Claw-Nonce: %s\r\nX-Claw-Body-SHA256: %s\r\nX-Claw-Proof: %s\r\n",
	    snd->id, ts, nonce, sha, sig);
	if (lg_ws_open(ws, run->gw.host, run->gw.port, path, hdrs, SOCK_OPEN_TIMEOUT_MS,
	    &status) != 0) {
		sock_warn(i, run, "upgrade", ws->why);
		return -1;
	}

	Frame f = CLAWRELAY__V1__FRAME__INIT;
	Reconnect r = CLAWRELAY__V1__RECONNECT__INIT;
	unsigned char *p;
	size_t n;

	r.last_received_id = mut("");
	f.schema_version = ENV_SCHEMA;
	f.body_case = CLAWRELAY__V1__FRAME__BODY_RECONNECT;
	f.reconnect = &r;
	n = protobuf_c_message_get_packed_size(&f.base);
	if ((p = lg_ws_begin(ws, LG_WS_OP_BIN, n)) == NULL) {
		lg_ws_close(ws);
		return -1;
	}
	protobuf_c_message_pack(&f.base, p);
	lg_ws_commit(ws);
	if (await_reconnect_ack(ws, why, sizeof(why)) != 0) {
		sock_warn(i, run, "reconnect", why);
		lg_ws_close(ws);
		return -1;
	}
	sock_open[i] = 1;
	return 0;
}

/* lg_sock_open_all - open every sender's socket that is not open; 0 if all are */
int
lg_sock_open_all(const struct lg_run *run)
{
	int rc = 0;

	for (int i = 0; i < run->nws; i++)
		if (!sock_open[i] && sock_open_one(run, i) != 0)
			rc = -1;
	return rc;
}

/* lg_sock_close_all - close every open socket */
void
lg_sock_close_all(void)
{
	for (int i = 0; i < LG_MAX_IDS; i++) {
		if (sock_open[i])
			lg_ws_close(&socks[i]);
		sock_open[i] = 0;
	}
}

struct lg_sstate {
	const struct lg_run *run;
	const struct lg_scen *sc;
	struct lg_rec *rec;
	const struct lg_sender *snd;
	struct lg_ws *ws;
	struct lg_slot *slots;
	uint32_t *free_slots;        /* a stack of free slot numbers */
	uint32_t nfree, window, gen, gen_max;
	char *payload;
	int stopping;
	int held_back;               /* the last fill stopped at the backlog limit */
	uint64_t pause_until;
	/* connector_sent hop events of one round (run->ws_events) */
	char (*cids)[SOCK_CID_MAX];  /* [window] correlation IDs */
	HopEvent *evs;               /* [window] */
	HopEvent **evp;              /* [window] */
};

/* queue one event_batch frame holding the n events of evp */
static int
queue_events(struct lg_sstate *s, HopEvent **evp, size_t n)
{
	Frame f = CLAWRELAY__V1__FRAME__INIT;
	HopBatch b = CLAWRELAY__V1__HOP_BATCH__INIT;
	unsigned char *p;
	size_t len;

	b.schema_version = ENV_SCHEMA;
	b.n_events = n;
	b.events = evp;
	f.schema_version = ENV_SCHEMA;
	f.body_case = CLAWRELAY__V1__FRAME__BODY_EVENT_BATCH;
	f.event_batch = &b;
	len = protobuf_c_message_get_packed_size(&f.base);
	if ((p = lg_ws_begin(s->ws, LG_WS_OP_BIN, len)) == NULL)
		return -1;
	protobuf_c_message_pack(&f.base, p);
	lg_ws_commit(s->ws);
	return 0;
}

/* queue enqueue frames for every free slot; returns -1 on out of memory */
static int
fill(struct lg_sstate *s)
{
	struct lg_rec *rec = s->rec;
	size_t room = s->nfree, seq0, n;
	uint64_t t = lg_mono_us(), created = now_ms(), wall_us = now_us();
	char idem[SOCK_CID_MAX + 8];

	s->held_back = 0;
	if (room > 0 && s->run->ws_backlog > 0) {
		/* messages sent and neither delivered nor refused yet, all sockets */
		long long out = (long long)atomic_load(&rec->next_seq) -
		    (long long)atomic_load(&rec->delivered) -
		    ((long long)atomic_load(&rec->sent) - (long long)atomic_load(&rec->accepted));
		long long lim = s->run->ws_backlog;
		if (out >= lim) {
			s->held_back = 1;
			return 0;
		}
		if ((long long)room > lim - out)
			room = (size_t)(lim - out);
	}
	if (room == 0)
		return 0;
	seq0 = atomic_fetch_add(&rec->next_seq, room);
	if (seq0 >= rec->cap) {
		s->stopping = 1;
		return 0;
	}
	n = rec->cap - seq0 < room ? rec->cap - seq0 : room;
	for (size_t k = 0; k < n; k++) {
		size_t seq = seq0 + k;
		uint32_t slot = s->free_slots[--s->nfree];
		const char *rcpt = s->run->recipients[seq % (size_t)s->run->nrecipients];
		char *cid = s->cids[k];
		Envelope e = CLAWRELAY__V1__ENVELOPE__INIT;
		Frame f = CLAWRELAY__V1__FRAME__INIT;
		unsigned char *p;
		size_t plen = lg_payload(s->payload, s->run->payload_bytes, rec->id, seq, t);

		if (++s->gen >= s->gen_max)
			s->gen = 0;
		s->slots[slot].rid = s->gen * s->window + slot + 1;
		s->slots[slot].seq = seq;
		s->slots[slot].t_us = t;
		rec->send_ms[seq] = t > rec->t0_us ? (uint32_t)((t - rec->t0_us) / 1000) : 0;
		/* what the connector's local API puts in an enqueue frame */
		snprintf(cid, SOCK_CID_MAX, "lg%s-%d-%zu", s->run->run_tag, rec->id, seq);
		snprintf(idem, sizeof(idem), "idem-%s", cid);
		e.schema_version = ENV_SCHEMA;
		e.correlation_id = cid;
		e.idempotency_key = idem;
		e.sender = mut(s->snd->id);
		e.recipient = mut(rcpt);
		e.priority = CLAWRELAY__V1__PRIORITY__PRIORITY_NORMAL;
		e.created_at_ms = created;
		e.content_type = mut("text/plain");
		e.payload.data = (uint8_t *)s->payload;
		e.payload.len = plen;
		f.schema_version = ENV_SCHEMA;
		f.request_id = s->slots[slot].rid;
		f.body_case = CLAWRELAY__V1__FRAME__BODY_ENQUEUE;
		f.enqueue = &e;
		size_t len = protobuf_c_message_get_packed_size(&f.base);
		if ((p = lg_ws_begin(s->ws, LG_WS_OP_BIN, len)) == NULL)
			return -1;
		protobuf_c_message_pack(&f.base, p);
		lg_ws_commit(s->ws);
		if (s->run->ws_events) {
			/* what the connector reports when it hands a message on */
			HopEvent *ev = &s->evs[k];
			clawrelay__v1__hop_event__init(ev);
			ev->schema_version = ENV_SCHEMA;
			ev->correlation_id = cid;
			ev->hop = CLAWRELAY__V1__HOP_KIND__HOP_CONNECTOR_SENT;
			ev->ts_us = wall_us;
			ev->ts_ms = wall_us / 1000u;
			ev->service = mut("loadgen");
			ev->instance = mut(s->snd->id);
			ev->outcome = mut("ok");
			ev->detail = mut("via=socket");
			ev->sender = mut(s->snd->id);
			ev->recipient = mut(rcpt);
			s->evp[k] = ev;
		}
	}
	/* the events follow their enqueue frames in the same write, in
	 * event_batch frames of at most SOCK_EVENTS_PER_FRAME */
	for (size_t k = 0; s->run->ws_events && k < n; k += SOCK_EVENTS_PER_FRAME) {
		if (queue_events(s, s->evp + k, n - k < SOCK_EVENTS_PER_FRAME ? n - k :
		    SOCK_EVENTS_PER_FRAME) != 0)
			return -1;
	}
	if (n < room)
		s->stopping = 1;
	return 0;
}

/* free the slot of an answered frame; returns it, or NULL if rid names none */
static struct lg_slot *
take_slot(struct lg_sstate *s, uint32_t rid)
{
	uint32_t slot;

	if (rid == 0)
		return NULL;
	slot = (rid - 1) % s->window;
	if (s->slots[slot].rid != rid)
		return NULL;
	s->slots[slot].rid = 0;
	s->free_slots[s->nfree++] = slot;
	return &s->slots[slot];
}

/* one frame from the gateway; -1 if the socket must go */
static int
on_frame(struct lg_sstate *s, const unsigned char *data, size_t len, uint64_t now)
{
	ProtobufCMessage *m = NULL;
	Frame *f;
	int rc = 0;

	if (env_unpack_msg(&clawrelay__v1__frame__descriptor, data, len, &m) != CR_OK) {
		fprintf(stderr, "loadgen: socket %s: undecodable frame (%zu bytes)\n", s->snd->id, len);
		return 0;
	}
	f = (Frame *)m;
	switch (f->body_case) {
	case CLAWRELAY__V1__FRAME__BODY_ENQUEUE_ACK: {
		const EnqueueAck *a = f->enqueue_ack;
		struct lg_slot *sl = take_slot(s, a->request_id ? a->request_id : f->request_id);
		char detail[200];

		if (sl == NULL) {
			fprintf(stderr, "loadgen: socket %s: enqueue_ack for unknown request %u\n",
			    s->snd->id, a->request_id);
			break;
		}
		snprintf(detail, sizeof(detail), "%s: %s", a->error_code ? a->error_code : "",
		    a->error_message ? a->error_message : "");
		lg_count(s->rec, sl->seq, (long)a->http_status, now > sl->t_us ? now - sl->t_us : 0,
		    detail);
		if (a->http_status != 202 && a->http_status != 200)
			s->pause_until = now + SOCK_REFUSED_PAUSE_US;
		break;
	}
	case CLAWRELAY__V1__FRAME__BODY_HEARTBEAT: {
		Frame r = CLAWRELAY__V1__FRAME__INIT;
		Heartbeat hb = CLAWRELAY__V1__HEARTBEAT__INIT;
		unsigned char *p;
		size_t n;

		hb.ts_ms = now_ms();
		r.schema_version = ENV_SCHEMA;
		r.body_case = CLAWRELAY__V1__FRAME__BODY_HEARTBEAT_ACK;
		r.heartbeat_ack = &hb;
		n = protobuf_c_message_get_packed_size(&r.base);
		if ((p = lg_ws_begin(s->ws, LG_WS_OP_BIN, n)) == NULL) {
			rc = -1;
			break;
		}
		protobuf_c_message_pack(&r.base, p);
		lg_ws_commit(s->ws);
		break;
	}
	case CLAWRELAY__V1__FRAME__BODY_ERROR:
		fprintf(stderr, "loadgen: socket %s: error frame %s: %s\n", s->snd->id,
		    f->error->code ? f->error->code : "", f->error->message ? f->error->message : "");
		break;
	default:
		/* nobody sends to the bench's senders; a deliver would be a stray */
		fprintf(stderr, "loadgen: socket %s: unexpected frame kind %d ignored\n", s->snd->id,
		    (int)f->body_case);
		break;
	}
	protobuf_c_message_free_unpacked(m, NULL);
	return rc;
}

/* count every frame still in flight as a transport refusal */
static void
fail_inflight(struct lg_sstate *s, const char *why)
{
	for (uint32_t i = 0; i < s->window; i++) {
		if (s->slots[i].rid != 0) {
			lg_count(s->rec, s->slots[i].seq, 0, 0, why);
			take_slot(s, s->slots[i].rid);
		}
	}
}

static void
note_last(struct lg_rec *rec, uint64_t t)
{
	uint64_t last = atomic_load(&rec->t_last_send_us);

	while (t > last && !atomic_compare_exchange_weak(&rec->t_last_send_us, &last, t))
		;
}

/* the sender loop of one socket: fill, write, poll, take answers */
static void
sock_loop(struct lg_sstate *s)
{
	struct lg_rec *rec = s->rec;
	uint64_t drain_deadline = 0;
	const char *fail = NULL;
	char why[320];

	for (;;) {
		uint64_t now = lg_mono_us();
		int timeout_ms, rc;

		if (!s->stopping && now >= rec->t_end_us)
			s->stopping = 1;
		if (!s->stopping && now >= s->pause_until && fill(s) != 0) {
			fail = "out of memory";
			break;
		}
		if (lg_ws_queued(s->ws) > 0 && lg_ws_flush(s->ws) < 0) {
			fail = s->ws->why;
			break;
		}
		if (s->stopping && s->nfree == s->window && lg_ws_queued(s->ws) == 0)
			break;
		if (s->stopping) {
			if (drain_deadline == 0)
				drain_deadline = now + SOCK_ACK_TIMEOUT_US;
			if (now >= drain_deadline) {
				fail = "no enqueue_ack within 30 s";
				break;
			}
			timeout_ms = (int)((drain_deadline - now) / 1000) + 1;
		} else if (s->nfree > 0 && s->pause_until > now) {
			timeout_ms = (int)((s->pause_until - now + 999) / 1000);
		} else if (s->held_back) {
			timeout_ms = 1;	/* deliveries free the backlog; look again soon */
		} else {
			timeout_ms = (int)((rec->t_end_us - now + 999) / 1000);
		}
		if (timeout_ms > 1000)
			timeout_ms = 1000;

		struct pollfd p = { .fd = s->ws->fd,
			.events = (short)(POLLIN | (lg_ws_queued(s->ws) > 0 ? POLLOUT : 0)) };
		if (poll(&p, 1, timeout_ms) <= 0 || !(p.revents & (POLLIN | POLLERR | POLLHUP)))
			continue;
		if ((rc = lg_ws_read(s->ws)) == LG_WS_AGAIN)
			continue;
		if (rc == LG_WS_CLOSED) {
			fail = s->ws->why;
			break;
		}
		const unsigned char *data;
		size_t len;
		int op;
		now = lg_mono_us();
		while ((rc = lg_ws_next(s->ws, &op, &data, &len)) == 1) {
			if (op == LG_WS_OP_BIN && on_frame(s, data, len, now) != 0) {
				rc = LG_WS_CLOSED;
				snprintf(s->ws->why, sizeof(s->ws->why), "out of memory");
				break;
			}
		}
		note_last(rec, now);
		if (rc == LG_WS_CLOSED) {
			fail = s->ws->why;
			break;
		}
	}
	if (fail != NULL) {
		snprintf(why, sizeof(why), "socket %s: %s", s->snd->id, fail);
		fprintf(stderr, "loadgen: %s\n", why);
		fail_inflight(s, why);
		note_last(rec, lg_mono_us());
		lg_ws_close(s->ws);
		sock_open[s->ws - socks] = 0;
	}
}

static void *
sworker_main(void *arg)
{
	struct lg_sworker *w = arg;
	struct lg_sstate s;

	memset(&s, 0, sizeof(s));
	s.run = w->run;
	s.sc = w->sc;
	s.rec = w->rec;
	s.snd = &w->run->ws_senders[w->idx];
	s.ws = &socks[w->idx];
	s.window = (uint32_t)(w->sc->window > 0 ? w->sc->window : 1);
	s.gen_max = (uint32_t)(UINT32_MAX / s.window - 1);
	s.slots = calloc(s.window, sizeof(*s.slots));
	s.free_slots = calloc(s.window, sizeof(*s.free_slots));
	s.payload = malloc(w->run->payload_bytes + 1);
	s.cids = calloc(s.window, sizeof(*s.cids));
	s.evs = calloc(s.window, sizeof(*s.evs));
	s.evp = calloc(s.window, sizeof(*s.evp));
	if (s.slots == NULL || s.free_slots == NULL || s.payload == NULL || s.cids == NULL ||
	    s.evs == NULL || s.evp == NULL) {
		fprintf(stderr, "loadgen: socket %s: out of memory\n", s.snd->id);
		goto out;
	}
	for (uint32_t i = 0; i < s.window; i++)
		s.free_slots[s.nfree++] = s.window - 1 - i;
	/* a socket that died in an earlier scenario is opened again */
	if (!sock_open[w->idx] && sock_open_one(w->run, w->idx) != 0)
		goto out;
	sock_loop(&s);
out:
	free(s.slots);
	free(s.free_slots);
	free(s.payload);
	free(s.cids);
	free(s.evs);
	free(s.evp);
	lg_thread_cpu_done(w->rec);
	return NULL;
}

/* lg_sock_run - the socket scenario: one sender thread per socket */
int
lg_sock_run(const struct lg_run *run, const struct lg_scen *sc, struct lg_rec *rec)
{
	int n = run->nws, rc = 0;
	struct lg_sworker *w;

	if ((w = calloc((size_t)n, sizeof(*w))) == NULL)
		return -1;
	for (int i = 0; i < n; i++) {
		w[i].run = run;
		w[i].sc = sc;
		w[i].rec = rec;
		w[i].idx = i;
		if (pthread_create(&w[i].th, NULL, sworker_main, &w[i]) != 0) {
			fprintf(stderr, "loadgen: cannot start socket thread %d\n", i);
			rc = -1;
			break;
		}
		w[i].started = 1;
	}
	for (int i = 0; i < n; i++)
		if (w[i].started)
			pthread_join(w[i].th, NULL);
	free(w);
	return rc;
}
