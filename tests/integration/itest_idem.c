/*
 * itest_idem.c - idempotency keys are exact.
 *
 * - The same key for another recipient is a 409 whatever the recipients'
 *   partitions (it used to be one only when both hashed to one partition),
 *   also after relay-session restarts; the same key, recipient and body is
 *   still a duplicate (200, the original's message ID).
 * - A duplicate of a message that has left the queue is answered with what
 *   became of it: "expired" for one whose TTL passed, "delivered" for one
 *   the recipient's connector took (it used to say "delivered" for both).
 * - The same key for another recipient is a 409 whatever the recipients'
 *   partitions (it used to be one only when both hashed to one partition),
 *   also after relay-session restarts; the same key, recipient and body is
 *   still a duplicate (200, the original's message ID).
 */
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "it_common.h"
#include "util.h"

#define PARTITIONS 16	/* the default */

static struct h_stack st;
static char carol[64], dave[64];

static void
setup(void)
{
	h_stack_init(&st, "idem");
	h_nats_start(&st);
	h_start_services(&st, NULL);
	h_agent(&st, "alice", NULL);
	h_agent(&st, "bob", NULL);
	/* partitions: bob's is not alice's; carol's is alice's own (the key's
	 * owner checks locally); dave's is a third one (both ask alice's) */
	uint32_t pa = fnv1a32("alice") % PARTITIONS, pb = fnv1a32("bob") % PARTITIONS;
	ck_assert_uint_ne(pa, pb);
	carol[0] = dave[0] = '\0';
	for (int i = 0; i < 1000 && (!carol[0] || !dave[0]); i++) {
		char id[64];
		snprintf(id, sizeof(id), "agent-%d", i);
		uint32_t p = fnv1a32(id) % PARTITIONS;
		if (!carol[0] && p == pa)
			snprintf(carol, sizeof(carol), "%s", id);
		else if (!dave[0] && p != pa && p != pb)
			snprintf(dave, sizeof(dave), "%s", id);
	}
	ck_assert(carol[0] && dave[0]);
	h_agent(&st, carol, NULL);
	h_agent(&st, dave, NULL);
	h_trust(&st, "alice", "bob");
	h_trust(&st, "alice", carol);
	h_trust(&st, "alice", dave);
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

START_TEST(another_recipient_conflicts_across_partitions)
{
	char state[32], mid[64], dmid[64];

	ck_assert_int_eq(post_key("bob", "k-shared", "hello", NULL, state, mid), 202);
	/* same key, another recipient in another partition: 409, nothing queued */
	ck_assert_int_eq(post_key(carol, "k-shared", "hello", NULL, NULL, NULL), 409);
	ck_assert_int_eq(post_key(dave, "k-shared", "hello", NULL, NULL, NULL), 409);
	/* the other way round too: a key first used for carol, in the sender's
	 * own partition */
	ck_assert_int_eq(post_key(carol, "k-carol", "hi", NULL, NULL, NULL), 202);
	ck_assert_int_eq(post_key("bob", "k-carol", "hi", NULL, NULL, NULL), 409);
	ck_assert_int_eq(post_key(dave, "k-carol", "hi", NULL, NULL, NULL), 409);
	/* and one first used for dave */
	ck_assert_int_eq(post_key(dave, "k-dave", "yo", NULL, NULL, NULL), 202);
	ck_assert_int_eq(post_key("bob", "k-dave", "yo", NULL, NULL, NULL), 409);
	ck_assert_int_eq(post_key(carol, "k-dave", "yo", NULL, NULL, NULL), 409);
	/* the original recipient still gets the duplicate answer */
	ck_assert_int_eq(post_key("bob", "k-shared", "hello", NULL, state, dmid), 200);
	ck_assert_str_eq(dmid, mid);

	/* after relay-session restarts (kill -9: nothing flushed on the way out) */
	struct h_proc *rs = h_find(&st, "relay-session");
	ck_assert_ptr_nonnull(rs);
	h_kill(rs, SIGKILL);
	char data[400];
	snprintf(data, sizeof(data), "CLAWRELAY_DATA_DIR=%s/relay-session", st.dir);
	const char *env[] = { data, NULL };
	h_spawn(&st, "relay-session-2", "clawrelay-relay-session", h_free_port(), env, NULL);
	long status = 503;
	for (int i = 0; i < 200 && status == 503; i++) {
		status = post_key(carol, "k-shared", "hello", NULL, NULL, NULL);
		if (status == 503)
			h_sleep_ms(100);	/* the new replica takes the leases */
	}
	ck_assert_int_eq(status, 409);
	ck_assert_int_eq(post_key("bob", "k-shared", "hello", NULL, state, dmid), 200);
	ck_assert_str_eq(dmid, mid);
	ck_assert_int_eq(post_key("bob", "k-carol", "hi", NULL, NULL, NULL), 409);
	ck_assert_int_eq(post_key(dave, "k-shared", "hello", NULL, NULL, NULL), 409);
	ck_assert_int_eq(post_key(carol, "k-dave", "yo", NULL, NULL, NULL), 409);
	/* a new key to a recipient in a third partition is still taken */
	ck_assert_int_eq(post_key(dave, "k-new", "fresh", NULL, NULL, NULL), 202);
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
	tcase_add_test(tc, another_recipient_conflicts_across_partitions);
	suite_add_tcase(s, tc);
	return it_run(s);
}
