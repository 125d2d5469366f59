/*
 * conn_api.c - the connector's local HTTP API for its agent.
 *
 * POST /v1/outbound/{recipient}: body = payload; optional headers
 * X-Claw-Correlation-Id (a ULID is assigned when absent), X-Claw-Priority,
 * X-Claw-Ttl-Seconds, X-Claw-Idempotency-Key, Content-Type, traceparent.
 * Inputs are checked with the gateway's own rules (auth.h) so the agent gets
 * the same 400 locally. When the agent gives no idempotency key the
 * connector makes one ("conn-<ULID>"): a message whose enqueue_ack was lost
 * with the socket can then be sent again over HTTP without a duplicate.
 *
 * Socket open: an enqueue frame, answered with the enqueue_ack's status and
 * {messageId, correlationId, status}. Socket down (or the ack lost): a signed
 * POST to the gateway with libcurl, whose status, body and Retry-After are
 * passed through.
 *
 * Threads: handlers run on civetweb's workers; they only read the immutable
 * config and key and call the thread-safe conn_ws_* functions.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <civetweb.h>
#include <curl/curl.h>

#include "auth.h"
#include "conn.h"
#include "http.h"
#include "log.h"

#define OUT_PREFIX "/v1/outbound/"
#define GW_REPLY_MAX (64u * 1024)

struct gw_reply {
	struct strbuf body;
	char ctype[128];
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

	hdr_value(p, sz * n, "Content-Type:", r->ctype, sizeof(r->ctype));
	hdr_value(p, sz * n, "Retry-After:", r->retry_after, sizeof(r->retry_after));
	return sz * n;
}

struct outbound {
	const char *recipient;
	const char *corr;
	const char *priority;     /* as given, or NULL */
	const char *ttl;          /* as given, or NULL */
	const char *idem;
	const char *ctype;
	const char *traceparent;
	const void *body;
	size_t len;
};

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

/* signed POST /v1/agents/{recipient}/messages; relays the gateway's answer */
static void post_http(struct conn *c, struct mg_connection *mc, const struct outbound *o)
{
	struct auth_proof_input in;
	struct gw_reply r;
	struct curl_slist *hl = NULL;
	char path[512], url[1024], ts[24], nonce[40], sha[AUTH_SHA256_B64_SIZE];
	char sig[AUTH_SIG_B64_SIZE], extra[64];
	CURL *h = NULL;
	CURLcode rc;
	long status = 0;
	int bad = 0;

	memset(&r, 0, sizeof(r));
	sb_init(&r.body);
	snprintf(path, sizeof(path), "%s/v1/agents/%s/messages", c->gw.base, o->recipient);
	snprintf(url, sizeof(url), "%s://%s:%d%s", c->gw.tls ? "https" : "http", c->gw.host,
	    c->gw.port, path);
	snprintf(ts, sizeof(ts), "%llu", (unsigned long long)(now_ms() / 1000u));
	rand_hex(nonce, 16);
	if (auth_sha256_b64url(o->body, o->len, sha) != CR_OK)
		goto fail;
	memset(&in, 0, sizeof(in));
	in.method = "POST";
	in.path = path;
	in.agent = c->cfg.agent_id;
	in.timestamp = ts;
	in.nonce = nonce;
	in.body_sha256 = sha;
	in.correlation_id = o->corr;
	in.idempotency_key = o->idem;
	in.priority = o->priority;
	in.ttl_seconds = o->ttl;
	if (auth_sign_request(c->key, &in, sig) != CR_OK)
		goto fail;
	hl = hadd(hl, &bad, "X-Claw-Agent", c->cfg.agent_id);
	hl = hadd(hl, &bad, "X-Claw-Timestamp", ts);
	hl = hadd(hl, &bad, "X-Claw-Nonce", nonce);
	hl = hadd(hl, &bad, "X-Claw-Body-SHA256", sha);
	hl = hadd(hl, &bad, "X-Claw-Proof", sig);
	hl = hadd(hl, &bad, "X-Claw-Correlation-Id", o->corr);
	hl = hadd(hl, &bad, "X-Claw-Idempotency-Key", o->idem);
	hl = hadd(hl, &bad, "X-Claw-Priority", o->priority);
	hl = hadd(hl, &bad, "X-Claw-Ttl-Seconds", o->ttl);
	hl = hadd(hl, &bad, "Content-Type", o->ctype ? o->ctype : "application/octet-stream");
	hl = hadd(hl, &bad, "traceparent", o->traceparent);
	if (!bad && (hl = curl_slist_append(hl, "Expect:")) == NULL)
		bad = 1;
	if (bad || !(h = curl_easy_init()))
		goto fail;
	curl_easy_setopt(h, CURLOPT_URL, url);
	curl_easy_setopt(h, CURLOPT_POST, 1L);
	curl_easy_setopt(h, CURLOPT_POSTFIELDS, o->len ? (const char *)o->body : "");
	curl_easy_setopt(h, CURLOPT_POSTFIELDSIZE_LARGE, (curl_off_t)o->len);
	curl_easy_setopt(h, CURLOPT_HTTPHEADER, hl);
	curl_easy_setopt(h, CURLOPT_TIMEOUT_MS, (long)c->cfg.enqueue_timeout_ms);
	curl_easy_setopt(h, CURLOPT_NOSIGNAL, 1L);
	curl_easy_setopt(h, CURLOPT_WRITEFUNCTION, on_body);
	curl_easy_setopt(h, CURLOPT_WRITEDATA, &r);
	curl_easy_setopt(h, CURLOPT_HEADERFUNCTION, on_header);
	curl_easy_setopt(h, CURLOPT_HEADERDATA, &r);
	rc = curl_easy_perform(h);
	if (rc != CURLE_OK) {
		struct log_ctx lc = { o->corr, NULL, o->recipient };

		log_warn(&lc, "gateway POST failed: %s", curl_easy_strerror(rc));
		http_error(mc, 503, "gateway_unavailable", curl_easy_strerror(rc), o->corr, 1);
		goto out;
	}
	curl_easy_getinfo(h, CURLINFO_RESPONSE_CODE, &status);
	extra[0] = '\0';
	if (r.retry_after[0])
		snprintf(extra, sizeof(extra), "Retry-After: %s\r\n", r.retry_after);
	http_reply(mc, (int)status, r.ctype[0] ? r.ctype : "application/json",
	    extra[0] ? extra : NULL, r.body.data ? r.body.data : "", r.body.len);
	goto out;
fail:
	http_error(mc, 500, "internal", "could not build the gateway request", o->corr, 0);
out:
	curl_slist_free_all(hl);
	if (h)
		curl_easy_cleanup(h);
	sb_free(&r.body);
}

static void reply_ack(struct mg_connection *mc, const EnqueueAck *a, const char *corr)
{
	const char *cid = a->correlation_id && a->correlation_id[0] ? a->correlation_id : corr;
	int status = a->http_status ? (int)a->http_status : 500;
	cJSON *j;
	char *txt;

	if (status >= 400) {
		http_error(mc, status, a->error_code && a->error_code[0] ? a->error_code : "error",
		    a->error_message ? a->error_message : "", cid, a->retry_after_s);
		return;
	}
	j = cJSON_CreateObject();
	if (!j) {
		http_error(mc, 500, "internal", "out of memory", cid, 0);
		return;
	}
	cJSON_AddStringToObject(j, "messageId", a->message_id ? a->message_id : "");
	cJSON_AddStringToObject(j, "correlationId", cid);
	cJSON_AddStringToObject(j, "status", a->state && a->state[0] ? a->state :
	    (status == 202 ? "queued" : "duplicate"));
	txt = cJSON_PrintUnformatted(j);
	cJSON_Delete(j);
	if (!txt) {
		http_error(mc, 500, "internal", "out of memory", cid, 0);
		return;
	}
	http_json(mc, status, txt);
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
	struct outbound o;
	struct strbuf body;
	const char *why = NULL;
	char corr[ULID_LEN + 1], idem[ULID_LEN + 8], trace[33], span[17];
	unsigned flags = 0;
	int have_tp = 0;
	enum cr_err e;

	memset(&o, 0, sizeof(o));
	sb_init(&body);
	if (strcmp(ri->request_method, "POST") != 0) {
		http_error(mc, 405, "method_not_allowed", "use POST", NULL, 0);
		goto out;
	}
	o.recipient = ri->local_uri + strlen(OUT_PREFIX);
	if (strncmp(ri->local_uri, OUT_PREFIX, strlen(OUT_PREFIX)) != 0 ||
	    auth_check_agent_id(o.recipient, &why) != CR_OK) {
		http_error(mc, 400, "bad_recipient", why ? why : "bad path", NULL, 0);
		goto out;
	}
	if (one_header(mc, "X-Claw-Correlation-Id", &o.corr) || one_header(mc,
	    "X-Claw-Priority", &o.priority) || one_header(mc, "X-Claw-Ttl-Seconds", &o.ttl) ||
	    one_header(mc, "X-Claw-Idempotency-Key", &o.idem)) {
		http_error(mc, 400, "repeated_header", "an X-Claw-* header is repeated", NULL, 0);
		goto out;
	}
	if (o.corr && auth_check_correlation_id(o.corr, &why) != CR_OK) {
		http_error(mc, 400, "bad_correlation_id", why, NULL, 0);
		goto out;
	}
	if (!o.corr) {
		ulid_new(corr);
		o.corr = corr;
	}
	if ((o.priority && auth_check_priority(o.priority, &why) != CR_OK) ||
	    (o.ttl && auth_check_ttl(o.ttl, NULL, &why) != CR_OK) ||
	    (o.idem && auth_check_idempotency_key(o.idem, &why) != CR_OK)) {
		http_error(mc, 400, "bad_header", why, o.corr, 0);
		goto out;
	}
	if (!o.idem) {
		char u[ULID_LEN + 1];

		ulid_new(u);
		snprintf(idem, sizeof(idem), "conn-%s", u);
		o.idem = idem;
	}
	o.ctype = mg_get_header(mc, "Content-Type");
	o.traceparent = mg_get_header(mc, "traceparent");
	if (o.traceparent && traceparent_parse(o.traceparent, trace, span, &flags) == 0)
		have_tp = 1;
	else
		o.traceparent = NULL;
	e = http_read_body(mc, (size_t)c->cfg.max_body, &body);
	if (e == CR_ERR_TOO_BIG) {
		http_error(mc, 413, "too_large", "payload over CLAWRELAY_MAX_BODY", o.corr, 0);
		goto out;
	} else if (e != CR_OK) {
		http_error(mc, 400, "bad_body", "could not read the body", o.corr, 0);
		goto out;
	}
	o.body = body.data;
	o.len = body.len;

	conn_ws_event_ids(c, o.corr, NULL, c->cfg.agent_id, o.recipient, have_tp ? trace : NULL,
	    CLAWRELAY__V1__HOP_KIND__HOP_CONNECTOR_SENT, "ok",
	    conn_ws_is_open(c) ? "via=socket" : "via=http");
	if (conn_ws_is_open(c)) {
		Envelope env = CLAWRELAY__V1__ENVELOPE__INIT;
		EnqueueAck *ack = NULL;
		uint32_t ttl = 0;

		env.schema_version = ENV_SCHEMA;
		env.correlation_id = conn_str(o.corr);
		env.idempotency_key = conn_str(o.idem);
		env.sender = c->cfg.agent_id;
		env.recipient = conn_str(o.recipient);
		env.priority = o.priority ? env_priority_parse(o.priority) :
		    CLAWRELAY__V1__PRIORITY__PRIORITY_NORMAL;
		env.created_at_ms = now_ms();
		if (o.ttl && auth_check_ttl(o.ttl, &ttl, NULL) == CR_OK)
			env.expires_at_ms = env.created_at_ms + (uint64_t)ttl * 1000u;
		env.content_type = conn_str(o.ctype ? o.ctype : "application/octet-stream");
		env.payload.data = (uint8_t *)(uintptr_t)o.body;
		env.payload.len = o.len;
		if (have_tp) {
			env.trace_id = trace;
			env.span_id = span;
			env.trace_flags = flags;
		}
		e = conn_ws_enqueue(c, &env, (uint64_t)c->cfg.enqueue_timeout_ms, &ack);
		if (e == CR_OK) {
			reply_ack(mc, ack, o.corr);
			protobuf_c_message_free_unpacked(&ack->base, NULL);
			goto out;
		}
		{
			struct log_ctx lc = { o.corr, NULL, o.recipient };

			log_warn(&lc, "enqueue over the socket failed (%s): sending over HTTP",
			    cr_strerror(e));
		}
	}
	post_http(c, mc, &o);
out:
	sb_free(&body);
	return 1;
}
