/*
 * test_mc_roll.c - the collector's table of peer pairs per hour with a
 * day of many agents in it: it grows past its first size without losing a
 * count, the pairs answer gives the totals and sums of what matched and the
 * first `limit` in each order (newest hour then most failures; most
 * failures; a filter by agent), and the sweep drops hours older than
 * MC_PAIR_HOURS from memory, except one whose pairs are still to be
 * written. Links the collector's objects (not its main.c) and a real LMDB
 * store in a temporary directory.
 */
#include <check.h>
#include <ftw.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cJSON.h>

#include "../../services/metrics-collector/mc.h"
#include "unit.h"
#include "util.h"

#define NPAIRS 3000             /* per hour: more than the table's first 4096 chains / 2 */

static char tmpdir[256];
static struct mc m;
static uint64_t hour0;          /* the current hour's start */
static const int ago[] = { 50, 49, 1, 0 };  /* hours with pairs */

static int
rm_one(const char *path, const struct stat *sb, int flag, struct FTW *ftw)
{
	return remove(path);
}

/* pair i of an hour: "a-<i % 100>" -> "b-<i>", every 10th failed */
static void
roll(int hours_ago, int i)
{
	char s[16], r[16];
	uint64_t t = hour0 - (uint64_t)hours_ago * 3600000 + 1000;

	snprintf(s, sizeof(s), "a-%d", i % 100);
	snprintf(r, sizeof(r), "b-%d", i);
	mc_roll_pair(&m, s, strlen(s), r, strlen(r), t, i % 10 != 0);
}

static void
setup(void)
{
	const char *base = getenv("TMPDIR");

	snprintf(tmpdir, sizeof(tmpdir), "%s/test_mc_roll.XXXXXX", base ? base : "/tmp");
	ck_assert_ptr_nonnull(mkdtemp(tmpdir));
	memset(&m, 0, sizeof(m));
	m.roll_retention_h = 168;
	pthread_mutex_init(&m.mu, NULL);
	ck_assert_int_eq(store_open(tmpdir, 64 << 20, 4, STORE_NOSYNC, &m.st), CR_OK);
	ck_assert_int_eq(store_db(m.st, "roll", &m.db_roll), CR_OK);
	ck_assert_int_eq(mc_roll_init(&m), 0);
	hour0 = now_ms() - now_ms() % 3600000;
	for (size_t h = 0; h < sizeof(ago) / sizeof(ago[0]); h++)
		for (int i = 0; i < NPAIRS; i++)
			roll(ago[h], i);
	roll(0, 0);	/* a second failure for a-0 -> b-0 in the current hour */
	roll(0, 1);	/* a second delivery for a-1 -> b-1 */
}

static void
teardown(void)
{
	mc_roll_fini(&m);
	store_batch_free(m.pending);
	store_close(m.st);
	pthread_mutex_destroy(&m.mu);
	nftw(tmpdir, rm_one, 16, FTW_DEPTH | FTW_PHYS);
}

static double
jnum(const cJSON *o, const char *k)
{
	const cJSON *v = cJSON_GetObjectItemCaseSensitive(o, k);
	return cJSON_IsNumber(v) ? v->valuedouble : -1;
}

static const char *
jstr(const cJSON *o, const char *k)
{
	const cJSON *v = cJSON_GetObjectItemCaseSensitive(o, k);
	return cJSON_IsString(v) ? v->valuestring : "";
}

START_TEST(counts_survive_growth)
{
	/* 4 hours x NPAIRS distinct pairs, two of them counted twice */
	ck_assert_uint_eq(mc_roll_pairs_held(&m), 4 * NPAIRS);
	cJSON *o = mc_json_pairs(&m, 48, 5, NULL, MC_SORT_HOUR);
	/* hours 0 and 1 are in the last 48 h; 49 and 50 are not */
	ck_assert_int_eq((int)jnum(o, "total"), 2 * NPAIRS);
	ck_assert_int_eq((int)(jnum(o, "delivered") + jnum(o, "failed")), 2 * NPAIRS + 2);
	ck_assert_int_eq((int)jnum(o, "failed"), 2 * NPAIRS / 10 + 1);
	cJSON_Delete(o);
}
END_TEST

/* the first entries of each order */
static const struct {
	int sort;
	const char *q;
	int total;
	const char *sender, *recipient;
	int hours_ago, failed, delivered;
} orders[] = {
	{ MC_SORT_HOUR, NULL, 2 * NPAIRS, "a-0", "b-0", 0, 2, 0 },
	{ MC_SORT_HOUR, "", 2 * NPAIRS, "a-0", "b-0", 0, 2, 0 },
	{ MC_SORT_FAILED, NULL, 2 * NPAIRS, "a-0", "b-0", 0, 2, 0 },
	{ MC_SORT_VOLUME, NULL, 2 * NPAIRS, "a-0", "b-0", 0, 2, 0 },
	{ MC_SORT_HOUR, "b-2999", 2, "a-99", "b-2999", 0, 0, 1 },
	{ MC_SORT_FAILED, "b-2990", 2, "a-90", "b-2990", 0, 1, 0 },
};

START_TEST(first_in_order)
{
	cJSON *o = mc_json_pairs(&m, 48, 3, orders[_i].q, orders[_i].sort), *p;
	cJSON *a = cJSON_GetObjectItem(o, "pairs");

	ck_assert_int_eq((int)jnum(o, "total"), orders[_i].total);
	ck_assert_int_eq(cJSON_GetArraySize(a), orders[_i].total < 3 ? orders[_i].total : 3);
	p = cJSON_GetArrayItem(a, 0);
	ck_assert_str_eq(jstr(p, "sender"), orders[_i].sender);
	ck_assert_str_eq(jstr(p, "recipient"), orders[_i].recipient);
	ck_assert_int_eq((int64_t)jnum(p, "hourMs"), (int64_t)(hour0 - (uint64_t)orders[_i].hours_ago * 3600000));
	ck_assert_int_eq((int)jnum(p, "failed"), orders[_i].failed);
	ck_assert_int_eq((int)jnum(p, "delivered"), orders[_i].delivered);
	/* each next one comes after */
	for (int i = 1; i < cJSON_GetArraySize(a); i++) {
		cJSON *x = cJSON_GetArrayItem(a, i - 1), *y = cJSON_GetArrayItem(a, i);
		if (orders[_i].sort == MC_SORT_HOUR)
			ck_assert(jnum(x, "hourMs") > jnum(y, "hourMs") ||
			    (jnum(x, "hourMs") == jnum(y, "hourMs") && jnum(x, "failed") >= jnum(y, "failed")));
		if (orders[_i].sort == MC_SORT_FAILED)
			ck_assert(jnum(x, "failed") >= jnum(y, "failed"));
	}
	cJSON_Delete(o);
}
END_TEST

/* a page bigger than what matched; a page of one */
START_TEST(limits)
{
	cJSON *o = mc_json_pairs(&m, 1, 1000, NULL, MC_SORT_HOUR);
	ck_assert_int_eq((int)jnum(o, "total"), NPAIRS);
	ck_assert_int_eq(cJSON_GetArraySize(cJSON_GetObjectItem(o, "pairs")), 1000);
	cJSON_Delete(o);
	o = mc_json_pairs(&m, 48, 1, "nobody", MC_SORT_HOUR);
	ck_assert_int_eq((int)jnum(o, "total"), 0);
	ck_assert_int_eq(cJSON_GetArraySize(cJSON_GetObjectItem(o, "pairs")), 0);
	cJSON_Delete(o);
}
END_TEST

START_TEST(sweep_drops_old_hours)
{
	struct store_batch *b = store_batch_new();

	/* not written yet: nothing leaves */
	mc_roll_sweep(&m, b, 0);
	ck_assert_uint_eq(mc_roll_pairs_held(&m), 4 * NPAIRS);
	/* written, then swept: hours 49 and 50 leave memory */
	mc_roll_write(&m, b);
	mc_roll_sweep(&m, b, 0);
	ck_assert_uint_eq(mc_roll_pairs_held(&m), 2 * NPAIRS);
	/* an old hour touched again (a collector catching up) stays until written */
	roll(50, 7);
	mc_roll_sweep(&m, b, 0);
	ck_assert_uint_eq(mc_roll_pairs_held(&m), 2 * NPAIRS + 1);
	mc_roll_write(&m, b);
	mc_roll_sweep(&m, b, 0);
	ck_assert_uint_eq(mc_roll_pairs_held(&m), 2 * NPAIRS);
	store_batch_free(b);
	/* what is left still answers */
	cJSON *o = mc_json_pairs(&m, 48, 5, "b-2999", MC_SORT_HOUR);
	ck_assert_int_eq((int)jnum(o, "total"), 2);
	cJSON_Delete(o);
}
END_TEST

int
main(void)
{
	Suite *s = suite_create("mc_roll");
	TCase *tc = tcase_create("pairs");
	tcase_add_checked_fixture(tc, setup, teardown);
	tcase_add_test(tc, counts_survive_growth);
	tcase_add_loop_test(tc, first_in_order, 0, (int)(sizeof(orders) / sizeof(orders[0])));
	tcase_add_test(tc, limits);
	tcase_add_test(tc, sweep_drops_old_hours);
	suite_add_tcase(s, tc);
	return unit_run(s);
}
