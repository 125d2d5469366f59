/*
 * cli_metrics.c - `clawrelay metrics [--window SECONDS] [--json]`: the
 * metrics-collector's summary (<P>.metrics.summary) printed compactly:
 * messages in / delivered / failed by reason and the success rate, the
 * end-to-end latency p50/p95/p99, what is queued per lane, connectors,
 * breakers, auth failures by code, registry lookups.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cJSON.h>

#include "cli.h"

static void
metrics_help(FILE *f)
{
	fprintf(f, "usage: clawrelay metrics [--window SECONDS] [--json]\n\n"
	    "The relay's health over the last window (default 3600 s) as the\n"
	    "metrics-collector sees it; --json prints its answer as is.\n");
}

static double
n(const cJSON *o, const char *a, const char *b)
{
	const cJSON *v = cJSON_GetObjectItem(cJSON_GetObjectItem(o, a), b);
	return cJSON_IsNumber(v) ? v->valuedouble : 0;
}

static void
pairs(const cJSON *o)
{
	const cJSON *e;
	int any = 0;

	cJSON_ArrayForEach(e, o) {
		if (cJSON_IsNumber(e)) {
			printf("%s%s %g", any ? ", " : " (", e->string, e->valuedouble);
			any = 1;
		}
	}
	if (any)
		printf(")");
}

/* cli_cmd_metrics - print the collector's summary */
int
cli_cmd_metrics(struct cli_ctx *c, int argc, char **argv)
{
	const char *window = NULL, *pos[1];
	int npos = 0, rc, json = 0;
	struct cli_opt opts[] = { { "--window", 1, &window, NULL }, { "--json", 0, NULL, &json } };
	uint64_t win = 3600;
	natsMsg *reply = NULL;
	struct bus *b;
	char subj[256], body[32];
	cJSON *o;
	const cJSON *sr;
	enum cr_err e;

	rc = cli_parse(c, argc, argv, opts, 2, pos, 0, &npos);
	if (rc == -1) {
		metrics_help(stdout);
		return CLI_OK;
	}
	if (rc != CLI_OK)
		return rc;
	if (window != NULL && cli_parse_uint(window, 60, 31ull * 86400, &win) != 0)
		return cli_usage_err("metrics", "--window is 60..2678400 seconds");
	if ((b = cli_bus(c)) == NULL)
		return CLI_FAIL;
	if (bus_subj(b, subj, sizeof(subj), "metrics.summary") < 0)
		return cli_err("subject prefix too long");
	snprintf(body, sizeof(body), "%llu", (unsigned long long)win);
	e = bus_request(b, subj, body, strlen(body), c->timeout_ms, &reply);
	if (e == CR_ERR_UNAVAILABLE)
		return cli_err("no metrics-collector answers on %s (is it running?)", subj);
	if (e != CR_OK)
		return cli_err("metrics request on %s failed: %s", subj, cr_strerror(e));
	o = cJSON_ParseWithLength(natsMsg_GetData(reply), (size_t)natsMsg_GetDataLength(reply));
	if (o == NULL) {
		natsMsg_Destroy(reply);
		return cli_err("metrics-collector's answer is not JSON");
	}
	if (json) {
		printf("%.*s\n", natsMsg_GetDataLength(reply), natsMsg_GetData(reply));
		natsMsg_Destroy(reply);
		cJSON_Delete(o);
		return CLI_OK;
	}
	natsMsg_Destroy(reply);
	sr = cJSON_GetObjectItem(cJSON_GetObjectItem(o, "messages"), "successRate");
	printf("last %llu s\n", (unsigned long long)win);
	printf("messages   in %g, delivered %g, failed %g", n(o, "messages", "in"),
	    n(o, "messages", "out"), n(o, "messages", "failed"));
	pairs(cJSON_GetObjectItem(cJSON_GetObjectItem(o, "messages"), "failedByReason"));
	if (cJSON_IsNumber(sr))
		printf("; success %.1f%%\n", sr->valuedouble * 100);
	else
		printf("; success -\n");
	printf("latency    p50 %.1f ms, p95 %.1f ms, p99 %.1f ms (%g messages, accepted -> hook answered)\n",
	    n(o, "latency", "p50Ms"), n(o, "latency", "p95Ms"), n(o, "latency", "p99Ms"),
	    n(o, "latency", "count"));
	printf("queued     %g (critical %g, normal %g, low %g)\n", n(o, "queue", "depth"),
	    n(o, "queue", "critical"), n(o, "queue", "normal"), n(o, "queue", "low"));
	printf("connectors %g connected of %g, %g reconnects\n", n(o, "connectors", "connected"),
	    n(o, "connectors", "known"), n(o, "connectors", "reconnects"));
	printf("breakers   %g open, %g half-open of %g\n", n(o, "breakers", "open"),
	    n(o, "breakers", "halfOpen"), n(o, "breakers", "total"));
	printf("auth       %g failures", n(o, "authFailures", "total"));
	pairs(cJSON_GetObjectItem(cJSON_GetObjectItem(o, "authFailures"), "byCode"));
	printf("\nregistry   %g lookups, %g failed, p99 %.1f ms\n", n(o, "registry", "lookups"),
	    n(o, "registry", "failures"), n(o, "registry", "p99Ms"));
	cJSON_Delete(o);
	return CLI_OK;
}
