/*
 * itest_accounting.c - the books balance, and survive a kill -9.
 *
 * 20 messages to bob (online) are delivered, 5 to carol (offline) with a
 * 1 s TTL expire, 7 more to carol wait, 3 to a webhook that answers 400 are
 * rejected; each of the 8 failures queues a DELIVERY_STATUS message for
 * alice (offline), accepted like any other. `clawrelay accounting --json`
 * then says, summed over every partition: accepted 43 = delivered 20 +
 * failed 8 (expired 5, rejected 3) + queued 15 (7 + 8), balanced; relay-session's /v1/status and /metrics say the
 * same. After relay-session is killed with -9 and started again, the books
 * are the same.
 */
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "it_common.h"

static struct h_stack st;
static char hook_b[400], hook_w[400];

static void
setup(void)
{
	char url[128];
	h_stack_init(&st, "accounting");
	h_nats_start(&st);
	h_start_services(&st, NULL);
	int pb = it_hook(&st, "hook-bob", hook_b, sizeof(hook_b), NULL);
	static const char *const refuse[] = { "--status", "400", NULL };
	int pw = it_hook(&st, "hook-web", hook_w, sizeof(hook_w), refuse);
	h_agent(&st, "alice", NULL);
	h_agent(&st, "bob", NULL);
	h_agent(&st, "carol", NULL);
	snprintf(url, sizeof(url), "http://127.0.0.1:%d/webhook", pw);
	h_agent(&st, "web", url);
	h_trust(&st, "alice", "bob");
	h_trust(&st, "alice", "carol");
	h_trust(&st, "alice", "web");
	snprintf(url, sizeof(url), "http://127.0.0.1:%d/hook", pb);
	it_connector(&st, "bob", url);
}

static void
teardown(void)
{
	h_stop_all(&st);
}

static void
send_n(const char *to, int n, const char *ttl)
{
	char h[64];
	const char *extra[2] = { NULL, NULL };
	if (ttl != NULL) {
		snprintf(h, sizeof(h), "X-Claw-Ttl-Seconds: %s", ttl);
		extra[0] = h;
	}
	for (int i = 0; i < n; i++) {
		struct h_resp r;
		char body[64];
		snprintf(body, sizeof(body), "%s-%d", to, i);
		ck_assert_int_eq(h_send(&st, "alice", to, body, strlen(body), extra, &r), 0);
		ck_assert_msg(r.status == 202, "%s answered %ld: %s", body, r.status, r.body.data);
		h_resp_free(&r);
	}
}

/* poll `clawrelay accounting --json` until its total is the one wanted;
 * the last document (caller frees) */
static cJSON *
wait_books(double accepted, double delivered, double expired, double rejected, double queued)
{
	cJSON *j = NULL;
	for (int i = 0; i < 200; i++) {
		struct strbuf out;
		const char *args[] = { "accounting", "--json", NULL };
		sb_init(&out);
		int rc = h_cli(&st, &out, args);
		cJSON_Delete(j);
		j = cJSON_Parse(out.data);
		sb_free(&out);
		if (j != NULL && rc == 0 && it_jnum(j, "total.accepted") == accepted &&
		    it_jnum(j, "total.delivered") == delivered &&
		    it_jnum(j, "total.failed.expired") == expired &&
		    it_jnum(j, "total.failed.rejected") == rejected &&
		    it_jnum(j, "total.queued") == queued)
			return j;
		h_sleep_ms(100);
	}
	char *txt = j ? cJSON_PrintUnformatted(cJSON_GetObjectItem(j, "total")) : NULL;
	ck_abort_msg("the books never showed the wanted total: %s", txt ? txt : "(no answer)");
	return NULL;
}

static void
check_balanced(cJSON *j)
{
	ck_assert(cJSON_IsTrue(cJSON_GetObjectItem(j, "balanced")));
	ck_assert(cJSON_IsTrue(cJSON_GetObjectItem(cJSON_GetObjectItem(j, "total"), "balanced")));
	ck_assert_int_eq((int)it_jnum(j, "partitionsAnswered"), 16);
	ck_assert_int_eq((int)it_jnum(j, "total.failedTotal"), 8);
	ck_assert_int_eq((int)it_jnum(j, "total.failed.shed"), 0);
}

START_TEST(books_balance)
{
	send_n("bob", 20, NULL);
	send_n("carol", 5, "1");
	send_n("carol", 7, NULL);
	send_n("web", 3, NULL);
	ck_assert_int_eq(h_wait_lines(hook_b, 20, 30000), 20);

	cJSON *j = wait_books(43, 20, 5, 3, 15);
	check_balanced(j);
	cJSON_Delete(j);

	/* relay-session's own status and metrics say the same */
	struct h_proc *rs = h_find(&st, "relay-session");
	char url[128];
	struct h_resp r;
	snprintf(url, sizeof(url), "http://127.0.0.1:%d/v1/status", rs->port);
	ck_assert_int_eq(h_http("GET", url, NULL, NULL, 0, &r), 0);
	cJSON *s = cJSON_Parse(r.body.data);
	h_resp_free(&r);
	ck_assert_ptr_nonnull(s);
	ck_assert_int_eq((int)it_jnum(s, "books.accepted"), 43);
	ck_assert_int_eq((int)it_jnum(s, "books.queued"), 15);
	ck_assert(cJSON_IsTrue(cJSON_GetObjectItem(cJSON_GetObjectItem(s, "books"), "balanced")));
	cJSON_Delete(s);
	snprintf(url, sizeof(url), "http://127.0.0.1:%d/metrics", rs->port);
	ck_assert_int_eq(h_http("GET", url, NULL, NULL, 0, &r), 0);
	ck_assert_ptr_nonnull(strstr(r.body.data, "clawrelay_session_books_balanced{partition="));
	ck_assert_ptr_null(strstr(r.body.data, "clawrelay_session_books_balanced{partition=\"0\"} 0"));
	h_resp_free(&r);

	/* kill -9 and start again on the same data: the same books */
	h_kill(rs, SIGKILL);
	char data[400];
	snprintf(data, sizeof(data), "CLAWRELAY_DATA_DIR=%s/relay-session", st.dir);
	const char *env[] = { data, NULL };
	h_spawn(&st, "relay-session-2", "clawrelay-relay-session", h_free_port(), env, NULL);
	j = wait_books(43, 20, 5, 3, 15);
	check_balanced(j);
	cJSON_Delete(j);
}
END_TEST

int
main(void)
{
	Suite *s = suite_create("accounting");
	TCase *tc = tcase_create("books");
	tcase_set_timeout(tc, 180);
	tcase_add_unchecked_fixture(tc, setup, teardown);
	tcase_add_test(tc, books_balance);
	suite_add_tcase(s, tc);
	return it_run(s);
}
