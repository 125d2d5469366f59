/*
 * session_nonce.c - the partition's set of request nonces seen within
 * NONCE_TTL_S, for the replay check.
 *
 * Durable form: DB "nonce" keyed "<seen_ms be64><sender>\0<nonce>" (empty
 * value), written in the same commit as the message that carried the nonce.
 * Keys grow with time, so inserts land on the last leaf pages and the sweep
 * deletes from the front: a message costs no random B-tree page of its own
 * (a DB keyed by nonce dirtied one random leaf per message, +1.2 page writes
 * per message measured).
 *
 * Lookups use this in-memory set instead: an open-addressing table of the
 * first 128 bits of SHA-256("<sender>\0<nonce>"), filled when the partition
 * opens (from DB nonce) and on every enqueue (before its commit, so requests
 * whose commit is pending count too), emptied by the sweep and by failed
 * commits. 16 bytes per slot, at most half full: ~1.5M nonces (2500 msg/s
 * for 600 s) take 48 MiB or less.
 *
 * Threads: every function here runs under the partition's mu.
 */
#include <stdlib.h>
#include <string.h>

#include "auth.h"
#include "session.h"

#define NONCE_EMPTY 0u
#define NONCE_TOMB  1u

/* session_nonce_hash - the set's entry for key ("<sender>\0<nonce>") */
int
session_nonce_hash(const unsigned char *key, size_t klen, struct session_nonce_ent *out)
{
	unsigned char sha[32];

	if (auth_sha256_raw(key, klen, sha) != CR_OK)
		return -1;
	out->a = session_be64_get(sha);
	out->b = session_be64_get(sha + 8);
	if (out->a <= NONCE_TOMB)	/* 0 and 1 mark empty and deleted slots */
		out->a += 2;
	return 0;
}

static size_t
slot_of(const struct session_nonce_set *ns, const struct session_nonce_ent *e)
{
	return (size_t)(e->b & (ns->cap - 1));
}

/* the slot holding e, or NULL */
static struct session_nonce_ent *
find(const struct session_nonce_set *ns, const struct session_nonce_ent *e)
{
	if (ns->cap == 0)
		return NULL;
	for (size_t i = slot_of(ns, e), n = 0; n < ns->cap; i = (i + 1) & (ns->cap - 1), n++) {
		struct session_nonce_ent *t = &ns->t[i];
		if (t->a == NONCE_EMPTY)
			return NULL;
		if (t->a == e->a && t->b == e->b)
			return t;
	}
	return NULL;
}

static void
put_raw(struct session_nonce_set *ns, const struct session_nonce_ent *e)
{
	size_t i = slot_of(ns, e);

	while (ns->t[i].a > NONCE_TOMB)
		i = (i + 1) & (ns->cap - 1);
	if (ns->t[i].a == NONCE_TOMB)
		ns->tomb--;
	ns->t[i] = *e;
	ns->used++;
}

/* rebuild at a capacity for at least want live entries, without tombstones */
static int
resize(struct session_nonce_set *ns, size_t want)
{
	struct session_nonce_set nn = {0};
	size_t cap = 1024;

	while (cap < want * 2)
		cap *= 2;
	if ((nn.t = calloc(cap, sizeof(*nn.t))) == NULL)
		return -1;
	nn.cap = cap;
	for (size_t i = 0; i < ns->cap; i++)
		if (ns->t[i].a > NONCE_TOMB)
			put_raw(&nn, &ns->t[i]);
	free(ns->t);
	*ns = nn;
	return 0;
}

/* session_nonce_has - 1 if e is in the set */
int
session_nonce_has(const struct session_nonce_set *ns, const struct session_nonce_ent *e)
{
	return find(ns, e) != NULL;
}

/* session_nonce_add - add e (no-op if present); -1 on ENOMEM */
int
session_nonce_add(struct session_nonce_set *ns, const struct session_nonce_ent *e)
{
	if (find(ns, e) != NULL)
		return 0;
	/* at most half full, counting tombstones (they lengthen probes) */
	if ((ns->used + ns->tomb + 1) * 2 > ns->cap &&
	    resize(ns, (ns->used + 1) * 2) != 0)
		return -1;
	put_raw(ns, e);
	return 0;
}

/* session_nonce_del - remove e if present */
void
session_nonce_del(struct session_nonce_set *ns, const struct session_nonce_ent *e)
{
	struct session_nonce_ent *t = find(ns, e);

	if (t == NULL)
		return;
	t->a = NONCE_TOMB;
	t->b = 0;
	ns->used--;
	ns->tomb++;
	/* shrink once mostly empty, so a past burst does not hold memory */
	if (ns->cap > 4096 && ns->used * 8 < ns->cap)
		(void)resize(ns, ns->used * 2);
}

/* session_nonce_free - empty the set and free its table */
void
session_nonce_free(struct session_nonce_set *ns)
{
	free(ns->t);
	memset(ns, 0, sizeof(*ns));
}
