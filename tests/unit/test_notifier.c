/*
 * test_notifier.c - what a sender's agent reads about its failed message:
 * the DELIVERY_STATUS sentence for each reason (with the duration said as
 * people say it) and the JSON payload, which must be the same bytes every
 * time for the same failure (a second enqueue is then a duplicate). Links
 * the notifier's objects (not its main.c).
 */
#include <check.h>
#include <string.h>

#include <cJSON.h>

#include "../../services/notifier/ntf.h"
#include "unit.h"

static char s_mid[] = "01J0000000000000000000000A", s_cid[] = "corr-9", s_a[] = "alice",
    s_b[] = "bob", s_detail[] = "http 410 in 3 ms", s_none[] = "";

static void
failure(Failure *f, int reason, uint64_t took_ms, uint32_t attempts, char *detail)
{
	clawrelay__v1__failure__init(f);
	f->schema_version = ENV_SCHEMA;
	f->message_id = s_mid;
	f->correlation_id = s_cid;
	f->sender = s_a;
	f->recipient = s_b;
	f->reason = (Clawrelay__V1__FailureReason)reason;
	f->detail = detail;
	f->failed_at_ms = 1800000000000ULL;
	f->created_at_ms = took_ms == UINT64_MAX ? 0 : f->failed_at_ms - took_ms;
	f->attempts = attempts;
}

static const struct {
	int reason;
	uint64_t took_ms;
	uint32_t attempts;
	char *detail;
	const char *want;	/* after "your message <id> to bob could not be delivered: " */
} cases[] = {
	{ CLAWRELAY__V1__FAILURE_REASON__FAIL_EXPIRED, 86400000, 0, s_none,
	  "bob was offline and it expired after 24 h" },
	{ CLAWRELAY__V1__FAILURE_REASON__FAIL_EXPIRED, 7 * 86400000ULL, 0, s_none,
	  "bob was offline and it expired after 7 d" },
	{ CLAWRELAY__V1__FAILURE_REASON__FAIL_EXPIRED, 5400000, 4, s_none,
	  "it expired after 1.5 h, 4 delivery attempts did not reach bob" },
	{ CLAWRELAY__V1__FAILURE_REASON__FAIL_EXPIRED, 2000, 1, s_none,
	  "it expired after 2 s, 1 delivery attempt did not reach bob" },
	{ CLAWRELAY__V1__FAILURE_REASON__FAIL_EXPIRED, 900000, 0, s_none,
	  "bob was offline and it expired after 15 min" },
	{ CLAWRELAY__V1__FAILURE_REASON__FAIL_SHED, 3600000, 0, s_none,
	  "bob's queue was full and it was dropped (shed) to make room for more urgent "
	  "messages after 1 h" },
	{ CLAWRELAY__V1__FAILURE_REASON__FAIL_REJECTED, 100, 1, s_detail,
	  "bob refused it (http 410 in 3 ms)" },
	{ CLAWRELAY__V1__FAILURE_REASON__FAIL_DEAD_LETTERED, UINT64_MAX, 0, s_detail,
	  "bob's connector could not hand it to its agent and gave up (http 410 in 3 ms)" },
	{ CLAWRELAY__V1__FAILURE_REASON__FAIL_ATTEMPTS_EXHAUSTED, 600000, 10, s_none,
	  "10 delivery attempts failed and the relay gave up after 10 min" },
	{ CLAWRELAY__V1__FAILURE_REASON__FAIL_ATTEMPTS_EXHAUSTED, UINT64_MAX, 3, s_none,
	  "3 delivery attempts failed and the relay gave up" },
	{ CLAWRELAY__V1__FAILURE_REASON__FAIL_UNKNOWN, 1000, 0, s_detail, "http 410 in 3 ms" },
};

START_TEST(status_text)
{
	Failure f;
	char text[1024], want[1024];

	failure(&f, cases[_i].reason, cases[_i].took_ms, cases[_i].attempts, cases[_i].detail);
	ntf_status_text(&f, text, sizeof(text));
	snprintf(want, sizeof(want), "your message %s to bob could not be delivered: %s", s_mid,
	    cases[_i].want);
	ck_assert_str_eq(text, want);
}
END_TEST

START_TEST(status_text_fits)
{
	Failure f;
	char text[40];

	failure(&f, CLAWRELAY__V1__FAILURE_REASON__FAIL_EXPIRED, 1000, 0, s_none);
	ntf_status_text(&f, text, sizeof(text));	/* cut, never overrun */
	ck_assert_uint_lt(strlen(text), sizeof(text));
}
END_TEST

START_TEST(status_payload)
{
	Failure f;
	char *a, *b;
	cJSON *j;

	failure(&f, CLAWRELAY__V1__FAILURE_REASON__FAIL_REJECTED, 2500, 2, s_detail);
	a = ntf_status_payload(&f);
	b = ntf_status_payload(&f);
	ck_assert_ptr_nonnull(a);
	ck_assert_str_eq(a, b);	/* same failure, same bytes */
	j = cJSON_Parse(a);
	ck_assert_ptr_nonnull(j);
	ck_assert_str_eq(cJSON_GetObjectItem(j, "type")->valuestring, "delivery_status");
	ck_assert_str_eq(cJSON_GetObjectItem(j, "status")->valuestring, "failed");
	ck_assert_str_eq(cJSON_GetObjectItem(j, "message_id")->valuestring, s_mid);
	ck_assert_str_eq(cJSON_GetObjectItem(j, "correlation_id")->valuestring, s_cid);
	ck_assert_str_eq(cJSON_GetObjectItem(j, "recipient")->valuestring, "bob");
	ck_assert_str_eq(cJSON_GetObjectItem(j, "reason")->valuestring, "rejected");
	ck_assert_str_eq(cJSON_GetObjectItem(j, "detail")->valuestring, s_detail);
	ck_assert_str_eq(cJSON_GetObjectItem(j, "failed_at")->valuestring, "2027-01-15T08:00:00.000Z");
	ck_assert_str_eq(cJSON_GetObjectItem(j, "created_at")->valuestring, "2027-01-15T07:59:57.500Z");
	ck_assert_int_eq(cJSON_GetObjectItem(j, "attempts")->valueint, 2);
	ck_assert_ptr_nonnull(strstr(cJSON_GetObjectItem(j, "text")->valuestring, "bob refused it"));
	cJSON_Delete(j);
	cJSON_free(a);
	cJSON_free(b);

	/* no creation time known (a dead letter): no created_at */
	failure(&f, CLAWRELAY__V1__FAILURE_REASON__FAIL_DEAD_LETTERED, UINT64_MAX, 0, s_detail);
	a = ntf_status_payload(&f);
	j = cJSON_Parse(a);
	ck_assert_ptr_null(cJSON_GetObjectItem(j, "created_at"));
	cJSON_Delete(j);
	cJSON_free(a);
}
END_TEST

int
main(void)
{
	Suite *s = suite_create("notifier");
	TCase *tc = tcase_create("delivery status");
	tcase_add_loop_test(tc, status_text, 0, (int)(sizeof(cases) / sizeof(cases[0])));
	tcase_add_test(tc, status_text_fits);
	tcase_add_test(tc, status_payload);
	suite_add_tcase(s, tc);
	return unit_run(s);
}
