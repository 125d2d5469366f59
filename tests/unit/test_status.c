/*
 * test_status.c - the status key and the JSON of status records and hop
 * timelines that the gateway, the metrics-collector and the CLI answer.
 */
#include <check.h>
#include <string.h>

#include "status.h"
#include "unit.h"

START_TEST(keys)
{
	char k[64];
	ck_assert_uint_gt(status_key("did:x:a.b@c", k, sizeof(k)), 0);
	ck_assert_str_eq(k, "c.did=3Ax=3Aa=2Eb=40c");
	ck_assert_uint_eq(status_key("", k, sizeof(k)), 0);
	ck_assert_uint_eq(status_key("abcdef", k, 6), 0);	/* does not fit */
}
END_TEST

static char s_id[] = "corr-1", s_gw[] = "gateway", s_ok[] = "ok", s_none[] = "";

static void
hop(HopEvent *h, int kind, uint64_t us)
{
	clawrelay__v1__hop_event__init(h);
	h->correlation_id = s_id;
	h->hop = kind;
	h->ts_us = us;
	h->ts_ms = us / 1000;
	h->service = s_gw;
	h->outcome = s_ok;
	h->detail = s_none;
}

START_TEST(trace_order_and_gaps)
{
	HopEvent a, b, c, d;
	/* out of order, and two hops in the same microsecond */
	hop(&a, CLAWRELAY__V1__HOP_KIND__HOP_SESSION_QUEUED, 1700000000002000ULL);
	hop(&b, CLAWRELAY__V1__HOP_KIND__HOP_DISPATCHED, 1700000000002000ULL);
	hop(&c, CLAWRELAY__V1__HOP_KIND__HOP_GATEWAY_ACCEPTED, 1700000000000500ULL);
	hop(&d, CLAWRELAY__V1__HOP_KIND__HOP_DELIVERED, 1700000000010000ULL);
	HopEvent *hops[] = { &b, &d, &a, &c };
	status_trace_sort(hops, 4);
	ck_assert_ptr_eq(hops[0], &c);
	ck_assert_ptr_eq(hops[1], &a);	/* tie: session_queued before dispatched */
	ck_assert_ptr_eq(hops[2], &b);
	ck_assert_ptr_eq(hops[3], &d);
	cJSON *o = status_trace_json("corr-1", hops, 4);
	cJSON *arr = cJSON_GetObjectItem(o, "hops");
	ck_assert_int_eq(cJSON_GetArraySize(arr), 4);
	ck_assert_str_eq(cJSON_GetObjectItem(cJSON_GetArrayItem(arr, 0), "hop")->valuestring, "gateway_accepted");
	ck_assert_double_eq_tol(cJSON_GetObjectItem(cJSON_GetArrayItem(arr, 0), "gapMs")->valuedouble, 0.0, 1e-9);
	ck_assert_double_eq_tol(cJSON_GetObjectItem(cJSON_GetArrayItem(arr, 1), "gapMs")->valuedouble, 1.5, 1e-9);
	ck_assert_double_eq_tol(cJSON_GetObjectItem(cJSON_GetArrayItem(arr, 3), "gapMs")->valuedouble, 8.0, 1e-9);
	ck_assert_double_eq_tol(cJSON_GetObjectItem(o, "totalMs")->valuedouble, 9.5, 1e-9);
	ck_assert_str_eq(cJSON_GetObjectItem(cJSON_GetArrayItem(arr, 0), "time")->valuestring,
	    "2023-11-14T22:13:20.000Z");
	cJSON_Delete(o);
}
END_TEST

START_TEST(status_record)
{
	StatusRecord r = CLAWRELAY__V1__STATUS_RECORD__INIT;
	StateTime q = CLAWRELAY__V1__STATE_TIME__INIT, p = CLAWRELAY__V1__STATE_TIME__INIT;
	StateTime *hist[] = { &q, &p };
	static char queued[] = "queued", processed[] = "processed", cid[] = "c1", alice[] = "alice";
	q.state = queued;
	q.at_ms = 1700000000000ULL;
	p.state = processed;
	p.at_ms = 1700000000025ULL;
	r.correlation_id = cid;
	r.sender = alice;
	r.state = processed;
	r.history = hist;
	r.n_history = 2;
	r.attempts = 1;
	cJSON *o = status_json(&r);
	ck_assert_str_eq(cJSON_GetObjectItem(o, "state")->valuestring, "processed");
	ck_assert_str_eq(cJSON_GetObjectItem(o, "messageId")->valuestring, "");	/* NULL-safe */
	cJSON *h = cJSON_GetObjectItem(o, "history");
	ck_assert_int_eq(cJSON_GetArraySize(h), 2);
	ck_assert_str_eq(cJSON_GetObjectItem(cJSON_GetArrayItem(h, 1), "time")->valuestring,
	    "2023-11-14T22:13:20.025Z");
	ck_assert_str_eq(cJSON_GetObjectItem(o, "updated")->valuestring, "-");	/* never updated */
	cJSON_Delete(o);
}
END_TEST

int
main(void)
{
	Suite *s = suite_create("status");
	TCase *tc = tcase_create("core");
	tcase_add_test(tc, keys);
	tcase_add_test(tc, trace_order_and_gaps);
	tcase_add_test(tc, status_record);
	suite_add_tcase(s, tc);
	return unit_run(s);
}
