/*
 * hop.h - hop events: one per hop of one message, sent in HopBatch messages
 * (a few milliseconds' worth each) on <prefix>.events.<service> for the
 * metrics-collector. Any thread may emit.
 */
#ifndef CR_HOP_H
#define CR_HOP_H

#include "bus.h"
#include "env.h"

/* hop_init - remember the bus, service and instance (copied) and start the
 * flusher; bus borrowed until hop_init(NULL, ...), which flushes and stops */
void hop_init(struct bus *b, const char *service, const char *instance);
/* hop_set_enabled - turn emission on/off (benchmarks measure the cost) */
void hop_set_enabled(int on);
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
