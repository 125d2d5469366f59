/*
 * session_sweep.c - the partition's periodic work on the main tick:
 *   - expiry: walk DB q from a saved key, at most SWEEP_BATCH entries per
 *     tick, and end every expired message that is not in flight (Failure
 *     expired + HOP_EXPIRED, counted for the next reconnect_ack);
 *   - idempotency: every few seconds, walk DB idem the same way and delete
 *     entries older than the window;
 *   - nonces: delete those past NONCE_TTL_S from the front of DB nonce
 *     (time-ordered keys: the walk stops at the first one still valid);
 *   - delay warnings: per agent and lane, from a cursor, publish one
 *     Failure on <P>.delayed.<sender> for each message still queued
 *     DELAY_WARN_S after it was accepted (the notifier turns it into the
 *     public notice); see sweep_delayed;
 *   - dispatch for agents whose backoff ended or whose offline probe is due.
 * Work per tick is bounded, so a long backlog costs several ticks, never a
 * long stall of the lease renewals that share the main thread.
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

static void
idem_done(void *arg, enum cr_err result)
{
	if (result != CR_OK)
		log_warn(NULL, "idempotency sweep commit failed: %s", cr_strerror(result));
}

/* caller holds mu */
static void
sweep_expired(struct session_part *pp, struct session_work *w)
{
	struct session *s = pp->s;
	struct store_iter *it = NULL;
	const void *k, *v;
	size_t kl, vl;
	long long budget = s->cfg.sweep_batch;
	uint64_t wall = now_ms();
	int r = 0;

	if (store_iter_new_at(pp->st, pp->dbq, NULL, 0, pp->sweep_key, pp->sweep_klen, &it) != CR_OK)
		return;
	while (budget-- > 0 && (r = store_iter_next(it, &k, &kl, &v, &vl)) == 1) {
		char rcpt[129];
		int lane;
		uint64_t seq;
		struct session_agent *a;
		struct session_slot *sl;
		Envelope *e;

		if (kl < sizeof(pp->sweep_key)) {
			memcpy(pp->sweep_key, k, kl);
			pp->sweep_key[kl] = 0;	/* the smallest key after this one */
			pp->sweep_klen = kl + 1;
		}
		if (vl < SESSION_VHDR || session_key_parse(k, kl, rcpt, &lane, &seq) != 0)
			continue;
		if (session_be64_get(v) == 0 || session_be64_get(v) > wall)
			continue;
		if ((a = session_agent_get(pp, rcpt, 1)) == NULL)
			continue;
		if ((sl = session_slot_find(a, lane, seq)) != NULL) {
			/* in flight or being deleted: its own path ends it; waiting
			 * (offline, backing off): it ends here */
			if (sl->state == SLOT_WAITING)
				session_drop_locked(pp, a, sl,
				    CLAWRELAY__V1__FAILURE_REASON__FAIL_EXPIRED,
				    "ttl passed while waiting to be retried", w);
			continue;
		}
		e = clawrelay__v1__envelope__unpack(NULL, vl - SESSION_VHDR,
		    (const unsigned char *)v + SESSION_VHDR);
		if (e == NULL) {
			Envelope blank = CLAWRELAY__V1__ENVELOPE__INIT;
			sl = session_slot_new(a, lane, seq, vl, &blank);
		} else {
			sl = session_slot_new(a, lane, seq, vl, e);
			env_free(e);
		}
		if (sl != NULL)
			session_drop_locked(pp, a, sl, CLAWRELAY__V1__FAILURE_REASON__FAIL_EXPIRED,
			    "ttl passed while queued", w);
	}
	if (r == 0)
		pp->sweep_klen = 0;	/* end reached: start over next time */
	store_iter_free(it);
}

/* caller holds mu */
static void
sweep_idem(struct session_part *pp)
{
	struct session *s = pp->s;
	struct store_iter *it = NULL;
	struct store_batch *b = NULL;
	const void *k, *v;
	size_t kl, vl;
	long long budget = s->cfg.sweep_batch;
	uint64_t cutoff = now_ms() - (uint64_t)s->cfg.idem_window_s * 1000u;
	int r = 0;

	if (store_iter_new_at(pp->st, pp->dbidem, NULL, 0, pp->idem_key, pp->idem_klen, &it) != CR_OK)
		return;
	while (budget-- > 0 && (r = store_iter_next(it, &k, &kl, &v, &vl)) == 1) {
		if (kl < sizeof(pp->idem_key)) {
			memcpy(pp->idem_key, k, kl);
			pp->idem_key[kl] = 0;
			pp->idem_klen = kl + 1;
		}
		if (vl >= 8 && session_be64_get(v) >= cutoff)
			continue;
		if (b == NULL && (b = store_batch_new()) == NULL)
			break;
		store_batch_del(b, pp->dbidem, k, kl);
	}
	if (r == 0) {
		pp->idem_klen = 0;
		pp->idem_next = mono_ms() + 10000;
	}
	store_iter_free(it);
	/* a lost sweep delete is swept again: no fsync of its own */
	if (b != NULL)
		store_committer_submit_lazy(pp->com, b, idem_done, NULL,
		    (unsigned)s->cfg.delete_delay_ms * 1000u);
}

/* caller holds mu: delete the nonces past NONCE_TTL_S from the front of DB
 * nonce (keys start with the time) and from the in-memory set */
static void
sweep_nonce(struct session_part *pp)
{
	struct session *s = pp->s;
	struct store_iter *it = NULL;
	struct store_batch *b = NULL;
	const void *k, *v;
	size_t kl, vl;
	long long budget = s->cfg.sweep_batch;
	uint64_t cutoff = now_ms() - (uint64_t)s->cfg.nonce_ttl_s * 1000u;

	if (store_iter_new(pp->st, pp->dbnonce, NULL, 0, &it) != CR_OK)
		return;
	while (budget-- > 0 && store_iter_next(it, &k, &kl, &v, &vl) == 1) {
		struct session_nonce_ent ne;

		if (kl >= 8 && session_be64_get(k) >= cutoff)
			break;
		if (b == NULL && (b = store_batch_new()) == NULL)
			break;
		store_batch_del(b, pp->dbnonce, k, kl);
		if (kl > 8 && session_nonce_hash((const unsigned char *)k + 8, kl - 8, &ne) == 0)
			session_nonce_del(&pp->nonces, &ne);
	}
	store_iter_free(it);
	/* lost in a crash, they are skipped at open and swept again */
	if (b != NULL)
		store_committer_submit_lazy(pp->com, b, idem_done, NULL,
		    (unsigned)s->cfg.delete_delay_ms * 1000u);
}

/* one delayed notice for e, accepted at acc (caller holds mu) */
static void
delayed_notice(struct session_part *pp, const Envelope *e, uint64_t acc, uint64_t wall)
{
	char detail[128];
	struct log_ctx lc = { e->correlation_id, e->message_id, e->recipient, e->trace_id };
	struct notice n = { e->message_id, e->correlation_id, e->sender, e->recipient,
		CLAWRELAY__V1__FAILURE_REASON__FAIL_UNKNOWN, detail, e->created_at_ms, 0 };

	snprintf(detail, sizeof(detail), "still queued %llu s after it was accepted",
	    (unsigned long long)((wall - acc) / 1000u));
	if (notice_publish(pp->s->bus, "delayed", &n) == CR_OK)
		pp->delayed_sent++;
	log_info(&lc, "delayed: %s", detail);
}

/* session_warned_put - persist the agent's delay-warning cursors into b */
void
session_warned_put(struct session_part *pp, struct session_agent *a, struct store_batch *b)
{
	unsigned char key[130], val[8 * SESSION_LANES];
	size_t n = strlen(a->id);

	key[0] = 'w';
	memcpy(key + 1, a->id, n);
	for (int l = 0; l < SESSION_LANES; l++)
		session_be64_put(val + 8 * l, a->warned[l]);
	store_batch_put(b, pp->dbmeta, key, n + 1, val, sizeof(val));
}

/*
 * caller holds mu: delayed notices. Within an agent's lane, queue order is
 * acceptance order, so each lane keeps a cursor (a->warned: the next seq to
 * look at) and the wall time its front message becomes due (a->warn_due).
 * A lane is looked at only when that time has come: from the cursor, each
 * message queued DELAY_WARN_S after acceptance gets one notice and the cursor
 * moves past it; the first younger message sets the next due time. The
 * cursors are kept in DB meta ("w<agent>") when they move, so a restart or a
 * takeover does not warn again. Nothing is written per message on the hot
 * path.
 */
static void
sweep_delayed(struct session_part *pp)
{
	struct session *s = pp->s;
	struct store_batch *b = NULL;
	long long budget = s->cfg.sweep_batch;
	uint64_t wall = now_ms(), warn_ms = (uint64_t)s->cfg.delay_warn_s * 1000u;

	if (s->cfg.delay_warn_s <= 0)
		return;
	for (int i = 0; i < SESSION_AGENT_BUCKETS && budget > 0; i++)
	for (struct session_agent *a = pp->agents[i]; a != NULL && budget > 0; a = a->next) {
		int moved = 0;

		for (int lane = 0; lane < SESSION_LANES && budget > 0; lane++) {
			unsigned char start[SESSION_KEY_MAX];
			size_t kl0;
			struct store_iter *it = NULL;
			const void *k, *v;
			size_t kl, vl;
			int r, more = 0;

			if (a->n[lane] == 0 || wall < a->warn_due[lane])
				continue;
			kl0 = session_key_make(start, a->id, lane, a->warned[lane]);
			if (kl0 == 0 || store_iter_new_at(pp->st, pp->dbq, start, kl0 - 8,
			    start, kl0, &it) != CR_OK)
				continue;
			while (budget > 0 && (r = store_iter_next(it, &k, &kl, &v, &vl)) == 1) {
				uint64_t seq = session_be64_get((const unsigned char *)k + kl - 8);
				Envelope *e = NULL;

				budget--;
				if (vl > SESSION_VHDR)
					e = clawrelay__v1__envelope__unpack(NULL, vl - SESSION_VHDR,
					    (const unsigned char *)v + SESSION_VHDR);
				if (e != NULL && e->kind != CLAWRELAY__V1__KIND__KIND_DELIVERY_STATUS &&
				    e->expires_at_ms > e->accepted_at_ms + warn_ms &&
				    e->accepted_at_ms + warn_ms > wall) {
					/* the front is not due yet: nor is anything behind it */
					a->warn_due[lane] = e->accepted_at_ms + warn_ms;
					env_free(e);
					more = 1;
					break;
				}
				if (e != NULL && e->sender != NULL && e->message_id != NULL &&
				    e->kind != CLAWRELAY__V1__KIND__KIND_DELIVERY_STATUS &&
				    e->expires_at_ms > e->accepted_at_ms + warn_ms)
					delayed_notice(pp, e, e->accepted_at_ms, wall);
				env_free(e);
				a->warned[lane] = seq + 1;
				moved = 1;
			}
			store_iter_free(it);
			/* all looked at: the next message accepted from now on is due
			 * a warning time from now at the earliest */
			if (!more && budget > 0)
				a->warn_due[lane] = wall + warn_ms;
		}
		if (moved && (b != NULL || (b = store_batch_new()) != NULL))
			session_warned_put(pp, a, b);
	}
	/* lost in a crash, a cursor moves again: one more notice at most */
	if (b != NULL)
		store_committer_submit_lazy(pp->com, b, idem_done, NULL,
		    (unsigned)s->cfg.delete_delay_ms * 1000u);
}

/* session_sweep - bounded expiry and idempotency sweeps, due dispatches */
void
session_sweep(struct session *s, struct session_part *pp)
{
	struct session_work w;
	uint64_t now = mono_ms();

	session_work_init(&w);
	pthread_mutex_lock(&pp->mu);
	if (!pp->open) {
		pthread_mutex_unlock(&pp->mu);
		return;
	}
	sweep_expired(pp, &w);
	if (now >= pp->idem_next)
		sweep_idem(pp);
	sweep_nonce(pp);
	sweep_delayed(pp);
	for (int i = 0; i < SESSION_AGENT_BUCKETS; i++) {
		for (struct session_agent *a = pp->agents[i]; a != NULL; a = a->next) {
			int has_waiting = 0;
			for (size_t j = 0; j < a->nslots && !has_waiting; j++)
				has_waiting = a->slots[j].state == SLOT_WAITING;
			/* anything to send, and allowed to now? */
			if (!has_waiting && a->n[0] + a->n[1] + a->n[2] <= a->nslots)
				continue;
			if (now < a->next_try && (a->n[0] == 0 || now < a->crit_next_try))
				continue;
			if (a->held && now < a->hold_until)
				continue;
			session_collect(pp, a, &w);
		}
	}
	metric_set(pp->m_depth, (int64_t)pp->depth);
	metric_set(pp->m_inflight, (int64_t)pp->inflight);
	session_work_flush_unlock(pp, &w);
	(void)s;
}
