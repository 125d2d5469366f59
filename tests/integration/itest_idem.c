/*
 * itest_idem.c - idempotency keys are exact.
 *
 * - A duplicate of a message that has left the queue is answered with what
 *   became of it: "expired" for one whose TTL passed, "delivered" for one
 *   the recipient's connector took (it used to say "delivered" for both).
 */
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "it_common.h"
#include "util.h"

#define PARTITIONS 16	/* the default */

static struct h_stack st;
static char carol[64];

static void
setup(void)
{
	h_stack_init(&st, "idem");
	h_nats_start(&st);
	h_start_services(&st, NULL);
	h_agent(&st, "alice", NULL);
	h_agent(&st, "bob", NULL);
	/* a recipient in another partition than bob's */
	for (int i = 0; i < 100; i++) {
		snprintf(carol, sizeof(carol), "carol-%d", i);
		if (fnv1a32(carol) % PARTITIONS != fnv1a32("bob") % PARTITIONS)
			break;
	}
	ck_assert_uint_ne(fnv1a32(carol) % PARTITIONS, fnv1a32("bob") % PARTITIONS);
	h_agent(&st, carol, NULL);
	h_trust(&st, "alice", "bob");
	h_trust(&st, "alice", carol);
}

static void
teardown(void)
{
	h_stop_all(&st);
}

/* a signed POST with an idempotency key (and a TTL unless NULL); the
 * answer's status, with its JSON fields "status"/"state"/"messageId" */
static long
post_key(const char *to, const char *key, const char *body, const char *ttl, char *state,
    char *mid)
{
	char h_key[160], h_ttl[64];
	const char *extra[3] = { h_key, NULL, NULL };
	struct h_resp r;

	snprintf(h_key, sizeof(h_key), "X-Claw-Idempotency-Key: %s", key);
	if (ttl != NULL) {
		snprintf(h_ttl, sizeof(h_ttl), "X-Claw-Ttl-Seconds: %s", ttl);
		extra[1] = h_ttl;
	}
	ck_assert_int_eq(h_send(&st, "alice", to, body, strlen(body), extra, &r), 0);
	long status = r.status;
	cJSON *j = cJSON_Parse(r.body.data);
	ck_assert_msg(j != NULL, "answer %ld is not JSON: %s", status, r.body.data);
	if (state != NULL) {
		const char *s = cJSON_GetStringValue(cJSON_GetObjectItem(j, "state"));
		snprintf(state, 32, "%s", s ? s : "");
	}
	if (mid != NULL) {
		const char *m = cJSON_GetStringValue(cJSON_GetObjectItem(j, "messageId"));
		snprintf(mid, 64, "%s", m ? m : "");
	}
	cJSON_Delete(j);
	h_resp_free(&r);
	return status;
}

/* poll the duplicate's state until it is no longer `from`; the last state */
static void
wait_state_leaves(const char *to, const char *key, const char *body, const char *from,
    const char *want_mid, char *state)
{
	char mid[64];
	for (int i = 0; i < 150; i++) {
		ck_assert_int_eq(post_key(to, key, body, NULL, state, mid), 200);
		ck_assert_str_eq(mid, want_mid);
		if (strcmp(state, from) != 0)
			return;
		h_sleep_ms(100);
	}
}

START_TEST(duplicate_tells_the_true_state)
{
	char state[32], mid[64], dmid[64];

	/* bob is offline: a 1 s TTL passes in the queue */
	ck_assert_int_eq(post_key("bob", "k-expire", "short-lived", "1", state, mid), 202);
	ck_assert_int_eq(post_key("bob", "k-expire", "short-lived", NULL, state, dmid), 200);
	ck_assert_str_eq(dmid, mid);
	wait_state_leaves("bob", "k-expire", "short-lived", "queued", mid, state);
	ck_assert_str_eq(state, "expired");

	/* a message bob's connector takes reads as delivered */
	char hook[400], hook_url[128];
	int port = it_hook(&st, "hook-bob", hook, sizeof(hook), NULL);
	snprintf(hook_url, sizeof(hook_url), "http://127.0.0.1:%d/hook", port);
	it_connector(&st, "bob", hook_url);
	ck_assert_int_eq(post_key("bob", "k-deliver", "taken", NULL, state, mid), 202);
	ck_assert_int_eq(h_wait_lines(hook, 1, 30000), 1);
	wait_state_leaves("bob", "k-deliver", "taken", "queued", mid, state);
	ck_assert_str_eq(state, "delivered");
	/* the expired one still says so: nothing was delivered twice */
	ck_assert_int_eq(post_key("bob", "k-expire", "short-lived", NULL, state, NULL), 200);
	ck_assert_str_eq(state, "expired");
	ck_assert_int_eq(h_file_lines(hook), 1);
}
END_TEST

int
main(void)
{
	Suite *s = suite_create("idem");
	TCase *tc = tcase_create("exact");
	tcase_set_timeout(tc, 180);
	tcase_add_unchecked_fixture(tc, setup, teardown);
	tcase_add_test(tc, duplicate_tells_the_true_state);
	suite_add_tcase(s, tc);
	return it_run(s);
}
