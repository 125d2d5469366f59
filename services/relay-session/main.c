/*
 * main.c - clawrelay-relay-session: owns recipients' durable queues.
 *
 * Partitions 0..PARTITIONS-1 are served under leases (session_lease.c);
 * each served partition has its LMDB, its subscription to
 * <P>.session.<p>.{enqueue,connect,disconnect} and its group committer
 * (session_part.c); enqueue is in session_queue.c, dispatch in
 * session_dispatch.c, periodic sweeps in session_sweep.c.
 *
 * Threads: init, tick, drain and fini run on the main thread; status and
 * metrics on civetweb workers, which take each partition's mu to read it.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "log.h"
#include "metrics.h"
#include "session.h"

static struct session state;

static const struct cfg_item session_cfg[] = {
	{ "DATA_DIR", CFG_STR, "./data/session", 0, 3000,
	  "directory holding one LMDB environment per partition (p<p>/)", &state.cfg.data_dir },
	{ "MAP_SIZE_MB", CFG_INT, "1024", 16, 1048576,
	  "LMDB map size of each partition, MiB", &state.cfg.map_size_mb },
	{ "LEASE_MS", CFG_INT, "3000", 300, 600000,
	  "partition lease time (KV TTL); renewed every third of it", &state.cfg.lease_ms },
	{ "QUEUE_MAX", CFG_INT, "100000", 1, 1000000000,
	  "messages queued per recipient before queue_full (low is shed first)", &state.cfg.queue_max },
	{ "QUEUE_MAX_BYTES", CFG_INT, "1073741824", 1024, 1099511627776LL,
	  "bytes queued per recipient before queue_full", &state.cfg.queue_max_bytes },
	{ "INFLIGHT", CFG_INT, "32", 1, 4096,
	  "dispatch window per agent (messages sent and not yet answered)", &state.cfg.inflight },
	{ "STRICT_ORDER", CFG_BOOL, "0", 0, 0,
	  "at most one message per agent and lane out at a time (order end to end, slower)",
	  &state.cfg.strict_order },
	{ "DISPATCH_TIMEOUT_MS", CFG_INT, "10000", 50, 600000,
	  "time limit of one dispatch request to delivery", &state.cfg.dispatch_timeout_ms },
	{ "BACKOFF_BASE_MS", CFG_INT, "200", 1, 3600000,
	  "first retry delay after a failed attempt (doubles, with jitter)", &state.cfg.backoff_base_ms },
	{ "BACKOFF_MAX_MS", CFG_INT, "30000", 1, 86400000,
	  "longest retry delay", &state.cfg.backoff_max_ms },
	{ "MAX_ATTEMPTS", CFG_INT, "0", 0, 1000000,
	  "attempts before a message fails as attempts_exhausted (0: until its TTL)",
	  &state.cfg.max_attempts },
	{ "OFFLINE_PROBE_MS", CFG_INT, "30000", 100, 86400000,
	  "while an agent is offline, probe it with one message this often", &state.cfg.offline_probe_ms },
	{ "IDEM_WINDOW_S", CFG_INT, "86400", 1, 31536000,
	  "how long (sender, idempotency key) is remembered", &state.cfg.idem_window_s },
	{ "DEFAULT_TTL_S", CFG_INT, "86400", 1, 604800,
	  "TTL of a message that arrives without expires_at_ms", &state.cfg.default_ttl_s },
	{ "COMMIT_DELAY_US", CFG_INT, "0", 0, 100000,
	  "how long a group commit may wait to fill (0: groups form during the previous fsync)",
	  &state.cfg.commit_delay_us },
	{ "SWEEP_BATCH", CFG_INT, "512", 1, 1000000,
	  "queue/idempotency entries examined per partition per tick", &state.cfg.sweep_batch },
	{ "NONCE_TTL_S", CFG_INT, "600", 1, 31536000,
	  "how long a request nonce (sender, X-Claw-Nonce) is remembered for the replay check "
	  "(at least twice the gateway's clock window)", &state.cfg.nonce_ttl_s },
	{ "DELETE_DELAY_MS", CFG_INT, "20", 0, 10000,
	  "a delivered message's delete waits at most this long to ride with the next enqueue "
	  "commit instead of its own fsync (0: own durable commit)", &state.cfg.delete_delay_ms },
	{ "SHED_HIGH_WATER_PCT", CFG_INT, "90", 1, 100,
	  "share of QUEUE_MAX (and QUEUE_MAX_BYTES) above which new low-priority messages are "
	  "refused and the oldest queued low ones are shed for normal and critical ones",
	  &state.cfg.shed_high_water_pct },
	{ "PAIR_QUEUE_MAX", CFG_INT, "10000", 1, 1000000000,
	  "messages one sender may have queued for one recipient (trust add --queue-max overrides)",
	  &state.cfg.pair_queue_max },
	{ "PAIR_QUEUE_MAX_BYTES", CFG_INT, "104857600", 1024, 1099511627776LL,
	  "bytes one sender may have queued for one recipient", &state.cfg.pair_queue_max_bytes },
	{ "PAIR_RATE_PER_MIN", CFG_INT, "60", 0, 100000000,
	  "messages per minute one sender may send one recipient (token bucket; 0: no limit; "
	  "trust add --rate overrides)", &state.cfg.pair_rate_per_min },
	{ "PAIR_BURST", CFG_INT, "0", 0, 100000000,
	  "token bucket size of the pair rate limit (0: one minute's worth)", &state.cfg.pair_burst },
	{ "DELAY_WARN_S", CFG_INT, "3600", 0, 604800,
	  "a message still queued this long after acceptance gets one delayed notice "
	  "(<P>.notify.delayed.<sender>); 0: never", &state.cfg.delay_warn_s },
	BRKSET_CFG_ITEMS(state.cfg.brk_cfg),
	{ "FSYNC", CFG_BOOL, "1", 0, 0,
	  "fsync every group commit (0 only for tests and benchmarks)", &state.cfg.fsync },
};

static int
session_init(struct svc *svc, void *arg)
{
	struct session *s = arg;
	char lab[64], subj[256];

	s->svc = svc;
	s->bus = svc_bus(svc);
	(void)bus_notice_stream(s->bus, NULL);	/* failures wait there for the notifier */
	s->nparts = svc_partitions(svc);
	if (s->nparts == 0 || s->nparts > 1024) {
		log_error(NULL, "CLAWRELAY_PARTITIONS must be 1..1024");
		return 1;
	}
	if (bus_subj(s->bus, s->dispatch_subj, sizeof(s->dispatch_subj), "delivery.dispatch") < 0)
		return 1;
	if ((s->brk = brkset_new(s->bus, "relay-session", svc_instance(svc), &s->cfg.brk_cfg)) == NULL ||
	    (s->dlv_brk = brkset_get(s->brk, "delivery", "")) == NULL)
		return 1;
	/* delivery's destination breakers: hold agents whose destination fails */
	if (bus_subj(s->bus, subj, sizeof(subj), "breaker.delivery") < 0 ||
	    bus_subscribe(s->bus, subj, NULL, session_on_breaker, s) != CR_OK) {
		log_error(NULL, "cannot subscribe to delivery's breaker events");
		return 1;
	}
	s->parts = calloc(s->nparts, sizeof(*s->parts));
	if (s->parts == NULL)
		return 1;
	for (uint32_t p = 0; p < s->nparts; p++) {
		struct session_part *pp = &s->parts[p];
		pthread_mutex_init(&pp->mu, NULL);
		pthread_mutex_init(&pp->send_mu, NULL);
		pp->s = s;
		pp->idx = p;
		snprintf(lab, sizeof(lab), "partition=\"%u\"", p);
		pp->m_depth = metric_gauge("clawrelay_session_queue_depth", lab,
		    "messages queued in the partition (served partitions only)");
		pp->m_inflight = metric_gauge("clawrelay_session_inflight", lab,
		    "dispatch requests awaiting an answer");
	}
	log_info(NULL, "relay-session: %u partitions, data in %s, lease %lld ms, window %lld%s",
	    s->nparts, s->cfg.data_dir, s->cfg.lease_ms, s->cfg.inflight,
	    s->cfg.strict_order ? " (strict order)" : "");
	if (!s->cfg.fsync)
		log_warn(NULL, "CLAWRELAY_FSYNC=0: accepted messages may be lost on a crash");
	/* take partitions now rather than one tick later */
	session_lease_tick(s);
	return 0;
}

static void
session_tick(struct svc *svc, void *arg)
{
	struct session *s = arg;

	session_lease_tick(s);
	for (uint32_t p = 0; p < s->nparts; p++)
		if (s->parts[p].leased)
			session_sweep(s, &s->parts[p]);
	session_metrics_tick(s);
	session_health_tick(s);
}

static int
session_ready(struct svc *svc, void *arg)
{
	struct session *s = arg;

	/* ready once the lease bucket answers (owning zero partitions is fine
	 * for a standby replica) and while every served store can be written */
	return s->leases != NULL && session_health_failing(s) == 0;
}

static void
session_status(struct svc *svc, void *arg, cJSON *obj)
{
	struct session *s = arg;
	cJSON *parts = cJSON_AddArrayToObject(obj, "partitions");
	uint64_t depth = 0, inflight = 0, online = 0, owned = 0;

	for (uint32_t p = 0; p < s->nparts; p++) {
		struct session_part *pp = &s->parts[p];
		cJSON *o;
		uint64_t on = 0, agents = 0;

		pthread_mutex_lock(&pp->mu);
		if (!pp->open) {
			pthread_mutex_unlock(&pp->mu);
			continue;
		}
		for (int i = 0; i < SESSION_AGENT_BUCKETS; i++)
			for (struct session_agent *a = pp->agents[i]; a; a = a->next) {
				agents++;
				on += a->presence == AG_ONLINE;
			}
		o = cJSON_CreateObject();
		cJSON_AddNumberToObject(o, "partition", p);
		cJSON_AddNumberToObject(o, "queueDepth", (double)pp->depth);
		cJSON_AddNumberToObject(o, "inflight", (double)pp->inflight);
		cJSON_AddNumberToObject(o, "agents", (double)agents);
		cJSON_AddNumberToObject(o, "agentsOnline", (double)on);
		depth += pp->depth;
		inflight += pp->inflight;
		online += on;
		owned++;
		pthread_mutex_unlock(&pp->mu);
		cJSON_AddItemToArray(parts, o);
	}
	cJSON_AddNumberToObject(obj, "partitionsOwned", (double)owned);
	cJSON_AddNumberToObject(obj, "partitionsTotal", s->nparts);
	cJSON_AddNumberToObject(obj, "otherReplicasSeen", s->others_seen);
	cJSON_AddNumberToObject(obj, "queueDepth", (double)depth);
	cJSON_AddNumberToObject(obj, "inflight", (double)inflight);
	cJSON_AddNumberToObject(obj, "agentsOnline", (double)online);
	session_health_status(s, obj);
	session_books_status(s, obj);
	if (s->brk != NULL)
		brkset_status(s->brk, obj);
}

static void
session_metrics(struct svc *svc, void *arg, struct strbuf *sb)
{
	struct session *s = arg;
	uint64_t commits = 0, fails = 0, ops = 0, batches = 0, syncs = 0, lazy = 0, lazyc = 0;
	int failing = 0;
	uint32_t owned = 0;

	sb_printf(sb, "# HELP clawrelay_session_last_commit_ops ops in the last group commit\n"
	    "# TYPE clawrelay_session_last_commit_ops gauge\n");
	for (uint32_t p = 0; p < s->nparts; p++) {
		struct session_part *pp = &s->parts[p];
		struct store_stats ss;

		pthread_mutex_lock(&pp->mu);
		if (pp->open && pp->st != NULL) {
			store_stats(pp->st, &ss);
			commits += ss.commits;
			syncs += ss.syncs;
			lazy += ss.lazy_batches;
			lazyc += ss.lazy_commits;
			fails += ss.commit_failures;
			failing += ss.last_rc != 0;
			ops += ss.ops;
			batches += ss.batches;
			owned++;
			sb_printf(sb, "clawrelay_session_last_commit_ops{partition=\"%u\"} %llu\n", p,
			    (unsigned long long)ss.last_batch_ops);
		}
		pthread_mutex_unlock(&pp->mu);
	}
	/* per open period of the partitions served now */
	sb_printf(sb, "# HELP clawrelay_session_commits group commits (txn + fsync)\n"
	    "# TYPE clawrelay_session_commits gauge\nclawrelay_session_commits %llu\n"
	    "# HELP clawrelay_session_store_failing served partitions whose store's last write "
	    "failed (full disk, I/O error)\n"
	    "# TYPE clawrelay_session_store_failing gauge\nclawrelay_session_store_failing %d\n"
	    "# HELP clawrelay_session_commit_failures failed commits\n"
	    "# TYPE clawrelay_session_commit_failures gauge\nclawrelay_session_commit_failures %llu\n"
	    "# HELP clawrelay_session_commit_ops puts/deletes committed\n"
	    "# TYPE clawrelay_session_commit_ops gauge\nclawrelay_session_commit_ops %llu\n"
	    "# HELP clawrelay_session_commit_batches batches acknowledged\n"
	    "# TYPE clawrelay_session_commit_batches gauge\nclawrelay_session_commit_batches %llu\n"
	    "# HELP clawrelay_session_partitions_owned partitions served\n"
	    "# TYPE clawrelay_session_partitions_owned gauge\nclawrelay_session_partitions_owned %u\n"
	    "# HELP clawrelay_session_commit_syncs commits synced to disk (fdatasync)\n"
	    "# TYPE clawrelay_session_commit_syncs gauge\nclawrelay_session_commit_syncs %llu\n"
	    "# HELP clawrelay_session_commit_lazy_batches batches committed without a sync of "
	    "their own (deletes, sweeps)\n"
	    "# TYPE clawrelay_session_commit_lazy_batches gauge\n"
	    "clawrelay_session_commit_lazy_batches %llu\n"
	    "# HELP clawrelay_session_commits_lazy_only commits that held lazy batches only\n"
	    "# TYPE clawrelay_session_commits_lazy_only gauge\n"
	    "clawrelay_session_commits_lazy_only %llu\n",
	    (unsigned long long)commits, failing, (unsigned long long)fails, (unsigned long long)ops,
	    (unsigned long long)batches, owned, (unsigned long long)syncs,
	    (unsigned long long)lazy, (unsigned long long)lazyc);
	session_books_metrics(s, sb);
	if (s->brk != NULL)
		brkset_metrics(s->brk, sb);
}

static void
session_drain(struct svc *svc, void *arg)
{
	struct session *s = arg;

	log_info(NULL, "draining: giving partitions back");
	session_lease_release_all(s);
}

static void
session_fini(struct svc *svc, void *arg)
{
	struct session *s = arg;

	if (s->parts != NULL) {
		for (uint32_t p = 0; p < s->nparts; p++) {
			session_part_close(s, &s->parts[p]);
			pthread_mutex_destroy(&s->parts[p].mu);
			pthread_mutex_destroy(&s->parts[p].send_mu);
		}
		free(s->parts);
		s->parts = NULL;
	}
	brkset_free(s->brk);
	s->brk = NULL;
}

static const struct svc_def session_def = {
	.name = "relay-session",
	.summary = "durable per-recipient queues: enqueue, priority lanes, TTL, dispatch, reconnect",
	.default_port = "8081",
	.cfg = session_cfg,
	.ncfg = sizeof(session_cfg) / sizeof(session_cfg[0]),
	.init = session_init,
	.tick = session_tick,
	.ready = session_ready,
	.status = session_status,
	.metrics = session_metrics,
	.drain = session_drain,
	.fini = session_fini,
};

int
main(int argc, char **argv)
{
	return svc_main(argc, argv, &session_def, &state);
}
