/*
 * metrics.c - a process-wide registry of counters, gauges and histograms.
 *
 * Registration appends to a list under a mutex; values are atomics, so the
 * hot path never takes a lock. Rendering walks the list under the mutex and
 * prints each name's family together (HELP/TYPE once, then every label set),
 * as the text format requires, whatever order they were registered in.
 *
 * A histogram keeps per-bucket counts (not cumulative: one atomic add per
 * observation) and its sum in microunits; rendering makes them cumulative.
 *
 * metrics_snapshot keeps, per metric, the values it reported last, so the
 * bus carries deltas of counters and histograms; only the hop flusher
 * calls it (the lock covers the "last" fields too).
 */
#include <math.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "metrics.h"

enum metric_kind { MK_COUNTER, MK_GAUGE, MK_HIST };

struct metric {
	char *name, *labels, *help;
	enum metric_kind kind;
	_Atomic int64_t value;           /* counter, gauge; histogram: count */
	/* histograms */
	int nb;
	double bounds[METRIC_MAX_BOUNDS];
	_Atomic(uint64_t) *buckets;      /* nb + 1 */
	_Atomic uint64_t sum_micro;
	/* what the last snapshot reported (reg_mu) */
	int64_t last_value;
	uint64_t last_sum;
	uint64_t *last_buckets;
	struct metric *next;
	int rendered;                    /* scratch for metrics_render (reg_mu) */
};

static pthread_mutex_t reg_mu = PTHREAD_MUTEX_INITIALIZER;
static struct metric *head, *tail;
static _Atomic unsigned generation = 1;    /* bumped by metrics_free_all */

static const double latency_bounds[] = {
	0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1,
	0.25, 0.5, 1, 2.5, 5, 10, 30, 60,
};

/* metric_latency_bounds - the default bounds (seconds) */
const double *
metric_latency_bounds(int *n)
{
	*n = (int)(sizeof(latency_bounds) / sizeof(latency_bounds[0]));
	return latency_bounds;
}

static struct metric *
find_or_add(const char *name, const char *labels, const char *help, enum metric_kind kind,
    const double *bounds, int nb)
{
	struct metric *m;
	pthread_mutex_lock(&reg_mu);
	for (m = head; m; m = m->next) {
		if (strcmp(m->name, name) == 0 &&
		    strcmp(m->labels, labels ? labels : "") == 0)
			goto out;
	}
	m = calloc(1, sizeof(*m));
	if (m == NULL)
		abort();	/* registration happens at start-up or for bounded labels */
	m->name = strdup(name);
	m->labels = strdup(labels ? labels : "");
	m->help = strdup(help ? help : "");
	if (!m->name || !m->labels || !m->help)
		abort();
	m->kind = kind;
	if (kind == MK_HIST) {
		if (bounds == NULL)
			bounds = metric_latency_bounds(&nb);
		if (nb > METRIC_MAX_BOUNDS)
			nb = METRIC_MAX_BOUNDS;
		m->nb = nb;
		memcpy(m->bounds, bounds, sizeof(double) * (size_t)nb);
		m->buckets = calloc((size_t)nb + 1, sizeof(*m->buckets));
		m->last_buckets = calloc((size_t)nb + 1, sizeof(*m->last_buckets));
		if (m->buckets == NULL || m->last_buckets == NULL)
			abort();
	}
	if (tail)
		tail->next = m;
	else
		head = m;
	tail = m;
out:
	pthread_mutex_unlock(&reg_mu);
	return m;
}

/* metric_counter - find or register a counter */
struct metric *
metric_counter(const char *name, const char *labels, const char *help)
{
	return find_or_add(name, labels, help, MK_COUNTER, NULL, 0);
}

/* metric_gauge - find or register a gauge */
struct metric *
metric_gauge(const char *name, const char *labels, const char *help)
{
	return find_or_add(name, labels, help, MK_GAUGE, NULL, 0);
}

/* metric_histogram - find or register a histogram */
struct metric *
metric_histogram(const char *name, const char *labels, const char *help, const double *bounds,
    int nbounds)
{
	return find_or_add(name, labels, help, MK_HIST, bounds, nbounds);
}

static struct metric *
slot_get(struct metric_slot *slot, const char *name, const char *labels, const char *help,
    enum metric_kind kind, const double *bounds, int nb)
{
	unsigned gen = atomic_load(&generation);
	struct metric *m;

	if (atomic_load(&slot->gen) == gen && (m = atomic_load(&slot->m)) != NULL)
		return m;
	m = find_or_add(name, labels, help, kind, bounds, nb);
	atomic_store(&slot->m, m);
	atomic_store(&slot->gen, gen);
	return m;
}

/* metric_counter_at - metric_counter remembered in slot */
struct metric *
metric_counter_at(struct metric_slot *slot, const char *name, const char *labels, const char *help)
{
	return slot_get(slot, name, labels, help, MK_COUNTER, NULL, 0);
}

/* metric_histogram_at - metric_histogram remembered in slot */
struct metric *
metric_histogram_at(struct metric_slot *slot, const char *name, const char *labels,
    const char *help, const double *bounds, int nbounds)
{
	return slot_get(slot, name, labels, help, MK_HIST, bounds, nbounds);
}

/* metric_add - add v (counters and gauges) */
void
metric_add(struct metric *m, uint64_t v)
{
	if (m)
		atomic_fetch_add_explicit(&m->value, (int64_t)v, memory_order_relaxed);
}

/* metric_set - set a gauge */
void
metric_set(struct metric *m, int64_t v)
{
	if (m)
		atomic_store_explicit(&m->value, v, memory_order_relaxed);
}

/* metric_observe - one observation of a histogram */
void
metric_observe(struct metric *m, double v)
{
	int b = 0;

	if (m == NULL || m->kind != MK_HIST)
		return;
	if (!(v >= 0))
		v = 0;	/* NaN and negatives (a clock step) count as 0 */
	while (b < m->nb && v > m->bounds[b])
		b++;
	atomic_fetch_add_explicit(&m->buckets[b], 1, memory_order_relaxed);
	atomic_fetch_add_explicit(&m->sum_micro, (uint64_t)llround(v * 1e6), memory_order_relaxed);
	atomic_fetch_add_explicit(&m->value, 1, memory_order_relaxed);
}

/* metric_observe_us - a duration in microseconds into a seconds histogram */
void
metric_observe_us(struct metric *m, uint64_t us)
{
	metric_observe(m, (double)us / 1e6);
}

/* metric_value - current value (a histogram's count) */
int64_t
metric_value(const struct metric *m)
{
	return m ? atomic_load_explicit(&((struct metric *)(uintptr_t)m)->value, memory_order_relaxed) : 0;
}

/* labels with one more pair appended ("a=\"b\",le=\"0.1\"") into out */
static void
labels_with(char *out, size_t sz, const char *labels, const char *k, const char *v)
{
	snprintf(out, sz, "%s%s%s=\"%s\"", labels, *labels ? "," : "", k, v);
}

static void
render_one(struct strbuf *sb, struct metric *m)
{
	char lab[512], le[32];
	uint64_t cum = 0;

	if (m->kind != MK_HIST) {
		if (*m->labels)
			sb_printf(sb, "%s{%s} %lld\n", m->name, m->labels, (long long)atomic_load(&m->value));
		else
			sb_printf(sb, "%s %lld\n", m->name, (long long)atomic_load(&m->value));
		return;
	}
	for (int i = 0; i <= m->nb; i++) {
		cum += atomic_load(&m->buckets[i]);
		if (i < m->nb)
			snprintf(le, sizeof(le), "%g", m->bounds[i]);
		else
			snprintf(le, sizeof(le), "+Inf");
		labels_with(lab, sizeof(lab), m->labels, "le", le);
		sb_printf(sb, "%s_bucket{%s} %llu\n", m->name, lab, (unsigned long long)cum);
	}
	if (*m->labels) {
		sb_printf(sb, "%s_sum{%s} %.6f\n", m->name, m->labels,
		    (double)atomic_load(&m->sum_micro) / 1e6);
		sb_printf(sb, "%s_count{%s} %llu\n", m->name, m->labels, (unsigned long long)cum);
	} else {
		sb_printf(sb, "%s_sum %.6f\n", m->name, (double)atomic_load(&m->sum_micro) / 1e6);
		sb_printf(sb, "%s_count %llu\n", m->name, (unsigned long long)cum);
	}
}

/* metrics_render - append every metric to sb in the Prometheus text format,
 * each name's lines together */
void
metrics_render(struct strbuf *sb)
{
	static const char *const type[] = { "counter", "gauge", "histogram" };

	pthread_mutex_lock(&reg_mu);
	for (struct metric *m = head; m; m = m->next)
		m->rendered = 0;
	for (struct metric *m = head; m; m = m->next) {
		if (m->rendered)
			continue;
		sb_printf(sb, "# HELP %s %s\n# TYPE %s %s\n", m->name, m->help, m->name, type[m->kind]);
		for (struct metric *p = m; p; p = p->next) {
			if (!p->rendered && strcmp(p->name, m->name) == 0) {
				render_one(sb, p);
				p->rendered = 1;
			}
		}
	}
	pthread_mutex_unlock(&reg_mu);
}

/* metrics_snapshot - counters' and histograms' deltas, gauges' values */
void
metrics_snapshot(cJSON *obj)
{
	cJSON *c = cJSON_AddArrayToObject(obj, "c");
	cJSON *g = cJSON_AddArrayToObject(obj, "g");
	cJSON *h = cJSON_AddArrayToObject(obj, "h");

	if (c == NULL || g == NULL || h == NULL)
		return;
	pthread_mutex_lock(&reg_mu);
	for (struct metric *m = head; m; m = m->next) {
		int64_t v = atomic_load(&m->value);
		cJSON *row;

		if (m->kind == MK_GAUGE) {
			row = cJSON_CreateArray();
			cJSON_AddItemToArray(row, cJSON_CreateString(m->name));
			cJSON_AddItemToArray(row, cJSON_CreateString(m->labels));
			cJSON_AddItemToArray(row, cJSON_CreateNumber((double)v));
			cJSON_AddItemToArray(g, row);
			continue;
		}
		if (v == m->last_value)
			continue;
		row = cJSON_CreateArray();
		cJSON_AddItemToArray(row, cJSON_CreateString(m->name));
		cJSON_AddItemToArray(row, cJSON_CreateString(m->labels));
		if (m->kind == MK_COUNTER) {
			cJSON_AddItemToArray(row, cJSON_CreateNumber((double)(v - m->last_value)));
			cJSON_AddItemToArray(c, row);
		} else {
			cJSON *bs = cJSON_CreateArray(), *ds = cJSON_CreateArray();
			uint64_t sum = atomic_load(&m->sum_micro);
			int64_t count = 0;

			for (int i = 0; i < m->nb; i++)
				cJSON_AddItemToArray(bs, cJSON_CreateNumber(m->bounds[i]));
			for (int i = 0; i <= m->nb; i++) {
				uint64_t b = atomic_load(&m->buckets[i]);
				cJSON_AddItemToArray(ds, cJSON_CreateNumber((double)(b - m->last_buckets[i])));
				count += (int64_t)(b - m->last_buckets[i]);
				m->last_buckets[i] = b;
			}
			cJSON_AddItemToArray(row, bs);
			cJSON_AddItemToArray(row, ds);
			cJSON_AddItemToArray(row, cJSON_CreateNumber((double)(sum - m->last_sum) / 1e6));
			cJSON_AddItemToArray(row, cJSON_CreateNumber((double)count));
			m->last_sum = sum;
			cJSON_AddItemToArray(h, row);
			/* the count read first may trail the buckets: report what the buckets say */
			v = m->last_value + count;
		}
		m->last_value = v;
	}
	pthread_mutex_unlock(&reg_mu);
}

/* hist_quantile - the q-quantile of per-bucket counts (nb bounds + Inf) */
double
hist_quantile(const double *bounds, const uint64_t *counts, int nb, double q)
{
	uint64_t total = 0, cum = 0;
	double rank;

	for (int i = 0; i <= nb; i++)
		total += counts[i];
	if (total == 0)
		return 0;
	if (q < 0)
		q = 0;
	if (q > 1)
		q = 1;
	rank = q * (double)total;
	for (int i = 0; i <= nb; i++) {
		if (counts[i] == 0 || (double)(cum + counts[i]) < rank) {
			cum += counts[i];
			continue;
		}
		double lo = i == 0 ? 0 : bounds[i - 1];
		if (i == nb)
			return lo;
		return lo + (bounds[i] - lo) * ((rank - (double)cum) / (double)counts[i]);
	}
	return nb > 0 ? bounds[nb - 1] : 0;
}

/* metrics_free_all - at shutdown */
void
metrics_free_all(void)
{
	pthread_mutex_lock(&reg_mu);
	while (head) {
		struct metric *m = head;
		head = m->next;
		free(m->name);
		free(m->labels);
		free(m->help);
		free(m->buckets);
		free(m->last_buckets);
		free(m);
	}
	tail = NULL;
	atomic_fetch_add(&generation, 1);
	pthread_mutex_unlock(&reg_mu);
}
