/*
 * conn_outbox.c - the connector's outbox: outbound messages that could not
 * go to the gateway yet, kept in LMDB until it takes them.
 *
 * A message enters the outbox (conn_api.c) when the connector -> gateway
 * breaker is open, when sending it failed in a way worth retrying (no
 * answer, timeout, 5xx other than 507: conn_out_class CONN_OUT_RETRY), or
 * when older messages for the same recipient still wait here (so they keep
 * their order). The agent is answered 202 {"status": "outboxed", ...} only
 * after the commit. One worker thread sends the outbox in order, each
 * message with its own idempotency key (so one already taken by the gateway
 * whose answer was lost is not queued twice: the gateway answers 200), and
 * removes it only when the gateway answered:
 *   - 2xx: sent (202 queued, or 200 duplicate);
 *   - 408, 429, 507: that recipient cannot take messages now: its messages
 *     wait Retry-After (at least 1 s) while other recipients' go on;
 *   - no answer, 5xx: the gateway is unavailable: the same head is retried
 *     after a backoff (RECONNECT_BASE_MS..RECONNECT_CAP_MS) while the breaker
 *     is closed, and by its probes once it is open;
 *   - other 4xx with the gateway's JSON error: refused for good: moved to
 *     the failed records (status, code, message), logged and counted; GET
 *     /v1/outbox shows them (a bare 4xx, e.g. the 404 of a gateway whose
 *     routes are not registered yet, counts as unavailable);
 *   - expired (its expires_at_ms passed while it waited): failed, code "expired".
 * Order: messages for one recipient leave in the order they entered;
 * a recipient held back by 429/507 does not hold back the others.
 *
 * Databases (in the inbox's LMDB environment, so one committer serves both):
 *   outbox:        be64 outbox ID -> u8 version (1), u8 recipient length,
 *                  recipient, packed Envelope (message_id empty). IDs grow
 *                  with time (max(now_us, last + 1)), so they are not reused
 *                  across restarts and keys sort in arrival order.
 *   outbox_keys:   idempotency key -> be64 outbox ID, SHA-256 of the payload,
 *                  recipient: a second send with the same key while the first
 *                  waits is answered with the first's outbox ID (same
 *                  recipient and payload) or 409 (another one), as the relay
 *                  would answer once it has the first.
 *   outbox_failed: be64 outbox ID -> a JSON record (at most OUTBOX_FAILED_MAX,
 *                  oldest dropped; DELETE /v1/outbox/failed clears them).
 * Bounds: OUTBOX_MAX messages and OUTBOX_MAX_MB of stored values; past
 * either, conn_outbox_put says CR_ERR_FULL (the API answers 507).
 *
 * Threads: API threads call conn_outbox_put / _waiting; the worker picks,
 * sends and removes. Every write to the three databases, and the counts
 * and per-recipient map, are under ob.mu (held across the commit, so the
 * duplicate check and the put are one step). The worker reads the outbox
 * through snapshots without the lock: only it removes entries, and puts
 * only append. The worker waits at most 1 s at a time, so it sees the
 * breaker close (another thread's probe) within a second; a local send that
 * succeeds, and a new socket, wake it at once (conn_outbox_kick).
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <civetweb.h>

#include "auth.h"
#include "conn.h"
#include "http.h"
#include "log.h"
#include "metrics.h"
#include "store.h"

#define OB_VERSION 1u
#define RCPT_BUCKETS 1024u
#define LIST_DEFAULT 100
#define LIST_MAX 1000

struct conn_obrcpt {
	struct conn_obrcpt *next;
	long long n;
	char id[];
};

struct conn_oblock {
	struct conn_oblock *next;
	uint64_t until_mono;
	char id[];
};

/* registered once in conn_outbox_open (main thread), then only updated */
static struct metric *m_depth, *m_outboxed, *m_sent, *m_failed, *m_expired;

static void be64_put(unsigned char *p, uint64_t v)
{
	for (int i = 0; i < 8; i++)
		p[i] = (unsigned char)(v >> (56 - 8 * i));
}

static uint64_t be64_get(const unsigned char *p)
{
	uint64_t v = 0;

	for (int i = 0; i < 8; i++)
		v = (v << 8) | p[i];
	return v;
}

/* split an outbox value; -1 if it is not one we wrote */
static int value_parse(const void *v, size_t vl, const char **rcpt, size_t *rl,
    const void **env, size_t *el)
{
	const unsigned char *p = v;

	if (vl < 2 || p[0] != OB_VERSION || (size_t)p[1] + 2 > vl || p[1] == 0)
		return -1;
	*rcpt = (const char *)p + 2;
	*rl = p[1];
	*env = p + 2 + p[1];
	*el = vl - 2 - p[1];
	return 0;
}

/* ob.mu held: the count of recipient (n bytes) changes by delta */
static void rcpt_add(struct conn_outbox *ob, const char *id, size_t n, long long delta)
{
	uint32_t h = 2166136261u;
	struct conn_obrcpt **pp, *r;

	for (size_t i = 0; i < n; i++)
		h = (h ^ (unsigned char)id[i]) * 16777619u;
	pp = &ob->rcpt[h % ob->nrcpt_buckets];
	while (*pp && !(strlen((*pp)->id) == n && memcmp((*pp)->id, id, n) == 0))
		pp = &(*pp)->next;
	if (!*pp) {
		if (delta <= 0 || !(r = calloc(1, sizeof(*r) + n + 1)))
			return;	/* without memory the count is lost: order may suffer, not data */
		memcpy(r->id, id, n);
		*pp = r;
	}
	r = *pp;
	r->n += delta;
	if (r->n <= 0) {
		*pp = r->next;
		free(r);
	}
}

static long long rcpt_get(struct conn_outbox *ob, const char *id)
{
	uint32_t h = 2166136261u;
	size_t n = strlen(id);
	struct conn_obrcpt *r;

	for (size_t i = 0; i < n; i++)
		h = (h ^ (unsigned char)id[i]) * 16777619u;
	for (r = ob->rcpt[h % ob->nrcpt_buckets]; r; r = r->next)
		if (strcmp(r->id, id) == 0)
			return r->n;
	return 0;
}

/* conn_outbox_kick - the gateway may be back (socket opened, a send
 * succeeded, the breaker changed): the head's backoff ends and the worker
 * looks again; any thread */
void conn_outbox_kick(struct conn *c)
{
	struct conn_outbox *ob = &c->outbox;

	if (!ob->rcpt)
		return;	/* not open (start-up failed early) */
	pthread_mutex_lock(&ob->mu);
	if (ob->n) {
		ob->retry_at_mono = 0;
		ob->gen++;
		pthread_cond_broadcast(&ob->cv);
	}
	pthread_mutex_unlock(&ob->mu);
}

/* the last key of a be64-keyed database, 0 if empty */
static enum cr_err last_id(struct store *st, unsigned dbi, uint64_t *out, size_t *count)
{
	struct store_iter *it = NULL;
	const void *k, *v;
	size_t kl, vl, n = 0;
	int r;

	*out = 0;
	if (store_iter_new(st, dbi, NULL, 0, &it) != CR_OK)
		return CR_ERR_IO;
	while ((r = store_iter_next(it, &k, &kl, &v, &vl)) == 1) {
		n++;
		if (kl == 8)
			*out = be64_get(k);
	}
	store_iter_free(it);
	if (count)
		*count = n;
	return r < 0 ? CR_ERR_IO : CR_OK;
}

/* conn_outbox_open - databases, counts, the gateway breaker (main thread) */
enum cr_err conn_outbox_open(struct conn *c)
{
	struct conn_outbox *ob = &c->outbox;
	struct store *st = c->inbox.st;
	struct store_iter *it = NULL;
	const void *k, *v;
	size_t kl, vl, nfailed = 0;
	uint64_t last_out = 0, last_failed = 0;
	enum cr_err e;
	int r;

	m_depth = metric_gauge("clawrelay_connector_outbox_depth", NULL,
	    "messages waiting in the outbox");
	m_outboxed = metric_counter("clawrelay_connector_outbox_total", "outcome=\"outboxed\"",
	    "outbox: messages stored, sent, refused for good, expired");
	m_sent = metric_counter("clawrelay_connector_outbox_total", "outcome=\"sent\"",
	    "outbox: messages stored, sent, refused for good, expired");
	m_failed = metric_counter("clawrelay_connector_outbox_total", "outcome=\"failed\"",
	    "outbox: messages stored, sent, refused for good, expired");
	m_expired = metric_counter("clawrelay_connector_outbox_total", "outcome=\"expired\"",
	    "outbox: messages stored, sent, refused for good, expired");
	pthread_mutex_init(&ob->mu, NULL);
	pthread_cond_init(&ob->cv, NULL);
	ob->nrcpt_buckets = RCPT_BUCKETS;
	if (!(ob->rcpt = calloc(RCPT_BUCKETS, sizeof(*ob->rcpt))))
		return CR_ERR_NOMEM;
	if ((e = store_db(st, "outbox", &ob->db_out)) != CR_OK ||
	    (e = store_db(st, "outbox_keys", &ob->db_keys)) != CR_OK ||
	    (e = store_db(st, "outbox_failed", &ob->db_failed)) != CR_OK)
		return e;
	if ((e = store_iter_new(st, ob->db_out, NULL, 0, &it)) != CR_OK)
		return e;
	while ((r = store_iter_next(it, &k, &kl, &v, &vl)) == 1) {
		const char *rc;
		const void *ev;
		size_t rl, el;

		if (kl == 8)
			last_out = be64_get(k);
		ob->n++;
		ob->bytes += (long long)vl;
		if (value_parse(v, vl, &rc, &rl, &ev, &el) == 0)
			rcpt_add(ob, rc, rl, 1);
	}
	store_iter_free(it);
	if (r < 0)
		return CR_ERR_IO;
	if ((e = last_id(st, ob->db_failed, &last_failed, &nfailed)) != CR_OK)
		return e;
	ob->failed_n = (long long)nfailed;
	ob->next_seq = now_us();
	if (last_out + 1 > ob->next_seq)
		ob->next_seq = last_out + 1;
	if (last_failed + 1 > ob->next_seq)
		ob->next_seq = last_failed + 1;
	metric_set(m_depth, ob->n);

	if (!(ob->brk = brkset_get(c->brks, "gateway", "")))
		return CR_ERR_NOMEM;
	log_info(NULL, "outbox open: %lld waiting (%lld bytes), %lld failed kept", ob->n,
	    ob->bytes, ob->failed_n);
	return CR_OK;
}

/* conn_outbox_close - free what open took (after stop) */
void conn_outbox_close(struct conn *c)
{
	struct conn_outbox *ob = &c->outbox;
	struct conn_oblock *bl, *bn;

	if (ob->rcpt) {
		for (size_t i = 0; i < ob->nrcpt_buckets; i++) {
			struct conn_obrcpt *r = ob->rcpt[i], *nx;

			for (; r; r = nx) {
				nx = r->next;
				free(r);
			}
		}
		free(ob->rcpt);
		ob->rcpt = NULL;
		pthread_cond_destroy(&ob->cv);
		pthread_mutex_destroy(&ob->mu);
	}
	for (bl = ob->blocked; bl; bl = bn) {
		bn = bl->next;
		free(bl);
	}
	ob->blocked = NULL;
}

/* conn_outbox_waiting - messages for recipient in the outbox */
long long conn_outbox_waiting(struct conn *c, const char *recipient)
{
	struct conn_outbox *ob = &c->outbox;
	long long n;

	pthread_mutex_lock(&ob->mu);
	n = ob->n ? rcpt_get(ob, recipient) : 0;
	pthread_mutex_unlock(&ob->mu);
	return n;
}

/* conn_outbox_put - store e durably at the end of the outbox */
enum cr_err conn_outbox_put(struct conn *c, const Envelope *e, uint64_t *id)
{
	struct conn_outbox *ob = &c->outbox;
	struct store_batch *b = NULL;
	unsigned char *val = NULL, *kv = NULL, sha[32], kseq[8];
	void *packed = NULL, *old = NULL;
	size_t plen = 0, rl = strlen(e->recipient), kl = strlen(e->idempotency_key), vl, ol = 0;
	enum cr_err err;

	*id = 0;
	if (rl == 0 || rl > 255 || kl == 0 || kl > STORE_KEY_MAX)
		return CR_ERR_INVALID;
	if ((err = env_pack(&e->base, &packed, &plen)) != CR_OK ||
	    (err = auth_sha256_raw(e->payload.data, e->payload.len, sha)) != CR_OK)
		goto out;
	vl = 2 + rl + plen;
	if (!(val = malloc(vl)) || !(kv = malloc(8 + 32 + rl)) || !(b = store_batch_new())) {
		err = CR_ERR_NOMEM;
		goto out;
	}
	val[0] = OB_VERSION;
	val[1] = (unsigned char)rl;
	memcpy(val + 2, e->recipient, rl);
	memcpy(val + 2 + rl, packed, plen);

	pthread_mutex_lock(&ob->mu);
	if (store_get(c->inbox.st, ob->db_keys, e->idempotency_key, kl, &old, &ol) == CR_OK) {
		const unsigned char *o = old;

		if (ol >= 40)
			*id = be64_get(o);
		if (ol == 40 + rl && memcmp(o + 8, sha, 32) == 0 &&
		    memcmp(o + 40, e->recipient, rl) == 0) {
			err = CR_ERR_EXISTS;
			atomic_fetch_add(&ob->duplicates, 1);
		} else {
			err = CR_ERR_CONFLICT;
		}
		goto unlock;
	}
	if (ob->n + 1 > c->cfg.outbox_max ||
	    ob->bytes + (long long)vl > (long long)c->cfg.outbox_max_mb << 20) {
		atomic_fetch_add(&ob->refused_full, 1);
		err = CR_ERR_FULL;
		goto unlock;
	}
	*id = ob->next_seq;
	be64_put(kseq, *id);
	be64_put(kv, *id);
	memcpy(kv + 8, sha, 32);
	memcpy(kv + 40, e->recipient, rl);
	if ((err = store_batch_put(b, ob->db_out, kseq, 8, val, vl)) != CR_OK ||
	    (err = store_batch_put(b, ob->db_keys, e->idempotency_key, kl, kv, 40 + rl)) != CR_OK)
		goto unlock;
	err = store_committer_submit_wait(c->inbox.com, b);
	b = NULL;
	if (err != CR_OK)
		goto unlock;
	ob->next_seq++;
	ob->n++;
	ob->bytes += (long long)vl;
	rcpt_add(ob, e->recipient, rl, 1);
	metric_set(m_depth, ob->n);
	metric_add(m_outboxed, 1);
	atomic_fetch_add(&ob->outboxed, 1);
	ob->gen++;
	pthread_cond_broadcast(&ob->cv);
unlock:
	pthread_mutex_unlock(&ob->mu);
out:
	store_batch_free(b);
	free(old);
	free(kv);
	free(val);
	free(packed);
	return err;
}

/* a failed record as JSON text (caller frees with cJSON_free); NULL on ENOMEM */
static char *failed_json(uint64_t id, const Envelope *e, const struct conn_out_res *res)
{
	cJSON *j = cJSON_CreateObject();
	char *txt;

	if (!j)
		return NULL;
	cJSON_AddNumberToObject(j, "outboxId", (double)id);
	cJSON_AddStringToObject(j, "correlationId", e->correlation_id ? e->correlation_id : "");
	cJSON_AddStringToObject(j, "idempotencyKey", e->idempotency_key ? e->idempotency_key : "");
	cJSON_AddStringToObject(j, "recipient", e->recipient ? e->recipient : "");
	cJSON_AddStringToObject(j, "priority", env_priority_name(e->priority));
	cJSON_AddNumberToObject(j, "createdAtMs", (double)e->created_at_ms);
	cJSON_AddNumberToObject(j, "failedAtMs", (double)now_ms());
	cJSON_AddNumberToObject(j, "bytes", (double)e->payload.len);
	cJSON_AddNumberToObject(j, "status", res->status);
	cJSON_AddStringToObject(j, "code", res->code);
	cJSON_AddStringToObject(j, "message", res->message);
	txt = cJSON_PrintUnformatted(j);
	cJSON_Delete(j);
	return txt;
}

/* worker: the entry id left the outbox: sent, or (res != NULL) failed for good */
static enum cr_err finish(struct conn *c, uint64_t id, const Envelope *e, size_t vl,
    const struct conn_out_res *failed)
{
	struct conn_outbox *ob = &c->outbox;
	struct store_batch *b = store_batch_new();
	unsigned char k[8];
	char *rec = NULL;
	int pruned = 0;
	enum cr_err err;

	if (!b)
		return CR_ERR_NOMEM;
	be64_put(k, id);
	if (failed && !(rec = failed_json(id, e, failed))) {
		store_batch_free(b);
		return CR_ERR_NOMEM;
	}
	pthread_mutex_lock(&ob->mu);
	if ((err = store_batch_del(b, ob->db_out, k, 8)) != CR_OK ||
	    (err = store_batch_del(b, ob->db_keys, e->idempotency_key,
	    strlen(e->idempotency_key))) != CR_OK)
		goto unlock;
	if (rec) {
		if ((err = store_batch_put(b, ob->db_failed, k, 8, rec, strlen(rec))) != CR_OK)
			goto unlock;
		if (ob->failed_n >= c->cfg.outbox_failed_max) {
			/* the oldest record makes room */
			struct store_iter *it = NULL;
			const void *fk, *fv;
			size_t fkl, fvl;

			if (store_iter_new(c->inbox.st, ob->db_failed, NULL, 0, &it) == CR_OK &&
			    store_iter_next(it, &fk, &fkl, &fv, &fvl) == 1 &&
			    store_batch_del(b, ob->db_failed, fk, fkl) == CR_OK)
				pruned = 1;
			store_iter_free(it);
		}
	}
	err = store_committer_submit_wait(c->inbox.com, b);
	b = NULL;
	if (err != CR_OK)
		goto unlock;
	ob->n--;
	ob->bytes -= (long long)vl;
	rcpt_add(ob, e->recipient, strlen(e->recipient), -1);
	if (rec)
		ob->failed_n += 1 - pruned;
	if (ob->head_seq == id) {
		ob->head_seq = 0;
		ob->head_tries = 0;
		ob->retry_at_mono = 0;
	}
	metric_set(m_depth, ob->n);
unlock:
	pthread_mutex_unlock(&ob->mu);
	store_batch_free(b);
	cJSON_free(rec);
	return err;
}

/* worker: is recipient (n bytes) held back? */
static int blocked(struct conn_outbox *ob, const char *id, size_t n)
{
	for (struct conn_oblock *bl = ob->blocked; bl; bl = bl->next)
		if (strlen(bl->id) == n && memcmp(bl->id, id, n) == 0)
			return 1;
	return 0;
}

/* worker: hold recipient back until until_mono */
static void block(struct conn_outbox *ob, const char *id, uint64_t until_mono)
{
	size_t n = strlen(id);
	struct conn_oblock *bl = calloc(1, sizeof(*bl) + n + 1);

	if (!bl)
		return;
	memcpy(bl->id, id, n);
	bl->until_mono = until_mono;
	bl->next = ob->blocked;
	ob->blocked = bl;
}

/* worker: forget holds that ran out; the earliest one left (0: none) */
static uint64_t unblock(struct conn_outbox *ob, uint64_t now)
{
	struct conn_oblock **pp = &ob->blocked, *bl;
	uint64_t earliest = 0;

	while ((bl = *pp)) {
		if (bl->until_mono <= now) {
			*pp = bl->next;
			free(bl);
			continue;
		}
		if (!earliest || bl->until_mono < earliest)
			earliest = bl->until_mono;
		pp = &bl->next;
	}
	return earliest;
}

/* worker: the first entry whose recipient is not held back: 1 with *id,
 * *env (caller frees with env_free) and *vl; 0 if none; -1 on error */
static int pick(struct conn *c, uint64_t *id, Envelope **env, size_t *vl)
{
	struct conn_outbox *ob = &c->outbox;
	struct store_iter *it = NULL;
	const void *k, *v, *ev;
	const char *rc, *why = NULL;
	size_t kl, vlen, rl, el;
	int r;

	*env = NULL;
	if (store_iter_new(c->inbox.st, ob->db_out, NULL, 0, &it) != CR_OK)
		return -1;
	while ((r = store_iter_next(it, &k, &kl, &v, &vlen)) == 1) {
		if (kl != 8 || value_parse(v, vlen, &rc, &rl, &ev, &el) != 0) {
			log_error(NULL, "outbox entry of unknown layout skipped");
			continue;
		}
		if (blocked(ob, rc, rl))
			continue;
		*id = be64_get(k);
		*vl = vlen;
		if (env_unpack(ev, el, env, &why) != CR_OK) {
			log_error(NULL, "outbox entry %llu unreadable (%s) skipped",
			    (unsigned long long)*id, why ? why : "?");
			*env = NULL;
			continue;
		}
		break;
	}
	store_iter_free(it);
	return r < 0 ? -1 : r;
}

/* worker: wait for a wake-up, stop, or until_mono (0: 1 s); nonzero when stopping */
static int ob_wait(struct conn_outbox *ob, uint64_t *seen, uint64_t until_mono)
{
	struct timespec ts;
	uint64_t now = mono_ms(), wait_ms, ns;
	int stop;

	if (!until_mono || until_mono > now + 1000)
		until_mono = now + 1000;
	wait_ms = until_mono > now ? until_mono - now : 0;
	clock_gettime(CLOCK_REALTIME, &ts);
	ns = (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec + wait_ms * 1000000ull;
	ts.tv_sec = (time_t)(ns / 1000000000ull);
	ts.tv_nsec = (long)(ns % 1000000000ull);
	pthread_mutex_lock(&ob->mu);
	while (!ob->stop && ob->gen == *seen && wait_ms > 0) {
		if (pthread_cond_timedwait(&ob->cv, &ob->mu, &ts) == ETIMEDOUT)
			break;
	}
	*seen = ob->gen;
	stop = ob->stop;
	pthread_mutex_unlock(&ob->mu);
	return stop;
}

/* worker: send entry id and act on the answer */
static void send_one(struct conn *c, uint64_t id, Envelope *e, size_t vl, int probe)
{
	struct conn_outbox *ob = &c->outbox;
	struct log_ctx lc = { e->correlation_id, NULL, e->recipient, NULL };
	struct conn_out_res res;
	enum conn_out_class cls;
	enum cr_err err = CR_OK;

	conn_out_send(c, e, &res);
	cls = conn_out_class(&res);
	if (cls != CONN_OUT_EXPIRED)
		conn_brk_result(ob->brk, cls != CONN_OUT_RETRY);
	switch (cls) {
	case CONN_OUT_OK:
		lc.message_id = res.message_id;
		if ((err = finish(c, id, e, vl, NULL)) == CR_OK) {
			atomic_fetch_add(&ob->sent, 1);
			metric_add(m_sent, 1);
			log_info(&lc, "outboxed message %llu sent%s: %d %s",
			    (unsigned long long)id, probe ? " (breaker probe)" : "", res.status,
			    res.state[0] ? res.state : "");
		}
		break;
	case CONN_OUT_RETRY: {
		uint64_t d;

		pthread_mutex_lock(&ob->mu);
		if (ob->head_seq != id) {
			ob->head_seq = id;
			ob->head_tries = 0;
		}
		ob->head_tries++;
		d = backoff_ms(ob->head_tries - 1, (uint64_t)c->cfg.reconnect_base_ms,
		    (uint64_t)c->cfg.reconnect_cap_ms);
		ob->retry_at_mono = mono_ms() + d;
		snprintf(ob->last_error, sizeof(ob->last_error), "%s", res.status ? res.code :
		    res.detail);
		pthread_mutex_unlock(&ob->mu);
		log_info(&lc, "outboxed message %llu not sent (%s %s): retrying in %llu ms or at "
		    "the breaker's probe", (unsigned long long)id, res.status ? res.code : "no answer",
		    res.status ? res.message : res.detail, (unsigned long long)d);
		break;
	}
	case CONN_OUT_LATER: {
		uint64_t s = res.retry_after_s ? res.retry_after_s : 1;

		block(ob, e->recipient, mono_ms() + s * 1000u);
		pthread_mutex_lock(&ob->mu);
		snprintf(ob->last_error, sizeof(ob->last_error), "%d %s", res.status, res.code);
		pthread_mutex_unlock(&ob->mu);
		log_info(&lc, "outbox: %s answered %d (%s): its messages wait %llu s",
		    e->recipient, res.status, res.code, (unsigned long long)s);
		break;
	}
	case CONN_OUT_REFUSED:
	case CONN_OUT_EXPIRED:
		if ((err = finish(c, id, e, vl, &res)) == CR_OK) {
			if (cls == CONN_OUT_EXPIRED) {
				atomic_fetch_add(&ob->expired, 1);
				metric_add(m_expired, 1);
			} else {
				atomic_fetch_add(&ob->failed, 1);
				metric_add(m_failed, 1);
			}
			log_warn(&lc, "outboxed message %llu failed for good: %d %s: %s",
			    (unsigned long long)id, res.status, res.code, res.message);
		}
		break;
	}
	if (err != CR_OK) {
		/* it stays; sent again later, the idempotency key keeps it single */
		log_error(&lc, "outbox removal failed: %s", cr_strerror(err));
		pthread_mutex_lock(&ob->mu);
		ob->head_seq = id;
		ob->retry_at_mono = mono_ms() + 1000;
		pthread_mutex_unlock(&ob->mu);
	}
}

static void *outbox_thread(void *arg)
{
	struct conn *c = arg;
	struct conn_outbox *ob = &c->outbox;
	uint64_t gen = 0;

	for (;;) {
		uint64_t now, until = 0, probe_at = 0, head, retry_at, id = 0, earliest;
		long long n;
		Envelope *e = NULL;
		size_t vl = 0;
		int r, go;

		pthread_mutex_lock(&ob->mu);
		if (ob->stop) {
			pthread_mutex_unlock(&ob->mu);
			break;
		}
		n = ob->n;
		head = ob->head_seq;
		retry_at = ob->retry_at_mono;
		pthread_mutex_unlock(&ob->mu);
		if (n == 0) {
			if (ob_wait(ob, &gen, 0))
				break;
			continue;
		}
		now = mono_ms();
		earliest = unblock(ob, now);
		r = pick(c, &id, &e, &vl);
		if (r < 0) {
			until = now + 1000;
		} else if (r == 0) {
			until = earliest;	/* every waiting recipient is held back */
		} else if (e->expires_at_ms && e->expires_at_ms <= now_ms()) {
			send_one(c, id, e, vl, 0);	/* conn_out_send says expired, sends nothing */
		} else {
			switch (conn_brk_state(ob->brk, &probe_at)) {
			case BRK_OPEN:
				if (now < probe_at)
					until = probe_at;
				break;
			case BRK_CLOSED:
				if (head == id && now < retry_at)
					until = retry_at;
				break;
			case BRK_HALF_OPEN:
				break;
			}
			if (!until) {
				go = conn_brk_allow(ob->brk);
				if (go == BRK_REFUSE)
					until = now + 200;	/* another probe (a local send) is out */
				else
					send_one(c, id, e, vl, go == BRK_PROBE);
			}
		}
		env_free(e);
		if (until && ob_wait(ob, &gen, until))
			break;
	}
	return NULL;
}

/* conn_outbox_start - start the worker */
enum cr_err conn_outbox_start(struct conn *c)
{
	if (pthread_create(&c->outbox.thread, NULL, outbox_thread, c) != 0)
		return CR_ERR_INTERNAL;
	c->outbox.started = 1;
	return CR_OK;
}

/* conn_outbox_stop - stop and join the worker */
void conn_outbox_stop(struct conn *c)
{
	struct conn_outbox *ob = &c->outbox;

	if (!ob->started)
		return;
	pthread_mutex_lock(&ob->mu);
	ob->stop = 1;
	pthread_cond_broadcast(&ob->cv);
	pthread_mutex_unlock(&ob->mu);
	pthread_join(ob->thread, NULL);
	ob->started = 0;
}

/* the outbox's counts into o */
static void fill_status(struct conn *c, cJSON *o)
{
	struct conn_outbox *ob = &c->outbox;

	pthread_mutex_lock(&ob->mu);
	cJSON_AddNumberToObject(o, "depth", (double)ob->n);
	cJSON_AddNumberToObject(o, "bytes", (double)ob->bytes);
	cJSON_AddNumberToObject(o, "max", (double)c->cfg.outbox_max);
	cJSON_AddNumberToObject(o, "maxBytes", (double)((long long)c->cfg.outbox_max_mb << 20));
	cJSON_AddNumberToObject(o, "failedKept", (double)ob->failed_n);
	cJSON_AddNumberToObject(o, "headTries", (double)ob->head_tries);
	cJSON_AddStringToObject(o, "lastError", ob->last_error);
	pthread_mutex_unlock(&ob->mu);
	cJSON_AddNumberToObject(o, "outboxed", (double)atomic_load(&ob->outboxed));
	cJSON_AddNumberToObject(o, "sent", (double)atomic_load(&ob->sent));
	cJSON_AddNumberToObject(o, "failed", (double)atomic_load(&ob->failed));
	cJSON_AddNumberToObject(o, "expired", (double)atomic_load(&ob->expired));
	cJSON_AddNumberToObject(o, "duplicates", (double)atomic_load(&ob->duplicates));
	cJSON_AddNumberToObject(o, "refusedFull", (double)atomic_load(&ob->refused_full));
}

/* conn_outbox_status - add the outbox to a /v1/status object */
void conn_outbox_status(struct conn *c, cJSON *obj)
{
	cJSON *o = cJSON_AddObjectToObject(obj, "outbox");

	if (o)
		fill_status(c, o);
}

/* one waiting entry as JSON */
static void add_entry(cJSON *arr, uint64_t id, const Envelope *e, size_t vl, int head,
    unsigned tries, const char *last_error)
{
	cJSON *o = cJSON_CreateObject();

	if (!o)
		return;
	cJSON_AddNumberToObject(o, "outboxId", (double)id);
	cJSON_AddStringToObject(o, "correlationId", e->correlation_id ? e->correlation_id : "");
	cJSON_AddStringToObject(o, "idempotencyKey", e->idempotency_key ? e->idempotency_key : "");
	cJSON_AddStringToObject(o, "recipient", e->recipient ? e->recipient : "");
	cJSON_AddStringToObject(o, "priority", env_priority_name(e->priority));
	cJSON_AddNumberToObject(o, "createdAtMs", (double)e->created_at_ms);
	cJSON_AddNumberToObject(o, "expiresAtMs", (double)e->expires_at_ms);
	cJSON_AddNumberToObject(o, "bytes", (double)e->payload.len);
	cJSON_AddNumberToObject(o, "storedBytes", (double)vl);
	if (head) {
		cJSON_AddNumberToObject(o, "tries", tries);
		cJSON_AddStringToObject(o, "lastError", last_error);
	}
	cJSON_AddItemToArray(arr, o);
}

/* GET /v1/outbox[?limit=N]: counts, the breaker, the first N waiting
 * messages and the newest N failed records */
static void outbox_get(struct conn *c, struct mg_connection *mc, int limit)
{
	struct conn_outbox *ob = &c->outbox;
	struct store_iter *it = NULL;
	cJSON *j = cJSON_CreateObject(), *w, *f, *b;
	const void *k, *v, *ev;
	const char *rc;
	size_t kl, vl, rl, el, nf = 0, skip = 0;
	uint64_t head;
	unsigned tries;
	char last[200], *txt;
	int n = 0;

	if (!j) {
		http_error(mc, 500, "internal", "out of memory", NULL, 0);
		return;
	}
	fill_status(c, j);
	if ((b = cJSON_AddObjectToObject(j, "breakers")))
		conn_brk_json(ob->brk, "gateway", b, "gateway");
	pthread_mutex_lock(&ob->mu);
	head = ob->head_seq;
	tries = ob->head_tries;
	snprintf(last, sizeof(last), "%s", ob->last_error);
	nf = (size_t)ob->failed_n;
	pthread_mutex_unlock(&ob->mu);
	w = cJSON_AddArrayToObject(j, "waiting");
	f = cJSON_AddArrayToObject(j, "failedRecords");
	if (w && store_iter_new(c->inbox.st, ob->db_out, NULL, 0, &it) == CR_OK) {
		while (n < limit && store_iter_next(it, &k, &kl, &v, &vl) == 1) {
			Envelope *e = NULL;

			if (kl != 8 || value_parse(v, vl, &rc, &rl, &ev, &el) != 0 ||
			    env_unpack(ev, el, &e, NULL) != CR_OK)
				continue;
			add_entry(w, be64_get(k), e, vl, be64_get(k) == head, tries, last);
			env_free(e);
			n++;
		}
		store_iter_free(it);
		it = NULL;
	}
	/* the newest `limit` records, oldest first */
	if (nf > (size_t)limit)
		skip = nf - (size_t)limit;
	if (f && store_iter_new(c->inbox.st, ob->db_failed, NULL, 0, &it) == CR_OK) {
		while (store_iter_next(it, &k, &kl, &v, &vl) == 1) {
			cJSON *rec;

			if (skip) {
				skip--;
				continue;
			}
			if ((rec = cJSON_ParseWithLength(v, vl)))
				cJSON_AddItemToArray(f, rec);
		}
		store_iter_free(it);
	}
	txt = cJSON_PrintUnformatted(j);
	cJSON_Delete(j);
	if (!txt) {
		http_error(mc, 500, "internal", "out of memory", NULL, 0);
		return;
	}
	http_json(mc, 200, txt);
	cJSON_free(txt);
}

/* DELETE /v1/outbox/failed: forget every failed record */
static void failed_clear(struct conn *c, struct mg_connection *mc)
{
	struct conn_outbox *ob = &c->outbox;
	struct store_iter *it = NULL;
	struct store_batch *b = store_batch_new();
	const void *k, *v;
	size_t kl, vl, n = 0;
	enum cr_err err = CR_ERR_NOMEM;
	char txt[64];

	if (!b)
		goto out;
	pthread_mutex_lock(&ob->mu);
	if ((err = store_iter_new(c->inbox.st, ob->db_failed, NULL, 0, &it)) == CR_OK) {
		while (err == CR_OK && store_iter_next(it, &k, &kl, &v, &vl) == 1) {
			err = store_batch_del(b, ob->db_failed, k, kl);
			n++;
		}
		store_iter_free(it);
	}
	if (err == CR_OK && n) {
		err = store_committer_submit_wait(c->inbox.com, b);
		b = NULL;
	}
	if (err == CR_OK)
		ob->failed_n = 0;
	pthread_mutex_unlock(&ob->mu);
out:
	store_batch_free(b);
	if (err != CR_OK) {
		http_error(mc, 503, "storage_error", cr_strerror(err), NULL, 1);
		return;
	}
	snprintf(txt, sizeof(txt), "{\"deleted\":%zu}", n);
	http_json(mc, 200, txt);
}

/* conn_outbox_api - GET /v1/outbox, DELETE /v1/outbox/failed */
int conn_outbox_api(struct mg_connection *mc, void *arg)
{
	struct conn *c = arg;
	const struct mg_request_info *ri = mg_get_request_info(mc);
	int limit = LIST_DEFAULT;
	char buf[16];

	if (strcmp(ri->local_uri, "/v1/outbox/failed") == 0) {
		if (strcmp(ri->request_method, "DELETE") != 0)
			http_error(mc, 405, "method_not_allowed", "use DELETE", NULL, 0);
		else
			failed_clear(c, mc);
		return 1;
	}
	if (strcmp(ri->local_uri, "/v1/outbox") != 0) {
		http_error(mc, 404, "not_found", "GET /v1/outbox or DELETE /v1/outbox/failed",
		    NULL, 0);
		return 1;
	}
	if (strcmp(ri->request_method, "GET") != 0) {
		http_error(mc, 405, "method_not_allowed", "use GET", NULL, 0);
		return 1;
	}
	if (ri->query_string && mg_get_var(ri->query_string, strlen(ri->query_string), "limit",
	    buf, sizeof(buf)) > 0) {
		char *end = NULL;
		long l = strtol(buf, &end, 10);

		if (!end || *end || l < 1 || l > LIST_MAX) {
			http_error(mc, 400, "bad_limit", "limit must be 1-1000", NULL, 0);
			return 1;
		}
		limit = (int)l;
	}
	outbox_get(c, mc, limit);
	return 1;
}
