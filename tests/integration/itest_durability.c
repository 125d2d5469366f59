/*
 * itest_durability.c - 3. With B's connector stopped, send 1,000 messages;
 * kill -9 the relay-session; start it again; start B's connector: its
 * reconnect_ack reports 1,000 queued, and B's hook receives all 1,000, each
 * exactly once, in order per priority lane.
 */
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "it_common.h"

#define N 1000

static struct h_stack st;

static void
setup(void)
{
	h_stack_init(&st, "durability");
	h_nats_start(&st);
	/* order within a lane holds while no attempt is retried; on a loaded
	 * machine (sanitizers, other jobs) a 5 s ack timeout can cause a retry,
	 * and a retried message may be overtaken: the timeouts here are long */
	static const char *const env[] = { "CLAWRELAY_SOCKET_TIMEOUT_MS=30000",
		"CLAWRELAY_DISPATCH_TIMEOUT_MS=60000", NULL };
	h_start_services(&st, env);
	h_agent(&st, "alice", NULL);
	h_agent(&st, "bob", NULL);
	h_trust(&st, "alice", "bob");
}

static void
teardown(void)
{
	h_stop_all(&st);
}

static const char *
lane_of(int i)
{
	return i % 10 == 0 ? "critical" : i % 3 == 0 ? "low" : "normal";
}

START_TEST(kill9_then_reconnect)
{
	char hook[400], hook_url[128], body[64], prio[64], corr[64];
	int counts[3] = { 0, 0, 0 };
	for (int i = 0; i < N; i++) {
		struct h_resp r;
		snprintf(body, sizeof(body), "seq=%d", i);
		snprintf(prio, sizeof(prio), "X-Claw-Priority: %s", lane_of(i));
		snprintf(corr, sizeof(corr), "X-Claw-Correlation-Id: dur-%d", i);
		const char *extra[] = { prio, corr, NULL };
		ck_assert_int_eq(h_send(&st, "alice", "bob", body, strlen(body), extra, &r), 0);
		ck_assert_msg(r.status == 202, "message %d answered %ld: %s", i, r.status, r.body.data);
		h_resp_free(&r);
		counts[strcmp(lane_of(i), "critical") == 0 ? 0 : strcmp(lane_of(i), "normal") == 0 ? 1 : 2]++;
	}

	/* kill -9 the relay-session and start it again on the same data */
	struct h_proc *rs = h_find(&st, "relay-session");
	ck_assert_ptr_nonnull(rs);
	h_kill(rs, SIGKILL);
	char data[400];
	snprintf(data, sizeof(data), "CLAWRELAY_DATA_DIR=%s/relay-session", st.dir);
	const char *env[] = { data, NULL };
	h_spawn(&st, "relay-session-2", "clawrelay-relay-session", h_free_port(), env, NULL);

	int port = it_hook(&st, "hook-bob", hook, sizeof(hook), NULL);
	snprintf(hook_url, sizeof(hook_url), "http://127.0.0.1:%d/hook", port);
	struct h_proc *cb = it_connector(&st, "bob", hook_url);

	char want[160];
	snprintf(want, sizeof(want), "queued_critical=%d queued_normal=%d queued_low=%d",
	    counts[0], counts[1], counts[2]);
	/* the first handshake may race the new replica taking its leases: the
	 * connector logs every reconnect_ack; one of them must report all */
	ck_assert_msg(h_wait_log(cb, want, 60000) == 0, "reconnect_ack never reported %s", want);

	/* generous: under the sanitizers on a busy machine 1,000 hook calls
	 * take a while; what is checked is that each arrives once, in order */
	ck_assert_int_eq(h_wait_lines(hook, N, 120000), N);
	h_sleep_ms(1500);	/* anything more would be a duplicate */
	int n;
	cJSON **v = it_lines(hook, &n);
	ck_assert_int_eq(n, N);
	static char seen[N];
	memset(seen, 0, sizeof(seen));
	int last[3] = { -1, -1, -1 };
	for (int i = 0; i < n; i++) {
		const char *b = cJSON_GetObjectItem(v[i], "body")->valuestring;
		const char *p = cJSON_GetObjectItem(v[i], "priority")->valuestring;
		int seq = atoi(b + 4);
		ck_assert_int_ge(seq, 0);
		ck_assert_int_lt(seq, N);
		ck_assert_msg(!seen[seq], "seq %d delivered twice", seq);
		seen[seq] = 1;
		ck_assert_str_eq(p, lane_of(seq));
		int lane = strcmp(p, "critical") == 0 ? 0 : strcmp(p, "normal") == 0 ? 1 : 2;
		ck_assert_msg(seq > last[lane], "lane %s out of order: %d after %d", p, seq, last[lane]);
		last[lane] = seq;
	}
	it_lines_free(v, n);
}
END_TEST

int
main(void)
{
	Suite *s = suite_create("durability");
	TCase *tc = tcase_create("kill -9");
	tcase_set_timeout(tc, 240);
	tcase_add_unchecked_fixture(tc, setup, teardown);
	tcase_add_test(tc, kill9_then_reconnect);
	suite_add_tcase(s, tc);
	return it_run(s);
}
