/*
 * metrics.h - process-wide counters, gauges and histograms in the Prometheus
 * text format, and a JSON snapshot of them for the bus.
 *
 * Names follow the Prometheus conventions: clawrelay_<what>_<unit>, counters
 * end in _total, durations are in seconds. Labels stay bounded (no per-message
 * label; a label set is registered once and kept until metrics_free_all).
 *
 * Registration takes a lock; updates are lock-free atomics, safe from any
 * thread. Rendering and snapshots walk the list under the lock.
 */
#ifndef CR_METRICS_H
#define CR_METRICS_H

#include <stdint.h>

#include <cJSON.h>

#include "util.h"

#define METRIC_MAX_BOUNDS 32

struct metric;

/* metric_counter - find or register a counter; name like
 * "clawrelay_messages_in_total", labels like "code=\"401\"" or NULL.
 * Returned pointer lives until metrics_free_all(). */
struct metric *metric_counter(const char *name, const char *labels, const char *help);
/* metric_gauge - the same for a gauge */
struct metric *metric_gauge(const char *name, const char *labels, const char *help);
/* metric_histogram - the same for a histogram with nbounds ascending upper
 * bounds (copied; at most METRIC_MAX_BOUNDS; +Inf is implicit). NULL bounds:
 * metric_latency_bounds (seconds, 100 us .. 60 s). */
struct metric *metric_histogram(const char *name, const char *labels, const char *help,
    const double *bounds, int nbounds);
void metric_add(struct metric *m, uint64_t v);
void metric_set(struct metric *m, int64_t v);
/* metric_observe - one observation of a histogram (v in its unit) */
void metric_observe(struct metric *m, double v);
/* metric_observe_us - one duration in microseconds into a seconds histogram */
void metric_observe_us(struct metric *m, uint64_t us);
/* metric_value - a counter's or gauge's value; a histogram's count */
int64_t metric_value(const struct metric *m);
/* A remembered registration for code without an init (common/ modules):
 * zero-initialised static; valid across metrics_free_all (re-registers). */
struct metric_slot {
	struct metric *_Atomic m;
	_Atomic unsigned gen;
};
/* metric_counter_at / metric_histogram_at - metric_counter / metric_histogram
 * remembered in slot: a lock only on first use; any thread */
struct metric *metric_counter_at(struct metric_slot *slot, const char *name, const char *labels,
    const char *help);
struct metric *metric_histogram_at(struct metric_slot *slot, const char *name, const char *labels,
    const char *help, const double *bounds, int nbounds);
/* metrics_render - append every metric to sb, grouped by name */
void metrics_render(struct strbuf *sb);
/* metrics_snapshot - every metric as JSON (see docs/PROTOCOL.md, "stats"):
 * "c": [[name, labels, delta]] counters that moved since the previous
 * snapshot, "g": [[name, labels, value]] every gauge, "h": [[name, labels,
 * [bounds], [bucket deltas], sum delta, count delta]] histograms that moved.
 * Adds them to obj. One caller (the hop flusher) owns the "previous". */
void metrics_snapshot(cJSON *obj);
/* metrics_free_all - at shutdown */
void metrics_free_all(void);

/* metric_latency_bounds - the default bounds (seconds); *n gets their count */
const double *metric_latency_bounds(int *n);
/* hist_quantile - the q-quantile (0..1) of a histogram given as per-bucket
 * (not cumulative) counts of nb bounds plus the +Inf bucket (counts has
 * nb + 1 entries), interpolated linearly inside the bucket it falls in
 * (the +Inf bucket answers its lower bound); 0 when empty */
double hist_quantile(const double *bounds, const uint64_t *counts, int nb, double q);

#endif
