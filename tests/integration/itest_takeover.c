/*
 * itest_takeover.c - 4. Two relay-session replicas share the data volume;
 * kill -9 the one that owns the partitions while messages flow: the other
 * takes them over within the lease time and nothing is lost or duplicated.
 */
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "it_common.h"

#define N 300
#define LEASE_MS 3000

static struct h_stack st;
static char hook[400];
static struct h_proc *conn_b;

static void
setup(void)
{
	char data[400], hook_url[128];
	h_stack_init(&st, "takeover");
	h_nats_start(&st);
	snprintf(data, sizeof(data), "CLAWRELAY_DATA_DIR=%s/session", st.dir);
	const char *env[] = { data, "CLAWRELAY_LEASE_MS=3000", NULL };
	h_spawn(&st, "rs1", "clawrelay-relay-session", h_free_port(), env, NULL);
	h_sleep_ms(1000);	/* rs1 takes the partitions first */
	h_spawn(&st, "rs2", "clawrelay-relay-session", h_free_port(), env, NULL);
	static const char *const names[] = { "delivery", "notifier", "metrics-collector", "gateway" };
	for (int i = 0; i < 4; i++) {
		char d2[400], prog[64];
		snprintf(d2, sizeof(d2), "CLAWRELAY_DATA_DIR=%s/%s", st.dir, names[i]);
		snprintf(prog, sizeof(prog), "clawrelay-%s", names[i]);
		const char *e2[] = { d2, NULL };
		int port = h_free_port();
		h_spawn(&st, names[i], prog, port, e2, NULL);
		if (i == 3) {
			st.gw_port = port;
			snprintf(st.gw_url, sizeof(st.gw_url), "http://127.0.0.1:%d", port);
		}
	}
	h_agent(&st, "alice", NULL);
	h_agent(&st, "bob", NULL);
	h_trust(&st, "alice", "bob");
	int port = it_hook(&st, "hook-bob", hook, sizeof(hook), NULL);
	snprintf(hook_url, sizeof(hook_url), "http://127.0.0.1:%d/hook", port);
	conn_b = it_connector(&st, "bob", hook_url);
	ck_assert_msg(h_wait_log(conn_b, "reconnect_ack", 20000) == 0, "connector B never connected");
}

static void
teardown(void)
{
	h_stop_all(&st);
}

START_TEST(kill_owner_while_flowing)
{
	char body[64], idem[96], corr[96];
	uint64_t killed_at = 0, first_ok_after = 0;
	int retries = 0;
	for (int i = 0; i < N; i++) {
		if (i == N / 3) {
			h_kill(h_find(&st, "rs1"), SIGKILL);
			killed_at = mono_ms();
		}
		snprintf(body, sizeof(body), "seq=%d", i);
		snprintf(idem, sizeof(idem), "X-Claw-Idempotency-Key: takeover-%d", i);
		snprintf(corr, sizeof(corr), "X-Claw-Correlation-Id: takeover-%d", i);
		const char *extra[] = { idem, corr, NULL };
		for (;;) {
			struct h_resp r;
			ck_assert_int_eq(h_send(&st, "alice", "bob", body, strlen(body), extra, &r), 0);
			long code = r.status;
			h_resp_free(&r);
			if (code == 202 || code == 200) {
				if (killed_at && !first_ok_after)
					first_ok_after = mono_ms();
				break;
			}
			/* only "unavailable, retry" answers are acceptable meanwhile */
			ck_assert_msg(code == 503, "message %d answered %ld", i, code);
			ck_assert_msg(mono_ms() - killed_at < 4 * LEASE_MS, "no takeover after %d ms",
			    4 * LEASE_MS);
			retries++;
			h_sleep_ms(100);
		}
	}
	fprintf(stderr, "takeover: first 2xx %llu ms after kill -9, %d retries\n",
	    (unsigned long long)(first_ok_after - killed_at), retries);
	/* within the lease time (plus one renewal period and the retry pause) */
	ck_assert_uint_le(first_ok_after - killed_at, LEASE_MS + LEASE_MS / 3 + 1000);

	ck_assert_int_eq(h_wait_lines(hook, N, 60000), N);
	h_sleep_ms(1500);
	int n;
	cJSON **v = it_lines(hook, &n);
	ck_assert_int_eq(n, N);
	static char seen[N];
	memset(seen, 0, sizeof(seen));
	for (int i = 0; i < n; i++) {
		int seq = atoi(cJSON_GetObjectItem(v[i], "body")->valuestring + 4);
		ck_assert_msg(seq >= 0 && seq < N && !seen[seq], "seq %d twice or out of range", seq);
		seen[seq] = 1;
	}
	it_lines_free(v, n);
}
END_TEST

int
main(void)
{
	Suite *s = suite_create("takeover");
	TCase *tc = tcase_create("two replicas");
	tcase_set_timeout(tc, 240);
	tcase_add_unchecked_fixture(tc, setup, teardown);
	tcase_add_test(tc, kill_owner_while_flowing);
	suite_add_tcase(s, tc);
	return it_run(s);
}
