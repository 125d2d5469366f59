/*
 * session_health.c - whether the partition stores can be written.
 *
 * A store whose last write txn failed (a full disk, an I/O error) makes
 * every enqueue for its partition a 503 "store failure". While any served
 * partition is in that state the replica says so: /readyz is 503,
 * /v1/status lists the partition with the store's error and since when,
 * and clawrelay_session_store_failing (main.c's /metrics) counts them. The tick
 * probes a failing store with one small durable write (a key in DB meta),
 * so the state clears as soon as writes succeed again, traffic or not.
 *
 * Main thread (the tick) probes and logs; the readiness check and the
 * status (civetweb's threads) read the stores' counters (atomic) under each
 * partition's mu, so they see a failure the moment a commit reports it.
 */
#include <stdio.h>

#include "log.h"
#include "session.h"
#include "util.h"

#define SESSION_PROBE_KEY "store_probe"

/* session_health_tick - probe failing stores, log changes (main thread) */
void
session_health_tick(struct session *s)
{
	for (uint32_t p = 0; p < s->nparts; p++) {
		struct session_part *pp = &s->parts[p];
		struct store_stats ss;
		int bad = 0;

		/* stores open and close on this thread (leases): pp->st is stable
		 * here, and the probe's sync does not hold up enqueues on mu */
		pthread_mutex_lock(&pp->mu);
		struct store *st = pp->open ? pp->st : NULL;
		pthread_mutex_unlock(&pp->mu);
		if (st != NULL) {
			store_stats(st, &ss);
			if (ss.last_rc != 0) {
				unsigned char v[8];
				session_be64_put(v, now_ms());
				/* the probe's own result updates last_rc */
				(void)store_put(st, pp->dbmeta, SESSION_PROBE_KEY,
				    sizeof(SESSION_PROBE_KEY) - 1, v, sizeof(v));
				store_stats(st, &ss);
			}
			bad = ss.last_rc != 0;
		}
		if (bad && !pp->store_failing_seen)
			log_error(NULL, "partition %u: store writes fail (%s): enqueues are refused "
			    "until they succeed", p, store_rc_text(ss.last_rc));
		else if (!bad && pp->store_failing_seen)
			log_info(NULL, "partition %u: store writes succeed again", p);
		pp->store_failing_seen = bad;
	}
}

/* the store counters of a served partition (last_rc 0 when not served) */
static void
served_stats(struct session_part *pp, struct store_stats *ss)
{
	pthread_mutex_lock(&pp->mu);
	ss->last_rc = 0;
	if (pp->open && pp->st != NULL)
		store_stats(pp->st, ss);
	pthread_mutex_unlock(&pp->mu);
}

/* session_health_status - the failing stores, for /v1/status */
void
session_health_status(struct session *s, cJSON *obj)
{
	cJSON *arr = cJSON_AddArrayToObject(obj, "storeErrors");

	for (uint32_t p = 0; p < s->nparts; p++) {
		struct store_stats ss;

		served_stats(&s->parts[p], &ss);
		if (ss.last_rc == 0)
			continue;
		cJSON *o = cJSON_CreateObject();
		cJSON_AddNumberToObject(o, "partition", p);
		cJSON_AddStringToObject(o, "error", store_rc_text(ss.last_rc));
		cJSON_AddNumberToObject(o, "sinceMs", (double)ss.failing_since_ms);
		cJSON_AddItemToArray(arr, o);
	}
	cJSON_AddNumberToObject(obj, "storeFailing", session_health_failing(s));
}

/* session_health_failing - served partitions whose last write failed (any thread) */
int
session_health_failing(struct session *s)
{
	int n = 0;

	for (uint32_t p = 0; p < s->nparts; p++) {
		struct store_stats ss;

		served_stats(&s->parts[p], &ss);
		n += ss.last_rc != 0;
	}
	return n;
}
