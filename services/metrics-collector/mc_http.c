/*
 * mc_http.c - GET /v1/traces/{correlationId} and the latency histogram
 * text for /metrics. Runs on civetweb's worker threads; reads the store
 * through LMDB snapshots and the atomics only.
 */
#include <stdio.h>
#include <string.h>

#include <cJSON.h>

#include "http.h"
#include "mc.h"
#include "status.h"

#define TRACES_PREFIX "/v1/traces/"

/* mc_http_trace - GET /v1/traces/{correlationId} */
int
mc_http_trace(struct mg_connection *c, void *arg)
{
	struct mc *m = arg;
	const struct mg_request_info *ri = mg_get_request_info(c);
	const char *uri = ri->local_uri ? ri->local_uri : "";
	const char *id;
	struct mc_trace t = { NULL, 0 };
	cJSON *root;
	char *txt;
	enum cr_err err;

	if (strcmp(ri->request_method, "GET") != 0) {
		http_error(c, 405, "method_not_allowed", "use GET", NULL, 0);
		return 1;
	}
	if (strncmp(uri, TRACES_PREFIX, strlen(TRACES_PREFIX)) != 0) {
		http_error(c, 404, "not_found", "no such resource", NULL, 0);
		return 1;
	}
	id = uri + strlen(TRACES_PREFIX);
	if (!env_id_ok(id)) {
		http_error(c, 400, "bad_correlation_id",
		    "correlation ID must be 1-128 chars of [A-Za-z0-9._:@+-]", NULL, 0);
		return 1;
	}
	err = mc_trace_load(m, id, (size_t)m->max_trace_hops, &t);
	if (err == CR_ERR_NOT_FOUND) {
		http_error(c, 404, "not_found", "no hops recorded for this correlation ID", id, 0);
		return 1;
	}
	if (err != CR_OK) {
		http_error(c, 503, "store_unavailable", cr_strerror(err), id, 1);
		return 1;
	}
	atomic_fetch_add(&m->traces_served, 1);
	root = status_trace_json(id, t.hops, t.n);
	txt = cJSON_PrintUnformatted(root);
	if (txt != NULL)
		http_json(c, 200, txt);
	else
		http_error(c, 500, "internal", "out of memory", id, 0);
	cJSON_free(txt);
	cJSON_Delete(root);
	mc_trace_free(&t);
	return 1;
}

/* mc_metrics_text - the end-to-end latency histogram */
void
mc_metrics_text(struct mc *m, struct strbuf *sb)
{
	uint64_t cum = 0;

	sb_printf(sb, "# HELP clawrelay_e2e_latency_ms gateway accepted to delivered, per message\n"
	    "# TYPE clawrelay_e2e_latency_ms histogram\n");
	for (int i = 0; i < MC_NBUCKETS; i++) {
		cum += atomic_load(&m->lat_buckets[i]);
		if (mc_latency_bound(i) != 0)
			sb_printf(sb, "clawrelay_e2e_latency_ms_bucket{le=\"%llu\"} %llu\n",
			    (unsigned long long)mc_latency_bound(i), (unsigned long long)cum);
		else
			sb_printf(sb, "clawrelay_e2e_latency_ms_bucket{le=\"+Inf\"} %llu\n",
			    (unsigned long long)cum);
	}
	sb_printf(sb, "clawrelay_e2e_latency_ms_sum %llu\nclawrelay_e2e_latency_ms_count %llu\n",
	    (unsigned long long)atomic_load(&m->lat_sum_ms),
	    (unsigned long long)atomic_load(&m->lat_count));
}
