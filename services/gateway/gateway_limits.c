/*
 * gateway_limits.c - what the gateway refuses quickly instead of waiting:
 *   - the per-sender rate limit (a token bucket per sender across all its
 *     recipients, per gateway replica): 429 + Retry-After;
 *   - the gateway -> relay-session breakers, one per partition: while one
 *     is open, enqueues for that partition are answered 503 + Retry-After
 *     at once instead of each waiting for a timeout;
 *   - the gateway -> registry breaker, handed to the registry cache (cached
 *     entries are served while it is open; an unknown agent is a 503).
 * The per-pair limits live in relay-session (they must hold across
 * gateways); the trust pair's overrides travel to it in the envelope.
 *
 * Threads: any (civetweb workers, the request pool's inbox thread). The
 * sender buckets are sharded by sender, one short mutex per shard.
 */
#include <stdlib.h>
#include <string.h>

#include "gateway.h"
#include "log.h"

#define GW_RATE_SHARDS 64
#define GW_RATE_BUCKETS 256

struct gw_rate {
	struct gw_rate *next;
	double tokens;
	uint64_t refill_ms;
	char id[];
};

struct gw_rate_shard {
	pthread_mutex_t mu;
	struct gw_rate *t[GW_RATE_BUCKETS];
};

static struct gw_rate_shard shards[GW_RATE_SHARDS];

/* gw_limits_init - breakers and buckets; 0 or -1 */
int
gw_limits_init(struct gw *g)
{
	for (int i = 0; i < GW_RATE_SHARDS; i++)
		pthread_mutex_init(&shards[i].mu, NULL);
	g->brk = brkset_new(g->bus, "gateway", svc_instance(g->svc), &g->cfg.brk);
	if (g->brk == NULL)
		return -1;
	if ((g->part_brk = calloc(g->partitions, sizeof(*g->part_brk))) == NULL)
		return -1;
	/* a partition moving between relay-session replicas is a short, normal
	 * outage: its breaker probes again within PARTITION_BREAKER_OPEN_MAX_MS
	 * instead of doubling its open time up to a minute */
	brkset_cap_open(g->brk, "partition", (uint32_t)g->cfg.part_open_max_ms);
	for (uint32_t p = 0; p < g->partitions; p++) {
		char name[16];

		snprintf(name, sizeof(name), "%u", p);
		if ((g->part_brk[p] = brkset_get(g->brk, "partition", name)) == NULL)
			return -1;
	}
	if ((g->reg_brk = brkset_get(g->brk, "registry", "")) == NULL)
		return -1;
	reg_cache_set_breaker(g->reg, g->reg_brk);
	return 0;
}

/* gw_limits_fini - free what init made (nothing runs any more) */
void
gw_limits_fini(struct gw *g)
{
	for (int i = 0; i < GW_RATE_SHARDS; i++) {
		for (int b = 0; b < GW_RATE_BUCKETS; b++) {
			while (shards[i].t[b] != NULL) {
				struct gw_rate *r = shards[i].t[b];
				shards[i].t[b] = r->next;
				free(r);
			}
		}
		pthread_mutex_destroy(&shards[i].mu);
	}
	free(g->part_brk);
	g->part_brk = NULL;
	brkset_free(g->brk);
	g->brk = NULL;
}

/* gw_sender_allow - take a token of sender's bucket: 0, or -1 with rf (429) */
int
gw_sender_allow(struct gw *g, const char *sender, struct gw_refusal *rf)
{
	uint64_t rate = (uint64_t)g->cfg.sender_rate_per_min;
	uint64_t burst = g->cfg.sender_burst > 0 ? (uint64_t)g->cfg.sender_burst : rate;
	double per_ms = (double)rate / 60000.0;
	uint32_t h = fnv1a32(sender);
	struct gw_rate_shard *sh = &shards[h % GW_RATE_SHARDS];
	struct gw_rate *r;
	uint64_t now = mono_ms();
	unsigned retry = 0;
	size_t len;

	if (rate == 0)
		return 0;
	pthread_mutex_lock(&sh->mu);
	for (r = sh->t[(h / GW_RATE_SHARDS) % GW_RATE_BUCKETS]; r != NULL; r = r->next)
		if (strcmp(r->id, sender) == 0)
			break;
	if (r == NULL && (len = strlen(sender)) <= 128 &&
	    (r = calloc(1, sizeof(*r) + len + 1)) != NULL) {
		memcpy(r->id, sender, len + 1);
		r->tokens = (double)burst;
		r->refill_ms = now;
		r->next = sh->t[(h / GW_RATE_SHARDS) % GW_RATE_BUCKETS];
		sh->t[(h / GW_RATE_SHARDS) % GW_RATE_BUCKETS] = r;
	}
	if (r != NULL) {
		if (now > r->refill_ms) {
			r->tokens += (double)(now - r->refill_ms) * per_ms;
			if (r->tokens > (double)burst)
				r->tokens = (double)burst;
		}
		r->refill_ms = now;
		if (r->tokens >= 1.0)
			r->tokens -= 1.0;
		else
			retry = (unsigned)((1.0 - r->tokens) / per_ms / 1000.0) + 1;
	}
	pthread_mutex_unlock(&sh->mu);
	if (retry == 0)
		return 0;
	gw_refuse(rf, 429, "rate_limited", "this sender may send %llu messages a minute "
	    "through this gateway", (unsigned long long)rate);
	rf->retry_after_s = retry;
	return -1;
}

/* gw_part_allow - may an enqueue go to partition part? 0, or -1 with rf (503) */
int
gw_part_allow(struct gw *g, uint32_t part, struct gw_refusal *rf)
{
	struct brk *b = g->part_brk[part];
	uint64_t retry;

	if (brk_allow(b, mono_ms()) != BRK_REFUSE)
		return 0;
	retry = brkset_retry_in(b);
	gw_refuse(rf, 503, "session_unavailable", "relay-session for this recipient is failing; "
	    "try again later");
	rf->retry_after_s = (unsigned)((retry + 999) / 1000);
	if (rf->retry_after_s == 0)
		rf->retry_after_s = 1;
	return -1;
}

/* gw_part_report - the outcome of one enqueue request to partition part:
 * any answer is health, a timeout or no responders is not */
void
gw_part_report(struct gw *g, uint32_t part, enum cr_err err, const natsMsg *reply)
{
	if (part >= g->partitions || g->part_brk == NULL)
		return;
	if (err == CR_OK && reply != NULL)
		brk_success(g->part_brk[part], mono_ms());
	else
		brk_failure(g->part_brk[part], mono_ms());
}
