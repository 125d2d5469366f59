/*
 * conn_api.c - the connector's local HTTP API for its agent.
 *
 * POST /v1/outbound/{recipient}: body = payload; optional headers
 * X-Claw-Correlation-Id (a ULID is assigned when absent), X-Claw-Priority,
 * X-Claw-Ttl-Seconds, X-Claw-Idempotency-Key, X-Claw-Event-Id, Content-Type,
 * traceparent. Inputs are checked with the gateway's own rules (auth.h) so
 * the agent gets the same 400 locally.
 *
 * Idempotency: without X-Claw-Idempotency-Key the message gets a
 * deterministic key from (this agent, recipient, the agent's
 * X-Claw-Correlation-Id and X-Claw-Event-Id if given, payload)
 * (conn_key.h): the same send fired twice is one message (the second answer
 * is 200 with the first's IDs), and a message sent again after a lost
 * answer, or from the outbox, is queued once.
 *
 * Where it goes:
 *   - older messages for the same recipient wait in the outbox: behind them
 *     (so they keep their order);
 *   - the connector -> gateway breaker is open (or its probe is out): to
 *     the outbox, without trying;
 *   - otherwise sent now (conn_out.c: socket, else signed POST). An answer
 *     that says the gateway is unavailable (none, timeout, 5xx other than
 *     507, a 4xx without the gateway's JSON error) puts it in the outbox;
 *     any other answer is the agent's: 202/200
 *     {messageId, correlationId, status, state, idempotencyKey}, or the
 *     gateway's error with its status and Retry-After.
 * Outboxed: 202 {"status": "outboxed", "state": "outboxed", "messageId":
 * null, "outboxId", "correlationId", "idempotencyKey"} once it is on disk
 * (a second send with the same key while it waits: the same answer with
 * "duplicate": true; the key with another recipient or payload: 409); 507
 * outbox_full with Retry-After when the outbox is at its bounds.
 *
 * Threads: handlers run on civetweb's workers; they only read the immutable
 * config and key and call thread-safe functions (conn_ws_*, conn_out_*,
 * conn_outbox_*, conn_brk_*).
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <civetweb.h>

#include "auth.h"
#include "conn.h"
#include "conn_key.h"
#include "http.h"
#include "log.h"

#define OUT_PREFIX "/v1/outbound/"
#define OUTBOX_FULL_RETRY_S 5

/* 2xx from the gateway: the IDs it gave */
static void reply_sent(struct mg_connection *mc, const struct conn_out_res *r,
    const Envelope *e)
{
	cJSON *j = cJSON_CreateObject();
	const char *st = r->state[0] ? r->state : (r->status == 202 ? "queued" : "duplicate");
	char *txt;

	if (!j) {
		http_error(mc, 500, "internal", "out of memory", e->correlation_id, 0);
		return;
	}
	cJSON_AddStringToObject(j, "messageId", r->message_id);
	cJSON_AddStringToObject(j, "correlationId", r->correlation_id[0] ? r->correlation_id :
	    e->correlation_id);
	cJSON_AddStringToObject(j, "status", st);
	cJSON_AddStringToObject(j, "state", st);
	cJSON_AddStringToObject(j, "idempotencyKey", e->idempotency_key);
	txt = cJSON_PrintUnformatted(j);
	cJSON_Delete(j);
	if (!txt) {
		http_error(mc, 500, "internal", "out of memory", e->correlation_id, 0);
		return;
	}
	http_json(mc, r->status, txt);
	cJSON_free(txt);
}

/* store e in the outbox and answer the agent */
static void to_outbox(struct conn *c, struct mg_connection *mc, const Envelope *e,
    const char *why)
{
	struct log_ctx lc = { e->correlation_id, NULL, e->recipient, NULL };
	uint64_t id = 0;
	enum cr_err err = conn_outbox_put(c, e, &id);
	cJSON *j;
	char *txt, detail[64];

	switch (err) {
	case CR_OK:
	case CR_ERR_EXISTS:
		break;
	case CR_ERR_CONFLICT:
		http_error(mc, 409, "idempotency_conflict", "the idempotency key waits in the outbox "
		    "with another recipient or payload", e->correlation_id, 0);
		return;
	case CR_ERR_FULL:
		log_warn(&lc, "outbox full: message refused (%s)", why);
		http_error(mc, 507, "outbox_full", "the gateway cannot be reached and the outbox is "
		    "full (CLAWRELAY_OUTBOX_MAX / CLAWRELAY_OUTBOX_MAX_MB)", e->correlation_id,
		    OUTBOX_FULL_RETRY_S);
		return;
	default:
		log_error(&lc, "outbox store failed: %s", cr_strerror(err));
		http_error(mc, 503, "gateway_unavailable", "the gateway cannot be reached and the "
		    "outbox could not store the message", e->correlation_id, 1);
		return;
	}
	if (err == CR_OK) {
		snprintf(detail, sizeof(detail), "via=outbox outbox_id=%llu", (unsigned long long)id);
		conn_ws_event_ids(c, e->correlation_id, NULL, c->cfg.agent_id, e->recipient,
		    e->trace_id, CLAWRELAY__V1__HOP_KIND__HOP_CONNECTOR_SENT, "ok", detail);
		log_info(&lc, "outboxed as %llu: %s", (unsigned long long)id, why);
	}
	if (!(j = cJSON_CreateObject())) {
		http_error(mc, 500, "internal", "out of memory", e->correlation_id, 0);
		return;
	}
	cJSON_AddNullToObject(j, "messageId");
	cJSON_AddStringToObject(j, "correlationId", e->correlation_id);
	cJSON_AddStringToObject(j, "status", "outboxed");
	cJSON_AddStringToObject(j, "state", "outboxed");
	cJSON_AddNumberToObject(j, "outboxId", (double)id);
	cJSON_AddStringToObject(j, "idempotencyKey", e->idempotency_key);
	if (err == CR_ERR_EXISTS)
		cJSON_AddTrueToObject(j, "duplicate");
	txt = cJSON_PrintUnformatted(j);
	cJSON_Delete(j);
	if (!txt) {
		http_error(mc, 500, "internal", "out of memory", e->correlation_id, 0);
		return;
	}
	http_json(mc, 202, txt);
	cJSON_free(txt);
}

/* one X-Claw header: NULL when absent or empty; -1 when repeated */
static int one_header(struct mg_connection *mc, const char *name, const char **out)
{
	const char *v;

	*out = NULL;
	if (http_header_count(mc, name) > 1)
		return -1;
	v = mg_get_header(mc, name);
	if (v && v[0])
		*out = v;
	return 0;
}

/* conn_api_outbound - civetweb handler of POST /v1/outbound/{recipient}; arg is struct conn */
int conn_api_outbound(struct mg_connection *mc, void *arg)
{
	struct conn *c = arg;
	const struct mg_request_info *ri = mg_get_request_info(mc);
	Envelope env = CLAWRELAY__V1__ENVELOPE__INIT;
	struct conn_out_res res;
	struct strbuf body;
	const char *why = NULL, *recipient, *corr = NULL, *priority = NULL, *ttl = NULL;
	const char *idem = NULL, *event = NULL, *ctype, *tp, *agent_corr;
	char corrbuf[ULID_LEN + 1], keybuf[CONN_KEY_SIZE], trace[33], span[17], via[32];
	unsigned flags = 0;
	uint32_t ttl_s = 0;
	int go;
	enum cr_err e;

	sb_init(&body);
	if (strcmp(ri->request_method, "POST") != 0) {
		http_error(mc, 405, "method_not_allowed", "use POST", NULL, 0);
		goto out;
	}
	recipient = ri->local_uri + strlen(OUT_PREFIX);
	if (strncmp(ri->local_uri, OUT_PREFIX, strlen(OUT_PREFIX)) != 0 ||
	    auth_check_agent_id(recipient, &why) != CR_OK) {
		http_error(mc, 400, "bad_recipient", why ? why : "bad path", NULL, 0);
		goto out;
	}
	if (one_header(mc, "X-Claw-Correlation-Id", &corr) || one_header(mc,
	    "X-Claw-Priority", &priority) || one_header(mc, "X-Claw-Ttl-Seconds", &ttl) ||
	    one_header(mc, "X-Claw-Idempotency-Key", &idem) ||
	    one_header(mc, "X-Claw-Event-Id", &event)) {
		http_error(mc, 400, "repeated_header", "an X-Claw-* header is repeated", NULL, 0);
		goto out;
	}
	if (corr && auth_check_correlation_id(corr, &why) != CR_OK) {
		http_error(mc, 400, "bad_correlation_id", why, NULL, 0);
		goto out;
	}
	agent_corr = corr;	/* the agent's own, part of the derived key; NULL if none */
	if (!corr) {
		ulid_new(corrbuf);
		corr = corrbuf;
	}
	if ((priority && auth_check_priority(priority, &why) != CR_OK) ||
	    (ttl && auth_check_ttl(ttl, &ttl_s, &why) != CR_OK) ||
	    (idem && auth_check_idempotency_key(idem, &why) != CR_OK)) {
		http_error(mc, 400, "bad_header", why, corr, 0);
		goto out;
	}
	if (event && auth_check_idempotency_key(event, &why) != CR_OK) {
		http_error(mc, 400, "bad_event_id", "X-Claw-Event-Id: 1-256 printable ASCII "
		    "characters without spaces", corr, 0);
		goto out;
	}
	e = http_read_body(mc, (size_t)c->cfg.max_body, &body);
	if (e == CR_ERR_TOO_BIG) {
		http_error(mc, 413, "too_large", "payload over CLAWRELAY_MAX_BODY", corr, 0);
		goto out;
	} else if (e != CR_OK) {
		http_error(mc, 400, "bad_body", "could not read the body", corr, 0);
		goto out;
	}
	if (!idem) {
		if (conn_idem_key(c->cfg.agent_id, recipient, agent_corr, event, body.data, body.len,
		    keybuf) != CR_OK) {
			http_error(mc, 500, "internal", "could not derive the idempotency key", corr, 0);
			goto out;
		}
		idem = keybuf;
	}
	ctype = mg_get_header(mc, "Content-Type");
	tp = mg_get_header(mc, "traceparent");

	env.schema_version = ENV_SCHEMA;
	env.correlation_id = conn_str(corr);
	env.idempotency_key = conn_str(idem);
	env.sender = c->cfg.agent_id;
	env.recipient = conn_str(recipient);
	env.priority = priority ? env_priority_parse(priority) :
	    CLAWRELAY__V1__PRIORITY__PRIORITY_NORMAL;
	env.created_at_ms = now_ms();
	if (ttl_s)
		env.expires_at_ms = env.created_at_ms + (uint64_t)ttl_s * 1000u;
	env.content_type = conn_str(ctype && ctype[0] ? ctype : "application/octet-stream");
	env.payload.data = (uint8_t *)body.data;
	env.payload.len = body.len;
	if (tp && traceparent_parse(tp, trace, span, &flags) == 0) {
		env.trace_id = trace;
		env.span_id = span;
		env.trace_flags = flags;
	}

	if (conn_outbox_waiting(c, recipient) > 0) {
		to_outbox(c, mc, &env, "older messages for the recipient wait in the outbox");
		goto out;
	}
	if ((go = conn_brk_allow(c->outbox.brk)) == BRK_REFUSE) {
		to_outbox(c, mc, &env, "the gateway breaker is open");
		goto out;
	}
	snprintf(via, sizeof(via), "via=%s%s", conn_ws_is_open(c) ? "socket" : "http",
	    go == BRK_PROBE ? " probe" : "");
	conn_ws_event_ids(c, corr, NULL, c->cfg.agent_id, recipient, env.trace_id,
	    CLAWRELAY__V1__HOP_KIND__HOP_CONNECTOR_SENT, "ok", via);
	conn_out_send(c, &env, &res);
	switch (conn_out_class(&res)) {
	case CONN_OUT_RETRY:
		conn_brk_result(c->outbox.brk, 0);
		{
			struct log_ctx lc = { corr, NULL, recipient, NULL };

			log_warn(&lc, "gateway unavailable (%s %s): to the outbox", res.status ?
			    res.code : "no answer", res.status ? res.message : res.detail);
		}
		to_outbox(c, mc, &env, "the gateway is unavailable");
		break;
	case CONN_OUT_OK:
		conn_brk_result(c->outbox.brk, 1);
		conn_outbox_kick(c);	/* other recipients' outboxed messages may go too */
		reply_sent(mc, &res, &env);
		break;
	case CONN_OUT_EXPIRED:	/* cannot happen for a message made just now */
	case CONN_OUT_LATER:
	case CONN_OUT_REFUSED:
		conn_brk_result(c->outbox.brk, 1);
		http_error(mc, res.status ? res.status : 400, res.code[0] ? res.code : "refused",
		    res.message, res.correlation_id[0] ? res.correlation_id : corr,
		    res.retry_after_s ? res.retry_after_s : (res.status == 429 ||
		    res.status == 507 ? 1 : 0));
		break;
	}
out:
	sb_free(&body);
	return 1;
}
