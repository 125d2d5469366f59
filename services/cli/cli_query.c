/*
 * cli_query.c - `clawrelay status` and `clawrelay trace`: what happened to
 * a message (failures as they happen: cli_notify.c).
 *
 * status asks the gateway (signed GET /v1/messages/<id>) or, next to NATS,
 * reads the notifier's StatusRecord from the KV bucket clawrelay_status;
 * trace asks metrics-collector on <P>.trace.get.
 *
 * Main thread only.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cJSON.h>

#include "auth.h"
#include "cli.h"
#include "status.h"
#include "env.h"
#include "util.h"


static void
status_help(FILE *f)
{
	fprintf(f,
	    "usage: clawrelay status <correlation-id> --as <id> --key <file.key>\n"
	    "       clawrelay status <correlation-id> [--nats [URL]]\n"
	    "\n"
	    "Shows a message's state (accepted, queued, dispatched, delivered,\n"
	    "processed, failed, expired), the time of each state, attempts, last error\n"
	    "and failure reason, as pretty JSON.\n"
	    "With --as/--key it asks the gateway (signed GET /v1/messages/<id>; only\n"
	    "the message's sender or recipient may ask). Without a key, or with\n"
	    "--nats, it reads the status record straight from the NATS KV bucket\n"
	    "clawrelay_status (for operators next to NATS).\n"
	    "Exit 0 when the message is known, 1 otherwise.\n");
}

static int
status_nats(struct cli_ctx *c, const char *cid)
{
	struct bus *b = cli_bus(c);
	kvStore *kv = NULL;
	kvEntry *ent = NULL;
	ProtobufCMessage *m = NULL;
	cJSON *j = NULL;
	char key[AUTH_ID_MAX * 3 + 8], *s;
	natsStatus ns;
	enum cr_err e;
	int rc = CLI_FAIL;

	if (b == NULL)
		return CLI_FAIL;
	/* PROTOCOL.md: "c.<kvtok(correlation_id)>" (KV keys cannot hold % or :) */
	if (status_key(cid, key, sizeof(key)) == 0)
		return cli_err("cannot encode the correlation ID");
	/* bind only: the notifier creates the bucket with its own TTL */
	ns = js_KeyValue(&kv, bus_js(b), STATUS_BUCKET);
	if (ns == NATS_NOT_FOUND)
		return cli_err("no status bucket %s in NATS at %s yet (is the notifier running?)",
		    STATUS_BUCKET, c->nats_url);
	if (ns != NATS_OK)
		return cli_err("cannot open KV bucket %s: %s", STATUS_BUCKET, natsStatus_GetText(ns));
	ns = kvStore_Get(&ent, kv, key);
	if (ns == NATS_NOT_FOUND) {
		rc = cli_err("no status for correlation ID %s", cid);
		goto out;
	}
	if (ns != NATS_OK) {
		rc = cli_err("cannot read %s/%s: %s", STATUS_BUCKET, key, natsStatus_GetText(ns));
		goto out;
	}
	e = env_unpack_msg(&clawrelay__v1__status_record__descriptor, kvEntry_Value(ent),
	    (size_t)kvEntry_ValueLen(ent), &m);
	if (e != CR_OK) {
		rc = cli_err("the status record of %s cannot be decoded: %s", cid, cr_strerror(e));
		goto out;
	}
	j = status_json((const StatusRecord *)m);
	if (j == NULL || (s = cJSON_Print(j)) == NULL) {
		rc = cli_err("out of memory");
		goto out;
	}
	printf("%s\n", s);
	cJSON_free(s);
	rc = CLI_OK;
out:
	cJSON_Delete(j);
	if (m != NULL)
		protobuf_c_message_free_unpacked(m, NULL);
	kvEntry_Destroy(ent);
	kvStore_Destroy(kv);
	return rc;
}

/* cli_cmd_status - a message's state, from the gateway or from NATS KV */
int
cli_cmd_status(struct cli_ctx *c, int argc, char **argv)
{
	const char *as = NULL, *key = NULL, *pos[1], *why = NULL;
	int npos = 0, rc;
	struct cli_opt opts[] = {
		{ "--as", 1, &as, NULL },
		{ "--from", 1, &as, NULL },
		{ "--key", 1, &key, NULL },
	};
	struct cli_http_req rq;
	struct cli_http_resp resp;
	char path[512];

	rc = cli_parse(c, argc, argv, opts, 3, pos, 1, &npos);
	if (rc == -1) {
		status_help(stdout);
		return CLI_OK;
	}
	if (rc != CLI_OK)
		return rc;
	if (npos != 1)
		return cli_usage_err("status", "status needs one correlation ID");
	if (auth_check_correlation_id(pos[0], &why) != CR_OK)
		return cli_err("invalid correlation ID: %s", why);
	if (key == NULL || c->nats_flag)
		return status_nats(c, pos[0]);
	if (as == NULL)
		return cli_usage_err("status", "--key needs --as <agent-id> (the sender or recipient)");
	if (auth_check_agent_id(as, &why) != CR_OK)
		return cli_err("invalid --as agent ID: %s", why);
	snprintf(path, sizeof(path), "/v1/messages/%s", pos[0]);
	memset(&rq, 0, sizeof(rq));
	rq.method = "GET";
	rq.path = path;
	rq.agent = as;
	rq.key_path = key;
	if (cli_http_signed(c, &rq, &resp) != 0)
		return CLI_FAIL;
	rc = resp.status >= 200 && resp.status < 300 ? CLI_OK : CLI_FAIL;
	if (rc != CLI_OK)
		fprintf(stderr, "clawrelay: the gateway answered HTTP %ld\n", resp.status);
	cli_print_json(resp.body);
	cli_http_resp_free(&resp);
	return rc;
}

static void
trace_help(FILE *f)
{
	fprintf(f,
	    "usage: clawrelay trace <correlation-id> [--json]\n"
	    "\n"
	    "Asks metrics-collector (NATS request on <prefix>.trace.get) for the\n"
	    "message's hop timeline and prints one line per hop:\n"
	    "  time (UTC, ms)  +gap from the previous hop  hop  service/instance  outcome  detail\n"
	    "--json prints the timeline as JSON. Exit 1 if no hop is recorded.\n");
}

static const char *
nz(const char *s)
{
	return s != NULL && *s != '\0' ? s : "-";
}

static int
trace_print(const TraceReply *t, const char *cid, int json)
{
	char when[32], svc[256];
	uint64_t first = status_hop_us(t->hops[0]), prev = first;

	if (json) {
		cJSON *o = status_trace_json(cid, t->hops, t->n_hops);
		char *s;
		if (o == NULL)
			return cli_err("out of memory");
		s = cJSON_Print(o);
		if (s == NULL) {
			cJSON_Delete(o);
			return cli_err("out of memory");
		}
		printf("%s\n", s);
		cJSON_free(s);
		cJSON_Delete(o);
		return CLI_OK;
	}
	const HopEvent *named = t->hops[0];	/* the first hop that knows the message ID */
	for (size_t i = 0; i < t->n_hops && (named->message_id == NULL || *named->message_id == '\0'); i++)
		named = t->hops[i];
	printf("trace %s (message %s, %s -> %s)\n", cid, nz(named->message_id),
	    nz(named->sender), nz(named->recipient));
	for (size_t i = 0; i < t->n_hops; i++) {
		const HopEvent *h = t->hops[i];
		iso_time_ms(h->ts_ms ? h->ts_ms : status_hop_us(h) / 1000, when);
		snprintf(svc, sizeof(svc), "%s/%s", nz(h->service), nz(h->instance));
		int has_detail = h->detail != NULL && *h->detail != '\0';
		/* no padding after the last column */
		printf("%s  +%9.3f ms  %-17s %-28s %-*s%s%s\n", when,
		    (double)(status_hop_us(h) - prev) / 1000.0, env_hop_name(h->hop), svc,
		    has_detail ? 7 : 0, nz(h->outcome), has_detail ? " " : "",
		    has_detail ? h->detail : "");
		prev = status_hop_us(h);
	}
	printf("total %.3f ms over %zu hops\n",
	    (double)(status_hop_us(t->hops[t->n_hops - 1]) - first) / 1000.0, t->n_hops);
	return CLI_OK;
}

/* cli_cmd_trace - print a message's hop timeline from metrics-collector */
int
cli_cmd_trace(struct cli_ctx *c, int argc, char **argv)
{
	const char *pos[1], *why = NULL;
	int npos = 0, rc, json = 0;
	struct cli_opt opts[] = { { "--json", 0, NULL, &json } };
	TraceRequest rq = CLAWRELAY__V1__TRACE_REQUEST__INIT;
	ProtobufCMessage *m = NULL;
	natsMsg *reply = NULL;
	struct bus *b;
	char subj[256];
	void *buf = NULL;
	size_t len;
	enum cr_err e;

	rc = cli_parse(c, argc, argv, opts, 1, pos, 1, &npos);
	if (rc == -1) {
		trace_help(stdout);
		return CLI_OK;
	}
	if (rc != CLI_OK)
		return rc;
	if (npos != 1)
		return cli_usage_err("trace", "trace needs one correlation ID");
	if (auth_check_correlation_id(pos[0], &why) != CR_OK)
		return cli_err("invalid correlation ID: %s", why);
	if ((b = cli_bus(c)) == NULL)
		return CLI_FAIL;
	rq.schema_version = ENV_SCHEMA;
	rq.correlation_id = (char *)(uintptr_t)pos[0];
	if (bus_subj(b, subj, sizeof(subj), "trace.get") < 0)
		return cli_err("subject prefix too long");
	e = env_pack(&rq.base, &buf, &len);
	if (e != CR_OK)
		return cli_err("cannot encode the trace request: %s", cr_strerror(e));
	e = bus_request(b, subj, buf, len, c->timeout_ms, &reply);
	free(buf);
	if (e == CR_ERR_UNAVAILABLE)
		return cli_err("no metrics-collector answers on %s (is it running?)", subj);
	if (e == CR_ERR_TIMEOUT)
		return cli_err("metrics-collector did not answer on %s within %d ms", subj, c->timeout_ms);
	if (e != CR_OK)
		return cli_err("trace request on %s failed: %s", subj, cr_strerror(e));
	e = env_unpack_msg(&clawrelay__v1__trace_reply__descriptor, natsMsg_GetData(reply),
	    (size_t)natsMsg_GetDataLength(reply), &m);
	natsMsg_Destroy(reply);
	if (e != CR_OK)
		return cli_err("metrics-collector's answer cannot be decoded: %s", cr_strerror(e));
	const TraceReply *t = (const TraceReply *)m;
	if (t->n_hops == 0) {
		rc = cli_err("no hops recorded for correlation ID %s", pos[0]);
	} else {
		status_trace_sort(t->hops, t->n_hops);
		rc = trace_print(t, pos[0], json);
	}
	protobuf_c_message_free_unpacked(m, NULL);
	return rc;
}
