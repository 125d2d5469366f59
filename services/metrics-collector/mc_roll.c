/*
 * mc_roll.c - the rollups: what no single service knows, per minute, kept
 * in LMDB for ROLLUP_RETENTION_H and in memory as a ring of minutes.
 *
 *   per minute (struct mc_min, by the time the thing happened, so a
 *   collector catching up files history where it belongs): messages in /
 *   out / failed by reason, the end-to-end latency histogram, connectors
 *   connected and reconnects, auth failures by code, registry lookups
 *   (latency histogram, failures), NATS request latency, LMDB commit
 *   latency and ops, queue depth per partition and lane (relay-session's
 *   gauges, summed over its instances that spoke in the last 10 s);
 *   per peer pair per hour: delivered and failed (mc_pairs, the last
 *   MC_PAIR_HOURS in memory, older ones read back on demand);
 *   connectors (from the gateways' stats: who is connected since when),
 *   the latest failures, and breakers (<P>.breaker.> and stats "x.breakers").
 *
 * Everything here runs with mc->mu held (the JSON answers take it
 * themselves). Dirty records are written by mc_roll_write into the batch
 * that mc_flush commits with the stream positions.
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cJSON.h>

#include "log.h"
#include "mc.h"
#include "util.h"

#define MC_PAIR_BUCKETS0 4096       /* the pair table's first size; it doubles as it fills */
#define MC_PAIR_HOURS 48            /* hours of pairs kept in memory */
#define MC_GAUGE_FRESH_MS 10000     /* an instance's gauges count this long */

/* One pair-hour. 1,000 agents make thousands of pairs an hour and the
 * table holds MC_PAIR_HOURS of them, so a record is small: the names sit
 * after it ("sender\0recipient\0"), the hash is kept for the chain walk,
 * and the table's size follows its count (a chain stays about one long). */
struct mc_pair {
	uint64_t hour, hash;
	uint32_t ok, failed;
	struct mc_pair *next;           /* hash chain */
	struct mc_phour *ph;            /* its hour */
	uint8_t slen, rlen, dirty;
	char names[];
};

/* One hour's pairs and their sums: the dashboard's question (the newest
 * hour's worst pairs, how many in all) reads a few of these, not every pair
 * of the day, and the sweep drops an hour at a time. */
struct mc_phour {
	uint64_t hour;
	uint64_t ok, failed;
	struct mc_pair **v;
	size_t n, cap;
};

struct mc_pairs {
	struct mc_pair **b;
	size_t nb, n;
	struct mc_pair **dirty;         /* the pairs mc_roll_write has to write */
	size_t ndirty, cap;
	struct mc_phour **hours;        /* newest first */
	size_t nhours, hcap;
};

#define PAIR_SENDER(p) ((p)->names)
#define PAIR_RECIPIENT(p) ((p)->names + (p)->slen + 1)

static const char *const reason_names[MC_NREASONS] = { "expired", "shed", "rejected",
	"dead_lettered", "attempts_exhausted", "other" };
static const char *const lane_names[MC_LANES] = { "critical", "normal", "low" };

static uint64_t
fnv(const void *p, size_t n, uint64_t h)
{
	for (size_t i = 0; i < n; i++)
		h = (h ^ ((const unsigned char *)p)[i]) * 1099511628211ull;
	return h;
}

static void
put64(unsigned char *p, uint64_t v)
{
	for (int i = 7; i >= 0; i--, v >>= 8)
		p[i] = (unsigned char)v;
}

static uint64_t
get64(const unsigned char *p)
{
	uint64_t v = 0;
	for (int i = 0; i < 8; i++)
		v = v << 8 | p[i];
	return v;
}

/* --- minutes --- */

/* mc_min_at - the minute record holding t_ms; NULL outside the window */
struct mc_min *
mc_min_at(struct mc *m, uint64_t t_ms)
{
	uint64_t t = t_ms - t_ms % 60000, now = now_ms();
	struct mc_min *mn;

	if (t_ms == 0 || t_ms > now + 300000 || t + (uint64_t)m->nmin * 60000 <= now)
		return NULL;
	mn = &m->mins[(t / 60000) % m->nmin];
	if (mn->t == t)
		return mn;
	if (mn->t > t)
		return NULL;	/* the slot holds a newer minute: t is too old */
	memset(mn, 0, sizeof(*mn));
	mn->t = t;
	return mn;
}

static int
code_index(struct mc *m, const char *code)
{
	for (int i = 0; i < m->ncodes; i++)
		if (strcmp(m->codes[i], code) == 0)
			return i;
	if (m->ncodes < MC_NCODES - 1) {
		snprintf(m->codes[m->ncodes], sizeof(m->codes[0]), "%s", code);
		return m->ncodes++;
	}
	if (m->ncodes == MC_NCODES - 1)
		snprintf(m->codes[m->ncodes++], sizeof(m->codes[0]), "other");
	return MC_NCODES - 1;
}

static cJSON *
u32_array(const uint32_t *v, int n)
{
	cJSON *a = cJSON_CreateArray();
	while (n > 0 && v[n - 1] == 0)
		n--;	/* trailing zeros are implied */
	for (int i = 0; i < n; i++)
		cJSON_AddItemToArray(a, cJSON_CreateNumber(v[i]));
	return a;
}

static void
u32_read(const cJSON *a, uint32_t *v, int n)
{
	int i = 0;
	const cJSON *e;
	cJSON_ArrayForEach(e, a) {
		if (i >= n)
			break;
		v[i++] = (uint32_t)e->valuedouble;
	}
}

static cJSON *
min_json(struct mc *m, const struct mc_min *mn)
{
	cJSON *o = cJSON_CreateObject(), *f, *a;

	cJSON_AddNumberToObject(o, "t", (double)mn->t);
	cJSON_AddNumberToObject(o, "in", mn->in);
	cJSON_AddNumberToObject(o, "out", mn->out);
	cJSON_AddNumberToObject(o, "failed", mn->failed);
	f = cJSON_AddObjectToObject(o, "fail");
	for (int i = 0; i < MC_NREASONS; i++)
		if (mn->fail[i])
			cJSON_AddNumberToObject(f, reason_names[i], mn->fail[i]);
	cJSON_AddItemToObject(o, "lat", u32_array(mn->lat, MC_LATB));
	cJSON_AddNumberToObject(o, "ls", mn->lat_sum);
	cJSON_AddNumberToObject(o, "rc", mn->reconnects);
	cJSON_AddNumberToObject(o, "cc", mn->connected);
	a = cJSON_AddObjectToObject(o, "auth");
	for (int i = 0; i < m->ncodes; i++)
		if (mn->auth[i])
			cJSON_AddNumberToObject(a, m->codes[i], mn->auth[i]);
	cJSON_AddNumberToObject(o, "rn", mn->reg_n);
	cJSON_AddNumberToObject(o, "rf", mn->reg_fail);
	cJSON_AddItemToObject(o, "rl", u32_array(mn->reg_lat, MC_LATB));
	cJSON_AddNumberToObject(o, "nn", mn->nats_n);
	cJSON_AddItemToObject(o, "nl", u32_array(mn->nats_lat, MC_LATB));
	cJSON_AddNumberToObject(o, "cn", mn->commit_n);
	cJSON_AddItemToObject(o, "cl", u32_array(mn->commit_lat, MC_LATB));
	cJSON_AddNumberToObject(o, "co", mn->commit_ops);
	if (mn->qset) {
		cJSON_AddItemToObject(o, "ql", u32_array(mn->qlane, MC_LANES));
		cJSON_AddItemToObject(o, "q", u32_array(mn->q, MC_QPARTS * MC_LANES));
		cJSON_AddNumberToObject(o, "qb", (double)mn->qbytes);
	}
	return o;
}

static double
num(const cJSON *o, const char *k)
{
	const cJSON *v = cJSON_GetObjectItemCaseSensitive(o, k);
	return cJSON_IsNumber(v) ? v->valuedouble : 0;
}

static void
min_read(struct mc *m, const cJSON *o)
{
	struct mc_min *mn;
	const cJSON *e;
	uint64_t t = (uint64_t)num(o, "t");

	if (t == 0 || (mn = mc_min_at(m, t)) == NULL)
		return;
	mn->in = (uint32_t)num(o, "in");
	mn->out = (uint32_t)num(o, "out");
	mn->failed = (uint32_t)num(o, "failed");
	for (int i = 0; i < MC_NREASONS; i++)
		mn->fail[i] = (uint32_t)num(cJSON_GetObjectItem(o, "fail"), reason_names[i]);
	u32_read(cJSON_GetObjectItem(o, "lat"), mn->lat, MC_LATB);
	mn->lat_sum = num(o, "ls");
	mn->reconnects = (uint32_t)num(o, "rc");
	mn->connected = (uint32_t)num(o, "cc");
	cJSON_ArrayForEach(e, cJSON_GetObjectItem(o, "auth"))
		if (cJSON_IsNumber(e) && e->string != NULL)
			mn->auth[code_index(m, e->string)] += (uint32_t)e->valuedouble;
	mn->reg_n = (uint32_t)num(o, "rn");
	mn->reg_fail = (uint32_t)num(o, "rf");
	u32_read(cJSON_GetObjectItem(o, "rl"), mn->reg_lat, MC_LATB);
	mn->nats_n = (uint32_t)num(o, "nn");
	u32_read(cJSON_GetObjectItem(o, "nl"), mn->nats_lat, MC_LATB);
	mn->commit_n = (uint32_t)num(o, "cn");
	u32_read(cJSON_GetObjectItem(o, "cl"), mn->commit_lat, MC_LATB);
	mn->commit_ops = num(o, "co");
	if (cJSON_GetObjectItem(o, "ql") != NULL) {
		mn->qset = 1;
		u32_read(cJSON_GetObjectItem(o, "ql"), mn->qlane, MC_LANES);
		u32_read(cJSON_GetObjectItem(o, "q"), mn->q, MC_QPARTS * MC_LANES);
		mn->qbytes = (uint64_t)num(o, "qb");
	}
	mn->dirty = 0;
}

/* --- pairs --- */

static uint64_t
pair_hash(uint64_t hour, const char *s, size_t sl, const char *r, size_t rl)
{
	uint64_t h = fnv(&hour, sizeof(hour), 1469598103934665603ull);
	return fnv(r, rl, fnv(s, sl, h) * 31);
}

/* double the table when it holds twice as many pairs as chains */
static void
pairs_grow(struct mc_pairs *t)
{
	size_t nb = t->nb * 2;
	struct mc_pair **b = calloc(nb, sizeof(*b));

	if (b == NULL)
		return;	/* longer chains, still correct */
	for (size_t i = 0; i < t->nb; i++) {
		while (t->b[i] != NULL) {
			struct mc_pair *p = t->b[i];
			t->b[i] = p->next;
			p->next = b[p->hash % nb];
			b[p->hash % nb] = p;
		}
	}
	free(t->b);
	t->b = b;
	t->nb = nb;
}

/* remember that p has to be written (mu held) */
static void
pair_dirty(struct mc_pairs *t, struct mc_pair *p)
{
	if (p->dirty)
		return;
	if (t->ndirty == t->cap) {
		size_t cap = t->cap ? t->cap * 2 : 1024;
		struct mc_pair **d = realloc(t->dirty, cap * sizeof(*d));
		if (d == NULL)
			return;	/* ENOMEM: this change is written with the pair's next one */
		t->dirty = d;
		t->cap = cap;
	}
	t->dirty[t->ndirty++] = p;
	p->dirty = 1;
}

/* the record of an hour, made when missing (kept newest first); NULL on ENOMEM */
static struct mc_phour *
phour_get(struct mc_pairs *t, uint64_t hour)
{
	struct mc_phour *ph;
	size_t i;

	for (i = 0; i < t->nhours && t->hours[i]->hour >= hour; i++)
		if (t->hours[i]->hour == hour)
			return t->hours[i];
	if (t->nhours == t->hcap) {
		size_t cap = t->hcap ? t->hcap * 2 : 64;
		struct mc_phour **h = realloc(t->hours, cap * sizeof(*h));
		if (h == NULL)
			return NULL;
		t->hours = h;
		t->hcap = cap;
	}
	if ((ph = calloc(1, sizeof(*ph))) == NULL)
		return NULL;
	ph->hour = hour;
	memmove(t->hours + i + 1, t->hours + i, (t->nhours - i) * sizeof(*t->hours));
	t->hours[i] = ph;
	t->nhours++;
	return ph;
}

/* add p to its hour's list; -1 on ENOMEM */
static int
phour_add(struct mc_phour *ph, struct mc_pair *p)
{
	if (ph->n == ph->cap) {
		size_t cap = ph->cap ? ph->cap * 2 : 256;
		struct mc_pair **v = realloc(ph->v, cap * sizeof(*v));
		if (v == NULL)
			return -1;
		ph->v = v;
		ph->cap = cap;
	}
	ph->v[ph->n++] = p;
	p->ph = ph;
	return 0;
}

/* count ok and failed messages for p and its hour */
static void
pair_add(struct mc_pair *p, uint32_t ok, uint32_t failed)
{
	p->ok += ok;
	p->failed += failed;
	p->ph->ok += ok;
	p->ph->failed += failed;
}

static struct mc_pair *
pair_get(struct mc *m, uint64_t hour, const char *s, size_t sl, const char *r, size_t rl, int load)
{
	struct mc_phour *ph;
	struct mc_pairs *t = m->pairs;
	uint64_t h;
	struct mc_pair *p;
	size_t bi;

	if (sl == 0 || sl > 128 || rl == 0 || rl > 128)
		return NULL;
	h = pair_hash(hour, s, sl, r, rl);
	bi = h % t->nb;
	for (p = t->b[bi]; p != NULL; p = p->next)
		if (p->hash == h && p->hour == hour && p->slen == sl && p->rlen == rl &&
		    memcmp(PAIR_SENDER(p), s, sl) == 0 && memcmp(PAIR_RECIPIENT(p), r, rl) == 0)
			return p;
	if ((ph = phour_get(t, hour)) == NULL || (p = calloc(1, sizeof(*p) + sl + rl + 2)) == NULL)
		return NULL;
	if (phour_add(ph, p) != 0) {
		free(p);
		return NULL;
	}
	p->hour = hour;
	p->hash = h;
	p->slen = (uint8_t)sl;
	p->rlen = (uint8_t)rl;
	memcpy(PAIR_SENDER(p), s, sl);
	memcpy(PAIR_RECIPIENT(p), r, rl);
	if (load) {
		/* an hour no longer in memory (a collector catching up): its stored counts */
		unsigned char key[1 + 8 + 129 + 129];
		void *v = NULL;
		size_t vl = 0, kl = 0;
		key[kl++] = 'p';
		put64(key + kl, hour);
		kl += 8;
		memcpy(key + kl, s, sl);
		kl += sl;
		key[kl++] = '\0';
		memcpy(key + kl, r, rl);
		kl += rl;
		if (store_get(m->st, m->db_roll, key, kl, &v, &vl) == CR_OK && vl == 8)
			pair_add(p, (uint32_t)(get64(v) >> 32), (uint32_t)get64(v));
		free(v);
	}
	p->next = t->b[bi];
	t->b[bi] = p;
	if (++t->n > 2 * t->nb)
		pairs_grow(t);
	return p;
}

/* mc_roll_pair - count a message's outcome for its pair in the hour of t_ms */
void
mc_roll_pair(struct mc *m, const char *sender, size_t slen, const char *recipient, size_t rlen,
    uint64_t t_ms, int ok)
{
	struct mc_pair *p = pair_get(m, t_ms - t_ms % 3600000, sender, slen, recipient, rlen, 1);

	if (p == NULL)
		return;
	pair_add(p, ok != 0, ok == 0);
	pair_dirty(m->pairs, p);
}

/* --- failures, breakers --- */

/* mc_roll_failure - remember a failure for "latest failures" */
void
mc_roll_failure(struct mc *m, const struct mc_fail *f)
{
	m->fails[m->fail_pos] = *f;
	m->fail_pos = (m->fail_pos + 1) % MC_NFAIL;
	if (m->nfails < MC_NFAIL)
		m->nfails++;
	m->fails_dirty = 1;
}

static const char *
str(const cJSON *o, const char *k)
{
	const cJSON *v = cJSON_GetObjectItemCaseSensitive(o, k);
	return cJSON_IsString(v) ? v->valuestring : NULL;
}

/* mc_roll_breaker - one breaker's state: {"service","instance","boundary",
 * "name","state","failures","next_probe_ms"} (brkset.h); shown by the
 * name "<boundary> <name>" ("<boundary>" for a boundary's only breaker) */
void
mc_roll_breaker(struct mc *m, const cJSON *o)
{
	const char *svc = str(o, "service"), *inst = str(o, "instance"), *name = str(o, "name"),
	    *state = str(o, "state"), *bnd = str(o, "boundary");
	struct mc_brk *b = NULL;
	char full[sizeof(m->brks[0].name)];

	if (svc == NULL || name == NULL || state == NULL)
		return;
	if (bnd != NULL) {
		snprintf(full, sizeof(full), "%s%s%s", bnd, *name ? " " : "", name);
		name = full;
	}
	if (inst == NULL)
		inst = "";
	for (size_t i = 0; i < m->nbrks && b == NULL; i++)
		if (strcmp(m->brks[i].service, svc) == 0 && strcmp(m->brks[i].instance, inst) == 0 &&
		    strcmp(m->brks[i].name, name) == 0)
			b = &m->brks[i];
	if (b == NULL) {
		if (m->nbrks == MC_NBRK)
			return;
		b = &m->brks[m->nbrks++];
		snprintf(b->service, sizeof(b->service), "%s", svc);
		snprintf(b->instance, sizeof(b->instance), "%s", inst);
		snprintf(b->name, sizeof(b->name), "%s", name);
	}
	snprintf(b->state, sizeof(b->state), "%s", state);
	b->failures = num(o, "failures");
	b->next_probe_ms = (uint64_t)num(o, "next_probe_ms");
	b->updated_ms = num(o, "ts_ms") > 0 ? (uint64_t)num(o, "ts_ms") :
	    num(o, "ts") > 0 ? (uint64_t)num(o, "ts") : now_ms();
	m->brks_dirty = 1;
	mc_batch(m);
}

/* --- connectors --- */

static struct mc_conn *
conn_get(struct mc *m, const char *agent)
{
	size_t bi = fnv(agent, strlen(agent), 1469598103934665603ull) % MC_CONN_BUCKETS;
	struct mc_conn *c;

	for (c = m->conn_hash[bi]; c != NULL; c = c->hnext)
		if (strcmp(c->agent, agent) == 0)
			return c;
	if (strlen(agent) > 128 || (c = calloc(1, sizeof(*c))) == NULL)
		return NULL;
	snprintf(c->agent, sizeof(c->agent), "%s", agent);
	c->hnext = m->conn_hash[bi];
	m->conn_hash[bi] = c;
	c->next = m->conns;
	m->conns = c;
	m->nconns++;
	return c;
}

/* a gateway's socket list at ts: who connected, who went, who came back */
static void
roll_sockets(struct mc *m, const char *gw, uint64_t ts, const cJSON *socks, struct mc_min *mn)
{
	const cJSON *e;
	uint64_t gen = ++m->conn_gen;
	uint32_t reconnects = 0, connected = 0;

	cJSON_ArrayForEach(e, socks) {
		const char *agent = str(e, "agent");
		uint64_t since = (uint64_t)num(e, "since_ms");
		struct mc_conn *c;

		if (agent == NULL || (c = conn_get(m, agent)) == NULL)
			continue;
		if (c->first_ms == 0) {
			c->first_ms = since && since < ts ? since : ts;
			c->up_ms += ts - c->first_ms;
		} else if (c->connected && c->since_ms == since && ts > c->last_ms) {
			c->up_ms += ts - c->last_ms;
		} else if (ts > c->last_ms) {
			/* a new socket: it came back (or replaced the old one) */
			c->reconnects++;
			reconnects++;
			c->up_ms += since < ts && since > c->last_ms ? ts - since : 0;
		}
		c->connected = 1;
		c->since_ms = since;
		c->last_ms = ts > c->last_ms ? ts : c->last_ms;
		c->seen = gen;
		snprintf(c->gateway, sizeof(c->gateway), "%s", gw);
	}
	for (struct mc_conn *c = m->conns; c != NULL; c = c->next) {
		if (c->connected && c->seen != gen && strcmp(c->gateway, gw) == 0) {
			c->connected = 0;	/* the gateway no longer holds its socket */
			if (ts > c->last_ms)
				c->last_ms = ts;
		}
		connected += c->connected;
	}
	if (ts > m->conn_now)
		m->conn_now = ts;
	if (mn != NULL) {
		mn->reconnects += reconnects;
		mn->connected = connected;
		mn->dirty = 1;
	}
	m->conns_dirty = 1;
}

/* --- stats --- */

/* a histogram row of the stats ([name, labels, bounds, deltas, sum, count])
 * into lat (when its bounds are the default ones), n and sum */
static void
hist_add(const cJSON *row, uint32_t *lat, uint32_t *n, double *sum)
{
	const cJSON *bounds = cJSON_GetArrayItem(row, 2), *d = cJSON_GetArrayItem(row, 3), *e;
	int nb, i = 0;

	metric_latency_bounds(&nb);
	*n += (uint32_t)cJSON_GetArrayItem(row, 5)->valuedouble;
	if (sum != NULL)
		*sum += cJSON_GetArrayItem(row, 4)->valuedouble;
	if (lat == NULL || cJSON_GetArraySize(bounds) != nb || cJSON_GetArraySize(d) != nb + 1)
		return;
	cJSON_ArrayForEach(e, d)
		lat[i++] += (uint32_t)e->valuedouble;
}

/* the value of label k in "a=\"x\",k=\"y\"" into out */
static int
label(const char *labels, const char *k, char *out, size_t sz)
{
	char pat[48];
	const char *p, *e;

	snprintf(pat, sizeof(pat), "%s=\"", k);
	if ((p = strstr(labels, pat)) == NULL)
		return -1;
	p += strlen(pat);
	if ((e = strchr(p, '"')) == NULL || (size_t)(e - p) >= sz)
		return -1;
	memcpy(out, p, (size_t)(e - p));
	out[e - p] = '\0';
	return 0;
}

static int
valid_row(const cJSON *r, int n)
{
	return cJSON_IsArray(r) && cJSON_GetArraySize(r) >= n &&
	    cJSON_IsString(cJSON_GetArrayItem(r, 0)) && cJSON_IsString(cJSON_GetArrayItem(r, 1));
}

/* relay-session's queue gauges of one instance, then the sums */
static void
roll_queue(struct mc *m, const char *inst, uint64_t ts, const cJSON *gauges, struct mc_min *mn)
{
	struct mc_qinst *qi = NULL;
	const cJSON *r;
	char v[32];

	for (size_t i = 0; i < m->nqinst && qi == NULL; i++)
		if (strcmp(m->qinst[i].instance, inst) == 0)
			qi = &m->qinst[i];
	if (qi == NULL) {
		size_t oldest = 0;
		if (m->nqinst < MC_NINST) {
			qi = &m->qinst[m->nqinst++];
		} else {
			for (size_t i = 1; i < m->nqinst; i++)
				if (m->qinst[i].ts_ms < m->qinst[oldest].ts_ms)
					oldest = i;
			qi = &m->qinst[oldest];
		}
		memset(qi, 0, sizeof(*qi));
		snprintf(qi->instance, sizeof(qi->instance), "%s", inst);
	}
	if (ts < qi->ts_ms)
		return;
	memset(qi->q, 0, sizeof(qi->q));
	memset(qi->qlane, 0, sizeof(qi->qlane));
	qi->qbytes = 0;
	qi->ts_ms = ts;
	cJSON_ArrayForEach(r, gauges) {
		const char *name, *labels;
		double val;
		int part, lane = -1;

		if (!valid_row(r, 3))
			continue;
		name = cJSON_GetArrayItem(r, 0)->valuestring;
		labels = cJSON_GetArrayItem(r, 1)->valuestring;
		val = cJSON_GetArrayItem(r, 2)->valuedouble;
		if (val < 0 || label(labels, "partition", v, sizeof(v)) != 0)
			continue;
		part = atoi(v);
		if (strcmp(name, "clawrelay_queue_bytes") == 0) {
			qi->qbytes += (uint64_t)val;
			continue;
		}
		if (strcmp(name, "clawrelay_queue_messages") != 0 || label(labels, "lane", v, sizeof(v)) != 0)
			continue;
		for (int l = 0; l < MC_LANES; l++)
			if (strcmp(v, lane_names[l]) == 0)
				lane = l;
		if (lane < 0)
			continue;
		qi->qlane[lane] += (uint32_t)val;
		if (part >= 0 && part < MC_QPARTS)
			qi->q[part * MC_LANES + lane] += (uint32_t)val;
	}
	if (mn == NULL)
		return;
	memset(mn->q, 0, sizeof(mn->q));
	memset(mn->qlane, 0, sizeof(mn->qlane));
	mn->qbytes = 0;
	for (size_t i = 0; i < m->nqinst; i++) {
		struct mc_qinst *x = &m->qinst[i];
		if (x->ts_ms + MC_GAUGE_FRESH_MS < ts)
			continue;	/* gone: a replica that stopped speaking */
		for (int k = 0; k < MC_QPARTS * MC_LANES; k++)
			mn->q[k] += x->q[k];
		for (int l = 0; l < MC_LANES; l++)
			mn->qlane[l] += x->qlane[l];
		mn->qbytes += x->qbytes;
	}
	mn->qset = 1;
	mn->dirty = 1;
}

/* mc_roll_stats - one service's stats object (docs/PROTOCOL.md, "stats") */
void
mc_roll_stats(struct mc *m, const char *json, size_t len)
{
	cJSON *o = cJSON_ParseWithLength(json, len), *x;
	const char *svc, *inst;
	uint64_t ts;
	struct mc_min *mn;
	const cJSON *r;
	char code[32];

	if (o == NULL || (svc = str(o, "service")) == NULL || (inst = str(o, "instance")) == NULL ||
	    (ts = (uint64_t)num(o, "ts_ms")) == 0) {
		atomic_fetch_add(&m->bad, 1);
		cJSON_Delete(o);
		return;
	}
	mn = mc_min_at(m, ts);
	cJSON_ArrayForEach(r, cJSON_GetObjectItem(o, "c")) {
		const char *name;
		double d;

		if (!valid_row(r, 3) || mn == NULL)
			continue;
		name = cJSON_GetArrayItem(r, 0)->valuestring;
		d = cJSON_GetArrayItem(r, 2)->valuedouble;
		if (d <= 0)
			continue;
		if (strcmp(name, "clawrelay_gateway_auth_failures_total") == 0 &&
		    label(cJSON_GetArrayItem(r, 1)->valuestring, "code", code, sizeof(code)) == 0)
			mn->auth[code_index(m, code)] += (uint32_t)d;
		else if (strcmp(name, "clawrelay_registry_lookup_failures_total") == 0)
			mn->reg_fail += (uint32_t)d;
		else
			continue;
		mn->dirty = 1;
	}
	cJSON_ArrayForEach(r, cJSON_GetObjectItem(o, "h")) {
		const char *name;

		if (!valid_row(r, 6) || mn == NULL)
			continue;
		name = cJSON_GetArrayItem(r, 0)->valuestring;
		if (strcmp(name, "clawrelay_registry_lookup_seconds") == 0)
			hist_add(r, mn->reg_lat, &mn->reg_n, NULL);
		else if (strcmp(name, "clawrelay_nats_request_seconds") == 0)
			hist_add(r, mn->nats_lat, &mn->nats_n, NULL);
		else if (strcmp(name, "clawrelay_store_commit_seconds") == 0)
			hist_add(r, mn->commit_lat, &mn->commit_n, NULL);
		else if (strcmp(name, "clawrelay_store_commit_ops") == 0) {
			uint32_t dummy = 0;
			hist_add(r, NULL, &dummy, &mn->commit_ops);
		} else
			continue;
		mn->dirty = 1;
	}
	if (strcmp(svc, "relay-session") == 0)
		roll_queue(m, inst, ts, cJSON_GetObjectItem(o, "g"), mn);
	x = cJSON_GetObjectItem(o, "x");
	if (strcmp(svc, "gateway") == 0 && cJSON_IsArray(cJSON_GetObjectItem(x, "sockets")))
		roll_sockets(m, inst, ts, cJSON_GetObjectItem(x, "sockets"), mn);
	cJSON_ArrayForEach(r, cJSON_GetObjectItem(x, "breakers"))
		if (cJSON_IsObject(r))
			mc_roll_breaker(m, r);
	cJSON_Delete(o);
	mc_batch(m);
}

/* --- persistence --- */

/* a connector's uptime share (percent) of the time it was observed, as of now */
static double
conn_uptime_pct(const struct mc_conn *c, uint64_t now)
{
	uint64_t span = now > c->first_ms ? now - c->first_ms : 0;
	uint64_t up = c->up_ms + (c->connected && now > c->last_ms ? now - c->last_ms : 0);

	if (span == 0)
		return c->connected ? 100 : 0;
	return fmin(100.0, 100.0 * (double)up / (double)span);
}

/* one connector as the API shows it */
static cJSON *
conn_api_json(const struct mc_conn *c, uint64_t now)
{
	cJSON *o = cJSON_CreateObject();

	cJSON_AddStringToObject(o, "agent", c->agent);
	cJSON_AddStringToObject(o, "gateway", c->gateway);
	cJSON_AddBoolToObject(o, "connected", c->connected);
	cJSON_AddNumberToObject(o, "connectedSinceMs", (double)c->since_ms);
	cJSON_AddNumberToObject(o, "uptimeS", c->connected && now > c->since_ms ?
	    (double)(now - c->since_ms) / 1000.0 : 0);
	cJSON_AddNumberToObject(o, "uptimePct", conn_uptime_pct(c, now));
	cJSON_AddNumberToObject(o, "reconnects", c->reconnects);
	cJSON_AddNumberToObject(o, "firstSeenMs", (double)c->first_ms);
	cJSON_AddNumberToObject(o, "lastSeenMs", (double)c->last_ms);
	return o;
}

/* every connector, as stored */
static cJSON *
conns_json(struct mc *m)
{
	cJSON *a = cJSON_CreateArray();

	for (struct mc_conn *c = m->conns; c != NULL; c = c->next) {
		cJSON *o = cJSON_CreateObject();
		cJSON_AddStringToObject(o, "a", c->agent);
		cJSON_AddStringToObject(o, "g", c->gateway);
		cJSON_AddNumberToObject(o, "c", c->connected);
		cJSON_AddNumberToObject(o, "s", (double)c->since_ms);
		cJSON_AddNumberToObject(o, "f", (double)c->first_ms);
		cJSON_AddNumberToObject(o, "l", (double)c->last_ms);
		cJSON_AddNumberToObject(o, "u", (double)c->up_ms);
		cJSON_AddNumberToObject(o, "r", c->reconnects);
		cJSON_AddItemToArray(a, o);
	}
	return a;
}

static cJSON *
fails_json(struct mc *m, size_t limit)
{
	cJSON *a = cJSON_CreateArray();

	for (size_t i = 0; i < m->nfails && i < limit; i++) {
		const struct mc_fail *f = &m->fails[(m->fail_pos + MC_NFAIL - 1 - i) % MC_NFAIL];
		cJSON *o = cJSON_CreateObject();
		cJSON_AddNumberToObject(o, "tsMs", (double)f->ts_ms);
		cJSON_AddStringToObject(o, "correlationId", f->corr);
		cJSON_AddStringToObject(o, "messageId", f->mid);
		cJSON_AddStringToObject(o, "sender", f->sender);
		cJSON_AddStringToObject(o, "recipient", f->recipient);
		cJSON_AddStringToObject(o, "reason", f->reason);
		cJSON_AddStringToObject(o, "detail", f->detail);
		cJSON_AddStringToObject(o, "service", f->service);
		cJSON_AddItemToArray(a, o);
	}
	return a;
}

static cJSON *
brks_json(struct mc *m)
{
	cJSON *a = cJSON_CreateArray();
	uint64_t now = now_ms();

	for (size_t i = 0; i < m->nbrks; i++) {
		const struct mc_brk *b = &m->brks[i];
		cJSON *o = cJSON_CreateObject();
		cJSON_AddStringToObject(o, "service", b->service);
		cJSON_AddStringToObject(o, "instance", b->instance);
		cJSON_AddStringToObject(o, "name", b->name);
		cJSON_AddStringToObject(o, "state", b->state);
		cJSON_AddNumberToObject(o, "failures", b->failures);
		cJSON_AddNumberToObject(o, "next_probe_ms", (double)b->next_probe_ms);
		cJSON_AddNumberToObject(o, "ts_ms", (double)b->updated_ms);
		cJSON_AddBoolToObject(o, "stale", b->updated_ms + 300000 < now &&
		    strcmp(b->state, "closed") != 0);
		cJSON_AddItemToArray(a, o);
	}
	return a;
}

static void
put_json(struct mc *m, struct store_batch *b, const char *key, size_t klen, cJSON *j)
{
	char *txt = cJSON_PrintUnformatted(j);

	if (txt != NULL)
		store_batch_put(b, m->db_roll, key, klen, txt, strlen(txt));
	cJSON_free(txt);
	cJSON_Delete(j);
}

/* mc_roll_write - every dirty record into b (mu held) */
void
mc_roll_write(struct mc *m, struct store_batch *b)
{
	unsigned char key[1 + 8 + 129 + 129];

	for (size_t i = 0; i < m->nmin; i++) {
		struct mc_min *mn = &m->mins[i];
		if (!mn->dirty || mn->t == 0)
			continue;
		key[0] = 'm';
		put64(key + 1, mn->t);
		put_json(m, b, (const char *)key, 9, min_json(m, mn));
		mn->dirty = 0;
	}
	for (size_t i = 0; i < m->pairs->ndirty; i++) {
		struct mc_pair *p = m->pairs->dirty[i];
		unsigned char v[8];
		size_t kl = 0;

		key[kl++] = 'p';
		put64(key + kl, p->hour);
		kl += 8;
		memcpy(key + kl, PAIR_SENDER(p), p->slen);
		kl += p->slen;
		key[kl++] = '\0';
		memcpy(key + kl, PAIR_RECIPIENT(p), p->rlen);
		kl += p->rlen;
		put64(v, (uint64_t)p->ok << 32 | p->failed);
		store_batch_put(b, m->db_roll, key, kl, v, sizeof(v));
		p->dirty = 0;
	}
	m->pairs->ndirty = 0;
	if (m->conns_dirty)
		put_json(m, b, "s.conn", 6, conns_json(m));
	if (m->fails_dirty) {
		cJSON *a = fails_json(m, MC_NFAIL);
		put_json(m, b, "s.fail", 6, a);
	}
	if (m->brks_dirty)
		put_json(m, b, "s.brk", 5, brks_json(m));
	m->conns_dirty = m->fails_dirty = m->brks_dirty = 0;
}

static cJSON *
load_json(struct mc *m, const char *key)
{
	void *v = NULL;
	size_t vl = 0;
	cJSON *j = NULL;

	if (store_get(m->st, m->db_roll, key, strlen(key), &v, &vl) == CR_OK)
		j = cJSON_ParseWithLength(v, vl);
	free(v);
	return j;
}

static void
fstr(char *out, size_t sz, const cJSON *o, const char *k)
{
	const char *v = str(o, k);
	snprintf(out, sz, "%s", v ? v : "");
}

/* mc_roll_load - read rollups, pairs, connectors, failures, breakers */
void
mc_roll_load(struct mc *m)
{
	struct store_iter *it = NULL;
	const void *k, *v;
	size_t kl, vl, nmin = 0, npairs = 0;
	uint64_t hour_min = now_ms() - (uint64_t)MC_PAIR_HOURS * 3600000;
	cJSON *j, *e;

	pthread_mutex_lock(&m->mu);
	if (store_iter_new(m->st, m->db_roll, "m", 1, &it) == CR_OK) {
		while (store_iter_next(it, &k, &kl, &v, &vl) == 1) {
			if ((j = cJSON_ParseWithLength(v, vl)) != NULL) {
				min_read(m, j);
				nmin++;
			}
			cJSON_Delete(j);
		}
	}
	store_iter_free(it);
	it = NULL;
	if (store_iter_new(m->st, m->db_roll, "p", 1, &it) == CR_OK) {
		while (store_iter_next(it, &k, &kl, &v, &vl) == 1) {
			const unsigned char *kk = k;
			const char *s, *r;
			uint64_t hour;
			struct mc_pair *p;
			if (kl < 12 || vl != 8 || (hour = get64(kk + 1)) < hour_min)
				continue;
			s = (const char *)kk + 9;
			r = memchr(s, '\0', kl - 9);
			if (r == NULL)
				continue;
			r++;
			p = pair_get(m, hour, s, (size_t)(r - 1 - s), r, kl - (size_t)(r - (const char *)kk), 0);
			if (p != NULL) {
				pair_add(p, (uint32_t)(get64(v) >> 32) - p->ok, (uint32_t)get64(v) - p->failed);
				npairs++;
			}
		}
	}
	store_iter_free(it);
	if ((j = load_json(m, "s.conn")) != NULL) {
		cJSON_ArrayForEach(e, j) {
			struct mc_conn *c;
			if (str(e, "a") == NULL || (c = conn_get(m, str(e, "a"))) == NULL)
				continue;
			fstr(c->gateway, sizeof(c->gateway), e, "g");
			c->connected = (int)num(e, "c");
			c->since_ms = (uint64_t)num(e, "s");
			c->first_ms = (uint64_t)num(e, "f");
			c->last_ms = (uint64_t)num(e, "l");
			c->up_ms = (uint64_t)num(e, "u");
			c->reconnects = (uint32_t)num(e, "r");
			if (c->last_ms > m->conn_now)
				m->conn_now = c->last_ms;
		}
		cJSON_Delete(j);
	}
	if ((j = load_json(m, "s.fail")) != NULL) {
		/* stored newest first */
		for (int i = cJSON_GetArraySize(j) - 1; i >= 0; i--) {
			struct mc_fail f;
			e = cJSON_GetArrayItem(j, i);
			memset(&f, 0, sizeof(f));
			f.ts_ms = (uint64_t)num(e, "tsMs");
			fstr(f.corr, sizeof(f.corr), e, "correlationId");
			fstr(f.mid, sizeof(f.mid), e, "messageId");
			fstr(f.sender, sizeof(f.sender), e, "sender");
			fstr(f.recipient, sizeof(f.recipient), e, "recipient");
			fstr(f.reason, sizeof(f.reason), e, "reason");
			fstr(f.detail, sizeof(f.detail), e, "detail");
			fstr(f.service, sizeof(f.service), e, "service");
			mc_roll_failure(m, &f);
		}
		cJSON_Delete(j);
	}
	if ((j = load_json(m, "s.brk")) != NULL) {
		cJSON_ArrayForEach(e, j)
			mc_roll_breaker(m, e);
		cJSON_Delete(j);
	}
	m->conns_dirty = m->fails_dirty = m->brks_dirty = 0;
	store_batch_free(m->pending);
	m->pending = NULL;
	pthread_mutex_unlock(&m->mu);
	log_info(NULL, "rollups loaded: %zu minutes, %zu pair-hours, %zu connectors", nmin, npairs,
	    m->nconns);
}

/* mc_roll_pairs_held - pair-hours in memory (mu held) */
size_t
mc_roll_pairs_held(struct mc *m)
{
	return m->pairs->n;
}

/* unlink p from its hash chain and free it (its hour's list goes too) */
static void
pair_drop(struct mc_pairs *t, struct mc_pair *p)
{
	struct mc_pair **pp = &t->b[p->hash % t->nb];

	while (*pp != NULL && *pp != p)
		pp = &(*pp)->next;
	if (*pp == p)
		*pp = p->next;
	free(p);
	t->n--;
}

/* mc_roll_sweep - deletes of rollups older than cutoff into b; pairs
 * older than MC_PAIR_HOURS leave memory (mu held) */
void
mc_roll_sweep(struct mc *m, struct store_batch *b, uint64_t cutoff_ms)
{
	struct store_iter *it = NULL;
	const void *k, *v;
	size_t kl, vl;
	uint64_t hour_min = now_ms() - (uint64_t)MC_PAIR_HOURS * 3600000;
	const char *prefixes[2] = { "m", "p" };
	struct mc_pairs *t = m->pairs;

	for (int i = 0; i < 2; i++) {
		if (store_iter_new(m->st, m->db_roll, prefixes[i], 1, &it) != CR_OK)
			continue;
		while (store_iter_next(it, &k, &kl, &v, &vl) == 1) {
			if (kl < 9 || get64((const unsigned char *)k + 1) >= cutoff_ms)
				break;
			store_batch_del(b, m->db_roll, k, kl);
		}
		store_iter_free(it);
		it = NULL;
	}
	/* the oldest hours, whole; one with a pair still to be written waits
	 * for the next sweep */
	while (t->nhours > 0 && t->hours[t->nhours - 1]->hour < hour_min) {
		struct mc_phour *ph = t->hours[t->nhours - 1];
		size_t i;

		for (i = 0; i < ph->n && !ph->v[i]->dirty; i++)
			;
		if (i < ph->n)
			break;
		for (i = 0; i < ph->n; i++)
			pair_drop(t, ph->v[i]);
		free(ph->v);
		free(ph);
		t->nhours--;
	}
}

int
mc_roll_init(struct mc *m)
{
	m->nmin = (size_t)m->roll_retention_h * 60;
	m->mins = calloc(m->nmin, sizeof(*m->mins));
	m->pairs = calloc(1, sizeof(*m->pairs));
	if (m->pairs != NULL) {
		m->pairs->nb = MC_PAIR_BUCKETS0;
		m->pairs->b = calloc(m->pairs->nb, sizeof(*m->pairs->b));
	}
	m->conn_hash = calloc(MC_CONN_BUCKETS, sizeof(*m->conn_hash));
	return m->mins && m->pairs && m->pairs->b && m->conn_hash ? 0 : -1;
}

void
mc_roll_fini(struct mc *m)
{
	if (m->pairs != NULL) {
		/* every pair is on its hour's list */
		for (size_t h = 0; h < m->pairs->nhours; h++) {
			struct mc_phour *ph = m->pairs->hours[h];
			for (size_t i = 0; i < ph->n; i++)
				free(ph->v[i]);
			free(ph->v);
			free(ph);
		}
		free(m->pairs->hours);
		free(m->pairs->b);
		free(m->pairs->dirty);
	}
	while (m->conns != NULL) {
		struct mc_conn *c = m->conns;
		m->conns = c->next;
		free(c);
	}
	free(m->pairs);
	free(m->mins);
	free(m->conn_hash);
	m->pairs = NULL;
	m->mins = NULL;
	m->conn_hash = NULL;
}

/* --- JSON answers --- */

static double
q_ms(const uint32_t *lat, double q)
{
	int nb;
	const double *b = metric_latency_bounds(&nb);
	uint64_t c[MC_LATB];

	for (int i = 0; i < MC_LATB; i++)
		c[i] = lat[i];
	return round(hist_quantile(b, c, nb, q) * 1e6) / 1e3;
}

static void
add_lat(uint32_t *into, const uint32_t *from)
{
	for (int i = 0; i < MC_LATB; i++)
		into[i] += from[i];
}

/* the minutes of [from, to) in time order (mu held); count in *n */
static size_t
window(struct mc *m, uint64_t from, uint64_t to, struct mc_min **out, size_t max)
{
	size_t n = 0;

	for (uint64_t t = from - from % 60000; t < to && n < max; t += 60000) {
		struct mc_min *mn = &m->mins[(t / 60000) % m->nmin];
		if (mn->t == t)
			out[n++] = mn;
	}
	return n;
}

static uint64_t
clamp_window(struct mc *m, uint64_t window_s)
{
	uint64_t max = (uint64_t)m->nmin * 60;
	if (window_s == 0)
		window_s = 3600;
	return window_s > max ? max : window_s;
}

/* mc_json_summary - the totals of the last window_s seconds */
cJSON *
mc_json_summary(struct mc *m, uint64_t window_s)
{
	cJSON *o = cJSON_CreateObject(), *msg, *f, *lat, *q, *a, *reg, *c, *br, *ev;
	uint32_t l[MC_LATB] = { 0 }, rl[MC_LATB] = { 0 }, nl[MC_LATB] = { 0 }, cl[MC_LATB] = { 0 };
	uint64_t in = 0, out = 0, failed = 0, fail[MC_NREASONS] = { 0 }, auth[MC_NCODES] = { 0 };
	uint64_t rn = 0, rf = 0, nn = 0, cn = 0, rc = 0, connected = 0, open = 0, half = 0;
	double lsum = 0, cops = 0;
	struct mc_min **mins, *lastq = NULL;
	uint64_t now = now_ms(), from;
	size_t n;

	window_s = clamp_window(m, window_s);
	from = now - window_s * 1000 + 1;
	mins = calloc(window_s / 60 + 2, sizeof(*mins));
	if (mins == NULL)
		return o;
	pthread_mutex_lock(&m->mu);
	n = window(m, from, now + 1, mins, window_s / 60 + 2);
	for (size_t i = 0; i < n; i++) {
		struct mc_min *mn = mins[i];
		in += mn->in;
		out += mn->out;
		failed += mn->failed;
		for (int k = 0; k < MC_NREASONS; k++)
			fail[k] += mn->fail[k];
		for (int k = 0; k < MC_NCODES; k++)
			auth[k] += mn->auth[k];
		add_lat(l, mn->lat);
		lsum += mn->lat_sum;
		rn += mn->reg_n;
		rf += mn->reg_fail;
		add_lat(rl, mn->reg_lat);
		nn += mn->nats_n;
		add_lat(nl, mn->nats_lat);
		cn += mn->commit_n;
		add_lat(cl, mn->commit_lat);
		cops += mn->commit_ops;
		rc += mn->reconnects;
		if (mn->qset)
			lastq = mn;
	}
	cJSON_AddNumberToObject(o, "windowS", (double)window_s);
	cJSON_AddNumberToObject(o, "fromMs", (double)from);
	cJSON_AddNumberToObject(o, "toMs", (double)now);
	msg = cJSON_AddObjectToObject(o, "messages");
	cJSON_AddNumberToObject(msg, "in", (double)in);
	cJSON_AddNumberToObject(msg, "out", (double)out);
	cJSON_AddNumberToObject(msg, "failed", (double)failed);
	f = cJSON_AddObjectToObject(msg, "failedByReason");
	for (int k = 0; k < MC_NREASONS; k++)
		if (fail[k])
			cJSON_AddNumberToObject(f, reason_names[k], (double)fail[k]);
	if (out + failed > 0)
		cJSON_AddNumberToObject(msg, "successRate",
		    round(10000.0 * (double)out / (double)(out + failed)) / 10000.0);
	else
		cJSON_AddNullToObject(msg, "successRate");
	cJSON_AddNumberToObject(msg, "inPerS", (double)in / (double)window_s);
	cJSON_AddNumberToObject(msg, "outPerS", (double)out / (double)window_s);
	cJSON_AddNumberToObject(msg, "failedPerS", (double)failed / (double)window_s);
	lat = cJSON_AddObjectToObject(o, "latency");
	{
		uint64_t cnt = 0;
		for (int k = 0; k < MC_LATB; k++)
			cnt += l[k];
		cJSON_AddNumberToObject(lat, "count", (double)cnt);
		cJSON_AddNumberToObject(lat, "p50Ms", q_ms(l, 0.5));
		cJSON_AddNumberToObject(lat, "p95Ms", q_ms(l, 0.95));
		cJSON_AddNumberToObject(lat, "p99Ms", q_ms(l, 0.99));
		cJSON_AddNumberToObject(lat, "meanMs", cnt ? round(lsum * 1e6 / (double)cnt) / 1e3 : 0);
	}
	q = cJSON_AddObjectToObject(o, "queue");
	if (lastq != NULL) {
		uint64_t tot = 0;
		for (int k = 0; k < MC_LANES; k++) {
			cJSON_AddNumberToObject(q, lane_names[k], lastq->qlane[k]);
			tot += lastq->qlane[k];
		}
		cJSON_AddNumberToObject(q, "depth", (double)tot);
		cJSON_AddNumberToObject(q, "bytes", (double)lastq->qbytes);
		cJSON_AddNumberToObject(q, "atMs", (double)lastq->t);
	}
	a = cJSON_AddObjectToObject(o, "authFailures");
	{
		uint64_t tot = 0;
		cJSON *bc = cJSON_AddObjectToObject(a, "byCode");
		for (int k = 0; k < m->ncodes; k++)
			if (auth[k]) {
				cJSON_AddNumberToObject(bc, m->codes[k], (double)auth[k]);
				tot += auth[k];
			}
		cJSON_AddNumberToObject(a, "total", (double)tot);
		cJSON_AddNumberToObject(a, "perMin", (double)tot * 60.0 / (double)window_s);
	}
	reg = cJSON_AddObjectToObject(o, "registry");
	cJSON_AddNumberToObject(reg, "lookups", (double)rn);
	cJSON_AddNumberToObject(reg, "failures", (double)rf);
	cJSON_AddNumberToObject(reg, "failureRate", rn ? (double)rf / (double)rn : 0);
	cJSON_AddNumberToObject(reg, "p50Ms", q_ms(rl, 0.5));
	cJSON_AddNumberToObject(reg, "p99Ms", q_ms(rl, 0.99));
	reg = cJSON_AddObjectToObject(o, "nats");
	cJSON_AddNumberToObject(reg, "requests", (double)nn);
	cJSON_AddNumberToObject(reg, "p50Ms", q_ms(nl, 0.5));
	cJSON_AddNumberToObject(reg, "p99Ms", q_ms(nl, 0.99));
	reg = cJSON_AddObjectToObject(o, "store");
	cJSON_AddNumberToObject(reg, "commits", (double)cn);
	cJSON_AddNumberToObject(reg, "p50Ms", q_ms(cl, 0.5));
	cJSON_AddNumberToObject(reg, "p99Ms", q_ms(cl, 0.99));
	cJSON_AddNumberToObject(reg, "opsPerCommit", cn ? cops / (double)cn : 0);
	c = cJSON_AddObjectToObject(o, "connectors");
	for (struct mc_conn *x = m->conns; x != NULL; x = x->next)
		connected += x->connected;
	cJSON_AddNumberToObject(c, "connected", (double)connected);
	cJSON_AddNumberToObject(c, "known", (double)m->nconns);
	cJSON_AddNumberToObject(c, "reconnects", (double)rc);
	br = cJSON_AddObjectToObject(o, "breakers");
	for (size_t i = 0; i < m->nbrks; i++) {
		open += strcmp(m->brks[i].state, "open") == 0;
		half += strcmp(m->brks[i].state, "half_open") == 0 ||
		    strcmp(m->brks[i].state, "half-open") == 0;
	}
	cJSON_AddNumberToObject(br, "total", (double)m->nbrks);
	cJSON_AddNumberToObject(br, "open", (double)open);
	cJSON_AddNumberToObject(br, "halfOpen", (double)half);
	ev = cJSON_AddObjectToObject(o, "collector");
	cJSON_AddNumberToObject(ev, "appliedEventsSeq", (double)m->applied_ev);
	cJSON_AddNumberToObject(ev, "appliedStatsSeq", (double)m->applied_st);
	cJSON_AddNumberToObject(ev, "lost", (double)metric_value(m->m_lost));
	cJSON_AddNumberToObject(ev, "skipped", (double)metric_value(m->m_skipped));
	pthread_mutex_unlock(&m->mu);
	free(mins);
	return o;
}

static cJSON *
col(cJSON *o, const char *k)
{
	return cJSON_AddArrayToObject(o, k);
}

static void
push(cJSON *a, double v)
{
	cJSON_AddItemToArray(a, cJSON_CreateNumber(v));
}

/* mc_json_series - columns over the last window_s seconds, one value per
 * step_s: rates per second, latency quantiles (ms), queue depths (the last
 * sample in the step; null where none), connectors, failures */
cJSON *
mc_json_series(struct mc *m, uint64_t window_s, uint64_t step_s, int parts)
{
	cJSON *o = cJSON_CreateObject(), *t, *in, *out, *fl, *sr, *p50, *p95, *p99, *qt, *ql[MC_LANES];
	cJSON *cc, *rc, *au, *rf, *rp, *qs;
	uint64_t now = now_ms(), from, step;
	int used[MC_QPARTS * MC_LANES] = { 0 };
	uint32_t peak[MC_QPARTS * MC_LANES] = { 0 };

	window_s = clamp_window(m, window_s);
	if (step_s < 60)
		step_s = 60;
	step_s -= step_s % 60;
	while (window_s / step_s > MC_SERIES_POINTS)
		step_s += 60;	/* a day at most MC_SERIES_POINTS points: 5 min each */
	step = step_s * 1000;
	from = (now - window_s * 1000) / step * step + step;
	cJSON_AddNumberToObject(o, "fromMs", (double)from);
	cJSON_AddNumberToObject(o, "toMs", (double)now);
	cJSON_AddNumberToObject(o, "stepS", (double)step_s);
	t = col(o, "t");
	in = col(o, "inPerS");
	out = col(o, "outPerS");
	fl = col(o, "failedPerS");
	sr = col(o, "successRate");
	p50 = col(o, "p50Ms");
	p95 = col(o, "p95Ms");
	p99 = col(o, "p99Ms");
	qt = col(o, "queueDepth");
	for (int l = 0; l < MC_LANES; l++) {
		char k[32];
		snprintf(k, sizeof(k), "queue_%s", lane_names[l]);
		ql[l] = col(o, k);
	}
	cc = col(o, "connected");
	rc = col(o, "reconnects");
	au = col(o, "authFailures");
	rf = col(o, "registryFailures");
	rp = col(o, "registryP99Ms");
	qs = cJSON_AddObjectToObject(o, "queueSeries");
	pthread_mutex_lock(&m->mu);
	/* the busiest `parts` partition/lane series of the window (their peaks) */
	for (uint64_t s = from; s <= now; s += 60000) {
		struct mc_min *mn = &m->mins[(s / 60000) % m->nmin];
		if (mn->t == s - s % 60000 && mn->qset)
			for (int k = 0; k < MC_QPARTS * MC_LANES; k++)
				if (mn->q[k] > peak[k])
					peak[k] = mn->q[k];
	}
	for (int i = 0; i < parts; i++) {
		int best = -1;
		for (int k = 0; k < MC_QPARTS * MC_LANES; k++)
			if (!used[k] && peak[k] > 0 && (best < 0 || peak[k] > peak[best]))
				best = k;
		if (best < 0)
			break;
		used[best] = 1;
	}
	for (uint64_t s = from; s <= now; s += step) {
		uint32_t l[MC_LATB] = { 0 }, rl[MC_LATB] = { 0 };
		uint64_t nin = 0, nout = 0, nfail = 0, nrc = 0, nau = 0, nrf = 0;
		struct mc_min *lastq = NULL, *lastc = NULL;
		double secs = (double)(s + step > now ? now - s : step) / 1000.0;

		for (uint64_t x = s; x < s + step && x <= now; x += 60000) {
			struct mc_min *mn = &m->mins[(x / 60000) % m->nmin];
			if (mn->t != x)
				continue;
			nin += mn->in;
			nout += mn->out;
			nfail += mn->failed;
			nrc += mn->reconnects;
			nrf += mn->reg_fail;
			for (int k = 0; k < MC_NCODES; k++)
				nau += mn->auth[k];
			add_lat(l, mn->lat);
			add_lat(rl, mn->reg_lat);
			if (mn->qset)
				lastq = mn;
			if (mn->connected || mn->reconnects)
				lastc = mn;
		}
		if (secs < 1)
			secs = 1;
		push(t, (double)s);
		push(in, round((double)nin / secs * 1000) / 1000);
		push(out, round((double)nout / secs * 1000) / 1000);
		push(fl, round((double)nfail / secs * 1000) / 1000);
		if (nout + nfail)
			push(sr, round(10000.0 * (double)nout / (double)(nout + nfail)) / 10000.0);
		else
			cJSON_AddItemToArray(sr, cJSON_CreateNull());
		push(p50, q_ms(l, 0.5));
		push(p95, q_ms(l, 0.95));
		push(p99, q_ms(l, 0.99));
		if (lastq != NULL) {
			push(qt, lastq->qlane[0] + lastq->qlane[1] + lastq->qlane[2]);
			for (int k = 0; k < MC_LANES; k++)
				push(ql[k], lastq->qlane[k]);
		} else {
			cJSON_AddItemToArray(qt, cJSON_CreateNull());
			for (int k = 0; k < MC_LANES; k++)
				cJSON_AddItemToArray(ql[k], cJSON_CreateNull());
		}
		for (int k = 0; k < MC_QPARTS * MC_LANES; k++) {
			char name[32];
			cJSON *a;
			if (!used[k])
				continue;
			snprintf(name, sizeof(name), "p%d/%s", k / MC_LANES, lane_names[k % MC_LANES]);
			if ((a = cJSON_GetObjectItem(qs, name)) == NULL)
				a = cJSON_AddArrayToObject(qs, name);
			if (lastq != NULL)
				push(a, lastq->q[k]);
			else
				cJSON_AddItemToArray(a, cJSON_CreateNull());
		}
		push(cc, lastc ? lastc->connected : 0);
		push(rc, (double)nrc);
		push(au, (double)nau);
		push(rf, (double)nrf);
		push(rp, q_ms(rl, 0.99));
	}
	pthread_mutex_unlock(&m->mu);
	return o;
}

/* mc_json_latency - the e2e histogram of the last window_s seconds */
cJSON *
mc_json_latency(struct mc *m, uint64_t window_s)
{
	cJSON *o = cJSON_CreateObject(), *b, *c;
	uint32_t l[MC_LATB] = { 0 };
	uint64_t now = now_ms(), cnt = 0;
	double sum = 0;
	int nb;
	const double *bounds = metric_latency_bounds(&nb);

	window_s = clamp_window(m, window_s);
	pthread_mutex_lock(&m->mu);
	for (uint64_t t = now - window_s * 1000 + 1; t <= now + 59999; t += 60000) {
		uint64_t mt = t - t % 60000;
		struct mc_min *mn = &m->mins[(mt / 60000) % m->nmin];
		if (mn->t == mt && mt <= now) {
			add_lat(l, mn->lat);
			sum += mn->lat_sum;
		}
	}
	pthread_mutex_unlock(&m->mu);
	cJSON_AddNumberToObject(o, "windowS", (double)window_s);
	b = cJSON_AddArrayToObject(o, "boundsMs");
	for (int i = 0; i < nb; i++)
		push(b, bounds[i] * 1000);
	c = cJSON_AddArrayToObject(o, "counts");
	for (int i = 0; i < MC_LATB; i++) {
		push(c, l[i]);
		cnt += l[i];
	}
	cJSON_AddNumberToObject(o, "count", (double)cnt);
	cJSON_AddNumberToObject(o, "p50Ms", q_ms(l, 0.5));
	cJSON_AddNumberToObject(o, "p95Ms", q_ms(l, 0.95));
	cJSON_AddNumberToObject(o, "p99Ms", q_ms(l, 0.99));
	cJSON_AddNumberToObject(o, "meanMs", cnt ? round(sum * 1e6 / (double)cnt) / 1e3 : 0);
	return o;
}

/* does x come before y in the order of sort (MC_SORT_*)? */
static int
pair_cmp(const struct mc_pair *x, const struct mc_pair *y, int sort)
{
	uint64_t vx = (uint64_t)x->ok + x->failed, vy = (uint64_t)y->ok + y->failed;
	int c;

	if (sort == MC_SORT_VOLUME && vx != vy)
		return vx > vy ? -1 : 1;
	if (sort == MC_SORT_FAILED && x->failed != y->failed)
		return x->failed > y->failed ? -1 : 1;
	if (x->hour != y->hour)
		return x->hour > y->hour ? -1 : 1;
	if (x->failed != y->failed)
		return x->failed > y->failed ? -1 : 1;
	if (x->ok != y->ok)
		return x->ok > y->ok ? -1 : 1;
	if ((c = strcmp(PAIR_SENDER(x), PAIR_SENDER(y))) != 0)
		return c;
	return strcmp(PAIR_RECIPIENT(x), PAIR_RECIPIENT(y));
}

static int
pair_qcmp(const void *a, const void *b, void *sort)
{
	return pair_cmp(*(struct mc_pair *const *)a, *(struct mc_pair *const *)b, *(int *)sort);
}

/* the heap h of n keeps the first `limit` pairs seen; its root is the one
 * that comes last, so a pair that comes before it replaces it */
static void
heap_down(struct mc_pair **h, size_t n, size_t i, int sort)
{
	for (;;) {
		size_t l = 2 * i + 1, r = l + 1, last = i;
		if (l < n && pair_cmp(h[l], h[last], sort) > 0)
			last = l;
		if (r < n && pair_cmp(h[r], h[last], sort) > 0)
			last = r;
		if (last == i)
			return;
		struct mc_pair *t = h[i];
		h[i] = h[last];
		h[last] = t;
		i = last;
	}
}

static void
heap_up(struct mc_pair **h, size_t i, int sort)
{
	while (i > 0 && pair_cmp(h[i], h[(i - 1) / 2], sort) > 0) {
		struct mc_pair *t = h[i];
		h[i] = h[(i - 1) / 2];
		h[(i - 1) / 2] = t;
		i = (i - 1) / 2;
	}
}

static int
pair_match(const struct mc_pair *p, const char *q)
{
	return q == NULL || *q == '\0' || strstr(PAIR_SENDER(p), q) != NULL ||
	    strstr(PAIR_RECIPIENT(p), q) != NULL;
}

/* the first `limit` in heap h (n of them) after p */
static void
heap_feed(struct mc_pair **h, size_t *n, size_t limit, struct mc_pair *p, int sort)
{
	if (*n < limit) {
		h[*n] = p;
		heap_up(h, (*n)++, sort);
	} else if (pair_cmp(p, h[0], sort) < 0) {
		h[0] = p;
		heap_down(h, *n, 0, sort);
	}
}

/* mc_json_pairs - peer pairs per hour of the last `hours` whose sender or
 * recipient contains q (NULL: all): their count and sums, and the first
 * `limit` in the order of sort (MC_SORT_HOUR: newest hour first, then most
 * failures). A day of 1,000 agents is hundreds of thousands of pair-hours:
 * a heap keeps the first `limit`, nothing sorts them all; unfiltered and by
 * hour (the dashboard's question) the sums are the hours' and only the
 * newest hours' pairs are looked at. */
cJSON *
mc_json_pairs(struct mc *m, uint64_t hours, size_t limit, const char *q, int sort)
{
	cJSON *o = cJSON_CreateObject(), *a;
	struct mc_pair **h;
	size_t n = 0, total = 0;
	uint64_t now = now_ms(), from, ok = 0, failed = 0;

	if (hours == 0 || hours > MC_PAIR_HOURS)
		hours = hours == 0 ? 24 : MC_PAIR_HOURS;
	if (limit == 0)
		limit = 1;
	from = now - now % 3600000 - (hours - 1) * 3600000;
	if ((h = calloc(limit, sizeof(*h))) == NULL)
		return o;
	pthread_mutex_lock(&m->mu);
	for (size_t hi = 0; hi < m->pairs->nhours; hi++) {
		struct mc_phour *ph = m->pairs->hours[hi];

		if (ph->hour < from)
			break;	/* newest first: the rest are older */
		if ((q == NULL || *q == '\0') && sort == MC_SORT_HOUR) {
			total += ph->n;
			ok += ph->ok;
			failed += ph->failed;
			if (n == limit)
				continue;	/* full of newer hours' pairs: these come after */
			for (size_t i = 0; i < ph->n; i++)
				heap_feed(h, &n, limit, ph->v[i], sort);
			continue;
		}
		for (size_t i = 0; i < ph->n; i++) {
			struct mc_pair *p = ph->v[i];
			if (!pair_match(p, q))
				continue;
			total++;
			ok += p->ok;
			failed += p->failed;
			heap_feed(h, &n, limit, p, sort);
		}
	}
	qsort_r(h, n, sizeof(*h), pair_qcmp, &sort);
	cJSON_AddNumberToObject(o, "hours", (double)hours);
	cJSON_AddNumberToObject(o, "total", (double)total);
	cJSON_AddNumberToObject(o, "delivered", (double)ok);
	cJSON_AddNumberToObject(o, "failed", (double)failed);
	a = cJSON_AddArrayToObject(o, "pairs");
	for (size_t i = 0; i < n; i++) {
		cJSON *e = cJSON_CreateObject();
		cJSON_AddStringToObject(e, "sender", PAIR_SENDER(h[i]));
		cJSON_AddStringToObject(e, "recipient", PAIR_RECIPIENT(h[i]));
		cJSON_AddNumberToObject(e, "hourMs", (double)h[i]->hour);
		cJSON_AddNumberToObject(e, "delivered", h[i]->ok);
		cJSON_AddNumberToObject(e, "failed", h[i]->failed);
		cJSON_AddNumberToObject(e, "successRate",
		    round(10000.0 * h[i]->ok / (double)(h[i]->ok + h[i]->failed)) / 10000.0);
		cJSON_AddItemToArray(a, e);
	}
	pthread_mutex_unlock(&m->mu);
	free(h);
	return o;
}

struct conn_key {
	const struct mc_conn *c;
	double pct;
};

static int
conn_qcmp(const void *a, const void *b, void *arg)
{
	const struct conn_key *x = a, *y = b;
	int sort = *(int *)arg;

	switch (sort) {
	case MC_SORT_RECONNECTS:
		if (x->c->reconnects != y->c->reconnects)
			return x->c->reconnects > y->c->reconnects ? -1 : 1;
		break;
	case MC_SORT_UPTIME:
		if (x->pct != y->pct)
			return x->pct < y->pct ? -1 : 1;
		break;
	case MC_SORT_STATE:
		/* the ones in trouble first: gone, then the most reconnects */
		if (x->c->connected != y->c->connected)
			return x->c->connected ? 1 : -1;
		if (x->c->reconnects != y->c->reconnects)
			return x->c->reconnects > y->c->reconnects ? -1 : 1;
		break;
	default:
		break;
	}
	return strcmp(x->c->agent, y->c->agent);
}

/* mc_json_connectors - the connectors whose agent ID contains q (NULL:
 * all): how many, and the first `limit` in the order of sort (MC_SORT_STATE:
 * disconnected first, then most reconnects, then by agent) */
cJSON *
mc_json_connectors(struct mc *m, size_t limit, const char *q, int sort)
{
	cJSON *o = cJSON_CreateObject(), *a;
	struct conn_key *v;
	size_t connected = 0, n = 0;
	uint64_t now;

	pthread_mutex_lock(&m->mu);
	now = m->conn_now ? m->conn_now : now_ms();
	v = calloc(m->nconns + 1, sizeof(*v));
	for (struct mc_conn *c = m->conns; c != NULL; c = c->next) {
		connected += c->connected;
		if (v == NULL || (q != NULL && *q != '\0' && strstr(c->agent, q) == NULL))
			continue;
		v[n].c = c;
		v[n++].pct = conn_uptime_pct(c, now);
	}
	if (v != NULL)
		qsort_r(v, n, sizeof(*v), conn_qcmp, &sort);
	cJSON_AddNumberToObject(o, "connected", (double)connected);
	cJSON_AddNumberToObject(o, "known", (double)m->nconns);
	cJSON_AddNumberToObject(o, "total", (double)n);
	cJSON_AddNumberToObject(o, "asOfMs", (double)m->conn_now);
	a = cJSON_AddArrayToObject(o, "connectors");
	for (size_t i = 0; i < n && i < limit; i++)
		cJSON_AddItemToArray(a, conn_api_json(v[i].c, now));
	pthread_mutex_unlock(&m->mu);
	free(v);
	return o;
}

/* mc_json_failures - the latest failures, newest first */
cJSON *
mc_json_failures(struct mc *m, size_t limit)
{
	cJSON *o = cJSON_CreateObject();

	pthread_mutex_lock(&m->mu);
	cJSON_AddItemToObject(o, "failures", fails_json(m, limit));
	pthread_mutex_unlock(&m->mu);
	return o;
}

/* mc_json_breakers - every breaker heard of */
cJSON *
mc_json_breakers(struct mc *m)
{
	cJSON *o = cJSON_CreateObject();

	pthread_mutex_lock(&m->mu);
	cJSON_AddItemToObject(o, "breakers", brks_json(m));
	pthread_mutex_unlock(&m->mu);
	return o;
}
