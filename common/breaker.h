/*
 * breaker.h - one circuit breaker (DESIGN §8): closed -> open -> half-open.
 *
 * Closed: every call goes; results are counted. It opens on `consecutive`
 * failures in a row, or when, within the sliding window, at least
 * `min_calls` results were counted and failures are at least `failure_pct`
 * percent of them. Open: every call is refused (fail fast) until the open
 * time has passed; the open time is open_base_ms * 2^k for the k-th re-open
 * in a row, capped at open_max_ms. Half-open: the first brk_allow() after the
 * open time is the one probe; every other caller is refused until the probe
 * reports. Its success closes the breaker (counts, window and backoff reset);
 * its failure re-opens it with the next, longer open time. A probe that has
 * not reported within probe_timeout_ms counts as failed.
 *
 * Results reported while open are ignored (they belong to calls let through
 * before it opened). While half-open the first result reported is taken as
 * the probe's, since brk_success/brk_failure do not say which call they end.
 *
 * Time is passed in (now_ms, any monotonic millisecond clock, e.g. mono_ms()),
 * so tests are deterministic. A time older than one already seen is treated
 * as that time, so callers that read the clock before taking turns are safe.
 *
 * Threads: every function except brk_init/brk_fini/brk_new/brk_free may be
 * called from any thread; one mutex per breaker guards it, held only for a
 * few dozen instructions, and nothing allocates after init. The state-change
 * callback runs with that mutex held (see brk_change_fn).
 *
 * The window is BRK_BUCKETS buckets of window_ms / BRK_BUCKETS each; the
 * newest bucket is the one being filled, so the window seen is between
 * window_ms * (BRK_BUCKETS - 1) / BRK_BUCKETS and window_ms long.
 */
#ifndef CR_BREAKER_H
#define CR_BREAKER_H

#include <pthread.h>
#include <stdint.h>

#include "err.h"

#define BRK_BUCKETS 10

enum brk_state {
	BRK_CLOSED = 0,
	BRK_OPEN,
	BRK_HALF_OPEN
};

/* brk_allow results: non-zero means go */
enum {
	BRK_REFUSE = 0, /* open, or half-open with the probe out: fail fast */
	BRK_GO = 1,     /* closed: call, then report the result */
	BRK_PROBE = 2   /* half-open: this call is the one probe; report its result */
};

/* Settings. Start from brk_config_default() (or BRK_CONFIG_DEFAULT) and
 * change what differs; the service's config table maps CLAWRELAY_* here. */
struct brk_config {
	uint32_t consecutive;      /* consecutive failures that open it; default 5; 0 = rule off */
	uint32_t failure_pct;      /* failure share (1..100 %) that opens it; default 50; 0 = rule off */
	uint32_t min_calls;        /* results needed in the window before failure_pct applies; default 20 */
	uint32_t window_ms;        /* sliding window; default 10000; at least BRK_BUCKETS */
	uint32_t open_base_ms;     /* first open time; default 1000 */
	uint32_t open_max_ms;      /* cap on the open time; default 60000; >= open_base_ms */
	uint32_t probe_timeout_ms; /* an unanswered probe counts as failed after this; default 30000; 0 = never */
};

#define BRK_CONFIG_DEFAULT { 5, 50, 20, 10000, 1000, 60000, 30000 }

/* A copy of a breaker's state, for /v1/status and breaker events. */
struct brk_snap {
	enum brk_state state;
	const char *state_name;         /* "closed", "open", "half-open"; static */
	uint32_t consecutive_failures;  /* failures in a row (closed), or that opened it */
	uint32_t window_failures;       /* failures counted in the window */
	uint32_t window_calls;          /* results (success + failure) counted in the window */
	uint64_t opened_at_ms;          /* last time it opened; 0 if never */
	uint64_t next_probe_ms;         /* open: when the probe may go; half-open: when an
	                                   unanswered probe times out (0 = never); closed: 0 */
	uint64_t open_ms;               /* length of the current (or last) open time; 0 if never opened */
	uint64_t times_opened;          /* opens since init, re-opens included */
};

/* brk_change_fn - called once per transition, in order, on the thread whose
 * call caused it, with the breaker's mutex held: keep it short (queue a
 * publish on clawrelay.breaker.<service>, set a gauge) and do not call brk_*
 * on the same breaker from it. snap is borrowed for the call; snap->state == to. */
typedef void brk_change_fn(void *arg, enum brk_state from, enum brk_state to,
    const struct brk_snap *snap);

/* The breaker. Fields are private; the struct is public only so that it can
 * be embedded (e.g. one per destination) without an allocation each. */
struct brk {
	pthread_mutex_t mu;
	struct brk_config cfg;
	brk_change_fn *on_change;
	void *arg;
	enum brk_state state;
	uint32_t consecutive;       /* failures in a row */
	uint32_t streak;            /* opens since it was last closed by a probe */
	uint32_t bucket_ms;
	uint64_t head;              /* absolute index (now / bucket_ms) of the newest bucket */
	uint64_t last_ms;           /* newest time seen */
	uint64_t opened_at, open_ms, probe_at, times_opened;
	uint32_t calls[BRK_BUCKETS], fails[BRK_BUCKETS];
};

/* brk_config_default - fill c with the defaults */
void brk_config_default(struct brk_config *c);
/* brk_state_name - "closed", "open", "half-open" ("?" otherwise); static */
const char *brk_state_name(enum brk_state s);

/* brk_init - set up b (caller's storage) closed, with cfg (copied; NULL =
 * defaults) and an optional change callback (fn may be NULL; arg borrowed
 * while b lives). CR_ERR_INVALID for bad settings (failure_pct > 100,
 * window_ms < BRK_BUCKETS, open_max_ms < open_base_ms). Undo with brk_fini. */
enum cr_err brk_init(struct brk *b, const struct brk_config *cfg, brk_change_fn *fn, void *arg);
/* brk_fini - release what brk_init took; no call may be running on b */
void brk_fini(struct brk *b);
/* brk_new - brk_init on the heap; NULL on bad settings or ENOMEM; caller frees with brk_free */
struct brk *brk_new(const struct brk_config *cfg, brk_change_fn *fn, void *arg);
/* brk_free - brk_fini and free; brk_free(NULL) does nothing */
void brk_free(struct brk *b);

/* brk_allow - may a call go now? BRK_GO, BRK_PROBE or BRK_REFUSE (0). Every
 * call that went must be followed by brk_success or brk_failure. */
int brk_allow(struct brk *b, uint64_t now_ms);
/* brk_success - the call that went succeeded */
void brk_success(struct brk *b, uint64_t now_ms);
/* brk_failure - the call that went failed (error, timeout, 5xx: what the boundary calls a failure) */
void brk_failure(struct brk *b, uint64_t now_ms);
/* brk_snapshot - a consistent copy of the state as of now_ms (changes nothing) */
void brk_snapshot(struct brk *b, uint64_t now_ms, struct brk_snap *out);

#endif
