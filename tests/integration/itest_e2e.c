/*
 * itest_e2e.c - the round trip through every service.
 *  1. A -> B over connectors: B's hook gets the exact bytes and the
 *     correlation ID; status says processed; trace shows every hop in order.
 *  2. A webhook agent receives a message by HTTP POST.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "it_common.h"

static struct h_stack st;
static char hook_b[400], hook_c[400];
static char hook_b_url[128], hook_c_url[128];
static struct h_proc *conn_a, *conn_b;

/* How many 100 ms polls to allow for what arrives asynchronously (status
 * records, hop batches): services under valgrind (make valgrind) run
 * tens of times slower, so they get longer; the checks stay the same. */
static int
polls(int n)
{
	return getenv("CLAWRELAY_TEST_VALGRIND") ? n * 6 : n;
}

static void
setup(void)
{
	h_stack_init(&st, "e2e");
	h_nats_start(&st);
	h_start_services(&st, NULL);
	int pb = it_hook(&st, "hook-bob", hook_b, sizeof(hook_b), NULL);
	int pc = it_hook(&st, "hook-carol", hook_c, sizeof(hook_c), NULL);
	snprintf(hook_b_url, sizeof(hook_b_url), "http://127.0.0.1:%d/hook", pb);
	snprintf(hook_c_url, sizeof(hook_c_url), "http://127.0.0.1:%d/webhook", pc);
	h_agent(&st, "alice", NULL);
	h_agent(&st, "bob", NULL);
	h_agent(&st, "carol", hook_c_url);
	h_trust(&st, "alice", "bob");
	h_trust(&st, "alice", "carol");
	conn_a = it_connector(&st, "alice", "http://127.0.0.1:9/unused");
	conn_b = it_connector(&st, "bob", hook_b_url);
	ck_assert_msg(h_wait_log(conn_a, "reconnect_ack", 20000) == 0, "connector A never connected");
	ck_assert_msg(h_wait_log(conn_b, "reconnect_ack", 20000) == 0, "connector B never connected");
}

static void
teardown(void)
{
	h_stop_all(&st);
}

static const char payload[] = "{\"text\":\"h\\u00e9llo \\\"bob\\\"\",\n \"n\": 42}";

START_TEST(connector_to_connector)
{
	char url[256];
	struct h_resp r;
	snprintf(url, sizeof(url), "http://127.0.0.1:%d/v1/outbound/bob", conn_a->port);
	const char *hdrs[] = { "X-Claw-Correlation-Id: e2e-corr-1", "Content-Type: application/json",
		"traceparent: 00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01", NULL };
	ck_assert_int_eq(h_http("POST", url, hdrs, payload, strlen(payload), &r), 0);
	ck_assert_msg(r.status == 202, "outbound answered %ld: %s", r.status, r.body.data);
	cJSON *j = cJSON_Parse(r.body.data);
	ck_assert_ptr_nonnull(j);
	ck_assert_str_eq(cJSON_GetObjectItem(j, "correlationId")->valuestring, "e2e-corr-1");
	char mid[64];
	snprintf(mid, sizeof(mid), "%s", cJSON_GetObjectItem(j, "messageId")->valuestring);
	cJSON_Delete(j);
	h_resp_free(&r);

	ck_assert_int_eq(h_wait_lines(hook_b, 1, polls(150) * 100), 1);
	int n;
	cJSON **v = it_lines(hook_b, &n);
	ck_assert_int_eq(n, 1);
	ck_assert_str_eq(cJSON_GetObjectItem(v[0], "correlation_id")->valuestring, "e2e-corr-1");
	ck_assert_str_eq(cJSON_GetObjectItem(v[0], "message_id")->valuestring, mid);
	ck_assert_str_eq(cJSON_GetObjectItem(v[0], "sender")->valuestring, "alice");
	ck_assert_str_eq(cJSON_GetObjectItem(v[0], "body")->valuestring, payload);
	ck_assert_int_eq(cJSON_GetObjectItem(v[0], "bytes")->valueint, (int)strlen(payload));
	/* the trace id given at the edge reaches the hook */
	ck_assert_ptr_nonnull(strstr(cJSON_GetObjectItem(v[0], "traceparent")->valuestring,
	    "4bf92f3577b34da6a3ce929d0e0e4736"));
	it_lines_free(v, n);

	/* status: processed (the notifier folds receipts in asynchronously) */
	struct strbuf out;
	int processed = 0;
	for (int i = 0; i < polls(100) && !processed; i++) {
		sb_init(&out);
		const char *args[] = { "status", "e2e-corr-1", NULL };
		if (h_cli(&st, &out, args) == 0 && strstr(out.data, "processed"))
			processed = 1;
		else
			h_sleep_ms(100);
		if (!processed && i == polls(100) - 1)
			fprintf(stderr, "status said: %s\n", out.data);
		sb_free(&out);
	}
	ck_assert_msg(processed, "status never said processed");

	/* trace: every hop, in order */
	static const char *const hops[] = { "connector_sent", "gateway_accepted", "session_queued",
		"dispatched", "delivery_attempt", "socket_sent", "connector_stored", "hook_called",
		"hook_answered", "delivered" };
	int ok = 0;
	for (int i = 0; i < polls(50) && !ok; i++) {
		sb_init(&out);
		const char *args[] = { "trace", "e2e-corr-1", NULL };
		if (h_cli(&st, &out, args) == 0) {
			const char *pos = out.data;
			ok = 1;
			for (size_t k = 0; k < sizeof(hops) / sizeof(hops[0]); k++) {
				const char *f = strstr(pos, hops[k]);
				if (f == NULL) {
					ok = 0;
					if (i == polls(50) - 1)
						fprintf(stderr, "trace lacks %s after position %ld:\n%s\n", hops[k],
						    (long)(pos - out.data), out.data);
					break;
				}
				pos = f + strlen(hops[k]);
			}
		}
		sb_free(&out);
		if (!ok)
			h_sleep_ms(100);
	}
	ck_assert_msg(ok, "trace does not show every hop in order");

	/* --json: standard output is exactly one JSON document, whatever the
	 * log level (the CLI's log lines go to standard error) */
	setenv("CLAWRELAY_LOG_LEVEL", "debug", 1);
	sb_init(&out);
	const char *targs[] = { "trace", "e2e-corr-1", "--json", NULL };
	ck_assert_int_eq(h_cli(&st, &out, targs), 0);
	unsetenv("CLAWRELAY_LOG_LEVEL");
	const char *end = NULL;
	cJSON *tj = cJSON_ParseWithOpts(out.data, &end, 0);
	ck_assert_msg(tj != NULL, "trace --json did not parse: %s", out.data);
	while (end && (*end == '\n' || *end == ' '))
		end++;
	ck_assert_msg(end && *end == '\0', "trace --json printed more than one document: %s", out.data);
	ck_assert_ptr_nonnull(strstr(out.data, "delivered"));
	cJSON_Delete(tj);
	sb_free(&out);
}
END_TEST

START_TEST(webhook_agent)
{
	struct h_resp r;
	const char body[] = "webhook payload \x01\x02 bytes";
	const char *extra[] = { "X-Claw-Correlation-Id: e2e-webhook-1", "X-Claw-Priority: critical", NULL };
	ck_assert_int_eq(h_send(&st, "alice", "carol", body, sizeof(body) - 1, extra, &r), 0);
	ck_assert_msg(r.status == 202, "gateway answered %ld: %s", r.status, r.body.data);
	h_resp_free(&r);
	ck_assert_int_eq(h_wait_lines(hook_c, 1, polls(150) * 100), 1);
	int n;
	cJSON **v = it_lines(hook_c, &n);
	ck_assert_int_eq(n, 1);
	ck_assert_str_eq(cJSON_GetObjectItem(v[0], "correlation_id")->valuestring, "e2e-webhook-1");
	ck_assert_str_eq(cJSON_GetObjectItem(v[0], "sender")->valuestring, "alice");
	ck_assert_str_eq(cJSON_GetObjectItem(v[0], "priority")->valuestring, "critical");
	ck_assert_int_eq(cJSON_GetObjectItem(v[0], "bytes")->valueint, (int)(sizeof(body) - 1));
	ck_assert_str_eq(cJSON_GetObjectItem(v[0], "body")->valuestring, body);
	it_lines_free(v, n);
}
END_TEST

int
main(void)
{
	Suite *s = suite_create("e2e");
	TCase *tc = tcase_create("round trip");
	tcase_set_timeout(tc, 120);
	tcase_add_unchecked_fixture(tc, setup, teardown);
	tcase_add_test(tc, connector_to_connector);
	tcase_add_test(tc, webhook_agent);
	suite_add_tcase(s, tc);
	return it_run(s);
}
