/*
 * mc_events.c - hop events in, traces and per-message rollups out.
 *
 * mc_apply_hops runs for each HopBatch of the stream, in stream order, with
 * mc->mu held (mc_stream.c). A message makes about ten hops, so per event
 * it does as little as it can:
 *   - it reads the fields it needs from the HopBatch's wire bytes in place
 *     and stores each event's bytes as received: no unpack (which allocates
 *     every string) and no pack again;
 *   - the retention index gets one entry per batch (per MC_INDEX_KEYS
 *     events) listing the hops keys, not one per event;
 *   - the writes go into the collector's pending batch, committed by
 *     mc_flush every FLUSH_MS together with the rollups and the stream
 *     position they reflect;
 *   - the end-to-end latency comes from the accepted-time table
 *     (mc_latency.c), not from reading the message's trace back.
 * Rollups (mc_roll.c) count per message, from the hops that happen once
 * per message: gateway_accepted (in), delivered (out: the agent has it,
 * i.e. its hook or webhook answered), and the final failure: relay-session's
 * failed/expired/rejected hop (detail = the reason) or the gateway's failed
 * hop with outcome dead_lettered. Delivery's per-attempt rejected hops are
 * in the trace but not counted.
 * A malformed event is counted and dropped; a batch whose framing or
 * schema_version is wrong is dropped whole.
 *
 * mc_on_trace_get (queue group "mc") and the HTTP handler read with LMDB
 * snapshots and do not take mu.
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "log.h"
#include "mc.h"
#include "status.h"
#include "util.h"

#define MC_INDEX_KEYS 128            /* hops keys per retention-index entry */

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

/* --- the wire format, read in place --- */

static int
get_varint(const unsigned char **p, const unsigned char *end, uint64_t *v)
{
	*v = 0;
	for (int shift = 0; shift < 64 && *p < end; shift += 7) {
		unsigned char c = *(*p)++;
		*v |= (uint64_t)(c & 0x7f) << shift;
		if (!(c & 0x80))
			return 0;
	}
	return -1;
}

/* One field of a protobuf message at *p: its number, wire type and value
 * (a varint in *v, or the bytes of a length-delimited field in *data and
 * their length in *v); 1 with *p moved past it, 0 at the end, -1 on
 * malformed bytes. */
static int
next_field(const unsigned char **p, const unsigned char *end, unsigned *num, unsigned *wt,
    uint64_t *v, const unsigned char **data)
{
	uint64_t tag;

	if (*p == end)
		return 0;
	if (get_varint(p, end, &tag) != 0 || tag >> 3 == 0 || tag >> 3 > 536870911u)
		return -1;
	*num = (unsigned)(tag >> 3);
	*wt = (unsigned)(tag & 7);
	*data = NULL;
	switch (*wt) {
	case 0:
		return get_varint(p, end, v) == 0 ? 1 : -1;
	case 1:
	case 5:
		*v = *wt == 1 ? 8 : 4;
		if ((uint64_t)(end - *p) < *v)
			return -1;
		*data = *p;
		*p += *v;
		return 1;
	case 2:
		if (get_varint(p, end, v) != 0 || *v > (uint64_t)(end - *p))
			return -1;
		*data = *p;
		*p += *v;
		return 1;
	default:	/* groups (3, 4) are not in our schema; 6, 7 do not exist */
		return -1;
	}
}

/* What the store needs of one HopEvent, read from its wire bytes (borrowed). */
struct mc_hop {
	const unsigned char *corr, *mid, *svc, *outcome, *detail, *sender, *recipient;
	size_t clen, mlen, svclen, olen, dlen, slen, rlen;
	uint64_t hop, ts_ms, ts_us;
};

/* Read one HopEvent's fields in place (no unpack: a message makes ten
 * hops, and unpacking allocates every string). It accepts what protobuf-c
 * accepts: known fields must have their wire type, unknown ones are
 * skipped, the last occurrence of a field wins, strings are bytes.
 * 0, or -1 if malformed. */
static int
hop_scan(const unsigned char *p, size_t len, struct mc_hop *h)
{
	const unsigned char *end = p + len, *data;
	unsigned num, wt;
	uint64_t v;
	int r;

	memset(h, 0, sizeof(*h));
	while ((r = next_field(&p, end, &num, &wt, &v, &data)) == 1) {
		switch (num) {
		case 1:		/* schema_version */
		case 4:		/* hop */
		case 5:		/* ts_ms */
		case 6:		/* ts_us */
			if (wt != 0)
				return -1;
			if (num == 4)
				h->hop = v;
			else if (num == 5)
				h->ts_ms = v;
			else if (num == 6)
				h->ts_us = v;
			break;
		case 2:		/* correlation_id */
		case 3:		/* message_id */
		case 7: case 8: case 9: case 10: case 11: case 12: case 13:
			if (wt != 2)
				return -1;
			if (num == 2) {
				h->corr = data;
				h->clen = (size_t)v;
			} else if (num == 3) {
				h->mid = data;
				h->mlen = (size_t)v;
			} else if (num == 7) {
				h->svc = data;
				h->svclen = (size_t)v;
			} else if (num == 9) {
				h->outcome = data;
				h->olen = (size_t)v;
			} else if (num == 10) {
				h->detail = data;
				h->dlen = (size_t)v;
			} else if (num == 11) {
				h->sender = data;
				h->slen = (size_t)v;
			} else if (num == 12) {
				h->recipient = data;
				h->rlen = (size_t)v;
			}
			break;
		default:
			break;
		}
	}
	return r;
}

/* A HopEvent's correlation ID as a C string into out (129 bytes) and its
 * time; 0, or -1 if the ID is not one (1-128 chars of the ID alphabet). */
static int
hop_id(struct mc_hop *h, unsigned char *out)
{
	if (h->clen == 0 || h->clen > 128)
		return -1;
	memcpy(out, h->corr, h->clen);
	out[h->clen] = '\0';
	if (!env_id_ok((const char *)out))
		return -1;
	if (h->ts_us == 0)
		h->ts_us = h->ts_ms ? h->ts_ms * 1000 : now_us();
	return 0;
}

/* What a HopBatch says of its events that leave them out (borrowed). */
struct mc_batch_head {
	const unsigned char *svc, *inst;
	size_t svclen, instlen;
};

/* a HopBatch's framing is sound and its schema_version is ours; its
 * service and instance (fields 3, 4) into bh */
static int
batch_ok(const unsigned char *p, size_t len, struct mc_batch_head *bh)
{
	const unsigned char *end = p + len, *data;
	unsigned num, wt;
	uint64_t v, version = 0;
	int r;

	memset(bh, 0, sizeof(*bh));
	while ((r = next_field(&p, end, &num, &wt, &v, &data)) == 1) {
		if ((num == 1 && wt != 0) || (num >= 2 && num <= 4 && wt != 2))
			return 0;
		if (num == 1)
			version = v;
		if ((num == 3 || num == 4) && v > 127)
			return 0;
		if (num == 3) {
			bh->svc = data;
			bh->svclen = (size_t)v;
		} else if (num == 4) {
			bh->inst = data;
			bh->instlen = (size_t)v;
		}
	}
	return r == 0 && version == ENV_SCHEMA;
}

/* the event's bytes with the batch's schema_version, service and instance
 * appended as fields 1, 7 and 8 (a later field wins; the event has none)
 * into out; its length, or 0 if it does not fit */
static size_t
with_head(const unsigned char *ev, size_t len, const struct mc_batch_head *bh,
    unsigned char *out, size_t outsz)
{
	size_t n = len;

	if (len + 6 + bh->svclen + bh->instlen > outsz)
		return 0;
	memcpy(out, ev, len);
	out[n++] = 0x08;	/* schema_version: the batch's (checked) */
	out[n++] = ENV_SCHEMA;
	if (bh->svclen > 0) {
		out[n++] = 0x3a;
		out[n++] = (unsigned char)bh->svclen;
		memcpy(out + n, bh->svc, bh->svclen);
		n += bh->svclen;
	}
	if (bh->instlen > 0) {
		out[n++] = 0x42;
		out[n++] = (unsigned char)bh->instlen;
		memcpy(out + n, bh->inst, bh->instlen);
		n += bh->instlen;
	}
	return n;
}

/* add the retention-index entry listing idx (ilen bytes of <len u8><hops
 * key> records) under received_ms */
static enum cr_err
index_put(struct mc *m, struct store_batch *b, uint64_t received_ms, const unsigned char *idx,
    size_t ilen)
{
	unsigned char key[12];

	put_be64(key, received_ms);
	put_be32(key + 8, atomic_fetch_add(&m->seq, 1));
	return store_batch_put(b, m->db_bytime, key, sizeof(key), idx, ilen);
}

static int
eq(const unsigned char *p, size_t n, const char *s)
{
	return n == strlen(s) && memcmp(p, s, n) == 0;
}

static void
copy_field(char *out, size_t sz, const unsigned char *p, size_t n)
{
	if (n >= sz)
		n = sz - 1;
	if (n > 0)
		memcpy(out, p, n);
	out[n] = '\0';
}

/* the reason of a final failure hop, or NULL when h is not one */
static const char *
final_failure(const struct mc_hop *h)
{
	static const char *const reasons[] = { "expired", "shed", "rejected", "dead_lettered",
		"attempts_exhausted" };

	if (h->hop != CLAWRELAY__V1__HOP_KIND__HOP_FAILED &&
	    h->hop != CLAWRELAY__V1__HOP_KIND__HOP_EXPIRED &&
	    h->hop != CLAWRELAY__V1__HOP_KIND__HOP_REJECTED)
		return NULL;
	if (eq(h->outcome, h->olen, "dead_lettered"))
		return "dead_lettered";
	if (!eq(h->svc, h->svclen, "relay-session"))
		return NULL;
	for (size_t i = 0; i < sizeof(reasons) / sizeof(reasons[0]); i++)
		if (eq(h->detail, h->dlen, reasons[i]))
			return reasons[i];
	return "other";
}

static int
reason_index(const char *r)
{
	static const char *const names[MC_NREASONS] = { "expired", "shed", "rejected",
		"dead_lettered", "attempts_exhausted", "other" };
	for (int i = 0; i < MC_NREASONS; i++)
		if (strcmp(r, names[i]) == 0)
			return i;
	return MC_NREASONS - 1;
}

/* the rollups of one hop (mu held) */
static void
roll_hop(struct mc *m, struct mc_hop *h, const char *corr)
{
	struct mc_min *mn = mc_min_at(m, h->ts_us / 1000);
	const char *reason;

	if (h->hop == CLAWRELAY__V1__HOP_KIND__HOP_GATEWAY_ACCEPTED) {
		mc_latency_accepted(m, corr, h->mid, h->mlen, h->ts_us);
		if (mn != NULL) {
			mn->in++;
			mn->dirty = 1;
		}
	} else if (h->hop == CLAWRELAY__V1__HOP_KIND__HOP_DELIVERED) {
		double s = mc_latency_delivered(m, corr, h->mid, h->mlen, h->ts_us);
		if (s >= 0)
			metric_observe(m->m_e2e, s);
		if (mn != NULL) {
			mn->out++;
			if (s >= 0) {
				int nb, b = 0;
				const double *bounds = metric_latency_bounds(&nb);
				while (b < nb && s > bounds[b])
					b++;
				mn->lat[b]++;
				mn->lat_sum += s;
			}
			mn->dirty = 1;
		}
		mc_roll_pair(m, (const char *)h->sender, h->slen, (const char *)h->recipient, h->rlen,
		    h->ts_us / 1000, 1);
	} else if ((reason = final_failure(h)) != NULL) {
		struct mc_fail f;

		if (mn != NULL) {
			mn->failed++;
			mn->fail[reason_index(reason)]++;
			mn->dirty = 1;
		}
		mc_roll_pair(m, (const char *)h->sender, h->slen, (const char *)h->recipient, h->rlen,
		    h->ts_us / 1000, 0);
		memset(&f, 0, sizeof(f));
		f.ts_ms = h->ts_us / 1000;
		snprintf(f.corr, sizeof(f.corr), "%.128s", corr);
		copy_field(f.mid, sizeof(f.mid), h->mid, h->mlen);
		copy_field(f.sender, sizeof(f.sender), h->sender, h->slen);
		copy_field(f.recipient, sizeof(f.recipient), h->recipient, h->rlen);
		snprintf(f.reason, sizeof(f.reason), "%s", reason);
		copy_field(f.detail, sizeof(f.detail), h->detail, h->dlen);
		copy_field(f.service, sizeof(f.service), h->svc, h->svclen);
		mc_roll_failure(m, &f);
	}
}

/* mc_apply_hops - store the hop events of one HopBatch (stream message
 * seq) and count them (mu held) */
void
mc_apply_hops(struct mc *m, const unsigned char *batch, size_t dlen, uint64_t seq)
{
	const unsigned char *p, *end, *data;
	struct store_batch *b;
	struct mc_hop h;
	struct mc_batch_head bh;
	unsigned char key[129 + 8 + 1 + 4], full[4096 + 6 + 2 * 127];
	unsigned char idx[MC_INDEX_KEYS * (1 + sizeof(key))];
	size_t klen, ilen = 0, nidx = 0, stored = 0, bad = 0;
	uint64_t received_ms = now_ms(), hops[MC_NHOPS] = { 0 }, v;
	uint32_t place = 0;
	unsigned num, wt;

	if (batch == NULL || dlen > ENV_MAX_WIRE || !batch_ok(batch, dlen, &bh)) {
		atomic_fetch_add(&m->bad, 1);
		metric_add(m->m_bad, 1);
		log_debug(NULL, "dropped a malformed hop batch (stream seq %llu)", (unsigned long long)seq);
		return;
	}
	if ((b = mc_batch(m)) == NULL)
		return;
	end = batch + dlen;
	for (p = batch; next_field(&p, end, &num, &wt, &v, &data) == 1; ) {
		if (num != 2)
			continue;
		place++;
		if (hop_scan(data, (size_t)v, &h) != 0 || h.hop >= MC_NHOPS || hop_id(&h, key) != 0) {
			bad++;
			continue;
		}
		if (h.svclen == 0 && bh.svclen > 0) {
			/* one of the publisher's own events: stored whole */
			size_t flen = with_head(data, (size_t)v, &bh, full, sizeof(full));
			if (flen == 0) {
				bad++;
				continue;
			}
			data = full;
			v = flen;
			h.svc = bh.svc;
			h.svclen = bh.svclen;
		}
		hops[h.hop]++;
		/* hops key: correlation ID, NUL, ts_us, hop, (stream seq, place)
		 * (trace order; the same event read twice lands on the same key) */
		put_be64(key + h.clen + 1, h.ts_us);
		key[h.clen + 1 + 8] = (unsigned char)h.hop;
		put_be32(key + h.clen + 1 + 8 + 1, (uint32_t)(seq << 12 | (place & 0xfff)));
		klen = h.clen + 1 + 8 + 1 + 4;
		if (store_batch_put(b, m->db_hops, key, klen, data, (size_t)v) != CR_OK)
			break;
		idx[ilen++] = (unsigned char)klen;
		memcpy(idx + ilen, key, klen);
		ilen += klen;
		if (++nidx == MC_INDEX_KEYS) {
			if (index_put(m, b, received_ms, idx, ilen) != CR_OK)
				break;
			ilen = nidx = 0;
		}
		stored++;
		roll_hop(m, &h, (const char *)key);
	}
	if (nidx > 0)
		index_put(m, b, received_ms, idx, ilen);
	atomic_fetch_add(&m->events, stored);
	for (int k = 0; k < MC_NHOPS; k++)
		if (hops[k] != 0)
			metric_add(m->m_hops[k], hops[k]);
	if (bad > 0) {
		atomic_fetch_add(&m->bad, bad);
		metric_add(m->m_bad, bad);
	}
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

/* queue the deletes of one retention-index entry (k, v) into b; the number
 * of hops it drops */
static size_t
sweep_entry(struct mc *m, struct store_batch *b, const unsigned char *k, size_t kl,
    const unsigned char *v, size_t vl)
{
	size_t n = 0;

	if (vl == 0) {
		/* the first layout: one entry per hop, "<received_ms><hops key>" */
		if (store_batch_del(b, m->db_hops, k + 8, kl - 8) != CR_OK)
			return SIZE_MAX;
		n = 1;
	}
	/* since: one per batch, "<received_ms><seq>" -> <len u8><hops key>... */
	for (size_t off = 0; off < vl; off += 1 + (size_t)v[off]) {
		if (v[off] == 0 || off + 1 + v[off] > vl)
			break;	/* not written by us: drop the entry only */
		if (store_batch_del(b, m->db_hops, v + off + 1, v[off]) != CR_OK)
			return SIZE_MAX;
		n++;
	}
	if (store_batch_del(b, m->db_bytime, k, kl) != CR_OK)
		return SIZE_MAX;
	return n;
}

/* Is the store too full to wait for the retention time? Above
 * MC_STORE_HIGH_PCT of the map the oldest traces go before their time, until
 * the data is below MC_STORE_LOW_PCT: the newest traces and the rollups
 * (in the same commits) must never be refused for want of room. The marks
 * count the pages the data holds; LMDB also needs free pages for the copies
 * a txn makes and for what old snapshots still hold, and the largest flush
 * (MC_FLUSH_OPS hops, ~7 MiB) must fit the smallest map the collector takes
 * (64 MiB): hence half. Any thread. */
#define MC_STORE_HIGH_PCT 50
#define MC_STORE_LOW_PCT 40
#define MC_ROOM_HOPS 2000        /* hops per delete txn when making room */
int
mc_store_pressure(struct mc *m)
{
	const unsigned dbis[] = { m->db_hops, m->db_bytime, m->db_roll };
	uint64_t used, map;
	int full = atomic_load(&m->store_full);

	if (store_bytes(m->st, dbis, 3, &used, &map) != CR_OK || map == 0)
		return full;
	if (!full && used * 100 > map * MC_STORE_HIGH_PCT) {
		if (atomic_exchange(&m->store_full, 1) == 0) {
			atomic_fetch_add(&m->early_sweeps, 1);
			log_warn(NULL, "trace store %llu of %llu MiB: dropping the oldest traces "
			    "before their retention time (CLAWRELAY_MAP_SIZE_MB, "
			    "CLAWRELAY_TRACE_RETENTION_H)", (unsigned long long)(used >> 20),
			    (unsigned long long)(map >> 20));
		}
		return 1;
	}
	if (full && used * 100 < map * MC_STORE_LOW_PCT) {
		if (atomic_exchange(&m->store_full, 0) == 1)
			log_info(NULL, "trace store back to %llu of %llu MiB",
			    (unsigned long long)(used >> 20), (unsigned long long)(map >> 20));
		return 0;
	}
	return full;
}

/* drop up to max hops, oldest first: those received before cutoff, or any
 * when force; committed in a txn of their own (a delete frees room only
 * once committed). The number dropped, or SIZE_MAX if the commit failed. */
static size_t
drop_oldest(struct mc *m, uint64_t cutoff, int force, size_t max)
{
	struct store_iter *it = NULL;
	struct store_batch *b;
	const void *k, *v;
	size_t kl, vl, n = 0, entries = 0;
	enum cr_err err;

	if (store_iter_new(m->st, m->db_bytime, NULL, 0, &it) != CR_OK)
		return SIZE_MAX;
	b = store_batch_new();
	while (b != NULL && n < max && store_iter_next(it, &k, &kl, &v, &vl) == 1) {
		size_t dropped;

		if (kl <= 8 || (get_be64(k) >= cutoff && !force))
			break;
		dropped = sweep_entry(m, b, k, kl, v, vl);
		if (dropped == SIZE_MAX)
			break;
		n += dropped;
		entries++;
	}
	store_iter_free(it);	/* short snapshot: free before the write */
	if (b == NULL)
		return SIZE_MAX;
	if (entries == 0) {
		store_batch_free(b);
		return 0;
	}
	if ((err = store_committer_submit_wait(m->com, b)) != CR_OK) {
		log_warn(NULL, "retention sweep: %s", cr_strerror(err));
		return SIZE_MAX;
	}
	atomic_fetch_add(&m->swept, n);
	log_debug(NULL, "retention sweep dropped %zu hops%s", n, force ? " (store full)" : "");
	return n;
}

/* mc_make_room - before a flush (mu held): while the store is past its high
 * mark, drop the oldest traces; the flush then has room */
void
mc_make_room(struct mc *m)
{
	for (int i = 0; i < 64 && mc_store_pressure(m); i++) {
		/* small txns: the oldest hops are spread over the whole tree (it
		 * is ordered by correlation ID), and a txn copies every page it
		 * touches before the old ones are free */
		size_t n = drop_oldest(m, 0, 1, MC_ROOM_HOPS);
		if (n == 0 || n == SIZE_MAX)
			break;
	}
}

/* mc_sweep - drop hops and rollups older than their retention (main thread) */
void
mc_sweep(struct mc *m)
{
	uint64_t cutoff = now_ms() - (uint64_t)m->retention_h * 3600 * 1000;
	struct store_batch *b;
	int full = mc_store_pressure(m);
	size_t n;

	pthread_mutex_lock(&m->mu);
	if ((b = mc_batch(m)) != NULL)
		mc_roll_sweep(m, b, now_ms() - (uint64_t)m->roll_retention_h * 3600 * 1000);
	pthread_mutex_unlock(&m->mu);
	n = drop_oldest(m, cutoff, full, full ? MC_ROOM_HOPS : (size_t)m->sweep_batch);
	/* more may be due: come back on the next tick */
	m->next_sweep_ms = n == (size_t)m->sweep_batch || (full && n != SIZE_MAX && n > 0) ? 0 :
	    now_ms() + 60000;
}
