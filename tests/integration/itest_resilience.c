/*
 * itest_resilience.c - issue 3 on the server side, each case on a stack of
 * its own (real nats-server, real services, real sockets):
 *   - lanes: with bob offline, 300 low, 300 normal and 30 critical queued;
 *     when bob connects, every critical arrives first, then normal, then low;
 *   - shedding: past the high-water mark new low messages get 507 and the
 *     oldest low ones are shed (one failure notice each) for normal and
 *     critical ones, which are still accepted;
 *   - expiry: messages with a 1 s TTL for an offline agent each yield
 *     exactly one failure notice (expired), status shows failed, and the
 *     agent's reconnect_ack reports the expired count;
 *   - delayed: a message queued longer than DELAY_WARN_S gets one delayed
 *     notice, a delivered one none;
 *   - limits: the pair's token bucket (429 + Retry-After), a trust pair's
 *     override, the pair's queue cap (507), the per-sender limit at the
 *     gateway (429); idempotency: same key and body -> 200 with the first
 *     IDs, another body -> 409;
 *   - fail fast: with relay-session frozen, the partition's breaker opens
 *     and POSTs are answered 503 + Retry-After at once instead of after the
 *     timeout; the breaker shows in the gateway's /v1/status and on
 *     clawrelay.breaker.gateway; after relay-session wakes, messages flow.
 */
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <nats/nats.h>

#include "env.h"
#include "it_common.h"
#include "util.h"

static struct h_stack st;

static void
teardown(void)
{
	h_stop_all(&st);
}

static natsConnection *
nats_open(void)
{
	natsConnection *nc = NULL;

	ck_assert_int_eq(natsConnection_ConnectTo(&nc, st.nats_url), NATS_OK);
	return nc;
}

static natsSubscription *
nats_sub(natsConnection *nc, const char *subj)
{
	natsSubscription *sub = NULL;

	ck_assert_int_eq(natsConnection_SubscribeSync(&sub, nc, subj), NATS_OK);
	ck_assert_int_eq(natsConnection_Flush(nc), NATS_OK);
	return sub;
}

/* read messages of sub until want arrived and then quiet_ms passed without
 * another (so a duplicate would be seen), or timeout_ms in all; each one's
 * decoded Failure goes to fn (may be NULL); returns the count */
static int
nats_count(natsSubscription *sub, int want, int timeout_ms, int quiet_ms,
    void (*fn)(void *arg, const Failure *f, natsMsg *m), void *arg)
{
	uint64_t end = mono_ms() + (uint64_t)timeout_ms;
	int n = 0;

	for (;;) {
		natsMsg *m = NULL;
		uint64_t now = mono_ms();
		int wait = n >= want ? quiet_ms : (int)(end > now ? end - now : 0);

		if (wait <= 0 || natsSubscription_NextMsg(&m, sub, wait) != NATS_OK)
			break;
		n++;
		if (fn != NULL) {
			Failure *f = clawrelay__v1__failure__unpack(NULL,
			    (size_t)natsMsg_GetDataLength(m), (const uint8_t *)natsMsg_GetData(m));
			ck_assert_ptr_nonnull(f);
			fn(arg, f, m);
			clawrelay__v1__failure__free_unpacked(f, NULL);
		}
		natsMsg_Destroy(m);
	}
	return n;
}

/* one signed POST with optional priority, ttl, correlation and idempotency key */
static long
post(const char *from, const char *to, const char *body, const char *prio, const char *ttl,
    const char *corr, const char *idem, struct h_resp *keep)
{
	char h[4][160];
	const char *extra[5];
	int n = 0;
	struct h_resp r;
	long status;

	if (prio) {
		snprintf(h[n], sizeof(h[n]), "X-Claw-Priority: %s", prio);
		extra[n] = h[n];
		n++;
	}
	if (ttl) {
		snprintf(h[n], sizeof(h[n]), "X-Claw-Ttl-Seconds: %s", ttl);
		extra[n] = h[n];
		n++;
	}
	if (corr) {
		snprintf(h[n], sizeof(h[n]), "X-Claw-Correlation-Id: %s", corr);
		extra[n] = h[n];
		n++;
	}
	if (idem) {
		snprintf(h[n], sizeof(h[n]), "X-Claw-Idempotency-Key: %s", idem);
		extra[n] = h[n];
		n++;
	}
	extra[n] = NULL;
	ck_assert_int_eq(h_send(&st, from, to, body, strlen(body), extra, &r), 0);
	status = r.status;
	if (keep != NULL)
		*keep = r;
	else
		h_resp_free(&r);
	return status;
}

static void
start(const char *name, const char *const *env)
{
	h_stack_init(&st, name);
	h_nats_start(&st);
	h_start_services(&st, env);
}

/* ---- lanes and shedding ------------------------------------------------ */

static void
count_shed(void *arg, const Failure *f, natsMsg *m)
{
	int *n = arg;
	const char *reason = NULL;

	ck_assert_int_eq(natsMsgHeader_Get(m, "X-Claw-Reason", &reason), NATS_OK);
	ck_assert_str_eq(reason, "shed");
	ck_assert_int_eq(f->reason, CLAWRELAY__V1__FAILURE_REASON__FAIL_SHED);
	ck_assert_str_eq(f->recipient, "dave");
	(*n)++;
}


START_TEST(lanes_then_shedding)
{
	static const char *const env[] = { "CLAWRELAY_QUEUE_MAX=1000", NULL };
	char hook[400], url[128], body[64];
	int i, n;

	start("lanes", env);
	h_agent(&st, "alice", NULL);
	h_agent(&st, "bob", NULL);
	h_agent(&st, "dave", NULL);
	h_trust(&st, "alice", "bob");
	h_trust(&st, "alice", "dave");

	/* bob offline: 300 low, 300 normal, 30 critical, interleaved */
	for (i = 0; i < 630; i++) {
		const char *p = i % 21 == 0 ? "critical" : i % 2 ? "low" : "normal";
		snprintf(body, sizeof(body), "%s-%d", p, i);
		ck_assert_int_eq(post("alice", "bob", body, p, NULL, NULL, NULL, NULL), 202);
	}
	int port = it_hook(&st, "hook-bob", hook, sizeof(hook), NULL);
	snprintf(url, sizeof(url), "http://127.0.0.1:%d/hook", port);
	it_connector(&st, "bob", url);
	ck_assert_int_eq(h_wait_lines(hook, 630, 120000), 630);
	h_sleep_ms(1000);
	cJSON **v = it_lines(hook, &n);
	ck_assert_int_eq(n, 630);
	int crit = 0, norm = 0, low = 0;
	for (i = 0; i < n; i++) {
		const char *p = cJSON_GetObjectItem(v[i], "priority")->valuestring;
		if (i < 30)
			ck_assert_msg(strcmp(p, "critical") == 0, "line %d is %s, not critical", i, p);
		else if (i < 330)
			ck_assert_msg(strcmp(p, "normal") == 0, "line %d is %s, not normal", i, p);
		else
			ck_assert_msg(strcmp(p, "low") == 0, "line %d is %s, not low", i, p);
		crit += strcmp(p, "critical") == 0;
		norm += strcmp(p, "normal") == 0;
		low += strcmp(p, "low") == 0;
	}
	ck_assert_int_eq(crit, 30);
	ck_assert_int_eq(norm, 300);
	ck_assert_int_eq(low, 300);
	it_lines_free(v, n);

	/* dave offline, QUEUE_MAX 1000, high-water 90 %: 900 low fit */
	natsConnection *nc = nats_open();
	natsSubscription *sub = nats_sub(nc, "clawrelay.notify.failure.alice");
	for (i = 0; i < 900; i++) {
		snprintf(body, sizeof(body), "low-%d", i);
		ck_assert_int_eq(post("alice", "dave", body, "low", NULL, NULL, NULL, NULL), 202);
	}
	struct h_resp r;
	ck_assert_int_eq(post("alice", "dave", "low-over", "low", NULL, NULL, NULL, &r), 507);
	ck_assert_ptr_nonnull(h_header(&r, "Retry-After"));
	h_resp_free(&r);
	/* normal and critical are still accepted: each sheds the oldest low */
	for (i = 0; i < 20; i++)
		ck_assert_int_eq(post("alice", "dave", "normal", "normal", NULL, NULL, NULL, NULL), 202);
	for (i = 0; i < 10; i++)
		ck_assert_int_eq(post("alice", "dave", "critical", "critical", NULL, NULL, NULL,
		    NULL), 202);
	int shed = 0;
	ck_assert_int_eq(nats_count(sub, 30, 30000, 1500, count_shed, &shed), 30);
	ck_assert_int_eq(shed, 30);
	natsSubscription_Destroy(sub);
	natsConnection_Destroy(nc);

	/* dave connects: 870 low (the 30 oldest were shed), 20 normal, 10 critical */
	port = it_hook(&st, "hook-dave", hook, sizeof(hook), NULL);
	snprintf(url, sizeof(url), "http://127.0.0.1:%d/hook", port);
	struct h_proc *cd = it_connector(&st, "dave", url);
	ck_assert_int_eq(h_wait_log(cd, "queued_critical=10 queued_normal=20 queued_low=870", 60000), 0);
	ck_assert_int_eq(h_wait_log(cd, "shed=30", 1000), 0);
	ck_assert_int_eq(h_wait_lines(hook, 900, 120000), 900);
	h_sleep_ms(1000);
	v = it_lines(hook, &n);
	ck_assert_int_eq(n, 900);
	{
		static char seen[900];
		int lows = 0;

		memset(seen, 0, sizeof(seen));
		for (i = 0; i < n; i++) {
			const char *b = cJSON_GetObjectItem(v[i], "body")->valuestring;
			if (strncmp(b, "low-", 4) != 0)
				continue;
			int k = atoi(b + 4);
			ck_assert_msg(!seen[k], "%s delivered twice", b);
			seen[k] = 1;
			lows++;
		}
		ck_assert_int_eq(lows, 870);	/* the 30 shed ones never arrive */
	}
	it_lines_free(v, n);
}
END_TEST

/* ---- expiry ------------------------------------------------------------ */

static void
count_expired(void *arg, const Failure *f, natsMsg *m)
{
	int *n = arg;

	ck_assert_int_eq(f->reason, CLAWRELAY__V1__FAILURE_REASON__FAIL_EXPIRED);
	ck_assert_str_eq(f->recipient, "bob");
	(*n)++;
}

START_TEST(expiry_notices)
{
	char hook[400], url[128], corr[64];
	int i, expired = 0;

	start("expiry", NULL);
	h_agent(&st, "alice", NULL);
	h_agent(&st, "bob", NULL);
	h_trust(&st, "alice", "bob");
	natsConnection *nc = nats_open();
	natsSubscription *sub = nats_sub(nc, "clawrelay.notify.failure.alice");
	for (i = 0; i < 5; i++) {
		snprintf(corr, sizeof(corr), "exp-%d", i);
		ck_assert_int_eq(post("alice", "bob", "short-lived", NULL, "1", corr, NULL, NULL), 202);
	}
	/* each expires once: exactly five notices, none twice */
	ck_assert_int_eq(nats_count(sub, 5, 30000, 2000, count_expired, &expired), 5);
	ck_assert_int_eq(expired, 5);
	natsSubscription_Destroy(sub);
	natsConnection_Destroy(nc);

	/* relay-session counts them by reason */
	{
		struct h_resp mr;
		char mu[128];
		snprintf(mu, sizeof(mu), "http://127.0.0.1:%d/metrics", h_find(&st, "relay-session")->port);
		ck_assert_int_eq(h_http("GET", mu, NULL, NULL, 0, &mr), 0);
		ck_assert_msg(strstr(mr.body.data,
		    "clawrelay_session_messages_failed_total{reason=\"expired\"} 5") != NULL,
		    "no expired count of 5 in relay-session's /metrics");
		h_resp_free(&mr);
	}
	/* status says failed, with the reason */
	struct strbuf out;
	sb_init(&out);
	const char *args[] = { "status", "exp-3", NULL };
	ck_assert_int_eq(h_cli(&st, &out, args), 0);
	ck_assert_msg(out.data && strstr(out.data, "\"failed\"") && strstr(out.data, "expired"),
	    "status: %s", out.data ? out.data : "");
	sb_free(&out);

	/* bob comes back: told what expired while away, and gets none of it */
	int port = it_hook(&st, "hook-bob", hook, sizeof(hook), NULL);
	snprintf(url, sizeof(url), "http://127.0.0.1:%d/hook", port);
	struct h_proc *cb = it_connector(&st, "bob", url);
	ck_assert_int_eq(h_wait_log(cb, "queued_critical=0 queued_normal=0 queued_low=0", 30000), 0);
	ck_assert_int_eq(h_wait_log(cb, "expired=5", 1000), 0);
	ck_assert_int_eq(post("alice", "bob", "after", NULL, NULL, NULL, NULL, NULL), 202);
	ck_assert_int_eq(h_wait_lines(hook, 1, 30000), 1);
	h_sleep_ms(500);
	ck_assert_int_eq(h_file_lines(hook), 1);
}
END_TEST

/* ---- delayed ------------------------------------------------------------ */

/* the notice's correlation ID into arg (char[64]) */
static void
keep_corr(void *arg, const Failure *f, natsMsg *m)
{
	snprintf(arg, 64, "%s", f->correlation_id ? f->correlation_id : "");
}

START_TEST(delayed_notice)
{
	static const char *const env[] = { "CLAWRELAY_DELAY_WARN_S=2", NULL };
	char hook[400], url[128];

	start("delayed", env);
	h_agent(&st, "alice", NULL);
	h_agent(&st, "bob", NULL);
	h_agent(&st, "carol", NULL);
	h_trust(&st, "alice", "bob");
	h_trust(&st, "alice", "carol");
	int port = it_hook(&st, "hook-carol", hook, sizeof(hook), NULL);
	snprintf(url, sizeof(url), "http://127.0.0.1:%d/hook", port);
	it_connector(&st, "carol", url);

	natsConnection *nc = nats_open();
	natsSubscription *sub = nats_sub(nc, "clawrelay.notify.delayed.>");
	/* what relay-session publishes to the notifier (which also drops repeats) */
	natsSubscription *raw = nats_sub(nc, "clawrelay.delayed.>");
	/* bob is offline: two of these wait; carol's is delivered at once */
	ck_assert_int_eq(post("alice", "bob", "waits-1", NULL, NULL, "delay-1", NULL, NULL), 202);
	ck_assert_int_eq(post("alice", "bob", "waits-2", NULL, NULL, "delay-2", NULL, NULL), 202);
	ck_assert_int_eq(post("alice", "carol", "quick", NULL, NULL, "quick-1", NULL, NULL), 202);
	ck_assert_int_eq(h_wait_lines(hook, 1, 20000), 1);
	/* exactly one notice per waiting message, none for carol's */
	ck_assert_int_eq(nats_count(sub, 2, 20000, 4000, NULL, NULL), 2);
	ck_assert_int_eq(nats_count(raw, 2, 5000, 1000, NULL, NULL), 2);

	/* relay-session restarts (same data): the two still waiting are not
	 * warned again; a third one is, once */
	{
		char data[400];
		const char *renv[] = { data, "CLAWRELAY_DELAY_WARN_S=2", NULL };
		struct h_proc *rs = h_find(&st, "relay-session");

		snprintf(data, sizeof(data), "CLAWRELAY_DATA_DIR=%s/relay-session", st.dir);
		h_kill(rs, SIGTERM);
		rs = h_spawn(&st, "relay-session-2", "clawrelay-relay-session", h_free_port(), renv,
		    NULL);
		ck_assert_msg(h_wait_log(rs, "serving", 30000) == 0,
		    "relay-session did not serve its partitions again");
	}
	long s3 = 0;
	for (int i = 0; i < 100 && (s3 = post("alice", "bob", "waits-3", NULL, NULL, "delay-3",
	    NULL, NULL)) != 202; i++)
		h_sleep_ms(100);
	ck_assert_int_eq(s3, 202);
	char cid[64] = "";
	ck_assert_int_eq(nats_count(sub, 1, 20000, 5000, keep_corr, cid), 1);
	ck_assert_str_eq(cid, "delay-3");
	cid[0] = '\0';
	ck_assert_int_eq(nats_count(raw, 1, 5000, 1000, keep_corr, cid), 1);
	ck_assert_str_eq(cid, "delay-3");
	natsSubscription_Destroy(raw);
	natsSubscription_Destroy(sub);
	natsConnection_Destroy(nc);
}
END_TEST

/* ---- limits and idempotency --------------------------------------------- */

START_TEST(limits_and_idempotency)
{
	/* the pair: 6 a minute, burst 5 (no refill during the test); the
	 * sender at the gateway: burst 30 */
	static const char *const env[] = { "CLAWRELAY_PAIR_RATE_PER_MIN=6",
		"CLAWRELAY_PAIR_BURST=5", "CLAWRELAY_SENDER_RATE_PER_MIN=6",
		"CLAWRELAY_SENDER_BURST=30", NULL };
	struct h_resp r;
	int i, ok = 0, limited = 0;

	start("limits", env);
	h_agent(&st, "alice", NULL);
	h_agent(&st, "bob", NULL);
	h_agent(&st, "carol", NULL);
	h_agent(&st, "erin", NULL);
	h_agent(&st, "frank", NULL);
	h_trust(&st, "alice", "bob");
	h_trust(&st, "erin", "bob");
	{
		const char *a1[] = { "trust", "add", "alice", "carol", "--rate-per-min", "6000",
			"--burst", "20", "--queue-max", "12", NULL };
		const char *a2[] = { "trust", "add", "frank", "bob", "--rate-per-min", "100000",
			"--burst", "1000", NULL };
		ck_assert_int_eq(h_cli(&st, NULL, a1), 0);
		ck_assert_int_eq(h_cli(&st, NULL, a2), 0);
	}
	/* the pair's bucket: 5 at once, then 429 with Retry-After */
	for (i = 0; i < 8; i++) {
		long s = post("alice", "bob", "x", NULL, NULL, NULL, NULL, &r);
		if (s == 202) {
			ok++;
		} else {
			ck_assert_int_eq(s, 429);
			const char *ra = h_header(&r, "Retry-After");
			ck_assert_ptr_nonnull(ra);
			ck_assert_int_ge(atoi(ra), 1);
			ck_assert_int_le(atoi(ra), 11);
			ck_assert_ptr_nonnull(strstr(r.body.data, "this recipient"));
			limited++;
		}
		h_resp_free(&r);
	}
	ck_assert_int_eq(ok, 5);
	ck_assert_int_eq(limited, 3);
	/* another sender to the same recipient has its own bucket */
	ck_assert_int_eq(post("erin", "bob", "y", NULL, NULL, NULL, NULL, NULL), 202);
	/* alice -> carol: the trust pair's override (burst 20, queue max 12):
	 * carol is offline, so the pair's queue cap comes first */
	ok = 0;
	int full = 0;
	for (i = 0; i < 15; i++) {
		long s = post("alice", "carol", "z", NULL, NULL, NULL, NULL, &r);
		if (s == 202)
			ok++;
		else if (s == 507 && h_header(&r, "Retry-After") != NULL)
			full++;
		h_resp_free(&r);
	}
	ck_assert_int_eq(ok, 12);
	ck_assert_int_eq(full, 3);

	/* idempotency: same key and body -> 200 with the first IDs; another body -> 409 */
	struct h_resp r1, r2;
	ck_assert_int_eq(post("erin", "bob", "once", NULL, NULL, "idem-c", "key-1", &r1), 202);
	ck_assert_int_eq(post("erin", "bob", "once", NULL, NULL, "idem-c2", "key-1", &r2), 200);
	cJSON *j1 = cJSON_Parse(r1.body.data), *j2 = cJSON_Parse(r2.body.data);
	ck_assert_ptr_nonnull(j1);
	ck_assert_ptr_nonnull(j2);
	ck_assert_str_eq(cJSON_GetObjectItem(j1, "messageId")->valuestring,
	    cJSON_GetObjectItem(j2, "messageId")->valuestring);
	cJSON_Delete(j1);
	cJSON_Delete(j2);
	h_resp_free(&r1);
	h_resp_free(&r2);
	ck_assert_int_eq(post("erin", "bob", "other", NULL, NULL, NULL, "key-1", NULL), 409);

	/* the per-sender limit at the gateway: frank's pair allows 1000 at
	 * once, his 30-token sender bucket does not */
	ok = limited = 0;
	for (i = 0; i < 35; i++) {
		long s = post("frank", "bob", "flood", NULL, NULL, NULL, NULL, &r);
		if (s == 202)
			ok++;
		else if (s == 429 && strstr(r.body.data, "through this gateway") &&
		    h_header(&r, "Retry-After") != NULL)
			limited++;
		h_resp_free(&r);
	}
	ck_assert_int_eq(ok, 30);
	ck_assert_int_eq(limited, 5);
}
END_TEST

/* ---- fail fast ------------------------------------------------------------ */

START_TEST(partition_breaker_fails_fast)
{
	static const char *const env[] = { "CLAWRELAY_SESSION_TIMEOUT_MS=300",
		"CLAWRELAY_BREAKER_CONSECUTIVE=3", "CLAWRELAY_BREAKER_OPEN_MS=1500",
		"CLAWRELAY_PARTITIONS=1", NULL };
	struct h_resp r;
	int i;

	start("failfast", env);
	h_agent(&st, "alice", NULL);
	h_agent(&st, "bob", NULL);
	h_trust(&st, "alice", "bob");
	ck_assert_int_eq(post("alice", "bob", "before", NULL, NULL, NULL, NULL, NULL), 202);

	natsConnection *nc = nats_open();
	natsSubscription *sub = nats_sub(nc, "clawrelay.breaker.gateway");
	struct h_proc *rs = h_find(&st, "relay-session");
	ck_assert_ptr_nonnull(rs);
	kill(rs->pid, SIGSTOP);
	/* three timeouts open the partition's breaker ... */
	for (i = 0; i < 3; i++)
		ck_assert_int_eq(post("alice", "bob", "lost?", NULL, NULL, NULL, NULL, NULL), 503);
	/* ... then the answer is immediate, with Retry-After */
	for (i = 0; i < 5; i++) {
		uint64_t t0 = mono_ms();
		ck_assert_int_eq(post("alice", "bob", "fast", NULL, NULL, NULL, NULL, &r), 503);
		ck_assert_msg(mono_ms() - t0 < 250, "503 took %llu ms",
		    (unsigned long long)(mono_ms() - t0));
		ck_assert_ptr_nonnull(h_header(&r, "Retry-After"));
		ck_assert_ptr_nonnull(strstr(r.body.data, "session_unavailable"));
		h_resp_free(&r);
	}
	/* the event, and the status page */
	natsMsg *m = NULL;
	ck_assert_int_eq(natsSubscription_NextMsg(&m, sub, 5000), NATS_OK);
	cJSON *ev = cJSON_ParseWithLength(natsMsg_GetData(m), (size_t)natsMsg_GetDataLength(m));
	ck_assert_ptr_nonnull(ev);
	ck_assert_str_eq(cJSON_GetObjectItem(ev, "boundary")->valuestring, "partition");
	ck_assert_str_eq(cJSON_GetObjectItem(ev, "state")->valuestring, "open");
	ck_assert_str_eq(cJSON_GetObjectItem(ev, "name")->valuestring, "0");
	ck_assert_int_gt(cJSON_GetObjectItem(ev, "next_probe_ms")->valuedouble, 0);
	cJSON_Delete(ev);
	natsMsg_Destroy(m);
	char url[128];
	snprintf(url, sizeof(url), "%s/v1/status", st.gw_url);
	ck_assert_int_eq(h_http("GET", url, NULL, NULL, 0, &r), 0);
	ck_assert_ptr_nonnull(strstr(r.body.data, "\"boundary\":\"partition\""));
	ck_assert_ptr_nonnull(strstr(r.body.data, "\"state\":\"open\""));
	h_resp_free(&r);
	snprintf(url, sizeof(url), "%s/metrics", st.gw_url);
	ck_assert_int_eq(h_http("GET", url, NULL, NULL, 0, &r), 0);
	ck_assert_ptr_nonnull(strstr(r.body.data,
	    "clawrelay_breakers{service=\"gateway\",boundary=\"partition\",state=\"open\"} 1"));
	h_resp_free(&r);

	/* relay-session wakes: after the open time one probe closes it */
	kill(rs->pid, SIGCONT);
	int ok = 0;
	for (i = 0; i < 100 && !ok; i++) {
		ok = post("alice", "bob", "after", NULL, NULL, NULL, NULL, NULL) == 202;
		if (!ok)
			h_sleep_ms(200);
	}
	ck_assert_msg(ok, "messages never flowed again");
	natsSubscription_Destroy(sub);
	natsConnection_Destroy(nc);
}
END_TEST

/* ---- destination and delivery breakers -------------------------------- */

/* wait for a breaker event of (boundary, name, state) on sub; 0 if seen */
static int
wait_event(natsSubscription *sub, const char *boundary, const char *name, const char *state,
    int timeout_ms)
{
	uint64_t end = mono_ms() + (uint64_t)timeout_ms;

	while (mono_ms() < end) {
		natsMsg *m = NULL;
		int hit = 0;

		if (natsSubscription_NextMsg(&m, sub, (int)(end - mono_ms())) != NATS_OK)
			break;
		cJSON *ev = cJSON_ParseWithLength(natsMsg_GetData(m), (size_t)natsMsg_GetDataLength(m));
		if (ev != NULL) {
			hit = strcmp(cJSON_GetObjectItem(ev, "boundary")->valuestring, boundary) == 0 &&
			    strcmp(cJSON_GetObjectItem(ev, "name")->valuestring, name) == 0 &&
			    strcmp(cJSON_GetObjectItem(ev, "state")->valuestring, state) == 0;
			cJSON_Delete(ev);
		}
		natsMsg_Destroy(m);
		if (hit)
			return 0;
	}
	return -1;
}

START_TEST(destination_and_delivery_breakers)
{
	static const char *const env[] = { "CLAWRELAY_BREAKER_CONSECUTIVE=3",
		"CLAWRELAY_BREAKER_OPEN_MS=2000", "CLAWRELAY_BREAKER_OPEN_MAX_MS=2000",
		"CLAWRELAY_BACKOFF_BASE_MS=50", "CLAWRELAY_BACKOFF_MAX_MS=100",
		"CLAWRELAY_DISPATCH_TIMEOUT_MS=500", "CLAWRELAY_SOCKET_TIMEOUT_MS=400", NULL };
	static const char *const fail[] = { "--status", "500", NULL };
	char bad[400], good[400], url[128], body[32];
	struct h_resp r;
	int i;

	start("breakers", env);
	int port = it_hook(&st, "hook-down", bad, sizeof(bad), fail);
	snprintf(url, sizeof(url), "http://127.0.0.1:%d/hook", port);
	h_agent(&st, "alice", NULL);
	h_agent(&st, "web", url);
	h_trust(&st, "alice", "web");
	natsConnection *nc = nats_open();
	natsSubscription *dsub = nats_sub(nc, "clawrelay.breaker.delivery");
	natsSubscription *ssub = nats_sub(nc, "clawrelay.breaker.relay-session");

	/* the webhook answers 500: its breaker opens, relay-session holds it */
	for (i = 0; i < 20; i++) {
		snprintf(body, sizeof(body), "seq=%d", i);
		ck_assert_int_eq(post("alice", "web", body, NULL, NULL, NULL, NULL, NULL), 202);
	}
	ck_assert_msg(wait_event(dsub, "destination", "web", "open", 20000) == 0,
	    "no destination breaker event for web");
	char su[128];
	h_sleep_ms(300);
	struct h_proc *dl = h_find(&st, "delivery");
	snprintf(su, sizeof(su), "http://127.0.0.1:%d/v1/status", dl->port);
	ck_assert_int_eq(h_http("GET", su, NULL, NULL, 0, &r), 0);
	ck_assert_ptr_nonnull(strstr(r.body.data, "\"boundary\":\"destination\",\"name\":\"web\""));
	h_resp_free(&r);
	/* while open the webhook is probed, not hammered: over 4 s (two open
	 * times of 2 s) a few calls at most */
	int before = h_file_lines(bad);
	h_sleep_ms(4000);
	int during = h_file_lines(bad) - before;
	ck_assert_msg(during <= 6, "%d webhook calls in 4 s while the breaker was open", during);

	/* the webhook recovers on the same port: one probe closes the breaker
	 * and all 20 arrive once */
	h_kill(h_find(&st, "hook-down"), SIGTERM);
	it_hook_at(&st, "hook-up", port, good, sizeof(good), NULL);
	ck_assert_msg(wait_event(dsub, "destination", "web", "closed", 20000) == 0,
	    "the destination breaker never closed");
	ck_assert_int_eq(h_wait_lines(good, 20, 30000), 20);
	h_sleep_ms(1000);
	int n;
	cJSON **v = it_lines(good, &n);
	ck_assert_int_eq(n, 20);
	{
		int seen[20] = { 0 };
		for (i = 0; i < n; i++) {
			int k = atoi(cJSON_GetObjectItem(v[i], "body")->valuestring + 4);
			ck_assert(k >= 0 && k < 20);
			ck_assert_msg(!seen[k], "seq %d twice", k);
			seen[k] = 1;
		}
	}
	it_lines_free(v, n);

	/* delivery freezes: relay-session's breaker to it opens, and closes
	 * again once delivery answers; nothing is lost */
	kill(dl->pid, SIGSTOP);
	for (i = 20; i < 30; i++) {
		snprintf(body, sizeof(body), "seq=%d", i);
		ck_assert_int_eq(post("alice", "web", body, NULL, NULL, NULL, NULL, NULL), 202);
	}
	ck_assert_msg(wait_event(ssub, "delivery", "", "open", 20000) == 0,
	    "relay-session's breaker to delivery never opened");
	kill(dl->pid, SIGCONT);
	ck_assert_msg(wait_event(ssub, "delivery", "", "closed", 20000) == 0,
	    "relay-session's breaker to delivery never closed");
	/* nothing lost: seq 20..29 all arrive. A webhook is at least once: an
	 * attempt that was in delivery's hands when it froze can be made after
	 * it wakes as well as retried by relay-session (a connector's inbox
	 * would drop the copy; a webhook cannot), so a copy is allowed here */
	ck_assert_int_ge(h_wait_lines(good, 30, 30000), 30);
	h_sleep_ms(1000);
	v = it_lines(good, &n);
	{
		int seen[30] = { 0 }, distinct = 0;
		for (i = 0; i < n; i++) {
			int k = atoi(cJSON_GetObjectItem(v[i], "body")->valuestring + 4);
			ck_assert(k >= 0 && k < 30);
			distinct += !seen[k];
			seen[k] = 1;
		}
		ck_assert_int_eq(distinct, 30);
		ck_assert_msg(n <= 32, "%d webhook calls for 30 messages", n);
	}
	it_lines_free(v, n);
	natsSubscription_Destroy(dsub);
	natsSubscription_Destroy(ssub);
	natsConnection_Destroy(nc);
}
END_TEST

int
main(void)
{
	Suite *s = suite_create("resilience");
	struct { const char *name; const TTest *t; int timeout; } cases[] = {
		{ "lanes and shedding", lanes_then_shedding, 300 },
		{ "expiry", expiry_notices, 120 },
		{ "delayed", delayed_notice, 120 },
		{ "limits", limits_and_idempotency, 120 },
		{ "fail fast", partition_breaker_fails_fast, 120 },
		{ "breakers", destination_and_delivery_breakers, 180 },
	};

	for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
		TCase *tc = tcase_create(cases[i].name);
		tcase_set_timeout(tc, cases[i].timeout);
		tcase_add_unchecked_fixture(tc, NULL, teardown);
		tcase_add_test(tc, cases[i].t);
		suite_add_tcase(s, tc);
	}
	return it_run(s);
}
