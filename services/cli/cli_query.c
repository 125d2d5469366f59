/*
 * cli_query.c - `clawrelay status`, `clawrelay trace` and `clawrelay
 * follow`: what happened to a message, and failures as they happen.
 *
 * status asks the gateway (signed GET /v1/messages/<id>) or, next to NATS,
 * reads the notifier's StatusRecord from the KV bucket clawrelay_status;
 * trace asks metrics-collector on <P>.trace.get; follow subscribes to
 * <P>.notify.failure.* and <P>.notify.delayed.*.
 *
 * Threads: everything runs on the main thread except follow's subscription
 * handler (a nats.c thread), which prints whole lines under out_mu and counts
 * notices in an atomic the main thread polls.
 */
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

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

/* --- follow ----------------------------------------------------------- */

static pthread_mutex_t out_mu = PTHREAD_MUTEX_INITIALIZER;
static atomic_int follow_seen;
static volatile sig_atomic_t follow_stop;

struct follow_ctx {
	int json;
};

static void
on_follow_signal(int sig)
{
	follow_stop = 1;
}

static const char *
hdr(natsMsg *m, const char *name)
{
	const char *v = NULL;
	if (natsMsgHeader_Get(m, name, &v) != NATS_OK)
		return NULL;
	return v;
}

/* Runs on nats.c's thread; the message is destroyed by the bus. */
static void
on_notice(void *arg, natsMsg *msg)
{
	const struct follow_ctx *fc = arg;
	const char *subj = natsMsg_GetSubject(msg);
	const char *kind = strstr(subj, ".notify.delayed.") ? "delayed" : "failure";
	ProtobufCMessage *m = NULL;
	const Failure *f = NULL;
	char when[32];
	const char *reason, *cid, *mid, *from, *to, *detail = "";

	if (env_unpack_msg(&clawrelay__v1__failure__descriptor, natsMsg_GetData(msg),
	    (size_t)natsMsg_GetDataLength(msg), &m) == CR_OK)
		f = (const Failure *)m;
	reason = hdr(msg, "X-Claw-Reason");
	if (reason == NULL && f != NULL)
		reason = env_failure_reason_name(f->reason);
	cid = f ? f->correlation_id : hdr(msg, "X-Claw-Correlation-Id");
	mid = f ? f->message_id : hdr(msg, "X-Claw-Message-Id");
	from = f ? f->sender : hdr(msg, "X-Claw-Sender");
	to = f ? f->recipient : hdr(msg, "X-Claw-Recipient");
	if (f != NULL && f->detail != NULL)
		detail = f->detail;
	iso_time_ms(f && f->failed_at_ms ? f->failed_at_ms : now_ms(), when);

	pthread_mutex_lock(&out_mu);
	if (fc->json) {
		cJSON *o = cJSON_CreateObject();
		char *s;
		cJSON_AddStringToObject(o, "kind", kind);
		cJSON_AddStringToObject(o, "subject", subj);
		cJSON_AddStringToObject(o, "time", when);
		cJSON_AddStringToObject(o, "reason", nz(reason));
		cJSON_AddStringToObject(o, "correlationId", nz(cid));
		cJSON_AddStringToObject(o, "messageId", nz(mid));
		cJSON_AddStringToObject(o, "sender", nz(from));
		cJSON_AddStringToObject(o, "recipient", nz(to));
		cJSON_AddStringToObject(o, "detail", detail);
		if (f != NULL)
			cJSON_AddNumberToObject(o, "attempts", f->attempts);
		s = cJSON_PrintUnformatted(o);
		if (s != NULL)
			printf("%s\n", s);
		cJSON_free(s);
		cJSON_Delete(o);
	} else {
		printf("%s %-7s %-18s %s message %s %s -> %s%s%s\n", when, kind, nz(reason), nz(cid),
		    nz(mid), nz(from), nz(to), *detail ? ": " : "", detail);
	}
	fflush(stdout);
	pthread_mutex_unlock(&out_mu);
	if (m != NULL)
		protobuf_c_message_free_unpacked(m, NULL);
	atomic_fetch_add(&follow_seen, 1);
}

static void
follow_help(FILE *f)
{
	fprintf(f,
	    "usage: clawrelay follow [<sender-id>] [--json] [--no-delayed] [--count N]\n"
	    "\n"
	    "Prints failure notifications (<prefix>.notify.failure.<sender>) and\n"
	    "delay warnings (<prefix>.notify.delayed.<sender>) as they are published,\n"
	    "for one sender or for all, one line each (--json: one JSON object per\n"
	    "line). Runs until interrupted, or until N notices were printed.\n");
}

/* cli_cmd_follow - print notifications until interrupted */
int
cli_cmd_follow(struct cli_ctx *c, int argc, char **argv)
{
	const char *pos[1], *count = NULL, *why = NULL;
	int npos = 0, rc, nodelay = 0;
	struct follow_ctx fc = { 0 };
	struct cli_opt opts[] = {
		{ "--json", 0, NULL, &fc.json },
		{ "--no-delayed", 0, NULL, &nodelay },
		{ "--count", 1, &count, NULL },
	};
	uint64_t max = 0;
	struct bus *b;
	char tok[AUTH_ID_MAX * 3 + 1] = "*", subj[512];
	struct sigaction sa;

	rc = cli_parse(c, argc, argv, opts, 3, pos, 1, &npos);
	if (rc == -1) {
		follow_help(stdout);
		return CLI_OK;
	}
	if (rc != CLI_OK)
		return rc;
	if (count != NULL && cli_parse_uint(count, 1, 1000000000, &max) != 0)
		return cli_usage_err("follow", "--count must be a positive number");
	if (npos == 1) {
		if (auth_check_agent_id(pos[0], &why) != CR_OK)
			return cli_err("invalid agent ID: %s", why);
		subj_token(pos[0], tok, sizeof(tok));
	}
	if ((b = cli_bus(c)) == NULL)
		return CLI_FAIL;
	memset(&sa, 0, sizeof(sa));
	sa.sa_handler = on_follow_signal;
	sigaction(SIGINT, &sa, NULL);
	sigaction(SIGTERM, &sa, NULL);
	for (int i = 0; i < (nodelay ? 1 : 2); i++) {
		if (bus_subj(b, subj, sizeof(subj), "notify.%s.%s", i ? "delayed" : "failure", tok) < 0)
			return cli_err("subject too long");
		enum cr_err e = bus_subscribe(b, subj, NULL, on_notice, &fc);
		if (e != CR_OK)
			return cli_err("cannot subscribe to %s: %s", subj, cr_strerror(e));
		fprintf(stderr, "following %s\n", subj);
	}
	natsConnection_Flush(bus_nc(b));
	while (!follow_stop && (max == 0 || (uint64_t)atomic_load(&follow_seen) < max))
		usleep(20000);
	/* stop the handler before fc goes out of scope */
	bus_drain_subs(b);
	return CLI_OK;
}
