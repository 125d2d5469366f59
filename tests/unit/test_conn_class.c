/*
 * test_conn_class.c - what an answer means at the connector's boundaries
 * (services/connector/conn_class.c): which hook answers use up a message's
 * attempts and which count against the hook breaker; which gateway answers
 * send a message to the outbox, hold a recipient back, or fail it for good.
 */
#include <check.h>

#include "../../services/connector/conn_class.h"
#include "unit.h"

static const struct {
	long status;
	enum conn_hook_answer want;
	int brk_ok;
} hook[] = {
	{ 200, CONN_HOOK_TAKEN, 1 },
	{ 202, CONN_HOOK_TAKEN, 1 },
	{ 204, CONN_HOOK_TAKEN, 1 },
	{ 0, CONN_HOOK_UNAVAILABLE, 0 },      /* refused connection, timeout */
	{ 408, CONN_HOOK_UNAVAILABLE, 0 },
	{ 429, CONN_HOOK_UNAVAILABLE, 0 },
	{ 502, CONN_HOOK_UNAVAILABLE, 0 },
	{ 503, CONN_HOOK_UNAVAILABLE, 0 },
	{ 504, CONN_HOOK_UNAVAILABLE, 0 },
	{ 500, CONN_HOOK_REFUSED, 0 },        /* the hook failed this message: an attempt */
	{ 501, CONN_HOOK_REFUSED, 0 },
	{ 507, CONN_HOOK_REFUSED, 0 },
	{ 400, CONN_HOOK_REFUSED, 1 },        /* refused, but the hook is up */
	{ 404, CONN_HOOK_REFUSED, 1 },
	{ 413, CONN_HOOK_REFUSED, 1 },
	{ 301, CONN_HOOK_REFUSED, 0 },        /* redirects are not followed */
	{ 199, CONN_HOOK_REFUSED, 0 },
	{ 300, CONN_HOOK_REFUSED, 0 },
};

START_TEST(hook_answers)
{
	ck_assert_msg(conn_hook_classify(hook[_i].status) == hook[_i].want, "status %ld: class %d",
	    hook[_i].status, (int)conn_hook_classify(hook[_i].status));
	ck_assert_msg(conn_hook_brk_ok(hook[_i].status) == hook[_i].brk_ok, "status %ld: breaker",
	    hook[_i].status);
}
END_TEST

static const struct {
	int status, bare, local_error, expired;
	enum conn_out_class want;
} out[] = {
	{ 202, 0, 0, 0, CONN_OUT_OK },
	{ 200, 0, 0, 0, CONN_OUT_OK },        /* a duplicate: the first one's IDs */
	{ 0, 0, 0, 0, CONN_OUT_RETRY },       /* no answer: to the outbox */
	{ 503, 0, 0, 0, CONN_OUT_RETRY },
	{ 502, 1, 0, 0, CONN_OUT_RETRY },
	{ 500, 0, 0, 0, CONN_OUT_RETRY },
	{ 504, 1, 0, 0, CONN_OUT_RETRY },
	{ 507, 0, 0, 0, CONN_OUT_LATER },     /* the recipient's queue is full */
	{ 429, 0, 0, 0, CONN_OUT_LATER },
	{ 429, 1, 0, 0, CONN_OUT_LATER },
	{ 408, 0, 0, 0, CONN_OUT_LATER },
	{ 400, 0, 0, 0, CONN_OUT_REFUSED },
	{ 401, 0, 0, 0, CONN_OUT_REFUSED },
	{ 403, 0, 0, 0, CONN_OUT_REFUSED },
	{ 404, 0, 0, 0, CONN_OUT_REFUSED },
	{ 409, 0, 0, 0, CONN_OUT_REFUSED },
	{ 413, 0, 0, 0, CONN_OUT_REFUSED },
	{ 404, 1, 0, 0, CONN_OUT_RETRY },     /* no JSON error: not the gateway's refusal */
	{ 403, 1, 0, 0, CONN_OUT_RETRY },
	{ 500, 0, 1, 0, CONN_OUT_REFUSED },   /* our own failure is never retried */
	{ 0, 0, 0, 1, CONN_OUT_EXPIRED },
	{ 202, 0, 0, 1, CONN_OUT_EXPIRED },
};

START_TEST(gateway_answers)
{
	enum conn_out_class got = conn_out_classify(out[_i].status, out[_i].bare,
	    out[_i].local_error, out[_i].expired);
	ck_assert_msg(got == out[_i].want, "status %d bare %d local %d expired %d: class %d",
	    out[_i].status, out[_i].bare, out[_i].local_error, out[_i].expired, (int)got);
}
END_TEST

int
main(void)
{
	Suite *s = suite_create("conn_class");
	TCase *tc = tcase_create("answers");

	tcase_add_loop_test(tc, hook_answers, 0, (int)(sizeof(hook) / sizeof(hook[0])));
	tcase_add_loop_test(tc, gateway_answers, 0, (int)(sizeof(out) / sizeof(out[0])));
	suite_add_tcase(s, tc);
	return unit_run(s);
}
