/*
 * metrics.c - a process-wide registry of counters and gauges.
 * Registration appends to a list under a mutex; values are atomics, so the
 * hot path never takes a lock. Rendering walks the list under the mutex.
 */
#include <pthread.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>

#include "metrics.h"

struct metric {
	char *name, *labels, *help;
	int gauge;
	_Atomic int64_t value;
	struct metric *next;
};

static pthread_mutex_t reg_mu = PTHREAD_MUTEX_INITIALIZER;
static struct metric *head, *tail;

static struct metric *
find_or_add(const char *name, const char *labels, const char *help, int gauge)
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
	m->gauge = gauge;
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
	return find_or_add(name, labels, help, 0);
}

/* metric_gauge - find or register a gauge */
struct metric *
metric_gauge(const char *name, const char *labels, const char *help)
{
	return find_or_add(name, labels, help, 1);
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

/* metric_value - current value */
int64_t
metric_value(const struct metric *m)
{
	return m ? atomic_load_explicit(&((struct metric *)(uintptr_t)m)->value, memory_order_relaxed) : 0;
}

/* metrics_render - append every metric to sb in the Prometheus text format */
void
metrics_render(struct strbuf *sb)
{
	const char *last = "";
	pthread_mutex_lock(&reg_mu);
	for (struct metric *m = head; m; m = m->next) {
		if (strcmp(last, m->name) != 0) {
			/* HELP/TYPE once per name (same-name metrics are registered together or not) */
			int seen = 0;
			for (struct metric *p = head; p != m; p = p->next)
				if (strcmp(p->name, m->name) == 0)
					seen = 1;
			if (!seen)
				sb_printf(sb, "# HELP %s %s\n# TYPE %s %s\n", m->name, m->help, m->name,
				    m->gauge ? "gauge" : "counter");
		}
		last = m->name;
		if (*m->labels)
			sb_printf(sb, "%s{%s} %lld\n", m->name, m->labels, (long long)atomic_load(&m->value));
		else
			sb_printf(sb, "%s %lld\n", m->name, (long long)atomic_load(&m->value));
	}
	pthread_mutex_unlock(&reg_mu);
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
		free(m);
	}
	tail = NULL;
	pthread_mutex_unlock(&reg_mu);
}
