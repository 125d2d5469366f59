/*
 * conn_out.c - one outbound message to the gateway, and what its answer
 * means. Used by the local API (conn_api.c) for a message sent at once and
 * by the outbox worker (conn_outbox.c) for a stored one.
 *
 * Socket open: an enqueue frame, answered by its enqueue_ack (the status the
 * POST would have had). Socket down, or the ack lost with the socket or not
 * back within ENQUEUE_TIMEOUT_MS: a signed POST /v1/agents/{recipient}/
 * messages with libcurl (DESIGN section 5). Both carry the message's
 * idempotency key (Envelope.idempotency_key; X-Claw-Idempotency-Key, signed),
 * so a message sent twice because an answer was lost is queued once: the
 * second answer is 200 with the first one's IDs.
 *
 * The POST carries X-Claw-Priority always and X-Claw-Ttl-Seconds when the
 * message has an expiry: the seconds left until Envelope.expires_at_ms (a
 * message that waited in the outbox keeps its deadline, it does not get its
 * whole TTL again).
 *
 * Threads: any; only the immutable config and key and the thread-safe
 * conn_ws_* functions are used. Each POST has its own curl handle.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <curl/curl.h>

#include "auth.h"
#include "conn.h"
#include "log.h"

#define GW_REPLY_MAX (64u * 1024)

struct gw_reply {
	struct strbuf body;
	char retry_after[16];
};

static size_t on_body(char *p, size_t sz, size_t n, void *arg)
{
	struct gw_reply *r = arg;

	if (r->body.len + sz * n > GW_REPLY_MAX)
		return 0;
	return sb_append(&r->body, p, sz * n) == 0 ? sz * n : 0;
}

static void hdr_value(const char *line, size_t n, const char *name, char *out, size_t sz)
{
	size_t nl = strlen(name);

	if (n <= nl || strncasecmp(line, name, nl) != 0)
		return;
	line += nl;
	n -= nl;
	while (n && (*line == ' ' || *line == '\t')) {
		line++;
		n--;
	}
	while (n && (line[n - 1] == '\r' || line[n - 1] == '\n' || line[n - 1] == ' '))
		n--;
	if (n >= sz)
		n = sz - 1;
	memcpy(out, line, n);
	out[n] = '\0';
}

static size_t on_header(char *p, size_t sz, size_t n, void *arg)
{
	struct gw_reply *r = arg;

	hdr_value(p, sz * n, "Retry-After:", r->retry_after, sizeof(r->retry_after));
	return sz * n;
}

static struct curl_slist *hadd(struct curl_slist *l, int *bad, const char *name, const char *v)
{
	char buf[600];
	struct curl_slist *n;

	if (*bad || !v || !v[0])
		return l;
	snprintf(buf, sizeof(buf), "%s: %s", name, v);
	if (!(n = curl_slist_append(l, buf)))
		*bad = 1;
	return n ? n : l;
}

static void copy(char *dst, size_t sz, const char *s)
{
	snprintf(dst, sz, "%s", s ? s : "");
}

/* the gateway's JSON answer into res: {messageId, correlationId, status} or
 * {"error": {code, message}} */
static void parse_reply(const struct gw_reply *r, struct conn_out_res *res)
{
	cJSON *j = r->body.data ? cJSON_ParseWithLength(r->body.data, r->body.len) : NULL;
	cJSON *err = j ? cJSON_GetObjectItem(j, "error") : NULL, *v;

	if (err) {
		if ((v = cJSON_GetObjectItem(err, "code")) && cJSON_IsString(v))
			copy(res->code, sizeof(res->code), v->valuestring);
		if ((v = cJSON_GetObjectItem(err, "message")) && cJSON_IsString(v))
			copy(res->message, sizeof(res->message), v->valuestring);
	} else if (j) {
		if ((v = cJSON_GetObjectItem(j, "messageId")) && cJSON_IsString(v))
			copy(res->message_id, sizeof(res->message_id), v->valuestring);
		if ((v = cJSON_GetObjectItem(j, "correlationId")) && cJSON_IsString(v))
			copy(res->correlation_id, sizeof(res->correlation_id), v->valuestring);
		if ((v = cJSON_GetObjectItem(j, "status")) && cJSON_IsString(v))
			copy(res->state, sizeof(res->state), v->valuestring);
	}
	if (res->status >= 400 && !res->code[0]) {
		res->bare = 1;
		snprintf(res->code, sizeof(res->code), "gateway_%d", res->status);
	}
	cJSON_Delete(j);
}

/* signed POST /v1/agents/{recipient}/messages */
static void post_http(struct conn *c, const Envelope *e, struct conn_out_res *res)
{
	struct auth_proof_input in;
	struct gw_reply r;
	struct curl_slist *hl = NULL;
	char path[512], url[1024], ts[24], nonce[40], sha[AUTH_SHA256_B64_SIZE];
	char sig[AUTH_SIG_B64_SIZE], ttl[24] = "", tp[56] = "";
	const char *prio = env_priority_name(e->priority);
	CURL *h = NULL;
	CURLcode rc;
	long status = 0;
	int bad = 0;

	memset(&r, 0, sizeof(r));
	sb_init(&r.body);
	if (e->expires_at_ms) {
		uint64_t now = now_ms();
		/* conn_out_send made sure it has not expired: at least 1 */
		uint64_t left = e->expires_at_ms > now ? (e->expires_at_ms - now + 999) / 1000 : 1;

		snprintf(ttl, sizeof(ttl), "%llu", (unsigned long long)(left > AUTH_TTL_MAX_S ?
		    AUTH_TTL_MAX_S : left));
	}
	if (e->trace_id && strlen(e->trace_id) == 32 && e->span_id && strlen(e->span_id) == 16)
		traceparent_format(tp, e->trace_id, e->span_id, e->trace_flags);
	snprintf(path, sizeof(path), "%s/v1/agents/%s/messages", c->gw.base, e->recipient);
	snprintf(url, sizeof(url), "%s://%s:%d%s", c->gw.tls ? "https" : "http", c->gw.host,
	    c->gw.port, path);
	snprintf(ts, sizeof(ts), "%llu", (unsigned long long)(now_ms() / 1000u));
	rand_hex(nonce, 16);
	if (auth_sha256_b64url(e->payload.data, e->payload.len, sha) != CR_OK)
		goto fail;
	memset(&in, 0, sizeof(in));
	in.method = "POST";
	in.path = path;
	in.agent = c->cfg.agent_id;
	in.timestamp = ts;
	in.nonce = nonce;
	in.body_sha256 = sha;
	in.correlation_id = e->correlation_id;
	in.idempotency_key = e->idempotency_key;
	in.priority = prio;
	in.ttl_seconds = ttl[0] ? ttl : NULL;
	if (auth_sign_request(c->key, &in, sig) != CR_OK)
		goto fail;
	hl = hadd(hl, &bad, "X-Claw-Agent", c->cfg.agent_id);
	hl = hadd(hl, &bad, "X-Claw-Timestamp", ts);
	hl = hadd(hl, &bad, "X-Claw-Nonce", nonce);
	hl = hadd(hl, &bad, "X-Claw-Body-SHA256", sha);
	hl = hadd(hl, &bad, "X-Claw-Proof", sig);
	hl = hadd(hl, &bad, "X-Claw-Correlation-Id", e->correlation_id);
	hl = hadd(hl, &bad, "X-Claw-Idempotency-Key", e->idempotency_key);
	hl = hadd(hl, &bad, "X-Claw-Priority", prio);
	hl = hadd(hl, &bad, "X-Claw-Ttl-Seconds", ttl);
	hl = hadd(hl, &bad, "Content-Type", e->content_type && e->content_type[0] ?
	    e->content_type : "application/octet-stream");
	hl = hadd(hl, &bad, "traceparent", tp);
	if (!bad && (hl = curl_slist_append(hl, "Expect:")) == NULL)
		bad = 1;
	if (bad || !(h = curl_easy_init()))
		goto fail;
	curl_easy_setopt(h, CURLOPT_URL, url);
	curl_easy_setopt(h, CURLOPT_POST, 1L);
	curl_easy_setopt(h, CURLOPT_POSTFIELDS, e->payload.len ? (const char *)e->payload.data : "");
	curl_easy_setopt(h, CURLOPT_POSTFIELDSIZE_LARGE, (curl_off_t)e->payload.len);
	curl_easy_setopt(h, CURLOPT_HTTPHEADER, hl);
	curl_easy_setopt(h, CURLOPT_TIMEOUT_MS, (long)c->cfg.enqueue_timeout_ms);
	curl_easy_setopt(h, CURLOPT_NOSIGNAL, 1L);
	curl_easy_setopt(h, CURLOPT_WRITEFUNCTION, on_body);
	curl_easy_setopt(h, CURLOPT_WRITEDATA, &r);
	curl_easy_setopt(h, CURLOPT_HEADERFUNCTION, on_header);
	curl_easy_setopt(h, CURLOPT_HEADERDATA, &r);
	rc = curl_easy_perform(h);
	if (rc != CURLE_OK) {
		res->status = 0;
		snprintf(res->detail, sizeof(res->detail), "gateway POST: %s", curl_easy_strerror(rc));
		goto out;
	}
	curl_easy_getinfo(h, CURLINFO_RESPONSE_CODE, &status);
	res->status = (int)status;
	if (r.retry_after[0])
		res->retry_after_s = (unsigned)strtoul(r.retry_after, NULL, 10);
	parse_reply(&r, res);
	goto out;
fail:
	/* our own fault (memory, signing): not the gateway's, never retried */
	res->status = 500;
	res->local_error = 1;
	copy(res->code, sizeof(res->code), "internal");
	copy(res->message, sizeof(res->message), "could not build the gateway request");
out:
	curl_slist_free_all(hl);
	if (h)
		curl_easy_cleanup(h);
	sb_free(&r.body);
}

/* conn_out_send - send e (borrowed; message_id empty, sender this agent,
 * idempotency key set) over the socket when it is open, else as a signed
 * POST; *res gets the answer (status 0: none came) */
void conn_out_send(struct conn *c, const Envelope *e, struct conn_out_res *res)
{
	EnqueueAck *ack = NULL;
	enum cr_err err;

	memset(res, 0, sizeof(*res));
	if (e->expires_at_ms && e->expires_at_ms <= now_ms()) {
		res->expired = 1;
		copy(res->code, sizeof(res->code), "expired");
		copy(res->message, sizeof(res->message), "the message expired before it was sent");
		return;
	}
	if (conn_ws_is_open(c)) {
		err = conn_ws_enqueue(c, e, (uint64_t)c->cfg.enqueue_timeout_ms, &ack);
		if (err == CR_OK) {
			res->via_socket = 1;
			res->status = ack->http_status ? (int)ack->http_status : 500;
			res->retry_after_s = ack->retry_after_s;
			copy(res->message_id, sizeof(res->message_id), ack->message_id);
			copy(res->correlation_id, sizeof(res->correlation_id), ack->correlation_id);
			copy(res->state, sizeof(res->state), ack->state);
			copy(res->code, sizeof(res->code), ack->error_code);
			copy(res->message, sizeof(res->message), ack->error_message);
			if (res->status >= 400 && !res->code[0])
				snprintf(res->code, sizeof(res->code), "gateway_%d", res->status);
			protobuf_c_message_free_unpacked(&ack->base, NULL);
			return;
		}
		{
			struct log_ctx lc = { e->correlation_id, NULL, e->recipient, NULL };

			log_warn(&lc, "enqueue over the socket failed (%s): sending over HTTP",
			    cr_strerror(err));
		}
	}
	post_http(c, e, res);
}

/* conn_out_class - what an answer means (conn_class.h) */
enum conn_out_class conn_out_class(const struct conn_out_res *res)
{
	return conn_out_classify(res->status, res->bare, res->local_error, res->expired);
}
