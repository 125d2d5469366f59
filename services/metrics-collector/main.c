/*
 * main.c - clawrelay-metrics-collector: the hop stream -> trace timelines
 * and rollups in LMDB (with retention), served on <P>.trace.get,
 * GET /v1/traces/{id}, JSON under /v1/metrics/..., a dashboard page (/),
 * <P>.metrics.summary (the CLI) and /metrics.
 *
 * Threads: init/tick (flush, retention sweep)/drain/fini on the main thread;
 * the stream's two consumers, trace and summary requests and breaker
 * changes on nats.c threads; writes on the store's committer thread; HTTP
 * on civetweb workers. Shared state: the store (thread-safe, see store.h),
 * the rollups under mc->mu (mc.h), and atomics.
 */
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "log.h"
#include "mc.h"
#include "util.h"

static struct mc state;

static const struct cfg_item mc_cfg[] = {
	{ "DATA_DIR", CFG_STR, "./data/mc", 1, 4096,
	  "directory of the trace store (LMDB)", &state.data_dir },
	{ "MAP_SIZE_MB", CFG_INT, "1024", 64, 1048576,
	  "largest size of the trace store in MiB (LMDB map size)", &state.map_size_mb },
	{ "TRACE_RETENTION_H", CFG_INT, "168", 1, 87600,
	  "hours a hop event is kept after it was received", &state.retention_h },
	{ "ROLLUP_RETENTION_H", CFG_INT, "168", 1, 720,
	  "hours of per-minute rollups (dashboard history) kept", &state.roll_retention_h },
	{ "STREAM_MAX_AGE_H", CFG_INT, "24", 1, 8760,
	  "the hop stream keeps events this long for a collector that is away", &state.stream_max_age_h },
	{ "STREAM_MAX_MB", CFG_INT, "1024", 16, 1048576,
	  "the hop stream keeps at most this many MiB (oldest dropped first)", &state.stream_max_mb },
	{ "FLUSH_MS", CFG_INT, "250", 10, 10000,
	  "hops and rollups are committed at least this often", &state.flush_ms },
	{ "WWW_DIR", CFG_STR, "", 0, 1000,
	  "folder of the dashboard's files (default: services/metrics-collector/www beside the "
	  "binary's bin/, or /usr/share/clawrelay/www)", &state.www_dir },
	{ "SWEEP_BATCH", CFG_INT, "20000", 100, 1000000,
	  "hop events dropped per retention-sweep txn", &state.sweep_batch },
	{ "TRACE_MAX_HOPS", CFG_INT, "1000", 10, 100000,
	  "most hops returned for one correlation ID", &state.max_trace_hops },
	{ "MC_NOSYNC", CFG_BOOL, "false", 0, 0,
	  "do not fsync trace commits (faster; a machine crash may lose recent hops)",
	  &state.nosync },
};

/* the dashboard's folder: WWW_DIR, or the source tree's beside bin/, or
 * the installed one */
static void
find_www(struct mc *m)
{
	char exe[PATH_MAX], *slash;
	ssize_t n;

	if (m->www_dir != NULL && *m->www_dir) {
		snprintf(m->www, sizeof(m->www), "%s", m->www_dir);
		return;
	}
	snprintf(m->www, sizeof(m->www), "/usr/share/clawrelay/www");
	n = readlink("/proc/self/exe", exe, sizeof(exe) - 1);
	if (n <= 0)
		return;
	exe[n] = '\0';
	if ((slash = strrchr(exe, '/')) == NULL)
		return;
	*slash = '\0';
	if ((slash = strrchr(exe, '/')) == NULL)
		return;
	*slash = '\0';
	{
		char p[PATH_MAX + 64];
		snprintf(p, sizeof(p), "%s/services/metrics-collector/www/index.html", exe);
		if (access(p, R_OK) == 0)
			snprintf(m->www, sizeof(m->www), "%.900s/services/metrics-collector/www", exe);
	}
}

static int
mc_init(struct svc *s, void *st)
{
	struct mc *m = st;
	char subj[256];
	enum cr_err err;

	m->svc = s;
	m->bus = svc_bus(s);
	pthread_mutex_init(&m->mu, NULL);
	for (int i = 0; i < MC_NHOPS; i++) {
		char labels[64];
		snprintf(labels, sizeof(labels), "hop=\"%s\"", env_hop_name(i));
		m->m_hops[i] = metric_counter("clawrelay_hop_events_total", labels,
		    "hop events received by kind");
	}
	m->m_bad = metric_counter("clawrelay_mc_bad_events_total", NULL,
	    "hop events, stats and breaker messages dropped as malformed");
	m->m_store_err = metric_counter("clawrelay_mc_store_errors_total", NULL,
	    "commits of the collector's store that failed");
	m->m_e2e = metric_histogram("clawrelay_e2e_latency_seconds", NULL,
	    "gateway accepted to delivered (hook or webhook answered), per message", NULL, 0);
	m->m_skipped = metric_counter("clawrelay_mc_stream_skipped_total", NULL,
	    "stream messages already applied (re-delivered), skipped");
	m->m_lost = metric_counter("clawrelay_mc_events_lost_total", NULL,
	    "stream sequences dropped by the stream's limits before the collector read them");
	m->m_applied = metric_gauge("clawrelay_mc_stream_applied_seq", NULL,
	    "the last stream sequence applied");
	find_www(m);
	err = store_open(m->data_dir, (size_t)m->map_size_mb << 20, 4,
	    m->nosync ? STORE_NOSYNC : 0, &m->st);
	if (err != CR_OK) {
		fprintf(stderr, "clawrelay-metrics-collector: cannot open CLAWRELAY_DATA_DIR = %s: %s\n",
		    m->data_dir, cr_strerror(err));
		return 1;
	}
	if (store_db(m->st, "hops", &m->db_hops) != CR_OK ||
	    store_db(m->st, "bytime", &m->db_bytime) != CR_OK ||
	    store_db(m->st, "roll", &m->db_roll) != CR_OK)
		return 1;
	m->com = store_committer_new(m->st, 100000, 2000);
	m->acc = mc_latency_new();
	if (m->com == NULL || m->acc == NULL || mc_roll_init(m) != 0)
		return 1;
	mc_roll_load(m);
	if (bus_subj(m->bus, subj, sizeof(subj), "trace.get") < 0 ||
	    bus_subscribe(m->bus, subj, "mc", mc_on_trace_get, m) != CR_OK)
		return 1;
	if (bus_subj(m->bus, subj, sizeof(subj), "metrics.summary") < 0 ||
	    bus_subscribe(m->bus, subj, "mc", mc_on_summary, m) != CR_OK)
		return 1;
	if (bus_subj(m->bus, subj, sizeof(subj), "breaker.>") < 0 ||
	    bus_subscribe(m->bus, subj, NULL, mc_on_breaker, m) != CR_OK)
		return 1;
	if (mc_stream_start(m) != 0)
		return 1;
	mc_http_init(m);
	log_info(NULL, "collecting into %s (traces %lld h, rollups %lld h); dashboard from %s",
	    m->data_dir, m->retention_h, m->roll_retention_h, m->www);
	return 0;
}

static void
mc_tick(struct svc *s, void *st)
{
	struct mc *m = st;

	pthread_mutex_lock(&m->mu);
	if (m->pending != NULL && mono_ms() - m->pending_since >= (uint64_t)m->flush_ms)
		mc_flush(m);
	pthread_mutex_unlock(&m->mu);
	/* a store filling up is looked at every tick, not only when a sweep is due */
	if (now_ms() >= m->next_sweep_ms || mc_store_pressure(m))
		mc_sweep(m);
}

static void
mc_status(struct svc *s, void *st, cJSON *obj)
{
	struct mc *m = st;
	struct store_stats ss;
	size_t nhops = 0;
	cJSON *o;

	o = cJSON_AddObjectToObject(obj, "events");
	cJSON_AddNumberToObject(o, "received", (double)atomic_load(&m->events));
	cJSON_AddNumberToObject(o, "statsReceived", (double)atomic_load(&m->stats_in));
	cJSON_AddNumberToObject(o, "malformed", (double)atomic_load(&m->bad));
	cJSON_AddNumberToObject(o, "storeErrors", (double)atomic_load(&m->store_errors));
	cJSON_AddNumberToObject(o, "skipped", (double)metric_value(m->m_skipped));
	cJSON_AddNumberToObject(o, "lost", (double)metric_value(m->m_lost));
	pthread_mutex_lock(&m->mu);
	cJSON_AddNumberToObject(o, "appliedEventsSeq", (double)m->applied_ev);
	cJSON_AddNumberToObject(o, "appliedStatsSeq", (double)m->applied_st);
	cJSON_AddNumberToObject(o, "pairHoursInMemory", (double)mc_roll_pairs_held(m));
	cJSON_AddNumberToObject(o, "connectorsKnown", (double)m->nconns);
	pthread_mutex_unlock(&m->mu);
	o = cJSON_AddObjectToObject(obj, "store");
	cJSON_AddStringToObject(o, "dataDir", m->data_dir);
	if (m->st != NULL) {
		store_count(m->st, m->db_hops, &nhops);
		store_stats(m->st, &ss);
		cJSON_AddNumberToObject(o, "hops", (double)nhops);
		cJSON_AddNumberToObject(o, "commits", (double)ss.commits);
		cJSON_AddNumberToObject(o, "lastCommitUs", (double)ss.last_commit_us);
		cJSON_AddNumberToObject(o, "lastBatchOps", (double)ss.last_batch_ops);
	}
	cJSON_AddNumberToObject(o, "swept", (double)atomic_load(&m->swept));
	cJSON_AddNumberToObject(o, "fullSweeps", (double)atomic_load(&m->early_sweeps));
	if (m->st != NULL) {
		const unsigned dbis[] = { m->db_hops, m->db_bytime, m->db_roll };
		uint64_t used = 0, map = 0;

		store_bytes(m->st, dbis, 3, &used, &map);
		cJSON_AddNumberToObject(o, "usedBytes", (double)used);
		cJSON_AddNumberToObject(o, "mapBytes", (double)map);
	}
	cJSON_AddNumberToObject(o, "retentionHours", (double)m->retention_h);
	cJSON_AddNumberToObject(o, "rollupRetentionHours", (double)m->roll_retention_h);
	cJSON_AddNumberToObject(obj, "tracesServed", (double)atomic_load(&m->traces_served));
}

static void
mc_metrics(struct svc *s, void *st, struct strbuf *sb)
{
	mc_metrics_text(st, sb);
}

static void
mc_drain(struct svc *s, void *st)
{
	struct mc *m = st;

	/* no more stream messages; what was applied is committed */
	mc_stream_stop(m);
	bus_drain_subs(m->bus);
	pthread_mutex_lock(&m->mu);
	mc_flush(m);
	pthread_mutex_unlock(&m->mu);
}

static void
mc_fini(struct svc *s, void *st)
{
	struct mc *m = st;

	mc_stream_stop(m);	/* a failed init never drained */
	store_batch_free(m->pending);
	m->pending = NULL;
	store_committer_free(m->com);
	m->com = NULL;
	store_close(m->st);
	m->st = NULL;
	mc_latency_free(m->acc);
	m->acc = NULL;
	mc_roll_fini(m);
	pthread_mutex_destroy(&m->mu);
}

static const struct svc_def mc_def = {
	.name = "metrics-collector",
	.summary = "hop events to trace timelines and metrics",
	.default_port = "8084",
	.cfg = mc_cfg,
	.ncfg = sizeof(mc_cfg) / sizeof(mc_cfg[0]),
	.init = mc_init,
	.tick = mc_tick,
	.status = mc_status,
	.metrics = mc_metrics,
	.drain = mc_drain,
	.fini = mc_fini,
};

int
main(int argc, char **argv)
{
	return svc_main(argc, argv, &mc_def, &state);
}
