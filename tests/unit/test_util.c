/*
 * test_util.c - ULIDs, subject tokens, partitions, backoff, traceparent,
 * string buffers.
 */
#include <check.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "util.h"
#include "unit.h"

START_TEST(ulid_format_and_order)
{
	char prev[ULID_LEN + 1] = "", cur[ULID_LEN + 1];
	uint64_t t0 = now_ms();
	for (int i = 0; i < 100000; i++) {
		ulid_new(cur);
		ck_assert_int_eq(strlen(cur), 26);
		ck_assert(ulid_valid(cur));
		/* strictly increasing, even within one millisecond */
		ck_assert_msg(strcmp(prev, cur) < 0, "%s !< %s", prev, cur);
		memcpy(prev, cur, sizeof(cur));
	}
	uint64_t t = ulid_time_ms(cur);
	ck_assert(t >= t0 && t <= now_ms());
}
END_TEST

static void *
ulid_thread(void *arg)
{
	char (*ids)[ULID_LEN + 1] = arg;
	for (int i = 0; i < 5000; i++)
		ulid_new(ids[i]);
	return NULL;
}

static int
cmp_id(const void *a, const void *b)
{
	return strcmp(a, b);
}

START_TEST(ulid_unique_across_threads)
{
	enum { T = 4, N = 5000 };
	char (*ids)[ULID_LEN + 1] = calloc(T * N, ULID_LEN + 1);
	pthread_t th[T];
	for (int i = 0; i < T; i++)
		pthread_create(&th[i], NULL, ulid_thread, ids + i * N);
	for (int i = 0; i < T; i++)
		pthread_join(th[i], NULL);
	qsort(ids, T * N, ULID_LEN + 1, cmp_id);
	for (int i = 1; i < T * N; i++)
		ck_assert_str_ne(ids[i - 1], ids[i]);
	free(ids);
}
END_TEST

START_TEST(ulid_invalid)
{
	static const char *bad[] = { "", "01ARZ3NDEKTSV4RRFFQ69G5FA", "01ARZ3NDEKTSV4RRFFQ69G5FAVX",
		"01ARZ3NDEKTSV4RRFFQ69G5FAU", "81ARZ3NDEKTSV4RRFFQ69G5FAV", "01arz3ndektsv4rrffq69g5fav" };
	for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++)
		ck_assert_msg(!ulid_valid(bad[i]), "%s", bad[i]);
	ck_assert(ulid_valid("01ARZ3NDEKTSV4RRFFQ69G5FAV"));
}
END_TEST

static const struct {
	const char *id, *tok;
} tokens[] = {
	{ "alice", "alice" },
	{ "did:cdi:example.com:agent:01J", "did:cdi:example%2Ecom:agent:01J" },
	{ "a.b", "a%2Eb" },
	{ "a*b>c", "a%2Ab%3Ec" },
	{ "x y", "x%20y" },
	{ "u@h+t", "u%40h%2Bt" },
	{ "a%b", "a%25b" },
	{ "tab\tx", "tab%09x" },
};

START_TEST(subject_tokens)
{
	char out[512], back[512];
	for (size_t i = 0; i < sizeof(tokens) / sizeof(tokens[0]); i++) {
		ck_assert_uint_gt(subj_token(tokens[i].id, out, sizeof(out)), 0);
		ck_assert_str_eq(out, tokens[i].tok);
		/* no token may contain a subject separator or wildcard */
		ck_assert_ptr_null(strpbrk(out, ".*> \t"));
		ck_assert_uint_gt(subj_token_decode(out, back, sizeof(back)), 0);
		ck_assert_str_eq(back, tokens[i].id);
	}
	ck_assert_uint_eq(subj_token("abc", out, 3), 0);	/* too small */
	ck_assert_uint_eq(subj_token("", out, sizeof(out)), 0);
	ck_assert_uint_eq(subj_token_decode("a%2", back, sizeof(back)), 0);
	ck_assert_uint_eq(subj_token_decode("a.b", back, sizeof(back)), 0);
}
END_TEST

START_TEST(kv_tokens)
{
	char out[512];
	ck_assert_uint_gt(kv_token("did:x:a.b@c", out, sizeof(out)), 0);
	ck_assert_str_eq(out, "did=3Ax=3Aa=2Eb=40c");
	ck_assert_uint_gt(kv_token("plain_id-1", out, sizeof(out)), 0);
	ck_assert_str_eq(out, "plain_id-1");
	/* only characters JetStream allows in a key, and no '.' separator */
	ck_assert_uint_gt(kv_token("a b/c*d>e%f+g", out, sizeof(out)), 0);
	for (const char *p = out; *p; p++)
		ck_assert(strchr("=_-", *p) || (*p >= '0' && *p <= '9') || (*p >= 'A' && *p <= 'Z') ||
		    (*p >= 'a' && *p <= 'z'));
	ck_assert_uint_eq(kv_token("", out, sizeof(out)), 0);
	ck_assert_uint_eq(kv_token("abc", out, 3), 0);
}
END_TEST

START_TEST(partitions)
{
	/* FNV-1a reference values */
	ck_assert_uint_eq(fnv1a32(""), 2166136261u);
	ck_assert_uint_eq(fnv1a32("a"), 0xe40c292cu);
	ck_assert_uint_eq(fnv1a32("foobar"), 0xbf9cf968u);
	unsigned counts[16] = { 0 };
	char id[32];
	for (int i = 0; i < 16000; i++) {
		snprintf(id, sizeof(id), "agent-%d", i);
		uint32_t p = partition_of(id, 16);
		ck_assert_uint_lt(p, 16);
		counts[p]++;
	}
	for (int i = 0; i < 16; i++)
		ck_assert_msg(counts[i] > 800 && counts[i] < 1200, "partition %d got %u", i, counts[i]);
}
END_TEST

START_TEST(backoff_bounds)
{
	for (unsigned a = 0; a < 40; a++) {
		uint64_t d = 200;
		for (unsigned i = 0; i < a && d < 30000; i++)
			d *= 2;
		if (d > 30000)
			d = 30000;
		uint64_t lo = ~0ULL, hi = 0;
		for (int i = 0; i < 2000; i++) {
			uint64_t v = backoff_ms(a, 200, 30000);
			ck_assert_uint_ge(v, d / 2);
			ck_assert_uint_le(v, d);
			if (v < lo)
				lo = v;
			if (v > hi)
				hi = v;
		}
		/* jitter: the spread covers most of [d/2, d] */
		ck_assert_uint_gt(hi - lo, d / 4);
	}
}
END_TEST

START_TEST(traceparent)
{
	char t[33], s[17], out[56];
	unsigned f;
	const char *ok = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
	ck_assert_int_eq(traceparent_parse(ok, t, s, &f), 0);
	ck_assert_str_eq(t, "4bf92f3577b34da6a3ce929d0e0e4736");
	ck_assert_str_eq(s, "00f067aa0ba902b7");
	ck_assert_uint_eq(f, 1);
	traceparent_format(out, t, s, f);
	ck_assert_str_eq(out, ok);
	static const char *bad[] = {
		"", "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7",
		"00-00000000000000000000000000000000-00f067aa0ba902b7-01",
		"00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
		"00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
		"01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
		"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-0g",
	};
	for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++)
		ck_assert_msg(traceparent_parse(bad[i], t, s, &f) < 0, "%s", bad[i]);
}
END_TEST

START_TEST(strbuf_grows)
{
	struct strbuf sb;
	sb_init(&sb);
	for (int i = 0; i < 1000; i++)
		ck_assert_int_eq(sb_printf(&sb, "%04d,", i), 0);
	ck_assert_uint_eq(sb.len, 5000);
	ck_assert_int_eq(strncmp(sb.data + 4995, "0999,", 5), 0);
	ck_assert_int_eq(sb.data[sb.len], '\0');
	sb_free(&sb);
	ck_assert_ptr_null(sb.data);
}
END_TEST

int
main(void)
{
	Suite *s = suite_create("util");
	TCase *tc = tcase_create("core");
	tcase_set_timeout(tc, 30);
	tcase_add_test(tc, ulid_format_and_order);
	tcase_add_test(tc, ulid_unique_across_threads);
	tcase_add_test(tc, ulid_invalid);
	tcase_add_test(tc, subject_tokens);
	tcase_add_test(tc, kv_tokens);
	tcase_add_test(tc, partitions);
	tcase_add_test(tc, backoff_bounds);
	tcase_add_test(tc, traceparent);
	tcase_add_test(tc, strbuf_grows);
	suite_add_tcase(s, tc);
	return unit_run(s);
}
