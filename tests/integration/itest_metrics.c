/*
 * itest_metrics.c - what the metrics say about known traffic, and the
 * dashboard that shows it.
 *
 *  1. counts: N messages delivered to a connector agent, K to a webhook
 *     agent whose hook answers after 300 ms, M refused by a webhook (400:
 *     rejected), Q queued for an agent that is offline, A requests with a
 *     bad proof: the collector's summary says in = N+K+M+Q, out = N+K,
 *     failed = M (rejected), queue depth Q, auth failures A, two connectors;
 *     its pairs say alice->bob delivered N and alice->refuser failed M; the
 *     e2e latency histogram holds the N fast ones under 250 ms and the K
 *     slow ones (300 ms hook) between 250 ms and 1 s, so p95 and p99 lie in
 *     250 ms..1 s (the stated tolerance: the estimate's bucket; the quantile
 *     arithmetic itself is unit-tested in test_metrics on a known uniform
 *     distribution, within 25 %); each service's /metrics agrees and keeps
 *     every family's lines together.
 *  2. the collector is killed (SIGKILL) right after a burst, messages flow
 *     while it is away, then it starts again on the same store: the totals
 *     are exact (history kept, nothing lost, nothing counted twice, also a
 *     few seconds later), and the trace of a message sent while it was away
 *     has every hop.
 *  3. the dashboard in headless Chromium shows the numbers of the JSON API;
 *     screenshots of it and of a trace view go to build/artifacts/
 *     (CLAWRELAY_ARTIFACTS), and the trace view shows the edge's trace ID.
 */
#include <fcntl.h>
#include <math.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "it_common.h"

#define N_BOB 20
#define K_SLOW 10
#define M_REFUSED 5
#define Q_OFFLINE 4
#define A_BADAUTH 3
#define D_DOWN 15
#define TRACEPARENT_ID "4bf92f3577b34da6a3ce929d0e0e4736"

static struct h_stack st;
static char hook_b[400], hook_s[400], hook_r[400];
static struct h_proc *conn_a, *conn_b;
static int mc_port;
static char mc_url[64];
static char down_corr[64];

static void
trust(const char *from, const char *to)
{
	const char *args[] = { "trust", "add", from, to, "--rate-per-min", "100000", "--burst", "10000",
		NULL };
	ck_assert_int_eq(h_cli(&st, NULL, args), 0);
}

static void
setup(void)
{
	char url_b[128], url_s[128], url_r[128];
	const char *slow[] = { "--delay-ms", "300", NULL }, *refuse[] = { "--status", "400", NULL };

	h_stack_init(&st, "metrics");
	h_nats_start(&st);
	h_start_services(&st, NULL);
	mc_port = h_find(&st, "metrics-collector")->port;
	snprintf(mc_url, sizeof(mc_url), "http://127.0.0.1:%d", mc_port);
	snprintf(url_b, sizeof(url_b), "http://127.0.0.1:%d/hook",
	    it_hook(&st, "hook-bob", hook_b, sizeof(hook_b), NULL));
	snprintf(url_s, sizeof(url_s), "http://127.0.0.1:%d/slow",
	    it_hook(&st, "hook-slow", hook_s, sizeof(hook_s), slow));
	snprintf(url_r, sizeof(url_r), "http://127.0.0.1:%d/refuse",
	    it_hook(&st, "hook-refuser", hook_r, sizeof(hook_r), refuse));
	h_agent(&st, "alice", NULL);
	h_agent(&st, "bob", NULL);
	h_agent(&st, "slow", url_s);
	h_agent(&st, "refuser", url_r);
	h_agent(&st, "dave", NULL);	/* never connects: his messages stay queued */
	trust("alice", "bob");
	trust("alice", "slow");
	trust("alice", "refuser");
	trust("alice", "dave");
	conn_a = it_connector(&st, "alice", "http://127.0.0.1:9/unused");
	conn_b = it_connector(&st, "bob", url_b);
	ck_assert_msg(h_wait_log(conn_a, "reconnect_ack", 20000) == 0, "connector A never connected");
	ck_assert_msg(h_wait_log(conn_b, "reconnect_ack", 20000) == 0, "connector B never connected");
}

static void
teardown(void)
{
	h_stop_all(&st);
}

/* GET url into a parsed JSON object (caller deletes), NULL on failure */
static cJSON *
get_json(const char *url)
{
	struct h_resp r;
	cJSON *j = NULL;

	if (h_http("GET", url, NULL, NULL, 0, &r) == 0 && r.status == 200)
		j = cJSON_Parse(r.body.data);
	h_resp_free(&r);
	return j;
}


/* poll the summary until every (path, value) holds; the last summary in *out */
static int
wait_summary(const char *const *paths, const double *want, int n, int timeout_ms, cJSON **out)
{
	char url[128];
	cJSON *j = NULL;

	snprintf(url, sizeof(url), "%s/v1/metrics/summary?window=3600", mc_url);
	for (int t = 0; t <= timeout_ms; t += 250) {
		int ok = 1;
		cJSON_Delete(j);
		j = get_json(url);
		for (int i = 0; j != NULL && i < n; i++)
			ok &= it_jnum(j, paths[i]) == want[i];
		if (j != NULL && ok) {
			*out = j;
			return 0;
		}
		h_sleep_ms(250);
	}
	if (j != NULL) {
		char *txt = cJSON_Print(j);
		fprintf(stderr, "last summary: %s\n", txt);
		free(txt);
		for (int i = 0; i < n; i++)
			fprintf(stderr, "  %s = %g (want %g)\n", paths[i], it_jnum(j, paths[i]), want[i]);
	}
	*out = j;
	return -1;
}

/* POST to alice's connector for `to` with correlation ID corr */
static void
send_via_connector(const char *to, const char *corr, const char *traceparent)
{
	char url[256], h_corr[160], h_tp[128];
	struct h_resp r;
	const char *hdrs[3] = { h_corr, NULL, NULL };

	snprintf(url, sizeof(url), "http://127.0.0.1:%d/v1/outbound/%s", conn_a->port, to);
	snprintf(h_corr, sizeof(h_corr), "X-Claw-Correlation-Id: %s", corr);
	if (traceparent != NULL) {
		snprintf(h_tp, sizeof(h_tp), "traceparent: %s", traceparent);
		hdrs[1] = h_tp;
	}
	ck_assert_int_eq(h_http("POST", url, hdrs, "{\"n\":1}", 7, &r), 0);
	ck_assert_msg(r.status == 202, "outbound answered %ld: %s", r.status, r.body.data);
	h_resp_free(&r);
}

static void
send_signed(const char *to, const char *corr)
{
	char h_corr[160];
	const char *extra[] = { h_corr, NULL };
	struct h_resp r;

	snprintf(h_corr, sizeof(h_corr), "X-Claw-Correlation-Id: %s", corr);
	ck_assert_int_eq(h_send(&st, "alice", to, "payload", 7, extra, &r), 0);
	ck_assert_msg(r.status == 202, "gateway answered %ld: %s", r.status, r.body.data);
	h_resp_free(&r);
}

/* the sum of a metric's samples in a service's /metrics text; also checks
 * that the family's lines are together and its HELP appears once */
static double
prom_sum(const char *svc, const char *name, const char *must_contain)
{
	char url[128], pat[160], fam[128];
	struct h_resp r;
	double sum = 0;
	int runs = 0, in_run = 0;
	size_t fl;

	/* a histogram's _count, _sum, _bucket belong to its family */
	snprintf(fam, sizeof(fam), "%s", name);
	fl = strlen(fam);
	if (fl > 6 && strcmp(fam + fl - 6, "_count") == 0)
		fam[fl - 6] = '\0';
	fl = strlen(fam);
	snprintf(url, sizeof(url), "http://127.0.0.1:%d/metrics", h_find(&st, svc)->port);
	ck_assert_int_eq(h_http("GET", url, NULL, NULL, 0, &r), 0);
	snprintf(pat, sizeof(pat), "# HELP %s ", fam);
	ck_assert_msg(strstr(r.body.data, pat) != NULL, "%s has no %s", svc, name);
	ck_assert_msg(strstr(strstr(r.body.data, pat) + 1, pat) == NULL, "%s: HELP of %s twice", svc, name);
	for (char *l = r.body.data, *e; l && *l; l = e ? e + 1 : NULL) {
		size_t nl = strlen(name);
		e = strchr(l, '\n');
		int mine = strncmp(l, name, nl) == 0 && (l[nl] == '{' || l[nl] == ' ');
		int family = strncmp(l, fam, fl) == 0 && (l[fl] == '{' || l[fl] == ' ' || l[fl] == '_');
		if (mine && (must_contain == NULL || (e ? memmem(l, (size_t)(e - l), must_contain,
		    strlen(must_contain)) : strstr(l, must_contain)) != NULL)) {
			const char *sp = memrchr(l, ' ', e ? (size_t)(e - l) : strlen(l));
			if (sp != NULL)
				sum += strtod(sp + 1, NULL);
		}
		if (family && !in_run)
			runs++;
		in_run = family;
	}
	ck_assert_msg(runs == 1, "%s: the lines of %s are not together (%d runs)", svc, name, runs);
	h_resp_free(&r);
	return sum;
}

START_TEST(counts_match_traffic)
{
	char corr[64];
	struct h_resp r;
	cJSON *s = NULL, *p;

	for (int i = 0; i < N_BOB; i++) {
		snprintf(corr, sizeof(corr), "m-bob-%d", i);
		send_via_connector("bob", corr, i == 0 ?
		    "00-" TRACEPARENT_ID "-00f067aa0ba902b7-01" : NULL);
	}
	/* one at a time: each one's latency is the hook's 300 ms plus the
	 * relay, never a wait behind the one before */
	for (int i = 0; i < K_SLOW; i++) {
		snprintf(corr, sizeof(corr), "m-slow-%d", i);
		send_signed("slow", corr);
		ck_assert_int_eq(h_wait_lines(hook_s, i + 1, 10000), i + 1);
		h_sleep_ms(100);	/* its answer, after the hook wrote the line */
	}
	for (int i = 0; i < M_REFUSED; i++) {
		snprintf(corr, sizeof(corr), "m-refused-%d", i);
		send_signed("refuser", corr);
	}
	for (int i = 0; i < Q_OFFLINE; i++) {
		snprintf(corr, sizeof(corr), "m-dave-%d", i);
		send_signed("dave", corr);
	}
	for (int i = 0; i < A_BADAUTH; i++) {
		char url[256];
		const char *hdrs[] = { "X-Claw-Agent: alice", "X-Claw-Timestamp: 1", "X-Claw-Nonce: abcdefghijklmnop",
			"X-Claw-Body-SHA256: x", "X-Claw-Proof: x", NULL };
		snprintf(url, sizeof(url), "%s/v1/agents/bob/messages", st.gw_url);
		ck_assert_int_eq(h_http("POST", url, hdrs, "x", 1, &r), 0);
		ck_assert_int_eq(r.status, 401);
		h_resp_free(&r);
	}
	ck_assert_int_eq(h_wait_lines(hook_b, N_BOB, 30000), N_BOB);
	ck_assert_int_eq(h_wait_lines(hook_s, K_SLOW, 30000), K_SLOW);

	static const char *const paths[] = { "messages.in", "messages.out", "messages.failed",
		"messages.failedByReason.rejected", "queue.depth", "queue.normal", "authFailures.total",
		"connectors.connected", "connectors.known", "latency.count" };
	const double want[] = { N_BOB + K_SLOW + M_REFUSED + Q_OFFLINE, N_BOB + K_SLOW, M_REFUSED,
		M_REFUSED, Q_OFFLINE, Q_OFFLINE, A_BADAUTH, 2, 2, N_BOB + K_SLOW };
	ck_assert_msg(wait_summary(paths, want, 10, 30000, &s) == 0, "the summary never matched the traffic");
	ck_assert(it_jnum(s, "messages.successRate") ==
	    (double)(N_BOB + K_SLOW) / (N_BOB + K_SLOW + M_REFUSED) ||
	    fabs(it_jnum(s, "messages.successRate") - (double)(N_BOB + K_SLOW) / (N_BOB + K_SLOW + M_REFUSED)) < 1e-4);
	ck_assert_msg(it_jnum(s, "registry.lookups") > 0, "no registry lookups counted");
	cJSON_Delete(s);
	/* clawrelay metrics prints the same totals */
	{
		struct strbuf out;
		char want_line[160];
		const char *args[] = { "metrics", NULL };
		sb_init(&out);
		ck_assert_int_eq(h_cli(&st, &out, args), 0);
		snprintf(want_line, sizeof(want_line), "messages   in %d, delivered %d, failed %d (rejected %d)",
		    N_BOB + K_SLOW + M_REFUSED + Q_OFFLINE, N_BOB + K_SLOW, M_REFUSED, M_REFUSED);
		ck_assert_msg(strstr(out.data, want_line) != NULL, "clawrelay metrics said:\n%s", out.data);
		ck_assert_ptr_nonnull(strstr(out.data, "connectors 2 connected of 2"));
		sb_free(&out);
	}

	/* the slow agent's latency: a separate window is not available per
	 * agent, so check the histogram's upper part: K_SLOW messages took
	 * 300 ms + the relay; they are the slowest, so p95 and p99 lie in the
	 * 250-500 ms bucket (the estimate's tolerance is its bucket) */
	{
		char url[128];
		snprintf(url, sizeof(url), "%s/v1/metrics/latency?window=3600", mc_url);
		cJSON *l = get_json(url);
		ck_assert_ptr_nonnull(l);
		int fast = 0, slow = 0;
		cJSON *bounds = cJSON_GetObjectItem(l, "boundsMs"), *counts = cJSON_GetObjectItem(l, "counts");
		for (int i = 0; i < cJSON_GetArraySize(counts); i++) {
			double ub = i < cJSON_GetArraySize(bounds) ?
			    cJSON_GetArrayItem(bounds, i)->valuedouble : 1e18;
			int c = (int)cJSON_GetArrayItem(counts, i)->valuedouble;
			if (ub <= 250)
				fast += c;
			else if (ub <= 1000)
				slow += c;
		}
		ck_assert_msg(slow == K_SLOW && fast == N_BOB, "250 ms-1 s holds %d (want %d), "
		    "under 250 ms %d (want %d)", slow, K_SLOW, fast, N_BOB);
		/* K_SLOW of N_BOB + K_SLOW are the slowest: p95 and p99 fall among them */
		ck_assert_msg(it_jnum(l, "p99Ms") > 250 && it_jnum(l, "p99Ms") <= 1000, "p99 %g", it_jnum(l, "p99Ms"));
		ck_assert_msg(it_jnum(l, "p95Ms") > 250 && it_jnum(l, "p95Ms") <= 1000, "p95 %g", it_jnum(l, "p95Ms"));
		cJSON_Delete(l);
	}

	/* per peer pair per hour */
	{
		char url[128];
		int bob = -1, refused = -1;
		cJSON *e;
		snprintf(url, sizeof(url), "%s/v1/metrics/pairs?hours=1", mc_url);
		p = get_json(url);
		ck_assert_ptr_nonnull(p);
		cJSON_ArrayForEach(e, cJSON_GetObjectItem(p, "pairs")) {
			const char *to = cJSON_GetObjectItem(e, "recipient")->valuestring;
			if (strcmp(to, "bob") == 0)
				bob = (int)it_jnum(e, "delivered") + 1000 * (int)it_jnum(e, "failed");
			if (strcmp(to, "refuser") == 0)
				refused = (int)it_jnum(e, "failed") + 1000 * (int)it_jnum(e, "delivered");
		}
		ck_assert_int_eq(bob, N_BOB);
		ck_assert_int_eq(refused, M_REFUSED);
		cJSON_Delete(p);
	}
	/* failures: the latest notices name the reason */
	{
		char url[128];
		snprintf(url, sizeof(url), "%s/v1/metrics/failures", mc_url);
		cJSON *f = get_json(url);
		cJSON *first = cJSON_GetArrayItem(cJSON_GetObjectItem(f, "failures"), 0);
		ck_assert_int_eq(cJSON_GetArraySize(cJSON_GetObjectItem(f, "failures")), M_REFUSED);
		ck_assert_str_eq(cJSON_GetObjectItem(first, "reason")->valuestring, "rejected");
		ck_assert_str_eq(cJSON_GetObjectItem(first, "recipient")->valuestring, "refuser");
		cJSON_Delete(f);
	}
	/* each service's own /metrics */
	ck_assert_int_eq((int)prom_sum("metrics-collector", "clawrelay_e2e_latency_seconds_count", NULL),
	    N_BOB + K_SLOW);
	ck_assert_int_eq((int)prom_sum("gateway", "clawrelay_gateway_auth_failures_total", NULL), A_BADAUTH);
	ck_assert_int_eq((int)prom_sum("relay-session", "clawrelay_queue_messages", "lane=\"normal\""),
	    Q_OFFLINE);
	ck_assert(prom_sum("gateway", "clawrelay_registry_lookup_seconds_count", NULL) > 0);
	ck_assert(prom_sum("relay-session", "clawrelay_store_commit_seconds_count", NULL) > 0);
	ck_assert(prom_sum("relay-session", "clawrelay_nats_request_seconds_count", NULL) > 0);
}
END_TEST

START_TEST(collector_away_and_back)
{
	struct h_proc *mc = h_find(&st, "metrics-collector");
	char corr[64], data[400];
	const char *env[] = { data, NULL };
	cJSON *s = NULL;
	const int base_in = N_BOB + K_SLOW + M_REFUSED + Q_OFFLINE, base_out = N_BOB + K_SLOW;
	int before = h_file_lines(hook_b);

	/* a burst, and the collector dies in the middle of taking it in */
	for (int i = 0; i < 5; i++) {
		snprintf(corr, sizeof(corr), "m-burst-%d", i);
		send_via_connector("bob", corr, NULL);
	}
	h_kill(mc, SIGKILL);
	for (int i = 0; i < D_DOWN; i++) {
		snprintf(corr, sizeof(corr), "m-down-%d", i);
		send_via_connector("bob", corr, NULL);
	}
	snprintf(down_corr, sizeof(down_corr), "m-down-%d", D_DOWN - 1);
	ck_assert_int_eq(h_wait_lines(hook_b, before + 5 + D_DOWN, 30000), before + 5 + D_DOWN);
	h_sleep_ms(1500);	/* their last hops and stats are in the stream */

	snprintf(data, sizeof(data), "CLAWRELAY_DATA_DIR=%s/metrics-collector", st.dir);
	h_spawn(&st, "metrics-collector", "clawrelay-metrics-collector", mc_port, env, NULL);

	static const char *const paths[] = { "messages.in", "messages.out", "messages.failed",
		"latency.count", "authFailures.total" };
	const double want[] = { base_in + 5 + D_DOWN, base_out + 5 + D_DOWN, M_REFUSED,
		base_out + 5 + D_DOWN, A_BADAUTH };
	ck_assert_msg(wait_summary(paths, want, 5, 30000, &s) == 0,
	    "after the restart the totals are not exact");
	cJSON_Delete(s);
	/* nothing arrives twice later either */
	h_sleep_ms(3000);
	ck_assert_msg(wait_summary(paths, want, 5, 0, &s) == 0, "counted twice after catching up");
	cJSON_Delete(s);

	/* the trace of a message sent while the collector was away is whole */
	{
		char url[256];
		static const char *const hops[] = { "connector_sent", "gateway_accepted", "session_queued",
			"dispatched", "delivery_attempt", "socket_sent", "connector_stored", "hook_called",
			"hook_answered", "delivered" };
		snprintf(url, sizeof(url), "%s/v1/traces/%s", mc_url, down_corr);
		cJSON *t = get_json(url);
		ck_assert_ptr_nonnull(t);
		cJSON *arr = cJSON_GetObjectItem(t, "hops");
		/* every hop once (their order across processes is itest_e2e's business) */
		ck_assert_int_eq(cJSON_GetArraySize(arr), (int)(sizeof(hops) / sizeof(hops[0])));
		for (size_t i = 0; i < sizeof(hops) / sizeof(hops[0]); i++) {
			int seen = 0;
			cJSON *e;
			cJSON_ArrayForEach(e, arr)
				seen += strcmp(cJSON_GetObjectItem(e, "hop")->valuestring, hops[i]) == 0;
			ck_assert_msg(seen == 1, "hop %s appears %d times", hops[i], seen);
		}
		cJSON_Delete(t);
	}
}
END_TEST



START_TEST(dashboard_shows_the_api)
{
	const char *dir = getenv("CLAWRELAY_ARTIFACTS") ? getenv("CLAWRELAY_ARTIFACTS") : "build/artifacts";
	char url[256], turl[256], shot[512], tshot[512], got[256];
	struct strbuf dom;
	cJSON *s;
	static const char *const keys[] = { "messages.in", "messages.out", "messages.failed",
		"messages.successRate", "latency.p50Ms", "latency.p99Ms", "latency.count", "queue.depth",
		"connectors.connected", "connectors.known", "authFailures.total", "breakers.total" };

	snprintf(url, sizeof(url), "%s/?window=3600", mc_url);
	sb_init(&dom);
	{
		const char *args[] = { "--virtual-time-budget=8000", "--run-all-compositor-stages-before-draw",
			"--dump-dom", url, NULL };
		ck_assert_msg(it_chromium(&st, &dom, args) == 0, "chromium failed (is it installed? make deps)");
	}
	ck_assert_msg(strstr(dom.data, "data-loaded=\"1\"") != NULL, "the page never loaded its data");
	snprintf(got, sizeof(got), "%s/v1/metrics/summary?window=3600", mc_url);
	s = get_json(got);
	ck_assert_ptr_nonnull(s);
	it_assert_dom_numbers(dom.data, s, keys, sizeof(keys) / sizeof(keys[0]));
	/* the text shown, not only the attribute: the count of messages in */
	{
		char pat[96];
		snprintf(pat, sizeof(pat), "data-v=\"%d\">%d<", (int)it_jnum(s, "messages.in"),
		    (int)it_jnum(s, "messages.in"));
		ck_assert_msg(strstr(dom.data, pat) != NULL, "the page does not show %d messages in",
		    (int)it_jnum(s, "messages.in"));
	}
	/* the tables: failures (M_REFUSED) and connectors (2) */
	ck_assert_ptr_nonnull(strstr(dom.data, "id=\"failures\" data-rows=\"5\""));
	ck_assert_ptr_nonnull(strstr(dom.data, "id=\"connectors\" data-rows=\"2\""));
	cJSON_Delete(s);
	sb_free(&dom);

	/* the trace view: every hop of the first message, and the edge's trace ID */
	snprintf(turl, sizeof(turl), "%s/#trace=m-bob-0", mc_url);
	sb_init(&dom);
	{
		const char *args[] = { "--virtual-time-budget=8000", "--dump-dom", turl, NULL };
		ck_assert_int_eq(it_chromium(&st, &dom, args), 0);
	}
	ck_assert_msg(strstr(dom.data, "<code id=\"trace-traceid\">" TRACEPARENT_ID "</code>") != NULL,
	    "the trace view does not show the trace ID");
	ck_assert_ptr_nonnull(strstr(dom.data, "data-hop=\"hook_answered\""));
	ck_assert_ptr_nonnull(strstr(dom.data, "data-hop=\"gateway_accepted\""));
	sb_free(&dom);

	/* screenshots, kept as artifacts */
	mkdir("build", 0755);
	mkdir(dir, 0755);
	snprintf(shot, sizeof(shot), "--screenshot=%s/dashboard.png", dir);
	snprintf(tshot, sizeof(tshot), "--screenshot=%s/trace.png", dir);
	{
		const char *a1[] = { "--virtual-time-budget=8000", "--window-size=1400,1900", shot, url, NULL };
		const char *a2[] = { "--virtual-time-budget=8000", "--window-size=1400,520", tshot, turl, NULL };
		struct stat sb1, sb2;
		ck_assert_int_eq(it_chromium(&st, NULL, a1), 0);
		ck_assert_int_eq(it_chromium(&st, NULL, a2), 0);
		snprintf(shot, sizeof(shot), "%s/dashboard.png", dir);
		snprintf(tshot, sizeof(tshot), "%s/trace.png", dir);
		ck_assert(stat(shot, &sb1) == 0 && sb1.st_size > 10000);
		ck_assert(stat(tshot, &sb2) == 0 && sb2.st_size > 5000);
	}
}
END_TEST

int
main(void)
{
	Suite *s = suite_create("metrics");
	TCase *tc = tcase_create("metrics");
	tcase_set_timeout(tc, 240);
	tcase_add_unchecked_fixture(tc, setup, teardown);
	tcase_add_test(tc, counts_match_traffic);
	tcase_add_test(tc, collector_away_and_back);
	tcase_add_test(tc, dashboard_shows_the_api);
	suite_add_tcase(s, tc);
	return it_run(s);
}
