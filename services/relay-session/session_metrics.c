/*
 * session_metrics.c - queue depth per partition and lane, and queue bytes
 * per partition, as gauges (clawrelay_queue_messages{partition,lane},
 * clawrelay_queue_bytes{partition}); the metrics-collector keeps their
 * history from the stats every service publishes.
 *
 * Main thread (the tick), about once a second: it walks each open
 * partition's agents under the partition's mu. A partition this replica
 * does not serve reports 0, so the sum over replicas is the truth.
 */
#include <stdio.h>
#include <stdlib.h>

#include "metrics.h"
#include "session.h"
#include "util.h"

#define SESSION_METRICS_MS 1000

static const char *const lane_names[SESSION_LANES] = { "critical", "normal", "low" };

/* session_metrics_tick - refresh the queue gauges (main thread) */
void
session_metrics_tick(struct session *s)
{
	static uint64_t next;
	char lab[96];

	if (mono_ms() < next)
		return;
	next = mono_ms() + SESSION_METRICS_MS;
	for (uint32_t p = 0; p < s->nparts; p++) {
		struct session_part *pp = &s->parts[p];
		uint64_t n[SESSION_LANES] = { 0 }, bytes = 0;

		pthread_mutex_lock(&pp->mu);
		if (pp->open) {
			for (int i = 0; i < SESSION_AGENT_BUCKETS; i++)
				for (struct session_agent *a = pp->agents[i]; a != NULL; a = a->next) {
					for (int l = 0; l < SESSION_LANES; l++)
						n[l] += a->n[l];
					bytes += a->bytes;
				}
		}
		pthread_mutex_unlock(&pp->mu);
		/* registration finds the existing gauge after the first time */
		for (int l = 0; l < SESSION_LANES; l++) {
			snprintf(lab, sizeof(lab), "partition=\"%u\",lane=\"%s\"", p, lane_names[l]);
			metric_set(metric_gauge("clawrelay_queue_messages", lab,
			    "messages queued, per partition and priority lane (served partitions)"),
			    (int64_t)n[l]);
		}
		snprintf(lab, sizeof(lab), "partition=\"%u\"", p);
		metric_set(metric_gauge("clawrelay_queue_bytes", lab,
		    "bytes of queued messages, per partition (served partitions)"), (int64_t)bytes);
	}
}
