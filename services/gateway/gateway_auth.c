/*
 * gateway_auth.c - the proof of possession of DESIGN 5, and refusals.
 *
 * Order of the checks (cheap and unauthenticated first, the Ed25519 verify
 * last): repeated X-Claw-* headers (400), missing proof headers (401), header
 * syntax (400), clock window (401 expired), body hash (401 tampered), sender
 * known (401), proof (401). Then the nonce must not have been seen before
 * (401 replay): for GET requests and the WebSocket upgrade (few) through the
 * KV bucket clawrelay_nonces (gw_auth_nonce), so that every replica and every
 * restart agrees; for POSTed messages (many) relay-session checks it in the
 * same commit as the message (Envelope.nonce, ENQ_REPLAY), which saves a
 * synchronous JetStream round trip per message. Then, for messages,
 * recipient (404) and trust (403) in gw_check_pair.
 *
 * The verifier cache maps an agent ID to a struct auth_pubkey built once
 * from the registry's raw key; it is sharded by hash with one mutex per shard
 * and only held for a lookup. A verifier replaced after a key change is kept
 * on a graveyard list until gw_fini, because another thread may still be
 * verifying with it (keys change rarely, so the list stays short).
 *
 * Threads: any civetweb worker; everything shared is behind the shard locks.
 */
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "b64.h"
#include "gateway.h"
#include "http.h"
#include "log.h"
#include "util.h"

struct gw_key {
	char id[AUTH_ID_MAX + 1];
	unsigned char raw[AUTH_PUBKEY_LEN];
	struct auth_pubkey *pk;
	struct gw_key *next;
};

/* gw_refuse - fill rf and return -1 */
int
gw_refuse(struct gw_refusal *rf, int status, const char *code, const char *fmt, ...)
{
	va_list ap;

	rf->status = status;
	rf->code = code;
	rf->retry_after_s = (status == 429 || status == 503 || status == 507) ? 1 : 0;
	va_start(ap, fmt);
	vsnprintf(rf->message, sizeof(rf->message), fmt, ap);
	va_end(ap);
	return -1;
}

/* gw_refusal_count - one log line and one metric per refusal */
void
gw_refusal_count(const struct gw_refusal *rf, const char *what, const char *agent,
    const char *correlation_id)
{
	struct log_ctx lc = { correlation_id, NULL, agent, NULL };
	char labels[128];

	snprintf(labels, sizeof(labels), "code=\"%s\",status=\"%d\"", rf->code, rf->status);
	metric_add(metric_counter("clawrelay_gateway_refusals_total", labels,
	    "requests and frames refused, by code"), 1);
	if (rf->status == 401) {
		snprintf(labels, sizeof(labels), "code=\"%s\"", rf->code);
		metric_add(metric_counter("clawrelay_gateway_auth_failures_total", labels,
		    "authentication failures, by code"), 1);
	}
	if (rf->status >= 500)
		log_warn(&lc, "%s refused %d %s: %s", what, rf->status, rf->code, rf->message);
	else
		log_info(&lc, "%s refused %d %s: %s", what, rf->status, rf->code, rf->message);
}

/* gw_http_refuse - count and answer a refusal as a JSON error */
void
gw_http_refuse(struct mg_connection *c, const struct gw_refusal *rf, const char *agent,
    const char *correlation_id)
{
	const struct mg_request_info *ri = mg_get_request_info(c);
	char what[160];

	snprintf(what, sizeof(what), "%s %.120s", ri->request_method ? ri->request_method : "?",
	    ri->local_uri_raw ? ri->local_uri_raw : "?");
	gw_refusal_count(rf, what, agent, correlation_id);
	http_error(c, rf->status, rf->code, rf->message, correlation_id, rf->retry_after_s);
}

/* a header's value, NULL when absent or empty (an empty header counts as absent) */
static const char *
hdr(const struct mg_connection *c, const char *name)
{
	const char *v = mg_get_header(c, name);
	return (v != NULL && *v != '\0') ? v : NULL;
}

/* the first X-Claw-* header name that appears more than once, or NULL */
static const char *
repeated_claw_header(const struct mg_connection *c)
{
	const struct mg_request_info *ri = mg_get_request_info(c);

	for (int i = 0; i < ri->num_headers; i++) {
		const char *n = ri->http_headers[i].name;
		if (n == NULL || strncasecmp(n, "X-Claw-", 7) != 0)
			continue;
		for (int j = i + 1; j < ri->num_headers; j++) {
			if (ri->http_headers[j].name != NULL &&
			    strcasecmp(n, ri->http_headers[j].name) == 0)
				return n;
		}
	}
	return NULL;
}

static int
is_b64url(const char *s, size_t want)
{
	size_t n = 0;
	for (; s[n] != '\0'; n++) {
		unsigned char ch = (unsigned char)s[n];
		if (!((ch >= 'A' && ch <= 'Z') || (ch >= 'a' && ch <= 'z') ||
		    (ch >= '0' && ch <= '9') || ch == '-' || ch == '_'))
			return 0;
		if (n > want)
			return 0;
	}
	return n == want;
}

/* a shared verifier for agent a; borrowed until gw_fini */
static struct auth_pubkey *
key_get(struct gw *g, const struct reg_agent *a)
{
	struct gw_key_shard *sh = &g->keys[fnv1a32(a->id) % GW_KEY_SHARDS];
	struct gw_key *k, *old = NULL, **pp;
	struct auth_pubkey *pk = NULL;

	pthread_mutex_lock(&sh->mu);
	for (k = sh->head; k != NULL; k = k->next) {
		if (strcmp(k->id, a->id) == 0) {
			if (memcmp(k->raw, a->pubkey, AUTH_PUBKEY_LEN) == 0)
				pk = k->pk;
			break;
		}
	}
	pthread_mutex_unlock(&sh->mu);
	if (pk != NULL)
		return pk;

	k = calloc(1, sizeof(*k));
	if (k == NULL)
		return NULL;
	snprintf(k->id, sizeof(k->id), "%s", a->id);
	memcpy(k->raw, a->pubkey, AUTH_PUBKEY_LEN);
	if (auth_pubkey_new(a->pubkey, &k->pk) != CR_OK) {
		free(k);
		return NULL;
	}
	pthread_mutex_lock(&sh->mu);
	for (pp = &sh->head; *pp != NULL; pp = &(*pp)->next) {
		if (strcmp((*pp)->id, a->id) == 0) {
			old = *pp;
			*pp = old->next;
			break;
		}
	}
	if (old != NULL && memcmp(old->raw, a->pubkey, AUTH_PUBKEY_LEN) == 0) {
		/* another thread built the same one meanwhile: keep it */
		old->next = sh->head;
		sh->head = old;
		pk = old->pk;
		pthread_mutex_unlock(&sh->mu);
		auth_pubkey_free(k->pk);
		free(k);
		return pk;
	}
	k->next = sh->head;
	sh->head = k;
	pk = k->pk;
	pthread_mutex_unlock(&sh->mu);
	if (old != NULL) {
		pthread_mutex_lock(&g->grave_mu);
		old->next = g->key_graveyard;
		g->key_graveyard = old;
		pthread_mutex_unlock(&g->grave_mu);
	}
	return pk;
}

/* gw_auth_nonce - remember (sender, nonce) for twice the clock window in the
 * KV bucket; -1 with rf if seen */
int
gw_auth_nonce(struct gw *g, const struct gw_req *rq, struct gw_refusal *rf)
{
	char key[AUTH_ID_MAX * 3 + AUTH_NONCE_MAX + 8];
	uint64_t rev = 0;
	natsStatus s;

	key[0] = 'n';
	key[1] = '.';
	size_t n = kv_token(rq->agent, key + 2, sizeof(key) - 2);
	if (n == 0)
		return gw_refuse(rf, 400, "invalid_agent_id", "agent ID cannot be keyed");
	snprintf(key + 2 + n, sizeof(key) - 2 - n, ".%s", rq->nonce);
	s = kvStore_Create(&rev, g->nonce_kv, key, rq->timestamp, (int)strlen(rq->timestamp));
	if (s == NATS_OK)
		return 0;
	if (s == NATS_ERR) {
		/* compare-and-set failure is a plain error: "wrong last sequence" */
		const char *last = nats_GetLastError(NULL);
		if (last != NULL && strstr(last, "wrong last sequence") != NULL)
			return gw_refuse(rf, 401, "replay", "X-Claw-Nonce was already used");
	}
	return gw_refuse(rf, 503, "nonce_store_unavailable",
	    "the nonce store cannot be reached (%s)", natsStatus_GetText(s));
}

/* gw_auth_request - DESIGN 5 proof checks for the current request */
int
gw_auth_request(struct gw *g, struct mg_connection *c, const void *body, size_t len,
    struct gw_req *rq, struct gw_refusal *rf)
{
	const struct mg_request_info *ri = mg_get_request_info(c);
	const char *why = NULL, *rep;
	char sha[AUTH_SHA256_B64_SIZE];
	struct reg_agent agent;
	struct auth_pubkey *pk;
	enum cr_err e;

	memset(rq, 0, sizeof(*rq));
	rq->priority_v = CLAWRELAY__V1__PRIORITY__PRIORITY_NORMAL;
	if ((rep = repeated_claw_header(c)) != NULL)
		return gw_refuse(rf, 400, "repeated_header", "header %.64s appears more than once", rep);

	rq->agent = hdr(c, "X-Claw-Agent");
	rq->timestamp = hdr(c, "X-Claw-Timestamp");
	rq->nonce = hdr(c, "X-Claw-Nonce");
	rq->body_sha256 = hdr(c, "X-Claw-Body-SHA256");
	rq->proof = hdr(c, "X-Claw-Proof");
	rq->correlation_id = hdr(c, "X-Claw-Correlation-Id");
	rq->idempotency_key = hdr(c, "X-Claw-Idempotency-Key");
	rq->priority = hdr(c, "X-Claw-Priority");
	rq->ttl = hdr(c, "X-Claw-Ttl-Seconds");
	rq->traceparent = hdr(c, "traceparent");
	rq->content_type = hdr(c, "Content-Type");

	if (rq->agent == NULL)
		return gw_refuse(rf, 401, "missing_agent", "X-Claw-Agent is required");
	if (rq->timestamp == NULL)
		return gw_refuse(rf, 401, "missing_timestamp", "X-Claw-Timestamp is required");
	if (rq->nonce == NULL)
		return gw_refuse(rf, 401, "missing_nonce", "X-Claw-Nonce is required");
	if (rq->body_sha256 == NULL)
		return gw_refuse(rf, 401, "missing_body_sha256", "X-Claw-Body-SHA256 is required");
	if (rq->proof == NULL)
		return gw_refuse(rf, 401, "missing_proof", "X-Claw-Proof is required");

	if (auth_check_agent_id(rq->agent, &why) != CR_OK)
		return gw_refuse(rf, 400, "invalid_agent_id", "X-Claw-Agent: %s", why);
	e = auth_check_timestamp(rq->timestamp, (int64_t)(now_ms() / 1000),
	    (int)g->cfg.clock_window_s, &why);
	if (e == CR_ERR_EXPIRED)
		return gw_refuse(rf, 401, "expired", "%s (+-%llds)", why, g->cfg.clock_window_s);
	if (e != CR_OK)
		return gw_refuse(rf, 400, "invalid_timestamp", "%s", why);
	if (auth_check_nonce(rq->nonce, &why) != CR_OK)
		return gw_refuse(rf, 400, "invalid_nonce", "%s", why);
	if (!is_b64url(rq->body_sha256, AUTH_SHA256_B64_LEN))
		return gw_refuse(rf, 400, "invalid_body_sha256",
		    "X-Claw-Body-SHA256 must be 43 characters of base64url without padding");
	if (!is_b64url(rq->proof, AUTH_SIG_B64_LEN))
		return gw_refuse(rf, 401, "bad_proof",
		    "X-Claw-Proof must be 86 characters of base64url without padding");
	if (rq->correlation_id != NULL && auth_check_correlation_id(rq->correlation_id, &why) != CR_OK)
		return gw_refuse(rf, 400, "invalid_correlation_id", "%s", why);
	if (rq->idempotency_key != NULL &&
	    auth_check_idempotency_key(rq->idempotency_key, &why) != CR_OK)
		return gw_refuse(rf, 400, "invalid_idempotency_key", "%s", why);
	if (rq->priority != NULL) {
		if (auth_check_priority(rq->priority, &why) != CR_OK)
			return gw_refuse(rf, 400, "invalid_priority", "%s", why);
		rq->priority_v = env_priority_parse(rq->priority);
	}
	if (rq->ttl != NULL && auth_check_ttl(rq->ttl, &rq->ttl_s, &why) != CR_OK)
		return gw_refuse(rf, 400, "invalid_ttl", "%s", why);
	if (rq->content_type != NULL && strlen(rq->content_type) > GW_CT_MAX)
		return gw_refuse(rf, 400, "invalid_content_type",
		    "Content-Type must be at most %d characters", GW_CT_MAX);

	if (auth_sha256_b64url(body, len, sha) != CR_OK)
		return gw_refuse(rf, 503, "internal", "cannot hash the body");
	if (strcmp(sha, rq->body_sha256) != 0)
		return gw_refuse(rf, 401, "body_tampered",
		    "X-Claw-Body-SHA256 does not match the body received");

	e = reg_cache_agent(g->reg, rq->agent, &agent);
	if (e == CR_ERR_NOT_FOUND)
		return gw_refuse(rf, 401, "unknown_agent", "X-Claw-Agent is not registered");
	if (e != CR_OK)
		return gw_refuse(rf, 503, "registry_unavailable", "the registry cannot be reached");
	pk = key_get(g, &agent);
	if (pk == NULL)
		return gw_refuse(rf, 401, "bad_key", "the registered public key is not usable");

	struct auth_proof_input in = {
		.method = ri->request_method,
		.path = ri->local_uri_raw,
		.query = ri->query_string,
		.agent = rq->agent,
		.timestamp = rq->timestamp,
		.nonce = rq->nonce,
		.body_sha256 = rq->body_sha256,
		.correlation_id = rq->correlation_id,
		.idempotency_key = rq->idempotency_key,
		.priority = rq->priority,
		.ttl_seconds = rq->ttl,
	};
	e = auth_verify_request(pk, &in, rq->proof);
	if (e == CR_ERR_INVALID)
		return gw_refuse(rf, 400, "invalid_header", "a signed header holds a newline");
	if (e != CR_OK)
		return gw_refuse(rf, 401, "bad_proof", "X-Claw-Proof does not verify");
	return 0;
}

/* gw_check_pair - recipient known (404) and pair trusted (403) */
int
gw_check_pair(struct gw *g, const char *sender, const char *recipient, struct gw_refusal *rf,
    struct reg_trust *trust)
{
	struct reg_agent a;
	struct reg_trust t;
	enum cr_err e;

	e = reg_cache_agent(g->reg, recipient, &a);
	if (e == CR_ERR_NOT_FOUND)
		return gw_refuse(rf, 404, "unknown_recipient", "recipient is not registered");
	if (e != CR_OK)
		return gw_refuse(rf, 503, "registry_unavailable", "the registry cannot be reached");
	e = reg_cache_trust(g->reg, sender, recipient, &t);
	if (e == CR_ERR_NOT_FOUND)
		return gw_refuse(rf, 403, "not_trusted", "sender may not send to this recipient");
	if (e != CR_OK)
		return gw_refuse(rf, 503, "registry_unavailable", "the registry cannot be reached");
	if (trust != NULL)
		*trust = t;
	return 0;
}

/* gw_auth_init - set up the verifier cache */
void
gw_auth_init(struct gw *g)
{
	for (int i = 0; i < GW_KEY_SHARDS; i++) {
		pthread_mutex_init(&g->keys[i].mu, NULL);
		g->keys[i].head = NULL;
	}
	pthread_mutex_init(&g->grave_mu, NULL);
	g->key_graveyard = NULL;
}

static void
key_list_free(struct gw_key *k)
{
	while (k != NULL) {
		struct gw_key *n = k->next;
		auth_pubkey_free(k->pk);
		free(k);
		k = n;
	}
}

/* gw_auth_fini - free every cached verifier (no request is running) */
void
gw_auth_fini(struct gw *g)
{
	for (int i = 0; i < GW_KEY_SHARDS; i++) {
		key_list_free(g->keys[i].head);
		g->keys[i].head = NULL;
		pthread_mutex_destroy(&g->keys[i].mu);
	}
	key_list_free(g->key_graveyard);
	g->key_graveyard = NULL;
	pthread_mutex_destroy(&g->grave_mu);
}
