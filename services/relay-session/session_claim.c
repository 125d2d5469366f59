/*
 * session_claim.c - idempotency keys across partitions.
 *
 * A message is queued (with its idempotency entry) in its recipient's
 * partition; the same key from the same sender for a recipient in another
 * partition would never meet that entry. So a key also has one owner: the
 * partition of its sender. Before a recipient's partition R takes a new key
 * whose sender's partition S is another one, it asks S's owner
 * (<P>.session.<S>.idem_claim, an IdemClaim): S answers claimed when the key
 * is new (after a durable commit of the claim) or already belongs to this
 * recipient, and otherwise names the recipient and message that hold it,
 * which R answers with a 409. When S is R itself, the enqueue path checks
 * S's claims directly (session_claim_taken_locked). A claim lives as long as
 * an idempotency entry (the same sweep removes it).
 *
 * Claims are kept in DB idem beside the entries, under a key no entry can
 * have: "\x01<sender>\0<key>" (an agent ID never starts with \x01), value
 *   created_ms be64 | sha256(payload) [32] | message_id \0 correlation_id \0 recipient \0
 *
 * If S's owner cannot be asked (no replica serves S yet, a timeout), the
 * message is refused with 503 + Retry-After, never queued unchecked.
 *
 * Threads: session_claim_handle runs on S's partition subscription thread
 * and takes S's mu; its commit callback runs on the committer thread;
 * session_claim_ask's callbacks run on the bus's reply or timer thread.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "log.h"
#include "session.h"
#include "util.h"

#define CLAIM_FIXED (8 + 32)
#define CLAIM_TIMEOUT_MS 3000

/* claim key of (sender, key) into out (STORE_KEY_MAX + 1); length, 0 if too long */
static size_t
claim_key(char *out, const char *sender, const char *key)
{
	size_t sl = strlen(sender), kl = strlen(key);

	if (2 + sl + kl > STORE_KEY_MAX)
		return 0;
	out[0] = '\x01';
	memcpy(out + 1, sender, sl + 1);
	memcpy(out + 2 + sl, key, kl);
	out[2 + sl + kl] = '\0';
	return 2 + sl + kl;
}

/* the owner recorded in a stored claim or entry value, if it is still in
 * the idempotency window; fixed = CLAIM_FIXED or SESSION_IDEM_FIXED */
static int
owner_of_value(const struct session *s, const unsigned char *v, size_t vl, size_t fixed,
    struct session_claim_owner *o)
{
	const char *end = (const char *)v + vl, *mid, *cid, *rcpt;

	if (vl < fixed + 3 ||
	    session_be64_get(v) + (uint64_t)s->cfg.idem_window_s * 1000u < now_ms())
		return 0;
	mid = (const char *)v + fixed;
	if ((cid = memchr(mid, 0, (size_t)(end - mid))) == NULL || ++cid >= end)
		return 0;
	if ((rcpt = memchr(cid, 0, (size_t)(end - cid))) == NULL || ++rcpt >= end ||
	    memchr(rcpt, 0, (size_t)(end - rcpt)) == NULL)
		return 0;
	snprintf(o->message_id, sizeof(o->message_id), "%s", mid);
	snprintf(o->correlation_id, sizeof(o->correlation_id), "%s", cid);
	snprintf(o->recipient, sizeof(o->recipient), "%s", rcpt);
	return 1;
}

/* who holds key (an entry key or a claim key) in pp: pending or stored */
static int
holder_locked(struct session_part *pp, const char *key, size_t klen, size_t fixed,
    struct session_claim_owner *o)
{
	struct session_idem_pending *ip = session_idem_pending_find(pp, key, klen);
	void *v = NULL;
	size_t vl = 0;
	int found;

	if (ip != NULL) {
		snprintf(o->message_id, sizeof(o->message_id), "%s", ip->message_id);
		snprintf(o->correlation_id, sizeof(o->correlation_id), "%s", ip->correlation_id);
		snprintf(o->recipient, sizeof(o->recipient), "%s", ip->recipient);
		return 1;
	}
	if (store_get(pp->st, pp->dbidem, key, klen, &v, &vl) != CR_OK)
		return 0;
	found = owner_of_value(pp->s, v, vl, fixed, o);
	free(v);
	return found;
}

/* session_claim_taken_locked - in the sender's own partition pp: is (sender,
 * key) claimed for another recipient than rcpt? 1 with its owner in *o.
 * Caller holds mu. */
int
session_claim_taken_locked(struct session_part *pp, const char *sender, const char *key,
    const char *rcpt, struct session_claim_owner *o)
{
	char ck[STORE_KEY_MAX + 1];
	size_t ckl = claim_key(ck, sender, key);

	return ckl != 0 && holder_locked(pp, ck, ckl, CLAIM_FIXED, o) &&
	    strcmp(o->recipient, rcpt) != 0;
}

/* ---- S: the owner of the senders' partition answers ---- */

/* the answers of one IdemClaims request */
struct claim_job {
	struct session_part *pp;
	uint64_t gen;
	char *reply;
	size_t n;
	IdemClaimReply *r;                 /* n; strings owned */
	IdemClaimReply **rp;
	struct session_idem_pending **ip;  /* n; the claims being committed (or NULL) */
};

static char no_text[] = "";

static char *
text_or_empty(const char *t)
{
	char *d;
	if (t == NULL || *t == '\0' || (d = strdup(t)) == NULL)
		return no_text;
	return d;
}

static void
set_answer(IdemClaimReply *r, int claimed, const struct session_claim_owner *o, const char *error)
{
	r->claimed = claimed;
	r->recipient = text_or_empty(o ? o->recipient : NULL);
	r->message_id = text_or_empty(o ? o->message_id : NULL);
	r->correlation_id = text_or_empty(o ? o->correlation_id : NULL);
	r->error = text_or_empty(error);
}

static void
job_free(struct claim_job *j)
{
	if (j == NULL)
		return;
	for (size_t i = 0; j->r != NULL && i < j->n; i++) {
		char *t[4] = { j->r[i].recipient, j->r[i].message_id, j->r[i].correlation_id,
			j->r[i].error };
		for (int k = 0; k < 4; k++)
			if (t[k] != no_text)
				free(t[k]);
	}
	free(j->r);
	free(j->rp);
	free(j->ip);
	free(j->reply);
	free(j);
}

/* publish the answers (empty n: refused as a whole) */
static void
job_reply(struct session *s, const char *subj, IdemClaimReply **rp, size_t n)
{
	IdemClaimsReply r = CLAWRELAY__V1__IDEM_CLAIMS_REPLY__INIT;
	size_t len = 0, cap;
	unsigned char *buf;

	if (subj == NULL || *subj == '\0')
		return;
	r.schema_version = ENV_SCHEMA;
	r.n_replies = n;
	r.replies = rp;
	cap = protobuf_c_message_get_packed_size(&r.base);
	if ((buf = malloc(cap ? cap : 1)) == NULL)
		return;
	if (env_pack_into(&r.base, buf, cap, &len) == CR_OK)
		natsConnection_Publish(bus_nc(s->bus), subj, buf, (int)len);
	free(buf);
}

static void
claims_done(void *arg, enum cr_err result)
{
	struct claim_job *j = arg;
	struct session_part *pp = j->pp;

	pthread_mutex_lock(&pp->mu);
	for (size_t i = 0; i < j->n; i++) {
		if (j->ip[i] == NULL)
			continue;
		if (j->gen == pp->gen && pp->open)
			session_idem_pending_remove(pp, j->ip[i]);
		if (result != CR_OK) {
			/* the claim was not stored: this one must be asked again */
			if (j->r[i].error != no_text)
				free(j->r[i].error);
			j->r[i].error = text_or_empty("the claim could not be stored");
			j->r[i].claimed = 0;
		}
	}
	pthread_mutex_unlock(&pp->mu);
	job_reply(pp->s, j->reply, j->rp, j->n);
	job_free(j);
}

/* one claim of a request, under mu: answered at once (0), or a put added to
 * b and a pending entry to j->ip[i] (1); -1 when out of memory */
static int
claim_one_locked(struct session_part *pp, const IdemClaim *c, struct claim_job *j, size_t i,
    struct store_batch *b)
{
	struct session *s = pp->s;
	struct session_claim_owner o;
	char ek[STORE_KEY_MAX + 1], ck[STORE_KEY_MAX + 1], *key;
	size_t ekl, ckl, ml, cl, rl, vl;
	unsigned char *v;

	if (!env_id_ok(c->sender) || !env_id_ok(c->recipient) || c->idempotency_key == NULL ||
	    c->idempotency_key[0] == '\0' || c->payload_sha256.len != 32 ||
	    c->message_id == NULL || c->correlation_id == NULL ||
	    partition_of(c->sender, s->nparts) != pp->idx ||
	    (ckl = claim_key(ck, c->sender, c->idempotency_key)) == 0) {
		set_answer(&j->r[i], 0, NULL, "invalid IdemClaim");
		return 0;
	}
	/* "<sender>\0<key>": an entry of a message to a recipient in this partition */
	ekl = ckl - 1;
	memcpy(ek, ck + 1, ekl + 1);
	if (holder_locked(pp, ek, ekl, SESSION_IDEM_FIXED, &o) ||
	    holder_locked(pp, ck, ckl, CLAIM_FIXED, &o)) {
		set_answer(&j->r[i], strcmp(o.recipient, c->recipient) == 0, &o, NULL);
		return 0;
	}
	ml = strlen(c->message_id);
	cl = strlen(c->correlation_id);
	rl = strlen(c->recipient);
	vl = CLAIM_FIXED + ml + 1 + cl + 1 + rl + 1;
	if ((v = malloc(vl)) == NULL)
		return -1;
	session_be64_put(v, now_ms());
	memcpy(v + 8, c->payload_sha256.data, 32);
	memcpy(v + CLAIM_FIXED, c->message_id, ml + 1);
	memcpy(v + CLAIM_FIXED + ml + 1, c->correlation_id, cl + 1);
	memcpy(v + CLAIM_FIXED + ml + 1 + cl + 1, c->recipient, rl + 1);
	if (store_batch_put(b, pp->dbidem, ck, ckl, v, vl) != CR_OK ||
	    (key = malloc(ckl + 1)) == NULL) {
		free(v);
		return -1;
	}
	free(v);
	memcpy(key, ck, ckl + 1);
	j->ip[i] = session_idem_pending_add(pp, key, ckl, c->message_id, c->correlation_id,
	    c->recipient, c->payload_sha256.data);
	if (j->ip[i] == NULL)
		return -1;
	snprintf(o.message_id, sizeof(o.message_id), "%s", c->message_id);
	snprintf(o.correlation_id, sizeof(o.correlation_id), "%s", c->correlation_id);
	snprintf(o.recipient, sizeof(o.recipient), "%s", c->recipient);
	set_answer(&j->r[i], 1, &o, NULL);
	return 1;
}

/* session_claim_handle - answer an IdemClaims request for this (the
 * senders') partition (msg borrowed) */
void
session_claim_handle(struct session_part *pp, natsMsg *msg)
{
	struct session *s = pp->s;
	const char *reply = natsMsg_GetReply(msg);
	ProtobufCMessage *m = NULL;
	IdemClaims *cs;
	struct claim_job *j = NULL;
	struct store_batch *b = NULL;
	size_t n, pending = 0;

	if (env_unpack_msg(&clawrelay__v1__idem_claims__descriptor, natsMsg_GetData(msg),
	    (size_t)natsMsg_GetDataLength(msg), &m) != CR_OK ||
	    ((IdemClaims *)m)->n_claims == 0) {
		log_warn(NULL, "idem_claim refused: malformed or empty");
		job_reply(s, reply, NULL, 0);
		goto out;
	}
	cs = (IdemClaims *)m;
	n = cs->n_claims;
	if ((j = calloc(1, sizeof(*j))) == NULL || (j->r = calloc(n, sizeof(*j->r))) == NULL ||
	    (j->rp = calloc(n, sizeof(*j->rp))) == NULL ||
	    (j->ip = calloc(n, sizeof(*j->ip))) == NULL ||
	    (reply != NULL && (j->reply = strdup(reply)) == NULL) ||
	    (b = store_batch_new()) == NULL)
		goto nomem_unlocked;
	j->pp = pp;
	j->n = n;
	for (size_t i = 0; i < n; i++) {
		clawrelay__v1__idem_claim_reply__init(&j->r[i]);
		j->r[i].recipient = j->r[i].message_id = j->r[i].correlation_id = no_text;
		j->r[i].error = no_text;
		j->rp[i] = &j->r[i];
	}
	pthread_mutex_lock(&pp->mu);
	if (!pp->open) {
		pthread_mutex_unlock(&pp->mu);
		for (size_t i = 0; i < n; i++)
			set_answer(&j->r[i], 0, NULL, "partition moving to another replica");
		job_reply(s, reply, j->rp, n);
		goto out;
	}
	j->gen = pp->gen;
	for (size_t i = 0; i < n; i++) {
		int r = claim_one_locked(pp, cs->claims[i], j, i, b);
		if (r < 0)
			goto nomem;
		pending += (size_t)r;
	}
	if (pending == 0) {
		pthread_mutex_unlock(&pp->mu);
		job_reply(s, reply, j->rp, n);
		goto out;
	}
	if (store_committer_submit(pp->com, b, claims_done, j) != CR_OK) {
		b = NULL;
		goto nomem;
	}
	pthread_mutex_unlock(&pp->mu);
	protobuf_c_message_free_unpacked(m, NULL);
	return;	/* claims_done answers and frees j */
nomem:
	for (size_t i = 0; i < n; i++)
		if (j->ip[i] != NULL)
			session_idem_pending_remove(pp, j->ip[i]);
	pthread_mutex_unlock(&pp->mu);
nomem_unlocked:
	log_error(NULL, "idempotency claims: out of memory or store stopping");
	job_reply(s, reply, NULL, 0);
out:
	store_batch_free(b);
	job_free(j);
	protobuf_c_message_free_unpacked(m, NULL);
}

/* ---- R: the recipients' partition asks ---- */

struct claim_ask {
	session_claim_fn fn;
	size_t n;
	void *args[];
};

static void
ask_fail(session_claim_fn fn, void *const *args, size_t n, const char *why)
{
	struct session_claim_result r;

	memset(&r, 0, sizeof(r));
	r.status = SESSION_CLAIM_ERROR;
	snprintf(r.error, sizeof(r.error), "%s", why);
	for (size_t i = 0; i < n; i++)
		fn(args[i], &r);
}

static void
on_claims_reply(void *arg, enum cr_err err, natsMsg *reply)
{
	struct claim_ask *ca = arg;
	ProtobufCMessage *m = NULL;
	IdemClaimsReply *cr;
	char why[160];

	if (err != CR_OK) {
		snprintf(why, sizeof(why), "the sender's partition did not answer (%s)",
		    cr_strerror(err));
		ask_fail(ca->fn, ca->args, ca->n, why);
		goto out;
	}
	if (env_unpack_msg(&clawrelay__v1__idem_claims_reply__descriptor, natsMsg_GetData(reply),
	    (size_t)natsMsg_GetDataLength(reply), &m) != CR_OK ||
	    ((IdemClaimsReply *)m)->n_replies != ca->n) {
		ask_fail(ca->fn, ca->args, ca->n, "the sender's partition refused the claims");
		goto out;
	}
	cr = (IdemClaimsReply *)m;
	for (size_t i = 0; i < ca->n; i++) {
		const IdemClaimReply *x = cr->replies[i];
		struct session_claim_result r;

		memset(&r, 0, sizeof(r));
		if (x->error != NULL && x->error[0] != '\0') {
			r.status = SESSION_CLAIM_ERROR;
			snprintf(r.error, sizeof(r.error), "sender's partition: %s", x->error);
		} else {
			r.status = x->claimed ? SESSION_CLAIM_OK : SESSION_CLAIM_TAKEN;
			snprintf(r.owner.message_id, sizeof(r.owner.message_id), "%s",
			    x->message_id ? x->message_id : "");
			snprintf(r.owner.correlation_id, sizeof(r.owner.correlation_id), "%s",
			    x->correlation_id ? x->correlation_id : "");
			snprintf(r.owner.recipient, sizeof(r.owner.recipient), "%s",
			    x->recipient ? x->recipient : "");
		}
		ca->fn(ca->args[i], &r);
	}
out:
	protobuf_c_message_free_unpacked(m, NULL);
	free(ca);
}

/* session_claim_ask - ask the owner of partition part to claim the keys of
 * n envelopes (their senders all in part) for their recipients, in one
 * request; fn(args[i], result) runs exactly once per envelope, in order, on
 * another thread (or on this one, at once, when the request cannot be
 * sent). es and shas (32 bytes each) are borrowed for the call only. */
void
session_claim_ask(struct session *s, uint32_t part, Envelope *const *es,
    const unsigned char *const *shas, size_t n, session_claim_fn fn, void *const *args)
{
	IdemClaims cs = CLAWRELAY__V1__IDEM_CLAIMS__INIT;
	IdemClaim *items = calloc(n, sizeof(*items));
	IdemClaim **ip = calloc(n, sizeof(*ip));
	struct claim_ask *ca = malloc(sizeof(*ca) + n * sizeof(void *));
	unsigned char *buf = NULL;
	size_t len = 0, cap;
	char subj[160];

	if (items == NULL || ip == NULL || ca == NULL) {
		ask_fail(fn, args, n, "out of memory");
		goto out;
	}
	for (size_t i = 0; i < n; i++) {
		clawrelay__v1__idem_claim__init(&items[i]);
		items[i].sender = es[i]->sender;
		items[i].idempotency_key = es[i]->idempotency_key;
		items[i].recipient = es[i]->recipient;
		items[i].payload_sha256.data = (uint8_t *)(uintptr_t)shas[i];
		items[i].payload_sha256.len = 32;
		items[i].message_id = es[i]->message_id;
		items[i].correlation_id = es[i]->correlation_id;
		ip[i] = &items[i];
	}
	cs.schema_version = ENV_SCHEMA;
	cs.n_claims = n;
	cs.claims = ip;
	cap = protobuf_c_message_get_packed_size(&cs.base);
	if (bus_subj(s->bus, subj, sizeof(subj), "session.%u.idem_claim", part) < 0 ||
	    (buf = malloc(cap ? cap : 1)) == NULL ||
	    env_pack_into(&cs.base, buf, cap, &len) != CR_OK) {
		ask_fail(fn, args, n, "idempotency claims do not fit");
		goto out;
	}
	ca->fn = fn;
	ca->n = n;
	memcpy(ca->args, args, n * sizeof(void *));
	if (bus_request_async(s->bus, subj, buf, len, CLAIM_TIMEOUT_MS, on_claims_reply, ca) != CR_OK) {
		ask_fail(fn, args, n, "the sender's partition cannot be asked");
		goto out;
	}
	ca = NULL;	/* on_claims_reply frees it */
out:
	free(ca);
	free(buf);
	free(items);
	free(ip);
}
