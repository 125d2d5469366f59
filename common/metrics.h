/*
 * metrics.h - process-wide counters and gauges in the Prometheus text format.
 * Registration takes a lock; updates are lock-free atomics, safe from any thread.
 */
#ifndef CR_METRICS_H
#define CR_METRICS_H

#include <stdint.h>

#include "util.h"

struct metric;

/* metric_counter - find or register a counter; name like
 * "clawrelay_messages_in_total", labels like "code=\"401\"" or NULL.
 * Returned pointer lives until metrics_free_all(). */
struct metric *metric_counter(const char *name, const char *labels, const char *help);
/* metric_gauge - the same for a gauge */
struct metric *metric_gauge(const char *name, const char *labels, const char *help);
void metric_add(struct metric *m, uint64_t v);
void metric_set(struct metric *m, int64_t v);
int64_t metric_value(const struct metric *m);
/* metrics_render - append every metric to sb */
void metrics_render(struct strbuf *sb);
/* metrics_free_all - at shutdown */
void metrics_free_all(void);

#endif
