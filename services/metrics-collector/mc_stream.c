/*
 * mc_stream.c - reading the hop stream exactly once, and the flush.
 *
 * The stream "<P>_events" holds hop batches (<P>.events.<service>) and
 * stats (<P>.stats.<service>). A consumer's filter must lie inside the
 * stream's subjects, so there are two ordered consumers, one per subject
 * space, each starting after the last stream sequence of its kind that the
 * store applied. An ordered consumer is ephemeral: the position lives in
 * this collector's LMDB, in the same txn as what the messages changed, so
 * every replica (with its own store) sees every event once, and a stopped
 * collector goes on where it stopped. A message at or below the applied
 * sequence (a consumer recreated after a reconnect re-delivers) is skipped.
 * If the stream was recreated (its creation time differs from the one
 * stored) the positions start over; if the stream no longer holds what
 * comes after a position (its limits dropped it while the collector was
 * away), the gap is logged and counted in clawrelay_mc_events_lost_total.
 *
 * Threads: each consumer calls back on its own nats.c thread and applies
 * under mu; mc_flush runs with mu held, from the main thread's tick or from
 * a consumer when the pending batch is large.
 */
#include <stdlib.h>
#include <string.h>

#include "hop.h"
#include "log.h"
#include "mc.h"
#include "util.h"

#define MC_FLUSH_OPS 20000      /* a pending batch this large is committed at once */

static const char applied_key[] = "s.applied";

static void
put64(unsigned char *p, uint64_t v)
{
	for (int i = 7; i >= 0; i--, v >>= 8)
		p[i] = (unsigned char)v;
}

static uint64_t
get64(const unsigned char *p)
{
	uint64_t v = 0;
	for (int i = 0; i < 8; i++)
		v = v << 8 | p[i];
	return v;
}

/* mc_batch - the pending batch, created on demand (mu held) */
struct store_batch *
mc_batch(struct mc *m)
{
	if (m->pending == NULL) {
		m->pending = store_batch_new();
		m->pending_since = mono_ms();
	}
	return m->pending;
}

/* mc_flush - commit the pending writes, the dirty rollups and the stream
 * positions in one txn (mu held; waits for the commit) */
void
mc_flush(struct mc *m)
{
	struct store_batch *b = mc_batch(m);
	unsigned char pos[24];
	enum cr_err err;

	if (b == NULL)
		return;
	m->pending = NULL;
	mc_roll_write(m, b);
	put64(pos, m->applied_ev);
	put64(pos + 8, m->applied_st);
	put64(pos + 16, m->stream_created);
	if (store_batch_put(b, m->db_roll, applied_key, sizeof(applied_key) - 1, pos,
	    sizeof(pos)) != CR_OK) {
		store_batch_free(b);
		return;
	}
	mc_make_room(m);
	err = store_committer_submit_wait(m->com, b);
	atomic_fetch_add(&m->flushes, 1);
	if (err != CR_OK) {
		if (atomic_fetch_add(&m->store_errors, 1) % 100 == 0)
			log_error(NULL, "collector store commit: %s", cr_strerror(err));
		metric_add(m->m_store_err, 1);
	}
}

static int
is_stats(const char *subj)
{
	const char *p = strstr(subj, ".stats.");
	return p != NULL;
}

/* one stream message (either consumer's thread) */
static void
on_stream_msg(natsConnection *nc, natsSubscription *sub, natsMsg *msg, void *closure)
{
	struct mc *m = closure;
	jsMsgMetaData *meta = NULL;
	const char *subj = natsMsg_GetSubject(msg);
	int stats = subj != NULL && is_stats(subj);
	uint64_t seq;

	if (natsMsg_GetMetaData(&meta, msg) != NATS_OK || meta == NULL) {
		natsMsg_Destroy(msg);
		return;
	}
	seq = meta->Sequence.Stream;
	jsMsgMetaData_Destroy(meta);
	pthread_mutex_lock(&m->mu);
	if (seq <= (stats ? m->applied_st : m->applied_ev)) {
		metric_add(m->m_skipped, 1);
	} else {
		if (stats) {
			mc_roll_stats(m, natsMsg_GetData(msg), (size_t)natsMsg_GetDataLength(msg));
			m->applied_st = seq;
			atomic_fetch_add(&m->stats_in, 1);
		} else {
			mc_apply_hops(m, (const unsigned char *)natsMsg_GetData(msg),
			    (size_t)natsMsg_GetDataLength(msg), seq);
			m->applied_ev = seq;
		}
		metric_set(m->m_applied, (int64_t)seq);
		if (mc_batch(m) != NULL && store_batch_len(m->pending) >= MC_FLUSH_OPS)
			mc_flush(m);
	}
	pthread_mutex_unlock(&m->mu);
	natsMsg_Destroy(msg);
}

static int
subscribe(struct mc *m, const char *stream, const char *filter, uint64_t applied,
    natsSubscription **sub)
{
	jsSubOptions so;
	jsErrCode jerr = 0;
	char subj[256];
	natsStatus s;

	if (bus_subj(m->bus, subj, sizeof(subj), "%s", filter) < 0)
		return -1;
	jsSubOptions_Init(&so);
	so.Stream = stream;
	so.Ordered = true;
	if (applied > 0) {
		so.Config.DeliverPolicy = js_DeliverByStartSequence;
		so.Config.OptStartSeq = applied + 1;
	} else {
		so.Config.DeliverPolicy = js_DeliverAll;
	}
	s = js_Subscribe(sub, bus_js(m->bus), subj, on_stream_msg, m, NULL, &so, &jerr);
	if (s != NATS_OK) {
		log_error(NULL, "cannot read the hop stream %s (%s): %s (%d)", stream, subj,
		    natsStatus_GetText(s), (int)jerr);
		return -1;
	}
	natsSubscription_SetPendingLimits(*sub, 1000000, 1024 * 1024 * 1024);
	return 0;
}

/* mc_stream_start - the stream with the collector's limits, the stored
 * positions, the two consumers */
int
mc_stream_start(struct mc *m)
{
	char name[96];
	jsStreamInfo *si = NULL;
	jsErrCode jerr = 0;
	void *v = NULL;
	size_t vl = 0;
	uint64_t created = 0, first = 0;

	if (hop_stream_ensure(m->bus, m->stream_max_age_h * 3600, m->stream_max_mb << 20, 1) != CR_OK ||
	    hop_stream_name(m->bus, name, sizeof(name)) < 0)
		return -1;
	if (js_GetStreamInfo(&si, bus_js(m->bus), name, NULL, &jerr) == NATS_OK && si != NULL) {
		created = (uint64_t)si->Created;
		first = si->State.FirstSeq;
	}
	jsStreamInfo_Destroy(si);
	if (store_get(m->st, m->db_roll, applied_key, sizeof(applied_key) - 1, &v, &vl) == CR_OK &&
	    vl == 24) {
		m->applied_ev = get64(v);
		m->applied_st = get64((unsigned char *)v + 8);
		m->stream_created = get64((unsigned char *)v + 16);
	}
	free(v);
	if (m->stream_created != created) {
		if (m->applied_ev || m->applied_st)
			log_warn(NULL, "the hop stream was recreated: reading it from its start");
		m->applied_ev = m->applied_st = 0;
		m->stream_created = created;
	}
	if (first > 1 && m->applied_ev + 1 < first && m->applied_ev > 0) {
		uint64_t gap = first - 1 - m->applied_ev;
		log_warn(NULL, "the hop stream no longer holds seqs %llu..%llu (its limits dropped them "
		    "while the collector was away): history has a gap",
		    (unsigned long long)m->applied_ev + 1, (unsigned long long)first - 1);
		metric_add(m->m_lost, gap);
	}
	log_info(NULL, "reading the hop stream %s after seq %llu (events) / %llu (stats)", name,
	    (unsigned long long)m->applied_ev, (unsigned long long)m->applied_st);
	if (subscribe(m, name, "events.>", m->applied_ev, &m->js_sub_ev) != 0 ||
	    subscribe(m, name, "stats.>", m->applied_st, &m->js_sub_st) != 0)
		return -1;
	return 0;
}

/* mc_stream_stop - no more stream messages after it returns */
void
mc_stream_stop(struct mc *m)
{
	natsSubscription **subs[2] = { &m->js_sub_ev, &m->js_sub_st };

	for (int i = 0; i < 2; i++) {
		if (*subs[i] == NULL)
			continue;
		natsSubscription_Unsubscribe(*subs[i]);
		natsSubscription_Drain(*subs[i]);
		natsSubscription_WaitForDrainCompletion(*subs[i], 2000);
		natsSubscription_Destroy(*subs[i]);
		*subs[i] = NULL;
	}
}

/* mc_on_breaker - a breaker's state change (JSON, core NATS) */
void
mc_on_breaker(void *arg, natsMsg *msg)
{
	struct mc *m = arg;
	cJSON *o = cJSON_ParseWithLength(natsMsg_GetData(msg), (size_t)natsMsg_GetDataLength(msg));

	if (o == NULL || !cJSON_IsObject(o)) {
		atomic_fetch_add(&m->bad, 1);
		cJSON_Delete(o);
		return;
	}
	pthread_mutex_lock(&m->mu);
	mc_roll_breaker(m, o);
	pthread_mutex_unlock(&m->mu);
	cJSON_Delete(o);
}
