/*
 * breaker.c - the circuit breaker of breaker.h.
 *
 * Invariants (under b->mu):
 * - state CLOSED: opened_at/open_ms describe the last open (if any); streak 0.
 * - state OPEN: the breaker refuses until opened_at + open_ms.
 * - state HALF_OPEN: exactly one probe was handed out, at probe_at, and no
 *   result has been reported since; every brk_allow refuses.
 * - the window buckets hold results for absolute bucket indexes
 *   head - BRK_BUCKETS + 1 .. head; bucket i lives at i % BRK_BUCKETS.
 * Threads: any thread, one mutex per breaker; the change callback runs with it held.
 */
#include <stdlib.h>
#include <string.h>

#include "breaker.h"

/* brk_config_default - fill c with the defaults */
void
brk_config_default(struct brk_config *c)
{
	const struct brk_config d = BRK_CONFIG_DEFAULT;
	*c = d;
}

/* brk_state_name - "closed", "open", "half-open" */
const char *
brk_state_name(enum brk_state s)
{
	switch (s) {
	case BRK_CLOSED: return "closed";
	case BRK_OPEN: return "open";
	case BRK_HALF_OPEN: return "half-open";
	}
	return "?";
}

/* brk_init - set up b closed with cfg (NULL = defaults) */
enum cr_err
brk_init(struct brk *b, const struct brk_config *cfg, brk_change_fn *fn, void *arg)
{
	struct brk_config c;
	if (cfg)
		c = *cfg;
	else
		brk_config_default(&c);
	if (c.failure_pct > 100 || c.window_ms < BRK_BUCKETS || c.open_base_ms == 0 ||
	    c.open_max_ms < c.open_base_ms)
		return CR_ERR_INVALID;
	memset(b, 0, sizeof(*b));
	if (pthread_mutex_init(&b->mu, NULL) != 0)
		return CR_ERR_INTERNAL;
	b->cfg = c;
	b->on_change = fn;
	b->arg = arg;
	b->state = BRK_CLOSED;
	b->bucket_ms = c.window_ms / BRK_BUCKETS;
	return CR_OK;
}

/* brk_fini - release what brk_init took */
void
brk_fini(struct brk *b)
{
	pthread_mutex_destroy(&b->mu);
}

/* brk_new - brk_init on the heap; caller frees with brk_free */
struct brk *
brk_new(const struct brk_config *cfg, brk_change_fn *fn, void *arg)
{
	struct brk *b = malloc(sizeof(*b));
	if (!b)
		return NULL;
	if (brk_init(b, cfg, fn, arg) != CR_OK) {
		free(b);
		return NULL;
	}
	return b;
}

/* brk_free - brk_fini and free; NULL does nothing */
void
brk_free(struct brk *b)
{
	if (!b)
		return;
	brk_fini(b);
	free(b);
}

/* A time older than one already seen counts as that time: callers read the
 * clock before they queue for the mutex, so times arrive slightly out of order. */
static uint64_t
clamp_now(struct brk *b, uint64_t now)
{
	if (now < b->last_ms)
		return b->last_ms;
	b->last_ms = now;
	return now;
}

/* Move the window's head to now, emptying the buckets it passes over. */
static void
window_advance(struct brk *b, uint64_t now)
{
	uint64_t idx = now / b->bucket_ms;
	if (idx <= b->head)
		return;
	if (idx - b->head >= BRK_BUCKETS) {
		memset(b->calls, 0, sizeof(b->calls));
		memset(b->fails, 0, sizeof(b->fails));
	} else {
		for (uint64_t i = b->head + 1; i <= idx; i++) {
			b->calls[i % BRK_BUCKETS] = 0;
			b->fails[i % BRK_BUCKETS] = 0;
		}
	}
	b->head = idx;
}

/* Sum of the buckets still inside the window at now, without changing them
 * (so a snapshot does not move the window). */
static void
window_sum(const struct brk *b, uint64_t now, uint32_t *calls, uint32_t *fails)
{
	uint64_t idx = now / b->bucket_ms;
	uint32_t c = 0, f = 0;
	for (uint64_t k = 0; k < BRK_BUCKETS && k <= b->head; k++) {
		uint64_t abs_idx = b->head - k;
		if (abs_idx + BRK_BUCKETS <= idx)
			break; /* this bucket and older ones have left the window */
		c += b->calls[abs_idx % BRK_BUCKETS];
		f += b->fails[abs_idx % BRK_BUCKETS];
	}
	*calls = c;
	*fails = f;
}

static void
snap_locked(const struct brk *b, uint64_t now, struct brk_snap *s)
{
	s->state = b->state;
	s->state_name = brk_state_name(b->state);
	s->consecutive_failures = b->consecutive;
	window_sum(b, now, &s->window_calls, &s->window_failures);
	s->opened_at_ms = b->opened_at;
	s->open_ms = b->open_ms;
	s->times_opened = b->times_opened;
	switch (b->state) {
	case BRK_OPEN:
		s->next_probe_ms = b->opened_at + b->open_ms;
		break;
	case BRK_HALF_OPEN:
		s->next_probe_ms = b->cfg.probe_timeout_ms ? b->probe_at + b->cfg.probe_timeout_ms : 0;
		break;
	case BRK_CLOSED:
		s->next_probe_ms = 0;
		break;
	}
}

static void
set_state(struct brk *b, enum brk_state to, uint64_t now)
{
	enum brk_state from = b->state;
	b->state = to;
	if (b->on_change) {
		struct brk_snap s;
		snap_locked(b, now, &s);
		b->on_change(b->arg, from, to, &s);
	}
}

/* open_base_ms * 2^streak, capped; shifts are bounded so nothing overflows */
static uint64_t
open_time(const struct brk *b)
{
	uint64_t t = b->cfg.open_base_ms;
	for (uint32_t i = 0; i < b->streak && t < b->cfg.open_max_ms; i++)
		t <<= 1;
	return t < b->cfg.open_max_ms ? t : b->cfg.open_max_ms;
}

static void
trip(struct brk *b, uint64_t now)
{
	b->open_ms = open_time(b);
	if (b->streak < UINT32_MAX)
		b->streak++;
	b->opened_at = now;
	b->times_opened++;
	set_state(b, BRK_OPEN, now);
}

/* brk_allow - BRK_GO (closed), BRK_PROBE (the one half-open probe) or BRK_REFUSE */
int
brk_allow(struct brk *b, uint64_t now_ms)
{
	int r = BRK_REFUSE;
	pthread_mutex_lock(&b->mu);
	uint64_t now = clamp_now(b, now_ms);
	switch (b->state) {
	case BRK_CLOSED:
		r = BRK_GO;
		break;
	case BRK_OPEN:
		if (now >= b->opened_at + b->open_ms) {
			b->probe_at = now;
			set_state(b, BRK_HALF_OPEN, now);
			r = BRK_PROBE;
		}
		break;
	case BRK_HALF_OPEN:
		/* a probe that never reported must not keep the breaker shut for good */
		if (b->cfg.probe_timeout_ms && now >= b->probe_at + b->cfg.probe_timeout_ms)
			trip(b, now);
		break;
	}
	pthread_mutex_unlock(&b->mu);
	return r;
}

/* brk_success - the call that went succeeded */
void
brk_success(struct brk *b, uint64_t now_ms)
{
	pthread_mutex_lock(&b->mu);
	uint64_t now = clamp_now(b, now_ms);
	switch (b->state) {
	case BRK_CLOSED:
		window_advance(b, now);
		b->calls[b->head % BRK_BUCKETS]++;
		b->consecutive = 0;
		break;
	case BRK_HALF_OPEN:
		/* start afresh: the failures that opened it must not reopen it at once */
		b->consecutive = 0;
		b->streak = 0;
		memset(b->calls, 0, sizeof(b->calls));
		memset(b->fails, 0, sizeof(b->fails));
		set_state(b, BRK_CLOSED, now);
		break;
	case BRK_OPEN:
		break; /* a call let through before it opened; says nothing new */
	}
	pthread_mutex_unlock(&b->mu);
}

/* brk_failure - the call that went failed */
void
brk_failure(struct brk *b, uint64_t now_ms)
{
	pthread_mutex_lock(&b->mu);
	uint64_t now = clamp_now(b, now_ms);
	switch (b->state) {
	case BRK_CLOSED: {
		window_advance(b, now);
		b->calls[b->head % BRK_BUCKETS]++;
		b->fails[b->head % BRK_BUCKETS]++;
		if (b->consecutive < UINT32_MAX)
			b->consecutive++;
		uint32_t calls, fails;
		window_sum(b, now, &calls, &fails);
		int by_count = b->cfg.consecutive && b->consecutive >= b->cfg.consecutive;
		int by_ratio = b->cfg.failure_pct && calls >= b->cfg.min_calls &&
		    (uint64_t)fails * 100 >= (uint64_t)b->cfg.failure_pct * calls;
		if (by_count || by_ratio)
			trip(b, now);
		break;
	}
	case BRK_HALF_OPEN:
		if (b->consecutive < UINT32_MAX)
			b->consecutive++;
		trip(b, now);
		break;
	case BRK_OPEN:
		break; /* a call let through before it opened */
	}
	pthread_mutex_unlock(&b->mu);
}

/* brk_snapshot - a consistent copy as of now_ms */
void
brk_snapshot(struct brk *b, uint64_t now_ms, struct brk_snap *out)
{
	pthread_mutex_lock(&b->mu);
	uint64_t now = now_ms < b->last_ms ? b->last_ms : now_ms;
	snap_locked(b, now, out);
	pthread_mutex_unlock(&b->mu);
}
