/*
 * itest_notify.c - every failure is told, exactly once, even when no
 * notifier runs at the time it happens.
 *  1. Notifier stopped while messages expire (TTL 2 s, recipient offline)
 *     and one is rejected (webhook 410); the notice stream holds them
 *     (`clawrelay notifications` lists them); notifier started: each yields
 *     exactly one notice on <P>.notify.failure.> with its headers, status
 *     says failed with the reason and times (from NATS and from the
 *     gateway), and the sender, offline meanwhile, gets exactly one
 *     DELIVERY_STATUS message each at its hook once its connector comes.
 *     A notifier restart tells nothing again.
 *  2. Two notifier replicas; failures, and failures published three times
 *     each: one notice and one DELIVERY_STATUS per failed message.
 *  3. A delay warning published twice: one <P>.notify.delayed. notice, no
 *     DELIVERY_STATUS, no failed status.
 *  4. `clawrelay notifications --follow` (and its old name `follow`)
 *     prints the notices as JSON lines.
 *  5. No agent can be registered under the relay's own sender ID.
 */
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include "bus.h"
#include "env.h"
#include "it_common.h"

#define WAIT_MS 90000            /* generous: two busy cores */
#define QUIET_MS 3000            /* after the last expected notice, nothing more comes */
#define MAX_NOTICES 4096

static struct h_stack st;
static struct bus *tb;          /* the test's own NATS connection */
static char hook_a[400], hook_d[400], hook_a_url[128], hook_d_url[128], hook_c_url[128];

/* notices seen on <P>.notify.> (nats.c's thread writes, the test reads) */
struct seen {
	char kind[16];
	char mid[64];
	char cid[160];
	char sender[64];
	char reason[32];
	char ctype[64];
};
static pthread_mutex_t seen_mu = PTHREAD_MUTEX_INITIALIZER;
static struct seen seen[MAX_NOTICES];
static int nseen;

static void
hdr_copy(natsMsg *m, const char *name, char *out, size_t sz)
{
	const char *v = NULL;

	out[0] = '\0';
	if (natsMsgHeader_Get(m, name, &v) == NATS_OK && v != NULL)
		snprintf(out, sz, "%s", v);
}

static void
on_notice(void *arg, natsMsg *msg)
{
	struct seen s;

	memset(&s, 0, sizeof(s));
	snprintf(s.kind, sizeof(s.kind), "%s",
	    strstr(natsMsg_GetSubject(msg), ".notify.delayed.") ? "delayed" : "failure");
	hdr_copy(msg, "X-Claw-Message-Id", s.mid, sizeof(s.mid));
	hdr_copy(msg, "X-Claw-Correlation-Id", s.cid, sizeof(s.cid));
	hdr_copy(msg, "X-Claw-Sender", s.sender, sizeof(s.sender));
	hdr_copy(msg, "X-Claw-Reason", s.reason, sizeof(s.reason));
	hdr_copy(msg, "Content-Type", s.ctype, sizeof(s.ctype));
	pthread_mutex_lock(&seen_mu);
	if (nseen < MAX_NOTICES)
		seen[nseen++] = s;
	pthread_mutex_unlock(&seen_mu);
}

/* how many notices of kind for message mid; *last the latest one */
static int
seen_count(const char *kind, const char *mid, struct seen *last)
{
	int n = 0;

	pthread_mutex_lock(&seen_mu);
	for (int i = 0; i < nseen; i++) {
		if (strcmp(seen[i].kind, kind) == 0 && strcmp(seen[i].mid, mid) == 0) {
			n++;
			if (last != NULL)
				*last = seen[i];
		}
	}
	pthread_mutex_unlock(&seen_mu);
	return n;
}

/* wait until every one of mids has at least one notice of kind */
static int
wait_notices(const char *kind, char mids[][64], int n, int timeout_ms)
{
	for (int t = 0; t <= timeout_ms; t += 100) {
		int all = 1;
		for (int i = 0; i < n && all; i++)
			all = seen_count(kind, mids[i], NULL) > 0;
		if (all)
			return 0;
		h_sleep_ms(100);
	}
	return -1;
}

/* DELIVERY_STATUS messages about mid at a hook (its JSON lines) */
static int
ds_count(const char *hook, const char *mid, cJSON **body_out)
{
	int n = 0, nl;
	cJSON **v = it_lines(hook, &nl);

	for (int i = 0; i < nl; i++) {
		cJSON *snd = cJSON_GetObjectItem(v[i], "sender");
		cJSON *b = cJSON_GetObjectItem(v[i], "body");
		if (!cJSON_IsString(snd) || strcmp(snd->valuestring, ENV_SYSTEM_SENDER) != 0 ||
		    !cJSON_IsString(b))
			continue;
		cJSON *j = cJSON_Parse(b->valuestring);
		cJSON *m = j ? cJSON_GetObjectItem(j, "message_id") : NULL;
		if (cJSON_IsString(m) && strcmp(m->valuestring, mid) == 0) {
			n++;
			if (body_out != NULL) {
				cJSON_Delete(*body_out);
				*body_out = j;
				j = NULL;
			}
		}
		cJSON_Delete(j);
	}
	it_lines_free(v, nl);
	return n;
}

static int
wait_ds(const char *hook, char mids[][64], int n, int timeout_ms)
{
	for (int t = 0; t <= timeout_ms; t += 200) {
		int all = 1;
		for (int i = 0; i < n && all; i++)
			all = ds_count(hook, mids[i], NULL) > 0;
		if (all)
			return 0;
		h_sleep_ms(200);
	}
	return -1;
}

/* signed POST from -> to; the message ID of the 202 into mid */
static void
send_one(const char *from, const char *to, const char *cid, const char *ttl, char mid[64])
{
	char h_cid[200], h_ttl[64];
	const char *extra[3] = { h_cid, NULL, NULL };
	struct h_resp r;

	snprintf(h_cid, sizeof(h_cid), "X-Claw-Correlation-Id: %s", cid);
	if (ttl != NULL) {
		snprintf(h_ttl, sizeof(h_ttl), "X-Claw-Ttl-Seconds: %s", ttl);
		extra[1] = h_ttl;
	}
	ck_assert_int_eq(h_send(&st, from, to, "doomed", 6, extra, &r), 0);
	ck_assert_msg(r.status == 202, "gateway answered %ld: %s", r.status, r.body.data);
	cJSON *j = cJSON_Parse(r.body.data);
	ck_assert_ptr_nonnull(j);
	snprintf(mid, 64, "%s", cJSON_GetObjectItem(j, "messageId")->valuestring);
	cJSON_Delete(j);
	h_resp_free(&r);
}

/* publish a Failure as a service would; dedup: with Nats-Msg-Id */
static void
publish_failure(const char *kind, const char *mid, const char *cid, const char *sender,
    const char *rcpt, int reason, const char *detail, int dedup)
{
	Failure f = CLAWRELAY__V1__FAILURE__INIT;
	unsigned char buf[1024];
	char subj[256];
	size_t len = 0;

	f.schema_version = ENV_SCHEMA;
	f.message_id = (char *)(uintptr_t)mid;
	f.correlation_id = (char *)(uintptr_t)cid;
	f.sender = (char *)(uintptr_t)sender;
	f.recipient = (char *)(uintptr_t)rcpt;
	f.reason = (Clawrelay__V1__FailureReason)reason;
	f.detail = (char *)(uintptr_t)detail;
	f.failed_at_ms = now_ms();
	f.created_at_ms = f.failed_at_ms - 3600 * 1000;
	f.attempts = 3;
	ck_assert_int_eq(env_pack_into(&f.base, buf, sizeof(buf), &len), CR_OK);
	if (dedup) {
		ck_assert_int_eq(bus_notice_publish(tb, kind, sender, mid, buf, len), CR_OK);
	} else {
		ck_assert_int_ge(bus_subj_agent(tb, subj, sizeof(subj), kind, sender), 0);
		ck_assert_int_eq(bus_publish(tb, subj, buf, len), CR_OK);
	}
	natsConnection_Flush(bus_nc_bulk(tb));
}

static struct h_proc *
start_notifier(const char *name)
{
	return h_spawn(&st, name, "clawrelay-notifier", h_free_port(), NULL, NULL);
}

static void
setup(void)
{
	h_stack_init(&st, "notify");
	h_nats_start(&st);
	h_start_services(&st, NULL);
	ck_assert_int_eq(bus_connect(st.nats_url, "itest-notify", "clawrelay", &tb), CR_OK);
	ck_assert_int_eq(bus_subscribe(tb, "clawrelay.notify.>", NULL, on_notice, NULL), CR_OK);
	natsConnection_Flush(bus_nc(tb));
	int pa = it_hook(&st, "hook-alice", hook_a, sizeof(hook_a), NULL);
	int pd = it_hook(&st, "hook-dave", hook_d, sizeof(hook_d), NULL);
	char c_hook[400];
	const char *refuse[] = { "--status", "410", NULL };
	int pc = it_hook(&st, "hook-carol", c_hook, sizeof(c_hook), refuse);
	snprintf(hook_a_url, sizeof(hook_a_url), "http://127.0.0.1:%d/hook", pa);
	snprintf(hook_d_url, sizeof(hook_d_url), "http://127.0.0.1:%d/hook", pd);
	snprintf(hook_c_url, sizeof(hook_c_url), "http://127.0.0.1:%d/webhook", pc);
	h_agent(&st, "alice", NULL);
	h_agent(&st, "bob", NULL);
	h_agent(&st, "carol", hook_c_url);
	h_agent(&st, "dave", NULL);
	h_trust(&st, "alice", "bob");
	h_trust(&st, "alice", "carol");
	h_trust(&st, "dave", "bob");
}

static void
teardown(void)
{
	bus_free(tb);
	tb = NULL;
	h_stop_all(&st);
}

START_TEST(stopped_notifier_catches_up)
{
	char mids[5][64], cids[5][64];
	struct strbuf out;

	/* no notifier while the messages fail */
	h_kill(h_find(&st, "notifier"), SIGTERM);
	for (int i = 0; i < 4; i++) {
		snprintf(cids[i], sizeof(cids[i]), "exp-%d", i);
		send_one("alice", "bob", cids[i], "2", mids[i]);	/* bob never connects */
	}
	snprintf(cids[4], sizeof(cids[4]), "rej-0");
	send_one("alice", "carol", cids[4], NULL, mids[4]);	/* carol's webhook: 410 */

	/* the failures wait in the stream: `clawrelay notifications` lists them */
	int listed = 0;
	for (int t = 0; t < WAIT_MS && listed < 5; t += 500) {
		sb_init(&out);
		const char *args[] = { "notifications", "alice", "--last", "50", NULL };
		if (h_cli(&st, &out, args) == 0) {
			listed = 0;
			for (int i = 0; i < 5; i++)
				listed += strstr(out.data, mids[i]) != NULL;
		}
		if (listed == 5)
			ck_assert_msg(strstr(out.data, "\"kind\":\"failure\"") &&
			    strstr(out.data, "\"reason\":\"expired\"") &&
			    strstr(out.data, "\"reason\":\"rejected\""),
			    "notifications lines lack kind/reason: %s", out.data);
		sb_free(&out);
		if (listed < 5)
			h_sleep_ms(500);
	}
	ck_assert_msg(listed == 5, "the stream holds %d of the 5 failures", listed);
	for (int i = 0; i < 5; i++)
		ck_assert_int_eq(seen_count("failure", mids[i], NULL), 0);

	/* a notifier comes: every failure told once */
	start_notifier("notifier");
	ck_assert_msg(wait_notices("failure", mids, 5, WAIT_MS) == 0, "not every notice came");
	h_sleep_ms(QUIET_MS);
	for (int i = 0; i < 5; i++) {
		struct seen s;
		ck_assert_int_eq(seen_count("failure", mids[i], &s), 1);
		ck_assert_str_eq(s.cid, cids[i]);
		ck_assert_str_eq(s.sender, "alice");
		ck_assert_str_eq(s.reason, i < 4 ? "expired" : "rejected");
		ck_assert_str_eq(s.ctype, "application/protobuf");
	}

	/* status: failed, the reason and the times (NATS KV, then the gateway) */
	sb_init(&out);
	const char *sa[] = { "status", "exp-0", NULL };
	ck_assert_int_eq(h_cli(&st, &out, sa), 0);
	cJSON *j = cJSON_Parse(out.data);
	ck_assert_msg(j != NULL, "status: %s", out.data);
	ck_assert_str_eq(cJSON_GetObjectItem(j, "state")->valuestring, "failed");
	ck_assert_str_eq(cJSON_GetObjectItem(j, "failureReason")->valuestring, "expired");
	int has_failed = 0, has_accepted = 0;
	cJSON *h;
	cJSON_ArrayForEach(h, cJSON_GetObjectItem(j, "history")) {
		const char *stn = cJSON_GetObjectItem(h, "state")->valuestring;
		has_failed |= strcmp(stn, "failed") == 0 && cJSON_GetObjectItem(h, "at")->valuedouble > 0;
		has_accepted |= strcmp(stn, "accepted") == 0 || strcmp(stn, "queued") == 0;
	}
	ck_assert_msg(has_failed && has_accepted, "status lacks times: %s", out.data);
	cJSON_Delete(j);
	sb_free(&out);
	char key[400];
	h_key_path(&st, "alice", key, sizeof(key));
	sb_init(&out);
	const char *sg[] = { "status", "rej-0", "--as", "alice", "--key", key, NULL };
	ck_assert_int_eq(h_cli(&st, &out, sg), 0);
	ck_assert_msg(strstr(out.data, "\"failed\"") && strstr(out.data, "\"rejected\""),
	    "gateway status: %s", out.data);
	sb_free(&out);

	/* alice was offline all along: her DELIVERY_STATUS messages waited */
	struct h_proc *ca = it_connector(&st, "alice", hook_a_url);
	ck_assert_msg(h_wait_log(ca, "reconnect_ack", 30000) == 0, "connector A never connected");
	ck_assert_msg(wait_ds(hook_a, mids, 5, WAIT_MS) == 0, "not every DELIVERY_STATUS came");

	/* a notifier restart tells nothing again */
	h_kill(h_find(&st, "notifier"), SIGTERM);
	start_notifier("notifier");
	h_sleep_ms(QUIET_MS);
	for (int i = 0; i < 5; i++) {
		cJSON *b = NULL;
		ck_assert_int_eq(seen_count("failure", mids[i], NULL), 1);
		ck_assert_int_eq(ds_count(hook_a, mids[i], &b), 1);
		ck_assert_str_eq(cJSON_GetObjectItem(b, "type")->valuestring, "delivery_status");
		ck_assert_str_eq(cJSON_GetObjectItem(b, "correlation_id")->valuestring, cids[i]);
		ck_assert_str_eq(cJSON_GetObjectItem(b, "reason")->valuestring,
		    i < 4 ? "expired" : "rejected");
		ck_assert_str_eq(cJSON_GetObjectItem(b, "recipient")->valuestring,
		    i < 4 ? "bob" : "carol");
		const char *text = cJSON_GetObjectItem(b, "text")->valuestring;
		ck_assert_msg(strstr(text, mids[i]) && strstr(text, "could not be delivered") &&
		    strstr(text, i < 4 ? "expired after" : "carol refused it"), "text: %s", text);
		ck_assert_msg(strncmp(cJSON_GetObjectItem(b, "failed_at")->valuestring, "20", 2) == 0,
		    "failed_at");
		cJSON_Delete(b);
	}
	/* the hook's request says critical */
	int nl;
	cJSON **v = it_lines(hook_a, &nl);
	for (int i = 0; i < nl; i++)
		ck_assert_str_eq(cJSON_GetObjectItem(v[i], "priority")->valuestring, "critical");
	it_lines_free(v, nl);
}
END_TEST

START_TEST(two_replicas_tell_once)
{
	enum { REAL = 10, FAKE = 20 };
	char mids[REAL + FAKE][64], cid[64];

	it_connector(&st, "dave", hook_d_url);
	start_notifier("notifier-2");	/* next to "notifier" */
	for (int i = 0; i < REAL; i++) {
		snprintf(cid, sizeof(cid), "two-%d", i);
		send_one("dave", "bob", cid, "1", mids[i]);
	}
	/* as if a service had published each of these three times */
	for (int i = REAL; i < REAL + FAKE; i++)
		ulid_new(mids[i]);
	for (int round = 0; round < 3; round++) {
		for (int i = REAL; i < REAL + FAKE; i++) {
			snprintf(cid, sizeof(cid), "dup-%d", i);
			publish_failure("failure", mids[i], cid, "dave", "bob",
			    CLAWRELAY__V1__FAILURE_REASON__FAIL_ATTEMPTS_EXHAUSTED, "max attempts reached", 0);
		}
	}
	ck_assert_msg(wait_notices("failure", mids, REAL + FAKE, WAIT_MS) == 0,
	    "not every notice came");
	ck_assert_msg(wait_ds(hook_d, mids, REAL + FAKE, WAIT_MS) == 0,
	    "not every DELIVERY_STATUS came");
	h_sleep_ms(QUIET_MS);
	for (int i = 0; i < REAL + FAKE; i++) {
		ck_assert_msg(seen_count("failure", mids[i], NULL) == 1, "message %d: %d notices", i,
		    seen_count("failure", mids[i], NULL));
		ck_assert_msg(ds_count(hook_d, mids[i], NULL) == 1, "message %d: %d statuses", i,
		    ds_count(hook_d, mids[i], NULL));
	}
}
END_TEST

START_TEST(delay_warning_once)
{
	char mid[64];
	char mids[1][64];
	struct seen s;
	struct strbuf out;
	int before = h_file_lines(hook_a);

	ulid_new(mid);
	snprintf(mids[0], sizeof(mids[0]), "%s", mid);
	/* twice within the duplicate window (stored once), once more without
	 * the header (stored twice) */
	publish_failure("delayed", mid, "late-1", "alice", "bob",
	    CLAWRELAY__V1__FAILURE_REASON__FAIL_UNKNOWN, "undelivered after 3600 s", 1);
	publish_failure("delayed", mid, "late-1", "alice", "bob",
	    CLAWRELAY__V1__FAILURE_REASON__FAIL_UNKNOWN, "undelivered after 3600 s", 1);
	publish_failure("delayed", mid, "late-1", "alice", "bob",
	    CLAWRELAY__V1__FAILURE_REASON__FAIL_UNKNOWN, "undelivered after 3600 s", 0);
	ck_assert_msg(wait_notices("delayed", mids, 1, WAIT_MS) == 0, "no delay notice");
	h_sleep_ms(QUIET_MS);
	ck_assert_int_eq(seen_count("delayed", mid, &s), 1);
	ck_assert_int_eq(seen_count("failure", mid, NULL), 0);
	ck_assert_str_eq(s.cid, "late-1");
	ck_assert_str_eq(s.sender, "alice");
	ck_assert_str_eq(s.reason, "unknown");
	/* no DELIVERY_STATUS, and the message is not failed */
	ck_assert_int_eq(h_file_lines(hook_a), before);
	sb_init(&out);
	const char *sa[] = { "status", "late-1", NULL };
	h_cli(&st, &out, sa);
	ck_assert_msg(strstr(out.data, "\"failed\"") == NULL, "status: %s", out.data);
	sb_free(&out);
}
END_TEST

/* wait for a spawned CLI to exit by itself; its exit status, -1 on timeout */
static int
wait_exit(struct h_proc *p, int timeout_ms)
{
	int stt;

	for (int t = 0; t <= timeout_ms; t += 100) {
		if (waitpid(p->pid, &stt, WNOHANG) == p->pid) {
			p->pid = 0;
			return WIFEXITED(stt) ? WEXITSTATUS(stt) : 128;
		}
		h_sleep_ms(100);
	}
	return -1;
}

START_TEST(cli_follows_notices)
{
	char mid_f[64], mid_d[64], mid_o[64];
	const char *a1[] = { "notifications", "--follow", "alice", "--count", "2", NULL };
	const char *a2[] = { "follow", "alice", "--json", "--count", "2", NULL };
	struct h_proc *p1 = h_spawn(&st, "cli-notifications", "clawrelay", 0, NULL, a1);
	struct h_proc *p2 = h_spawn(&st, "cli-follow", "clawrelay", 0, NULL, a2);

	ck_assert_int_eq(h_wait_log(p1, "following clawrelay.notify.delayed.alice", 20000), 0);
	ck_assert_int_eq(h_wait_log(p2, "following clawrelay.notify.delayed.alice", 20000), 0);
	ulid_new(mid_f);
	ulid_new(mid_d);
	ulid_new(mid_o);
	publish_failure("failure", mid_f, "cli-f", "alice", "bob",
	    CLAWRELAY__V1__FAILURE_REASON__FAIL_SHED, "queue near capacity", 1);
	publish_failure("delayed", mid_d, "cli-d", "alice", "bob",
	    CLAWRELAY__V1__FAILURE_REASON__FAIL_UNKNOWN, "undelivered after 3600 s", 1);
	publish_failure("failure", mid_o, "cli-other", "dave", "bob",	/* another sender */
	    CLAWRELAY__V1__FAILURE_REASON__FAIL_SHED, "queue near capacity", 1);
	ck_assert_int_eq(wait_exit(p1, WAIT_MS), 0);
	ck_assert_int_eq(wait_exit(p2, WAIT_MS), 0);

	struct h_proc *ps[] = { p1, p2 };
	for (int k = 0; k < 2; k++) {
		int nl, got_f = 0, got_d = 0;
		cJSON **v = it_lines(ps[k]->log, &nl);	/* stderr lines are not JSON */
		ck_assert_int_eq(nl, 2);
		for (int i = 0; i < nl; i++) {
			const char *kind = cJSON_GetObjectItem(v[i], "kind")->valuestring;
			const char *m = cJSON_GetObjectItem(v[i], "message_id")->valuestring;
			ck_assert_str_eq(cJSON_GetObjectItem(v[i], "sender")->valuestring, "alice");
			ck_assert_str_eq(cJSON_GetObjectItem(v[i], "recipient")->valuestring, "bob");
			ck_assert_int_eq(cJSON_GetObjectItem(v[i], "attempts")->valueint, 3);
			ck_assert_msg(strncmp(cJSON_GetObjectItem(v[i], "failed_at")->valuestring,
			    "20", 2) == 0, "failed_at is not an ISO time");
			if (strcmp(kind, "failure") == 0) {
				got_f++;
				ck_assert_str_eq(m, mid_f);
				ck_assert_str_eq(cJSON_GetObjectItem(v[i], "correlation_id")->valuestring, "cli-f");
				ck_assert_str_eq(cJSON_GetObjectItem(v[i], "reason")->valuestring, "shed");
				ck_assert_str_eq(cJSON_GetObjectItem(v[i], "detail")->valuestring,
				    "queue near capacity");
			} else {
				got_d++;
				ck_assert_str_eq(kind, "delayed");
				ck_assert_str_eq(m, mid_d);
			}
		}
		ck_assert_int_eq(got_f, 1);
		ck_assert_int_eq(got_d, 1);
		it_lines_free(v, nl);
	}
}
END_TEST

START_TEST(system_sender_reserved)
{
	char pub[420];
	struct strbuf out;

	snprintf(pub, sizeof(pub), "%s/alice.pub", st.dir);
	const char *add[] = { "agent", "add", ENV_SYSTEM_SENDER, "--pubkey", pub, NULL };
	const char *trust[] = { "trust", "add", ENV_SYSTEM_SENDER, "alice", NULL };
	const char *show[] = { "agent", "show", ENV_SYSTEM_SENDER, NULL };
	ck_assert_int_eq(h_cli(&st, NULL, add), 1);
	ck_assert_int_eq(h_cli(&st, NULL, trust), 1);
	sb_init(&out);
	ck_assert_int_ne(h_cli(&st, &out, show), 0);
	sb_free(&out);
}
END_TEST

int
main(void)
{
	Suite *s = suite_create("notify");
	TCase *tc = tcase_create("notices");
	tcase_set_timeout(tc, 900);
	tcase_add_unchecked_fixture(tc, setup, teardown);
	tcase_add_test(tc, system_sender_reserved);
	tcase_add_test(tc, stopped_notifier_catches_up);
	tcase_add_test(tc, two_replicas_tell_once);
	tcase_add_test(tc, delay_warning_once);
	tcase_add_test(tc, cli_follows_notices);
	suite_add_tcase(s, tc);
	return it_run(s);
}
