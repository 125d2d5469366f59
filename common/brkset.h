/*
 * brkset.h - a service's circuit breakers, by boundary and name, shown the
 * same way everywhere (DESIGN §8): in /v1/status, as metrics, and as one
 * JSON event on <P>.breaker.<service> per state change.
 *
 * A boundary is the kind of call a breaker guards ("delivery",
 * "destination", "partition", "registry", ...); the name tells breakers of
 * one boundary apart (an agent ID, a partition number, "" for a single one).
 * Breakers are created on first use and live as long as the set, so a
 * pointer from brkset_get() may be kept.
 *
 * The event (JSON, one object):
 *   {"service","instance","boundary","name","state","from","failures",
 *    "next_probe_ms" (wall ms, 0 = none), "retry_in_ms", "times_opened",
 *    "ts" (wall ms)}
 *
 * Threads: every function is thread-safe. brkset_get takes the set's mutex
 * for a hash lookup; the breakers themselves have their own mutex (see
 * breaker.h). Events are published from the thread that caused the change.
 */
#ifndef CR_BRKSET_H
#define CR_BRKSET_H

#include <cJSON.h>

#include "breaker.h"
#include "bus.h"
#include "cfg.h"
#include "util.h"

/* The settings of a service's breakers as its config table writes them. */
struct brkset_cfg {
	long long consecutive, failure_pct, min_calls, window_ms;
	long long open_ms, open_max_ms, probe_timeout_ms;
};

/* BRKSET_CFG_ITEMS(c) - the seven config items (CLAWRELAY_BREAKER_*) of a
 * struct brkset_cfg c, for a service's config table */
#define BRKSET_CFG_ITEMS(c) \
	{ "BREAKER_CONSECUTIVE", CFG_INT, "5", 0, 1000000, \
	  "circuit breakers open after this many failures in a row (0: rule off)", &(c).consecutive }, \
	{ "BREAKER_FAILURE_PCT", CFG_INT, "50", 0, 100, \
	  "circuit breakers open when this share of calls in the window failed (0: rule off)", \
	  &(c).failure_pct }, \
	{ "BREAKER_MIN_CALLS", CFG_INT, "20", 1, 1000000, \
	  "calls in the window before BREAKER_FAILURE_PCT applies", &(c).min_calls }, \
	{ "BREAKER_WINDOW_MS", CFG_INT, "10000", 10, 3600000, \
	  "sliding window of the failure ratio", &(c).window_ms }, \
	{ "BREAKER_OPEN_MS", CFG_INT, "1000", 1, 3600000, \
	  "first open time of a breaker (doubles on each re-open)", &(c).open_ms }, \
	{ "BREAKER_OPEN_MAX_MS", CFG_INT, "60000", 1, 86400000, \
	  "longest open time", &(c).open_max_ms }, \
	{ "BREAKER_PROBE_TIMEOUT_MS", CFG_INT, "30000", 0, 86400000, \
	  "a half-open probe that has not answered by then counts as failed (0: never)", \
	  &(c).probe_timeout_ms }

struct brkset;

/* brkset_new - an empty set for service (e.g. "delivery"); events go to
 * <P>.breaker.<service> on bus (borrowed; NULL: no events). NULL on bad
 * settings or ENOMEM. */
struct brkset *brkset_new(struct bus *bus, const char *service, const char *instance,
    const struct brkset_cfg *cfg);
/* brkset_sink_fn - receives each event's JSON (len bytes, borrowed), on the
 * thread of the change, with that breaker's mutex held: queue it, no more */
typedef void brkset_sink_fn(void *arg, const char *json, size_t len);
/* brkset_set_sink - also hand every event to fn (a process without NATS,
 * the connector, sends them to its gateway); set before the breakers are used */
void brkset_set_sink(struct brkset *set, brkset_sink_fn *fn, void *arg);
/* brkset_cap_open - the breakers of boundary created from now on stay open
 * at most open_max_ms (for boundaries whose outages are short by design,
 * e.g. a partition moving between relay-session replicas) */
void brkset_cap_open(struct brkset *set, const char *boundary, uint32_t open_max_ms);
/* brkset_free - free the set and its breakers; nothing may use them any more */
void brkset_free(struct brkset *set);
/* brkset_get - the breaker of (boundary, name), created closed on first
 * use; NULL on ENOMEM or names over 1023 bytes. Kept until brkset_free. */
struct brk *brkset_get(struct brkset *set, const char *boundary, const char *name);
/* brkset_retry_in - ms until b may be tried again (0 when closed or a probe may go) */
uint64_t brkset_retry_in(struct brk *b);
/* brkset_status - add "breakers" (non-closed ones first, at most 200) and
 * "breakersTotal" / "breakersOpen" to a /v1/status object */
void brkset_status(struct brkset *set, cJSON *obj);
/* brkset_metrics - clawrelay_breakers{boundary,state} and
 * clawrelay_breaker_opens_total{boundary} in the Prometheus text format */
void brkset_metrics(struct brkset *set, struct strbuf *sb);
/* brkset_event_parse - read a breaker event; 0 and the fields (borrowed
 * from the parsed JSON, valid until cJSON_Delete(*root)), -1 if malformed */
struct brkset_event {
	const char *service, *boundary, *name, *state;
	uint64_t retry_in_ms;
};
int brkset_event_parse(const void *data, size_t len, cJSON **root, struct brkset_event *ev);

#endif
