/*
 * test_env.c - envelope encode/decode and validation; garbage never crashes.
 */
#include <check.h>
#include <stdlib.h>
#include <string.h>

#include "env.h"
#include "util.h"
#include "unit.h"

static char s_mid[ULID_LEN + 1];
static char s_corr[] = "corr-1";
static char s_from[] = "did:cdi:a.example:agent:1";
static char s_to[] = "bob";
static char s_ct[] = "application/json";
static uint8_t s_payload[] = "{\"hello\":\"world\"}";

static void
fill(Envelope *e)
{
	clawrelay__v1__envelope__init(e);
	ulid_new(s_mid);
	e->schema_version = ENV_SCHEMA;
	e->message_id = s_mid;
	e->correlation_id = s_corr;
	e->sender = s_from;
	e->recipient = s_to;
	e->content_type = s_ct;
	e->priority = CLAWRELAY__V1__PRIORITY__PRIORITY_CRITICAL;
	e->payload.data = s_payload;
	e->payload.len = sizeof(s_payload) - 1;
	e->created_at_ms = 1700000000000ULL;
	e->expires_at_ms = 1700086400000ULL;
}

START_TEST(roundtrip)
{
	Envelope e, *d = NULL;
	void *buf;
	size_t len;
	const char *why = NULL;
	fill(&e);
	ck_assert_int_eq(env_pack(&e.base, &buf, &len), CR_OK);
	ck_assert_int_eq(env_unpack(buf, len, &d, &why), CR_OK);
	ck_assert_str_eq(d->message_id, s_mid);
	ck_assert_str_eq(d->correlation_id, "corr-1");
	ck_assert_str_eq(d->sender, s_from);
	ck_assert_str_eq(d->recipient, "bob");
	ck_assert_int_eq(d->priority, CLAWRELAY__V1__PRIORITY__PRIORITY_CRITICAL);
	ck_assert_uint_eq(d->payload.len, sizeof(s_payload) - 1);
	ck_assert_int_eq(memcmp(d->payload.data, s_payload, d->payload.len), 0);
	ck_assert_uint_eq(d->expires_at_ms, 1700086400000ULL);
	env_free(d);
	free(buf);
}
END_TEST

static char bad_space[] = "a b", bad_slash[] = "a/b", bad_star[] = "a*", bad_gt[] = "a>",
	bad_ctl[] = "a\x01", bad_empty[] = "", bad_ulid[] = "not-a-ulid";
static char long_id[130];

START_TEST(invalid_fields)
{
	Envelope e;
	const char *why = NULL;
	memset(long_id, 'a', 129);
	long_id[129] = '\0';
	char *bad_ids[] = { bad_space, bad_slash, bad_star, bad_gt, bad_ctl, bad_empty, long_id };
	for (size_t i = 0; i < sizeof(bad_ids) / sizeof(bad_ids[0]); i++) {
		fill(&e);
		e.recipient = bad_ids[i];
		ck_assert_int_eq(env_validate(&e, &why), CR_ERR_INVALID);
		ck_assert_ptr_nonnull(why);
		fill(&e);
		e.sender = bad_ids[i];
		ck_assert_int_eq(env_validate(&e, &why), CR_ERR_INVALID);
		fill(&e);
		e.correlation_id = bad_ids[i];
		ck_assert_int_eq(env_validate(&e, &why), CR_ERR_INVALID);
	}
	fill(&e);
	e.message_id = bad_ulid;
	ck_assert_int_eq(env_validate(&e, &why), CR_ERR_INVALID);
	fill(&e);
	e.priority = 7;
	ck_assert_int_eq(env_validate(&e, &why), CR_ERR_INVALID);
	fill(&e);
	long_id[128] = '\0';	/* exactly 128 is allowed */
	e.recipient = long_id;
	ck_assert_int_eq(env_validate(&e, &why), CR_OK);
}
END_TEST

START_TEST(unknown_version)
{
	Envelope e, *d = NULL;
	void *buf;
	size_t len;
	fill(&e);
	e.schema_version = 2;
	ck_assert_int_eq(env_pack(&e.base, &buf, &len), CR_OK);
	ck_assert_int_eq(env_unpack(buf, len, &d, NULL), CR_ERR_VERSION);
	ck_assert_ptr_null(d);
	free(buf);
}
END_TEST

START_TEST(garbage_never_crashes)
{
	uint8_t buf[512];
	int refused = 0;
	for (int i = 0; i < 20000; i++) {
		size_t n = rand_u64() % sizeof(buf);
		for (size_t j = 0; j < n; j++)
			buf[j] = (uint8_t)rand_u64();
		Envelope *d = NULL;
		if (env_unpack(buf, n, &d, NULL) != CR_OK)
			refused++;
		env_free(d);
		ProtobufCMessage *m = NULL;
		if (env_unpack_msg(&clawrelay__v1__frame__descriptor, buf, n, &m) == CR_OK)
			protobuf_c_message_free_unpacked(m, NULL);
	}
	ck_assert_int_gt(refused, 19000);
}
END_TEST

START_TEST(names)
{
	ck_assert_int_eq(env_priority_parse("critical"), CLAWRELAY__V1__PRIORITY__PRIORITY_CRITICAL);
	ck_assert_int_eq(env_priority_parse("low"), CLAWRELAY__V1__PRIORITY__PRIORITY_LOW);
	ck_assert_int_eq(env_priority_parse("normal"), CLAWRELAY__V1__PRIORITY__PRIORITY_NORMAL);
	ck_assert_int_eq(env_priority_parse("Normal"), -1);
	ck_assert_int_eq(env_priority_parse("urgent"), -1);
	ck_assert_int_eq(env_lane(CLAWRELAY__V1__PRIORITY__PRIORITY_CRITICAL), 0);
	ck_assert_int_eq(env_lane(CLAWRELAY__V1__PRIORITY__PRIORITY_NORMAL), 1);
	ck_assert_int_eq(env_lane(CLAWRELAY__V1__PRIORITY__PRIORITY_LOW), 2);
	ck_assert_str_eq(env_failure_reason_name(CLAWRELAY__V1__FAILURE_REASON__FAIL_EXPIRED), "expired");
	ck_assert_str_eq(env_failure_reason_name(CLAWRELAY__V1__FAILURE_REASON__FAIL_DEAD_LETTERED), "dead_lettered");
	ck_assert_str_eq(env_hop_name(CLAWRELAY__V1__HOP_KIND__HOP_GATEWAY_ACCEPTED), "gateway_accepted");
	ck_assert_str_eq(env_hop_name(999), "unknown");
}
END_TEST

int
main(void)
{
	Suite *s = suite_create("env");
	TCase *tc = tcase_create("core");
	tcase_set_timeout(tc, 60);
	tcase_add_test(tc, roundtrip);
	tcase_add_test(tc, invalid_fields);
	tcase_add_test(tc, unknown_version);
	tcase_add_test(tc, garbage_never_crashes);
	tcase_add_test(tc, names);
	suite_add_tcase(s, tc);
	return unit_run(s);
}
