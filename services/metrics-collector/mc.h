/*
 * mc.h - private header of clawrelay-metrics-collector (nothing outside
 * services/metrics-collector/ includes it).
 *
 * Storage (one LMDB environment in DATA_DIR):
 *   hops:   "<correlation_id>\0<ts_us be64><hop u8><seq be32>" -> packed HopEvent
 *           (key order = trace order: by time, ties by hop number)
 *   bytime: "<received_ms be64><seq be32>" -> "<len u8><hops key>..." (retention
 *           index: one entry per received HopBatch, up to 128 hops each);
 *           stores written before hold "<received_ms be64><hops key>" -> ""
 *           (one per hop), which the sweep still understands
 * Every write goes through one group committer; reads are lock-free LMDB
 * snapshots from any thread.
 */
#ifndef MC_H
#define MC_H

#include <stdatomic.h>
#include <stddef.h>
#include <stdint.h>

#include "bus.h"
#include "env.h"
#include "metrics.h"
#include "store.h"
#include "svc.h"

#define MC_NHOPS 17          /* HopKind values 0..16 */
#define MC_NBUCKETS 16       /* end-to-end latency histogram */

struct mc_acc;

struct mc {
	/* settings */
	char *data_dir;
	long long map_size_mb;
	long long retention_h;
	long long sweep_batch;
	long long max_trace_hops;
	int nosync;

	/* set by init, read-only afterwards */
	struct svc *svc;
	struct bus *bus;
	struct store *st;
	struct store_committer *com;
	unsigned db_hops, db_bytime;
	struct metric *m_hops[MC_NHOPS];
	struct metric *m_bad, *m_store_err;
	uint64_t next_sweep_ms;   /* main thread only */

	/* events thread only (mc_on_event) */
	struct mc_acc *acc;       /* when recent messages were accepted (mc_latency.c) */

	/* any thread */
	atomic_uint seq;
	atomic_ullong events, bad, store_errors, swept, traces_served, pending_commits;
	atomic_ullong lat_buckets[MC_NBUCKETS];
	atomic_ullong lat_count, lat_sum_ms;
};

/* One trace: events sorted by ts_us, ties by hop; free with mc_trace_free. */
struct mc_trace {
	HopEvent **hops;
	size_t n;
};

/* mc_on_event - bus handler for <P>.events.>; msg borrowed */
void mc_on_event(void *arg, natsMsg *msg);
/* mc_on_trace_get - bus handler for <P>.trace.get; msg borrowed */
void mc_on_trace_get(void *arg, natsMsg *msg);
/* mc_trace_load - read one correlation ID's hops (at most max) into t;
 * CR_ERR_NOT_FOUND if there are none. Caller frees with mc_trace_free. */
enum cr_err mc_trace_load(struct mc *m, const char *correlation_id, size_t max, struct mc_trace *t);
/* mc_trace_free - free what mc_trace_load filled in */
void mc_trace_free(struct mc_trace *t);
/* mc_sweep - drop hops received more than retention ago (main thread) */
void mc_sweep(struct mc *m);
/* mc_http_trace - GET /v1/traces/{correlationId} (civetweb worker) */
int mc_http_trace(struct mg_connection *c, void *arg);
/* mc_metrics_text - hop counters are registered metrics; this appends the
 * latency histogram */
void mc_metrics_text(struct mc *m, struct strbuf *sb);
/* mc_latency_bound - upper bound (ms) of histogram bucket i; 0 for +Inf */
uint64_t mc_latency_bound(int i);
/* mc_latency_new - the accepted-time table; NULL on ENOMEM; free with
 * mc_latency_free (NULL does nothing) */
struct mc_acc *mc_latency_new(void);
void mc_latency_free(struct mc_acc *a);
/* mc_latency_accepted - remember the time of a message's
 * HOP_GATEWAY_ACCEPTED (events thread); mid is mlen bytes, borrowed */
void mc_latency_accepted(struct mc *m, const char *corr, const unsigned char *mid, size_t mlen,
    uint64_t ts_us);
/* mc_latency_delivered - observe accepted -> delivered for a message's
 * HOP_DELIVERED at ts_us (events thread) */
void mc_latency_delivered(struct mc *m, const char *corr, const unsigned char *mid, size_t mlen,
    uint64_t ts_us);

#endif
