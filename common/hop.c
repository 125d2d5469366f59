/*
 * hop.c - hop event emission, batched, carried by a JetStream stream.
 *
 * A relayed message makes about ten hops; one bus message per hop would make
 * hop events the largest share of the bus's traffic. So each process appends
 * every event, already packed, to one HopBatch buffer (the wire format of a
 * repeated field is just the concatenation of its elements), and a flusher
 * thread publishes the buffer every HOP_FLUSH_MS or as soon as it holds
 * HOP_BATCH_BYTES. Emitting costs a pack and a memcpy under one short lock.
 *
 * Receipts (a message reached a new state: for the notifier) ride the same
 * way in a second buffer, a ReceiptBatch published on <P>.receipts.<service>
 * by the same flusher: three receipts a message were three bus messages.
 * Receipts do not depend on hop_set_enabled (the status store needs them).
 *
 * The batches go into the bounded JetStream stream HOP_STREAM (subjects
 * <P>.events.> and <P>.stats.>) by asynchronous publish: one publish per
 * batch, acknowledged in the background, so the metrics-collector that
 * reads the stream from where it stopped misses nothing while it is down
 * (core NATS forgets what nobody hears). The stream is created with the
 * defaults below when missing; the collector sets its limits. Without
 * JetStream (the stream cannot be made) batches go by core publish.
 *
 * Every HOP_STATS_MS the flusher also publishes the process's metrics
 * (metrics_snapshot: counter and histogram deltas, gauge values) and what
 * the service adds (hop_stats_extra) as one JSON object on
 * <P>.stats.<service>, in the same stream (docs/PROTOCOL.md, "stats").
 *
 * Threads: hop_init runs before other threads emit (and hop_init(NULL, ...)
 * after they stopped); any thread may emit; the flusher is the only
 * publisher.
 */
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <cJSON.h>

#include "hop.h"
#include "log.h"
#include "metrics.h"
#include "util.h"

#define HOP_FLUSH_MS 5
#define HOP_BATCH_BYTES (64 * 1024)
#define HOP_BUF_MAX (4 * 1024 * 1024)	/* beyond this (bus stalled) events are dropped */
#define HOP_JS_PENDING 4096                /* async publishes awaiting their ack */

static struct bus *hop_bus;
static char hop_service[64], hop_instance[128], hop_subject[256], rcpt_subject[256];
static char stats_subject[256];
static volatile int hop_enabled = 1;

static pthread_mutex_t hop_mu = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t hop_cv = PTHREAD_COND_INITIALIZER;
static struct strbuf hop_buf;        /* packed HopBatch being filled */
static struct strbuf rcpt_buf;       /* packed ReceiptBatch being filled */
static pthread_t hop_thread;
static int hop_running, hop_stop;
static unsigned long long hop_dropped;
static jsCtx *hop_js;                /* on the bus's buffered connection; NULL: core publish */
static hop_stats_fn stats_fn;        /* set before hop_init; flusher thread calls it */
static void *stats_arg;
static struct metric *m_pub_fail, *m_batches;
/* what opens each HopBatch: schema_version, and the service and instance
 * that the process's own events leave out (fields 1, 3, 4) */
static uint8_t hop_head[2 + 2 + sizeof(hop_service) + 2 + sizeof(hop_instance)];
static size_t hop_head_len;
/* what opens each ReceiptBatch: schema_version (field 1, varint) */
static const uint8_t rcpt_head[] = { 0x08, ENV_SCHEMA };

/* an async publish the server did not acknowledge (nats.c's thread) */
static void
on_pub_err(jsCtx *js, jsPubAckErr *pae, void *closure)
{
	metric_add(m_pub_fail, 1);
	log_debug(NULL, "hop stream publish failed: %s", pae->ErrText ? pae->ErrText :
	    natsStatus_GetText(pae->Err));
}

/* hop_stream_ensure - create the hop stream (or, with update, set its
 * limits); CR_OK when it exists afterwards */
enum cr_err
hop_stream_ensure(struct bus *b, int64_t max_age_s, int64_t max_bytes, int update)
{
	jsStreamConfig cfg;
	jsStreamInfo *si = NULL;
	jsErrCode jerr = 0;
	char name[96], s1[256], s2[256];
	const char *subjects[2] = { s1, s2 };
	natsStatus s;

	if (hop_stream_name(b, name, sizeof(name)) < 0 || bus_subj(b, s1, sizeof(s1), "events.>") < 0 ||
	    bus_subj(b, s2, sizeof(s2), "stats.>") < 0)
		return CR_ERR_INVALID;
	jsStreamConfig_Init(&cfg);
	cfg.Name = name;
	cfg.Subjects = subjects;
	cfg.SubjectsLen = 2;
	cfg.Storage = js_FileStorage;
	cfg.Retention = js_LimitsPolicy;
	cfg.Discard = js_DiscardOld;
	cfg.MaxAge = max_age_s * 1000000000LL;
	cfg.MaxBytes = max_bytes;
	cfg.Replicas = bus_kv_replicas(b);	/* a copy on every node of a cluster, as the buckets */
	s = js_GetStreamInfo(&si, bus_js(b), name, NULL, &jerr);
	if (s == NATS_OK && !update) {
		jsStreamInfo_Destroy(si);
		return CR_OK;
	}
	jsStreamInfo_Destroy(si);
	si = NULL;
	if (s == NATS_OK)
		s = js_UpdateStream(&si, bus_js(b), &cfg, NULL, &jerr);
	else
		s = js_AddStream(&si, bus_js(b), &cfg, NULL, &jerr);
	jsStreamInfo_Destroy(si);
	if (s != NATS_OK) {
		/* another process may have made it meanwhile */
		si = NULL;
		if (js_GetStreamInfo(&si, bus_js(b), name, NULL, &jerr) == NATS_OK) {
			jsStreamInfo_Destroy(si);
			return CR_OK;
		}
		log_warn(NULL, "hop stream %s: %s (%d)", name, natsStatus_GetText(s), (int)jerr);
		return bus_err(s);
	}
	return CR_OK;
}

/* hop_stream_name - "<PREFIX>_events" into out; -1 if it does not fit */
int
hop_stream_name(const struct bus *b, char *out, size_t sz)
{
	int n = snprintf(out, sz, "%s_events", bus_prefix(b));
	return n < 0 || (size_t)n >= sz ? -1 : n;
}

/* Publish b (a packed batch body, or JSON) on subj outside the lock: into
 * the stream when there is one. */
static void
publish(const char *subj, struct strbuf *b, int stream)
{
	if (b->len == 0 || hop_bus == NULL)
		return;
	if (stream && hop_js != NULL) {
		natsStatus s = js_PublishAsync(hop_js, subj, b->data, (int)b->len, NULL);
		metric_add(m_batches, 1);
		if (s != NATS_OK)
			metric_add(m_pub_fail, 1);
		return;
	}
	bus_publish(hop_bus, subj, b->data, b->len);
}

/* the stats object of this process, published on <P>.stats.<service> */
static void
publish_stats(struct strbuf *tmp)
{
	cJSON *o = cJSON_CreateObject();
	char *txt;

	if (o == NULL)
		return;
	cJSON_AddNumberToObject(o, "v", 1);
	cJSON_AddStringToObject(o, "service", hop_service);
	cJSON_AddStringToObject(o, "instance", hop_instance);
	cJSON_AddNumberToObject(o, "ts_ms", (double)now_ms());
	metrics_snapshot(o);
	if (stats_fn != NULL) {
		cJSON *x = cJSON_AddObjectToObject(o, "x");
		if (x != NULL)
			stats_fn(stats_arg, x);
	}
	txt = cJSON_PrintUnformatted(o);
	cJSON_Delete(o);
	if (txt == NULL)
		return;
	tmp->len = 0;
	sb_append(tmp, txt, strlen(txt));
	free(txt);
	publish(stats_subject, tmp, 1);
}

static void *
flusher(void *arg)
{
	struct strbuf out, rout, sout;
	uint64_t next_stats = mono_ms() + HOP_STATS_MS;
	sb_init(&out);
	sb_init(&rout);
	sb_init(&sout);
	pthread_mutex_lock(&hop_mu);
	for (;;) {
		if (hop_buf.len < HOP_BATCH_BYTES && rcpt_buf.len < HOP_BATCH_BYTES && !hop_stop) {
			struct timespec ts;
			clock_gettime(CLOCK_REALTIME, &ts);
			ts.tv_nsec += HOP_FLUSH_MS * 1000000L;
			if (ts.tv_nsec >= 1000000000L) {
				ts.tv_sec++;
				ts.tv_nsec -= 1000000000L;
			}
			pthread_cond_timedwait(&hop_cv, &hop_mu, &ts);
		}
		/* swap buffers: emitters go on filling a fresh one */
		struct strbuf full = hop_buf, rfull = rcpt_buf;
		hop_buf = out;
		hop_buf.len = 0;
		rcpt_buf = rout;
		rcpt_buf.len = 0;
		int stop = hop_stop;
		pthread_mutex_unlock(&hop_mu);
		publish(rcpt_subject, &rfull, 0);
		publish(hop_subject, &full, 1);
		if (mono_ms() >= next_stats || stop) {
			publish_stats(&sout);
			next_stats = mono_ms() + HOP_STATS_MS;
		}
		out = full;
		out.len = 0;
		rout = rfull;
		rout.len = 0;
		pthread_mutex_lock(&hop_mu);
		if (stop && hop_buf.len == 0 && rcpt_buf.len == 0)
			break;
	}
	pthread_mutex_unlock(&hop_mu);
	sb_free(&out);
	sb_free(&rout);
	sb_free(&sout);
	return NULL;
}

static void
hop_shutdown(void)
{
	if (!hop_running)
		return;
	pthread_mutex_lock(&hop_mu);
	hop_stop = 1;
	pthread_cond_signal(&hop_cv);
	pthread_mutex_unlock(&hop_mu);
	pthread_join(hop_thread, NULL);
	hop_running = 0;
	hop_stop = 0;
	sb_free(&hop_buf);
	sb_free(&rcpt_buf);
	if (hop_js != NULL) {
		jsPubOptions po;
		jsPubOptions_Init(&po);
		po.MaxWait = 2000;
		if (js_PublishAsyncComplete(hop_js, &po) != NATS_OK)
			log_warn(NULL, "hop stream: publishes still unacknowledged at shutdown");
		jsCtx_Destroy(hop_js);
		hop_js = NULL;
	}
	if (hop_dropped)
		log_warn(NULL, "hop events dropped while the bus was stalled: %llu", hop_dropped);
}

/* hop_stats_extra - fn adds the service's own part of its stats (any
 * thread; the flusher calls it every HOP_STATS_MS) */
void
hop_stats_extra(hop_stats_fn fn, void *arg)
{
	pthread_mutex_lock(&hop_mu);
	stats_fn = fn;
	stats_arg = arg;
	pthread_mutex_unlock(&hop_mu);
}

/* one length-delimited field of at most 127 bytes into hop_head */
static void
head_field(uint8_t tag, const char *v)
{
	size_t n = strlen(v);

	if (n == 0 || n > 127)
		return;
	hop_head[hop_head_len++] = tag;
	hop_head[hop_head_len++] = (uint8_t)n;
	memcpy(hop_head + hop_head_len, v, n);
	hop_head_len += n;
}

static void
head_make(void)
{
	hop_head_len = 0;
	hop_head[hop_head_len++] = 0x08;	/* schema_version, varint */
	hop_head[hop_head_len++] = ENV_SCHEMA;
	head_field(0x1a, hop_service);		/* field 3 */
	head_field(0x22, hop_instance);		/* field 4 */
}

/* hop_init - remember the bus, service and instance; start the flusher.
 * hop_init(NULL, ...) flushes what is pending and stops it. */
void
hop_init(struct bus *b, const char *service, const char *instance)
{
	hop_shutdown();
	hop_bus = b;
	snprintf(hop_service, sizeof(hop_service), "%s", service ? service : "");
	snprintf(hop_instance, sizeof(hop_instance), "%s", instance ? instance : "");
	if (b == NULL) {
		stats_fn = NULL;
		stats_arg = NULL;
		return;
	}
	head_make();
	bus_subj(b, hop_subject, sizeof(hop_subject), "events.%s", hop_service);
	bus_subj(b, rcpt_subject, sizeof(rcpt_subject), "receipts.%s", hop_service);
	bus_subj(b, stats_subject, sizeof(stats_subject), "stats.%s", hop_service);
	m_pub_fail = metric_counter("clawrelay_hop_publish_failures_total", NULL,
	    "hop and stats batches the stream did not take (dropped)");
	m_batches = metric_counter("clawrelay_hop_batches_total", NULL,
	    "hop and stats batches published into the stream");
	if (hop_stream_ensure(b, HOP_STREAM_MAX_AGE_S, HOP_STREAM_MAX_BYTES, 0) == CR_OK) {
		jsOptions jo;
		jsOptions_Init(&jo);
		jo.PublishAsync.MaxPending = HOP_JS_PENDING;
		jo.PublishAsync.ErrHandler = on_pub_err;
		jo.PublishAsync.StallWait = 50;
		if (natsConnection_JetStream(&hop_js, bus_nc_bulk(b), &jo) != NATS_OK)
			hop_js = NULL;
	}
	if (hop_js == NULL)
		log_warn(NULL, "no hop stream: hop events go by core NATS (lost while nobody listens)");
	sb_init(&hop_buf);
	sb_init(&rcpt_buf);
	if (pthread_create(&hop_thread, NULL, flusher, NULL) == 0)
		hop_running = 1;
}

/* hop_enabled_get - are hop events on? */
int
hop_enabled_get(void)
{
	return hop_enabled;
}

/* hop_set_enabled - turn emission on/off */
void
hop_set_enabled(int on)
{
	hop_enabled = on;
}

static char empty[] = "";

static char *
nz(const char *s)
{
	return s ? (char *)(uintptr_t)s : empty;
}

/* append m (packed) as field 2 of the batch in sb (hop_buf or rcpt_buf); a
 * batch opens with head (hl bytes) */
static void
append(struct strbuf *sb, const uint8_t *head0, size_t hl0, const ProtobufCMessage *m)
{
	uint8_t buf[4096 + 16];
	size_t len, hl = 0;
	/* field 2, wire type 2, then the varint length, then the message */
	if (env_pack_into(m, buf + 16, sizeof(buf) - 16, &len) != CR_OK)
		return;
	uint8_t head[16];
	head[hl++] = 0x12;
	for (size_t v = len; ; v >>= 7) {
		head[hl++] = (uint8_t)((v & 0x7f) | (v > 0x7f ? 0x80 : 0));
		if (v <= 0x7f)
			break;
	}
	memcpy(buf + 16 - hl, head, hl);
	pthread_mutex_lock(&hop_mu);
	if (sb->len + hl + len > HOP_BUF_MAX) {
		hop_dropped++;
	} else {
		if (sb->len == 0)
			sb_append(sb, head0, hl0);
		sb_append(sb, buf + 16 - hl, hl + len);
		if (sb->len >= HOP_BATCH_BYTES)
			pthread_cond_signal(&hop_cv);
	}
	pthread_mutex_unlock(&hop_mu);
}

/* hop_forward - queue a hop event made elsewhere (ev borrowed) */
void
hop_forward(const HopEvent *ev)
{
	if (hop_bus == NULL || !hop_enabled || !hop_running)
		return;
	append(&hop_buf, hop_head, hop_head_len, &ev->base);
}

/* hop_receipt - queue a receipt for the notifier (r borrowed); when the
 * flusher is not running (no hop_init), it is published at once */
void
hop_receipt(const Receipt *r, const char *sender)
{
	if (hop_bus == NULL)
		return;
	if (!hop_running) {
		unsigned char buf[2048];
		char subj[512];
		size_t len;

		if (bus_subj_agent(hop_bus, subj, sizeof(subj), "receipt", sender) >= 0 &&
		    env_pack_into(&r->base, buf, sizeof(buf), &len) == CR_OK)
			bus_publish(hop_bus, subj, buf, len);
		return;
	}
	append(&rcpt_buf, rcpt_head, sizeof(rcpt_head), &r->base);
}

static void
emit(const char *correlation_id, const char *message_id, const char *sender,
    const char *recipient, const char *trace_id, Clawrelay__V1__HopKind hop,
    const char *outcome, const char *detail, uint64_t us)
{
	HopEvent ev = CLAWRELAY__V1__HOP_EVENT__INIT;
	if (hop_bus == NULL || !hop_enabled)
		return;
	/* the batch carries schema_version, service and instance; ts_us
	 * says what ts_ms would (a tenth of the bytes of each event) */
	ev.correlation_id = nz(correlation_id);
	ev.message_id = nz(message_id);
	ev.hop = hop;
	ev.ts_us = us;
	ev.outcome = nz(outcome ? outcome : "ok");
	ev.detail = nz(detail);
	ev.sender = nz(sender);
	ev.recipient = nz(recipient);
	ev.trace_id = nz(trace_id);
	hop_forward(&ev);
}

/* hop_emit_ids - queue one hop from bare IDs, stamped now */
void
hop_emit_ids(const char *correlation_id, const char *message_id, const char *sender,
    const char *recipient, const char *trace_id, Clawrelay__V1__HopKind hop,
    const char *outcome, const char *detail)
{
	emit(correlation_id, message_id, sender, recipient, trace_id, hop, outcome, detail, now_us());
}

/* hop_emit - queue one hop of envelope e, stamped now */
void
hop_emit(const Envelope *e, Clawrelay__V1__HopKind hop, const char *outcome, const char *detail)
{
	emit(e->correlation_id, e->message_id, e->sender, e->recipient, e->trace_id,
	    hop, outcome, detail, now_us());
}

/* hop_emit_at - queue one hop of envelope e that happened at at_us (now_us()) */
void
hop_emit_at(const Envelope *e, Clawrelay__V1__HopKind hop, const char *outcome, const char *detail,
    uint64_t at_us)
{
	emit(e->correlation_id, e->message_id, e->sender, e->recipient, e->trace_id,
	    hop, outcome, detail, at_us);
}
