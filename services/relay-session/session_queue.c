/*
 * session_queue.c - enqueue: checks, idempotency, queue caps and shedding,
 * then a grouped durable commit; the requester is answered only from the
 * commit's callback (a 202 means the message is on disk).
 *
 * Idempotency entries ("<sender>\0<key>" in DB idem; layout in
 * session_idem.c, which also adds the final state when a message leaves the
 * queue)
 * Until its commit lands an entry also sits in the partition's in-memory
 * pending table, so two racing requests with one key cannot both queue.
 *
 * Replay check: a non-empty Envelope.nonce (the request's X-Claw-Nonce) is
 * remembered in DB nonce in the same commit as the message, and in the
 * partition's in-memory nonce set from submit on (session_nonce.c); a
 * (sender, nonce) seen within NONCE_TTL_S is answered ENQ_REPLAY. A replay names the same recipient
 * (the path is signed), so the recipient's partition always sees both.
 *
 * Batches: <P>.session.<p>.enqueue_batch carries an EnqueueBatch (what a
 * gateway has gathered from one socket while its previous batch was being
 * answered); each envelope goes through exactly the path of a single
 * enqueue, with its answer written into the batch's slot instead of being
 * published, and the last answer publishes one EnqueueBatchReply. So a
 * batch costs one bus message each way, and its envelopes ride in one
 * commit group.
 *
 * Threads: session_enqueue(_batch) runs on the partition subscription's
 * thread and takes mu; enq_done runs on the committer thread (see
 * session.h). A batch's slots are each written once, by whoever answers
 * that envelope; `left` orders them before the publish.
 */
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "auth.h"
#include "hop.h"
#include "log.h"
#include "metrics.h"
#include "session.h"
#include "util.h"


/* the answers of an enqueue_batch request */
struct enq_batch {
	struct session *s;
	char *reply;                   /* NULL: nobody waits */
	size_t n;
	atomic_size_t left;
	EnqueueReply *r;               /* n; strings owned (or the empty one) */
	EnqueueReply **rp;
};

/* where an answer goes: a reply subject, or a batch's slot */
struct enq_target {
	const char *subj;              /* borrowed (session_enqueue) or owned (ctx) */
	struct enq_batch *b;
	size_t idx;
};

struct enq_ctx {
	struct session_part *pp;
	uint64_t gen;
	struct session_agent *a;       /* valid while gen matches */
	struct session_idem_pending *ip; /* valid while gen matches */
	int has_nonce;
	struct session_nonce_ent nonce;  /* in pp->nonces while gen matches */
	struct enq_target t;             /* t.subj owned */
	Envelope *e;
	int lane;
	uint64_t seq, vlen;
};

#define ENQ_NSTATUS 8

static struct metric *m_enq[ENQ_NSTATUS], *m_enq_bad, *m_enq_batches;

static const char *const enq_names[ENQ_NSTATUS] = {
	"queued", "duplicate", "conflict", "rate_limited", "queue_full", "rejected", "unavailable",
	"replay"
};

static void
metrics_once(void)
{
	char lab[64];

	if (m_enq_bad != NULL)
		return;
	for (int i = 0; i < ENQ_NSTATUS; i++) {
		snprintf(lab, sizeof(lab), "status=\"%s\"", enq_names[i]);
		m_enq[i] = metric_counter("clawrelay_session_enqueue_total", lab,
		    "enqueue requests by answer");
	}
	m_enq_bad = metric_counter("clawrelay_session_enqueue_bad_total", NULL,
	    "enqueue requests that could not be decoded");
	m_enq_batches = metric_counter("clawrelay_session_enqueue_batches_total", NULL,
	    "enqueue_batch requests (each holds one or more enqueues)");
}

static char no_text[1];

static char *
text_dup(const char *s)
{
	char *d;

	if (s == NULL || *s == '\0' || (d = strdup(s)) == NULL)
		return no_text;
	return d;
}

static void
enq_batch_free(struct enq_batch *b)
{
	for (size_t i = 0; i < b->n; i++) {
		EnqueueReply *r = &b->r[i];
		char *f[] = { r->message_id, r->correlation_id, r->state, r->error };
		for (size_t k = 0; k < sizeof(f) / sizeof(f[0]); k++)
			if (f[k] != no_text)
				free(f[k]);
	}
	free(b->r);
	free(b->rp);
	free(b->reply);
	free(b);
}

/* one answer of b is in: the last publishes them all and frees b */
static void
enq_batch_release(struct enq_batch *b)
{
	EnqueueBatchReply br = CLAWRELAY__V1__ENQUEUE_BATCH_REPLY__INIT;
	void *buf = NULL;
	size_t len = 0;

	if (atomic_fetch_sub(&b->left, 1) != 1)
		return;
	if (b->reply != NULL) {
		br.schema_version = ENV_SCHEMA;
		br.n_replies = b->n;
		br.replies = b->rp;
		if (env_pack(&br.base, &buf, &len) == CR_OK)
			natsConnection_Publish(bus_nc(b->s->bus), b->reply, buf, (int)len);
		free(buf);
	}
	enq_batch_free(b);
}

static void
reply_to(struct session *s, const struct enq_target *t, int status, const char *mid,
    const char *cid, const char *state, uint64_t depth, uint32_t retry_after, const char *error)
{
	EnqueueReply r = CLAWRELAY__V1__ENQUEUE_REPLY__INIT;
	unsigned char buf[1024];
	size_t len;
	const char *reply = t->subj;

	if (status >= 0 && status < ENQ_NSTATUS)
		metric_add(m_enq[status], 1);
	if (t->b != NULL) {
		EnqueueReply *x = &t->b->r[t->idx];
		x->status = (Clawrelay__V1__EnqueueStatus)status;
		x->message_id = text_dup(mid);
		x->correlation_id = text_dup(cid);
		x->state = text_dup(state);
		x->queue_depth = depth;
		x->retry_after_s = retry_after;
		x->error = text_dup(error);
		enq_batch_release(t->b);
		return;
	}
	if (reply == NULL || *reply == '\0')
		return;
	r.schema_version = ENV_SCHEMA;
	r.status = (Clawrelay__V1__EnqueueStatus)status;
	r.message_id = SESSION_UNCONST(mid ? mid : "");
	r.correlation_id = SESSION_UNCONST(cid ? cid : "");
	r.state = SESSION_UNCONST(state ? state : "");
	r.queue_depth = depth;
	r.retry_after_s = retry_after;
	r.error = SESSION_UNCONST(error ? error : "");
	if (env_pack_into(&r.base, buf, sizeof(buf), &len) == CR_OK)
		natsConnection_Publish(bus_nc(s->bus), reply, buf, (int)len);
}

static uint64_t
depth_of(const struct session_agent *a)
{
	return a->n[0] + a->n[1] + a->n[2];
}

/* commit finished (committer thread): answer, then dispatch */
static void
enq_done(void *arg, enum cr_err result)
{
	struct enq_ctx *c = arg;
	struct session_part *pp = c->pp;
	struct session *s = pp->s;
	struct session_work w;
	uint64_t depth = 0;
	int mine;
	struct log_ctx lc = { c->e->correlation_id, c->e->message_id, c->e->recipient,
	    c->e->trace_id };

	session_work_init(&w);
	pthread_mutex_lock(&pp->mu);
	mine = c->gen == pp->gen && pp->open;
	if (mine) {
		struct session_agent *a = c->a;
		/* counted at submit: a dispatch may see the commit (and even
		 * finish the message) before this callback runs */
		if (result != CR_OK) {
			if (a->n[c->lane] > 0)
				a->n[c->lane]--;
			a->bytes = a->bytes > c->vlen ? a->bytes - c->vlen : 0;
			if (pp->depth > 0)
				pp->depth--;
			session_pair_sub(pp, a, c->e->sender, c->vlen);
		}
		depth = depth_of(a);
		if (c->ip != NULL)
			session_idem_pending_remove(pp, c->ip);
		/* a failed commit stored no nonce: the request may come again */
		if (c->has_nonce && result != CR_OK)
			session_nonce_del(&pp->nonces, &c->nonce);
	}
	pthread_mutex_unlock(&pp->mu);

	if (result != CR_OK) {
		log_error(&lc, "enqueue commit failed: %s", cr_strerror(result));
		reply_to(s, &c->t, CLAWRELAY__V1__ENQUEUE_STATUS__ENQ_UNAVAILABLE,
		    c->e->message_id, c->e->correlation_id, NULL, 0, 1, "store failure");
		goto out;
	}
	reply_to(s, &c->t, CLAWRELAY__V1__ENQUEUE_STATUS__ENQ_QUEUED, c->e->message_id,
	    c->e->correlation_id, "queued", depth ? depth : 1, 0, NULL);
	/* the commit's time: an earlier batch's callback in this group may have
	 * dispatched this message already */
	hop_emit_at(c->e, CLAWRELAY__V1__HOP_KIND__HOP_SESSION_QUEUED, "ok", NULL,
	    store_committed_at_us());
	session_publish_receipt(s, c->e->message_id, c->e->correlation_id, c->e->sender,
	    c->e->recipient, "queued", 0);
	log_debug(&lc, "queued (lane %d, seq %llu)", c->lane, (unsigned long long)c->seq);
	if (mine) {
		pthread_mutex_lock(&pp->mu);
		if (c->gen == pp->gen && pp->open) {
			session_collect(pp, c->a, &w);
			session_work_flush_unlock(pp, &w);
		} else {
			pthread_mutex_unlock(&pp->mu);
		}
	}
out:
	env_free(c->e);
	free((char *)(uintptr_t)c->t.subj);
	free(c);
}

/* try to make room for a more urgent message by shedding the oldest low one */
static int
shed_one_locked(struct session_part *pp, struct session_agent *a, struct session_work *w)
{
	unsigned char pre[SESSION_KEY_MAX];
	size_t pl = session_key_make(pre, a->id, 2, 0);
	struct store_iter *it = NULL;
	const void *k, *v;
	size_t kl, vl;
	int done = 0;

	if (pl == 0 || store_iter_new(pp->st, pp->dbq, pre, pl - 8, &it) != CR_OK)
		return 0;
	while (store_iter_next(it, &k, &kl, &v, &vl) == 1) {
		uint64_t seq = session_be64_get((const unsigned char *)k + kl - 8);
		struct session_slot *sl;
		Envelope *e;

		if ((sl = session_slot_find(a, 2, seq)) != NULL) {
			if (sl->state != SLOT_WAITING)
				continue;	/* in flight: it may be delivered now */
			session_drop_locked(pp, a, sl, CLAWRELAY__V1__FAILURE_REASON__FAIL_SHED,
			    "queue near capacity: low priority shed", w);
			done = 1;
			break;
		}
		if (vl < SESSION_VHDR)
			continue;
		e = clawrelay__v1__envelope__unpack(NULL, vl - SESSION_VHDR,
		    (const unsigned char *)v + SESSION_VHDR);
		if (e == NULL)
			continue;
		sl = session_slot_new(a, 2, seq, vl, e);
		env_free(e);
		if (sl == NULL)
			break;
		session_drop_locked(pp, a, sl, CLAWRELAY__V1__FAILURE_REASON__FAIL_SHED,
		    "queue near capacity: low priority shed", w);
		done = 1;
		break;
	}
	store_iter_free(it);
	return done;
}

/* answer a request whose (sender, key) was seen: DUPLICATE or CONFLICT */
static void
answer_seen(struct session *s, const struct enq_target *reply, const Envelope *e, const unsigned char *sha,
    const char *mid, const char *cid, const char *rcpt, const unsigned char *osha,
    const char *state)
{
	if (strcmp(rcpt, e->recipient) == 0 && memcmp(sha, osha, 32) == 0)
		reply_to(s, reply, CLAWRELAY__V1__ENQUEUE_STATUS__ENQ_DUPLICATE, mid, cid, state,
		    0, 0, NULL);
	else
		reply_to(s, reply, CLAWRELAY__V1__ENQUEUE_STATUS__ENQ_CONFLICT, mid, cid, state,
		    0, 0, "idempotency key reused with another recipient or payload");
}

/* look (sender, key) up; 1 if answered (duplicate/conflict), 0 if new.
 * Caller holds mu. */
static int
idem_check_locked(struct session_part *pp, const struct enq_target *reply, const Envelope *e,
    const char *ikey, size_t iklen, const unsigned char *sha)
{
	struct session *s = pp->s;
	struct session_idem_pending *ip = session_idem_pending_find(pp, ikey, iklen);
	void *v = NULL;
	size_t vl = 0;
	const unsigned char *p;
	const char *mid, *cid, *rcpt, *end;
	uint64_t created;

	if (ip != NULL) {
		answer_seen(s, reply, e, sha, ip->message_id, ip->correlation_id, ip->recipient,
		    ip->sha, "accepted");
		return 1;
	}
	if (store_get(pp->st, pp->dbidem, ikey, iklen, &v, &vl) != CR_OK)
		return 0;
	p = v;
	if (vl < SESSION_IDEM_FIXED + 3)
		goto stale;
	created = session_be64_get(p);
	if (created + (uint64_t)s->cfg.idem_window_s * 1000u < now_ms())
		goto stale;
	end = (const char *)p + vl;
	mid = (const char *)p + SESSION_IDEM_FIXED;
	cid = memchr(mid, 0, (size_t)(end - mid));
	if (cid == NULL || ++cid >= end)
		goto stale;
	rcpt = memchr(cid, 0, (size_t)(end - cid));
	if (rcpt == NULL || ++rcpt >= end || memchr(rcpt, 0, (size_t)(end - rcpt)) == NULL)
		goto stale;
	{
		/* still in the queue? then "queued", else what became of it */
		unsigned char qk[SESSION_KEY_MAX];
		size_t qkl = session_key_make(qk, rcpt, p[8], session_be64_get(p + 9));
		void *qv = NULL;
		size_t qvl;
		const char *state = session_idem_final_state(v, vl);

		if (qkl != 0 && store_get(pp->st, pp->dbq, qk, qkl, &qv, &qvl) == CR_OK)
			state = "queued";
		free(qv);
		answer_seen(s, reply, e, sha, mid, cid, rcpt, p + 17, state);
	}
	free(v);
	return 1;
stale:
	free(v);
	return 0;
}

/* enqueues waiting for their keys' claims, sent together (session_claim.c) */
struct claim_wait;
struct claim_list {
	struct claim_wait *head, *tail;
};
static void claim_add(struct claim_list *cl, struct session_part *pp, Envelope *e,
    const struct enq_target *reply, const unsigned char *sha);
static void claim_flush(struct session *s, struct claim_list *cl);

/* enqueue one envelope (taken), answered through *reply; claimed: its
 * idempotency key was claimed in the sender's partition already; a new key
 * that must be claimed there joins *waits (NULL: it is asked for at once) */
static void
enqueue_env(struct session_part *pp, Envelope *e, const struct enq_target *reply, int claimed,
    struct claim_list *waits)
{
	struct session *s = pp->s;
	struct enq_ctx *c = NULL;
	struct store_batch *b = NULL;
	struct session_work w;
	struct session_agent *a;
	unsigned char *val = NULL;
	size_t plen, vlen;
	unsigned char qkey[SESSION_KEY_MAX], sha[32], nkey[STORE_KEY_MAX];
	struct session_nonce_ent nent;
	char *ikey = NULL;
	size_t iklen = 0, qkl, nklen = 0;
	uint64_t wall = now_ms(), seq;
	int lane, locked = 0, took_token = 0;
	struct session_pair *pr = NULL;
	enum cr_err err;

	session_work_init(&w);
	struct log_ctx lc = { e->correlation_id, e->message_id, e->recipient, e->trace_id };
	if (partition_of(e->recipient, s->nparts) != pp->idx) {
		reply_to(s, reply, CLAWRELAY__V1__ENQUEUE_STATUS__ENQ_REJECTED, e->message_id,
		    e->correlation_id, NULL, 0, 0, "recipient belongs to another partition");
		goto out;
	}
	if (e->message_id == NULL || e->message_id[0] == '\0') {
		/* the gateway assigns IDs; a bare producer (tests, tools) gets one here */
		char id[ULID_LEN + 1];
		char *dup;

		ulid_new(id);
		if ((dup = strdup(id)) == NULL)
			goto nomem_early;
		e->message_id = dup;	/* freed with the envelope */
		lc.message_id = dup;
	}
	if (e->created_at_ms == 0)
		e->created_at_ms = wall;
	if (e->expires_at_ms == 0)
		e->expires_at_ms = e->created_at_ms + (uint64_t)s->cfg.default_ttl_s * 1000u;
	if (e->expires_at_ms <= wall) {
		reply_to(s, reply, CLAWRELAY__V1__ENQUEUE_STATUS__ENQ_REJECTED, e->message_id,
		    e->correlation_id, NULL, 0, 0, "message already expired");
		goto out;
	}
	if (e->accepted_at_ms == 0)
		e->accepted_at_ms = wall;
	e->attempt = 0;
	if (e->nonce != NULL && e->nonce[0] != '\0') {
		size_t sl = strlen(e->sender), nl = strlen(e->nonce);

		if (8 + sl + 1 + nl > sizeof(nkey)) {
			reply_to(s, reply, CLAWRELAY__V1__ENQUEUE_STATUS__ENQ_REJECTED,
			    e->message_id, e->correlation_id, NULL, 0, 0, "nonce too long");
			goto out;
		}
		/* "<seen_ms be64><sender>\0<nonce>"; the set hashes the part after
		 * the time */
		session_be64_put(nkey, wall);
		memcpy(nkey + 8, e->sender, sl + 1);
		memcpy(nkey + 8 + sl + 1, e->nonce, nl);
		nklen = 8 + sl + 1 + nl;
		if (session_nonce_hash(nkey + 8, nklen - 8, &nent) != 0)
			goto nomem_early;
	}
	lane = env_lane(e->priority);
	if (lane < 0 || lane >= SESSION_LANES)
		lane = 1;
	if (e->idempotency_key != NULL && e->idempotency_key[0] != '\0') {
		size_t sl = strlen(e->sender), kl = strlen(e->idempotency_key);
		iklen = sl + 1 + kl;
		if (iklen > STORE_KEY_MAX) {
			reply_to(s, reply, CLAWRELAY__V1__ENQUEUE_STATUS__ENQ_REJECTED,
			    e->message_id, e->correlation_id, NULL, 0, 0,
			    "idempotency key too long");
			goto out;
		}
		if ((ikey = malloc(iklen + 1)) == NULL)
			goto nomem;
		memcpy(ikey, e->sender, sl + 1);
		memcpy(ikey + sl + 1, e->idempotency_key, kl + 1);
		if (auth_sha256_raw(e->payload.data, e->payload.len, sha) != CR_OK)
			goto nomem;
	}
	plen = protobuf_c_message_get_packed_size(&e->base);
	vlen = SESSION_VHDR + plen;
	if ((val = malloc(vlen)) == NULL)
		goto nomem;
	session_be64_put(val, e->expires_at_ms);
	session_be64_put(val + 8, e->accepted_at_ms);
	protobuf_c_message_pack(&e->base, val + SESSION_VHDR);

	pthread_mutex_lock(&pp->mu);
	locked = 1;
	if (!pp->open) {
		reply_to(s, reply, CLAWRELAY__V1__ENQUEUE_STATUS__ENQ_UNAVAILABLE, e->message_id,
		    e->correlation_id, NULL, 0, 1, "partition moving to another replica");
		goto out;
	}
	if (nklen > 0 && session_nonce_has(&pp->nonces, &nent)) {
		reply_to(s, reply, CLAWRELAY__V1__ENQUEUE_STATUS__ENQ_REPLAY, e->message_id,
		    e->correlation_id, NULL, 0, 0, "replay: nonce already used");
		log_info(&lc, "replayed nonce refused");
		goto out;
	}
	if (ikey != NULL && idem_check_locked(pp, reply, e, ikey, iklen, sha))
		goto out;
	if (ikey != NULL && !claimed) {
		/* the key's owner is the sender's partition (session_claim.c) */
		struct session_claim_owner o;

		if (partition_of(e->sender, s->nparts) != pp->idx) {
			struct claim_list one = { NULL, NULL };

			session_work_flush_unlock(pp, &w);
			locked = 0;
			claim_add(waits != NULL ? waits : &one, pp, e, reply, sha);
			e = NULL;
			claim_flush(s, &one);
			goto out;
		}
		if (session_claim_taken_locked(pp, e->sender, e->idempotency_key, e->recipient, &o)) {
			reply_to(s, reply, CLAWRELAY__V1__ENQUEUE_STATUS__ENQ_CONFLICT, o.message_id,
			    o.correlation_id, "accepted", 0, 0,
			    "idempotency key reused with another recipient or payload");
			goto out;
		}
	}
	if ((a = session_agent_get(pp, e->recipient, 1)) == NULL)
		goto nomem;
	if (e->kind != CLAWRELAY__V1__KIND__KIND_DELIVERY_STATUS) {
		/* the pair's caps and rate (the trust pair's overrides travel in
		 * the envelope); the relay's own notices are exempt */
		uint64_t pmax = e->pair_queue_max ? e->pair_queue_max :
		    (uint64_t)s->cfg.pair_queue_max;
		uint64_t rate = e->pair_rate_per_min ? e->pair_rate_per_min :
		    (uint64_t)s->cfg.pair_rate_per_min;
		uint64_t burst = e->pair_burst ? e->pair_burst :
		    s->cfg.pair_burst ? (uint64_t)s->cfg.pair_burst : rate;
		uint32_t retry = 1;

		if ((pr = session_pair_get(pp, a, e->sender, 1)) == NULL)
			goto nomem;
		if (pr->n + 1 > pmax || pr->bytes + vlen > (uint64_t)s->cfg.pair_queue_max_bytes) {
			reply_to(s, reply, CLAWRELAY__V1__ENQUEUE_STATUS__ENQ_QUEUE_FULL,
			    e->message_id, e->correlation_id, NULL, pr->n, 5,
			    "queue of this sender for this recipient is full");
			goto out;
		}
		if (!session_pair_take(pr, rate, burst, mono_ms(), &retry)) {
			reply_to(s, reply, CLAWRELAY__V1__ENQUEUE_STATUS__ENQ_RATE_LIMITED,
			    e->message_id, e->correlation_id, NULL, depth_of(a), retry,
			    "rate limit of this sender for this recipient reached");
			goto out;
		}
		took_token = 1;
	}
	{
		/* near capacity (the high-water mark) low is refused and the
		 * oldest waiting low message makes room for a more urgent one */
		uint64_t depth = depth_of(a), qmax = (uint64_t)s->cfg.queue_max;
		uint64_t bmax = (uint64_t)s->cfg.queue_max_bytes;
		uint64_t pct = (uint64_t)s->cfg.shed_high_water_pct;
		int over_max = depth + 1 > qmax || a->bytes + vlen > bmax;
		int over_hw = over_max || depth + 1 > qmax * pct / 100 ||
		    a->bytes + vlen > bmax / 100 * pct;

		if (over_hw) {
			int shed = 0;

			if (lane == 2 && !over_max) {
				reply_to(s, reply, CLAWRELAY__V1__ENQUEUE_STATUS__ENQ_QUEUE_FULL,
				    e->message_id, e->correlation_id, NULL, depth, 5,
				    "recipient queue near capacity: low priority refused");
				goto refund;
			}
			if (lane != 2 && a->n[2] > 0)
				shed = shed_one_locked(pp, a, &w);
			if (over_max && !shed) {
				reply_to(s, reply, CLAWRELAY__V1__ENQUEUE_STATUS__ENQ_QUEUE_FULL,
				    e->message_id, e->correlation_id, NULL, depth, 5,
				    "recipient queue full");
				goto refund;
			}
		}
	}
	seq = pp->next_seq++;	seq = pp->next_seq++;
	qkl = session_key_make(qkey, e->recipient, lane, seq);
	if ((b = store_batch_new()) == NULL || qkl == 0 ||
	    store_batch_put(b, pp->dbq, qkey, qkl, val, vlen) != CR_OK ||
	    session_books_add(pp, b, SESSION_BOOKS_ACCEPTED) != 0)
		goto nomem;
	if ((c = calloc(1, sizeof(*c))) == NULL)
		goto nomem;
	if (ikey != NULL) {
		size_t ml = strlen(e->message_id), cl = strlen(e->correlation_id),
		    rl = strlen(e->recipient);
		size_t ivl = SESSION_IDEM_FIXED + ml + 1 + cl + 1 + rl + 1;
		unsigned char *iv = malloc(ivl);
		struct session_idem_pending *ip;

		if (iv == NULL)
			goto nomem;
		session_be64_put(iv, wall);
		iv[8] = (unsigned char)lane;
		session_be64_put(iv + 9, seq);
		memcpy(iv + 17, sha, 32);
		memcpy(iv + SESSION_IDEM_FIXED, e->message_id, ml + 1);
		memcpy(iv + SESSION_IDEM_FIXED + ml + 1, e->correlation_id, cl + 1);
		memcpy(iv + SESSION_IDEM_FIXED + ml + 1 + cl + 1, e->recipient, rl + 1);
		err = store_batch_put(b, pp->dbidem, ikey, iklen, iv, ivl);
		free(iv);
		if (err != CR_OK)
			goto nomem;
		ip = session_idem_pending_add(pp, ikey, iklen, e->message_id, e->correlation_id,
		    e->recipient, sha);
		ikey = NULL;	/* the pending entry owns it, or it was freed */
		if (ip == NULL)
			goto nomem;
		c->ip = ip;
	}
	if (nklen > 0) {
		if (store_batch_put(b, pp->dbnonce, nkey, nklen, NULL, 0) != CR_OK ||
		    session_nonce_add(&pp->nonces, &nent) != 0) {
			if (c->ip)
				session_idem_pending_remove(pp, c->ip);
			goto nomem;
		}
		c->has_nonce = 1;
		c->nonce = nent;
	}
	c->pp = pp;
	c->gen = pp->gen;
	c->a = a;
	c->lane = lane;
	c->seq = seq;
	c->vlen = vlen;
	c->e = e;
	c->t = *reply;
	c->t.subj = reply->b == NULL ? strdup(reply->subj ? reply->subj : "") : NULL;
	if (reply->b == NULL && c->t.subj == NULL) {
		if (c->ip)
			session_idem_pending_remove(pp, c->ip);
		if (c->has_nonce)
			session_nonce_del(&pp->nonces, &c->nonce);
		goto nomem;
	}
	a->n[lane]++;
	a->bytes += vlen;
	pp->depth++;
	if (pr != NULL) {
		pr->n++;
		pr->bytes += vlen;
	}
	err = store_committer_submit(pp->com, b, enq_done, c);
	b = NULL;
	if (err != CR_OK) {
		a->n[lane]--;
		a->bytes -= vlen;
		pp->depth--;
		if (pr != NULL)
			session_pair_sub(pp, a, e->sender, vlen);
		if (c->ip)
			session_idem_pending_remove(pp, c->ip);
		if (c->has_nonce)
			session_nonce_del(&pp->nonces, &c->nonce);
		free((char *)(uintptr_t)c->t.subj);
		c->e = NULL;
		reply_to(s, reply, CLAWRELAY__V1__ENQUEUE_STATUS__ENQ_UNAVAILABLE, e->message_id,
		    e->correlation_id, NULL, 0, 1, "store unavailable");
		goto out;
	}
	e = NULL;	/* the commit callback owns it */
	c = NULL;
	goto out;
refund:
	if (took_token && pr != NULL)
		pr->tokens += 1.0;	/* refused after all: the token is not spent */
	goto out;
nomem_early:
nomem:
	log_error(&lc, "enqueue: out of memory");
	reply_to(s, reply, CLAWRELAY__V1__ENQUEUE_STATUS__ENQ_UNAVAILABLE,
	    e ? e->message_id : NULL, e ? e->correlation_id : NULL, NULL, 0, 1, "out of memory");
out:
	if (locked)
		session_work_flush_unlock(pp, &w);
	if (c != NULL) {
		free((char *)(uintptr_t)c->t.subj);
		free(c);
	}
	store_batch_free(b);
	free(val);
	free(ikey);
	env_free(e);
}

/* an enqueue waiting for its key's claim (session_claim.c) */
struct claim_wait {
	struct claim_wait *next;
	struct session_part *pp;
	Envelope *e;
	unsigned char sha[32];
	struct enq_target t;           /* subj owned when t.b == NULL */
};

static void
on_claimed(void *arg, const struct session_claim_result *r)
{
	struct claim_wait *cw = arg;
	struct session *s = cw->pp->s;
	struct log_ctx lc = { cw->e->correlation_id, cw->e->message_id, cw->e->recipient,
	    cw->e->trace_id };

	switch (r->status) {
	case SESSION_CLAIM_OK:
		enqueue_env(cw->pp, cw->e, &cw->t, 1, NULL);
		cw->e = NULL;
		break;
	case SESSION_CLAIM_TAKEN:
		log_info(&lc, "idempotency key belongs to a message for another recipient (%s)",
		    r->owner.message_id);
		reply_to(s, &cw->t, CLAWRELAY__V1__ENQUEUE_STATUS__ENQ_CONFLICT, r->owner.message_id,
		    r->owner.correlation_id, "accepted", 0, 0,
		    "idempotency key reused with another recipient or payload");
		break;
	default:
		log_info(&lc, "idempotency key not checked: %s", r->error);
		reply_to(s, &cw->t, CLAWRELAY__V1__ENQUEUE_STATUS__ENQ_UNAVAILABLE, cw->e->message_id,
		    cw->e->correlation_id, NULL, 0, 1, r->error);
		break;
	}
	env_free(cw->e);
	free((char *)(uintptr_t)cw->t.subj);
	free(cw);
}

/* e (taken) waits in cl for its key's claim */
static void
claim_add(struct claim_list *cl, struct session_part *pp, Envelope *e,
    const struct enq_target *reply, const unsigned char *sha)
{
	struct claim_wait *cw = calloc(1, sizeof(*cw));

	if (cw != NULL) {
		cw->t = *reply;
		cw->t.subj = reply->b == NULL ? strdup(reply->subj ? reply->subj : "") : NULL;
	}
	if (cw == NULL || (reply->b == NULL && cw->t.subj == NULL)) {
		reply_to(pp->s, reply, CLAWRELAY__V1__ENQUEUE_STATUS__ENQ_UNAVAILABLE, e->message_id,
		    e->correlation_id, NULL, 0, 1, "out of memory");
		free(cw);
		env_free(e);
		return;
	}
	cw->pp = pp;
	cw->e = e;
	memcpy(cw->sha, sha, 32);
	if (cl->tail != NULL)
		cl->tail->next = cw;
	else
		cl->head = cw;
	cl->tail = cw;
}

/* ask for every claim in cl, one request per senders' partition, in order;
 * empties cl (on_claimed frees each wait) */
static void
claim_flush(struct session *s, struct claim_list *cl)
{
	while (cl->head != NULL) {
		uint32_t part = partition_of(cl->head->e->sender, s->nparts);
		size_t n = 0, k = 0;

		for (struct claim_wait *cw = cl->head; cw != NULL; cw = cw->next)
			n += partition_of(cw->e->sender, s->nparts) == part;
		Envelope **es = calloc(n, sizeof(*es));
		const unsigned char **shas = calloc(n, sizeof(*shas));
		void **args = calloc(n, sizeof(*args));
		struct claim_wait **pcw = &cl->head, *rest = NULL, **prest = &rest;

		while (*pcw != NULL) {
			struct claim_wait *cw = *pcw;
			*pcw = cw->next;
			cw->next = NULL;
			if (partition_of(cw->e->sender, s->nparts) != part) {
				*prest = cw;
				prest = &cw->next;
				continue;
			}
			if (es == NULL || shas == NULL || args == NULL) {
				struct session_claim_result r = { .status = SESSION_CLAIM_ERROR };
				snprintf(r.error, sizeof(r.error), "out of memory");
				on_claimed(cw, &r);
				continue;
			}
			es[k] = cw->e;
			shas[k] = cw->sha;
			args[k++] = cw;
		}
		if (k > 0)
			session_claim_ask(s, part, es, shas, k, on_claimed, args);
		free(es);
		free(shas);
		free(args);
		cl->head = rest;
	}
	cl->tail = NULL;
}

/* session_enqueue - handle one enqueue request (msg borrowed) */
void
session_enqueue(struct session_part *pp, natsMsg *msg)
{
	struct enq_target t = { natsMsg_GetReply(msg), NULL, 0 };
	Envelope *e = NULL;
	const char *why = NULL;
	enum cr_err err;

	metrics_once();
	err = env_unpack(natsMsg_GetData(msg), (size_t)natsMsg_GetDataLength(msg), &e, &why);
	if (err != CR_OK) {
		metric_add(m_enq_bad, 1);
		reply_to(pp->s, &t, CLAWRELAY__V1__ENQUEUE_STATUS__ENQ_REJECTED, NULL, NULL, NULL,
		    0, 0, why ? why : cr_strerror(err));
		return;
	}
	enqueue_env(pp, e, &t, 0, NULL);
}

/* session_enqueue_batch - handle an enqueue_batch request (msg borrowed):
 * each envelope as if it came alone, one EnqueueBatchReply */
void
session_enqueue_batch(struct session_part *pp, natsMsg *msg)
{
	struct enq_target t = { natsMsg_GetReply(msg), NULL, 0 };
	const char *reply = natsMsg_GetReply(msg);
	ProtobufCMessage *m = NULL;
	EnqueueBatch *eb;
	struct enq_batch *b = NULL;
	struct claim_list claims = { NULL, NULL };
	enum cr_err err;
	size_t n;

	metrics_once();
	err = env_unpack_msg(&clawrelay__v1__enqueue_batch__descriptor, natsMsg_GetData(msg),
	    (size_t)natsMsg_GetDataLength(msg), &m);
	if (err != CR_OK || ((EnqueueBatch *)m)->n_envelopes == 0) {
		EnqueueBatchReply br = CLAWRELAY__V1__ENQUEUE_BATCH_REPLY__INIT;
		unsigned char buf[64];
		size_t len = 0;

		metric_add(m_enq_bad, 1);
		log_warn(NULL, "enqueue_batch refused: %s", err != CR_OK ? cr_strerror(err) :
		    "no envelopes");
		protobuf_c_message_free_unpacked(m, NULL);
		/* no answers: the gateway answers each of its frames as unavailable */
		br.schema_version = ENV_SCHEMA;
		if (reply != NULL && *reply != '\0' &&
		    env_pack_into(&br.base, buf, sizeof(buf), &len) == CR_OK)
			natsConnection_Publish(bus_nc(pp->s->bus), reply, buf, (int)len);
		return;
	}
	eb = (EnqueueBatch *)m;
	n = eb->n_envelopes;
	metric_add(m_enq_batches, 1);
	if ((b = calloc(1, sizeof(*b))) == NULL || (b->r = calloc(n, sizeof(*b->r))) == NULL ||
	    (b->rp = calloc(n, sizeof(*b->rp))) == NULL ||
	    (reply != NULL && *reply != '\0' && (b->reply = strdup(reply)) == NULL)) {
		if (b != NULL) {
			free(b->r);
			free(b->rp);
			free(b->reply);
			free(b);
		}
		protobuf_c_message_free_unpacked(m, NULL);
		log_error(NULL, "enqueue_batch of %zu: out of memory", n);
		return;	/* the gateway's request times out: 503, try again */
	}
	b->s = pp->s;
	b->n = n;
	for (size_t i = 0; i < n; i++) {
		clawrelay__v1__enqueue_reply__init(&b->r[i]);
		b->r[i].schema_version = ENV_SCHEMA;
		b->r[i].message_id = b->r[i].correlation_id = b->r[i].state = no_text;
		b->r[i].error = no_text;
		b->rp[i] = &b->r[i];
	}
	atomic_init(&b->left, n + 1);	/* + this loop's own hold */
	t.b = b;
	for (size_t i = 0; i < n; i++) {
		Envelope *e = eb->envelopes[i];
		const char *why = NULL;

		eb->envelopes[i] = NULL;	/* taken */
		t.idx = i;
		if (e == NULL || e->schema_version != ENV_SCHEMA || env_validate(e, &why) != CR_OK) {
			metric_add(m_enq_bad, 1);
			reply_to(pp->s, &t, CLAWRELAY__V1__ENQUEUE_STATUS__ENQ_REJECTED,
			    e ? e->message_id : NULL, e ? e->correlation_id : NULL, NULL, 0, 0,
			    why ? why : "unknown schema version");
			env_free(e);
			continue;
		}
		enqueue_env(pp, e, &t, 0, &claims);
	}
	protobuf_c_message_free_unpacked(m, NULL);
	claim_flush(pp->s, &claims);
	enq_batch_release(b);
}
