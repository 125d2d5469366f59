/*
 * cli_notify.c - `clawrelay notifications`: failure notices and delay
 * warnings, one JSON object per line.
 *
 * With --follow it subscribes to <P>.notify.failure.<tok|*> and
 * <P>.notify.delayed.<tok|*> (what the notifier publishes, each notice
 * once) and prints every notice as it comes, until interrupted or --count
 * notices were printed. Without --follow it prints the failures and delays
 * still held by the notice stream <PREFIX>_NOTICES (newest --last N, oldest
 * first) and exits: what the relay recorded, whether or not the notifier
 * has told them yet. `clawrelay follow` is the old name of
 * `notifications --follow` and still works.
 *
 * Threads: the main thread, except the follow subscription's handler (a
 * nats.c thread), which prints whole lines under out_mu and counts notices
 * in an atomic the main thread polls.
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
#include "env.h"
#include "util.h"

#define NOTIFY_SCAN_MAX 100000    /* stream messages looked at without --follow */

static pthread_mutex_t out_mu = PTHREAD_MUTEX_INITIALIZER;
static atomic_int notify_seen;
static volatile sig_atomic_t notify_stop;

struct notify_opts {
	int text;                  /* --text: one readable line instead of JSON */
	int kinds;                 /* bit 0 failure, bit 1 delayed */
	char tok[AUTH_ID_MAX * 3 + 1];  /* subject token of the sender, or "*" */
};

static void
on_signal(int sig)
{
	notify_stop = 1;
}

static const char *
hdr(natsMsg *m, const char *name)
{
	const char *v = NULL;

	if (natsMsgHeader_Get(m, name, &v) != NATS_OK)
		return NULL;
	return v;
}

static const char *
str(const char *s)
{
	return s != NULL ? s : "";
}

/* print one notice: the Failure f if it decoded, else what the headers
 * say (hm may be NULL); kind "failure" or "delayed" */
static void
print_notice(const struct notify_opts *o, const char *kind, const Failure *f, natsMsg *hm)
{
	char failed[32] = "", created[32] = "";
	const char *reason, *cid, *mid, *from, *to, *detail;
	uint32_t attempts = 0;

	reason = hm != NULL ? hdr(hm, "X-Claw-Reason") : NULL;
	if (reason == NULL && f != NULL)
		reason = env_failure_reason_name(f->reason);
	cid = f ? f->correlation_id : hdr(hm, "X-Claw-Correlation-Id");
	mid = f ? f->message_id : hdr(hm, "X-Claw-Message-Id");
	from = f ? f->sender : hdr(hm, "X-Claw-Sender");
	to = f ? f->recipient : hdr(hm, "X-Claw-Recipient");
	detail = f ? f->detail : "";
	if (f != NULL) {
		attempts = f->attempts;
		if (f->failed_at_ms != 0)
			iso_time_ms(f->failed_at_ms, failed);
		if (f->created_at_ms != 0)
			iso_time_ms(f->created_at_ms, created);
	}
	pthread_mutex_lock(&out_mu);
	if (o->text) {
		printf("%s %-7s %-18s %s message %s %s -> %s%s%s\n", failed[0] ? failed : "-", kind,
		    reason ? reason : "-", cid ? cid : "-", mid ? mid : "-", from ? from : "-",
		    to ? to : "-", detail[0] ? ": " : "", detail);
	} else {
		cJSON *j = cJSON_CreateObject();
		char *s;

		cJSON_AddStringToObject(j, "kind", kind);
		cJSON_AddStringToObject(j, "message_id", str(mid));
		cJSON_AddStringToObject(j, "correlation_id", str(cid));
		cJSON_AddStringToObject(j, "sender", str(from));
		cJSON_AddStringToObject(j, "recipient", str(to));
		cJSON_AddStringToObject(j, "reason", str(reason));
		cJSON_AddStringToObject(j, "detail", detail);
		cJSON_AddStringToObject(j, "failed_at", failed);
		cJSON_AddStringToObject(j, "created_at", created);
		cJSON_AddNumberToObject(j, "attempts", attempts);
		s = cJSON_PrintUnformatted(j);
		if (s != NULL)
			printf("%s\n", s);
		cJSON_free(s);
		cJSON_Delete(j);
	}
	fflush(stdout);
	pthread_mutex_unlock(&out_mu);
}

/* Runs on nats.c's thread; the message is destroyed by the bus. */
static void
on_notice(void *arg, natsMsg *msg)
{
	const struct notify_opts *o = arg;
	const char *kind = strstr(natsMsg_GetSubject(msg), ".notify.delayed.") ? "delayed" : "failure";
	ProtobufCMessage *m = NULL;

	if (env_unpack_msg(&clawrelay__v1__failure__descriptor, natsMsg_GetData(msg),
	    (size_t)natsMsg_GetDataLength(msg), &m) != CR_OK)
		m = NULL;
	print_notice(o, kind, (const Failure *)m, msg);
	if (m != NULL)
		protobuf_c_message_free_unpacked(m, NULL);
	atomic_fetch_add(&notify_seen, 1);
}

static int
follow(struct cli_ctx *c, struct bus *b, struct notify_opts *o, uint64_t max)
{
	struct sigaction sa;
	char subj[512];

	memset(&sa, 0, sizeof(sa));
	sa.sa_handler = on_signal;
	sigaction(SIGINT, &sa, NULL);
	sigaction(SIGTERM, &sa, NULL);
	for (int i = 0; i < 2; i++) {
		if (!(o->kinds & (1 << i)))
			continue;
		if (bus_subj(b, subj, sizeof(subj), "notify.%s.%s", i ? "delayed" : "failure",
		    o->tok) < 0)
			return cli_err("subject too long");
		enum cr_err e = bus_subscribe(b, subj, NULL, on_notice, o);
		if (e != CR_OK)
			return cli_err("cannot subscribe to %s: %s", subj, cr_strerror(e));
		fprintf(stderr, "following %s\n", subj);
	}
	natsConnection_Flush(bus_nc(b));
	while (!notify_stop && (max == 0 || (uint64_t)atomic_load(&notify_seen) < max))
		usleep(20000);
	/* stop the handler before o goes out of scope */
	bus_drain_subs(b);
	return CLI_OK;
}

/* the kind of a stream subject "<P>.failure.<tok>" / "<P>.delayed.<tok>"
 * that o asks for, or NULL */
static const char *
stream_kind(const struct bus *b, const struct notify_opts *o, const char *subj)
{
	size_t pl = strlen(bus_prefix(b));
	const char *rest;
	const char *kind;

	if (strncmp(subj, bus_prefix(b), pl) != 0 || subj[pl] != '.')
		return NULL;
	rest = subj + pl + 1;
	if (strncmp(rest, "failure.", 8) == 0 && (o->kinds & 1))
		kind = "failure";
	else if (strncmp(rest, "delayed.", 8) == 0 && (o->kinds & 2))
		kind = "delayed";
	else
		return NULL;
	if (strcmp(o->tok, "*") != 0 && strcmp(rest + 8, o->tok) != 0)
		return NULL;
	return kind;
}

/* print the newest `last` notices of the stream, oldest first */
static int
recent(struct cli_ctx *c, struct bus *b, const struct notify_opts *o, uint64_t last)
{
	char stream[96];
	jsStreamInfo *si = NULL;
	jsErrCode jerr = 0;
	natsStatus s;
	natsMsg **got;
	size_t n = 0;
	uint64_t first, seq, scanned = 0;
	int rc = CLI_OK;

	if (bus_notice_stream_name(b, stream, sizeof(stream)) < 0)
		return cli_err("subject prefix too long");
	s = js_GetStreamInfo(&si, bus_js(b), stream, NULL, &jerr);
	if (s == NATS_NOT_FOUND)
		return cli_err("no stream %s in NATS at %s yet (no service has started)", stream,
		    c->nats_url);
	if (s != NATS_OK)
		return cli_err("cannot read stream %s: %s", stream, natsStatus_GetText(s));
	first = si->State.FirstSeq;
	seq = si->State.LastSeq;
	jsStreamInfo_Destroy(si);
	if ((got = calloc((size_t)last, sizeof(*got))) == NULL)
		return cli_err("out of memory");
	for (; seq >= first && seq > 0 && n < last && scanned < NOTIFY_SCAN_MAX; seq--, scanned++) {
		natsMsg *m = NULL;
		s = js_GetMsg(&m, bus_js(b), stream, seq, NULL, &jerr);
		if (s == NATS_NOT_FOUND)
			continue;	/* deleted, or aged out meanwhile */
		if (s != NATS_OK) {
			rc = cli_err("cannot read message %llu of %s: %s", (unsigned long long)seq,
			    stream, natsStatus_GetText(s));
			break;
		}
		if (stream_kind(b, o, natsMsg_GetSubject(m)) != NULL)
			got[n++] = m;
		else
			natsMsg_Destroy(m);
	}
	while (n > 0) {
		natsMsg *m = got[--n];
		ProtobufCMessage *pm = NULL;
		if (rc == CLI_OK && env_unpack_msg(&clawrelay__v1__failure__descriptor,
		    natsMsg_GetData(m), (size_t)natsMsg_GetDataLength(m), &pm) == CR_OK) {
			print_notice(o, stream_kind(b, o, natsMsg_GetSubject(m)), (const Failure *)pm,
			    NULL);
			protobuf_c_message_free_unpacked(pm, NULL);
		}
		natsMsg_Destroy(m);
	}
	free(got);
	return rc;
}

static void
notify_help(FILE *f)
{
	fprintf(f,
	    "usage: clawrelay notifications [<sender-id>] [--follow] [--kind failure|delayed]\n"
	    "                               [--count N] [--last N] [--text]\n"
	    "       clawrelay follow [<sender-id>] ...   (= notifications --follow)\n"
	    "\n"
	    "Failure notices (a message failed for good: expired, shed, rejected,\n"
	    "dead_lettered, attempts_exhausted) and delay warnings (a message still\n"
	    "undelivered after the delay-warning time), for one sender or for all,\n"
	    "one JSON object per line:\n"
	    "  {\"kind\":\"failure|delayed\",\"message_id\",\"correlation_id\",\"sender\",\n"
	    "   \"recipient\",\"reason\",\"detail\",\"failed_at\":\"<ISO time>\",\n"
	    "   \"created_at\":\"<ISO time or empty>\",\"attempts\":N}\n"
	    "(--text: one readable line each instead).\n"
	    "\n"
	    "--follow   print each notice as the notifier publishes it\n"
	    "           (<prefix>.notify.failure.<sender>, <prefix>.notify.delayed.<sender>)\n"
	    "           until interrupted, or until --count N were printed.\n"
	    "otherwise  print the newest --last N (default 20) failures and delays that\n"
	    "           the notice stream <PREFIX>_NOTICES still holds, oldest first, and\n"
	    "           exit: what the relay recorded, told by the notifier or about to be.\n"
	    "--kind     only failures, or only delay warnings.\n");
}

static int
notify_main(struct cli_ctx *c, int argc, char **argv, int is_follow)
{
	const char *pos[1], *count = NULL, *last = NULL, *kind = NULL, *why = NULL;
	int npos = 0, rc, fl = is_follow, json = 0, nodelay = 0;
	struct notify_opts o;
	struct cli_opt opts[] = {
		{ "--follow", 0, NULL, &fl },
		{ "--kind", 1, &kind, NULL },
		{ "--count", 1, &count, NULL },
		{ "--last", 1, &last, NULL },
		{ "--text", 0, NULL, &o.text },
		{ "--json", 0, NULL, &json },          /* follow's old flag: JSON is the default */
		{ "--no-delayed", 0, NULL, &nodelay }, /* follow's old flag: --kind failure */
	};
	uint64_t max = 0, nlast = 20;
	const char *cmd = is_follow ? "follow" : "notifications";
	struct bus *b;

	memset(&o, 0, sizeof(o));
	o.kinds = 3;
	snprintf(o.tok, sizeof(o.tok), "*");
	rc = cli_parse(c, argc, argv, opts, sizeof(opts) / sizeof(opts[0]), pos, 1, &npos);
	if (rc == -1) {
		notify_help(stdout);
		return CLI_OK;
	}
	if (rc != CLI_OK)
		return rc;
	if (count != NULL && cli_parse_uint(count, 1, 1000000000, &max) != 0)
		return cli_usage_err(cmd, "--count must be a positive number");
	if (last != NULL && cli_parse_uint(last, 1, 100000, &nlast) != 0)
		return cli_usage_err(cmd, "--last must be 1..100000");
	if (kind != NULL && strcmp(kind, "failure") == 0)
		o.kinds = 1;
	else if (kind != NULL && strcmp(kind, "delayed") == 0)
		o.kinds = 2;
	else if (kind != NULL)
		return cli_usage_err(cmd, "--kind is failure or delayed");
	if (nodelay)
		o.kinds &= 1;
	if (o.kinds == 0)
		return cli_usage_err(cmd, "--no-delayed and --kind delayed leave nothing to print");
	if (npos == 1) {
		if (auth_check_agent_id(pos[0], &why) != CR_OK)
			return cli_err("invalid agent ID: %s", why);
		subj_token(pos[0], o.tok, sizeof(o.tok));
	}
	if ((b = cli_bus(c)) == NULL)
		return CLI_FAIL;
	return fl ? follow(c, b, &o, max) : recent(c, b, &o, nlast);
}

/* cli_cmd_notifications - failure and delay notices, recent or as they come */
int
cli_cmd_notifications(struct cli_ctx *c, int argc, char **argv)
{
	return notify_main(c, argc, argv, 0);
}

/* cli_cmd_follow - `notifications --follow` under its old name */
int
cli_cmd_follow(struct cli_ctx *c, int argc, char **argv)
{
	return notify_main(c, argc, argv, 1);
}
