/*
 * main.c - clawrelay-metrics-collector: hop events -> trace timelines in
 * LMDB (with retention), served on <P>.trace.get and GET /v1/traces/{id};
 * hop counters and an end-to-end latency histogram on /metrics.
 *
 * Threads: init/tick (retention sweep)/drain/fini on the main thread;
 * events and trace requests on two nats.c subscription threads; writes on
 * the store's committer thread; HTTP on civetweb workers. Shared state is
 * the store (thread-safe by design, see store.h) and atomics.
 */
#include <stdio.h>
#include <stdlib.h>

#include "log.h"
#include "mc.h"
#include "util.h"

static struct mc state;

static const struct cfg_item mc_cfg[] = {
	{ "DATA_DIR", CFG_STR, "./data/mc", 1, 4096,
	  "directory of the trace store (LMDB)", &state.data_dir },
	{ "MAP_SIZE_MB", CFG_INT, "1024", 16, 1048576,
	  "largest size of the trace store in MiB (LMDB map size)", &state.map_size_mb },
	{ "TRACE_RETENTION_H", CFG_INT, "168", 1, 87600,
	  "hours a hop event is kept after it was received", &state.retention_h },
	{ "SWEEP_BATCH", CFG_INT, "20000", 100, 1000000,
	  "hop events dropped per retention-sweep txn", &state.sweep_batch },
	{ "TRACE_MAX_HOPS", CFG_INT, "1000", 10, 100000,
	  "most hops returned for one correlation ID", &state.max_trace_hops },
	{ "MC_NOSYNC", CFG_BOOL, "false", 0, 0,
	  "do not fsync trace commits (faster; a machine crash may lose recent hops)",
	  &state.nosync },
};

static int
mc_init(struct svc *s, void *st)
{
	struct mc *m = st;
	char subj[256];
	enum cr_err err;

	m->svc = s;
	m->bus = svc_bus(s);
	for (int i = 0; i < MC_NHOPS; i++) {
		char labels[64];
		snprintf(labels, sizeof(labels), "hop=\"%s\"", env_hop_name(i));
		m->m_hops[i] = metric_counter("clawrelay_hop_events_total", labels,
		    "hop events received by kind");
	}
	m->m_bad = metric_counter("clawrelay_mc_bad_events_total", NULL,
	    "hop events dropped as malformed");
	m->m_store_err = metric_counter("clawrelay_mc_store_errors_total", NULL,
	    "hop events the trace store failed to commit");
	err = store_open(m->data_dir, (size_t)m->map_size_mb << 20, 4,
	    m->nosync ? STORE_NOSYNC : 0, &m->st);
	if (err != CR_OK) {
		fprintf(stderr, "clawrelay-metrics-collector: cannot open CLAWRELAY_DATA_DIR = %s: %s\n",
		    m->data_dir, cr_strerror(err));
		return 1;
	}
	if (store_db(m->st, "hops", &m->db_hops) != CR_OK ||
	    store_db(m->st, "bytime", &m->db_bytime) != CR_OK)
		return 1;
	m->com = store_committer_new(m->st, 10000, 2000);
	m->acc = mc_latency_new();
	if (m->com == NULL || m->acc == NULL)
		return 1;
	if (bus_subj(m->bus, subj, sizeof(subj), "events.>") < 0 ||
	    bus_subscribe(m->bus, subj, NULL, mc_on_event, m) != CR_OK)
		return 1;
	if (bus_subj(m->bus, subj, sizeof(subj), "trace.get") < 0 ||
	    bus_subscribe(m->bus, subj, "mc", mc_on_trace_get, m) != CR_OK)
		return 1;
	svc_route(s, "/v1/traces/", mc_http_trace, m);
	log_info(NULL, "collecting hop events into %s (retention %lld h)", m->data_dir,
	    m->retention_h);
	return 0;
}

static void
mc_tick(struct svc *s, void *st)
{
	struct mc *m = st;

	if (now_ms() >= m->next_sweep_ms)
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
	cJSON_AddNumberToObject(o, "malformed", (double)atomic_load(&m->bad));
	cJSON_AddNumberToObject(o, "storeErrors", (double)atomic_load(&m->store_errors));
	cJSON_AddNumberToObject(o, "pendingCommits", (double)atomic_load(&m->pending_commits));
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
	cJSON_AddNumberToObject(o, "retentionHours", (double)m->retention_h);
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

	/* no more events; what is submitted is committed by committer_free */
	bus_drain_subs(m->bus);
}

static void
mc_fini(struct svc *s, void *st)
{
	struct mc *m = st;

	store_committer_free(m->com);
	m->com = NULL;
	store_close(m->st);
	m->st = NULL;
	mc_latency_free(m->acc);
	m->acc = NULL;
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
