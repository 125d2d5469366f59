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
 * session_claim_ask's callback runs on the bus's reply or timer thread.
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

/* ---- S: the owner of the sender's partition answers ---- */

static void
claim_reply(struct session *s, const char *subj, int claimed, const struct session_claim_owner *o,
    const char *error)
{
	IdemClaimReply r = CLAWRELAY__V1__IDEM_CLAIM_REPLY__INIT;
	unsigned char buf[1024];
	size_t len;

	if (subj == NULL || *subj == '\0')
		return;
	r.schema_version = ENV_SCHEMA;
	r.claimed = claimed;
	r.recipient = SESSION_UNCONST(o ? o->recipient : "");
	r.message_id = SESSION_UNCONST(o ? o->message_id : "");
	r.correlation_id = SESSION_UNCONST(o ? o->correlation_id : "");
	r.error = SESSION_UNCONST(error ? error : "");
	if (env_pack_into(&r.base, buf, sizeof(buf), &len) == CR_OK)
		natsConnection_Publish(bus_nc(s->bus), subj, buf, (int)len);
}

/* a claim being committed in S */
struct claim_commit {
	struct session_part *pp;
	uint64_t gen;
	struct session_idem_pending *ip;   /* valid while gen matches */
	char *reply;
	struct session_claim_owner o;
};

static void
claim_done(void *arg, enum cr_err result)
{
	struct claim_commit *cc = arg;
	struct session_part *pp = cc->pp;

	pthread_mutex_lock(&pp->mu);
	if (cc->gen == pp->gen && pp->open)
		session_idem_pending_remove(pp, cc->ip);
	pthread_mutex_unlock(&pp->mu);
	if (result == CR_OK)
		claim_reply(pp->s, cc->reply, 1, &cc->o, NULL);
	else
		claim_reply(pp->s, cc->reply, 0, NULL, "the claim could not be stored");
	free(cc->reply);
	free(cc);
}

/* session_claim_handle - answer an IdemClaim for this (the sender's)
 * partition (msg borrowed) */
void
session_claim_handle(struct session_part *pp, natsMsg *msg)
{
	struct session *s = pp->s;
	const char *reply = natsMsg_GetReply(msg);
	ProtobufCMessage *m = NULL;
	IdemClaim *c;
	struct session_claim_owner o;
	char ek[STORE_KEY_MAX + 1], ck[STORE_KEY_MAX + 1];
	size_t ekl, ckl, ml, cl, rl, vl;
	struct claim_commit *cc = NULL;
	struct store_batch *b = NULL;
	unsigned char *v = NULL;
	char *key = NULL;

	if (env_unpack_msg(&clawrelay__v1__idem_claim__descriptor, natsMsg_GetData(msg),
	    (size_t)natsMsg_GetDataLength(msg), &m) != CR_OK) {
		claim_reply(s, reply, 0, NULL, "malformed IdemClaim");
		return;
	}
	c = (IdemClaim *)m;
	if (!env_id_ok(c->sender) || !env_id_ok(c->recipient) || c->idempotency_key == NULL ||
	    c->idempotency_key[0] == '\0' || c->payload_sha256.len != 32 ||
	    c->message_id == NULL || c->correlation_id == NULL ||
	    partition_of(c->sender, s->nparts) != pp->idx ||
	    (ckl = claim_key(ck, c->sender, c->idempotency_key)) == 0) {
		claim_reply(s, reply, 0, NULL, "invalid IdemClaim");
		goto out;
	}
	/* "<sender>\0<key>": an entry of a message to a recipient in this partition */
	ekl = ckl - 1;
	memcpy(ek, ck + 1, ekl + 1);

	pthread_mutex_lock(&pp->mu);
	if (!pp->open) {
		pthread_mutex_unlock(&pp->mu);
		claim_reply(s, reply, 0, NULL, "partition moving to another replica");
		goto out;
	}
	if (holder_locked(pp, ek, ekl, SESSION_IDEM_FIXED, &o) ||
	    holder_locked(pp, ck, ckl, CLAIM_FIXED, &o)) {
		pthread_mutex_unlock(&pp->mu);
		claim_reply(s, reply, strcmp(o.recipient, c->recipient) == 0, &o, NULL);
		goto out;
	}
	ml = strlen(c->message_id);
	cl = strlen(c->correlation_id);
	rl = strlen(c->recipient);
	vl = CLAIM_FIXED + ml + 1 + cl + 1 + rl + 1;
	if ((v = malloc(vl)) == NULL || (b = store_batch_new()) == NULL ||
	    (cc = calloc(1, sizeof(*cc))) == NULL || (key = malloc(ckl + 1)) == NULL ||
	    (reply != NULL && (cc->reply = strdup(reply)) == NULL))
		goto nomem;
	session_be64_put(v, now_ms());
	memcpy(v + 8, c->payload_sha256.data, 32);
	memcpy(v + CLAIM_FIXED, c->message_id, ml + 1);
	memcpy(v + CLAIM_FIXED + ml + 1, c->correlation_id, cl + 1);
	memcpy(v + CLAIM_FIXED + ml + 1 + cl + 1, c->recipient, rl + 1);
	if (store_batch_put(b, pp->dbidem, ck, ckl, v, vl) != CR_OK)
		goto nomem;
	memcpy(key, ck, ckl + 1);
	cc->ip = session_idem_pending_add(pp, key, ckl, c->message_id, c->correlation_id,
	    c->recipient, c->payload_sha256.data);
	key = NULL;
	if (cc->ip == NULL)
		goto nomem;
	cc->pp = pp;
	cc->gen = pp->gen;
	snprintf(cc->o.message_id, sizeof(cc->o.message_id), "%s", c->message_id);
	snprintf(cc->o.correlation_id, sizeof(cc->o.correlation_id), "%s", c->correlation_id);
	snprintf(cc->o.recipient, sizeof(cc->o.recipient), "%s", c->recipient);
	if (store_committer_submit(pp->com, b, claim_done, cc) != CR_OK) {
		b = NULL;
		session_idem_pending_remove(pp, cc->ip);
		pthread_mutex_unlock(&pp->mu);
		claim_reply(s, reply, 0, NULL, "store unavailable");
		free(cc->reply);
		free(cc);
		goto out;
	}
	pthread_mutex_unlock(&pp->mu);
	free(v);
	goto out;
nomem:
	pthread_mutex_unlock(&pp->mu);
	log_error(NULL, "idempotency claim: out of memory");
	claim_reply(s, reply, 0, NULL, "out of memory");
	store_batch_free(b);
	if (cc != NULL)
		free(cc->reply);
	free(cc);
	free(key);
	free(v);
out:
	protobuf_c_message_free_unpacked(m, NULL);
}

/* ---- R: the recipient's partition asks ---- */

struct claim_ask {
	session_claim_fn fn;
	void *arg;
};

static void
on_claim_reply(void *arg, enum cr_err err, natsMsg *reply)
{
	struct claim_ask *ca = arg;
	struct session_claim_result r;
	ProtobufCMessage *m = NULL;

	memset(&r, 0, sizeof(r));
	r.status = SESSION_CLAIM_ERROR;
	if (err != CR_OK) {
		snprintf(r.error, sizeof(r.error), "the sender's partition did not answer (%s)",
		    cr_strerror(err));
	} else if (env_unpack_msg(&clawrelay__v1__idem_claim_reply__descriptor,
	    natsMsg_GetData(reply), (size_t)natsMsg_GetDataLength(reply), &m) != CR_OK) {
		snprintf(r.error, sizeof(r.error), "malformed answer from the sender's partition");
	} else {
		IdemClaimReply *cr = (IdemClaimReply *)m;
		if (cr->error != NULL && cr->error[0] != '\0') {
			snprintf(r.error, sizeof(r.error), "sender's partition: %s", cr->error);
		} else {
			r.status = cr->claimed ? SESSION_CLAIM_OK : SESSION_CLAIM_TAKEN;
			snprintf(r.owner.message_id, sizeof(r.owner.message_id), "%s",
			    cr->message_id ? cr->message_id : "");
			snprintf(r.owner.correlation_id, sizeof(r.owner.correlation_id), "%s",
			    cr->correlation_id ? cr->correlation_id : "");
			snprintf(r.owner.recipient, sizeof(r.owner.recipient), "%s",
			    cr->recipient ? cr->recipient : "");
		}
		protobuf_c_message_free_unpacked(m, NULL);
	}
	ca->fn(ca->arg, &r);
	free(ca);
}

/* session_claim_ask - ask the owner of e's sender's partition to claim e's
 * key for e's recipient; fn(arg, result) is called exactly once, on another
 * thread (or on this one, at once, when the request cannot be sent). e and
 * sha are borrowed for the call only. */
void
session_claim_ask(struct session *s, const Envelope *e, const unsigned char *sha,
    session_claim_fn fn, void *arg)
{
	IdemClaim c = CLAWRELAY__V1__IDEM_CLAIM__INIT;
	unsigned char buf[2048];
	char subj[160];
	size_t len;
	struct claim_ask *ca = malloc(sizeof(*ca));
	struct session_claim_result r;

	memset(&r, 0, sizeof(r));
	r.status = SESSION_CLAIM_ERROR;
	c.schema_version = ENV_SCHEMA;
	c.sender = e->sender;
	c.idempotency_key = e->idempotency_key;
	c.recipient = e->recipient;
	c.payload_sha256.data = (uint8_t *)(uintptr_t)sha;
	c.payload_sha256.len = 32;
	c.message_id = e->message_id;
	c.correlation_id = e->correlation_id;
	if (ca == NULL) {
		snprintf(r.error, sizeof(r.error), "out of memory");
		goto fail;
	}
	ca->fn = fn;
	ca->arg = arg;
	if (bus_subj(s->bus, subj, sizeof(subj), "session.%u.idem_claim",
	    partition_of(e->sender, s->nparts)) < 0 ||
	    env_pack_into(&c.base, buf, sizeof(buf), &len) != CR_OK) {
		snprintf(r.error, sizeof(r.error), "idempotency claim does not fit");
		goto fail;
	}
	if (bus_request_async(s->bus, subj, buf, len, CLAIM_TIMEOUT_MS, on_claim_reply, ca) != CR_OK) {
		snprintf(r.error, sizeof(r.error), "the sender's partition cannot be asked");
		goto fail;
	}
	return;
fail:
	free(ca);
	fn(arg, &r);
}
