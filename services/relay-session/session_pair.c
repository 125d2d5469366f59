/*
 * session_pair.c - per (sender, recipient) state of a partition: how much
 * the pair has queued (count and bytes, for the pair caps) and its token
 * bucket (the pair's rate limit). Enforced here, by the recipient's
 * relay-session, so the limits hold however many gateways there are.
 *
 * Counts follow the queue: +1 at enqueue, -1 when a message leaves it
 * (delivered, failed, a refused commit), rebuilt from LMDB when the
 * partition opens. Token buckets live in memory only: a restart or a
 * takeover starts the pair with a full bucket.
 *
 * All under the partition's mu.
 */
#include <stdlib.h>
#include <string.h>

#include "session.h"
#include "util.h"

static uint32_t
pair_hash(const struct session_agent *a, const char *sender)
{
	uint32_t h = fnv1a32(sender);
	uintptr_t p = (uintptr_t)a;

	h ^= (uint32_t)(p >> 4) * 2654435761u;
	return h % SESSION_PAIR_BUCKETS;
}

struct session_pair *
session_pair_get(struct session_part *pp, struct session_agent *a, const char *sender, int create)
{
	uint32_t h;
	struct session_pair *pr;

	if (a == NULL || sender == NULL)
		return NULL;
	h = pair_hash(a, sender);
	for (pr = pp->pairs[h]; pr != NULL; pr = pr->next)
		if (pr->a == a && strcmp(pr->sender, sender) == 0)
			return pr;
	if (!create)
		return NULL;
	if ((pr = calloc(1, sizeof(*pr))) == NULL)
		return NULL;
	if ((pr->sender = strdup(sender)) == NULL) {
		free(pr);
		return NULL;
	}
	pr->a = a;
	pr->tokens = -1;	/* full at the first take */
	pr->next = pp->pairs[h];
	pp->pairs[h] = pr;
	return pr;
}

void
session_pair_sub(struct session_part *pp, struct session_agent *a, const char *sender,
    uint64_t vlen)
{
	struct session_pair *pr = session_pair_get(pp, a, sender, 0);

	if (pr == NULL)
		return;
	if (pr->n > 0)
		pr->n--;
	pr->bytes = pr->bytes > vlen ? pr->bytes - vlen : 0;
}

int
session_pair_take(struct session_pair *pr, uint64_t rate_per_min, uint64_t burst,
    uint64_t now, uint32_t *retry_s)
{
	double per_ms = (double)rate_per_min / 60000.0;

	if (rate_per_min == 0)
		return 1;	/* no limit */
	if (burst == 0)
		burst = 1;
	if (pr->tokens < 0) {
		pr->tokens = (double)burst;
	} else if (now > pr->refill_ms) {
		pr->tokens += (double)(now - pr->refill_ms) * per_ms;
		if (pr->tokens > (double)burst)
			pr->tokens = (double)burst;
	}
	pr->refill_ms = now;
	if (pr->tokens >= 1.0) {
		pr->tokens -= 1.0;
		return 1;
	}
	/* seconds until the bucket holds one token, rounded up */
	*retry_s = (uint32_t)((1.0 - pr->tokens) / per_ms / 1000.0) + 1;
	return 0;
}

void
session_pairs_free(struct session_part *pp)
{
	for (int i = 0; i < SESSION_PAIR_BUCKETS; i++) {
		while (pp->pairs[i] != NULL) {
			struct session_pair *pr = pp->pairs[i];
			pp->pairs[i] = pr->next;
			free(pr->sender);
			free(pr);
		}
	}
}
