/*
 * session_dispatch.c - per-agent dispatch windows, dispatch replies, and the
 * end of a message (delivered, or failed with a notice).
 *
 * Each agent has a window of at most CLAWRELAY_INFLIGHT slots (messages
 * sent and not answered, or answered "try again" and waiting for their
 * backoff). Messages are taken lane by lane (critical, normal, low) and by
 * seq within a lane; a per-lane cursor remembers where the LMDB scan stops,
 * so only the window lives in memory. Retries go before new messages of
 * their lane. Requests of one partition are published in collection order
 * under send_mu, so one delivery replica sees an agent's messages in queue
 * order. Consecutive sends to one agent travel in one DispatchBatch (at most
 * DISPATCH_BATCH_MAX messages, DISPATCH_BATCH_BYTES bytes): under load the
 * replies of one batch free a window's worth of slots at once and the next
 * collection fills them with one request, so delivery, the gateway and the
 * connector handle a batch per round trip instead of a message; a lone
 * message is a batch of one and waits for nothing. With CLAWRELAY_STRICT_ORDER each lane has at most one message out:
 * order then holds end to end whatever delivery does, at one round trip per
 * message and lane.
 *
 * A finished message (delivered, expired, shed, rejected, attempts
 * exhausted) keeps a DELETING slot until its delete is committed, so no scan
 * can pick it up again meanwhile.
 *
 * Threads: session_collect and session_drop_locked run under mu; replies
 * come on the bus reply/timer threads; delete commits finish on the
 * committer thread. See session.h for the lock order.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "hop.h"
#include "log.h"
#include "metrics.h"
#include "notice.h"
#include "session.h"
#include "util.h"

#define DISPATCH_BATCH_MAX 256
#define DISPATCH_BATCH_BYTES (512u * 1024u)

struct dispatch_ctx {
	struct session_part *pp;
	char message_id[ULID_LEN + 1];
	uint64_t gen;
	struct session_agent *a;   /* valid while gen matches */
	uint8_t lane;
	uint64_t seq;
	uint32_t token;
	uint64_t sent_at;          /* mono ms */
	uint32_t round;            /* the agent's backoff round when sent */
	int not_sent;              /* the delivery breaker refused it */
	struct dispatch_ctx *next_failed; /* flush: requests not sent */
};

struct session_send {
	struct session_send *next;
	DispatchRequest dr;        /* dr.envelope == env */
	struct dispatch_ctx *ctx;
	Envelope *env;
};

/* the messages of one dispatch request, in the request's order */
struct dispatch_batch {
	size_t n;
	struct dispatch_ctx *ctx[];
};

struct del_ent {
	struct session_agent *a;
	uint8_t lane;
	uint64_t seq;
};

struct session_del {
	struct session_part *pp;
	uint64_t gen;
	size_t n, cap;
	struct del_ent *e;
};

static struct metric *m_dispatched, *m_requests, *m_delivered, *m_retries, *m_failed;
/* by FailureReason (FAIL_UNKNOWN .. FAIL_ATTEMPTS_EXHAUSTED) */
#define SESSION_NREASONS 6
static struct metric *m_failed_by[SESSION_NREASONS];

static void on_batch_reply(void *arg, enum cr_err err, natsMsg *reply);

/* session_work_init - an empty work list */
void
session_work_init(struct session_work *w)
{
	memset(w, 0, sizeof(*w));
	if (m_dispatched == NULL) {
		m_dispatched = metric_counter("clawrelay_session_dispatched_total", NULL,
		    "messages sent to delivery");
		m_requests = metric_counter("clawrelay_session_dispatch_requests_total", NULL,
		    "dispatch requests (batches of messages) sent to delivery");
		m_delivered = metric_counter("clawrelay_session_delivered_total", NULL,
		    "messages delivered and removed");
		m_retries = metric_counter("clawrelay_session_retries_total", NULL,
		    "attempts answered with retry, nack, timeout or offline");
		m_failed = metric_counter("clawrelay_session_failed_total", NULL,
		    "messages failed for good (expired, shed, rejected, exhausted)");
		for (int r = 0; r < SESSION_NREASONS; r++) {
			char lab[64];
			snprintf(lab, sizeof(lab), "reason=\"%s\"", env_failure_reason_name(r));
			m_failed_by[r] = metric_counter("clawrelay_session_messages_failed_total", lab,
			    "messages failed for good, by reason");
		}
	}
}

static int
work_add_del(struct session_part *pp, struct session_work *w, struct session_agent *a,
    int lane, uint64_t seq)
{
	unsigned char key[SESSION_KEY_MAX];
	size_t kl = session_key_make(key, a->id, lane, seq);

	if (w->batch == NULL && (w->batch = store_batch_new()) == NULL)
		return -1;
	if (w->del == NULL) {
		if ((w->del = calloc(1, sizeof(*w->del))) == NULL)
			return -1;
		w->del->pp = pp;
		w->del->gen = pp->gen;
	}
	if (w->del->n == w->del->cap) {
		size_t cap = w->del->cap ? w->del->cap * 2 : 8;
		struct del_ent *ne = realloc(w->del->e, cap * sizeof(*ne));
		if (ne == NULL)
			return -1;
		w->del->e = ne;
		w->del->cap = cap;
	}
	if (store_batch_del(w->batch, pp->dbq, key, kl) != CR_OK)
		return -1;
	w->del->e[w->del->n].a = a;
	w->del->e[w->del->n].lane = (uint8_t)lane;
	w->del->e[w->del->n].seq = seq;
	w->del->n++;
	return 0;
}

static void
del_free(struct session_del *d)
{
	if (d != NULL) {
		free(d->e);
		free(d);
	}
}

/* finish DELETING slots once their delete is on disk (committer thread) */
static void
del_done(void *arg, enum cr_err result)
{
	struct session_del *d = arg;

	if (result != CR_OK)
		log_error(NULL, "delete commit failed: %s (messages stay until restart)",
		    cr_strerror(result));
	if (d == NULL)
		return;
	pthread_mutex_lock(&d->pp->mu);
	if (d->gen == d->pp->gen && d->pp->open) {
		for (size_t i = 0; i < d->n; i++) {
			struct session_slot *sl = session_slot_find(d->e[i].a, d->e[i].lane,
			    d->e[i].seq);
			if (sl != NULL && sl->state == SLOT_DELETING)
				session_slot_remove(d->e[i].a, sl);
		}
	}
	pthread_mutex_unlock(&d->pp->mu);
	del_free(d);
}

static void
send_free(struct session_send *sd)
{
	env_free(sd->env);
	free(sd);
}

/* detach the next group of sends to one agent from w; *n its length */
static struct session_send *
take_group(struct session_work *w, size_t *n)
{
	struct session_send *head = w->head, *sd = head;
	size_t bytes = protobuf_c_message_get_packed_size(&head->env->base);

	*n = 1;
	while (sd->next != NULL && sd->next->ctx->a == head->ctx->a && *n < DISPATCH_BATCH_MAX) {
		size_t sz = protobuf_c_message_get_packed_size(&sd->next->env->base);
		if (bytes + sz > DISPATCH_BATCH_BYTES)
			break;
		bytes += sz;
		sd = sd->next;
		(*n)++;
	}
	w->head = sd->next;
	sd->next = NULL;
	return head;
}

/* pack and send one group (send_mu held); the contexts of a group that
 * could not be sent are chained onto *failed, to be answered once send_mu
 * is released (the answer takes mu) */
static void
send_group(struct session *s, struct session_send *group, size_t n,
    struct dispatch_ctx **failed)
{
	DispatchBatch db = CLAWRELAY__V1__DISPATCH_BATCH__INIT;
	DispatchRequest *reqs[DISPATCH_BATCH_MAX];
	struct dispatch_batch *b = malloc(sizeof(*b) + n * sizeof(b->ctx[0]));
	struct session_send *sd;
	void *buf = NULL;
	size_t len = 0, i = 0;
	enum cr_err err = CR_ERR_NOMEM;

	for (sd = group; sd != NULL; sd = sd->next, i++)
		reqs[i] = &sd->dr;
	if (brk_allow(s->dlv_brk, mono_ms()) == BRK_REFUSE) {
		/* delivery is failing: fail fast, no attempt spent */
		for (sd = group; sd != NULL; sd = sd->next)
			sd->ctx->not_sent = 1;
		err = CR_ERR_UNAVAILABLE;
	} else if (b != NULL) {
		b->n = n;
		i = 0;
		for (sd = group; sd != NULL; sd = sd->next)
			b->ctx[i++] = sd->ctx;
		db.schema_version = ENV_SCHEMA;
		db.n_requests = n;
		db.requests = reqs;
		for (sd = group; sd != NULL; sd = sd->next)
			hop_emit(sd->env, CLAWRELAY__V1__HOP_KIND__HOP_DISPATCHED, "ok", NULL);
		if ((err = env_pack(&db.base, &buf, &len)) == CR_OK)
			err = bus_request_async(s->bus, s->dispatch_subj, buf, len,
			    (int)s->cfg.dispatch_timeout_ms, on_batch_reply, b);
		free(buf);
		if (err != CR_OK)
			brk_failure(s->dlv_brk, mono_ms());	/* the allowed call failed */
	} else {
		brk_success(s->dlv_brk, mono_ms());	/* no memory: not delivery's fault */
	}
	if (err == CR_OK) {
		metric_add(m_dispatched, n);
		metric_add(m_requests, 1);
		for (sd = group; sd != NULL; sd = sd->next)
			sd->ctx = NULL;
		return;
	}
	free(b);
	for (sd = group; sd != NULL; sd = sd->next) {
		sd->ctx->next_failed = *failed;
		*failed = sd->ctx;
		sd->ctx = NULL;
	}
}

/* internal outcome: the request was never sent (breaker to delivery open) */
#define OUTCOME_NOT_SENT (-1)

static void apply_outcome(struct session_part *pp, const struct dispatch_ctx *ctx,
    int outcome, const char *detail, uint64_t retry_ms, struct session_work *w);

/* answer contexts whose request was never sent: try again later */
static void
fail_unsent(struct session_part *pp, struct dispatch_ctx *list)
{
	struct session_work w;
	struct session_agent *prev = NULL;
	struct dispatch_ctx *ctx, *next;
	int open;

	session_work_init(&w);
	pthread_mutex_lock(&pp->mu);
	open = pp->open;
	for (ctx = list; ctx != NULL; ctx = ctx->next_failed)
		if (open && ctx->gen == pp->gen)
			apply_outcome(pp, ctx, ctx->not_sent ? OUTCOME_NOT_SENT :
			    CLAWRELAY__V1__DISPATCH_OUTCOME__DISPATCH_RETRY,
			    "dispatch request not sent", 0, &w);
	for (ctx = list; ctx != NULL; ctx = ctx->next_failed) {
		/* refused by the breaker to delivery: the sweep sends again once
		 * it may (collecting now would only be refused again) */
		if (open && ctx->gen == pp->gen && ctx->a != prev && !ctx->not_sent)
			session_collect(pp, ctx->a, &w);
		prev = ctx->a;
	}
	session_work_flush_unlock(pp, &w);
	for (ctx = list; ctx != NULL; ctx = next) {
		next = ctx->next_failed;
		free(ctx);
	}
}

/* session_work_flush_unlock - commit deletes, release mu, send in order */
void
session_work_flush_unlock(struct session_part *pp, struct session_work *w)
{
	struct session *s = pp->s;
	struct session_send *sd;
	struct dispatch_ctx *failed = NULL;

	if (w->batch != NULL) {
		struct session_del *d = w->del;
		enum cr_err err = CR_ERR_UNAVAILABLE;

		/* deletes of delivered messages need no fsync of their own (see
		 * session.h); failure counters and drops do */
		if (pp->com != NULL && !w->durable && s->cfg.delete_delay_ms > 0)
			err = store_committer_submit_lazy(pp->com, w->batch, del_done, d,
			    (unsigned)s->cfg.delete_delay_ms * 1000u);
		else if (pp->com != NULL)
			err = store_committer_submit(pp->com, w->batch, del_done, d);
		if (err != CR_OK) {
			/* stopping: the messages stay in LMDB for the next owner */
			if (pp->com == NULL)
				store_batch_free(w->batch);
			if (d != NULL) {
				for (size_t i = 0; i < d->n; i++) {
					struct session_slot *sl = session_slot_find(d->e[i].a,
					    d->e[i].lane, d->e[i].seq);
					if (sl != NULL && sl->state == SLOT_DELETING)
						session_slot_remove(d->e[i].a, sl);
				}
				del_free(d);
			}
		}
		w->batch = NULL;
		w->del = NULL;
		w->durable = 0;
	} else if (w->del != NULL) {
		del_free(w->del);
		w->del = NULL;
	}
	if (w->head == NULL) {
		pthread_mutex_unlock(&pp->mu);
		return;
	}
	pthread_mutex_lock(&pp->send_mu);
	pthread_mutex_unlock(&pp->mu);
	while (w->head != NULL) {
		size_t n;
		struct session_send *group = take_group(w, &n);

		send_group(s, group, n, &failed);
		while ((sd = group) != NULL) {
			group = sd->next;
			send_free(sd);
		}
	}
	w->tail = NULL;
	pthread_mutex_unlock(&pp->send_mu);
	if (failed != NULL)
		fail_unsent(pp, failed);
}

/* session_publish_receipt - a Receipt for the notifier (batched by hop.c) */
void
session_publish_receipt(struct session *s, const char *message_id, const char *correlation_id,
    const char *sender, const char *recipient, const char *state, uint32_t attempts)
{
	Receipt r = CLAWRELAY__V1__RECEIPT__INIT;

	(void)s;
	r.schema_version = ENV_SCHEMA;
	r.message_id = SESSION_UNCONST(message_id);
	r.correlation_id = SESSION_UNCONST(correlation_id);
	r.sender = SESSION_UNCONST(sender);
	r.recipient = SESSION_UNCONST(recipient);
	r.state = SESSION_UNCONST(state);
	r.at_ms = now_ms();
	r.attempts = attempts;
	hop_receipt(&r, sender);
}

static Clawrelay__V1__HopKind
hop_of(int reason)
{
	switch (reason) {
	case CLAWRELAY__V1__FAILURE_REASON__FAIL_EXPIRED:
		return CLAWRELAY__V1__HOP_KIND__HOP_EXPIRED;
	case CLAWRELAY__V1__FAILURE_REASON__FAIL_REJECTED:
		return CLAWRELAY__V1__HOP_KIND__HOP_REJECTED;
	default:
		return CLAWRELAY__V1__HOP_KIND__HOP_FAILED;
	}
}

/* session_drop_locked - end sl's message for good with a failure notice */
void
session_drop_locked(struct session_part *pp, struct session_agent *a, struct session_slot *sl,
    int reason, const char *detail, struct session_work *w)
{
	struct session *s = pp->s;
	struct log_ctx lc = { sl->correlation_id, sl->message_id, a->id, sl->trace_id };

	if (work_add_del(pp, w, a, sl->lane, sl->seq) != 0) {
		log_error(&lc, "cannot record a delete (out of memory); message stays queued");
		sl->state = SLOT_WAITING;
		return;
	}
	if (session_books_add(pp, w->batch, SESSION_BOOKS_FAILED +
	    (reason >= 0 && reason < SESSION_BOOKS_NREASONS ? (unsigned)reason : 0)) != 0)
		log_error(&lc, "out of memory: the books miss this failure");
	if (session_idem_finish(pp, sl, reason == CLAWRELAY__V1__FAILURE_REASON__FAIL_EXPIRED ?
	    SESSION_IDEM_EXPIRED : SESSION_IDEM_FAILED, w) != 0)
		log_error(&lc, "out of memory: a duplicate of this message will read as delivered");
	if (sl->state == SLOT_INFLIGHT && pp->inflight > 0)
		pp->inflight--;
	sl->state = SLOT_DELETING;
	if (a->n[sl->lane] > 0)
		a->n[sl->lane]--;
	a->bytes = a->bytes > sl->vlen ? a->bytes - sl->vlen : 0;
	if (pp->depth > 0)
		pp->depth--;
	session_pair_sub(pp, a, sl->sender, sl->vlen);
	if (reason == CLAWRELAY__V1__FAILURE_REASON__FAIL_EXPIRED)
		a->expired++;
	else if (reason == CLAWRELAY__V1__FAILURE_REASON__FAIL_SHED)
		a->shed++;
	a->failed++;
	session_counters_put(pp, a, w);
	metric_add(m_failed, 1);
	if (reason >= 0 && reason < SESSION_NREASONS)
		metric_add(m_failed_by[reason], 1);

	{
		struct notice n = { sl->message_id, sl->correlation_id, sl->sender, a->id, reason,
			detail, sl->created_at_ms, sl->attempts };
		if (notice_publish(s->bus, "failure", &n) != CR_OK)
			log_error(&lc, "failure notice not published");
	}
	hop_emit_ids(sl->correlation_id, sl->message_id, sl->sender, a->id, sl->trace_id,
	    hop_of(reason), "error", env_failure_reason_name(reason));
	log_info(&lc, "message failed: %s (%s) after %u attempts",
	    env_failure_reason_name(reason), detail ? detail : "", sl->attempts);
}

/* queue a dispatch of sl (state WAITING, or fresh) with envelope e (takes
 * ownership); 1 if queued, 0 if the message ended instead */
static int
make_send(struct session_part *pp, struct session_agent *a, struct session_slot *sl,
    uint64_t expires_at_ms, Envelope *e, struct session_work *w)
{
	struct session *s = pp->s;
	struct session_send *sd = NULL;
	struct dispatch_ctx *ctx = NULL;
	uint64_t wall = now_ms();

	if (expires_at_ms != 0 && expires_at_ms <= wall) {
		session_drop_locked(pp, a, sl, CLAWRELAY__V1__FAILURE_REASON__FAIL_EXPIRED,
		    "ttl passed before delivery", w);
		env_free(e);
		return 0;
	}
	if (s->cfg.max_attempts > 0 && sl->attempts >= (uint64_t)s->cfg.max_attempts) {
		session_drop_locked(pp, a, sl,
		    CLAWRELAY__V1__FAILURE_REASON__FAIL_ATTEMPTS_EXHAUSTED,
		    "max attempts reached", w);
		env_free(e);
		return 0;
	}
	sd = calloc(1, sizeof(*sd));
	ctx = calloc(1, sizeof(*ctx));
	if (sd == NULL || ctx == NULL)
		goto fail;
	sl->attempts++;
	sl->token++;
	e->attempt = sl->attempts;
	e->queue_seq = sl->seq;	/* the connector may keep lane order by it */
	clawrelay__v1__dispatch_request__init(&sd->dr);
	sd->dr.schema_version = ENV_SCHEMA;
	sd->dr.envelope = e;
	sd->dr.partition = pp->idx;
	sd->dr.deadline_ms = wall + (uint64_t)s->cfg.dispatch_timeout_ms;
	snprintf(ctx->message_id, sizeof(ctx->message_id), "%s", sl->message_id);
	ctx->pp = pp;
	ctx->gen = pp->gen;
	ctx->a = a;
	ctx->lane = sl->lane;
	ctx->seq = sl->seq;
	ctx->token = sl->token;
	ctx->sent_at = mono_ms();
	ctx->round = a->round;
	sd->ctx = ctx;
	sd->env = e;
	if (w->tail)
		w->tail->next = sd;
	else
		w->head = sd;
	w->tail = sd;
	sl->state = SLOT_INFLIGHT;
	pp->inflight++;
	return 1;
fail:
	free(sd);
	free(ctx);
	env_free(e);
	sl->state = SLOT_WAITING;
	return 0;
}

static Envelope *
unpack_stored(const void *v, size_t vl, uint64_t *expires)
{
	const unsigned char *p = v;

	if (vl < SESSION_VHDR)
		return NULL;
	*expires = session_be64_get(p);
	return clawrelay__v1__envelope__unpack(NULL, vl - SESSION_VHDR, p + SESSION_VHDR);
}

/* the waiting slot of lane with the lowest seq, or NULL */
static struct session_slot *
first_waiting(struct session_agent *a, int lane)
{
	struct session_slot *best = NULL;

	for (size_t i = 0; i < a->nslots; i++) {
		struct session_slot *sl = &a->slots[i];
		if (sl->state == SLOT_WAITING && sl->lane == lane &&
		    (best == NULL || sl->seq < best->seq))
			best = sl;
	}
	return best;
}

/* session_collect - fill agent a's window; caller holds mu */
void
session_collect(struct session_part *pp, struct session_agent *a, struct session_work *w)
{
	struct session *s = pp->s;
	uint64_t now = mono_ms();
	uint64_t limit = (uint64_t)s->cfg.inflight;
	uint64_t inflight = 0, active = 0, lane_active[SESSION_LANES] = {0};
	int probe = 0, sent = 0, crit_only = 0;

	if (!pp->open || a == NULL)
		return;
	if (a->held) {
		/* the destination's breaker is open: nothing until it may be
		 * probed, then one message */
		if (now < a->hold_until)
			return;
		probe = 1;
	}
	if (a->presence == AG_OFFLINE) {
		if (now < a->next_try)
			return;
		probe = 1;
	} else if (now < a->next_try) {
		/* backing off; critical skips the backoff (with a base delay
		 * of its own between its failed attempts) */
		if (a->n[0] == 0 || now < a->crit_next_try)
			return;
		crit_only = 1;
	}
	for (size_t i = 0; i < a->nslots; i++) {
		struct session_slot *sl = &a->slots[i];
		if (sl->state == SLOT_DELETING)
			continue;
		active++;
		lane_active[sl->lane]++;
		if (sl->state == SLOT_INFLIGHT)
			inflight++;
	}
	if (probe) {
		if (inflight > 0)
			return;
		limit = 1;
	}
	for (int lane = 0; lane < (crit_only ? 1 : SESSION_LANES); lane++) {
		/* a lane waits while a more urgent one still has messages the
		 * window has not taken (its retries included): slots of this lane
		 * left waiting from before, e.g. an offline agent's probes, must
		 * not overtake them */
		int behind = 0;
		for (int h = 0; h < lane; h++)
			behind |= a->n[h] > lane_active[h] || first_waiting(a, h) != NULL;
		if (behind)
			break;
		/* retries first, oldest first */
		for (;;) {
			struct session_slot *sl;
			unsigned char key[SESSION_KEY_MAX];
			size_t kl;
			void *v = NULL;
			size_t vl = 0;
			uint64_t exp = 0;
			Envelope *e;
			enum cr_err err;

			if (inflight >= limit)
				goto done;
			if (s->cfg.strict_order && lane_active[lane] > 0 &&
			    first_waiting(a, lane) == NULL)
				break;
			if ((sl = first_waiting(a, lane)) == NULL)
				break;
			kl = session_key_make(key, a->id, lane, sl->seq);
			err = store_get(pp->st, pp->dbq, key, kl, &v, &vl);
			if (err == CR_ERR_NOT_FOUND) {
				/* gone meanwhile (another owner's sweep): forget it */
				session_slot_remove(a, sl);
				active--;
				lane_active[lane]--;
				continue;
			}
			if (err != CR_OK || (e = unpack_stored(v, vl, &exp)) == NULL) {
				free(v);
				if (err == CR_OK) {
					session_drop_locked(pp, a, sl,
					    CLAWRELAY__V1__FAILURE_REASON__FAIL_REJECTED,
					    "stored message unreadable", w);
					active--;
					lane_active[lane]--;
					continue;
				}
				goto done;
			}
			free(v);
			if (make_send(pp, a, sl, exp, e, w)) {
				inflight++;
				sent++;
			} else {
				active--;
				lane_active[lane]--;
			}
			if (s->cfg.strict_order)
				break;
		}
		/* then new messages of the lane, from the cursor */
		if (a->n[lane] > lane_active[lane] && active < limit &&
		    !(s->cfg.strict_order && lane_active[lane] > 0)) {
			unsigned char start[SESSION_KEY_MAX];
			size_t sl_len = session_key_make(start, a->id, lane, a->cursor[lane]);
			struct store_iter *it = NULL;
			const void *k, *v;
			size_t kl, vl;

			if (sl_len == 0 || store_iter_new_at(pp->st, pp->dbq, start, sl_len - 8,
			    start, sl_len, &it) != CR_OK)
				continue;
			while (active < limit && inflight < limit &&
			    !(s->cfg.strict_order && lane_active[lane] > 0) &&
			    store_iter_next(it, &k, &kl, &v, &vl) == 1) {
				uint64_t seq = session_be64_get((const unsigned char *)k + kl - 8);
				uint64_t exp = 0;
				struct session_slot *sl;
				Envelope *e;

				a->cursor[lane] = seq + 1;
				if (session_slot_find(a, lane, seq) != NULL)
					continue;
				if ((e = unpack_stored(v, vl, &exp)) == NULL) {
					Envelope blank = CLAWRELAY__V1__ENVELOPE__INIT;
					sl = session_slot_new(a, lane, seq, vl, &blank);
					if (sl != NULL)
						session_drop_locked(pp, a, sl,
						    CLAWRELAY__V1__FAILURE_REASON__FAIL_REJECTED,
						    "stored message unreadable", w);
					continue;
				}
				if ((sl = session_slot_new(a, lane, seq, vl, e)) == NULL) {
					env_free(e);
					a->cursor[lane] = seq;
					break;
				}
				if (make_send(pp, a, sl, exp, e, w)) {
					inflight++;
					active++;
					lane_active[lane]++;
					sent++;
				}
			}
			store_iter_free(it);
		}
		if (inflight >= limit)
			break;
	}
done:
	if (probe && sent && a->held)
		a->hold_until = now + (uint64_t)s->cfg.dispatch_timeout_ms;	/* until it answers */
	else if (probe && sent)
		a->next_try = now + (uint64_t)s->cfg.offline_probe_ms;
}

/* one message's outcome (mu held) */
static void
apply_outcome(struct session_part *pp, const struct dispatch_ctx *ctx, int outcome,
    const char *detail, uint64_t retry_ms, struct session_work *w)
{
	struct session *s = pp->s;
	struct session_agent *a = ctx->a;
	struct session_slot *sl = session_slot_find(a, ctx->lane, ctx->seq);

	if (sl == NULL || sl->state != SLOT_INFLIGHT || sl->token != ctx->token)
		return;
	pp->inflight--;
	switch (outcome) {
	case CLAWRELAY__V1__DISPATCH_OUTCOME__DISPATCH_DELIVERED:
		if (work_add_del(pp, w, a, sl->lane, sl->seq) != 0) {
			sl->state = SLOT_WAITING;	/* try again later rather than lose it */
			break;
		}
		if (session_books_add(pp, w->batch, SESSION_BOOKS_DELIVERED) != 0)
			log_error(NULL, "out of memory: the books miss a delivery");
		(void)session_idem_finish(pp, sl, SESSION_IDEM_DELIVERED, w); /* -1: reads as delivered */
		sl->state = SLOT_DELETING;
		if (a->n[sl->lane] > 0)
			a->n[sl->lane]--;
		a->bytes = a->bytes > sl->vlen ? a->bytes - sl->vlen : 0;
		if (pp->depth > 0)
			pp->depth--;
		session_pair_sub(pp, a, sl->sender, sl->vlen);
		a->delivered++;
		a->fails = 0;
		if (a->presence != AG_ONLINE) {
			a->presence = AG_ONLINE;
			a->next_try = 0;
		}
		if (a->held) {
			a->held = 0;	/* the probe went through */
			a->hold_until = 0;
		}
		metric_add(m_delivered, 1);
		session_publish_receipt(s, sl->message_id, sl->correlation_id, sl->sender, a->id,
		    "delivered", sl->attempts);
		break;
	case CLAWRELAY__V1__DISPATCH_OUTCOME__DISPATCH_OFFLINE:
		sl->state = SLOT_WAITING;
		metric_add(m_retries, 1);
		/* a connect newer than this attempt wins */
		if (ctx->sent_at >= a->online_since || a->presence != AG_ONLINE) {
			if (a->presence != AG_OFFLINE) {
				struct log_ctx lc = { NULL, NULL, a->id, NULL };
				log_info(&lc, "agent offline: dispatch paused until it connects");
			}
			a->presence = AG_OFFLINE;
			a->next_try = mono_ms() + (uint64_t)s->cfg.offline_probe_ms;
		}
		break;
	case CLAWRELAY__V1__DISPATCH_OUTCOME__DISPATCH_REJECTED:
		session_drop_locked(pp, a, sl, CLAWRELAY__V1__FAILURE_REASON__FAIL_REJECTED,
		    detail && *detail ? detail : "destination refused", w);
		break;
	case CLAWRELAY__V1__DISPATCH_OUTCOME__DISPATCH_BREAKER_OPEN:
		/* not tried: no attempt spent; hold the agent until its
		 * destination may be probed */
		sl->state = SLOT_WAITING;
		if (sl->attempts > 0)
			sl->attempts--;
		session_agent_hold(pp, a, retry_ms ? retry_ms : 1000);
		break;
	case OUTCOME_NOT_SENT: {
		/* relay-session -> delivery breaker open: not sent, no attempt
		 * spent; the sweep sends again once it lets calls through */
		uint64_t retry = brkset_retry_in(s->dlv_brk);
		uint64_t at = mono_ms() + (retry > 0 ? retry : 100);

		sl->state = SLOT_WAITING;
		if (sl->attempts > 0)
			sl->attempts--;
		if (a->next_try < at)
			a->next_try = at;
		if (a->crit_next_try < at)
			a->crit_next_try = at;
		break;
	}
	default: /* NACKED, RETRY, timeout, no responders */
		sl->state = SLOT_WAITING;
		metric_add(m_retries, 1);
		if (sl->lane == 0)
			a->crit_next_try = mono_ms() + (uint64_t)s->cfg.backoff_base_ms;
		/* one failed round of the window is one step of backoff, not 32 */
		if (ctx->round == a->round) {
			a->fails++;
			a->round++;
			a->next_try = mono_ms() + backoff_ms(a->fails - 1,
			    (uint64_t)s->cfg.backoff_base_ms, (uint64_t)s->cfg.backoff_max_ms);
		}
		if (s->cfg.max_attempts > 0 && sl->attempts >= (uint64_t)s->cfg.max_attempts)
			session_drop_locked(pp, a, sl,
			    CLAWRELAY__V1__FAILURE_REASON__FAIL_ATTEMPTS_EXHAUSTED,
			    detail ? detail : "max attempts reached", w);
		break;
	}
}

/* the result for the i-th message of b (message_id mid): in the same place
 * normally, else found by ID; NULL if the reply has none */
static const DispatchResult *
find_result(const DispatchBatchResult *r, size_t i, const char *mid)
{
	if (i < r->n_results && r->results[i] != NULL &&
	    strcmp(r->results[i]->message_id, mid) == 0)
		return r->results[i];
	for (size_t k = 0; k < r->n_results; k++)
		if (r->results[k] != NULL && strcmp(r->results[k]->message_id, mid) == 0)
			return r->results[k];
	return NULL;
}

/* a dispatch batch's outcome (bus reply or timer thread) */
static void
on_batch_reply(void *arg, enum cr_err err, natsMsg *reply)
{
	struct dispatch_batch *b = arg;
	struct session_part *pp = b->ctx[0]->pp;
	ProtobufCMessage *m = NULL;
	const DispatchBatchResult *r = NULL;
	const char *detail = NULL;
	struct session_work w;

	if (err == CR_OK && reply != NULL) {
		if (env_unpack_msg(&clawrelay__v1__dispatch_batch_result__descriptor,
		    natsMsg_GetData(reply), (size_t)natsMsg_GetDataLength(reply), &m) == CR_OK)
			r = (const DispatchBatchResult *)m;
		else
			detail = "undecodable dispatch result";
	} else if (err == CR_ERR_TIMEOUT) {
		detail = "dispatch timeout";
	} else {
		detail = "no delivery responders";
	}
	/* relay-session -> delivery: an answer (whatever it says) is health */
	if (detail == NULL || r != NULL)
		brk_success(pp->s->dlv_brk, mono_ms());
	else
		brk_failure(pp->s->dlv_brk, mono_ms());
	session_work_init(&w);
	pthread_mutex_lock(&pp->mu);
	if (b->ctx[0]->gen != pp->gen || !pp->open) {
		pthread_mutex_unlock(&pp->mu);
		goto out;
	}
	for (size_t i = 0; i < b->n; i++) {
		int outcome = CLAWRELAY__V1__DISPATCH_OUTCOME__DISPATCH_RETRY;
		const char *d = detail;
		uint64_t retry = 0;

		if (r != NULL) {
			const DispatchResult *x = find_result(r, i, b->ctx[i]->message_id);
			if (x != NULL) {
				outcome = x->outcome;
				d = x->detail;
				retry = x->retry_after_ms;
			} else {
				d = "no result for the message";
			}
		}
		apply_outcome(pp, b->ctx[i], outcome, d, retry, &w);
	}
	for (size_t i = 0; i < b->n; i++)
		if (i == 0 || b->ctx[i]->a != b->ctx[i - 1]->a)
			session_collect(pp, b->ctx[i]->a, &w);
	session_work_flush_unlock(pp, &w);
out:
	protobuf_c_message_free_unpacked(m, NULL);
	for (size_t i = 0; i < b->n; i++)
		free(b->ctx[i]);
	free(b);
}

/* session_agent_hold - a's destination breaker is open for ms (0: closed);
 * caller holds mu */
void
session_agent_hold(struct session_part *pp, struct session_agent *a, uint64_t ms)
{
	if (ms == 0) {
		a->held = 0;
		a->hold_until = 0;
		return;
	}
	if (!a->held) {
		struct log_ctx lc = { NULL, NULL, a->id, NULL };
		log_info(&lc, "destination breaker open: dispatch held for %llu ms, then one probe",
		    (unsigned long long)ms);
	}
	a->held = 1;
	a->hold_until = mono_ms() + ms;
}

/* session_on_breaker - delivery's breaker events (<P>.breaker.delivery):
 * an agent whose destination breaker opened gets nothing until it may be
 * probed; when it closes, its queue moves at once */
void
session_on_breaker(void *arg, natsMsg *msg)
{
	struct session *s = arg;
	struct brkset_event ev;
	cJSON *root = NULL;
	struct session_part *pp;
	struct session_agent *a;
	struct session_work w;

	if (brkset_event_parse(natsMsg_GetData(msg), (size_t)natsMsg_GetDataLength(msg),
	    &root, &ev) != 0 || strcmp(ev.boundary, "destination") != 0 ||
	    !env_id_ok(ev.name))
		goto out;
	pp = &s->parts[partition_of(ev.name, s->nparts)];
	session_work_init(&w);
	pthread_mutex_lock(&pp->mu);
	if (!pp->open || (a = session_agent_get(pp, ev.name, 0)) == NULL) {
		pthread_mutex_unlock(&pp->mu);
		goto out;
	}
	if (strcmp(ev.state, "open") == 0) {
		session_agent_hold(pp, a, ev.retry_in_ms ? ev.retry_in_ms : 1000);
	} else if (strcmp(ev.state, "closed") == 0 && a->held) {
		session_agent_hold(pp, a, 0);
		session_collect(pp, a, &w);
	}
	session_work_flush_unlock(pp, &w);
out:
	cJSON_Delete(root);
}
