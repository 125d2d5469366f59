/*
 * itest_traceorder.c - under load, every trace lists a message's hops in the
 * order they happened on its path: session_queued before dispatched.
 *
 * relay-session commits messages in groups and may dispatch a message from
 * an earlier batch's commit callback before its own callback has emitted
 * session_queued; that hop then carried a later time than dispatched (about
 * half of the traces under load). It now carries its commit's time.
 * Eight threads send 400 signed POSTs to an online agent at once; once all
 * are delivered, each message's trace (clawrelay trace --json) must list
 * gateway_accepted, session_queued, dispatched, delivered in that order.
 */
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "it_common.h"

#define THREADS 8
#define PER     50
#define N       (THREADS * PER)

static struct h_stack st;
static char hook[400];

static void
setup(void)
{
	char hook_url[128];
	h_stack_init(&st, "traceorder");
	h_nats_start(&st);
	h_start_services(&st, NULL);
	int port = it_hook(&st, "hook-bob", hook, sizeof(hook), NULL);
	snprintf(hook_url, sizeof(hook_url), "http://127.0.0.1:%d/hook", port);
	h_agent(&st, "alice", NULL);
	h_agent(&st, "bob", NULL);
	h_trust(&st, "alice", "bob");
	it_connector(&st, "bob", hook_url);
}

static void
teardown(void)
{
	h_stop_all(&st);
}

static void *
sender(void *arg)
{
	int t = (int)(intptr_t)arg, bad = 0;
	for (int i = 0; i < PER; i++) {
		char cid[80], body[32];
		struct h_resp r;
		snprintf(cid, sizeof(cid), "X-Claw-Correlation-Id: order-%d-%d", t, i);
		snprintf(body, sizeof(body), "m-%d-%d", t, i);
		const char *extra[] = { cid, NULL };
		if (h_send(&st, "alice", "bob", body, strlen(body), extra, &r) != 0 || r.status != 202)
			bad++;
		h_resp_free(&r);
	}
	return (void *)(intptr_t)bad;
}

/* the position of hop name in a trace's hops, -1 if absent */
static int
pos_of(const cJSON *hops, const char *name)
{
	int i = 0;
	const cJSON *h;
	cJSON_ArrayForEach(h, hops) {
		if (strcmp(cJSON_GetStringValue(cJSON_GetObjectItem(h, "hop")), name) == 0)
			return i;
		i++;
	}
	return -1;
}

START_TEST(hops_in_path_order)
{
	pthread_t th[THREADS];
	for (int t = 0; t < THREADS; t++)
		ck_assert_int_eq(pthread_create(&th[t], NULL, sender, (void *)(intptr_t)t), 0);
	for (int t = 0; t < THREADS; t++) {
		void *bad;
		pthread_join(th[t], &bad);
		ck_assert_int_eq((int)(intptr_t)bad, 0);
	}
	ck_assert_int_eq(h_wait_lines(hook, N, 60000), N);

	static const char *const path[] = { "gateway_accepted", "session_queued", "dispatched",
		"delivered" };
	int checked = 0, inverted = 0;
	char first_bad[2048] = "";
	for (int t = 0; t < THREADS; t++)
		for (int i = 0; i < PER; i++) {
			char cid[64];
			snprintf(cid, sizeof(cid), "order-%d-%d", t, i);
			const char *args[] = { "trace", cid, "--json", NULL };
			cJSON *j = NULL;
			/* hop batches arrive within a few ms; delivered is the last */
			for (int k = 0; k < 100; k++) {
				struct strbuf out;
				sb_init(&out);
				if (h_cli(&st, &out, args) == 0 && (j = cJSON_Parse(out.data)) != NULL &&
				    pos_of(cJSON_GetObjectItem(j, "hops"), "delivered") >= 0) {
					sb_free(&out);
					break;
				}
				cJSON_Delete(j);
				j = NULL;
				sb_free(&out);
				h_sleep_ms(100);
			}
			ck_assert_msg(j != NULL, "no complete trace for %s", cid);
			const cJSON *hops = cJSON_GetObjectItem(j, "hops");
			int prev = -1, ok = 1;
			for (size_t p = 0; p < sizeof(path) / sizeof(path[0]); p++) {
				int at = pos_of(hops, path[p]);
				ck_assert_msg(at >= 0, "%s: no %s hop", cid, path[p]);
				ok &= at > prev;
				prev = at;
			}
			if (!ok && inverted++ == 0) {
				char *txt = cJSON_PrintUnformatted(hops);
				snprintf(first_bad, sizeof(first_bad), "%s: %s", cid, txt);
				free(txt);
			}
			checked++;
			cJSON_Delete(j);
		}
	ck_assert_int_eq(checked, N);
	ck_assert_msg(inverted == 0, "%d of %d traces out of path order; first: %s", inverted, N,
	    first_bad);
}
END_TEST

int
main(void)
{
	Suite *s = suite_create("traceorder");
	TCase *tc = tcase_create("under load");
	tcase_set_timeout(tc, 240);
	tcase_add_unchecked_fixture(tc, setup, teardown);
	tcase_add_test(tc, hops_in_path_order);
	suite_add_tcase(s, tc);
	return it_run(s);
}
