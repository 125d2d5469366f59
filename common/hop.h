/*
 * hop.h - hop events: one per hop of one message, sent in HopBatch messages
 * (a few milliseconds' worth each) on <prefix>.events.<service> into the
 * JetStream stream "<prefix>_events" for the metrics-collector; and, every
 * HOP_STATS_MS, the process's metrics as JSON on <prefix>.stats.<service>
 * (same stream). Any thread may emit.
 */
#ifndef CR_HOP_H
#define CR_HOP_H

#include <cJSON.h>

#include "bus.h"
#include "env.h"

#define HOP_STATS_MS 1000                          /* stats period */
#define HOP_STREAM_MAX_AGE_S (24 * 3600)           /* stream limits when a service creates it */
#define HOP_STREAM_MAX_BYTES (1024LL * 1024 * 1024)

/* A service's own part of its stats (e.g. the gateway's sockets): add to x
 * (borrowed). Runs on the flusher thread. */
typedef void (*hop_stats_fn)(void *arg, cJSON *x);

/* hop_init - remember the bus, service and instance (copied) and start the
 * flusher; bus borrowed until hop_init(NULL, ...), which flushes and stops */
void hop_init(struct bus *b, const char *service, const char *instance);
/* hop_set_enabled - turn emission on/off (CLAWRELAY_HOP_EVENTS; benchmarks
 * measure the cost); receipts and stats do not depend on it */
void hop_set_enabled(int on);
/* hop_enabled_get - are hop events on? */
int hop_enabled_get(void);
/* hop_stats_extra - fn(arg, x) adds the service's own part to its stats
 * object "x"; arg borrowed until hop_init(NULL, ...) */
void hop_stats_extra(hop_stats_fn fn, void *arg);
/* hop_stream_name - "<prefix>_events" into out; -1 if it does not fit */
int hop_stream_name(const struct bus *b, char *out, size_t sz);
/* hop_stream_ensure - create the hop stream if missing (update: also set
 * these limits on an existing one); CR_OK when it exists */
enum cr_err hop_stream_ensure(struct bus *b, int64_t max_age_s, int64_t max_bytes, int update);
/* hop_emit - publish one hop of envelope e (borrowed) */
void hop_emit(const Envelope *e, Clawrelay__V1__HopKind hop, const char *outcome, const char *detail);
/* hop_emit_at - the same for a hop that happened at at_us (now_us() taken
 * before the act, e.g. a write whose success is known only afterwards: the
 * timeline must not put the hop after what it caused in another process) */
void hop_emit_at(const Envelope *e, Clawrelay__V1__HopKind hop, const char *outcome,
    const char *detail, uint64_t at_us);
/* hop_emit_ids - the same from bare IDs (any may be NULL) */
void hop_emit_ids(const char *correlation_id, const char *message_id, const char *sender,
    const char *recipient, const char *trace_id, Clawrelay__V1__HopKind hop,
    const char *outcome, const char *detail);
/* hop_forward - publish a hop event made elsewhere (the connector's, relayed
 * by the gateway); ev borrowed */
void hop_forward(const HopEvent *ev);
/* hop_receipt - queue a receipt for the notifier (r borrowed): published in
 * a ReceiptBatch on <P>.receipts.<service> within HOP_FLUSH_MS; sender names
 * the single-receipt subject used when no flusher runs */
void hop_receipt(const Receipt *r, const char *sender);

#endif
