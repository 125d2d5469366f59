/*
 * conn_brk.c - short forms over the connector's two circuit breakers.
 *
 * Both live in one brkset (common/brkset.h), created in main.c with the
 * CLAWRELAY_BREAKER_* settings: "hook" (connector -> hook, used by the hook
 * worker) and "gateway" (connector -> gateway, used by the local API and the
 * outbox worker). So they show as every service's breakers do: entries of
 * "breakers" in /v1/status, clawrelay_breakers{service="connector",
 * boundary,state} and clawrelay_breaker_opens_total in /metrics, and one log
 * line per change ("breaker connector hook: closed -> open for 1000 ms (5
 * failures)"). The connector has no NATS connection: main.c hands each
 * change to the socket as a breaker_event frame, which the gateway publishes
 * on <P>.breaker.connector (docs/PROTOCOL.md, "Connector breaker events").
 *
 * Time is mono_ms(). Threads: any (each breaker has its own mutex).
 */
#include "conn.h"

/* conn_brk_allow - BRK_GO, BRK_PROBE or BRK_REFUSE now */
int conn_brk_allow(struct brk *b)
{
	return brk_allow(b, mono_ms());
}

/* conn_brk_result - report the call that went: ok or failed */
void conn_brk_result(struct brk *b, int ok)
{
	if (ok)
		brk_success(b, mono_ms());
	else
		brk_failure(b, mono_ms());
}

/* conn_brk_state - the state now, and the mono time of its next probe */
enum brk_state conn_brk_state(struct brk *b, uint64_t *next_probe_mono)
{
	struct brk_snap s;

	brk_snapshot(b, mono_ms(), &s);
	if (next_probe_mono)
		*next_probe_mono = s.next_probe_ms;
	return s.state;
}

/* conn_brk_json - the breaker as obj[name], in brkset's status fields */
void conn_brk_json(struct brk *b, const char *boundary, cJSON *obj, const char *name)
{
	struct brk_snap s;
	uint64_t mono = mono_ms(), wall = now_ms();
	cJSON *o;

	if (!b || !(o = cJSON_AddObjectToObject(obj, name)))
		return;
	brk_snapshot(b, mono, &s);
	cJSON_AddStringToObject(o, "boundary", boundary);
	cJSON_AddStringToObject(o, "state", s.state_name);
	cJSON_AddNumberToObject(o, "failures", s.consecutive_failures);
	cJSON_AddNumberToObject(o, "windowCalls", s.window_calls);
	cJSON_AddNumberToObject(o, "windowFailures", s.window_failures);
	cJSON_AddNumberToObject(o, "timesOpened", (double)s.times_opened);
	cJSON_AddNumberToObject(o, "next_probe_ms", s.state == BRK_OPEN && s.next_probe_ms > mono ?
	    (double)(wall + s.next_probe_ms - mono) : 0);
}
