/*
 * conn_hook.c - replay of the inbox to the local agent's hook.
 *
 * One worker thread, so the hook sees one call at a time and messages in
 * inbox order: lane (critical, normal, low), then message_id. It always
 * works on the current head of the inbox, re-read after every step, so a
 * critical message that arrives overtakes waiting normal ones.
 *
 * A message may wait up to REORDER_MS in the inbox before its first call
 * (its due time, set by conn_inbox_deliver_many): only when a gap is plausible,
 * i.e. an older message of its lane may still be on its way (no queue_seq,
 * or the lane saw an out-of-order arrival lately). A message that arrives in
 * queue_seq order is called at once.
 *
 * 2xx: the entry moves to the done IDs (one txn). Anything else (status,
 * timeout, refused connection): the attempt count is stored, and the same
 * head is retried after a jittered exponential backoff; after
 * HOOK_MAX_ATTEMPTS it moves to the dead letters and a dead_letter frame
 * tells the relay, which tells the sender. Hop events: HOOK_CALLED before
 * each attempt, HOOK_ANSWERED after (outcome ok for 2xx, detail status=N).
 *
 * Threads: the curl handle and the retry state (hook.current...) belong to
 * the worker; the counters are atomics read by /v1/status.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <curl/curl.h>

#include "conn.h"
#include "log.h"
#include "metrics.h"

static struct metric *m_ok, *m_fail, *m_dead;

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

static void attempt(struct conn *c, CURL *h, struct conn_entry *en)
{
	struct conn_hook *hk = &c->hook;
	const Envelope *e = en->env;
	struct log_ctx lc = { e->correlation_id, e->message_id, e->sender };
	char detail[160], err[128] = "";
	uint64_t t0;
	long status;
	enum cr_err r;

	snprintf(detail, sizeof(detail), "attempt=%u", en->attempts + 1);
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

	if (status >= 200 && status < 300) {
		conn_ws_event(c, e, CLAWRELAY__V1__HOP_KIND__HOP_HOOK_ANSWERED, "ok", detail);
		atomic_fetch_add(&hk->ok, 1);
		metric_add(m_ok, 1);
		log_debug(&lc, "hook answered %ld", status);
		if ((r = conn_inbox_done(c, en)) != CR_OK) {
			/* the hook has it; a redelivery after this would repeat it */
			log_error(&lc, "removing a processed entry failed: %s", cr_strerror(r));
			conn_inbox_wait(c, &(uint64_t){ 0 }, mono_ms() + 100);
		}
		hk->current[0] = '\0';
		hk->current_attempts = 0;
		return;
	}
	conn_ws_event(c, e, CLAWRELAY__V1__HOP_KIND__HOP_HOOK_ANSWERED,
	    status ? "error" : "timeout", detail);
	atomic_fetch_add(&hk->failed, 1);
	metric_add(m_fail, 1);
	en->attempts++;
	if ((long long)en->attempts >= c->cfg.hook_max_attempts) {
		char reason[200];

		snprintf(reason, sizeof(reason), "hook failed %u times, last %s", en->attempts,
		    detail);
		if ((r = conn_inbox_dead(c, en, reason)) != CR_OK) {
			log_error(&lc, "dead-lettering failed: %s", cr_strerror(r));
			hk->retry_at_mono = mono_ms() + 1000;
			return;
		}
		atomic_fetch_add(&hk->dead_lettered, 1);
		metric_add(m_dead, 1);
		send_dead_letter(c, e, reason);
		log_warn(&lc, "dead-lettered: %s", reason);
		hk->current[0] = '\0';
		hk->current_attempts = 0;
		return;
	}
	if ((r = conn_inbox_retry(c, en)) != CR_OK)
		log_error(&lc, "storing the attempt count failed: %s", cr_strerror(r));
	snprintf(hk->current, sizeof(hk->current), "%s", e->message_id);
	hk->current_attempts = en->attempts;
	hk->retry_at_mono = mono_ms() + backoff_ms(en->attempts - 1,
	    (uint64_t)c->cfg.hook_backoff_base_ms, (uint64_t)c->cfg.hook_backoff_cap_ms);
	log_info(&lc, "hook attempt %u failed (%s): retrying in %llu ms", en->attempts, detail,
	    (unsigned long long)(hk->retry_at_mono - mono_ms()));
}

static void *hook_thread(void *arg)
{
	struct conn *c = arg;
	struct conn_hook *hk = &c->hook;
	uint64_t gen = 0, now, wall;
	struct conn_entry *en = NULL;
	CURL *h = curl_easy_init();
	int r;

	if (!h) {
		log_error(NULL, "curl_easy_init failed: no hook calls");
		return NULL;
	}
	while (!atomic_load(&hk->stop)) {
		r = conn_inbox_head(c, &en);
		if (r <= 0) {
			if (conn_inbox_wait(c, &gen, r < 0 ? mono_ms() + 100 : 0))
				break;
			continue;
		}
		now = mono_ms();
		wall = now_ms();
		/* the bound guards against a wall clock that jumped back */
		if (en->attempts == 0 && en->due_ms > wall &&
		    en->due_ms <= wall + (uint64_t)c->cfg.reorder_ms) {
			uint64_t d = en->due_ms - wall;

			conn_entry_free(en);
			en = NULL;
			if (conn_inbox_wait(c, &gen, now + d))
				break;
			continue;
		}
		if (hk->current[0] && strcmp(hk->current, en->env->message_id) == 0 &&
		    now < hk->retry_at_mono) {
			conn_entry_free(en);
			en = NULL;
			if (conn_inbox_wait(c, &gen, hk->retry_at_mono))
				break;
			continue;
		}
		attempt(c, h, en);
		conn_entry_free(en);
		en = NULL;
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
	m_dead = metric_counter("clawrelay_connector_dead_letters_total", NULL,
	    "messages the hook never took");
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
	cJSON_AddNumberToObject(o, "deadLettered", (double)atomic_load(&hk->dead_lettered));
	cJSON_AddNumberToObject(o, "lastStatus", (double)atomic_load(&hk->last_status));
	cJSON_AddNumberToObject(o, "lastLatencyMs", (double)atomic_load(&hk->last_latency_ms));
	cJSON_AddBoolToObject(o, "busy", atomic_load(&hk->busy));
}
