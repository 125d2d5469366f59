/*
 * conn_hook.c - replay of the inbox to the local agent's hook.
 *
 * One worker thread, so the hook sees one call at a time and messages in
 * inbox order: lane (critical, normal, low), then the relay's queue order
 * (queue_seq). It always works on the current head of the inbox, re-read
 * after every step, so a critical message that arrives overtakes waiting
 * normal and low ones, also while the hook is failing: the next call
 * (retry or breaker probe) carries whatever is the head then.
 *
 * A message may wait up to REORDER_MS in the inbox before its first call
 * (its due time, set by conn_inbox_deliver_many): only when a gap is plausible,
 * i.e. an older message of its lane may still be on its way (no queue_seq,
 * or the lane saw an out-of-order arrival lately). A message that arrives in
 * queue_seq order is called at once.
 *
 * Answers, and what they cost (the hook says whether the fault is its own
 * or the message's):
 *   - 2xx: taken; the entry moves to the done IDs. Breaker: success.
 *   - unavailable: no answer (refused connection, timeout, ...), 408, 429,
 *     502, 503, 504. The hook itself cannot take messages now: a failure for
 *     the breaker, but NOT an attempt of the message. The head is retried
 *     after a jittered backoff while the breaker is closed, and by the
 *     breaker's probes once it is open. A hook that is down therefore never
 *     dead-letters anything; the messages wait, in order.
 *   - refused: any other answer (500, 501, 505+, other 4xx). The hook saw
 *     the message and failed it: one attempt, stored with the entry; after
 *     HOOK_MAX_ATTEMPTS it moves to the dead letters and a dead_letter frame
 *     tells the relay, which tells the sender. 5xx is also a breaker failure;
 *     a 4xx shows the hook is up (breaker success).
 * Breaker (connector -> hook, common/breaker.h): while it is open the hook
 * is not called at all and nothing counts as an attempt; when the open time
 * has passed, the next call (with the head of the inbox) is the one probe.
 * Every call that goes, probe included, is one call of the message it
 * carries; only "refused" answers use up attempts, so a poison message
 * (refused every time) still reaches the dead letters, at the probes' pace.
 *
 * Expiry: a head whose expires_at_ms has passed is not handed to the hook;
 * it moves to the dead letters (reason "expired in the connector's inbox"),
 * so a long hook outage ends, for each message, at its TTL with a notice to
 * its sender, like a message that expires in the relay's queue.
 *
 * DELIVERY_STATUS messages (Envelope.kind, the relay's notices about
 * messages this agent sent) go to the hook like messages, with the header
 * X-Claw-Kind: delivery_status (messages carry X-Claw-Kind: message). When
 * one is dead-lettered no dead_letter frame goes out: a notice about a
 * notice would only loop.
 *
 * Hop events: HOOK_CALLED before each call, HOOK_ANSWERED after (outcome ok
 * for 2xx, detail status=N or error=...).
 *
 * Threads: the curl handle and the retry state (hook.current...) belong to
 * the worker; the counters are atomics read by /v1/status; the breaker has
 * its own lock.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <curl/curl.h>

#include "conn.h"
#include "log.h"
#include "metrics.h"

static struct metric *m_ok, *m_fail, *m_unavail, *m_dead, *m_expired;

static int is_status_notice(const Envelope *e)
{
	return e->kind == CLAWRELAY__V1__KIND__KIND_DELIVERY_STATUS;
}

static size_t discard(char *p, size_t sz, size_t n, void *arg)
{
	(void)p;
	(void)arg;
	return sz * n;
}

/* header values come from the relay: refuse control bytes (no injection) */
static int clean(const char *s)
{
	if (!s)
		return 0;
	for (; *s; s++)
		if ((unsigned char)*s < 0x20 || *s == 0x7f)
			return 0;
	return 1;
}

static struct curl_slist *add_h(struct curl_slist *l, const char *name, const char *val)
{
	char buf[512];
	struct curl_slist *n;

	if (!l || !clean(val) || !val[0])
		return l;
	snprintf(buf, sizeof(buf), "%s: %s", name, val);
	n = curl_slist_append(l, buf);
	if (!n) {
		curl_slist_free_all(l);
		return NULL;
	}
	return n;
}

/* call the hook once; returns the HTTP status, 0 on a transport error (err filled) */
static long call_hook(struct conn *c, CURL *h, const Envelope *e, char *err, size_t errsz)
{
	struct curl_slist *hl, *hl2;
	char tp[56], ct[300];
	long status = 0;
	CURLcode rc;

	snprintf(ct, sizeof(ct), "Content-Type: %s",
	    clean(e->content_type) && e->content_type[0] ? e->content_type :
	    "application/octet-stream");
	hl = curl_slist_append(NULL, ct);
	if (hl && !(hl2 = curl_slist_append(hl, "Expect:"))) {
		curl_slist_free_all(hl);
		hl = NULL;
	} else if (hl) {
		hl = hl2;
	}
	hl = add_h(hl, "X-Claw-Correlation-Id", e->correlation_id);
	hl = add_h(hl, "X-Claw-Message-Id", e->message_id);
	hl = add_h(hl, "X-Claw-Sender", e->sender);
	hl = add_h(hl, "X-Claw-Priority", env_priority_name(e->priority));
	hl = add_h(hl, "X-Claw-Kind", is_status_notice(e) ? "delivery_status" : "message");
	if (e->trace_id && strlen(e->trace_id) == 32 && e->span_id && strlen(e->span_id) == 16) {
		traceparent_format(tp, e->trace_id, e->span_id, e->trace_flags);
		hl = add_h(hl, "traceparent", tp);
	}
	if (!hl) {
		snprintf(err, errsz, "nomem");
		return 0;
	}
	curl_easy_setopt(h, CURLOPT_URL, c->cfg.hook_url);
	curl_easy_setopt(h, CURLOPT_POST, 1L);
	curl_easy_setopt(h, CURLOPT_POSTFIELDS, e->payload.data ? (const char *)e->payload.data : "");
	curl_easy_setopt(h, CURLOPT_POSTFIELDSIZE_LARGE, (curl_off_t)e->payload.len);
	curl_easy_setopt(h, CURLOPT_HTTPHEADER, hl);
	curl_easy_setopt(h, CURLOPT_TIMEOUT_MS, (long)c->cfg.hook_timeout_ms);
	curl_easy_setopt(h, CURLOPT_NOSIGNAL, 1L);
	curl_easy_setopt(h, CURLOPT_WRITEFUNCTION, discard);
	curl_easy_setopt(h, CURLOPT_TCP_NODELAY, 1L);
	rc = curl_easy_perform(h);
	if (rc == CURLE_OK)
		curl_easy_getinfo(h, CURLINFO_RESPONSE_CODE, &status);
	else
		snprintf(err, errsz, "%s", curl_easy_strerror(rc));
	curl_easy_setopt(h, CURLOPT_HTTPHEADER, NULL);
	curl_slist_free_all(hl);
	return status;
}

static void send_dead_letter(struct conn *c, const Envelope *e, const char *reason)
{
	Frame f = CLAWRELAY__V1__FRAME__INIT;
	DeadLetter d = CLAWRELAY__V1__DEAD_LETTER__INIT;

	d.message_id = e->message_id;
	d.reason = conn_str(reason);
	d.correlation_id = e->correlation_id;
	d.sender = e->sender;
	f.schema_version = ENV_SCHEMA;
	f.body_case = CLAWRELAY__V1__FRAME__BODY_DEAD_LETTER;
	f.dead_letter = &d;
	conn_ws_send(c, &f, CONN_FK_KEEP);
}

/* the head is finished with (taken, dead-lettered, expired): forget its retry state */
static void head_done(struct conn_hook *hk)
{
	hk->current[0] = '\0';
	hk->current_tries = 0;
	hk->retry_at_mono = 0;
}

/* move en to the dead letters and tell the relay (not for notices) */
static int dead_letter(struct conn *c, struct conn_entry *en, const char *reason)
{
	struct conn_hook *hk = &c->hook;
	const Envelope *e = en->env;
	struct log_ctx lc = { e->correlation_id, e->message_id, e->sender, e->trace_id };
	enum cr_err r;

	if ((r = conn_inbox_dead(c, en, reason)) != CR_OK) {
		log_error(&lc, "dead-lettering failed: %s", cr_strerror(r));
		hk->retry_at_mono = mono_ms() + 1000;
		return -1;
	}
	atomic_fetch_add(&hk->dead_lettered, 1);
	metric_add(m_dead, 1);
	if (is_status_notice(e))
		log_warn(&lc, "delivery_status notice dead-lettered (no dead_letter frame): %s",
		    reason);
	else {
		send_dead_letter(c, e, reason);
		log_warn(&lc, "dead-lettered: %s", reason);
	}
	head_done(hk);
	return 0;
}

/* the head expired before the hook took it; -1 if it could not be moved */
static int expire(struct conn *c, struct conn_entry *en)
{
	char reason[160];

	snprintf(reason, sizeof(reason), "expired in the connector's inbox after %u attempts "
	    "(hook %s)", en->attempts, atomic_load(&c->hook.last_status) >= 200 &&
	    atomic_load(&c->hook.last_status) < 300 ? "busy" : "unavailable");
	if (dead_letter(c, en, reason) != 0)
		return -1;
	atomic_fetch_add(&c->hook.expired, 1);
	metric_add(m_expired, 1);
	return 0;
}

static void attempt(struct conn *c, CURL *h, struct conn_entry *en, int probe)
{
	struct conn_hook *hk = &c->hook;
	const Envelope *e = en->env;
	struct log_ctx lc = { e->correlation_id, e->message_id, e->sender, e->trace_id };
	char detail[160], err[128] = "";
	uint64_t t0;
	long status;
	enum conn_hook_answer ans;
	enum cr_err r;

	if (strcmp(hk->current, e->message_id) != 0) {
		/* a new head (first call, or it overtook the one being retried) */
		snprintf(hk->current, sizeof(hk->current), "%s", e->message_id);
		hk->current_tries = 0;
	}
	snprintf(detail, sizeof(detail), "attempt=%u%s", en->attempts + 1, probe ? " probe" : "");
	conn_ws_event(c, e, CLAWRELAY__V1__HOP_KIND__HOP_HOOK_CALLED, "ok", detail);
	atomic_store(&hk->busy, 1);
	t0 = mono_ms();
	status = call_hook(c, h, e, err, sizeof(err));
	atomic_store(&hk->busy, 0);
	atomic_store(&hk->last_latency_ms, mono_ms() - t0);
	atomic_store(&hk->last_status, (unsigned long long)status);
	atomic_fetch_add(&hk->calls, 1);
	if (status)
		snprintf(detail, sizeof(detail), "status=%ld", status);
	else
		snprintf(detail, sizeof(detail), "error=%s", err);
	ans = conn_hook_classify(status);
	/* a 4xx refusal shows the hook is up: 5xx, 408, 429 and no answer are its failures */
	conn_brk_result(hk->brk, conn_hook_brk_ok(status));

	if (ans == CONN_HOOK_TAKEN) {
		conn_ws_event(c, e, CLAWRELAY__V1__HOP_KIND__HOP_HOOK_ANSWERED, "ok", detail);
		atomic_fetch_add(&hk->ok, 1);
		metric_add(m_ok, 1);
		log_debug(&lc, "hook answered %ld", status);
		if ((r = conn_inbox_done(c, en)) != CR_OK) {
			/* the hook has it; a redelivery after this would repeat it */
			log_error(&lc, "removing a processed entry failed: %s", cr_strerror(r));
			conn_inbox_wait(c, &(uint64_t){ 0 }, mono_ms() + 100);
		}
		head_done(hk);
		return;
	}
	conn_ws_event(c, e, CLAWRELAY__V1__HOP_KIND__HOP_HOOK_ANSWERED,
	    status ? "error" : "timeout", detail);
	hk->current_tries++;
	if (ans == CONN_HOOK_UNAVAILABLE) {
		atomic_fetch_add(&hk->unavailable, 1);
		metric_add(m_unavail, 1);
	} else {
		atomic_fetch_add(&hk->failed, 1);
		metric_add(m_fail, 1);
		en->attempts++;
		if ((long long)en->attempts >= c->cfg.hook_max_attempts) {
			char reason[200];

			snprintf(reason, sizeof(reason), "hook failed %u times, last %s",
			    en->attempts, detail);
			dead_letter(c, en, reason);
			return;
		}
		if ((r = conn_inbox_retry(c, en)) != CR_OK)
			log_error(&lc, "storing the attempt count failed: %s", cr_strerror(r));
	}
	hk->retry_at_mono = mono_ms() + backoff_ms(hk->current_tries - 1,
	    (uint64_t)c->cfg.hook_backoff_base_ms, (uint64_t)c->cfg.hook_backoff_cap_ms);
	log_info(&lc, "hook call failed (%s, %s; attempts %u of %lld): retrying in %llu ms "
	    "or at the breaker's probe", detail, ans == CONN_HOOK_UNAVAILABLE ?
	    "hook unavailable, not counted" : "counted", en->attempts, c->cfg.hook_max_attempts,
	    (unsigned long long)(hk->retry_at_mono - mono_ms()));
}

static void *hook_thread(void *arg)
{
	struct conn *c = arg;
	struct conn_hook *hk = &c->hook;
	uint64_t gen = 0, now, wall, probe_at;
	struct conn_entry *en = NULL;
	CURL *h = curl_easy_init();
	int r, go;

	if (!h) {
		log_error(NULL, "curl_easy_init failed: no hook calls");
		return NULL;
	}
	while (!atomic_load(&hk->stop)) {
		uint64_t until = 0;

		r = conn_inbox_head(c, &en);
		if (r <= 0) {
			if (conn_inbox_wait(c, &gen, r < 0 ? mono_ms() + 100 : 0))
				break;
			continue;
		}
		now = mono_ms();
		wall = now_ms();
		if (en->env->expires_at_ms && en->env->expires_at_ms <= wall) {
			if (expire(c, en) != 0)
				until = now + 1000;
		} else if (en->attempts == 0 && en->due_ms > wall &&
		    en->due_ms <= wall + (uint64_t)c->cfg.reorder_ms) {
			/* the bound guards against a wall clock that jumped back */
			until = now + (en->due_ms - wall);
		} else {
			switch (conn_brk_state(hk->brk, &probe_at)) {
			case BRK_OPEN:
				/* nothing is called (and no attempt used) until the probe */
				if (now < probe_at)
					until = probe_at;
				break;
			case BRK_CLOSED:
				if (hk->current[0] && strcmp(hk->current, en->env->message_id) == 0 &&
				    now < hk->retry_at_mono)
					until = hk->retry_at_mono;
				break;
			case BRK_HALF_OPEN:
				break;
			}
			if (!until) {
				go = conn_brk_allow(hk->brk);
				if (go == BRK_REFUSE)
					until = now + 100;	/* a probe still out (cannot happen here) */
				else
					attempt(c, h, en, go == BRK_PROBE);
			}
		}
		conn_entry_free(en);
		en = NULL;
		/* a commit (a new, perhaps more urgent, head) also ends the wait */
		if (until && conn_inbox_wait(c, &gen, until))
			break;
	}
	conn_entry_free(en);
	curl_easy_cleanup(h);
	return NULL;
}

/* conn_hook_start - start the replay worker */
enum cr_err conn_hook_start(struct conn *c)
{
	m_ok = metric_counter("clawrelay_connector_hook_calls_total", "outcome=\"ok\"",
	    "hook calls by outcome");
	m_fail = metric_counter("clawrelay_connector_hook_calls_total", "outcome=\"error\"",
	    "hook calls by outcome");
	m_unavail = metric_counter("clawrelay_connector_hook_calls_total",
	    "outcome=\"unavailable\"", "hook calls by outcome");
	m_dead = metric_counter("clawrelay_connector_dead_letters_total", NULL,
	    "messages the hook never took");
	m_expired = metric_counter("clawrelay_connector_inbox_expired_total", NULL,
	    "messages that expired in the inbox before the hook took them");
	if (!(c->hook.brk = brkset_get(c->brks, "hook", "")))
		return CR_ERR_NOMEM;
	if (pthread_create(&c->hook.thread, NULL, hook_thread, c) != 0)
		return CR_ERR_INTERNAL;
	c->hook.started = 1;
	return CR_OK;
}

/* conn_hook_stop - stop and join it (the call in progress finishes first) */
void conn_hook_stop(struct conn *c)
{
	if (!c->hook.started)
		return;
	atomic_store(&c->hook.stop, 1);
	conn_inbox_wake_all(c);
	pthread_join(c->hook.thread, NULL);
	c->hook.started = 0;
}


/* conn_hook_status - add hook stats to a /v1/status object */
void conn_hook_status(struct conn *c, cJSON *obj)
{
	struct conn_hook *hk = &c->hook;
	cJSON *o = cJSON_AddObjectToObject(obj, "hook");

	if (!o)
		return;
	cJSON_AddStringToObject(o, "url", c->cfg.hook_url);
	cJSON_AddNumberToObject(o, "calls", (double)atomic_load(&hk->calls));
	cJSON_AddNumberToObject(o, "ok", (double)atomic_load(&hk->ok));
	cJSON_AddNumberToObject(o, "failed", (double)atomic_load(&hk->failed));
	cJSON_AddNumberToObject(o, "unavailable", (double)atomic_load(&hk->unavailable));
	cJSON_AddNumberToObject(o, "expired", (double)atomic_load(&hk->expired));
	cJSON_AddNumberToObject(o, "maxAttempts", (double)c->cfg.hook_max_attempts);
	cJSON_AddNumberToObject(o, "deadLettered", (double)atomic_load(&hk->dead_lettered));
	cJSON_AddNumberToObject(o, "lastStatus", (double)atomic_load(&hk->last_status));
	cJSON_AddNumberToObject(o, "lastLatencyMs", (double)atomic_load(&hk->last_latency_ms));
	cJSON_AddBoolToObject(o, "busy", atomic_load(&hk->busy));
}
