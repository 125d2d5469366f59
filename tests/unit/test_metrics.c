/*
 * test_metrics.c - the metric registry: histograms in the text format,
 * families kept together whatever the registration order, the bus snapshot
 * (deltas, not totals), and quantiles of known distributions.
 */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "metrics.h"
#include "unit.h"

START_TEST(histogram_text)
{
	struct strbuf sb;
	static const double b[] = { 0.001, 0.01, 0.1 };
	struct metric *h = metric_histogram("clawrelay_t_seconds", "op=\"get\"", "t", b, 3);

	metric_observe(h, 0.0005);
	metric_observe(h, 0.005);
	metric_observe(h, 0.005);
	metric_observe_us(h, 50000);
	metric_observe(h, 3);
	ck_assert_int_eq(metric_value(h), 5);
	sb_init(&sb);
	metrics_render(&sb);
	ck_assert_ptr_nonnull(strstr(sb.data, "# TYPE clawrelay_t_seconds histogram\n"
	    "clawrelay_t_seconds_bucket{op=\"get\",le=\"0.001\"} 1\n"
	    "clawrelay_t_seconds_bucket{op=\"get\",le=\"0.01\"} 3\n"
	    "clawrelay_t_seconds_bucket{op=\"get\",le=\"0.1\"} 4\n"
	    "clawrelay_t_seconds_bucket{op=\"get\",le=\"+Inf\"} 5\n"
	    "clawrelay_t_seconds_sum{op=\"get\"} 3.060500\n"
	    "clawrelay_t_seconds_count{op=\"get\"} 5\n"));
	sb_free(&sb);
	metrics_free_all();
}
END_TEST

START_TEST(families_together)
{
	struct strbuf sb;

	metric_add(metric_counter("clawrelay_a_total", "k=\"1\"", "a"), 1);
	metric_set(metric_gauge("clawrelay_b", NULL, "b"), 2);
	metric_add(metric_counter("clawrelay_a_total", "k=\"2\"", "a"), 3);
	sb_init(&sb);
	metrics_render(&sb);
	ck_assert_ptr_nonnull(strstr(sb.data, "# TYPE clawrelay_a_total counter\n"
	    "clawrelay_a_total{k=\"1\"} 1\nclawrelay_a_total{k=\"2\"} 3\n# HELP clawrelay_b b\n"));
	sb_free(&sb);
	metrics_free_all();
}
END_TEST

static cJSON *
row(cJSON *arr, const char *name, const char *labels)
{
	cJSON *r;
	cJSON_ArrayForEach(r, arr) {
		if (strcmp(cJSON_GetArrayItem(r, 0)->valuestring, name) == 0 &&
		    strcmp(cJSON_GetArrayItem(r, 1)->valuestring, labels) == 0)
			return r;
	}
	return NULL;
}

START_TEST(snapshot_deltas)
{
	struct metric *c = metric_counter("clawrelay_m_total", "r=\"x\"", "m");
	struct metric *g = metric_gauge("clawrelay_depth", "p=\"0\"", "d");
	struct metric *h = metric_histogram("clawrelay_l_seconds", NULL, "l", NULL, 0);
	cJSON *o = cJSON_CreateObject(), *r;

	metric_add(c, 5);
	metric_set(g, 7);
	metric_observe(h, 0.002);
	metrics_snapshot(o);
	r = row(cJSON_GetObjectItem(o, "c"), "clawrelay_m_total", "r=\"x\"");
	ck_assert_ptr_nonnull(r);
	ck_assert_int_eq(cJSON_GetArrayItem(r, 2)->valueint, 5);
	r = row(cJSON_GetObjectItem(o, "h"), "clawrelay_l_seconds", "");
	ck_assert_ptr_nonnull(r);
	ck_assert_int_eq(cJSON_GetArrayItem(r, 5)->valueint, 1);
	cJSON_Delete(o);

	/* nothing moved: no counter or histogram row; the gauge is always there */
	o = cJSON_CreateObject();
	metrics_snapshot(o);
	ck_assert_int_eq(cJSON_GetArraySize(cJSON_GetObjectItem(o, "c")), 0);
	ck_assert_int_eq(cJSON_GetArraySize(cJSON_GetObjectItem(o, "h")), 0);
	r = row(cJSON_GetObjectItem(o, "g"), "clawrelay_depth", "p=\"0\"");
	ck_assert_int_eq(cJSON_GetArrayItem(r, 2)->valueint, 7);
	cJSON_Delete(o);

	metric_add(c, 2);
	o = cJSON_CreateObject();
	metrics_snapshot(o);
	r = row(cJSON_GetObjectItem(o, "c"), "clawrelay_m_total", "r=\"x\"");
	ck_assert_int_eq(cJSON_GetArrayItem(r, 2)->valueint, 2);
	cJSON_Delete(o);
	metrics_free_all();
}
END_TEST

/* A known distribution: 10,000 latencies uniform over 0..200 ms. The
 * quantiles from the default buckets must be within the bucket that holds
 * the true value; stated tolerance: 25 % of the true value (the buckets
 * around 100-200 ms are 100 ms..250 ms wide, and interpolation inside them
 * assumes a uniform spread, which this is). */
START_TEST(quantile_known_distribution)
{
	int nb;
	const double *b = metric_latency_bounds(&nb);
	struct metric *h = metric_histogram("clawrelay_q_seconds", NULL, "q", NULL, 0);
	uint64_t counts[METRIC_MAX_BOUNDS + 1] = { 0 };
	static const double qs[] = { 0.5, 0.95, 0.99 };

	for (int i = 0; i < 10000; i++) {
		double v = 0.2 * (i + 0.5) / 10000;
		int k = 0;
		metric_observe(h, v);
		while (k < nb && v > b[k])
			k++;
		counts[k]++;
	}
	for (size_t i = 0; i < sizeof(qs) / sizeof(qs[0]); i++) {
		double want = 0.2 * qs[i], got = hist_quantile(b, counts, nb, qs[i]);
		ck_assert_msg(fabs(got - want) <= 0.25 * want, "q%.2f: got %.4f want %.4f", qs[i], got, want);
	}
	/* a single value: every quantile inside its bucket */
	memset(counts, 0, sizeof(counts));
	counts[5] = 1;
	ck_assert(hist_quantile(b, counts, nb, 0.99) > b[4] && hist_quantile(b, counts, nb, 0.99) <= b[5]);
	/* empty: 0; all beyond the last bound: the last bound */
	memset(counts, 0, sizeof(counts));
	ck_assert(hist_quantile(b, counts, nb, 0.5) == 0);
	counts[nb] = 3;
	ck_assert(hist_quantile(b, counts, nb, 0.5) == b[nb - 1]);
	metrics_free_all();
}
END_TEST

int
main(void)
{
	Suite *s = suite_create("metrics");
	TCase *tc = tcase_create("core");
	tcase_add_test(tc, histogram_text);
	tcase_add_test(tc, families_together);
	tcase_add_test(tc, snapshot_deltas);
	tcase_add_test(tc, quantile_known_distribution);
	suite_add_tcase(s, tc);
	return unit_run(s);
}
