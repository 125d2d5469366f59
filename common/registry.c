/*
 * registry.c - agents and trust pairs in the KV bucket clawrelay_agents,
 * and a cache in front of it (see registry.h). The cache is a small
 * open-addressed table under one mutex; a lookup that misses goes to KV
 * without holding the lock.
 */
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "log.h"
#include "breaker.h"
#include "metrics.h"
#include "registry.h"
#include "util.h"

/* reg_open - bind (or create) the bucket; the handle belongs to the bus */
enum cr_err
reg_open(struct bus *b, kvStore **kv)
{
	return bus_kv(b, REG_BUCKET, 1, 0, kv);
}

static int
agent_key(char *out, size_t sz, const char *id)
{
	char tok[400];
	if (kv_token(id, tok, sizeof(tok)) == 0)
		return -1;
	int n = snprintf(out, sz, "agent.%s", tok);
	return (n < 0 || (size_t)n >= sz) ? -1 : 0;
}

static int
trust_key(char *out, size_t sz, const char *from, const char *to)
{
	char a[400], b[400];
	if (kv_token(from, a, sizeof(a)) == 0 || kv_token(to, b, sizeof(b)) == 0)
		return -1;
	int n = snprintf(out, sz, "trust.%s.%s", a, b);
	return (n < 0 || (size_t)n >= sz) ? -1 : 0;
}

static enum cr_err
kv_put_msg(kvStore *kv, const char *key, const ProtobufCMessage *m)
{
	void *buf;
	size_t len;
	uint64_t rev;
	enum cr_err e = env_pack(m, &buf, &len);
	if (e != CR_OK)
		return e;
	natsStatus s = kvStore_Put(&rev, kv, key, buf, (int)len);
	free(buf);
	return bus_err(s);
}

static struct metric_slot m_lookup, m_lookup_fail;

static enum cr_err
kv_get_bytes(kvStore *kv, const char *key, kvEntry **ent)
{
	uint64_t t0 = now_us();
	natsStatus s = kvStore_Get(ent, kv, key);

	metric_observe_us(metric_histogram_at(&m_lookup, "clawrelay_registry_lookup_seconds", NULL,
	    "registry (KV) reads, found or not", NULL, 0), now_us() - t0);
	if (s == NATS_NOT_FOUND)
		return CR_ERR_NOT_FOUND;
	if (s != NATS_OK) {
		metric_add(metric_counter_at(&m_lookup_fail, "clawrelay_registry_lookup_failures_total",
		    NULL, "registry (KV) reads that failed (unreachable, timeout)"), 1);
		return bus_err(s) == CR_ERR_BUS ? CR_ERR_UNAVAILABLE : bus_err(s);
	}
	return CR_OK;
}

static void
agent_from_record(const AgentRecord *r, struct reg_agent *out)
{
	memset(out, 0, sizeof(*out));
	snprintf(out->id, sizeof(out->id), "%s", r->agent_id);
	if (r->public_key.len == 32)
		memcpy(out->pubkey, r->public_key.data, 32);
	snprintf(out->webhook_url, sizeof(out->webhook_url), "%s", r->webhook_url ? r->webhook_url : "");
	out->created_at_ms = r->created_at_ms;
}

/* reg_agent_put - store an agent record */
enum cr_err
reg_agent_put(kvStore *kv, const struct reg_agent *a)
{
	char key[512];
	AgentRecord r = CLAWRELAY__V1__AGENT_RECORD__INIT;
	if (strcmp(a->id, ENV_SYSTEM_SENDER) == 0)	/* reserved for the relay */
		return CR_ERR_INVALID;
	if (agent_key(key, sizeof(key), a->id) < 0)
		return CR_ERR_INVALID;
	r.schema_version = ENV_SCHEMA;
	r.agent_id = (char *)(uintptr_t)a->id;
	r.public_key.data = (uint8_t *)(uintptr_t)a->pubkey;
	r.public_key.len = 32;
	r.webhook_url = (char *)(uintptr_t)a->webhook_url;
	r.created_at_ms = a->created_at_ms ? a->created_at_ms : now_ms();
	return kv_put_msg(kv, key, &r.base);
}

/* reg_agent_get - CR_ERR_NOT_FOUND if unknown */
enum cr_err
reg_agent_get(kvStore *kv, const char *id, struct reg_agent *out)
{
	char key[512];
	kvEntry *ent = NULL;
	ProtobufCMessage *m = NULL;
	/* reserved: even a record stored before it was reserved is not served */
	if (strcmp(id, ENV_SYSTEM_SENDER) == 0)
		return CR_ERR_NOT_FOUND;
	if (agent_key(key, sizeof(key), id) < 0)
		return CR_ERR_INVALID;
	enum cr_err e = kv_get_bytes(kv, key, &ent);
	if (e != CR_OK)
		return e;
	e = env_unpack_msg(&clawrelay__v1__agent_record__descriptor, kvEntry_Value(ent),
	    (size_t)kvEntry_ValueLen(ent), &m);
	kvEntry_Destroy(ent);
	if (e != CR_OK)
		return e;
	agent_from_record((const AgentRecord *)m, out);
	protobuf_c_message_free_unpacked(m, NULL);
	return CR_OK;
}

/* reg_agent_del - remove an agent and nothing else */
enum cr_err
reg_agent_del(kvStore *kv, const char *id)
{
	char key[512];
	struct reg_agent a;
	if (agent_key(key, sizeof(key), id) < 0)
		return CR_ERR_INVALID;
	enum cr_err e = reg_agent_get(kv, id, &a);
	if (e != CR_OK)
		return e;
	return bus_err(kvStore_Delete(kv, key));
}

static enum cr_err
list_prefix(kvStore *kv, const char *prefix, void (*fn)(void *arg, const char *key, kvEntry *ent), void *arg)
{
	kvKeysList keys;
	natsStatus s = kvStore_Keys(&keys, kv, NULL);
	if (s == NATS_NOT_FOUND)
		return CR_OK;
	if (s != NATS_OK)
		return bus_err(s);
	for (int i = 0; i < keys.Count; i++) {
		kvEntry *ent = NULL;
		if (strncmp(keys.Keys[i], prefix, strlen(prefix)) != 0)
			continue;
		if (kvStore_Get(&ent, kv, keys.Keys[i]) == NATS_OK) {
			fn(arg, keys.Keys[i], ent);
			kvEntry_Destroy(ent);
		}
	}
	kvKeysList_Destroy(&keys);
	return CR_OK;
}

struct agent_list_ctx {
	void (*fn)(void *arg, const struct reg_agent *a);
	void *arg;
};

static void
agent_list_one(void *arg, const char *key, kvEntry *ent)
{
	struct agent_list_ctx *c = arg;
	ProtobufCMessage *m = NULL;
	struct reg_agent a;
	if (env_unpack_msg(&clawrelay__v1__agent_record__descriptor, kvEntry_Value(ent),
	    (size_t)kvEntry_ValueLen(ent), &m) != CR_OK)
		return;
	agent_from_record((const AgentRecord *)m, &a);
	protobuf_c_message_free_unpacked(m, NULL);
	c->fn(c->arg, &a);
}

/* reg_agent_list - calls fn for each agent */
enum cr_err
reg_agent_list(kvStore *kv, void (*fn)(void *arg, const struct reg_agent *a), void *arg)
{
	struct agent_list_ctx c = { fn, arg };
	return list_prefix(kv, "agent.", agent_list_one, &c);
}

/* reg_trust_put - from may send to `to` */
enum cr_err
reg_trust_put(kvStore *kv, const char *from, const char *to, const struct reg_trust *t)
{
	char key[1024];
	TrustRecord r = CLAWRELAY__V1__TRUST_RECORD__INIT;
	if (strcmp(from, ENV_SYSTEM_SENDER) == 0 || strcmp(to, ENV_SYSTEM_SENDER) == 0)
		return CR_ERR_INVALID;
	if (trust_key(key, sizeof(key), from, to) < 0)
		return CR_ERR_INVALID;
	r.schema_version = ENV_SCHEMA;
	r.from_agent = (char *)(uintptr_t)from;
	r.to_agent = (char *)(uintptr_t)to;
	r.created_at_ms = now_ms();
	if (t) {
		r.queue_max = t->queue_max;
		r.rate_per_min = t->rate_per_min;
		r.burst = t->burst;
	}
	return kv_put_msg(kv, key, &r.base);
}

/* reg_trust_get - CR_ERR_NOT_FOUND if the pair is not trusted */
enum cr_err
reg_trust_get(kvStore *kv, const char *from, const char *to, struct reg_trust *out)
{
	char key[1024];
	kvEntry *ent = NULL;
	ProtobufCMessage *m = NULL;
	if (trust_key(key, sizeof(key), from, to) < 0)
		return CR_ERR_INVALID;
	enum cr_err e = kv_get_bytes(kv, key, &ent);
	if (e != CR_OK)
		return e;
	e = env_unpack_msg(&clawrelay__v1__trust_record__descriptor, kvEntry_Value(ent),
	    (size_t)kvEntry_ValueLen(ent), &m);
	kvEntry_Destroy(ent);
	if (e != CR_OK)
		return e;
	const TrustRecord *r = (const TrustRecord *)m;
	if (out) {
		out->queue_max = r->queue_max;
		out->rate_per_min = r->rate_per_min;
		out->burst = r->burst;
	}
	protobuf_c_message_free_unpacked(m, NULL);
	return CR_OK;
}

/* reg_trust_del - remove a pair */
enum cr_err
reg_trust_del(kvStore *kv, const char *from, const char *to)
{
	char key[1024];
	if (trust_key(key, sizeof(key), from, to) < 0)
		return CR_ERR_INVALID;
	enum cr_err e = reg_trust_get(kv, from, to, NULL);
	if (e != CR_OK)
		return e;
	return bus_err(kvStore_Delete(kv, key));
}

struct trust_list_ctx {
	void (*fn)(void *arg, const char *from, const char *to, const struct reg_trust *t);
	void *arg;
};

static void
trust_list_one(void *arg, const char *key, kvEntry *ent)
{
	struct trust_list_ctx *c = arg;
	ProtobufCMessage *m = NULL;
	if (env_unpack_msg(&clawrelay__v1__trust_record__descriptor, kvEntry_Value(ent),
	    (size_t)kvEntry_ValueLen(ent), &m) != CR_OK)
		return;
	const TrustRecord *r = (const TrustRecord *)m;
	struct reg_trust t = { r->queue_max, r->rate_per_min, r->burst };
	c->fn(c->arg, r->from_agent, r->to_agent, &t);
	protobuf_c_message_free_unpacked(m, NULL);
}

/* reg_trust_list - calls fn(from, to, t) for each pair */
enum cr_err
reg_trust_list(kvStore *kv, void (*fn)(void *arg, const char *from, const char *to,
    const struct reg_trust *t), void *arg)
{
	struct trust_list_ctx c = { fn, arg };
	return list_prefix(kv, "trust.", trust_list_one, &c);
}

/* ---- cache ---- */

#define CACHE_SLOTS 4096
/* "unknown" answers are kept briefly, so an agent or pair just added with
 * the CLI is usable within a second while floods of lookups for unknown IDs
 * still do not reach the bucket one by one */
#define NEGATIVE_TTL_MS 1000

struct centry {
	char key[300];       /* "a\0id" style text key: "a:<id>" or "t:<from>\n<to>" */
	int used;
	int found;           /* 0: known absent */
	uint64_t fetched_ms; /* mono */
	struct reg_agent agent;
	struct reg_trust trust;
};

struct reg_cache {
	kvStore *kv;
	struct brk *brk;     /* the registry boundary's breaker, or NULL */
	uint64_t ttl_ms;
	pthread_mutex_t mu;
	struct centry *slots;
};

/* reg_cache_new - cache in front of kv (borrowed) */
struct reg_cache *
reg_cache_new(kvStore *kv, uint64_t ttl_ms)
{
	struct reg_cache *c = calloc(1, sizeof(*c));
	if (c == NULL)
		return NULL;
	c->slots = calloc(CACHE_SLOTS, sizeof(struct centry));
	if (c->slots == NULL) {
		free(c);
		return NULL;
	}
	c->kv = kv;
	c->ttl_ms = ttl_ms;
	pthread_mutex_init(&c->mu, NULL);
	return c;
}

/* reg_cache_set_breaker - guard the bucket's lookups with b (borrowed) */
void
reg_cache_set_breaker(struct reg_cache *c, struct brk *b)
{
	c->brk = b;
}

/* may a lookup go to the bucket? (the breaker lets it) */
static int
kv_may(struct reg_cache *c)
{
	return c->brk == NULL || brk_allow(c->brk, mono_ms()) != BRK_REFUSE;
}

/* the bucket's answer, for the breaker: found or not found is health */
static void
kv_report(struct reg_cache *c, enum cr_err err)
{
	if (c->brk == NULL)
		return;
	if (err == CR_OK || err == CR_ERR_NOT_FOUND)
		brk_success(c->brk, mono_ms());
	else
		brk_failure(c->brk, mono_ms());
}

/* reg_cache_free - NULL ok */
void
reg_cache_free(struct reg_cache *c)
{
	if (c == NULL)
		return;
	pthread_mutex_destroy(&c->mu);
	free(c->slots);
	free(c);
}

static uint64_t
min_u64(uint64_t a, uint64_t b)
{
	return a < b ? a : b;
}

/* Look up key; returns 1 and copies the entry if present (fresh or not). */
static int
cache_get(struct reg_cache *c, const char *key, struct centry *out)
{
	uint32_t h = fnv1a32(key) % CACHE_SLOTS;
	int hit = 0;
	pthread_mutex_lock(&c->mu);
	if (c->slots[h].used && strcmp(c->slots[h].key, key) == 0) {
		*out = c->slots[h];
		hit = 1;
	}
	pthread_mutex_unlock(&c->mu);
	return hit;
}

static void
cache_put(struct reg_cache *c, const struct centry *e)
{
	uint32_t h = fnv1a32(e->key) % CACHE_SLOTS;
	pthread_mutex_lock(&c->mu);
	c->slots[h] = *e;
	pthread_mutex_unlock(&c->mu);
}

/* reg_cache_agent - reg_agent_get through the cache (stale on outage) */
enum cr_err
reg_cache_agent(struct reg_cache *c, const char *id, struct reg_agent *out)
{
	struct centry e;
	int have;
	uint64_t now = mono_ms();
	char key[300];

	if (strlen(id) > 128)
		return CR_ERR_INVALID;
	snprintf(key, sizeof(key), "a:%s", id);
	have = cache_get(c, key, &e);
	if (have && now - e.fetched_ms < (e.found ? c->ttl_ms : min_u64(c->ttl_ms, NEGATIVE_TTL_MS)))
		goto hit;
	memset(&e, 0, sizeof(e));
	enum cr_err err = CR_ERR_UNAVAILABLE;
	int went = kv_may(c);
	if (went) {
		err = reg_agent_get(c->kv, id, &e.agent);
		kv_report(c, err);
	}
	if (err == CR_OK || err == CR_ERR_NOT_FOUND) {
		snprintf(e.key, sizeof(e.key), "%s", key);
		e.used = 1;
		e.found = err == CR_OK;
		e.fetched_ms = now;
		cache_put(c, &e);
		goto hit;
	}
	if (have && cache_get(c, key, &e)) {
		if (went)
			log_warn(NULL, "registry unreachable (%s): serving cached entry for %s",
			    cr_strerror(err), id);
		goto hit;
	}
	return CR_ERR_UNAVAILABLE;
hit:
	if (!e.found)
		return CR_ERR_NOT_FOUND;
	*out = e.agent;
	return CR_OK;
}

/* reg_cache_trust - reg_trust_get through the cache */
enum cr_err
reg_cache_trust(struct reg_cache *c, const char *from, const char *to, struct reg_trust *out)
{
	struct centry e;
	int have;
	uint64_t now = mono_ms();
	char key[300];

	if (strlen(from) > 128 || strlen(to) > 128)
		return CR_ERR_INVALID;
	snprintf(key, sizeof(key), "t:%s\n%s", from, to);
	have = cache_get(c, key, &e);
	if (have && now - e.fetched_ms < (e.found ? c->ttl_ms : min_u64(c->ttl_ms, NEGATIVE_TTL_MS)))
		goto hit;
	memset(&e, 0, sizeof(e));
	enum cr_err err = CR_ERR_UNAVAILABLE;
	if (kv_may(c)) {
		err = reg_trust_get(c->kv, from, to, &e.trust);
		kv_report(c, err);
	}
	if (err == CR_OK || err == CR_ERR_NOT_FOUND) {
		snprintf(e.key, sizeof(e.key), "%s", key);
		e.used = 1;
		e.found = err == CR_OK;
		e.fetched_ms = now;
		cache_put(c, &e);
		goto hit;
	}
	if (have && cache_get(c, key, &e))
		goto hit;
	return CR_ERR_UNAVAILABLE;
hit:
	if (!e.found)
		return CR_ERR_NOT_FOUND;
	if (out)
		*out = e.trust;
	return CR_OK;
}
