/*
 * status.c - status records and hop timelines as JSON (see status.h).
 */
#include <stdio.h>
#include <stdlib.h>

#include "status.h"
#include "util.h"

/* status_key - "c.<kv_token(correlation_id)>" */
size_t
status_key(const char *correlation_id, char *out, size_t sz)
{
	size_t n;
	if (sz < 3 || correlation_id == NULL)
		return 0;
	n = kv_token(correlation_id, out + 2, sz - 2);
	if (n == 0)
		return 0;
	out[0] = 'c';
	out[1] = '.';
	return n + 2;
}

static const char *
str(const char *s)
{
	return s ? s : "";
}

/* status_json - a StatusRecord as JSON (times in ms since the epoch, and ISO) */
cJSON *
status_json(const StatusRecord *r)
{
	cJSON *o = cJSON_CreateObject(), *h;
	char when[32];

	if (o == NULL)
		return NULL;
	cJSON_AddStringToObject(o, "correlationId", str(r->correlation_id));
	cJSON_AddStringToObject(o, "messageId", str(r->message_id));
	cJSON_AddStringToObject(o, "sender", str(r->sender));
	cJSON_AddStringToObject(o, "recipient", str(r->recipient));
	cJSON_AddStringToObject(o, "state", str(r->state));
	h = cJSON_AddArrayToObject(o, "history");
	for (size_t i = 0; h != NULL && i < r->n_history; i++) {
		cJSON *e = cJSON_CreateObject();
		if (e == NULL)
			break;
		iso_time_ms(r->history[i]->at_ms, when);
		cJSON_AddStringToObject(e, "state", str(r->history[i]->state));
		cJSON_AddNumberToObject(e, "at", (double)r->history[i]->at_ms);
		cJSON_AddStringToObject(e, "time", when);
		cJSON_AddItemToArray(h, e);
	}
	cJSON_AddNumberToObject(o, "attempts", r->attempts);
	cJSON_AddStringToObject(o, "lastError", str(r->last_error));
	cJSON_AddStringToObject(o, "failureReason", str(r->failure_reason));
	cJSON_AddNumberToObject(o, "updatedAt", (double)r->updated_at_ms);
	iso_time_ms(r->updated_at_ms, when);
	cJSON_AddStringToObject(o, "updated", when);
	return o;
}

/* status_hop_us - a hop's time in microseconds */
uint64_t
status_hop_us(const HopEvent *h)
{
	return h->ts_us ? h->ts_us : h->ts_ms * 1000;
}

static int
hop_cmp(const void *a, const void *b)
{
	const HopEvent *x = *(HopEvent *const *)a, *y = *(HopEvent *const *)b;
	uint64_t tx = status_hop_us(x), ty = status_hop_us(y);

	if (tx != ty)
		return tx < ty ? -1 : 1;
	return (x->hop > y->hop) - (x->hop < y->hop);
}

/* status_trace_sort - by time, ties broken by the hop's place in the round trip */
void
status_trace_sort(HopEvent **hops, size_t n)
{
	if (n > 1)
		qsort(hops, n, sizeof(*hops), hop_cmp);
}

/* status_trace_json - sorted hops as JSON, each with its gap from the one before */
cJSON *
status_trace_json(const char *correlation_id, HopEvent *const *hops, size_t n)
{
	cJSON *o = cJSON_CreateObject(), *arr;
	char when[32];
	uint64_t first = n ? status_hop_us(hops[0]) : 0, prev = first;

	if (o == NULL)
		return NULL;
	cJSON_AddStringToObject(o, "correlationId", correlation_id);
	/* the W3C trace ID (given at the edge in traceparent, or assigned there) */
	for (size_t i = 0; i < n; i++)
		if (hops[i]->trace_id != NULL && *hops[i]->trace_id) {
			cJSON_AddStringToObject(o, "traceId", hops[i]->trace_id);
			break;
		}
	arr = cJSON_AddArrayToObject(o, "hops");
	for (size_t i = 0; arr != NULL && i < n; i++) {
		const HopEvent *h = hops[i];
		uint64_t us = status_hop_us(h);
		cJSON *e = cJSON_CreateObject();
		if (e == NULL)
			break;
		iso_time_ms(us / 1000, when);
		cJSON_AddStringToObject(e, "hop", env_hop_name(h->hop));
		cJSON_AddStringToObject(e, "time", when);
		cJSON_AddNumberToObject(e, "ts", (double)(us / 1000));
		cJSON_AddNumberToObject(e, "tsUs", (double)us);
		cJSON_AddNumberToObject(e, "gapMs", us < prev ? 0.0 : (double)(us - prev) / 1000.0);
		cJSON_AddNumberToObject(e, "sinceStartMs", us < first ? 0.0 : (double)(us - first) / 1000.0);
		cJSON_AddStringToObject(e, "service", str(h->service));
		cJSON_AddStringToObject(e, "instance", str(h->instance));
		cJSON_AddStringToObject(e, "outcome", str(h->outcome));
		cJSON_AddStringToObject(e, "detail", str(h->detail));
		cJSON_AddStringToObject(e, "messageId", str(h->message_id));
		cJSON_AddStringToObject(e, "sender", str(h->sender));
		cJSON_AddStringToObject(e, "recipient", str(h->recipient));
		cJSON_AddStringToObject(e, "traceId", str(h->trace_id));
		cJSON_AddItemToArray(arr, e);
		prev = us;
	}
	cJSON_AddNumberToObject(o, "totalMs", n ? (double)(prev - first) / 1000.0 : 0.0);
	return o;
}
