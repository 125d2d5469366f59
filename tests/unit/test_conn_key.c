/*
 * test_conn_key.c - the connector's deterministic idempotency keys
 * (services/connector/conn_key.c): known answers (the derivation must not
 * drift between versions: the relay remembers keys for 24 h), what changes
 * the key (sender, recipient, the agent's correlation ID, event ID, payload)
 * and what does not, and refusals.
 */
#include <check.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "auth.h"
#include "../../services/connector/conn_key.h"
#include "unit.h"

/* expected values computed independently (Python hashlib, the layout of conn_key.h) */
static const struct {
	const char *sender, *recipient, *corr, *event, *payload, *want;
} known[] = {
	{ "alice", "bob", NULL, NULL, "{\"text\":\"hi\"}", "ck1-7166247a6af2e138bdda09c1d271c176" },
	{ "alice", "bob", NULL, "evt-1", "{\"text\":\"hi\"}",
	  "ck1-9f918ea0a5ae7f0e548c1d4cb36d1d9d" },
	{ "did:cdi:example.com:agent:01J", "b", NULL, NULL, "",
	  "ck1-02fe9866bd67d141e97ca8ab478a5630" },
	{ "alice", "bob", "corr-7", "evt-1", "{\"text\":\"hi\"}",
	  "ck1-e67d0ca3151c80a80c231d0d5e1d0a6b" },
};

START_TEST(known_answers)
{
	char k[CONN_KEY_SIZE];
	const char *p = known[_i].payload;

	ck_assert_int_eq(conn_idem_key(known[_i].sender, known[_i].recipient, known[_i].corr,
	    known[_i].event, p, strlen(p), k), CR_OK);
	ck_assert_str_eq(k, known[_i].want);
	ck_assert_uint_eq(strlen(k), CONN_KEY_LEN);
	ck_assert_int_eq(auth_check_idempotency_key(k, NULL), CR_OK);
}
END_TEST

/* each row differs from the base (alice, bob, no correlation ID, no event,
 * "payload") in one way; every one must give another key */
static const struct {
	const char *name, *sender, *recipient, *corr, *event, *payload;
} differ[] = {
	{ "sender", "alicf", "bob", NULL, NULL, "payload" },
	{ "recipient", "alice", "bob2", NULL, NULL, "payload" },
	{ "payload byte", "alice", "bob", NULL, NULL, "paylaod" },
	{ "payload length", "alice", "bob", NULL, NULL, "payload " },
	{ "event ID given", "alice", "bob", NULL, "e1", "payload" },
	{ "event ID empty vs absent", "alice", "bob", NULL, "", "payload" },
	{ "correlation ID given", "alice", "bob", "c1", NULL, "payload" },
	{ "correlation ID in the event's place", "alice", "bob", "e1", NULL, "payload" },
	{ "field boundary moved", "alic", "ebob", NULL, NULL, "payload" },
	{ "sender and recipient swapped", "bob", "alice", NULL, NULL, "payload" },
};

START_TEST(every_field_counts)
{
	char base[CONN_KEY_SIZE], k[CONN_KEY_SIZE];

	ck_assert_int_eq(conn_idem_key("alice", "bob", NULL, NULL, "payload", 7, base), CR_OK);
	ck_assert_int_eq(conn_idem_key(differ[_i].sender, differ[_i].recipient, differ[_i].corr,
	    differ[_i].event, differ[_i].payload, strlen(differ[_i].payload), k), CR_OK);
	ck_assert_msg(strcmp(base, k) != 0, "%s: same key %s", differ[_i].name, k);
}
END_TEST

START_TEST(same_input_same_key)
{
	char a[CONN_KEY_SIZE], b[CONN_KEY_SIZE];
	unsigned char bin[300];

	for (size_t i = 0; i < sizeof(bin); i++)
		bin[i] = (unsigned char)(i * 7);	/* NUL bytes included */
	ck_assert_int_eq(conn_idem_key("a", "b", "c", "ev", bin, sizeof(bin), a), CR_OK);
	ck_assert_int_eq(conn_idem_key("a", "b", "c", "ev", bin, sizeof(bin), b), CR_OK);
	ck_assert_str_eq(a, b);
	/* a NUL in the payload is data, not an end */
	bin[5] ^= 1;
	ck_assert_int_eq(conn_idem_key("a", "b", "c", "ev", bin, sizeof(bin), b), CR_OK);
	ck_assert_str_ne(a, b);
	/* an empty payload needs no pointer */
	ck_assert_int_eq(conn_idem_key("a", "b", NULL, NULL, NULL, 0, a), CR_OK);
	ck_assert_int_eq(conn_idem_key("a", "b", NULL, NULL, "", 0, b), CR_OK);
	ck_assert_str_eq(a, b);
}
END_TEST

START_TEST(refusals)
{
	char k[CONN_KEY_SIZE], big[AUTH_IDEM_KEY_MAX + 2];

	ck_assert_int_eq(conn_idem_key(NULL, "b", NULL, NULL, "x", 1, k), CR_ERR_INVALID);
	ck_assert_int_eq(conn_idem_key("a", NULL, NULL, NULL, "x", 1, k), CR_ERR_INVALID);
	ck_assert_int_eq(conn_idem_key("a", "b", NULL, NULL, NULL, 3, k), CR_ERR_INVALID);
	memset(big, 'e', sizeof(big) - 1);
	big[sizeof(big) - 1] = '\0';
	ck_assert_int_eq(conn_idem_key("a", "b", NULL, big, "x", 1, k), CR_ERR_INVALID);
	big[AUTH_IDEM_KEY_MAX] = '\0';
	ck_assert_int_eq(conn_idem_key("a", "b", NULL, big, "x", 1, k), CR_OK);
	memset(big, 'a', AUTH_ID_MAX + 1);
	big[AUTH_ID_MAX + 1] = '\0';
	ck_assert_int_eq(conn_idem_key(big, "b", NULL, NULL, "x", 1, k), CR_ERR_INVALID);
	ck_assert_int_eq(conn_idem_key("a", big, NULL, NULL, "x", 1, k), CR_ERR_INVALID);
	ck_assert_int_eq(conn_idem_key("a", "b", big, NULL, "x", 1, k), CR_ERR_INVALID);
}
END_TEST

int
main(void)
{
	Suite *s = suite_create("conn_key");
	TCase *tc = tcase_create("derivation");

	tcase_add_loop_test(tc, known_answers, 0, (int)(sizeof(known) / sizeof(known[0])));
	tcase_add_loop_test(tc, every_field_counts, 0, (int)(sizeof(differ) / sizeof(differ[0])));
	tcase_add_test(tc, same_input_same_key);
	tcase_add_test(tc, refusals);
	suite_add_tcase(s, tc);
	return unit_run(s);
}
