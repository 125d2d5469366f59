/*
 * status.h - what the relay says about one message: its status record
 * (KV bucket clawrelay_status, written by the notifier) and its hop
 * timeline (kept by the metrics-collector), as the JSON that the gateway's
 * GET /v1/messages/{id} and /v1/traces/{id}, the metrics-collector and the
 * CLI all answer. One place, so the three cannot drift apart.
 * Stateless and thread-safe.
 */
#ifndef CR_STATUS_H
#define CR_STATUS_H

#include <stddef.h>
#include <stdint.h>

#include <cJSON.h>

#include "env.h"

#define STATUS_BUCKET "clawrelay_status"

/* status_key - "c.<kv_token(correlation_id)>"; length, or 0 if it does not fit */
size_t status_key(const char *correlation_id, char *out, size_t sz);
/* status_json - a StatusRecord as JSON; caller frees with cJSON_Delete; NULL on ENOMEM */
cJSON *status_json(const StatusRecord *r);

/* status_hop_us - a hop's time in microseconds (ts_us, or ts_ms for old events) */
uint64_t status_hop_us(const HopEvent *h);
/* status_trace_sort - by time, ties broken by the hop's place in the round trip */
void status_trace_sort(HopEvent **hops, size_t n);
/* status_trace_json - sorted hops as {correlationId, hops:[...], totalMs};
 * caller frees with cJSON_Delete; NULL on ENOMEM */
cJSON *status_trace_json(const char *correlation_id, HopEvent *const *hops, size_t n);

#endif
