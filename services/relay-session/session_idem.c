/*
 * session_idem.c - what an idempotency entry says about its message after
 * the message has left the queue.
 *
 * An entry ("<sender>\0<key>" in DB idem, written by session_queue.c) holds
 *   created_ms be64 | lane u8 | seq be64 | sha256(payload) [32] |
 *   message_id \0 correlation_id \0 recipient \0 [final state u8]
 * The final state byte is added in the same txn that removes the message
 * from the queue (delivered, expired, failed), so a duplicate of a message
 * that is gone is answered with what became of it. An entry without it
 * (written before it existed) reads as delivered, as it used to.
 *
 * Until its commit lands an entry (or a claim, session_claim.c) also sits
 * in the partition's pending table, so two racing requests with one key
 * cannot both be taken.
 *
 * Threads: the callers hold the partition's mu.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "session.h"
#include "util.h"

/* the end of the recipient's \0 in an entry, or NULL if malformed */
static const unsigned char *
entry_end(const unsigned char *v, size_t vl)
{
	const unsigned char *p = v + SESSION_IDEM_FIXED, *end = v + vl;

	if (vl < SESSION_IDEM_FIXED + 3)
		return NULL;
	for (int field = 0; field < 3; field++) {
		const unsigned char *z = memchr(p, 0, (size_t)(end - p));
		if (z == NULL)
			return NULL;
		p = z + 1;
	}
	return p;
}

/* session_idem_finish - record in w's batch that sl's message left the
 * queue in state final (SESSION_IDEM_DELIVERED...); nothing for a message
 * without an idempotency key. 0, or -1 when the batch could not take it
 * (the message simply keeps reading as delivered). Caller holds mu. */
int
session_idem_finish(struct session_part *pp, const struct session_slot *sl, char final,
    struct session_work *w)
{
	size_t sl_len, kl, iklen, vl;
	char key[STORE_KEY_MAX + 1];
	void *v = NULL;
	int rc = -1;

	if (sl->idem_key == NULL || sl->idem_key[0] == '\0' || sl->sender == NULL)
		return 0;
	sl_len = strlen(sl->sender);
	kl = strlen(sl->idem_key);
	if ((iklen = sl_len + 1 + kl) > STORE_KEY_MAX)
		return 0;
	memcpy(key, sl->sender, sl_len + 1);
	memcpy(key + sl_len + 1, sl->idem_key, kl);
	if (store_get(pp->st, pp->dbidem, key, iklen, &v, &vl) != CR_OK)
		return 0;	/* swept already: nobody can ask any more */
	const unsigned char *end = entry_end(v, vl);
	if (end != NULL) {
		size_t base = (size_t)(end - (const unsigned char *)v);
		unsigned char *nv = malloc(base + 1);
		if (nv != NULL) {
			memcpy(nv, v, base);
			nv[base] = (unsigned char)final;
			if ((w->batch != NULL || (w->batch = store_batch_new()) != NULL) &&
			    store_batch_put(w->batch, pp->dbidem, key, iklen, nv, base + 1) == CR_OK)
				rc = 0;
			free(nv);
		}
	}
	free(v);
	return rc;
}

/* session_idem_final_state - the state an entry records for a message that
 * is no longer queued: "delivered", "expired" or "failed" */
const char *
session_idem_final_state(const void *v, size_t vl)
{
	const unsigned char *end = entry_end(v, vl);

	if (end != NULL && end < (const unsigned char *)v + vl) {
		switch (*end) {
		case SESSION_IDEM_EXPIRED:
			return "expired";
		case SESSION_IDEM_FAILED:
			return "failed";
		default:
			break;
		}
	}
	return "delivered";
}

/* session_idem_pending_find - the pending entry of key, or NULL */
struct session_idem_pending *
session_idem_pending_find(struct session_part *pp, const char *key, size_t klen)
{
	uint32_t h = fnv1a32(key) % SESSION_IDEM_BUCKETS;	/* up to the sender's \0 */

	for (struct session_idem_pending *ip = pp->idem[h]; ip; ip = ip->next)
		if (ip->klen == klen && memcmp(ip->key, key, klen) == 0)
			return ip;
	return NULL;
}

/* session_idem_pending_add - a pending entry for key (takes key, a malloc'd
 * string of klen bytes plus a \0; freed here on failure); the IDs are copied.
 * NULL when out of memory. */
struct session_idem_pending *
session_idem_pending_add(struct session_part *pp, char *key, size_t klen, const char *mid,
    const char *cid, const char *rcpt, const unsigned char *sha)
{
	struct session_idem_pending *ip = calloc(1, sizeof(*ip));
	uint32_t h = fnv1a32(key) % SESSION_IDEM_BUCKETS;

	if (ip == NULL || (ip->correlation_id = strdup(cid)) == NULL ||
	    (ip->recipient = strdup(rcpt)) == NULL) {
		if (ip != NULL)
			free(ip->correlation_id);
		free(ip);
		free(key);
		return NULL;
	}
	ip->key = key;
	ip->klen = klen;
	snprintf(ip->message_id, sizeof(ip->message_id), "%s", mid);
	memcpy(ip->sha, sha, 32);
	ip->next = pp->idem[h];
	pp->idem[h] = ip;
	return ip;
}

/* session_idem_pending_remove - unlink and free ip */
void
session_idem_pending_remove(struct session_part *pp, struct session_idem_pending *ip)
{
	uint32_t h = fnv1a32(ip->key) % SESSION_IDEM_BUCKETS;

	for (struct session_idem_pending **pip = &pp->idem[h]; *pip; pip = &(*pip)->next) {
		if (*pip == ip) {
			*pip = ip->next;
			break;
		}
	}
	free(ip->key);
	free(ip->correlation_id);
	free(ip->recipient);
	free(ip);
}
