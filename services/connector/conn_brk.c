/*
 * conn_brk.c - the connector's two circuit breakers (common/breaker.h) with
 * what every breaker must show (DESIGN section 8): its state, failures and
 * next probe time in /v1/status ("breakers": {"hook": ..., "gateway": ...}),
 * the metrics
 *   clawrelay_breaker_state{boundary="hook"|"gateway"}   0 closed, 1 open, 2 half-open
 *   clawrelay_breaker_failures_total{boundary=...}       failures reported
 *   clawrelay_breaker_opens_total{boundary=...}          times it opened
 * and one log line per state change:
 *   {"level":"warn",...,"msg":"breaker boundary=hook from=closed to=open
 *    failures=5 times_opened=1 open_ms=1000 next_probe_in_ms=1000"}
 * The connector has no NATS connection, so it cannot publish on
 * clawrelay.breaker.<service> itself; the frames have no body for it yet
 * (see docs/PROTOCOL.md), so the log line is the event.
 *
 * Time is mono_ms(); /v1/status converts it to wall-clock milliseconds.
 * Threads: any thread (the breaker has its own mutex). The change callback
 * runs with that mutex held: it only logs, sets gauges and calls the
 * boundary's wake function, which takes no breaker lock.
 */
#include <stdio.h>
#include <string.h>

#include "conn.h"
#include "log.h"
#include "metrics.h"

static void on_change(void *arg, enum brk_state from, enum brk_state to,
    const struct brk_snap *snap)
{
	struct conn_brk *cb = arg;
	uint64_t now = mono_ms();
	uint64_t in = snap->next_probe_ms > now ? snap->next_probe_ms - now : 0;

	metric_set(cb->m_state, (int64_t)to);
	if (to == BRK_OPEN && from != BRK_OPEN)
		metric_add(cb->m_opens, 1);
	if (to == BRK_CLOSED)
		log_info(NULL, "breaker boundary=%s from=%s to=%s failures=%u times_opened=%llu",
		    cb->boundary, brk_state_name(from), brk_state_name(to),
		    snap->consecutive_failures, (unsigned long long)snap->times_opened);
	else
		log_warn(NULL, "breaker boundary=%s from=%s to=%s failures=%u times_opened=%llu "
		    "open_ms=%llu next_probe_in_ms=%llu", cb->boundary, brk_state_name(from),
		    brk_state_name(to), snap->consecutive_failures,
		    (unsigned long long)snap->times_opened, (unsigned long long)snap->open_ms,
		    (unsigned long long)in);
	if (cb->wake)
		cb->wake(cb->c, to);
}

/* conn_brk_init - set up one boundary's breaker (main thread, at start-up) */
enum cr_err conn_brk_init(struct conn *c, struct conn_brk *cb, const char *boundary,
    const struct brk_config *cfg, void (*wake)(struct conn *c, enum brk_state to))
{
	char labels[64];
	enum cr_err e;

	cb->c = c;
	cb->boundary = boundary;
	cb->wake = wake;
	snprintf(labels, sizeof(labels), "boundary=\"%s\"", boundary);
	cb->m_state = metric_gauge("clawrelay_breaker_state", labels,
	    "circuit breaker state: 0 closed, 1 open, 2 half-open");
	cb->m_failures = metric_counter("clawrelay_breaker_failures_total", labels,
	    "failures reported to the circuit breaker");
	cb->m_opens = metric_counter("clawrelay_breaker_opens_total", labels,
	    "times the circuit breaker opened");
	if ((e = brk_init(&cb->b, cfg, on_change, cb)) != CR_OK)
		return e;
	metric_set(cb->m_state, BRK_CLOSED);
	cb->inited = 1;
	return CR_OK;
}

/* conn_brk_fini - after every thread that uses it stopped */
void conn_brk_fini(struct conn_brk *cb)
{
	if (!cb->inited)
		return;
	brk_fini(&cb->b);
	cb->inited = 0;
}

/* conn_brk_allow - BRK_GO, BRK_PROBE or BRK_REFUSE now */
int conn_brk_allow(struct conn_brk *cb)
{
	return brk_allow(&cb->b, mono_ms());
}

/* conn_brk_result - report the call that went: ok or failed */
void conn_brk_result(struct conn_brk *cb, int ok)
{
	if (ok) {
		brk_success(&cb->b, mono_ms());
	} else {
		metric_add(cb->m_failures, 1);
		brk_failure(&cb->b, mono_ms());
	}
}

/* conn_brk_state - the state now, and (when open) the mono time of the next probe */
enum brk_state conn_brk_state(struct conn_brk *cb, uint64_t *next_probe_mono)
{
	struct brk_snap s;

	brk_snapshot(&cb->b, mono_ms(), &s);
	if (next_probe_mono)
		*next_probe_mono = s.next_probe_ms;
	return s.state;
}

/* mono ms t as wall-clock ms (0 stays 0) */
static double wall_of(uint64_t t, uint64_t mono_now, uint64_t wall_now)
{
	if (t == 0)
		return 0;
	return t >= mono_now ? (double)(wall_now + (t - mono_now)) :
	    (double)(wall_now - (mono_now - t));
}

/* conn_brk_json - the breaker as a JSON object added to obj under name */
void conn_brk_json(struct conn_brk *cb, cJSON *obj, const char *name)
{
	struct brk_snap s;
	uint64_t mono = mono_ms(), wall = now_ms();
	cJSON *o;

	if (!cb->inited || !(o = cJSON_AddObjectToObject(obj, name)))
		return;
	brk_snapshot(&cb->b, mono, &s);
	cJSON_AddStringToObject(o, "state", s.state_name);
	cJSON_AddNumberToObject(o, "failures", (double)s.consecutive_failures);
	cJSON_AddNumberToObject(o, "windowFailures", (double)s.window_failures);
	cJSON_AddNumberToObject(o, "windowCalls", (double)s.window_calls);
	cJSON_AddNumberToObject(o, "failuresTotal", (double)metric_value(cb->m_failures));
	cJSON_AddNumberToObject(o, "timesOpened", (double)s.times_opened);
	cJSON_AddNumberToObject(o, "openedAtMs", wall_of(s.opened_at_ms, mono, wall));
	cJSON_AddNumberToObject(o, "openMs", (double)s.open_ms);
	/* open: when the probe may go; half-open: when an unanswered probe
	 * counts as failed; closed: 0 */
	cJSON_AddNumberToObject(o, "nextProbeAtMs", wall_of(s.next_probe_ms, mono, wall));
	cJSON_AddNumberToObject(o, "nextProbeInMs",
	    s.next_probe_ms > mono ? (double)(s.next_probe_ms - mono) : 0);
}
