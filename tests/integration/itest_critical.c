/*
 * itest_critical.c - critical skips the backoff.
 *
 * A webhook agent answers 503 until a normal message has failed four times,
 * so relay-session backs the agent off for 4-8 s (base 1 s, doubling, with
 * jitter); breakers are off so that only the backoff holds. Then the webhook
 * recovers and a critical message is sent: it is delivered at once (within
 * 1.5 s of being sent, and sooner than the backoff's shortest end, 4 s
 * after the fourth failure), first; its success ends the agent's backoff,
 * so the normal one follows it.
 */
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "it_common.h"

static struct h_stack st;
static char hook[400];
static int hook_port;

static void
setup(void)
{
	char url[128];
	static const char *const env[] = { "CLAWRELAY_BACKOFF_BASE_MS=1000",
		"CLAWRELAY_BACKOFF_MAX_MS=60000", "CLAWRELAY_BREAKER_CONSECUTIVE=0",
		"CLAWRELAY_BREAKER_FAILURE_PCT=0", NULL };
	h_stack_init(&st, "critical");
	h_nats_start(&st);
	h_start_services(&st, env);
	static const char *const fail[] = { "--status", "503", NULL };
	hook_port = it_hook(&st, "web-down", hook, sizeof(hook), fail);
	snprintf(url, sizeof(url), "http://127.0.0.1:%d/webhook", hook_port);
	h_agent(&st, "alice", NULL);
	h_agent(&st, "web", url);
	h_trust(&st, "alice", "web");
}

static void
teardown(void)
{
	h_stop_all(&st);
}

static void
send_as(const char *prio, const char *body)
{
	char h[64];
	struct h_resp r;
	snprintf(h, sizeof(h), "X-Claw-Priority: %s", prio);
	const char *extra[] = { h, NULL };
	ck_assert_int_eq(h_send(&st, "alice", "web", body, strlen(body), extra, &r), 0);
	ck_assert_msg(r.status == 202, "%s answered %ld: %s", body, r.status, r.body.data);
	h_resp_free(&r);
}

/* the ts_ms of the line whose body is body in file, 0 if none */
static uint64_t
seen_at(const char *file, const char *body)
{
	int n;
	uint64_t at = 0;
	cJSON **v = it_lines(file, &n);
	for (int i = 0; i < n && at == 0; i++)
		if (strcmp(cJSON_GetStringValue(cJSON_GetObjectItem(v[i], "body")), body) == 0)
			at = (uint64_t)cJSON_GetNumberValue(cJSON_GetObjectItem(v[i], "ts_ms"));
	it_lines_free(v, n);
	return at;
}

START_TEST(critical_skips_backoff)
{
	send_as("normal", "normal-1");
	/* four failed attempts: the next normal one is 4-8 s away */
	ck_assert_int_eq(h_wait_lines(hook, 4, 30000), 4);
	uint64_t fourth = now_ms();
	h_kill(h_find(&st, "web-down"), SIGTERM);
	char ok_hook[400];
	it_hook_at(&st, "web-up", hook_port, ok_hook, sizeof(ok_hook), NULL);

	uint64_t sent = now_ms();
	send_as("critical", "critical-1");
	ck_assert_int_ge(h_wait_lines(ok_hook, 1, 1500), 1);
	int n;
	cJSON **v = it_lines(ok_hook, &n);
	ck_assert_int_ge(n, 1);
	ck_assert_str_eq(cJSON_GetStringValue(cJSON_GetObjectItem(v[0], "body")), "critical-1");
	it_lines_free(v, n);
	uint64_t crit = seen_at(ok_hook, "critical-1");
	ck_assert_msg(crit - sent < 1500, "critical took %llu ms", (unsigned long long)(crit - sent));
	ck_assert_msg(crit - fourth < 4000, "critical waited for the backoff: %llu ms after the "
	    "fourth failure", (unsigned long long)(crit - fourth));

	/* the normal one comes after it, once, now that a delivery succeeded */
	ck_assert_int_eq(h_wait_lines(ok_hook, 2, 15000), 2);
	uint64_t norm = seen_at(ok_hook, "normal-1");
	ck_assert(norm != 0 && norm >= crit);
	printf("critical: delivered %llu ms after it was sent, %llu ms after the normal one's "
	    "fourth failure (its backoff: 4-8 s)\n", (unsigned long long)(crit - sent),
	    (unsigned long long)(crit - fourth));
}
END_TEST

int
main(void)
{
	Suite *s = suite_create("critical");
	TCase *tc = tcase_create("backoff");
	tcase_set_timeout(tc, 120);
	tcase_add_unchecked_fixture(tc, setup, teardown);
	tcase_add_test(tc, critical_skips_backoff);
	suite_add_tcase(s, tc);
	return it_run(s);
}
