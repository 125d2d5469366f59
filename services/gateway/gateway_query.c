/*
 * gateway_query.c - GET /v1/messages/{correlationId} and
 * GET /v1/traces/{correlationId}: a message's state (the notifier's
 * StatusRecord in the KV bucket clawrelay_status) and its hop timeline (from
 * metrics-collector over <P>.trace.get).
 *
 * Both are authenticated like a POST (empty body) and answered only to the
 * message's sender or recipient; anyone else gets the same 404 as for an
 * unknown ID, so the answer does not reveal that a message exists.
 *
 * The status bucket is the notifier's: the gateway binds it (never creates
 * it, so the notifier's settings win) on first use, under status_mu.
 *
 * Threads: any civetweb worker.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "gateway.h"
#include "status.h"
#include "http.h"
#include "log.h"
#include "util.h"

#define QUERY_BODY_MAX 4096

/* method, path and proof of a query; the ID from the path into id */
static int
query_auth(struct gw *g, struct mg_connection *c, const char *prefix, char *id, size_t sz,
    struct gw_req *rq, struct gw_refusal *rf)
{
	const struct mg_request_info *ri = mg_get_request_info(c);
	size_t pl = strlen(prefix);
	const char *why = NULL;
	struct strbuf body;
	int rc;

	memset(rq, 0, sizeof(*rq));
	if (ri->local_uri_raw == NULL || strncmp(ri->local_uri_raw, prefix, pl) != 0)
		return gw_refuse(rf, 404, "not_found", "no such resource");
	if (strcmp(ri->request_method, "GET") != 0)
		return gw_refuse(rf, 405, "method_not_allowed", "use GET");
	snprintf(id, sz, "%s", ri->local_uri_raw + pl);
	if (auth_check_correlation_id(id, &why) != CR_OK)
		return gw_refuse(rf, 400, "invalid_correlation_id", "correlation ID in the path: %s",
		    why);
	sb_init(&body);
	if (http_read_body(c, QUERY_BODY_MAX, &body) != CR_OK) {
		sb_free(&body);
		return gw_refuse(rf, 413, "too_large", "a query takes no body");
	}
	rc = gw_auth_request(g, c, body.data ? body.data : "", body.len, rq, rf);
	sb_free(&body);
	if (rc == 0)
		rc = gw_auth_nonce(g, rq, rf);
	return rc;
}

static kvStore *
status_bucket(struct gw *g)
{
	kvStore *kv;

	pthread_mutex_lock(&g->status_mu);
	if (g->status_kv == NULL && js_KeyValue(&kv, bus_js(g->bus), STATUS_BUCKET) == NATS_OK)
		g->status_kv = kv;
	kv = g->status_kv;
	pthread_mutex_unlock(&g->status_mu);
	return kv;
}

static int
party(const char *agent, const char *a, const char *b)
{
	return (a != NULL && strcmp(agent, a) == 0) || (b != NULL && strcmp(agent, b) == 0);
}

/* gw_handle_message - GET /v1/messages/{correlationId} */
int
gw_handle_message(struct mg_connection *c, void *arg)
{
	struct gw *g = arg;
	struct gw_refusal rf = { 0 };
	struct gw_req rq;
	char id[AUTH_ID_MAX + 2] = "", key[AUTH_ID_MAX * 3 + 8];
	kvEntry *ent = NULL;
	ProtobufCMessage *m = NULL;
	StatusRecord *sr;
	cJSON *o = NULL;
	char *json = NULL;
	kvStore *kv;
	natsStatus s;

	if (query_auth(g, c, "/v1/messages/", id, sizeof(id), &rq, &rf) < 0)
		goto refuse;
	if (status_key(id, key, sizeof(key)) == 0 || (kv = status_bucket(g)) == NULL) {
		gw_refuse(&rf, 404, "not_found", "no message with this correlation ID");
		goto refuse;
	}
	s = kvStore_Get(&ent, kv, key);
	if (s == NATS_NOT_FOUND) {
		gw_refuse(&rf, 404, "not_found", "no message with this correlation ID");
		goto refuse;
	}
	if (s != NATS_OK) {
		gw_refuse(&rf, 503, "status_unavailable", "the status store cannot be reached");
		goto refuse;
	}
	if (env_unpack_msg(&clawrelay__v1__status_record__descriptor, kvEntry_Value(ent),
	    (size_t)kvEntry_ValueLen(ent), &m) != CR_OK) {
		gw_refuse(&rf, 503, "status_unreadable", "the status record cannot be decoded");
		goto refuse;
	}
	sr = (StatusRecord *)m;
	if (!party(rq.agent, sr->sender, sr->recipient)) {
		gw_refuse(&rf, 404, "not_found", "no message with this correlation ID");
		goto refuse;
	}
	if ((o = status_json(sr)) == NULL)
		goto nomem;
	json = cJSON_PrintUnformatted(o);
	if (json == NULL)
		goto nomem;
	http_json(c, 200, json);
	goto out;
nomem:
	gw_refuse(&rf, 503, "internal", "out of memory");
refuse:
	gw_http_refuse(c, &rf, rq.agent, rf.status == 400 || id[0] == '\0' ? NULL : id);
out:
	free(json);
	cJSON_Delete(o);
	if (m != NULL)
		protobuf_c_message_free_unpacked(m, NULL);
	kvEntry_Destroy(ent);
	return rf.status ? rf.status : 200;
}

/* gw_handle_trace - GET /v1/traces/{correlationId} */
int
gw_handle_trace(struct mg_connection *c, void *arg)
{
	struct gw *g = arg;
	struct gw_refusal rf = { 0 };
	struct gw_req rq;
	char id[AUTH_ID_MAX + 2] = "", subj[256];
	TraceRequest treq = CLAWRELAY__V1__TRACE_REQUEST__INIT;
	ProtobufCMessage *m = NULL;
	TraceReply *tr;
	natsMsg *reply = NULL;
	void *wire = NULL;
	size_t wlen = 0, i;
	cJSON *o = NULL;
	char *json = NULL;
	enum cr_err err;
	int allowed = 0;

	if (query_auth(g, c, "/v1/traces/", id, sizeof(id), &rq, &rf) < 0)
		goto refuse;
	treq.schema_version = ENV_SCHEMA;
	treq.correlation_id = id;
	if (env_pack(&treq.base, &wire, &wlen) != CR_OK || bus_subj(g->bus, subj, sizeof(subj), "trace.get") < 0) {
		gw_refuse(&rf, 503, "internal", "the request could not be encoded");
		goto refuse;
	}
	err = bus_request(g->bus, subj, wire, wlen, (int)g->cfg.trace_timeout_ms, &reply);
	if (err != CR_OK) {
		gw_refuse(&rf, 503, "trace_unavailable", "metrics-collector did not answer (%s)",
		    cr_strerror(err));
		goto refuse;
	}
	if (env_unpack_msg(&clawrelay__v1__trace_reply__descriptor, natsMsg_GetData(reply),
	    (size_t)natsMsg_GetDataLength(reply), &m) != CR_OK) {
		gw_refuse(&rf, 503, "trace_unreadable", "metrics-collector's answer cannot be decoded");
		goto refuse;
	}
	tr = (TraceReply *)m;
	for (i = 0; i < tr->n_hops && !allowed; i++)
		allowed = party(rq.agent, tr->hops[i]->sender, tr->hops[i]->recipient);
	if (!allowed) {
		gw_refuse(&rf, 404, "not_found", "no trace for this correlation ID");
		goto refuse;
	}
	if ((o = status_trace_json(id, tr->hops, tr->n_hops)) == NULL)
		goto nomem;
	json = cJSON_PrintUnformatted(o);
	if (json == NULL)
		goto nomem;
	http_json(c, 200, json);
	goto out;
nomem:
	gw_refuse(&rf, 503, "internal", "out of memory");
refuse:
	gw_http_refuse(c, &rf, rq.agent, rf.status == 400 || id[0] == '\0' ? NULL : id);
out:
	free(json);
	cJSON_Delete(o);
	if (m != NULL)
		protobuf_c_message_free_unpacked(m, NULL);
	if (reply != NULL)
		natsMsg_Destroy(reply);
	free(wire);
	return rf.status ? rf.status : 200;
}
