/*
 * registry.h - agents and trust pairs in the KV bucket clawrelay_agents.
 *
 * Keys: "agent.<token>" -> AgentRecord, "trust.<from-token>.<to-token>" ->
 * TrustRecord (from may send to `to`). Tokens are kv_token() of the IDs
 * (=XX escapes), so no ID can reach another's key. A reg_cache (gateway, delivery) keeps
 * entries for cache_ms and serves stale entries while the bucket cannot be
 * reached. Thread-safe: one mutex guards the cache.
 */
#ifndef CR_REGISTRY_H
#define CR_REGISTRY_H

#include <stdint.h>

#include "bus.h"
#include "env.h"

#define REG_BUCKET "clawrelay_agents"

struct reg_agent {
	char id[129];
	unsigned char pubkey[32];
	char webhook_url[1024];
	uint64_t created_at_ms;
};

struct reg_trust {
	uint32_t queue_max, rate_per_min, burst;
};

/* reg_open - bind (or create) the bucket; the handle belongs to the bus */
enum cr_err reg_open(struct bus *b, kvStore **kv);
enum cr_err reg_agent_put(kvStore *kv, const struct reg_agent *a);
/* reg_agent_get - CR_ERR_NOT_FOUND if unknown */
enum cr_err reg_agent_get(kvStore *kv, const char *id, struct reg_agent *out);
enum cr_err reg_agent_del(kvStore *kv, const char *id);
/* reg_agent_list - calls fn for each agent */
enum cr_err reg_agent_list(kvStore *kv, void (*fn)(void *arg, const struct reg_agent *a), void *arg);
enum cr_err reg_trust_put(kvStore *kv, const char *from, const char *to, const struct reg_trust *t);
/* reg_trust_get - CR_ERR_NOT_FOUND if the pair is not trusted */
enum cr_err reg_trust_get(kvStore *kv, const char *from, const char *to, struct reg_trust *out);
enum cr_err reg_trust_del(kvStore *kv, const char *from, const char *to);
/* reg_trust_list - calls fn(from, to, t) for each pair */
enum cr_err reg_trust_list(kvStore *kv, void (*fn)(void *arg, const char *from, const char *to,
    const struct reg_trust *t), void *arg);

struct reg_cache;
/* reg_cache_new - cache in front of kv (borrowed); caller frees with reg_cache_free */
struct reg_cache *reg_cache_new(kvStore *kv, uint64_t ttl_ms);
void reg_cache_free(struct reg_cache *c);
struct brk;
/* reg_cache_set_breaker - guard the bucket's lookups with breaker b
 * (borrowed): while it is open, cached entries are served (even stale) and
 * an unknown entry is CR_ERR_UNAVAILABLE without asking the bucket */
void reg_cache_set_breaker(struct reg_cache *c, struct brk *b);
/* reg_cache_agent - like reg_agent_get through the cache; a stale entry is
 * served when the bucket does not answer; CR_ERR_UNAVAILABLE if unknown and
 * the bucket does not answer */
enum cr_err reg_cache_agent(struct reg_cache *c, const char *id, struct reg_agent *out);
/* reg_cache_trust - like reg_trust_get through the cache */
enum cr_err reg_cache_trust(struct reg_cache *c, const char *from, const char *to, struct reg_trust *out);

#endif
