/*
 * mc.h - private header of clawrelay-metrics-collector (nothing outside
 * services/metrics-collector/ includes it).
 *
 * Input: the JetStream stream "<P>_events" (hop batches on <P>.events.*,
 * every service's JSON stats on <P>.stats.*), read by an ordered consumer
 * that starts after the last stream sequence this store applied; breaker
 * changes on <P>.breaker.> (core NATS, JSON).
 *
 * Exactly once: the stream sequence applied last ("applied") is written in
 * the same LMDB txn as everything its messages changed (hops, rollups,
 * connectors, failures), so after a crash or a stop the collector goes on
 * from there; a message at or below it is skipped. Hop keys are made of
 * the stream sequence and the event's place in its batch, so a batch
 * written twice would land on the same keys anyway.
 *
 * Storage (one LMDB environment in DATA_DIR):
 *   hops:   "<correlation_id>\0<ts_us be64><hop u8><seq be32>" -> packed HopEvent
 *           (key order = trace order: by time, ties by hop number; seq is
 *           (stream seq << 12 | place in batch) truncated to 32 bits)
 *   bytime: "<received_ms be64><seq be32>" -> "<len u8><hops key>..." (retention
 *           index: one entry per received HopBatch, up to 128 hops each)
 *   roll:   "m<minute_ms be64>" -> one minute's rollup (JSON, mc_roll.c)
 *           "p<hour_ms be64><sender>\0<recipient>" -> ok u32, failed u32 (be)
 *           "s.applied" -> stream seq be64, stream created ns be64
 *           "s.conn", "s.fail", "s.brk" -> connectors, latest failures,
 *           breakers (JSON)
 *
 * Threads: the consumer's nats.c thread applies stream messages; the
 * breaker subscription's thread applies breaker changes; the main thread's
 * tick flushes (mc_flush) and sweeps; civetweb workers answer HTTP. All of
 * the rollup state and the pending write batch are guarded by mu; the trace
 * store is read through LMDB snapshots without it.
 */
#ifndef MC_H
#define MC_H

#include <pthread.h>
#include <stdatomic.h>
#include <stddef.h>
#include <stdint.h>

#include "bus.h"
#include "env.h"
#include "metrics.h"
#include "store.h"
#include "svc.h"

#define MC_NHOPS 17          /* HopKind values 0..16 */
#define MC_LATB 19           /* latency buckets: metric_latency_bounds (18) + Inf */
#define MC_NREASONS 6        /* expired shed rejected dead_lettered attempts_exhausted other */
#define MC_NCODES 16         /* auth failure codes kept apart; more fold into "other" */
#define MC_QPARTS 64         /* partitions with a queue history of their own */
#define MC_LANES 3           /* critical, normal, low */
#define MC_NFAIL 100         /* latest failures kept */
#define MC_NBRK 512          /* breakers kept */
#define MC_CONN_BUCKETS 4096
#define MC_NINST 64          /* relay-session instances tracked for queue gauges */
#define MC_SERIES_POINTS 300 /* most points of a series answer: a chart's width */

/* One minute of rollups. */
struct mc_min {
	uint64_t t;                       /* minute start (ms); 0 = unused */
	uint32_t in, out, failed;
	uint32_t fail[MC_NREASONS];
	uint32_t lat[MC_LATB];            /* e2e latency: accepted -> delivered */
	double lat_sum;                   /* seconds */
	uint32_t reconnects, connected;
	uint32_t auth[MC_NCODES];         /* by mc->codes index */
	uint32_t reg_n, reg_fail, reg_lat[MC_LATB];
	uint32_t nats_n, nats_lat[MC_LATB];
	uint32_t commit_n, commit_lat[MC_LATB];
	double commit_ops;                /* LMDB ops committed (sum of batch sizes) */
	int qset;                         /* a queue sample arrived this minute */
	uint32_t qlane[MC_LANES];         /* all partitions, per lane */
	uint32_t q[MC_QPARTS * MC_LANES]; /* per partition and lane (last sample) */
	uint64_t qbytes;                  /* all partitions */
	int dirty;
};

/* One connector as the gateways' stats tell it. */
struct mc_conn {
	char agent[129];
	uint64_t seen;                    /* the gateway stats message that named it last */
	struct mc_conn *hnext;            /* hash chain */
	char gateway[64];
	int connected;
	uint64_t since_ms;                /* connected since (gateway's word) */
	uint64_t first_ms, last_ms;       /* first and last stats that named it */
	uint64_t up_ms, tracked_ms;       /* connected time / observed time */
	uint32_t reconnects;
	struct mc_conn *next;
};

struct mc_fail {
	uint64_t ts_ms;
	char corr[129], mid[64], sender[129], recipient[129], reason[24], detail[160], service[32];
};

struct mc_brk {
	char service[32], instance[64], name[96], state[16];
	double failures;
	uint64_t next_probe_ms, updated_ms;
};

/* one relay-session instance's latest queue gauges */
struct mc_qinst {
	char instance[64];
	uint64_t ts_ms;
	uint32_t q[MC_QPARTS * MC_LANES];
	uint32_t qlane[MC_LANES];
	uint64_t qbytes;
};

struct mc_acc;
struct mc_pairs;

struct mc {
	/* settings */
	char *data_dir, *www_dir;
	long long map_size_mb;
	long long retention_h, roll_retention_h;
	long long sweep_batch;
	long long max_trace_hops;
	long long stream_max_age_h, stream_max_mb;
	long long flush_ms;
	int nosync;

	/* set by init, read-only afterwards */
	struct svc *svc;
	struct bus *bus;
	struct store *st;
	struct store_committer *com;
	unsigned db_hops, db_bytime, db_roll;
	struct metric *m_hops[MC_NHOPS];
	struct metric *m_bad, *m_store_err, *m_e2e, *m_skipped, *m_lost, *m_applied;
	natsSubscription *js_sub_ev, *js_sub_st;
	char www[1024];                   /* resolved dashboard folder */
	uint64_t next_sweep_ms;           /* main thread only */
	atomic_int store_full;            /* past the high mark: sweeping early for room */

	pthread_mutex_t mu;               /* everything below up to "any thread" */
	struct store_batch *pending;      /* writes not yet committed */
	uint64_t pending_since;           /* mono ms of its first write */
	uint64_t applied_ev, applied_st;  /* last stream seq applied, per consumer */
	uint64_t stream_created;          /* the stream's identity (creation time, ns) */
	struct mc_min *mins;              /* ring of nmin minutes */
	size_t nmin;
	char codes[MC_NCODES][32];        /* auth failure codes seen (index = mc_min.auth) */
	int ncodes;
	struct mc_pairs *pairs;           /* peer pairs per hour (mc_roll.c) */
	struct mc_conn *conns;
	struct mc_conn **conn_hash;       /* MC_CONN_BUCKETS chains */
	size_t nconns;
	uint64_t conn_now, conn_gen;      /* latest gateway stats time; message counter */
	int conns_dirty;
	struct mc_fail fails[MC_NFAIL];   /* ring, newest at fail_pos - 1 */
	size_t fail_pos, nfails;
	int fails_dirty;
	struct mc_brk brks[MC_NBRK];
	size_t nbrks;
	int brks_dirty;
	struct mc_qinst qinst[MC_NINST];
	size_t nqinst;
	struct mc_acc *acc;               /* when recent messages were accepted (mc_latency.c) */

	/* any thread */
	atomic_uint seq;
	atomic_ullong events, bad, store_errors, swept, traces_served, stats_in, flushes;
	atomic_ullong early_sweeps;            /* times the store filled past its high mark */
};

/* One trace: events sorted by ts_us, ties by hop; free with mc_trace_free. */
struct mc_trace {
	HopEvent **hops;
	size_t n;
};

/* --- mc_events.c: hop batches -> trace store and rollups --- */
/* mc_apply_hops - the HopBatch of stream message seq (mu held) */
void mc_apply_hops(struct mc *m, const unsigned char *data, size_t len, uint64_t seq);
/* mc_trace_load - one correlation ID's hops (at most max) into t;
 * CR_ERR_NOT_FOUND if there are none. Caller frees with mc_trace_free. */
enum cr_err mc_trace_load(struct mc *m, const char *correlation_id, size_t max, struct mc_trace *t);
void mc_trace_free(struct mc_trace *t);
/* mc_on_trace_get - bus handler for <P>.trace.get; msg borrowed */
void mc_on_trace_get(void *arg, natsMsg *msg);
/* mc_store_pressure - is the store past its high mark (main thread)? Then
 * mc_sweep drops the oldest traces before their time, until below the low mark */
int mc_store_pressure(struct mc *m);
/* mc_make_room - before a flush (mu held): drop the oldest traces while the
 * store is past its high mark */
void mc_make_room(struct mc *m);
/* mc_sweep - drop hops and rollups older than their retention (main thread) */
void mc_sweep(struct mc *m);

/* --- mc_stream.c: the stream consumer and the flush --- */
/* mc_stream_start - load the applied position and subscribe; 0 or -1 */
int mc_stream_start(struct mc *m);
/* mc_stream_stop - unsubscribe (drain) */
void mc_stream_stop(struct mc *m);
/* mc_flush - commit pending writes with the rollups and "applied" (mu held
 * by the caller; waits for the commit) */
void mc_flush(struct mc *m);
/* mc_batch - the pending batch, created on demand (mu held); NULL on ENOMEM */
struct store_batch *mc_batch(struct mc *m);
/* mc_on_breaker - bus handler for <P>.breaker.> */
void mc_on_breaker(void *arg, natsMsg *msg);

/* --- mc_roll.c: rollups --- */
int mc_roll_init(struct mc *m);
void mc_roll_fini(struct mc *m);
/* mc_roll_load - read rollups, connectors, failures, breakers from the store */
void mc_roll_load(struct mc *m);
/* mc_roll_write - put every dirty rollup into b (mu held) */
void mc_roll_write(struct mc *m, struct store_batch *b);
/* mc_min_at - the minute record holding time t_ms (mu held); NULL when
 * outside the kept window */
struct mc_min *mc_min_at(struct mc *m, uint64_t t_ms);
/* mc_roll_pair - count a message's outcome for (sender, recipient) in the hour of t_ms */
void mc_roll_pair(struct mc *m, const char *sender, size_t slen, const char *recipient,
    size_t rlen, uint64_t t_ms, int ok);
/* mc_roll_failure - remember a failure for "latest failures" */
void mc_roll_failure(struct mc *m, const struct mc_fail *f);
/* mc_roll_stats - apply one service's stats object (JSON text) */
void mc_roll_stats(struct mc *m, const char *json, size_t len);
/* mc_roll_breaker - apply one breaker state change (JSON object) */
void mc_roll_breaker(struct mc *m, const cJSON *o);
/* mc_roll_pairs_held - pair-hours in memory (mu held) */
size_t mc_roll_pairs_held(struct mc *m);
/* mc_roll_sweep - drop rollups older than roll_retention into b */
void mc_roll_sweep(struct mc *m, struct store_batch *b, uint64_t cutoff_ms);
/* JSON answers (caller frees with cJSON_Delete); window in seconds */
cJSON *mc_json_summary(struct mc *m, uint64_t window_s);
/* mc_json_series - at most MC_SERIES_POINTS points (the step grows to fit)
 * and the `parts` busiest partition/lane queue series */
cJSON *mc_json_series(struct mc *m, uint64_t window_s, uint64_t step_s, int parts);
cJSON *mc_json_latency(struct mc *m, uint64_t window_s);
/* orders of the pairs and connectors answers */
enum mc_sort {
	MC_SORT_HOUR,           /* pairs: newest hour first, then most failures */
	MC_SORT_FAILED,         /* pairs: most failures first */
	MC_SORT_VOLUME,         /* pairs: most messages first */
	MC_SORT_STATE,          /* connectors: disconnected first, then most reconnects */
	MC_SORT_AGENT,          /* connectors: by agent ID */
	MC_SORT_RECONNECTS,     /* connectors: most reconnects first */
	MC_SORT_UPTIME,         /* connectors: lowest uptime share first */
};
/* q (borrowed, may be NULL) keeps the pairs or connectors whose IDs contain it */
cJSON *mc_json_pairs(struct mc *m, uint64_t hours, size_t limit, const char *q, int sort);
cJSON *mc_json_connectors(struct mc *m, size_t limit, const char *q, int sort);
cJSON *mc_json_failures(struct mc *m, size_t limit);
cJSON *mc_json_breakers(struct mc *m);

/* --- mc_http.c --- */
/* mc_http_init - the routes: /v1/traces/, /v1/metrics/, the dashboard */
void mc_http_init(struct mc *m);
/* mc_metrics_text - the end-to-end latency histogram is a registered
 * metric; this appends the collector's gauges */
void mc_metrics_text(struct mc *m, struct strbuf *sb);
/* mc_on_summary - bus handler for <P>.metrics.summary (the CLI) */
void mc_on_summary(void *arg, natsMsg *msg);

/* --- mc_latency.c --- */
struct mc_acc *mc_latency_new(void);
void mc_latency_free(struct mc_acc *a);
/* mc_latency_accepted - remember the time of a message's
 * HOP_GATEWAY_ACCEPTED (mu held); mid is mlen bytes, borrowed */
void mc_latency_accepted(struct mc *m, const char *corr, const unsigned char *mid, size_t mlen,
    uint64_t ts_us);
/* mc_latency_delivered - accepted -> delivered for a message's
 * HOP_DELIVERED at ts_us (mu held); seconds, or -1 when unknown */
double mc_latency_delivered(struct mc *m, const char *corr, const unsigned char *mid, size_t mlen,
    uint64_t ts_us);

#endif
