/*
 * gateway_ingress.c - POST /v1/agents/{recipient}/messages: from a signed
 * request to an Envelope queued by relay-session.
 *
 * The handler reads the body (bounded by CLAWRELAY_MAX_BODY_BYTES), runs the
 * proof checks (gateway_auth.c), the recipient and trust checks, assigns the
 * message's IDs, emits HOP_GATEWAY_ACCEPTED and hands the envelope to the
 * partition's batcher (gateway_enqbatch.c), waiting on the civetweb
 * worker's own thread for the answer (each connection has its thread, so
 * POSTs proceed in parallel and share requests). The session's answer maps
 * to the HTTP status (gw_enq_map_reply), shared with enqueue frames.
 *
 * Threads: any civetweb worker; no state of its own besides struct gw.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "gateway.h"
#include "hop.h"
#include "http.h"
#include "log.h"
#include "util.h"

#define AGENTS_PREFIX "/v1/agents/"
#define MESSAGES_SUFFIX "/messages"

static int
is_lower_hex(const char *s, size_t n)
{
	size_t i;
	int nonzero = 0;

	for (i = 0; s[i] != '\0' && i < n; i++) {
		if (!((s[i] >= '0' && s[i] <= '9') || (s[i] >= 'a' && s[i] <= 'f')))
			return 0;
		if (s[i] != '0')
			nonzero = 1;
	}
	return i == n && s[i] == '\0' && nonzero;
}

/* gw_fill_trace - ids from traceparent or fresh random ones */
void
gw_fill_trace(const char *traceparent, char trace_id[33], char span_id[17], unsigned *flags)
{
	*flags = 0;
	if (traceparent != NULL && traceparent_parse(traceparent, trace_id, span_id, flags) == 0 &&
	    is_lower_hex(trace_id, 32) && is_lower_hex(span_id, 16))
		return;
	rand_hex(trace_id, 16);
	rand_hex(span_id, 8);
	*flags = 1;	/* sampled: we start the trace and record it */
}

/* gw_envelope_finish - the gateway's fields of an envelope, then validation */
int
gw_envelope_finish(struct gw *g, Envelope *e, struct gw_ids *ids, uint32_t ttl_s,
    struct gw_refusal *rf)
{
	uint64_t now = now_ms();
	const char *why = NULL;

	e->schema_version = ENV_SCHEMA;
	ulid_new(ids->message_id);
	e->message_id = ids->message_id;
	if (e->correlation_id == NULL || e->correlation_id[0] == '\0') {
		ulid_new(ids->correlation_id);
		e->correlation_id = ids->correlation_id;
	}
	if (e->trace_id == NULL || !is_lower_hex(e->trace_id, 32) ||
	    e->span_id == NULL || !is_lower_hex(e->span_id, 16)) {
		unsigned flags;
		gw_fill_trace(NULL, ids->trace_id, ids->span_id, &flags);
		e->trace_id = ids->trace_id;
		e->span_id = ids->span_id;
		e->trace_flags = flags;
	}
	if (e->content_type == NULL || e->content_type[0] == '\0')
		e->content_type = gw_mut(GW_DEFAULT_CT);
	if (e->created_at_ms == 0 || e->created_at_ms > now + 1000ull * (uint64_t)g->cfg.clock_window_s)
		e->created_at_ms = now;
	e->accepted_at_ms = now;
	e->expires_at_ms = now + 1000ull * (ttl_s ? ttl_s : (uint64_t)g->cfg.default_ttl_s);
	e->attempt = 0;
	e->kind = CLAWRELAY__V1__KIND__KIND_MESSAGE;
	if (env_validate(e, &why) != CR_OK)
		return gw_refuse(rf, 400, "invalid_message", "%s", why ? why : "invalid message");
	return 0;
}

/* gw_enq_subject - "<P>.session.<p>.enqueue_batch" for partition p */
int
gw_enq_subject(struct gw *g, uint32_t part, char *out, size_t sz)
{
	return bus_subj(g->bus, out, sz, "session.%u.enqueue_batch", part);
}

static void
set_result(struct gw_enq_result *out, int status, const char *code, unsigned retry,
    const char *msg)
{
	out->status = status;
	out->code = code;
	out->retry_after_s = retry;
	snprintf(out->message, sizeof(out->message), "%s", msg ? msg : "");
}

/* gw_enq_map - a session answer to a result (HTTP status and body fields) */
void
gw_enq_map(enum cr_err err, natsMsg *reply, const Envelope *e, struct gw_enq_result *out)
{
	ProtobufCMessage *m = NULL;

	memset(out, 0, sizeof(*out));
	snprintf(out->message_id, sizeof(out->message_id), "%s", e->message_id);
	snprintf(out->correlation_id, sizeof(out->correlation_id), "%s", e->correlation_id);
	if (err == CR_ERR_UNAVAILABLE) {
		set_result(out, 503, "relay_unavailable", 1,
		    "no relay-session serves the recipient's partition");
		return;
	}
	if (err == CR_ERR_TIMEOUT) {
		set_result(out, 503, "relay_timeout", 1, "relay-session did not answer in time");
		return;
	}
	if (err != CR_OK || reply == NULL) {
		set_result(out, 503, "relay_error", 1, cr_strerror(err));
		return;
	}
	if (env_unpack_msg(&clawrelay__v1__enqueue_reply__descriptor, natsMsg_GetData(reply),
	    (size_t)natsMsg_GetDataLength(reply), &m) != CR_OK) {
		set_result(out, 503, "relay_bad_reply", 1, "relay-session's answer cannot be decoded");
		return;
	}
	gw_enq_map_reply((const EnqueueReply *)m, e, out);
	protobuf_c_message_free_unpacked(m, NULL);
}

/* gw_enq_map_reply - one EnqueueReply to a result */
void
gw_enq_map_reply(const EnqueueReply *r, const Envelope *e, struct gw_enq_result *out)
{
	unsigned retry;

	memset(out, 0, sizeof(*out));
	snprintf(out->message_id, sizeof(out->message_id), "%s", e->message_id);
	snprintf(out->correlation_id, sizeof(out->correlation_id), "%s", e->correlation_id);
	retry = r->retry_after_s > 0 ? r->retry_after_s : 1;
	if (r->message_id != NULL && r->message_id[0] != '\0')
		snprintf(out->message_id, sizeof(out->message_id), "%s", r->message_id);
	if (r->correlation_id != NULL && r->correlation_id[0] != '\0')
		snprintf(out->correlation_id, sizeof(out->correlation_id), "%s", r->correlation_id);
	snprintf(out->state, sizeof(out->state), "%s",
	    (r->state != NULL && r->state[0] != '\0') ? r->state : "queued");
	out->queue_depth = r->queue_depth;
	switch (r->status) {
	case CLAWRELAY__V1__ENQUEUE_STATUS__ENQ_QUEUED:
		set_result(out, 202, NULL, 0, NULL);
		snprintf(out->state, sizeof(out->state), "queued");
		break;
	case CLAWRELAY__V1__ENQUEUE_STATUS__ENQ_DUPLICATE:
		set_result(out, 200, NULL, 0, NULL);
		break;
	case CLAWRELAY__V1__ENQUEUE_STATUS__ENQ_CONFLICT:
		set_result(out, 409, "idempotency_conflict", 0, r->error && r->error[0] ? r->error :
		    "the idempotency key was used with another recipient or payload");
		break;
	case CLAWRELAY__V1__ENQUEUE_STATUS__ENQ_RATE_LIMITED:
		set_result(out, 429, "rate_limited", retry, r->error && r->error[0] ? r->error :
		    "too many messages for this pair");
		break;
	case CLAWRELAY__V1__ENQUEUE_STATUS__ENQ_QUEUE_FULL:
		set_result(out, 507, "queue_full", retry, r->error && r->error[0] ? r->error :
		    "the recipient's queue is full");
		break;
	case CLAWRELAY__V1__ENQUEUE_STATUS__ENQ_REPLAY:
		set_result(out, 401, "replay", 0, "X-Claw-Nonce was already used");
		break;
	case CLAWRELAY__V1__ENQUEUE_STATUS__ENQ_REJECTED:
		set_result(out, 400, "rejected", 0, r->error && r->error[0] ? r->error :
		    "relay-session refused the message");
		break;
	default:
		set_result(out, 503, "relay_unavailable", retry, r->error && r->error[0] ? r->error :
		    "relay-session cannot take the message now");
		break;
	}
}

/* s as a JSON string body (no quotes) into out at *n; 0, or -1 if full */
static int
json_str(char *out, size_t sz, size_t *n, const char *s)
{
	static const char hex[] = "0123456789abcdef";

	for (; *s != '\0'; s++) {
		unsigned char ch = (unsigned char)*s;
		if (*n + 7 >= sz)
			return -1;
		if (ch == '"' || ch == '\\') {
			out[(*n)++] = '\\';
			out[(*n)++] = (char)ch;
		} else if (ch < 0x20) {
			memcpy(out + *n, "\\u00", 4);
			*n += 4;
			out[(*n)++] = hex[ch >> 4];
			out[(*n)++] = hex[ch & 15];
		} else {
			out[(*n)++] = (char)ch;
		}
	}
	out[*n] = '\0';
	return 0;
}

/* gw_enq_json - the JSON body of a 200/202 answer into out (sz bytes,
 * GW_ENQ_JSON_MAX is always enough); its length, or -1 */
int
gw_enq_json(const struct gw_enq_result *r, char *out, size_t sz)
{
	size_t n = 0;
	int m;

	if (sz < 16)
		return -1;
	memcpy(out, "{\"messageId\":\"", 14);
	n = 14;
	if (json_str(out, sz, &n, r->message_id) < 0)
		return -1;
	m = snprintf(out + n, sz - n, "\",\"correlationId\":\"");
	if (m < 0 || (size_t)m >= sz - n)
		return -1;
	n += (size_t)m;
	if (json_str(out, sz, &n, r->correlation_id) < 0)
		return -1;
	m = snprintf(out + n, sz - n, "\",\"status\":\"%s\",\"state\":\"",
	    r->status == 200 ? "duplicate" : "queued");
	if (m < 0 || (size_t)m >= sz - n)
		return -1;
	n += (size_t)m;
	if (json_str(out, sz, &n, r->state) < 0)
		return -1;
	m = snprintf(out + n, sz - n, "\",\"queueDepth\":%llu}", (unsigned long long)r->queue_depth);
	if (m < 0 || (size_t)m >= sz - n)
		return -1;
	return (int)(n + (size_t)m);
}

/* the recipient from "/v1/agents/{recipient}/messages" into out; -1 if the
 * path has another shape */
static int
path_recipient(const char *path, char *out, size_t sz)
{
	size_t pl = strlen(AGENTS_PREFIX), sl = strlen(MESSAGES_SUFFIX), n;

	if (path == NULL || strncmp(path, AGENTS_PREFIX, pl) != 0)
		return -1;
	n = strlen(path);
	if (n < pl + sl || strcmp(path + n - sl, MESSAGES_SUFFIX) != 0)
		return -1;
	n -= pl + sl;
	if (n >= sz)
		n = sz - 1;	/* longer than any valid ID: the ID check refuses it */
	memcpy(out, path + pl, n);
	out[n] = '\0';
	return 0;
}

/* gw_handle_post - POST /v1/agents/{recipient}/messages */
int
gw_handle_post(struct mg_connection *c, void *arg)
{
	struct gw *g = arg;
	const struct mg_request_info *ri = mg_get_request_info(c);
	struct gw_refusal rf = { 0 };
	struct gw_req rq;
	struct gw_ids ids;
	struct gw_enq_result res;
	struct strbuf body;
	char recipient[AUTH_ID_MAX + 2];
	const char *why = NULL, *cid = NULL;
	void *wire = NULL;
	const void *wdata = NULL;
	unsigned char wstack[GW_WIRE_STACK];
	size_t wlen = 0;
	enum cr_err err;
	Envelope e = CLAWRELAY__V1__ENVELOPE__INIT;
	struct reg_trust trust = { 0, 0, 0 };

	memset(&rq, 0, sizeof(rq));
	memset(&res, 0, sizeof(res));
	sb_init(&body);
	if (path_recipient(ri->local_uri_raw, recipient, sizeof(recipient)) < 0) {
		gw_refuse(&rf, 404, "not_found", "no such resource");
		goto refuse;
	}
	if (strcmp(ri->request_method, "POST") != 0) {
		gw_refuse(&rf, 405, "method_not_allowed", "use POST");
		goto refuse;
	}
	if (auth_check_agent_id(recipient, &why) != CR_OK) {
		gw_refuse(&rf, 400, "invalid_recipient", "recipient %s", why);
		goto refuse;
	}
	if (ri->content_length > g->cfg.max_body_bytes) {
		gw_refuse(&rf, 413, "too_large", "the body is larger than %lld bytes",
		    g->cfg.max_body_bytes);
		goto refuse;
	}
	err = http_read_body(c, (size_t)g->cfg.max_body_bytes, &body);
	if (err == CR_ERR_TOO_BIG) {
		gw_refuse(&rf, 413, "too_large", "the body is larger than %lld bytes",
		    g->cfg.max_body_bytes);
		goto refuse;
	}
	if (err != CR_OK) {
		gw_refuse(&rf, 400, "bad_body", "the body could not be read");
		goto refuse;
	}
	if (gw_auth_request(g, c, body.data ? body.data : "", body.len, &rq, &rf) < 0) {
		if (rq.correlation_id != NULL && auth_check_correlation_id(rq.correlation_id, NULL) == CR_OK)
			cid = rq.correlation_id;
		goto refuse;
	}
	cid = rq.correlation_id;
	if (gw_check_pair(g, rq.agent, recipient, &rf, &trust) < 0 ||
	    gw_sender_allow(g, rq.agent, &rf) < 0 ||
	    gw_part_allow(g, partition_of(recipient, g->partitions), &rf) < 0)
		goto refuse;
	e.pair_queue_max = trust.queue_max;
	e.pair_rate_per_min = trust.rate_per_min;
	e.pair_burst = trust.burst;

	e.sender = gw_mut(rq.agent);
	e.recipient = recipient;
	e.priority = (Clawrelay__V1__Priority)rq.priority_v;
	e.correlation_id = gw_mut(rq.correlation_id);
	e.idempotency_key = gw_mut(rq.idempotency_key ? rq.idempotency_key : "");
	e.content_type = gw_mut(rq.content_type);
	e.payload.data = (uint8_t *)body.data;
	e.payload.len = body.len;
	e.nonce = gw_mut(rq.nonce);	/* relay-session refuses a replay (ENQ_REPLAY) */
	if (rq.traceparent != NULL) {
		gw_fill_trace(rq.traceparent, ids.trace_id, ids.span_id, &e.trace_flags);
		e.trace_id = ids.trace_id;
		e.span_id = ids.span_id;
	}
	if (gw_envelope_finish(g, &e, &ids, rq.ttl_s, &rf) < 0)
		goto refuse;
	cid = e.correlation_id;
	/* most envelopes fit the stack buffer: no allocation */
	wlen = protobuf_c_message_get_packed_size(&e.base);
	if (wlen <= sizeof(wstack)) {
		wlen = protobuf_c_message_pack(&e.base, wstack);
		wdata = wstack;
	} else if (env_pack(&e.base, &wire, &wlen) == CR_OK) {
		wdata = wire;
	}
	if (wdata == NULL) {
		gw_refuse(&rf, 503, "internal", "the message could not be encoded");
		goto refuse;
	}
	hop_emit(&e, CLAWRELAY__V1__HOP_KIND__HOP_GATEWAY_ACCEPTED, "ok", NULL);
	gw_enq_http(g, recipient, wdata, wlen, &e, &res);
	if (res.status == 200 || res.status == 202) {
		char json[GW_ENQ_JSON_MAX];
		int jn = gw_enq_json(&res, json, sizeof(json));
		struct log_ctx lc = { res.correlation_id, res.message_id, rq.agent, e.trace_id };
		log_debug(&lc, "accepted %d for %s", res.status, recipient);
		metric_add(g->m_accepted_http, 1);
		if (jn > 0)
			http_reply(c, res.status, "application/json", NULL, json, (size_t)jn);
		else
			http_error(c, 503, "internal", "the answer cannot be encoded", res.correlation_id, 1);
	} else {
		rf.status = res.status;
		rf.code = res.code;
		rf.retry_after_s = res.retry_after_s;
		snprintf(rf.message, sizeof(rf.message), "%s", res.message);
		gw_http_refuse(c, &rf, rq.agent, res.correlation_id);
	}
	goto out;
refuse:
	gw_http_refuse(c, &rf, rq.agent, cid);
out:
	free(wire);
	sb_free(&body);
	return rf.status ? rf.status : (res.status ? res.status : 200);
}
