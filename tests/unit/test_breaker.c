/*
 * test_breaker.c - the circuit breaker: when it opens and when not, the one
 * probe, backoff and its cap, the sliding window, the change callback, the
 * snapshot, and many threads at once.
 */
#include <check.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "breaker.h"
#include "unit.h"

static struct brk_config
cfg_of(uint32_t consecutive, uint32_t pct, uint32_t min_calls, uint32_t window_ms)
{
	struct brk_config c;
	brk_config_default(&c);
	c.consecutive = consecutive;
	c.failure_pct = pct;
	c.min_calls = min_calls;
	c.window_ms = window_ms;
	return c;
}

/* Results fed one a millisecond ('F' failure, 'S' success); the state after
 * each must match ('C' closed, 'O' open). */
static const struct {
	const char *name;
	uint32_t consecutive, pct, min_calls;
	const char *results, *states;
} open_cases[] = {
	{ "opens at exactly 3 in a row", 3, 0, 0, "FFF", "CCO" },
	{ "a success resets the run", 3, 0, 0, "FFSFFSFFF", "CCCCCCCCO" },
	{ "5 in a row by default", 5, 0, 0, "FFFFF", "CCCCO" },
	{ "ratio waits for the minimum volume", 0, 50, 10, "FFFFFFFFFF", "CCCCCCCCCO" },
	{ "ratio below the share stays closed", 0, 50, 10, "SSSSSSFFFF", "CCCCCCCCCC" },
	{ "ratio at exactly the share opens", 0, 50, 4, "SSSSSSFFFFFF", "CCCCCCCCCCCO" },
	{ "ratio 30% over 20 calls", 0, 30, 20, "SSSSSSSSSSSSSSFFFFFF", "CCCCCCCCCCCCCCCCCCCO" },
	{ "either rule: the run first", 3, 90, 100, "SSFFF", "CCCCO" },
	{ "either rule: the ratio first", 4, 50, 6, "FSFSFF", "CCCCCO" },
	{ "both rules off never opens", 0, 0, 0, "FFFFFFFFFFFFFFFFFFFF", "CCCCCCCCCCCCCCCCCCCC" },
};

START_TEST(opens_when_and_only_when)
{
	struct brk_config c = cfg_of(open_cases[_i].consecutive, open_cases[_i].pct,
	    open_cases[_i].min_calls, 60000);
	struct brk b;
	ck_assert_int_eq(brk_init(&b, &c, NULL, NULL), CR_OK);
	const char *r = open_cases[_i].results, *want = open_cases[_i].states;
	ck_assert_uint_eq(strlen(r), strlen(want));
	for (size_t k = 0; r[k]; k++) {
		uint64_t t = 1000 + k;
		ck_assert_msg(brk_allow(&b, t) == BRK_GO, "%s: refused at result %zu", open_cases[_i].name, k);
		if (r[k] == 'F')
			brk_failure(&b, t);
		else
			brk_success(&b, t);
		struct brk_snap s;
		brk_snapshot(&b, t, &s);
		enum brk_state exp = want[k] == 'O' ? BRK_OPEN : BRK_CLOSED;
		ck_assert_msg(s.state == exp, "%s: after result %zu state %s", open_cases[_i].name, k,
		    s.state_name);
	}
	brk_fini(&b);
}
END_TEST

START_TEST(refuses_while_open_then_one_probe)
{
	struct brk_config c = cfg_of(2, 0, 0, 10000);
	c.open_base_ms = 1000;
	struct brk b;
	ck_assert_int_eq(brk_init(&b, &c, NULL, NULL), CR_OK);
	brk_allow(&b, 100);
	brk_failure(&b, 100);
	brk_allow(&b, 200);
	brk_failure(&b, 200); /* opens at 200, probe at 1200 */
	for (uint64_t t = 200; t < 1200; t += 37)
		ck_assert_int_eq(brk_allow(&b, t), BRK_REFUSE);
	ck_assert_int_eq(brk_allow(&b, 1199), BRK_REFUSE);
	ck_assert_int_eq(brk_allow(&b, 1200), BRK_PROBE);
	/* everyone else waits for the probe, however much later they ask */
	for (uint64_t t = 1200; t < 1300; t++)
		ck_assert_int_eq(brk_allow(&b, t), BRK_REFUSE);
	brk_success(&b, 1300);
	ck_assert_int_eq(brk_allow(&b, 1300), BRK_GO);
	ck_assert_int_eq(brk_allow(&b, 1301), BRK_GO);
	brk_fini(&b);
}
END_TEST

/* open the breaker (closed, 1 failure trips it) at t and return the open time */
static uint64_t
open_time_of(struct brk *b)
{
	struct brk_snap s;
	brk_snapshot(b, 0, &s);
	ck_assert(s.state == BRK_OPEN);
	ck_assert_uint_eq(s.next_probe_ms, s.opened_at_ms + s.open_ms);
	return s.open_ms;
}

START_TEST(backoff_doubles_to_cap_and_resets)
{
	struct brk_config c = cfg_of(1, 0, 0, 10000);
	c.open_base_ms = 100;
	c.open_max_ms = 500;
	c.probe_timeout_ms = 0;
	struct brk b;
	ck_assert_int_eq(brk_init(&b, &c, NULL, NULL), CR_OK);
	uint64_t t = 1000;
	ck_assert_int_eq(brk_allow(&b, t), BRK_GO);
	brk_failure(&b, t);
	static const uint64_t want[] = { 100, 200, 400, 500, 500, 500 };
	for (size_t i = 0; i < sizeof(want) / sizeof(want[0]); i++) {
		uint64_t o = open_time_of(&b);
		ck_assert_uint_eq(o, want[i]);
		ck_assert_int_eq(brk_allow(&b, t + o - 1), BRK_REFUSE);
		t += o;
		ck_assert_int_eq(brk_allow(&b, t), BRK_PROBE);
		brk_failure(&b, t); /* probe fails: reopen, longer */
	}
	/* a successful probe closes it and the next open is short again */
	t += open_time_of(&b);
	ck_assert_int_eq(brk_allow(&b, t), BRK_PROBE);
	brk_success(&b, t);
	ck_assert_int_eq(brk_allow(&b, t + 1), BRK_GO);
	brk_failure(&b, t + 1);
	ck_assert_uint_eq(open_time_of(&b), 100);
	struct brk_snap s;
	brk_snapshot(&b, t + 1, &s);
	ck_assert_uint_eq(s.times_opened, 8);
	brk_fini(&b);
}
END_TEST

START_TEST(window_forgets_old_failures)
{
	/* 1000 ms window in 100 ms buckets; the ratio rule only */
	struct brk_config c = cfg_of(0, 50, 4, 1000);
	struct brk b;
	ck_assert_int_eq(brk_init(&b, &c, NULL, NULL), CR_OK);
	struct brk_snap s;
	for (int i = 0; i < 3; i++) {
		brk_allow(&b, 10000 + i);
		brk_failure(&b, 10000 + i); /* bucket [10000, 10100) */
	}
	brk_snapshot(&b, 10999, &s);
	ck_assert_uint_eq(s.window_failures, 3);
	ck_assert_uint_eq(s.window_calls, 3);
	brk_snapshot(&b, 11000, &s); /* that bucket has left the window */
	ck_assert_uint_eq(s.window_failures, 0);
	ck_assert_uint_eq(s.window_calls, 0);
	/* a 4th failure inside the window would open it; after it, it does not */
	for (int i = 0; i < 3; i++) {
		brk_allow(&b, 11000 + i);
		brk_failure(&b, 11000 + i);
	}
	brk_snapshot(&b, 11002, &s);
	ck_assert(s.state == BRK_CLOSED);
	ck_assert_uint_eq(s.window_calls, 3);
	/* half the window later the 3 are still there: the 4th opens it */
	brk_allow(&b, 11500);
	brk_failure(&b, 11500);
	brk_snapshot(&b, 11500, &s);
	ck_assert(s.state == BRK_OPEN);
	ck_assert_uint_eq(s.window_failures, 4);
	brk_fini(&b);
}
END_TEST

START_TEST(reports_while_open_are_ignored)
{
	struct brk_config c = cfg_of(1, 0, 0, 10000);
	c.open_base_ms = 1000;
	struct brk b;
	ck_assert_int_eq(brk_init(&b, &c, NULL, NULL), CR_OK);
	brk_allow(&b, 100);
	brk_allow(&b, 100);
	brk_allow(&b, 100);
	brk_failure(&b, 100);  /* opens */
	brk_failure(&b, 500);  /* late results of the other two calls */
	brk_success(&b, 600);
	struct brk_snap s;
	brk_snapshot(&b, 600, &s);
	ck_assert(s.state == BRK_OPEN);
	ck_assert_uint_eq(s.next_probe_ms, 1100);
	ck_assert_uint_eq(s.times_opened, 1);
	brk_fini(&b);
}
END_TEST

START_TEST(unanswered_probe_times_out_as_failure)
{
	struct brk_config c = cfg_of(1, 0, 0, 10000);
	c.open_base_ms = 100;
	c.probe_timeout_ms = 1000;
	struct brk b;
	ck_assert_int_eq(brk_init(&b, &c, NULL, NULL), CR_OK);
	brk_allow(&b, 0);
	brk_failure(&b, 0);
	ck_assert_int_eq(brk_allow(&b, 100), BRK_PROBE);
	struct brk_snap s;
	brk_snapshot(&b, 100, &s);
	ck_assert(s.state == BRK_HALF_OPEN);
	ck_assert_uint_eq(s.next_probe_ms, 1100);
	ck_assert_int_eq(brk_allow(&b, 1099), BRK_REFUSE);
	brk_snapshot(&b, 1099, &s);
	ck_assert(s.state == BRK_HALF_OPEN);
	ck_assert_int_eq(brk_allow(&b, 1100), BRK_REFUSE); /* the lost probe counts as failed */
	brk_snapshot(&b, 1100, &s);
	ck_assert(s.state == BRK_OPEN);
	ck_assert_uint_eq(s.open_ms, 200);
	ck_assert_int_eq(brk_allow(&b, 1299), BRK_REFUSE);
	ck_assert_int_eq(brk_allow(&b, 1300), BRK_PROBE);
	brk_fini(&b);
}
END_TEST

struct change {
	enum brk_state from, to;
	uint64_t times_opened;
};
struct changes {
	struct change c[64];
	size_t n;
};

static void
record_change(void *arg, enum brk_state from, enum brk_state to, const struct brk_snap *s)
{
	struct changes *ch = arg;
	ck_assert(s->state == to);
	if (ch->n < 64)
		ch->c[ch->n] = (struct change){ from, to, s->times_opened };
	ch->n++;
}

START_TEST(callback_sees_each_transition_once_in_order)
{
	struct changes ch = { .n = 0 };
	struct brk_config c = cfg_of(2, 0, 0, 10000);
	c.open_base_ms = 100;
	struct brk *b = brk_new(&c, record_change, &ch);
	ck_assert_ptr_nonnull(b);
	uint64_t t = 1;
	brk_allow(b, t);
	brk_failure(b, t);
	ck_assert_uint_eq(ch.n, 0);
	brk_allow(b, t);
	brk_failure(b, t);                                 /* closed -> open */
	for (int i = 0; i < 10; i++)
		brk_allow(b, t + 50);                      /* refused: no change */
	ck_assert_int_eq(brk_allow(b, t + 100), BRK_PROBE); /* open -> half-open */
	ck_assert_int_eq(brk_allow(b, t + 101), BRK_REFUSE);
	brk_failure(b, t + 150);                           /* half-open -> open */
	ck_assert_int_eq(brk_allow(b, t + 350), BRK_PROBE); /* open -> half-open */
	brk_success(b, t + 360);                           /* half-open -> closed */
	brk_success(b, t + 361);                           /* closed: no change */
	static const struct change want[] = {
		{ BRK_CLOSED, BRK_OPEN, 1 },
		{ BRK_OPEN, BRK_HALF_OPEN, 1 },
		{ BRK_HALF_OPEN, BRK_OPEN, 2 },
		{ BRK_OPEN, BRK_HALF_OPEN, 2 },
		{ BRK_HALF_OPEN, BRK_CLOSED, 2 },
	};
	ck_assert_uint_eq(ch.n, sizeof(want) / sizeof(want[0]));
	for (size_t i = 0; i < ch.n; i++) {
		ck_assert_msg(ch.c[i].from == want[i].from && ch.c[i].to == want[i].to,
		    "change %zu: %s -> %s", i, brk_state_name(ch.c[i].from), brk_state_name(ch.c[i].to));
		ck_assert_uint_eq(ch.c[i].times_opened, want[i].times_opened);
	}
	brk_free(b);
	brk_free(NULL);
}
END_TEST

START_TEST(snapshot_values)
{
	struct brk b;
	ck_assert_int_eq(brk_init(&b, NULL, NULL, NULL), CR_OK); /* defaults: 5 in a row, 1 s */
	struct brk_snap s;
	brk_snapshot(&b, 0, &s);
	ck_assert_str_eq(s.state_name, "closed");
	ck_assert_uint_eq(s.times_opened, 0);
	ck_assert_uint_eq(s.opened_at_ms, 0);
	ck_assert_uint_eq(s.next_probe_ms, 0);
	for (int i = 0; i < 3; i++) {
		brk_allow(&b, 4000);
		brk_success(&b, 4000);
	}
	for (int i = 0; i < 4; i++) {
		brk_allow(&b, 4000 + i);
		brk_failure(&b, 4000 + i);
	}
	brk_snapshot(&b, 4003, &s);
	ck_assert_str_eq(s.state_name, "closed");
	ck_assert_uint_eq(s.consecutive_failures, 4);
	ck_assert_uint_eq(s.window_failures, 4);
	ck_assert_uint_eq(s.window_calls, 7);
	brk_allow(&b, 5000);
	brk_failure(&b, 5000);
	brk_snapshot(&b, 5000, &s);
	ck_assert_str_eq(s.state_name, "open");
	ck_assert_uint_eq(s.consecutive_failures, 5);
	ck_assert_uint_eq(s.window_failures, 5);
	ck_assert_uint_eq(s.window_calls, 8);
	ck_assert_uint_eq(s.opened_at_ms, 5000);
	ck_assert_uint_eq(s.open_ms, 1000);
	ck_assert_uint_eq(s.next_probe_ms, 6000);
	ck_assert_uint_eq(s.times_opened, 1);
	ck_assert_int_eq(brk_allow(&b, 6000), BRK_PROBE);
	brk_snapshot(&b, 6000, &s);
	ck_assert_str_eq(s.state_name, "half-open");
	ck_assert_uint_eq(s.next_probe_ms, 6000 + 30000); /* default probe timeout */
	brk_success(&b, 6010);
	brk_snapshot(&b, 6010, &s);
	ck_assert_str_eq(s.state_name, "closed");
	ck_assert_uint_eq(s.consecutive_failures, 0);
	ck_assert_uint_eq(s.window_calls, 0);
	ck_assert_uint_eq(s.opened_at_ms, 5000);      /* the last open stays visible */
	ck_assert_uint_eq(s.times_opened, 1);
	brk_fini(&b);
}
END_TEST

START_TEST(bad_config_refused)
{
	struct brk_config c;
	struct brk b;
	brk_config_default(&c);
	c.failure_pct = 101;
	ck_assert_int_eq(brk_init(&b, &c, NULL, NULL), CR_ERR_INVALID);
	brk_config_default(&c);
	c.window_ms = BRK_BUCKETS - 1;
	ck_assert_ptr_null(brk_new(&c, NULL, NULL));
	brk_config_default(&c);
	c.open_max_ms = c.open_base_ms - 1;
	ck_assert_int_eq(brk_init(&b, &c, NULL, NULL), CR_ERR_INVALID);
	brk_config_default(&c);
	c.open_base_ms = 0;
	ck_assert_int_eq(brk_init(&b, &c, NULL, NULL), CR_ERR_INVALID);
	const struct brk_config d = BRK_CONFIG_DEFAULT;
	ck_assert_uint_eq(d.consecutive, 5);
	ck_assert_uint_eq(d.failure_pct, 50);
	ck_assert_uint_eq(d.min_calls, 20);
	ck_assert_uint_eq(d.window_ms, 10000);
	ck_assert_uint_eq(d.open_base_ms, 1000);
	ck_assert_uint_eq(d.open_max_ms, 60000);
	ck_assert_uint_eq(d.probe_timeout_ms, 30000);
}
END_TEST

/* Many callers at the moment the open time ends: exactly one probe. */
enum { RACE_THREADS = 16, RACE_ROUNDS = 200 };
struct race {
	struct brk *b;
	pthread_barrier_t start, done;
	atomic_int probes, goes;
	atomic_uint_fast64_t now;
};

static void *
race_thread(void *arg)
{
	struct race *r = arg;
	for (int round = 0; round < RACE_ROUNDS; round++) {
		pthread_barrier_wait(&r->start);
		uint64_t t = atomic_load(&r->now);
		for (int k = 0; k < 20; k++) {
			int a = brk_allow(r->b, t + (uint64_t)k);
			if (a == BRK_PROBE)
				atomic_fetch_add(&r->probes, 1);
			else if (a != BRK_REFUSE)
				atomic_fetch_add(&r->goes, 1);
		}
		pthread_barrier_wait(&r->done);
	}
	return NULL;
}

START_TEST(one_probe_among_many_callers)
{
	struct brk_config c = cfg_of(1, 0, 0, 10000);
	c.open_base_ms = 100;
	c.open_max_ms = 100;
	c.probe_timeout_ms = 0;
	struct race r = { .b = brk_new(&c, NULL, NULL) };
	ck_assert_ptr_nonnull(r.b);
	pthread_barrier_init(&r.start, NULL, RACE_THREADS + 1);
	pthread_barrier_init(&r.done, NULL, RACE_THREADS + 1);
	pthread_t th[RACE_THREADS];
	for (int i = 0; i < RACE_THREADS; i++)
		pthread_create(&th[i], NULL, race_thread, &r);
	uint64_t t = 1000;
	ck_assert_int_eq(brk_allow(r.b, t), BRK_GO);
	brk_failure(r.b, t);
	for (int round = 0; round < RACE_ROUNDS; round++) {
		t += 100; /* the open time has just ended */
		atomic_store(&r.now, t);
		atomic_store(&r.probes, 0);
		atomic_store(&r.goes, 0);
		pthread_barrier_wait(&r.start);
		pthread_barrier_wait(&r.done);
		ck_assert_int_eq(atomic_load(&r.probes), 1);
		ck_assert_int_eq(atomic_load(&r.goes), 0);
		t += 20;
		brk_failure(r.b, t); /* the probe failed: open again */
	}
	for (int i = 0; i < RACE_THREADS; i++)
		pthread_join(th[i], NULL);
	struct brk_snap s;
	brk_snapshot(r.b, t, &s);
	ck_assert_uint_eq(s.times_opened, RACE_ROUNDS + 1);
	pthread_barrier_destroy(&r.start);
	pthread_barrier_destroy(&r.done);
	brk_free(r.b);
}
END_TEST

/* Threads hammering allow/success/failure on a shared clock, with failure
 * rates that swing between healthy and broken. */
enum { HAM_THREADS = 8, HAM_OPS = 100000, HAM_MAX_CHANGES = 1 << 20 };
struct hammer {
	struct brk *b;
	atomic_uint_fast64_t tick;
	atomic_long probes, goes, refused;
	/* written only by the callback, which runs under the breaker's mutex */
	struct change *ch;
	size_t nch;
	int bad_edge;
};

static void
hammer_change(void *arg, enum brk_state from, enum brk_state to, const struct brk_snap *s)
{
	struct hammer *h = arg;
	enum brk_state prev = h->nch ? h->ch[h->nch - 1].to : BRK_CLOSED;
	int ok = from == prev && s->state == to &&
	    ((from == BRK_CLOSED && to == BRK_OPEN) || (from == BRK_OPEN && to == BRK_HALF_OPEN) ||
		(from == BRK_HALF_OPEN && (to == BRK_OPEN || to == BRK_CLOSED)));
	if (!ok)
		h->bad_edge = 1;
	if (h->nch < HAM_MAX_CHANGES)
		h->ch[h->nch++] = (struct change){ from, to, s->times_opened };
}

static void *
hammer_thread(void *arg)
{
	struct hammer *h = arg;
	unsigned seed = (unsigned)(uintptr_t)pthread_self();
	for (int i = 0; i < HAM_OPS; i++) {
		uint64_t tick = atomic_fetch_add(&h->tick, 1);
		uint64_t t = tick / 8; /* many calls share a millisecond */
		int a = brk_allow(h->b, t);
		if (a == BRK_REFUSE) {
			atomic_fetch_add(&h->refused, 1);
			continue;
		}
		atomic_fetch_add(a == BRK_PROBE ? &h->probes : &h->goes, 1);
		int fail_pct = (t / 2000) % 2 ? 90 : 5;
		int fail = rand_r(&seed) % 100 < fail_pct;
		uint64_t done = atomic_load(&h->tick) / 8;
		if (fail)
			brk_failure(h->b, done);
		else
			brk_success(h->b, done);
	}
	return NULL;
}

START_TEST(threads_hammering_keep_invariants)
{
	struct brk_config c = cfg_of(5, 50, 20, 200);
	c.open_base_ms = 5;
	c.open_max_ms = 80;
	c.probe_timeout_ms = 50;
	struct hammer h = { .nch = 0 };
	h.ch = calloc(HAM_MAX_CHANGES, sizeof(*h.ch));
	ck_assert_ptr_nonnull(h.ch);
	h.b = brk_new(&c, hammer_change, &h);
	ck_assert_ptr_nonnull(h.b);
	pthread_t th[HAM_THREADS];
	for (int i = 0; i < HAM_THREADS; i++)
		pthread_create(&th[i], NULL, hammer_thread, &h);
	for (int i = 0; i < HAM_THREADS; i++)
		pthread_join(th[i], NULL);

	ck_assert_msg(!h.bad_edge, "an impossible or out-of-order transition was reported");
	ck_assert(h.nch < HAM_MAX_CHANGES);
	long probes = atomic_load(&h.probes), goes = atomic_load(&h.goes), refused = atomic_load(&h.refused);
	ck_assert_int_eq(probes + goes + refused, (long)HAM_THREADS * HAM_OPS);
	/* it did open and close many times, and refused work while open */
	size_t opens = 0, half = 0, closes = 0;
	for (size_t i = 0; i < h.nch; i++) {
		opens += h.ch[i].to == BRK_OPEN;
		half += h.ch[i].to == BRK_HALF_OPEN;
		closes += h.ch[i].to == BRK_CLOSED;
		/* times_opened counts every open, in order */
		size_t opens_so_far = opens;
		ck_assert_uint_eq(h.ch[i].times_opened, opens_so_far);
	}
	ck_assert_msg(opens > 10 && closes > 1 && refused > 0, "opens %zu closes %zu refused %ld",
	    opens, closes, refused);
	/* every half-open episode hands out exactly one probe, and only those do */
	ck_assert_int_eq(probes, (long)half);
	struct brk_snap s;
	brk_snapshot(h.b, atomic_load(&h.tick) / 8, &s);
	ck_assert_uint_eq(s.times_opened, opens);
	ck_assert(s.state == (h.nch ? h.ch[h.nch - 1].to : BRK_CLOSED));
	ck_assert(s.window_failures <= s.window_calls);
	brk_free(h.b);
	free(h.ch);
}
END_TEST

int
main(void)
{
	Suite *s = suite_create("breaker");
	TCase *tc = tcase_create("core");
	tcase_add_loop_test(tc, opens_when_and_only_when, 0, sizeof(open_cases) / sizeof(open_cases[0]));
	tcase_add_test(tc, refuses_while_open_then_one_probe);
	tcase_add_test(tc, backoff_doubles_to_cap_and_resets);
	tcase_add_test(tc, window_forgets_old_failures);
	tcase_add_test(tc, reports_while_open_are_ignored);
	tcase_add_test(tc, unanswered_probe_times_out_as_failure);
	tcase_add_test(tc, callback_sees_each_transition_once_in_order);
	tcase_add_test(tc, snapshot_values);
	tcase_add_test(tc, bad_config_refused);
	suite_add_tcase(s, tc);
	TCase *mt = tcase_create("threads");
	tcase_set_timeout(mt, 120);
	tcase_add_test(mt, one_probe_among_many_callers);
	tcase_add_test(mt, threads_hammering_keep_invariants);
	suite_add_tcase(s, mt);
	return unit_run(s);
}
