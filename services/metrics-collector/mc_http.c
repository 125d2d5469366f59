/*
 * mc_http.c - the collector's HTTP answers: GET /v1/traces/{correlationId},
 * the JSON under /v1/metrics/..., the dashboard (static files from the www
 * folder: index.html, app.js, style.css, nothing else), and the summary on
 * the bus for `clawrelay metrics`.
 *
 * Runs on civetweb's worker threads (and the summary subscription's
 * thread); reads the trace store through LMDB snapshots and the rollups
 * through mc_json_* (which take mc->mu).
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cJSON.h>

#include "http.h"
#include "log.h"
#include "mc.h"
#include "status.h"

#define TRACES_PREFIX "/v1/traces/"
#define METRICS_PREFIX "/v1/metrics/"
#define WWW_MAX (1024 * 1024)

/* mc_http_trace - GET /v1/traces/{correlationId} */
static int
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

/* a query parameter as a number within [lo, hi]; def when absent or bad */
static uint64_t
qnum(const struct mg_request_info *ri, const char *name, uint64_t def, uint64_t lo, uint64_t hi)
{
	char v[32];
	char *end;
	unsigned long long n;

	if (ri->query_string == NULL ||
	    mg_get_var(ri->query_string, strlen(ri->query_string), name, v, sizeof(v)) <= 0)
		return def;
	n = strtoull(v, &end, 10);
	if (*end != '\0' || n < lo)
		return def;
	return n > hi ? hi : n;
}

/* a query parameter as text (at most sz - 1 bytes) into out; "" when absent */
static const char *
qstr(const struct mg_request_info *ri, const char *name, char *out, size_t sz)
{
	out[0] = '\0';
	if (ri->query_string == NULL ||
	    mg_get_var(ri->query_string, strlen(ri->query_string), name, out, sz) <= 0)
		out[0] = '\0';
	return out;
}

/* the sort=... parameter among names (each an MC_SORT_*); def when absent or unknown */
static int
qsort_param(const struct mg_request_info *ri, const char *const *names, const int *sorts, int n,
    int def)
{
	char v[32];

	qstr(ri, "sort", v, sizeof(v));
	for (int i = 0; i < n; i++)
		if (strcmp(v, names[i]) == 0)
			return sorts[i];
	return def;
}

static void
send_json(struct mg_connection *c, cJSON *o)
{
	char *txt = o ? cJSON_PrintUnformatted(o) : NULL;

	if (txt != NULL)
		http_json(c, 200, txt);
	else
		http_error(c, 500, "internal", "out of memory", NULL, 0);
	cJSON_free(txt);
	cJSON_Delete(o);
}

/* GET /v1/metrics/{summary,series,latency,pairs,connectors,failures,breakers} */
static int
mc_http_metrics(struct mg_connection *c, void *arg)
{
	struct mc *m = arg;
	const struct mg_request_info *ri = mg_get_request_info(c);
	const char *what = ri->local_uri ? ri->local_uri + strlen(METRICS_PREFIX) : "";
	uint64_t win = qnum(ri, "window", 3600, 60, 31ull * 86400);
	char q[129];

	if (strcmp(ri->request_method, "GET") != 0) {
		http_error(c, 405, "method_not_allowed", "use GET", NULL, 0);
		return 1;
	}
	if (strcmp(what, "summary") == 0)
		send_json(c, mc_json_summary(m, win));
	else if (strcmp(what, "series") == 0)
		send_json(c, mc_json_series(m, win, qnum(ri, "step", 60, 60, 86400),
		    (int)qnum(ri, "parts", 12, 0, MC_QPARTS * MC_LANES)));
	else if (strcmp(what, "latency") == 0)
		send_json(c, mc_json_latency(m, win));
	else if (strcmp(what, "pairs") == 0) {
		static const char *const names[] = { "hour", "failed", "volume" };
		static const int sorts[] = { MC_SORT_HOUR, MC_SORT_FAILED, MC_SORT_VOLUME };
		send_json(c, mc_json_pairs(m, qnum(ri, "hours", 24, 1, 48),
		    (size_t)qnum(ri, "limit", 200, 1, 1000), qstr(ri, "q", q, sizeof(q)),
		    qsort_param(ri, names, sorts, 3, MC_SORT_HOUR)));
	} else if (strcmp(what, "connectors") == 0) {
		static const char *const names[] = { "state", "agent", "reconnects", "uptime" };
		static const int sorts[] = { MC_SORT_STATE, MC_SORT_AGENT, MC_SORT_RECONNECTS,
			MC_SORT_UPTIME };
		send_json(c, mc_json_connectors(m, (size_t)qnum(ri, "limit", 500, 1, 10000),
		    qstr(ri, "q", q, sizeof(q)), qsort_param(ri, names, sorts, 4, MC_SORT_STATE)));
	}
	else if (strcmp(what, "failures") == 0)
		send_json(c, mc_json_failures(m, (size_t)qnum(ri, "limit", 50, 1, MC_NFAIL)));
	else if (strcmp(what, "breakers") == 0)
		send_json(c, mc_json_breakers(m));
	else
		http_error(c, 404, "not_found", "try summary, series, latency, pairs, connectors, "
		    "failures or breakers", NULL, 0);
	return 1;
}

/* GET /, /dashboard, /www/{index.html,app.js,style.css} */
static int
mc_http_www(struct mg_connection *c, void *arg)
{
	struct mc *m = arg;
	const struct mg_request_info *ri = mg_get_request_info(c);
	const char *uri = ri->local_uri ? ri->local_uri : "/";
	static const char *const files[][2] = {
		{ "index.html", "text/html; charset=utf-8" },
		{ "app.js", "text/javascript; charset=utf-8" },
		{ "style.css", "text/css; charset=utf-8" },
	};
	const char *name = NULL, *type = NULL, *base = strrchr(uri, '/');
	char path[1200];
	struct strbuf sb;
	FILE *f;

	if (strcmp(uri, "/") == 0 || strcmp(uri, "/dashboard") == 0)
		base = "/index.html";
	for (size_t i = 0; base != NULL && i < sizeof(files) / sizeof(files[0]); i++)
		if (strcmp(base + 1, files[i][0]) == 0) {
			name = files[i][0];
			type = files[i][1];
		}
	if (name == NULL) {
		http_error(c, 404, "not_found", "no such file", NULL, 0);
		return 1;
	}
	snprintf(path, sizeof(path), "%s/%s", m->www, name);
	if ((f = fopen(path, "rb")) == NULL) {
		http_error(c, 404, "not_found", "the dashboard's files are not installed "
		    "(CLAWRELAY_WWW_DIR)", NULL, 0);
		return 1;
	}
	sb_init(&sb);
	for (char buf[8192];;) {
		size_t n = fread(buf, 1, sizeof(buf), f);
		if (n == 0 || sb.len + n > WWW_MAX)
			break;
		sb_append(&sb, buf, n);
	}
	fclose(f);
	http_reply(c, 200, type, "Cache-Control: no-cache\r\n", sb.data ? sb.data : "", sb.len);
	sb_free(&sb);
	return 1;
}

/* mc_on_summary - <P>.metrics.summary: the body is the window in seconds
 * (text, empty = 3600); the answer is the summary JSON */
void
mc_on_summary(void *arg, natsMsg *msg)
{
	struct mc *m = arg;
	char buf[32] = "";
	int len = natsMsg_GetDataLength(msg);
	uint64_t win = 3600;
	cJSON *o;
	char *txt;

	if (len > 0 && len < (int)sizeof(buf)) {
		memcpy(buf, natsMsg_GetData(msg), (size_t)len);
		win = strtoull(buf, NULL, 10);
		if (win < 60)
			win = 60;
	}
	o = mc_json_summary(m, win);
	txt = cJSON_PrintUnformatted(o);
	if (txt != NULL)
		bus_reply(m->bus, msg, txt, strlen(txt));
	cJSON_free(txt);
	cJSON_Delete(o);
}

/* mc_http_init - the routes */
void
mc_http_init(struct mc *m)
{
	svc_route(m->svc, "/v1/traces/", mc_http_trace, m);
	svc_route(m->svc, "/v1/metrics/", mc_http_metrics, m);
	svc_route(m->svc, "/$", mc_http_www, m);
	svc_route(m->svc, "/dashboard$", mc_http_www, m);
	svc_route(m->svc, "/www/", mc_http_www, m);
}

/* mc_metrics_text - the collector's own gauges */
void
mc_metrics_text(struct mc *m, struct strbuf *sb)
{
	sb_printf(sb, "# HELP clawrelay_mc_pending_flushes_total commits of rollups and hops\n"
	    "# TYPE clawrelay_mc_pending_flushes_total counter\nclawrelay_mc_pending_flushes_total %llu\n",
	    (unsigned long long)atomic_load(&m->flushes));
}
