/*
 * mc_events.c - hop events in, traces out.
 *
 * mc_on_event runs on the events subscription's nats.c thread (every
 * replica sees every event): it decodes each HopBatch, counts its events by hop kind
 * and submits one batch (the hop and its retention-index entry) to the
 * group committer, which groups many events into one txn. A malformed
 * event is counted and dropped. On HOP_DELIVERED it looks up the message's
 * HOP_GATEWAY_ACCEPTED in the store to observe the end-to-end latency.
 *
 * mc_on_trace_get (queue group "mc") and the HTTP handler read with LMDB
 * snapshots; nothing here takes a lock of its own.
 */
#include <stdlib.h>
#include <string.h>

#include "log.h"
#include "mc.h"
#include "status.h"
#include "util.h"

static const uint64_t lat_bounds[MC_NBUCKETS] = {
	1, 2, 5, 10, 25, 50, 100, 250, 500, 1000, 2500, 5000, 10000, 30000, 60000, 0,
};

/* mc_latency_bound - upper bound (ms) of bucket i; 0 for +Inf */
uint64_t
mc_latency_bound(int i)
{
	return i >= 0 && i < MC_NBUCKETS ? lat_bounds[i] : 0;
}

static void
put_be64(unsigned char *p, uint64_t v)
{
	for (int i = 7; i >= 0; i--, v >>= 8)
		p[i] = (unsigned char)v;
}

static void
put_be32(unsigned char *p, uint32_t v)
{
	for (int i = 3; i >= 0; i--, v >>= 8)
		p[i] = (unsigned char)v;
}

static uint64_t
get_be64(const unsigned char *p)
{
	uint64_t v = 0;
	for (int i = 0; i < 8; i++)
		v = v << 8 | p[i];
	return v;
}

static void
on_committed(void *arg, enum cr_err result)
{
	struct mc *m = arg;
	atomic_fetch_sub(&m->pending_commits, 1);
	if (result != CR_OK) {
		/* log rarely: a full map fails every commit */
		if (atomic_fetch_add(&m->store_errors, 1) % 1000 == 0)
			log_error(NULL, "trace store commit: %s", cr_strerror(result));
		metric_add(m->m_store_err, 1);
	}
}

static void
observe_latency(struct mc *m, const HopEvent *ev)
{
	struct mc_trace t = { NULL, 0 };
	uint64_t acc = 0;

	if (mc_trace_load(m, ev->correlation_id, (size_t)m->max_trace_hops, &t) != CR_OK)
		return;
	for (size_t i = 0; i < t.n; i++) {
		if (t.hops[i]->hop == CLAWRELAY__V1__HOP_KIND__HOP_GATEWAY_ACCEPTED &&
		    (ev->message_id[0] == '\0' || strcmp(t.hops[i]->message_id, ev->message_id) == 0)) {
			acc = t.hops[i]->ts_us;
			break;
		}
	}
	mc_trace_free(&t);
	if (acc == 0 || ev->ts_us < acc)
		return;
	uint64_t ms = (ev->ts_us - acc) / 1000;
	int b = 0;
	while (b < MC_NBUCKETS - 1 && ms > lat_bounds[b])
		b++;
	atomic_fetch_add(&m->lat_buckets[b], 1);
	atomic_fetch_add(&m->lat_count, 1);
	atomic_fetch_add(&m->lat_sum_ms, ms);
}

/* mc_on_event - store the hop events of one HopBatch in one commit */
void
mc_on_event(void *arg, natsMsg *msg)
{
	struct mc *m = arg;
	ProtobufCMessage *pm = NULL;
	HopBatch *hb;
	struct store_batch *b = NULL;
	unsigned char key[8 + 129 + 8 + 1 + 4], val[4096];
	size_t clen, klen, vlen, stored = 0;

	if (env_unpack_msg(&clawrelay__v1__hop_batch__descriptor, natsMsg_GetData(msg),
	    (size_t)natsMsg_GetDataLength(msg), &pm) != CR_OK) {
		atomic_fetch_add(&m->bad, 1);
		metric_add(m->m_bad, 1);
		log_debug(NULL, "dropped a malformed hop batch on %s", natsMsg_GetSubject(msg));
		goto out;
	}
	hb = (HopBatch *)pm;
	b = store_batch_new();
	if (b == NULL)
		goto out;
	for (size_t i = 0; i < hb->n_events; i++) {
		HopEvent *ev = hb->events[i];
		if (ev == NULL || !env_id_ok(ev->correlation_id) || (unsigned)ev->hop >= MC_NHOPS ||
		    env_pack_into(&ev->base, val, sizeof(val), &vlen) != CR_OK) {
			atomic_fetch_add(&m->bad, 1);
			metric_add(m->m_bad, 1);
			continue;
		}
		if (ev->ts_us == 0)
			ev->ts_us = ev->ts_ms ? ev->ts_ms * 1000 : now_us();
		atomic_fetch_add(&m->events, 1);
		metric_add(m->m_hops[ev->hop], 1);

		/* bytime key = received_ms + hops key; the hops key starts at key + 8 */
		clen = strlen(ev->correlation_id);
		put_be64(key, now_ms());
		memcpy(key + 8, ev->correlation_id, clen + 1);
		put_be64(key + 8 + clen + 1, ev->ts_us);
		key[8 + clen + 1 + 8] = (unsigned char)ev->hop;
		put_be32(key + 8 + clen + 1 + 8 + 1, atomic_fetch_add(&m->seq, 1));
		klen = clen + 1 + 8 + 1 + 4;
		if (store_batch_put(b, m->db_hops, key + 8, klen, val, vlen) != CR_OK ||
		    store_batch_put(b, m->db_bytime, key, klen + 8, "", 0) != CR_OK)
			goto out;
		stored++;
	}
	if (stored > 0) {
		atomic_fetch_add(&m->pending_commits, 1);
		if (store_committer_submit(m->com, b, on_committed, m) != CR_OK)
			on_committed(m, CR_ERR_UNAVAILABLE);	/* b freed by the committer */
		b = NULL;
		for (size_t i = 0; i < hb->n_events; i++)
			if (hb->events[i] != NULL && hb->events[i]->hop == CLAWRELAY__V1__HOP_KIND__HOP_DELIVERED &&
			    env_id_ok(hb->events[i]->correlation_id))
				observe_latency(m, hb->events[i]);
	}
out:
	store_batch_free(b);
	if (pm != NULL)
		protobuf_c_message_free_unpacked(pm, NULL);
}

/* mc_trace_free - free what mc_trace_load filled in */
void
mc_trace_free(struct mc_trace *t)
{
	for (size_t i = 0; i < t->n; i++)
		protobuf_c_message_free_unpacked(&t->hops[i]->base, NULL);
	free(t->hops);
	t->hops = NULL;
	t->n = 0;
}

/* mc_trace_load - one correlation ID's hops, sorted */
enum cr_err
mc_trace_load(struct mc *m, const char *correlation_id, size_t max, struct mc_trace *t)
{
	struct store_iter *it = NULL;
	const void *k, *v;
	size_t kl, vl, cap = 0;
	enum cr_err err;
	int r;

	t->hops = NULL;
	t->n = 0;
	err = store_iter_new(m->st, m->db_hops, correlation_id, strlen(correlation_id) + 1, &it);
	if (err != CR_OK)
		return err;
	while (t->n < max && (r = store_iter_next(it, &k, &kl, &v, &vl)) == 1) {
		ProtobufCMessage *pm = NULL;
		if (env_unpack_msg(&clawrelay__v1__hop_event__descriptor, v, vl, &pm) != CR_OK)
			continue;
		if (t->n == cap) {
			size_t ncap = cap ? cap * 2 : 16;
			HopEvent **nh = realloc(t->hops, ncap * sizeof(*nh));
			if (nh == NULL) {
				protobuf_c_message_free_unpacked(pm, NULL);
				err = CR_ERR_NOMEM;
				break;
			}
			t->hops = nh;
			cap = ncap;
		}
		HopEvent *ev = (HopEvent *)pm;
		if (ev->ts_us == 0)	/* stored as received; the key has the time used */
			ev->ts_us = get_be64((const unsigned char *)k + strlen(correlation_id) + 1);
		t->hops[t->n++] = ev;
	}
	if (err == CR_OK && store_iter_err(it) != CR_OK)
		err = store_iter_err(it);
	store_iter_free(it);
	if (err != CR_OK) {
		mc_trace_free(t);
		return err;
	}
	if (t->n == 0)
		return CR_ERR_NOT_FOUND;
	status_trace_sort(t->hops, t->n);
	return CR_OK;
}

/* mc_on_trace_get - TraceRequest -> TraceReply (hops ordered) */
void
mc_on_trace_get(void *arg, natsMsg *msg)
{
	struct mc *m = arg;
	ProtobufCMessage *pm = NULL;
	TraceReply rep = CLAWRELAY__V1__TRACE_REPLY__INIT;
	struct mc_trace t = { NULL, 0 };
	void *buf = NULL;
	size_t len = 0;
	const char *corr = "";

	rep.schema_version = ENV_SCHEMA;
	if (env_unpack_msg(&clawrelay__v1__trace_request__descriptor, natsMsg_GetData(msg),
	    (size_t)natsMsg_GetDataLength(msg), &pm) == CR_OK) {
		corr = ((TraceRequest *)pm)->correlation_id;
		if (env_id_ok(corr))
			mc_trace_load(m, corr, (size_t)m->max_trace_hops, &t);
	} else {
		atomic_fetch_add(&m->bad, 1);
		log_warn(NULL, "malformed trace request");
	}
	/* an unknown or bad ID gets an empty trace */
	rep.correlation_id = (char *)(uintptr_t)corr;
	rep.hops = t.hops;
	rep.n_hops = t.n;
	if (env_pack(&rep.base, &buf, &len) == CR_OK)
		bus_reply(m->bus, msg, buf, len);
	atomic_fetch_add(&m->traces_served, 1);
	free(buf);
	mc_trace_free(&t);
	if (pm != NULL)
		protobuf_c_message_free_unpacked(pm, NULL);
}

/* mc_sweep - drop hops received more than retention ago */
void
mc_sweep(struct mc *m)
{
	uint64_t cutoff = now_ms() - (uint64_t)m->retention_h * 3600 * 1000;
	struct store_iter *it = NULL;
	struct store_batch *b;
	const void *k, *v;
	size_t kl, vl, n = 0;
	enum cr_err err;

	if (store_iter_new(m->st, m->db_bytime, NULL, 0, &it) != CR_OK)
		return;
	b = store_batch_new();
	while (b != NULL && n < (size_t)m->sweep_batch &&
	    store_iter_next(it, &k, &kl, &v, &vl) == 1) {
		if (kl <= 8 || get_be64(k) >= cutoff)
			break;
		if (store_batch_del(b, m->db_bytime, k, kl) != CR_OK ||
		    store_batch_del(b, m->db_hops, (const unsigned char *)k + 8, kl - 8) != CR_OK)
			break;
		n++;
	}
	store_iter_free(it);	/* short snapshot: free before the write */
	if (b == NULL)
		return;
	if (n == 0) {
		store_batch_free(b);
		m->next_sweep_ms = now_ms() + 60000;
		return;
	}
	err = store_committer_submit_wait(m->com, b);
	if (err != CR_OK) {
		log_warn(NULL, "retention sweep: %s", cr_strerror(err));
		m->next_sweep_ms = now_ms() + 60000;
		return;
	}
	atomic_fetch_add(&m->swept, n);
	log_debug(NULL, "retention sweep dropped %zu hops", n);
	/* more may be due: come back on the next tick */
	m->next_sweep_ms = n < (size_t)m->sweep_batch ? now_ms() + 60000 : 0;
}
