/*
 * conn_inbox.c - the connector's durable inbox (LMDB through store.h).
 *
 * Databases in <data_dir>:
 *   inbox: key = lane digit ('0' critical, '1' normal, '2' low) + queue_seq
 *          (u64 big-endian: relay-session's order of the recipient's queue)
 *          + message_id, value = due_ms (u64) + attempts (u32) + packed
 *          Envelope. Keys sort by lane, then in the relay's queue order
 *          (message_id breaks ties), so the first key is always the next
 *          message for the hook, and a critical message that arrives later
 *          still comes before every waiting normal or low one. Entries of
 *          the older layout (lane + message_id) are rewritten when the inbox
 *          opens (inbox_migrate). A message's lane and queue_seq never change
 *          between deliveries, so its key does not either. due_ms is when
 *          the first hook call may happen: the arrival, plus REORDER_MS when
 *          an older message of the lane may still be on its way (see
 *          deliver_due; entries written before this field existed hold their
 *          arrival time, which reads the same).
 *   done:  message_id -> done_ms (u64): handed to the hook, kept for the
 *          retention so a redelivery is acknowledged but not stored again.
 *   dead:  message_id -> dead_ms (u64) + reason NUL + packed Envelope.
 *   meta:  small named values (last_received_id, online_at_ms).
 *
 * Invariants: a deliver_ack{accepted=true} is sent only after the inbox
 * commit (it is sent from the committer's done callback). The envelopes of
 * one deliver_batch frame are stored in one batch and acked in one frame. A message ID is in
 * at most one of pending / inbox / done / dead; moves between them are single
 * transactions, and duplicate checks look in the order pending, inbox, done,
 * dead so that a concurrent move is never missed.
 *
 * Grouping: a removal the hook took (conn_inbox_done) is a lazy committer
 * batch: it rides in the txn of the next inbox put, or goes alone after
 * CONN_DONE_WAIT_US. So a steady flow costs about one fsync per deliver
 * frame instead of two. Until the removal lands the hook skips the entry (skip
 * slots); a crash in that window means the hook sees the message again (at
 * least once), as it would have with an fsync lost in the crash.
 *
 * Threads: conn_inbox_deliver_many runs on the lws thread only (so pending only
 * grows there; max_seq and disturbed_until_ms are the lws thread's); commit
 * callbacks run on the committer thread; the hook worker reads the head and
 * moves entries; the main thread prunes. The pending set, the skip slots
 * and the wake-up generation are under inbox.mu.
 */
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "conn.h"
#include "log.h"
#include "metrics.h"
#include "store.h"

#define VAL_HDR 12u               /* due_ms u64 + attempts u32 */
#define PENDING_BUCKETS 4096u
#define CONN_DONE_WAIT_US 20000u  /* a removal waits at most this for an inbox put */
#define DISTURB_MS 10000u         /* after an out-of-order arrival, hold the lane this long */
#define REFUSED_HOLD_MS 60000u    /* a lane waits at most this for a refused message to return */

/* registered once in conn_inbox_open (main thread), then only updated */
static struct metric *m_stored, *m_dups, *m_full;

struct conn_pending {
	struct conn_pending *next;
	struct conn *c;
	char id[128];
	char key[CONN_KEY_MAX];
	size_t klen;
	char corr[130];
	char sender[130];
	char recipient[130];
	char trace[40];
};

static void copy_str(char *dst, size_t sz, const char *s)
{
	size_t n = s ? strlen(s) : 0;

	if (n >= sz)
		n = sz - 1;
	if (n)
		memcpy(dst, s, n);
	dst[n] = '\0';
}

#define KEY_ID_OFF 9u              /* lane digit + queue_seq */

static size_t make_key(char *out, size_t sz, int priority, uint64_t seq, const char *id)
{
	size_t n = strlen(id);

	if (n + KEY_ID_OFF > sz)
		return 0;
	out[0] = (char)('0' + env_lane(priority));
	for (int i = 0; i < 8; i++)
		out[1 + i] = (char)(unsigned char)(seq >> (56 - 8 * i));
	memcpy(out + KEY_ID_OFF, id, n);
	return n + KEY_ID_OFF;
}

/* rewrite entries whose key is not the one make_key gives (the older
 * lane + message_id layout) in one txn; start-up only, before the committer */
static enum cr_err inbox_migrate(struct conn_inbox *ib)
{
	struct store_iter *it = NULL;
	struct store_batch *b = store_batch_new();
	const void *k, *v;
	size_t kl, vl, moved = 0;
	enum cr_err e = CR_OK;
	int r;

	if (!b)
		return CR_ERR_NOMEM;
	if ((e = store_iter_new(ib->st, ib->db_inbox, NULL, 0, &it)) != CR_OK)
		goto out;
	while ((r = store_iter_next(it, &k, &kl, &v, &vl)) == 1) {
		Envelope *env = NULL;
		char nk[CONN_KEY_MAX];
		size_t nkl;

		if (vl < VAL_HDR || env_unpack((const char *)v + VAL_HDR, vl - VAL_HDR, &env,
		    NULL) != CR_OK)
			continue;	/* conn_inbox_head dead-letters it */
		nkl = make_key(nk, sizeof(nk), env->priority, env->queue_seq, env->message_id);
		env_free(env);
		if (nkl == 0 || (nkl == kl && memcmp(nk, k, kl) == 0))
			continue;
		if ((e = store_batch_del(b, ib->db_inbox, k, kl)) != CR_OK ||
		    (e = store_batch_put(b, ib->db_inbox, nk, nkl, v, vl)) != CR_OK)
			goto out;
		moved++;
	}
	if (r < 0) {
		e = CR_ERR_IO;
		goto out;
	}
	store_iter_free(it);
	it = NULL;
	if (moved) {
		e = store_batch_commit(ib->st, b);
		log_info(NULL, "inbox: %zu entries rewritten in (lane, queue_seq) order: %s", moved,
		    cr_strerror(e));
	}
out:
	store_iter_free(it);
	store_batch_free(b);
	return e;
}

/* conn_inbox_open - open the LMDB store under data_dir and start the committer */
enum cr_err conn_inbox_open(struct conn *c)
{
	struct conn_inbox *ib = &c->inbox;
	enum cr_err e;
	size_t n = 0;

	m_stored = metric_counter("clawrelay_connector_stored_total", NULL,
	    "messages committed to the inbox");
	m_dups = metric_counter("clawrelay_connector_duplicates_total", NULL,
	    "deliveries dropped as duplicates");
	m_full = metric_counter("clawrelay_connector_inbox_full_total", NULL,
	    "deliveries refused because the inbox was full");
	pthread_mutex_init(&ib->mu, NULL);
	pthread_cond_init(&ib->cv, NULL);
	ib->npending_buckets = PENDING_BUCKETS;
	ib->pending = calloc(PENDING_BUCKETS, sizeof(*ib->pending));
	if (!ib->pending)
		return CR_ERR_NOMEM;
	/* inbox, done, dead, meta + the outbox's three */
	e = store_open(c->cfg.data_dir, (size_t)c->cfg.store_map_mb << 20, 12,
	    c->cfg.store_nosync ? STORE_NOSYNC : 0, &ib->st);
	if (e != CR_OK)
		return e;
	if ((e = store_db(ib->st, "inbox", &ib->db_inbox)) != CR_OK ||
	    (e = store_db(ib->st, "done", &ib->db_done)) != CR_OK ||
	    (e = store_db(ib->st, "dead", &ib->db_dead)) != CR_OK ||
	    (e = store_db(ib->st, "meta", &ib->db_meta)) != CR_OK)
		return e;
	if ((e = inbox_migrate(ib)) != CR_OK)
		return e;
	if ((e = store_count(ib->st, ib->db_inbox, &n)) != CR_OK)
		return e;
	atomic_store(&ib->n, (long long)n);
	if ((e = store_count(ib->st, ib->db_dead, &n)) != CR_OK)
		return e;
	atomic_store(&ib->dead_n, (long long)n);
	/* up to 4096 ops per group, no waiting: groups form during each fsync */
	ib->com = store_committer_new(ib->st, 4096, 0);
	if (!ib->com)
		return CR_ERR_INTERNAL;
	log_info(NULL, "inbox open dir=%s depth=%lld dead=%lld", c->cfg.data_dir,
	    (long long)atomic_load(&ib->n), (long long)atomic_load(&ib->dead_n));
	return CR_OK;
}

/* conn_inbox_close - stop the committer and close the store */
void conn_inbox_close(struct conn *c)
{
	struct conn_inbox *ib = &c->inbox;
	size_t i;

	store_committer_free(ib->com);
	ib->com = NULL;
	store_close(ib->st);
	ib->st = NULL;
	if (ib->pending) {
		for (i = 0; i < ib->npending_buckets; i++) {
			struct conn_pending *p = ib->pending[i], *nx;

			for (; p; p = nx) {
				nx = p->next;
				free(p);
			}
		}
		free(ib->pending);
		ib->pending = NULL;
	}
	pthread_cond_destroy(&ib->cv);
	pthread_mutex_destroy(&ib->mu);
}

/* with ib->mu held */
static struct conn_pending **pending_slot(struct conn_inbox *ib, const char *id)
{
	struct conn_pending **pp = &ib->pending[fnv1a32(id) % ib->npending_buckets];

	while (*pp && strcmp((*pp)->id, id) != 0)
		pp = &(*pp)->next;
	return pp;
}

/* conn_inbox_session_reset - a new socket opened (lws thread): forget the
 * queue_seq high-water marks of the previous one */
void conn_inbox_session_reset(struct conn *c)
{
	memset(c->inbox.max_seq, 0, sizeof(c->inbox.max_seq));
	memset(c->inbox.refused_seq, 0, sizeof(c->inbox.refused_seq));
}

/* lws thread: must e wait behind a message of its lane that a full inbox
 * refused? relay-session sends it again (retries first, oldest first); a
 * later message taken meanwhile, because the hook made room a moment after
 * the refusal, would reach the hook before it. The mark goes when the
 * refused message (or an older one) is taken, with a new socket, or after
 * REFUSED_HOLD_MS (it may have expired at the relay: the lane must not wait
 * for good). */
static int behind_refused(struct conn_inbox *ib, const Envelope *e, uint64_t now)
{
	int lane = env_lane(e->priority);

	if (lane < 0 || lane > 2 || !e->queue_seq || !ib->refused_seq[lane])
		return 0;
	if (now >= ib->refused_ms[lane] + REFUSED_HOLD_MS) {
		ib->refused_seq[lane] = 0;
		return 0;
	}
	return e->queue_seq > ib->refused_seq[lane];
}

/* lws thread: e was refused for a full inbox (1) or taken (0) */
static void mark_refused(struct conn_inbox *ib, const Envelope *e, int refused, uint64_t now)
{
	int lane = env_lane(e->priority);

	if (lane < 0 || lane > 2 || !e->queue_seq)
		return;
	if (refused && (!ib->refused_seq[lane] || e->queue_seq < ib->refused_seq[lane])) {
		ib->refused_seq[lane] = e->queue_seq;
		ib->refused_ms[lane] = now;
	} else if (!refused && ib->refused_seq[lane] && e->queue_seq <= ib->refused_seq[lane]) {
		ib->refused_seq[lane] = 0;
	}
}

/* lws thread: when may the hook first see e? At once when it arrived in
 * queue order (its queue_seq is above every one seen in its lane on this
 * socket: relay-session dispatches a lane in queue_seq order and one socket
 * keeps the order, so nothing older can still come). REORDER_MS later when
 * the relay gave no queue_seq, or the lane saw an out-of-order arrival in the
 * last DISTURB_MS (redelivery, several delivery replicas reordering): then an
 * older message may be a moment behind and should still go first. */
static uint64_t deliver_due(struct conn *c, const Envelope *e, uint64_t now)
{
	struct conn_inbox *ib = &c->inbox;
	int lane = env_lane(e->priority);
	uint64_t hold = (uint64_t)c->cfg.reorder_ms;

	if (lane < 0 || lane > 2 || !e->queue_seq)
		return now + hold;
	if (e->queue_seq > ib->max_seq[lane]) {
		ib->max_seq[lane] = e->queue_seq;
		return now >= ib->disturbed_until_ms[lane] ? now : now + hold;
	}
	ib->disturbed_until_ms[lane] = now + DISTURB_MS;
	return now + hold;
}

/* several acks in one frame (deliver_ack when there is one); any thread */
static void send_acks(struct conn *c, DeliverAck **v, size_t n)
{
	Frame f = CLAWRELAY__V1__FRAME__INIT;
	DeliverAckBatch b = CLAWRELAY__V1__DELIVER_ACK_BATCH__INIT;

	if (n == 0)
		return;
	f.schema_version = ENV_SCHEMA;
	if (n == 1) {
		f.body_case = CLAWRELAY__V1__FRAME__BODY_DELIVER_ACK;
		f.deliver_ack = v[0];
	} else {
		b.n_acks = n;
		b.acks = v;
		f.body_case = CLAWRELAY__V1__FRAME__BODY_DELIVER_ACK_BATCH;
		f.deliver_ack_batch = &b;
	}
	conn_ws_send(c, &f, CONN_FK_CTRL);
}

static void send_ack(struct conn *c, const char *id, int accepted, const char *reason)
{
	DeliverAck a = CLAWRELAY__V1__DELIVER_ACK__INIT, *ap = &a;

	a.message_id = conn_str(id);
	a.accepted = accepted ? 1 : 0;
	a.reason = conn_str(reason ? reason : "");
	send_acks(c, &ap, 1);
}

static void wake(struct conn_inbox *ib)
{
	pthread_mutex_lock(&ib->mu);
	ib->gen++;
	pthread_cond_broadcast(&ib->cv);
	pthread_mutex_unlock(&ib->mu);
}

/* the entries of one deliver frame committed together */
struct conn_pgroup {
	struct conn *c;
	size_t n;
	struct conn_pending *p[];
};

/* committer thread: the group's inbox puts are durable (or failed) */
static void stored_cb(void *arg, enum cr_err result)
{
	struct conn_pgroup *g = arg;
	struct conn *c = g->c;
	struct conn_inbox *ib = &c->inbox;
	DeliverAck *acks = calloc(g->n, sizeof(*acks));
	DeliverAck **ap = calloc(g->n, sizeof(*ap));

	/* acks and stored events before the hook worker wakes: its hook_called
	 * must come after connector_stored in the trace */
	for (size_t i = 0; i < g->n; i++) {
		struct conn_pending *p = g->p[i];
		struct log_ctx lc = { p->corr, p->id, p->sender, NULL };

		if (result == CR_OK) {
			atomic_fetch_add(&ib->stored, 1);
			metric_add(m_stored, 1);
			conn_ws_event_ids(c, p->corr, p->id, p->sender, p->recipient, p->trace,
			    CLAWRELAY__V1__HOP_KIND__HOP_CONNECTOR_STORED, "ok", NULL);
			log_debug(&lc, "stored in inbox");
		} else {
			atomic_fetch_sub(&ib->n, 1);
			atomic_fetch_add(&ib->store_errors, 1);
			log_error(&lc, "inbox commit failed: %s", cr_strerror(result));
		}
		if (acks != NULL && ap != NULL) {
			clawrelay__v1__deliver_ack__init(&acks[i]);
			acks[i].message_id = p->id;
			acks[i].accepted = result == CR_OK;
			acks[i].reason = conn_str(result == CR_OK ? "" : "storage_error");
			ap[i] = &acks[i];
		} else {
			send_ack(c, p->id, result == CR_OK, result == CR_OK ? NULL : "storage_error");
		}
	}
	if (acks != NULL && ap != NULL)
		send_acks(c, ap, g->n);
	free(acks);
	free(ap);
	pthread_mutex_lock(&ib->mu);
	for (size_t i = 0; i < g->n; i++) {
		struct conn_pending **pp = pending_slot(ib, g->p[i]->id);
		if (*pp == g->p[i])
			*pp = g->p[i]->next;
	}
	if (result == CR_OK)
		ib->gen++;
	pthread_cond_broadcast(&ib->cv);
	pthread_mutex_unlock(&ib->mu);
	for (size_t i = 0; i < g->n; i++)
		free(g->p[i]);
	free(g);
}

static int exists(struct conn_inbox *ib, unsigned dbi, const void *k, size_t kl)
{
	void *v = NULL;
	size_t vl = 0;
	enum cr_err e = store_get(ib->st, dbi, k, kl, &v, &vl);

	free(v);
	return e == CR_OK;
}

/* with ib->mu held: take p out of the pending set */
static void pending_drop_locked(struct conn_inbox *ib, struct conn_pending *p)
{
	struct conn_pending **pp = pending_slot(ib, p->id);

	if (*pp == p)
		*pp = p->next;
}

/* conn_inbox_deliver_many - handle the envelopes of a deliver or
 * deliver_batch frame (lws thread): duplicates are acked at once, a full
 * inbox refuses; the rest go to disk in one commit, then are acked (one
 * frame) with their connector_stored events from the committer thread.
 * The envelopes are borrowed. */
void conn_inbox_deliver_many(struct conn *c, Envelope *const *v, size_t n)
{
	struct conn_inbox *ib = &c->inbox;
	struct conn_pgroup *g = calloc(1, sizeof(*g) + n * sizeof(g->p[0]));
	DeliverAck *imm = calloc(n ? n : 1, sizeof(*imm));
	DeliverAck **immp = calloc(n ? n : 1, sizeof(*immp));
	struct store_batch *b = store_batch_new();
	const char *newest = NULL;
	size_t nimm = 0;
	uint64_t now = now_ms();
	uint32_t zero = 0;
	enum cr_err err = CR_OK;

	if (g == NULL || imm == NULL || immp == NULL || b == NULL) {
		for (size_t i = 0; i < n; i++)
			send_ack(c, v[i]->message_id, 0, "nomem");
		goto out;
	}
	g->c = c;
	for (size_t i = 0; i < n; i++) {
		const Envelope *e = v[i];
		struct log_ctx lc = { e->correlation_id, e->message_id, e->sender, NULL };
		struct conn_pending *p = NULL;
		void *packed = NULL, *val = NULL;
		size_t plen = 0, idlen = strlen(e->message_id);
		uint64_t due;
		const char *refuse = NULL;
		int dup;

		if (idlen == 0 || idlen >= sizeof(p->id)) {
			refuse = "bad_message_id";
		} else if ((p = calloc(1, sizeof(*p))) == NULL) {
			refuse = "nomem";
		}
		if (refuse != NULL) {
			clawrelay__v1__deliver_ack__init(&imm[nimm]);
			imm[nimm].message_id = e->message_id;
			imm[nimm].reason = conn_str(refuse);
			immp[nimm] = &imm[nimm];
			nimm++;
			continue;
		}
		p->c = c;
		copy_str(p->id, sizeof(p->id), e->message_id);
		copy_str(p->corr, sizeof(p->corr), e->correlation_id);
		copy_str(p->sender, sizeof(p->sender), e->sender);
		copy_str(p->recipient, sizeof(p->recipient), e->recipient);
		copy_str(p->trace, sizeof(p->trace), e->trace_id);
		p->klen = make_key(p->key, sizeof(p->key), e->priority, e->queue_seq,
		    e->message_id);

		pthread_mutex_lock(&ib->mu);
		dup = *pending_slot(ib, p->id) != NULL;
		pthread_mutex_unlock(&ib->mu);
		/* order matters: pending -> inbox -> done -> dead (see the header) */
		if (!dup)
			dup = exists(ib, ib->db_inbox, p->key, p->klen) ||
			    exists(ib, ib->db_done, p->id, idlen) ||
			    exists(ib, ib->db_dead, p->id, idlen);
		if (dup) {
			atomic_fetch_add(&ib->duplicates, 1);
			metric_add(m_dups, 1);
			log_debug(&lc, "duplicate delivery dropped");
			refuse = "duplicate";
			mark_refused(ib, e, 0, now);
		} else if (behind_refused(ib, e, now)) {
			/* as full: relay-session backs off and sends it again after
			 * the one it waits for */
			atomic_fetch_add(&ib->refused_full, 1);
			metric_add(m_full, 1);
			log_debug(&lc, "waits behind a message the full inbox refused");
			refuse = "inbox_full";
		} else if (atomic_fetch_add(&ib->n, 1) >= c->cfg.inbox_max) {
			atomic_fetch_sub(&ib->n, 1);
			atomic_fetch_add(&ib->refused_full, 1);
			metric_add(m_full, 1);
			log_warn(&lc, "inbox full (%lld): delivery refused", c->cfg.inbox_max);
			refuse = "inbox_full";
			mark_refused(ib, e, 1, now);
		} else if ((err = env_pack(&e->base, &packed, &plen)) != CR_OK ||
		    (val = malloc(VAL_HDR + plen)) == NULL) {
			atomic_fetch_sub(&ib->n, 1);
			atomic_fetch_add(&ib->store_errors, 1);
			log_error(&lc, "inbox store failed: %s",
			    cr_strerror(err != CR_OK ? err : CR_ERR_NOMEM));
			refuse = "storage_error";
		} else {
			mark_refused(ib, e, 0, now);
			due = deliver_due(c, e, now);
			memcpy(val, &due, 8);
			memcpy((char *)val + 8, &zero, 4);
			memcpy((char *)val + VAL_HDR, packed, plen);
			if (store_batch_put(b, ib->db_inbox, p->key, p->klen, val,
			    VAL_HDR + plen) != CR_OK) {
				/* the batch is unusable now: refuse the whole frame */
				atomic_fetch_sub(&ib->n, 1);
				free(packed);
				free(val);
				free(p);
				err = CR_ERR_NOMEM;
				for (size_t k = 0; k < g->n; k++) {
					atomic_fetch_sub(&ib->n, 1);
					pthread_mutex_lock(&ib->mu);
					pending_drop_locked(ib, g->p[k]);
					pthread_mutex_unlock(&ib->mu);
					send_ack(c, g->p[k]->id, 0, "storage_error");
					free(g->p[k]);
				}
				g->n = 0;
				for (size_t k = i; k < n; k++)
					send_ack(c, v[k]->message_id, 0, "storage_error");
				break;
			}
			/* ULIDs sort by time: the newest, not the last to arrive */
			if (strcmp(p->id, c->ws.last_received_id) > 0 &&
			    (newest == NULL || strcmp(p->id, newest) > 0))
				newest = e->message_id;
			pthread_mutex_lock(&ib->mu);
			{
				struct conn_pending **slot =
				    &ib->pending[fnv1a32(p->id) % ib->npending_buckets];
				p->next = *slot;
				*slot = p;
			}
			pthread_mutex_unlock(&ib->mu);
			g->p[g->n++] = p;
			p = NULL;
		}
		free(packed);
		free(val);
		free(p);
		if (refuse != NULL) {
			clawrelay__v1__deliver_ack__init(&imm[nimm]);
			imm[nimm].message_id = e->message_id;
			imm[nimm].accepted = strcmp(refuse, "duplicate") == 0;
			imm[nimm].reason = conn_str(refuse);
			immp[nimm] = &imm[nimm];
			nimm++;
		}
	}
	send_acks(c, immp, nimm);
	if (g->n == 0)
		goto out;
	if (newest != NULL) {
		if (store_batch_put(b, ib->db_meta, "last_received_id", 16, newest,
		    strlen(newest)) == CR_OK) {
			pthread_mutex_lock(&c->ws.mu);
			copy_str(c->ws.last_received_id, sizeof(c->ws.last_received_id), newest);
			pthread_mutex_unlock(&c->ws.mu);
		}
	}
	err = store_committer_submit(ib->com, b, stored_cb, g);
	b = NULL;
	if (err != CR_OK) {
		log_error(NULL, "inbox store failed: %s", cr_strerror(err));
		for (size_t k = 0; k < g->n; k++) {
			atomic_fetch_sub(&ib->n, 1);
			atomic_fetch_add(&ib->store_errors, 1);
			pthread_mutex_lock(&ib->mu);
			pending_drop_locked(ib, g->p[k]);
			pthread_mutex_unlock(&ib->mu);
			send_ack(c, g->p[k]->id, 0, "storage_error");
			free(g->p[k]);
		}
		goto out;
	}
	g = NULL; /* the callback frees it */
out:
	store_batch_free(b);
	free(g);
	free(imm);
	free(immp);
}

/* conn_entry_free - NULL does nothing */
void conn_entry_free(struct conn_entry *en)
{
	if (!en)
		return;
	free(en->key);
	env_free(en->env);
	free(en);
}

static uint32_t key_hash(const void *k, size_t kl)
{
	const unsigned char *p = k;
	uint32_t h = 2166136261u;

	for (size_t i = 0; i < kl; i++)
		h = (h ^ p[i]) * 16777619u;
	return h;
}

/* the hook worker skips an entry whose removal is being committed, and one
 * whose put is committed but whose stored callback (ack, connector_stored
 * event) has not run yet: the trace shows stored before hook_called */
static int skipped(struct conn_inbox *ib, const void *k, size_t kl)
{
	size_t i;
	int hit = 0;
	char id[sizeof(((struct conn_pending *)0)->id)];

	uint32_t h = key_hash(k, kl);

	pthread_mutex_lock(&ib->mu);
	for (i = 0; i < CONN_SKIP_MAX && ib->nskip; i++) {
		if (ib->skip[i].hash == h && ib->skip[i].used && ib->skip[i].klen == kl &&
		    memcmp(ib->skip[i].key, k, kl) == 0) {
			hit = 1;
			break;
		}
	}
	if (!hit && kl > KEY_ID_OFF && kl - KEY_ID_OFF < sizeof(id)) {
		memcpy(id, (const char *)k + KEY_ID_OFF, kl - KEY_ID_OFF);
		id[kl - KEY_ID_OFF] = '\0';
		hit = *pending_slot(ib, id) != NULL;
	}
	pthread_mutex_unlock(&ib->mu);
	return hit;
}

/* committer thread: an entry's removal landed (or failed) */
static void done_cb(void *arg, enum cr_err result)
{
	struct conn_skip *sk = arg;
	struct conn_inbox *ib = &sk->c->inbox;

	pthread_mutex_lock(&ib->mu);
	if (result == CR_OK) {
		sk->committed = 1;
		atomic_fetch_sub(&ib->n, 1);
	} else {
		/* the entry stays; the hook will see it again (at least once) */
		sk->used = 0;
		ib->nskip--;
	}
	ib->gen++;
	pthread_cond_broadcast(&ib->cv);
	pthread_mutex_unlock(&ib->mu);
	if (result != CR_OK)
		log_error(NULL, "removing a processed entry failed: %s", cr_strerror(result));
}

/* conn_inbox_done - the hook took it: remove, remember its ID as done. The
 * commit is lazy (see the header); until it lands, conn_inbox_head skips
 * the entry. */
enum cr_err conn_inbox_done(struct conn *c, const struct conn_entry *en)
{
	struct conn_inbox *ib = &c->inbox;
	struct store_batch *b = store_batch_new();
	struct conn_skip *sk = NULL;
	uint64_t now = now_ms();
	uint64_t gen = 0;
	size_t i;
	enum cr_err e;

	if (!b)
		return CR_ERR_NOMEM;
	if (en->klen > sizeof(sk->key) ||
	    (e = store_batch_del(b, ib->db_inbox, en->key, en->klen)) != CR_OK ||
	    (e = store_batch_put(b, ib->db_done, en->env->message_id,
	    strlen(en->env->message_id), &now, 8)) != CR_OK) {
		store_batch_free(b);
		return CR_ERR_INVALID;
	}
	for (;;) {
		pthread_mutex_lock(&ib->mu);
		for (i = 0; i < CONN_SKIP_MAX; i++) {
			if (!ib->skip[i].used) {
				sk = &ib->skip[i];
				memcpy(sk->key, en->key, en->klen);
				sk->klen = en->klen;
				sk->hash = key_hash(en->key, en->klen);
				sk->committed = 0;
				sk->seen_committed = 0;
				sk->used = 1;
				sk->c = c;
				ib->nskip++;
				break;
			}
		}
		gen = ib->gen;
		pthread_mutex_unlock(&ib->mu);
		if (sk)
			break;
		/* every slot waits for a commit: wait for one (rare) */
		if (conn_inbox_wait(c, &gen, mono_ms() + 50)) {
			store_batch_free(b);
			return CR_ERR_UNAVAILABLE;
		}
		{
			struct conn_entry *tmp = NULL;

			/* a head read retires committed slots */
			if (conn_inbox_head(c, &tmp) >= 0)
				conn_entry_free(tmp);
		}
	}
	e = store_committer_submit_lazy(ib->com, b, done_cb, sk, CONN_DONE_WAIT_US);
	if (e != CR_OK) {
		pthread_mutex_lock(&ib->mu);
		sk->used = 0;
		ib->nskip--;
		pthread_mutex_unlock(&ib->mu);
	}
	return e;
}

/* conn_inbox_head - the first entry in (lane, queue_seq, message_id) order; 1 and *out
 * (caller frees with conn_entry_free) if there is one, 0 if empty, -1 on error */
int conn_inbox_head(struct conn *c, struct conn_entry **out)
{
	struct conn_inbox *ib = &c->inbox;
	struct store_iter *it = NULL;
	struct conn_entry *en = NULL;
	const void *k, *v;
	size_t kl, vl;
	const char *why = NULL;
	size_t i;
	int r;

	*out = NULL;
	/* a removal committed before the snapshot is not in it: those skip
	 * slots can go once the snapshot exists (see conn_inbox_done) */
	pthread_mutex_lock(&ib->mu);
	for (i = 0; i < CONN_SKIP_MAX; i++)
		ib->skip[i].seen_committed = ib->skip[i].used && ib->skip[i].committed;
	pthread_mutex_unlock(&ib->mu);
	if (store_iter_new(ib->st, ib->db_inbox, NULL, 0, &it) != CR_OK)
		return -1;
	pthread_mutex_lock(&ib->mu);
	for (i = 0; i < CONN_SKIP_MAX; i++) {
		if (ib->skip[i].seen_committed) {
			ib->skip[i].used = 0;
			ib->skip[i].seen_committed = 0;
			ib->nskip--;
		}
	}
	pthread_mutex_unlock(&ib->mu);
	for (;;) {
		r = store_iter_next(it, &k, &kl, &v, &vl);
		if (r <= 0)
			goto out;
		if (!skipped(ib, k, kl))
			break;
	}
	en = calloc(1, sizeof(*en));
	if (!en || !(en->key = malloc(kl))) {
		r = -1;
		goto out;
	}
	memcpy(en->key, k, kl);
	en->klen = kl;
	if (vl < VAL_HDR || env_unpack((const char *)v + VAL_HDR, vl - VAL_HDR, &en->env,
	    &why) != CR_OK) {
		/* cannot happen for what we wrote; keep the worker moving */
		log_error(NULL, "inbox entry unreadable (%s): dead-lettered", why ? why : "short");
		store_iter_free(it);
		it = NULL;
		{
			struct store_batch *b = store_batch_new();

			if (b && store_batch_del(b, ib->db_inbox, en->key, en->klen) != CR_OK) {
				store_batch_free(b);
				b = NULL;
			}
			/* submit_wait takes b, whatever it returns */
			if (b && store_committer_submit_wait(ib->com, b) == CR_OK)
				atomic_fetch_sub(&ib->n, 1);
		}
		r = -1;
		goto out;
	}
	memcpy(&en->due_ms, v, 8);
	memcpy(&en->attempts, (const char *)v + 8, 4);
	*out = en;
	en = NULL;
	r = 1;
out:
	store_iter_free(it);
	conn_entry_free(en);
	return r;
}

static enum cr_err put_entry(struct conn *c, const struct conn_entry *en)
{
	struct conn_inbox *ib = &c->inbox;
	struct store_batch *b = NULL;
	void *packed = NULL, *val = NULL;
	size_t plen = 0;
	enum cr_err e;

	if ((e = env_pack(&en->env->base, &packed, &plen)) != CR_OK)
		goto out;
	if (!(val = malloc(VAL_HDR + plen)) || !(b = store_batch_new())) {
		e = CR_ERR_NOMEM;
		goto out;
	}
	memcpy(val, &en->due_ms, 8);
	memcpy((char *)val + 8, &en->attempts, 4);
	memcpy((char *)val + VAL_HDR, packed, plen);
	if ((e = store_batch_put(b, ib->db_inbox, en->key, en->klen, val, VAL_HDR + plen)) != CR_OK)
		goto out;
	e = store_committer_submit_wait(ib->com, b);
	b = NULL;
out:
	store_batch_free(b);
	free(val);
	free(packed);
	return e;
}

/* conn_inbox_retry - store the new attempt count of an entry */
enum cr_err conn_inbox_retry(struct conn *c, const struct conn_entry *en)
{
	return put_entry(c, en);
}

/* conn_inbox_dead - move an entry to the dead letters with reason (copied) */
enum cr_err conn_inbox_dead(struct conn *c, const struct conn_entry *en, const char *reason)
{
	struct conn_inbox *ib = &c->inbox;
	struct store_batch *b = NULL;
	void *packed = NULL;
	char *val = NULL;
	size_t plen = 0, rlen = strlen(reason);
	uint64_t now = now_ms();
	enum cr_err e;

	if ((e = env_pack(&en->env->base, &packed, &plen)) != CR_OK)
		goto out;
	if (!(val = malloc(8 + rlen + 1 + plen)) || !(b = store_batch_new())) {
		e = CR_ERR_NOMEM;
		goto out;
	}
	memcpy(val, &now, 8);
	memcpy(val + 8, reason, rlen + 1);
	memcpy(val + 8 + rlen + 1, packed, plen);
	if ((e = store_batch_del(b, ib->db_inbox, en->key, en->klen)) != CR_OK ||
	    (e = store_batch_put(b, ib->db_dead, en->env->message_id,
	    strlen(en->env->message_id), val, 8 + rlen + 1 + plen)) != CR_OK)
		goto out;
	e = store_committer_submit_wait(ib->com, b);
	b = NULL;
	if (e == CR_OK) {
		atomic_fetch_sub(&ib->n, 1);
		atomic_fetch_add(&ib->dead_n, 1);
	}
out:
	store_batch_free(b);
	free(val);
	free(packed);
	return e;
}

/* conn_inbox_wait - block the hook worker until a commit, stop, or
 * deadline_mono (0 = 1 s); returns nonzero when stopping */
int conn_inbox_wait(struct conn *c, uint64_t *seen_gen, uint64_t deadline_mono)
{
	struct conn_inbox *ib = &c->inbox;
	struct timespec ts;
	uint64_t now = mono_ms(), wait_ms, wall;
	int stop;

	if (!deadline_mono || deadline_mono > now + 1000)
		deadline_mono = now + 1000;
	wait_ms = deadline_mono > now ? deadline_mono - now : 0;
	clock_gettime(CLOCK_REALTIME, &ts);
	wall = (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec + wait_ms * 1000000ull;
	ts.tv_sec = (time_t)(wall / 1000000000ull);
	ts.tv_nsec = (long)(wall % 1000000000ull);
	pthread_mutex_lock(&ib->mu);
	while (!ib->stop && ib->gen == *seen_gen && wait_ms > 0) {
		if (pthread_cond_timedwait(&ib->cv, &ib->mu, &ts) == ETIMEDOUT)
			break;
	}
	*seen_gen = ib->gen;
	stop = ib->stop;
	pthread_mutex_unlock(&ib->mu);
	return stop;
}

/* conn_inbox_wake_all - wake waiters for shutdown */
void conn_inbox_wake_all(struct conn *c)
{
	pthread_mutex_lock(&c->inbox.mu);
	c->inbox.stop = 1;
	pthread_cond_broadcast(&c->inbox.cv);
	pthread_mutex_unlock(&c->inbox.mu);
	wake(&c->inbox);
}

static void noop_done(void *arg, enum cr_err result)
{
	(void)arg;
	if (result != CR_OK)
		log_warn(NULL, "done-ID prune failed: %s", cr_strerror(result));
}

/* conn_inbox_prune - drop done IDs older than the retention (main thread tick) */
void conn_inbox_prune(struct conn *c)
{
	struct conn_inbox *ib = &c->inbox;
	struct store_iter *it = NULL;
	struct store_batch *b = NULL;
	const void *k, *v;
	size_t kl, vl, n = 0;
	uint64_t cutoff = now_ms() - (uint64_t)c->cfg.done_retention_s * 1000u, t;
	char id[64];

	if (store_iter_new(ib->st, ib->db_done, NULL, 0, &it) != CR_OK)
		return;
	if (!(b = store_batch_new()))
		goto out;
	while (n < 2000 && store_iter_next(it, &k, &kl, &v, &vl) == 1) {
		t = 0;
		if (vl >= 8)
			memcpy(&t, v, 8);
		if (kl < sizeof(id)) {
			memcpy(id, k, kl);
			id[kl] = '\0';
			/* keys are ULIDs in time order: stop at the first young one */
			if (ulid_valid(id) && ulid_time_ms(id) >= cutoff && t >= cutoff)
				break;
		}
		if (t >= cutoff)
			continue;
		if (store_batch_del(b, ib->db_done, k, kl) == CR_OK)
			n++;
	}
	store_iter_free(it);
	it = NULL;
	if (n) {
		log_debug(NULL, "pruning %zu done IDs", n);
		store_committer_submit(ib->com, b, noop_done, NULL);
		b = NULL;
	}
out:
	store_iter_free(it);
	store_batch_free(b);
}

/* conn_inbox_status - add depth and counts to a /v1/status object */
void conn_inbox_status(struct conn *c, cJSON *obj)
{
	struct conn_inbox *ib = &c->inbox;
	cJSON *o = cJSON_AddObjectToObject(obj, "inbox");
	size_t done = 0;

	if (!o)
		return;
	cJSON_AddNumberToObject(o, "depth", (double)atomic_load(&ib->n));
	cJSON_AddNumberToObject(o, "max", (double)c->cfg.inbox_max);
	cJSON_AddNumberToObject(o, "deadLetters", (double)atomic_load(&ib->dead_n));
	if (store_count(ib->st, ib->db_done, &done) == CR_OK)
		cJSON_AddNumberToObject(o, "doneRemembered", (double)done);
	cJSON_AddNumberToObject(o, "stored", (double)atomic_load(&ib->stored));
	cJSON_AddNumberToObject(o, "duplicates", (double)atomic_load(&ib->duplicates));
	cJSON_AddNumberToObject(o, "refusedFull", (double)atomic_load(&ib->refused_full));
	cJSON_AddNumberToObject(o, "storeErrors", (double)atomic_load(&ib->store_errors));
}

/* conn_inbox_meta_get - read a small meta value into buf (NUL-terminated); -1 if absent */
int conn_inbox_meta_get(struct conn *c, const char *name, char *buf, size_t sz)
{
	void *v = NULL;
	size_t vl = 0;

	if (store_get(c->inbox.st, c->inbox.db_meta, name, strlen(name), &v, &vl) != CR_OK)
		return -1;
	if (vl >= sz)
		vl = sz - 1;
	memcpy(buf, v, vl);
	buf[vl] = '\0';
	free(v);
	return 0;
}

/* conn_inbox_meta_put - write a small meta value (one txn; not on hot paths) */
void conn_inbox_meta_put(struct conn *c, const char *name, const char *val)
{
	struct store_batch *b = store_batch_new();

	if (!b)
		return;
	if (store_batch_put(b, c->inbox.db_meta, name, strlen(name), val, strlen(val)) != CR_OK) {
		store_batch_free(b);
		return;
	}
	store_committer_submit(c->inbox.com, b, noop_done, NULL);
}
