/*
 * brkset.c - a service's circuit breakers by (boundary, name); see brkset.h.
 */
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "brkset.h"
#include "log.h"

#define BRKSET_BUCKETS 1024
#define BRKSET_STATUS_MAX 200
#define BRKSET_BOUNDARIES 16

struct bent {
	struct bent *next;
	struct brk b;
	struct brkset *set;
	int bidx;                 /* index into set->boundary */
	char *name;
};

struct brkset {
	pthread_mutex_t mu;
	struct bus *bus;
	char service[64], instance[128];
	char subj[256];
	struct brk_config cfg;
	brkset_sink_fn *sink;
	struct { char boundary[64]; uint32_t open_max_ms; } caps[4];
	int ncaps;
	void *sink_arg;
	struct bent *t[BRKSET_BUCKETS];
	size_t n;
	/* boundaries seen (append only, under mu) */
	char *boundary[BRKSET_BOUNDARIES];
	int nboundary;
	atomic_ullong opens[BRKSET_BOUNDARIES];
};

static uint32_t
hash2(const char *a, const char *b)
{
	uint32_t h = 2166136261u;
	for (; *a; a++)
		h = (h ^ (unsigned char)*a) * 16777619u;
	h = (h ^ 0xff) * 16777619u;
	for (; *b; b++)
		h = (h ^ (unsigned char)*b) * 16777619u;
	return h;
}

/* the callback of every breaker of the set (breaker mutex held) */
static void
on_change(void *arg, enum brk_state from, enum brk_state to, const struct brk_snap *snap)
{
	struct bent *e = arg;
	struct brkset *set = e->set;
	const char *bnd = set->boundary[e->bidx];
	uint64_t now = mono_ms(), wall = now_ms();
	uint64_t retry = snap->next_probe_ms > now ? snap->next_probe_ms - now : 0;
	uint64_t next = to == BRK_OPEN && snap->next_probe_ms ? wall + retry : 0;
	cJSON *o;
	char *js;

	if (to == BRK_OPEN)
		atomic_fetch_add(&set->opens[e->bidx], 1);
	if (to == BRK_OPEN)
		log_warn(NULL, "breaker %s %s%s%s: %s -> open for %llu ms (%u failures)",
		    set->service, bnd, *e->name ? " " : "", e->name, brk_state_name(from),
		    (unsigned long long)snap->open_ms, snap->consecutive_failures);
	else
		log_info(NULL, "breaker %s %s%s%s: %s -> %s", set->service, bnd,
		    *e->name ? " " : "", e->name, brk_state_name(from), brk_state_name(to));
	if ((set->bus == NULL && set->sink == NULL) || (o = cJSON_CreateObject()) == NULL)
		return;
	cJSON_AddStringToObject(o, "service", set->service);
	cJSON_AddStringToObject(o, "instance", set->instance);
	cJSON_AddStringToObject(o, "boundary", bnd);
	cJSON_AddStringToObject(o, "name", e->name);
	cJSON_AddStringToObject(o, "state", brk_state_name(to));
	cJSON_AddStringToObject(o, "from", brk_state_name(from));
	cJSON_AddNumberToObject(o, "failures", snap->consecutive_failures);
	cJSON_AddNumberToObject(o, "next_probe_ms", (double)next);
	cJSON_AddNumberToObject(o, "retry_in_ms", to == BRK_OPEN ? (double)retry : 0);
	cJSON_AddNumberToObject(o, "times_opened", (double)snap->times_opened);
	cJSON_AddNumberToObject(o, "ts", (double)wall);
	if ((js = cJSON_PrintUnformatted(o)) != NULL) {
		if (set->bus != NULL)
			(void)bus_publish(set->bus, set->subj, js, strlen(js));
		if (set->sink != NULL)
			set->sink(set->sink_arg, js, strlen(js));
		free(js);
	}
	cJSON_Delete(o);
}

struct brkset *
brkset_new(struct bus *bus, const char *service, const char *instance,
    const struct brkset_cfg *c)
{
	struct brkset *set = calloc(1, sizeof(*set));
	struct brk probe;

	if (set == NULL)
		return NULL;
	brk_config_default(&set->cfg);
	if (c != NULL) {
		set->cfg.consecutive = (uint32_t)c->consecutive;
		set->cfg.failure_pct = (uint32_t)c->failure_pct;
		set->cfg.min_calls = (uint32_t)c->min_calls;
		set->cfg.window_ms = (uint32_t)c->window_ms;
		set->cfg.open_base_ms = (uint32_t)c->open_ms;
		set->cfg.open_max_ms = (uint32_t)c->open_max_ms;
		set->cfg.probe_timeout_ms = (uint32_t)c->probe_timeout_ms;
	}
	/* check the settings once, so brkset_get can only fail on ENOMEM */
	if (brk_init(&probe, &set->cfg, NULL, NULL) != CR_OK) {
		log_error(NULL, "breaker settings are inconsistent (BREAKER_OPEN_MAX_MS < "
		    "BREAKER_OPEN_MS?)");
		free(set);
		return NULL;
	}
	brk_fini(&probe);
	pthread_mutex_init(&set->mu, NULL);
	set->bus = bus;
	snprintf(set->service, sizeof(set->service), "%s", service);
	snprintf(set->instance, sizeof(set->instance), "%s", instance ? instance : "");
	if (bus == NULL || bus_subj(bus, set->subj, sizeof(set->subj), "breaker.%s", service) < 0)
		set->bus = NULL;
	return set;
}

void
brkset_cap_open(struct brkset *set, const char *boundary, uint32_t open_max_ms)
{
	pthread_mutex_lock(&set->mu);
	if (set->ncaps < 4) {
		snprintf(set->caps[set->ncaps].boundary, sizeof(set->caps[0].boundary), "%s",
		    boundary);
		set->caps[set->ncaps++].open_max_ms = open_max_ms;
	}
	pthread_mutex_unlock(&set->mu);
}

void
brkset_set_sink(struct brkset *set, brkset_sink_fn *fn, void *arg)
{
	set->sink = fn;
	set->sink_arg = arg;
}

void
brkset_free(struct brkset *set)
{
	if (set == NULL)
		return;
	for (int i = 0; i < BRKSET_BUCKETS; i++) {
		struct bent *e = set->t[i], *nx;
		for (; e != NULL; e = nx) {
			nx = e->next;
			brk_fini(&e->b);
			free(e->name);
			free(e);
		}
	}
	for (int i = 0; i < set->nboundary; i++)
		free(set->boundary[i]);
	pthread_mutex_destroy(&set->mu);
	free(set);
}

struct brk *
brkset_get(struct brkset *set, const char *boundary, const char *name)
{
	uint32_t h;
	struct bent *e;
	int bi;

	if (name == NULL)
		name = "";
	if (strlen(name) > 1023 || strlen(boundary) > 63)
		return NULL;
	h = hash2(boundary, name) % BRKSET_BUCKETS;
	pthread_mutex_lock(&set->mu);
	for (e = set->t[h]; e != NULL; e = e->next)
		if (strcmp(e->name, name) == 0 && strcmp(set->boundary[e->bidx], boundary) == 0)
			goto out;
	for (bi = 0; bi < set->nboundary; bi++)
		if (strcmp(set->boundary[bi], boundary) == 0)
			break;
	if (bi == set->nboundary) {
		if (bi == BRKSET_BOUNDARIES || (set->boundary[bi] = strdup(boundary)) == NULL)
			goto fail;
		set->nboundary++;
	}
	if ((e = calloc(1, sizeof(*e))) == NULL || (e->name = strdup(name)) == NULL) {
		free(e);
		goto fail;
	}
	e->set = set;
	e->bidx = bi;
	struct brk_config cfg = set->cfg;
	for (int i = 0; i < set->ncaps; i++)
		if (strcmp(set->caps[i].boundary, boundary) == 0 && cfg.open_max_ms > set->caps[i].open_max_ms) {
			cfg.open_max_ms = set->caps[i].open_max_ms;
			if (cfg.open_base_ms > cfg.open_max_ms)
				cfg.open_base_ms = cfg.open_max_ms;
		}
	if (brk_init(&e->b, &cfg, on_change, e) != CR_OK) {
		free(e->name);
		free(e);
		goto fail;
	}
	e->next = set->t[h];
	set->t[h] = e;
	set->n++;
out:
	pthread_mutex_unlock(&set->mu);
	return &e->b;
fail:
	pthread_mutex_unlock(&set->mu);
	return NULL;
}

uint64_t
brkset_retry_in(struct brk *b)
{
	struct brk_snap s;
	uint64_t now = mono_ms();

	brk_snapshot(b, now, &s);
	if (s.state != BRK_OPEN || s.next_probe_ms <= now)
		return 0;
	return s.next_probe_ms - now;
}

static cJSON *
snap_json(const struct brkset *set, const struct bent *e, const struct brk_snap *s,
    uint64_t now, uint64_t wall)
{
	cJSON *o = cJSON_CreateObject();

	if (o == NULL)
		return NULL;
	cJSON_AddStringToObject(o, "boundary", set->boundary[e->bidx]);
	cJSON_AddStringToObject(o, "name", e->name);
	cJSON_AddStringToObject(o, "state", s->state_name);
	cJSON_AddNumberToObject(o, "failures", s->consecutive_failures);
	cJSON_AddNumberToObject(o, "windowCalls", s->window_calls);
	cJSON_AddNumberToObject(o, "windowFailures", s->window_failures);
	cJSON_AddNumberToObject(o, "timesOpened", (double)s->times_opened);
	cJSON_AddNumberToObject(o, "next_probe_ms", s->state == BRK_OPEN && s->next_probe_ms > now ?
	    (double)(wall + s->next_probe_ms - now) : 0);
	return o;
}

void
brkset_status(struct brkset *set, cJSON *obj)
{
	cJSON *arr = cJSON_AddArrayToObject(obj, "breakers");
	uint64_t now = mono_ms(), wall = now_ms();
	size_t shown = 0, open = 0;

	pthread_mutex_lock(&set->mu);
	/* not closed first, then closed ones while there is room */
	for (int pass = 0; pass < 2; pass++)
		for (int i = 0; i < BRKSET_BUCKETS; i++)
			for (struct bent *e = set->t[i]; e != NULL; e = e->next) {
				struct brk_snap s;
				cJSON *o;

				brk_snapshot(&e->b, now, &s);
				if ((pass == 0) != (s.state != BRK_CLOSED))
					continue;
				if (pass == 0)
					open++;
				if (shown >= BRKSET_STATUS_MAX || arr == NULL)
					continue;
				if ((o = snap_json(set, e, &s, now, wall)) != NULL) {
					cJSON_AddItemToArray(arr, o);
					shown++;
				}
			}
	cJSON_AddNumberToObject(obj, "breakersTotal", (double)set->n);
	cJSON_AddNumberToObject(obj, "breakersNotClosed", (double)open);
	pthread_mutex_unlock(&set->mu);
}

void
brkset_metrics(struct brkset *set, struct strbuf *sb)
{
	uint64_t cnt[BRKSET_BOUNDARIES][3] = {{0}};
	uint64_t now = mono_ms();
	int nb;

	pthread_mutex_lock(&set->mu);
	nb = set->nboundary;
	for (int i = 0; i < BRKSET_BUCKETS; i++)
		for (struct bent *e = set->t[i]; e != NULL; e = e->next) {
			struct brk_snap s;
			brk_snapshot(&e->b, now, &s);
			cnt[e->bidx][s.state]++;
		}
	sb_printf(sb, "# HELP clawrelay_breakers circuit breakers by boundary and state\n"
	    "# TYPE clawrelay_breakers gauge\n");
	for (int b = 0; b < nb; b++)
		for (int st = 0; st < 3; st++)
			sb_printf(sb, "clawrelay_breakers{service=\"%s\",boundary=\"%s\",state=\"%s\"} %llu\n",
			    set->service, set->boundary[b], brk_state_name((enum brk_state)st),
			    (unsigned long long)cnt[b][st]);
	sb_printf(sb, "# HELP clawrelay_breaker_opens_total times a breaker opened (re-opens included)\n"
	    "# TYPE clawrelay_breaker_opens_total counter\n");
	for (int b = 0; b < nb; b++)
		sb_printf(sb, "clawrelay_breaker_opens_total{service=\"%s\",boundary=\"%s\"} %llu\n",
		    set->service, set->boundary[b], (unsigned long long)atomic_load(&set->opens[b]));
	pthread_mutex_unlock(&set->mu);
}

int
brkset_event_parse(const void *data, size_t len, cJSON **root, struct brkset_event *ev)
{
	cJSON *o = cJSON_ParseWithLength(data, len), *x;

	memset(ev, 0, sizeof(*ev));
	*root = o;
	if (o == NULL)
		return -1;
	{
		const char **dst[4] = { &ev->service, &ev->boundary, &ev->name, &ev->state };
		static const char *const names[4] = { "service", "boundary", "name", "state" };

		for (int i = 0; i < 4; i++) {
			x = cJSON_GetObjectItemCaseSensitive(o, names[i]);
			if (!cJSON_IsString(x))
				return -1;
			*dst[i] = x->valuestring;
		}
	}
	x = cJSON_GetObjectItemCaseSensitive(o, "retry_in_ms");
	if (cJSON_IsNumber(x) && x->valuedouble > 0 && x->valuedouble < 1e12)
		ev->retry_in_ms = (uint64_t)x->valuedouble;
	return 0;
}
