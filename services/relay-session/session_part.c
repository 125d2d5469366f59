/*
 * session_part.c - one partition: its LMDB, its in-memory agents, its
 * subscription (<P>.session.<p>.*) and the connect/disconnect handshake.
 *
 * A partition is opened on the main thread once its lease is held: the
 * environment is opened, every queue key is scanned once to rebuild the
 * per-agent counts (memory holds counts, not messages), the failure
 * counters are loaded, and only then is the subject subscribed. Closing is
 * the reverse: unsubscribe, bump gen (late callbacks see it), drain the
 * committer (its callbacks still answer their requesters), close LMDB.
 *
 * Threads: see session.h. The subscription callback runs on its own nats.c
 * thread and takes mu for every state access.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "hop.h"
#include "log.h"
#include "metrics.h"
#include "session.h"
#include "util.h"

/* session_key_make - queue key of (recipient, lane, seq) */
size_t
session_key_make(unsigned char *out, const char *recipient, int lane, uint64_t seq)
{
	size_t n = strlen(recipient);

	if (n == 0 || n > 128)
		return 0;
	memcpy(out, recipient, n);
	out[n] = 0;
	out[n + 1] = (unsigned char)lane;
	session_be64_put(out + n + 2, seq);
	return n + 10;
}

/* session_key_parse - split a queue key */
int
session_key_parse(const void *k, size_t kl, char *recipient, int *lane, uint64_t *seq)
{
	const unsigned char *p = k;
	const unsigned char *z;

	if (kl < 11 || kl > SESSION_KEY_MAX)
		return -1;
	z = memchr(p, 0, kl);
	if (z == NULL || (size_t)(z - p) != kl - 10 || z == p)
		return -1;
	memcpy(recipient, p, kl - 10);
	recipient[kl - 10] = '\0';
	if (p[kl - 9] >= SESSION_LANES)
		return -1;
	*lane = p[kl - 9];
	*seq = session_be64_get(p + kl - 8);
	return 0;
}

/* session_agent_get - find (or create) an agent's state; caller holds mu */
struct session_agent *
session_agent_get(struct session_part *pp, const char *id, int create)
{
	uint32_t h = fnv1a32(id) % SESSION_AGENT_BUCKETS;
	struct session_agent *a;

	for (a = pp->agents[h]; a != NULL; a = a->next)
		if (strcmp(a->id, id) == 0)
			return a;
	if (!create)
		return NULL;
	if ((a = calloc(1, sizeof(*a))) == NULL)
		return NULL;
	if ((a->id = strdup(id)) == NULL) {
		free(a);
		return NULL;
	}
	a->next = pp->agents[h];
	pp->agents[h] = a;
	pp->nagents++;
	return a;
}

/* session_slot_find - the slot for (lane, seq); caller holds mu */
struct session_slot *
session_slot_find(struct session_agent *a, int lane, uint64_t seq)
{
	for (size_t i = 0; i < a->nslots; i++)
		if (a->slots[i].seq == seq && a->slots[i].lane == lane)
			return &a->slots[i];
	return NULL;
}

static char *
dup_or_empty(const char *s)
{
	return strdup(s ? s : "");
}

/* session_slot_new - add a slot for a stored message; caller holds mu.
 * The returned pointer is valid until the next slot_new/slot_remove. */
struct session_slot *
session_slot_new(struct session_agent *a, int lane, uint64_t seq, uint64_t vlen,
    const Envelope *e)
{
	struct session_slot *sl;

	if (a->nslots == a->capslots) {
		size_t cap = a->capslots ? a->capslots * 2 : 8;
		struct session_slot *ns = realloc(a->slots, cap * sizeof(*ns));
		if (ns == NULL)
			return NULL;
		a->slots = ns;
		a->capslots = cap;
	}
	sl = &a->slots[a->nslots];
	memset(sl, 0, sizeof(*sl));
	sl->lane = (uint8_t)lane;
	sl->seq = seq;
	sl->vlen = vlen;
	sl->attempts = e->attempt;
	sl->created_at_ms = e->created_at_ms;
	sl->message_id = dup_or_empty(e->message_id);
	sl->correlation_id = dup_or_empty(e->correlation_id);
	sl->sender = dup_or_empty(e->sender);
	sl->idem_key = dup_or_empty(e->idempotency_key);
	sl->trace_id = dup_or_empty(e->trace_id);
	if (!sl->message_id || !sl->correlation_id || !sl->sender || !sl->idem_key ||
	    !sl->trace_id) {
		session_slot_remove(a, sl);
		return NULL;
	}
	sl->state = SLOT_WAITING;
	a->nslots++;
	return sl;
}

static void
slot_strings_free(struct session_slot *sl)
{
	free(sl->message_id);
	free(sl->correlation_id);
	free(sl->sender);
	free(sl->idem_key);
	free(sl->trace_id);
}

/* session_slot_remove - forget a slot; caller holds mu. A slot not yet
 * counted in nslots (failed session_slot_new) is only freed. */
void
session_slot_remove(struct session_agent *a, struct session_slot *sl)
{
	size_t i = (size_t)(sl - a->slots);

	slot_strings_free(sl);
	if (i >= a->nslots)
		return;
	a->slots[i] = a->slots[a->nslots - 1];
	a->nslots--;
	if (a->nslots == 0 && a->capslots > 64) {
		free(a->slots);
		a->slots = NULL;
		a->capslots = 0;
	}
}

static void
agent_free(struct session_agent *a)
{
	for (size_t i = 0; i < a->nslots; i++)
		slot_strings_free(&a->slots[i]);
	free(a->slots);
	free(a->id);
	free(a);
}

/* session_counters_put - persist the agent's failure counters into w's batch */
void
session_counters_put(struct session_part *pp, struct session_agent *a, struct session_work *w)
{
	unsigned char key[130], val[24];
	size_t n = strlen(a->id);

	if (w->batch == NULL && (w->batch = store_batch_new()) == NULL)
		return;
	w->durable = 1;
	key[0] = 'c';
	memcpy(key + 1, a->id, n);
	session_be64_put(val, a->expired);
	session_be64_put(val + 8, a->shed);
	session_be64_put(val + 16, a->failed);
	if (a->expired == 0 && a->shed == 0 && a->failed == 0)
		store_batch_del(w->batch, pp->dbmeta, key, n + 1);
	else
		store_batch_put(w->batch, pp->dbmeta, key, n + 1, val, sizeof(val));
}

/* ---- connect / disconnect ---- */

static void
reply_ack(struct session *s, natsMsg *msg, ReconnectAck *ack)
{
	void *buf = NULL;
	size_t len = 0;

	if (env_pack(&ack->base, &buf, &len) == CR_OK)
		bus_reply(s->bus, msg, buf, len);
	free(buf);
}

/* oldest accepted_at_ms among the agent's first message of each lane */
static uint64_t
oldest_locked(struct session_part *pp, struct session_agent *a)
{
	uint64_t oldest = 0;

	for (int lane = 0; lane < SESSION_LANES; lane++) {
		unsigned char pre[SESSION_KEY_MAX];
		size_t pl = session_key_make(pre, a->id, lane, 0);
		struct store_iter *it = NULL;
		const void *k, *v;
		size_t kl, vl;

		if (a->n[lane] == 0 || pl == 0)
			continue;
		if (store_iter_new(pp->st, pp->dbq, pre, pl - 8, &it) != CR_OK)
			continue;
		if (store_iter_next(it, &k, &kl, &v, &vl) == 1 && vl >= SESSION_VHDR) {
			uint64_t acc = session_be64_get((const unsigned char *)v + 8);
			if (acc != 0 && (oldest == 0 || acc < oldest))
				oldest = acc;
		}
		store_iter_free(it);
	}
	return oldest;
}

static void
handle_connect(struct session_part *pp, natsMsg *msg, int disconnect)
{
	struct session *s = pp->s;
	ProtobufCMessage *m = NULL;
	ConnectRequest *cr;
	ReconnectAck ack = CLAWRELAY__V1__RECONNECT_ACK__INIT;
	struct session_agent *a;
	struct session_work w;
	struct log_ctx lc = {0};

	ack.schema_version = ENV_SCHEMA;
	if (env_unpack_msg(&clawrelay__v1__connect_request__descriptor, natsMsg_GetData(msg),
	    (size_t)natsMsg_GetDataLength(msg), &m) != CR_OK) {
		ack.error = SESSION_UNCONST("bad connect request");
		reply_ack(s, msg, &ack);
		return;
	}
	cr = (ConnectRequest *)m;
	lc.agent = cr->agent_id;
	if (cr->agent_id == NULL || cr->agent_id[0] == '\0' || strlen(cr->agent_id) > 128 ||
	    partition_of(cr->agent_id, s->nparts) != pp->idx) {
		ack.error = SESSION_UNCONST("wrong partition or bad agent id");
		if (!disconnect)
			reply_ack(s, msg, &ack);
		goto out;
	}
	session_work_init(&w);
	pthread_mutex_lock(&pp->mu);
	if (!pp->open) {
		pthread_mutex_unlock(&pp->mu);
		ack.error = SESSION_UNCONST("unavailable");
		if (!disconnect)
			reply_ack(s, msg, &ack);
		goto out;
	}
	if (disconnect || cr->disconnect) {
		a = session_agent_get(pp, cr->agent_id, 0);
		if (a != NULL && (cr->socket_id == NULL || cr->socket_id[0] == '\0' ||
		    a->socket_id[0] == '\0' || strcmp(cr->socket_id, a->socket_id) == 0)) {
			a->presence = AG_OFFLINE;
			a->next_try = mono_ms() + (uint64_t)s->cfg.offline_probe_ms;
			a->socket_id[0] = '\0';
		}
		pthread_mutex_unlock(&pp->mu);
		log_info(&lc, "agent disconnected");
		goto out;
	}
	a = session_agent_get(pp, cr->agent_id, 1);
	if (a == NULL) {
		pthread_mutex_unlock(&pp->mu);
		ack.error = SESSION_UNCONST("out of memory");
		reply_ack(s, msg, &ack);
		goto out;
	}
	a->presence = AG_ONLINE;
	a->online_since = mono_ms();
	a->fails = 0;
	a->next_try = 0;
	a->crit_next_try = 0;
	a->hold_until = 0;	/* a new socket: the destination is tried again */
	a->held = 0;
	snprintf(a->socket_id, sizeof(a->socket_id), "%s", cr->socket_id ? cr->socket_id : "");
	ack.queued_critical = a->n[0];
	ack.queued_normal = a->n[1];
	ack.queued_low = a->n[2];
	ack.oldest_queued_at_ms = oldest_locked(pp, a);
	ack.expired_count = a->expired;
	ack.shed_count = a->shed;
	ack.failed_count = a->failed;
	if (a->expired || a->shed || a->failed) {
		a->expired = a->shed = a->failed = 0;
		session_counters_put(pp, a, &w);
	}
	/* the ack goes out before the first deliver of this connection */
	reply_ack(s, msg, &ack);
	session_collect(pp, a, &w);
	session_work_flush_unlock(pp, &w);
	log_info(&lc, "agent connected: queued %llu/%llu/%llu, failed %llu since last connect",
	    (unsigned long long)ack.queued_critical, (unsigned long long)ack.queued_normal,
	    (unsigned long long)ack.queued_low, (unsigned long long)ack.failed_count);
out:
	protobuf_c_message_free_unpacked(m, NULL);
}

static void
on_part_msg(natsConnection *nc, natsSubscription *sub, natsMsg *msg, void *closure)
{
	struct session_part *pp = closure;
	const char *subj = natsMsg_GetSubject(msg);
	const char *last = strrchr(subj, '.');

	last = last ? last + 1 : subj;
	if (strcmp(last, "enqueue") == 0)
		session_enqueue(pp, msg);
	else if (strcmp(last, "enqueue_batch") == 0)
		session_enqueue_batch(pp, msg);
	else if (strcmp(last, "books") == 0)
		session_books_handle(pp, msg);
	else if (strcmp(last, "idem_claim") == 0)
		session_claim_handle(pp, msg);
	else if (strcmp(last, "connect") == 0)
		handle_connect(pp, msg, 0);
	else if (strcmp(last, "disconnect") == 0)
		handle_connect(pp, msg, 1);
	else
		log_debug(NULL, "ignoring %s", subj);
	natsMsg_Destroy(msg);
}

/* ---- open / close ---- */

static enum cr_err
rebuild(struct session_part *pp)
{
	struct store_iter *it = NULL;
	const void *k, *v;
	size_t kl, vl;
	uint64_t maxseq = 0, n = 0;
	enum cr_err err;
	int r;

	if ((err = store_iter_new(pp->st, pp->dbq, NULL, 0, &it)) != CR_OK)
		return err;
	while ((r = store_iter_next(it, &k, &kl, &v, &vl)) == 1) {
		char rcpt[129];
		int lane;
		uint64_t seq;
		struct session_agent *a;

		if (session_key_parse(k, kl, rcpt, &lane, &seq) != 0) {
			log_warn(NULL, "partition %u: malformed queue key skipped", pp->idx);
			continue;
		}
		if ((a = session_agent_get(pp, rcpt, 1)) == NULL) {
			store_iter_free(it);
			return CR_ERR_NOMEM;
		}
		a->n[lane]++;
		a->bytes += vl;
		if (vl > SESSION_VHDR) {
			/* the pair's share: the sender is inside the envelope */
			Envelope *e = clawrelay__v1__envelope__unpack(NULL, vl - SESSION_VHDR,
			    (const unsigned char *)v + SESSION_VHDR);
			struct session_pair *pr = e != NULL && e->sender != NULL ?
			    session_pair_get(pp, a, e->sender, 1) : NULL;

			if (pr != NULL) {
				pr->n++;
				pr->bytes += vl;
			}
			env_free(e);
		}
		if (seq > maxseq)
			maxseq = seq;
		n++;
	}
	err = r < 0 ? store_iter_err(it) : CR_OK;
	store_iter_free(it);
	if (err != CR_OK)
		return err;
	pp->depth = n;
	session_books_open(pp, n);
	if ((err = store_iter_new(pp->st, pp->dbmeta, "c", 1, &it)) != CR_OK)
		return err;
	while ((r = store_iter_next(it, &k, &kl, &v, &vl)) == 1) {
		char id[129];
		struct session_agent *a;
		const unsigned char *c = v;

		if (kl < 2 || kl > 129 || vl != 24)
			continue;
		memcpy(id, (const char *)k + 1, kl - 1);
		id[kl - 1] = '\0';
		if ((a = session_agent_get(pp, id, 1)) == NULL)
			break;
		a->expired = session_be64_get(c);
		a->shed = session_be64_get(c + 8);
		a->failed = session_be64_get(c + 16);
	}
	store_iter_free(it);
	/* the delay warnings' cursors of agents that still have messages */
	if ((err = store_iter_new(pp->st, pp->dbmeta, "w", 1, &it)) != CR_OK)
		return err;
	while ((r = store_iter_next(it, &k, &kl, &v, &vl)) == 1) {
		char id[129];
		struct session_agent *a;

		if (kl < 2 || kl > 129 || vl != 8 * SESSION_LANES)
			continue;
		memcpy(id, (const char *)k + 1, kl - 1);
		id[kl - 1] = '\0';
		if ((a = session_agent_get(pp, id, 0)) == NULL)
			continue;
		for (int l = 0; l < SESSION_LANES; l++)
			a->warned[l] = session_be64_get((const unsigned char *)v + 8 * l);
	}
	store_iter_free(it);
	/* the nonces still within their time (older ones the sweep deletes) */
	if ((err = store_iter_new(pp->st, pp->dbnonce, NULL, 0, &it)) != CR_OK)
		return err;
	{
		uint64_t cutoff = now_ms() - (uint64_t)pp->s->cfg.nonce_ttl_s * 1000u;
		struct session_nonce_ent ne;

		while ((r = store_iter_next(it, &k, &kl, &v, &vl)) == 1) {
			if (kl <= 8 || session_be64_get(k) < cutoff)
				continue;
			if (session_nonce_hash((const unsigned char *)k + 8, kl - 8, &ne) != 0 ||
			    session_nonce_add(&pp->nonces, &ne) != 0) {
				store_iter_free(it);
				return CR_ERR_NOMEM;
			}
		}
	}
	store_iter_free(it);
	pp->next_seq = now_us();
	if (maxseq + 1 > pp->next_seq)
		pp->next_seq = maxseq + 1;
	return CR_OK;
}

static void
agents_free(struct session_part *pp)
{
	session_pairs_free(pp);
	for (int i = 0; i < SESSION_AGENT_BUCKETS; i++) {
		while (pp->agents[i]) {
			struct session_agent *a = pp->agents[i];
			pp->agents[i] = a->next;
			agent_free(a);
		}
	}
	for (int i = 0; i < SESSION_IDEM_BUCKETS; i++) {
		while (pp->idem[i]) {
			struct session_idem_pending *ip = pp->idem[i];
			pp->idem[i] = ip->next;
			free(ip->key);
			free(ip->correlation_id);
			free(ip->recipient);
			free(ip);
		}
	}
	session_nonce_free(&pp->nonces);
	pp->nagents = 0;
	pp->depth = 0;
	pp->inflight = 0;
}

/* session_part_open - open, rebuild and subscribe partition pp */
enum cr_err
session_part_open(struct session *s, struct session_part *pp)
{
	char dir[4096], subj[256];
	enum cr_err err;
	natsStatus ns;
	uint64_t t0 = mono_ms();

	snprintf(dir, sizeof(dir), "%s/p%u", s->cfg.data_dir, pp->idx);
	err = store_open(dir, (size_t)s->cfg.map_size_mb << 20, 8,
	    s->cfg.fsync ? 0 : STORE_NOSYNC, &pp->st);
	if (err != CR_OK) {
		log_error(NULL, "partition %u: open %s: %s", pp->idx, dir, cr_strerror(err));
		return err;
	}
	if ((err = store_db(pp->st, "q", &pp->dbq)) != CR_OK ||
	    (err = store_db(pp->st, "idem", &pp->dbidem)) != CR_OK ||
	    (err = store_db(pp->st, "meta", &pp->dbmeta)) != CR_OK ||
	    (err = store_db(pp->st, "nonce", &pp->dbnonce)) != CR_OK)
		goto fail;
	pp->com = store_committer_new(pp->st, 8192, (unsigned)s->cfg.commit_delay_us);
	if (pp->com == NULL) {
		err = CR_ERR_NOMEM;
		goto fail;
	}
	pthread_mutex_lock(&pp->mu);
	err = rebuild(pp);
	if (err == CR_OK) {
		pp->open = 1;
		pp->sweep_klen = 0;
		pp->idem_klen = 0;
	}
	pthread_mutex_unlock(&pp->mu);
	if (err != CR_OK)
		goto fail;
	if (bus_subj(s->bus, subj, sizeof(subj), "session.%u.*", pp->idx) < 0) {
		err = CR_ERR_INVALID;
		goto fail;
	}
	ns = natsConnection_Subscribe(&pp->sub, bus_nc(s->bus), subj, on_part_msg, pp);
	if (ns == NATS_OK)
		ns = natsSubscription_SetPendingLimits(pp->sub, 1000000, 1024 * 1024 * 1024);
	if (ns != NATS_OK) {
		log_error(NULL, "subscribe %s: %s", subj, natsStatus_GetText(ns));
		err = bus_err(ns);
		goto fail;
	}
	log_info(NULL, "partition %u: serving (%llu messages, %llu agents, rebuilt in %llu ms)",
	    pp->idx, (unsigned long long)pp->depth, (unsigned long long)pp->nagents,
	    (unsigned long long)(mono_ms() - t0));
	return CR_OK;
fail:
	log_error(NULL, "partition %u: cannot serve: %s", pp->idx, cr_strerror(err));
	session_part_close(s, pp);
	return err;
}

/* session_part_close - stop serving pp and free its state */
void
session_part_close(struct session *s, struct session_part *pp)
{
	struct store_committer *com;
	natsSubscription *sub;
	int was_open;

	pthread_mutex_lock(&pp->mu);
	was_open = pp->open;
	pp->open = 0;
	pp->gen++;
	sub = pp->sub;
	pp->sub = NULL;
	com = pp->com;
	pp->com = NULL;
	pthread_mutex_unlock(&pp->mu);
	if (sub != NULL) {
		natsSubscription_Unsubscribe(sub);
		natsSubscription_Destroy(sub);
	}
	/* pending commits finish and answer their requesters (gen has moved) */
	store_committer_free(com);
	pthread_mutex_lock(&pp->mu);
	agents_free(pp);
	store_close(pp->st);
	pp->st = NULL;
	pthread_mutex_unlock(&pp->mu);
	metric_set(pp->m_depth, 0);
	metric_set(pp->m_inflight, 0);
	if (was_open)
		log_info(NULL, "partition %u: no longer served", pp->idx);
	(void)s;
}
