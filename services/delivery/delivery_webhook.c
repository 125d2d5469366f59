/*
 * delivery_webhook.c - delivery to an agent's webhook URL with libcurl.
 *
 * A fixed pool of worker threads takes attempts from one bounded FIFO
 * queue (guarded by p->mu); each worker owns one CURL easy handle for its
 * whole life, so keep-alive connections to a webhook are reused. The
 * dispatch thread only queues: a slow webhook holds one worker, never the
 * NATS callback thread. A full queue answers RETRY at once.
 *
 * The POST body is the payload bytes exactly; headers carry the message's
 * IDs (DESIGN §5) and traceparent. 2xx = DELIVERED (and, as the agent has
 * taken the message, the receipt "processed"); 4xx other than 408/429 and
 * 3xx (redirects are not followed) = REJECTED; 5xx, 408, 429, transport
 * errors and timeouts = RETRY.
 */
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <curl/curl.h>

#include "dlv.h"
#include "hop.h"
#include "log.h"
#include "util.h"

struct dlv_pool {
	struct dlv *d;
	pthread_mutex_t mu;
	pthread_cond_t cv;      /* work queued, or stopping */
	pthread_cond_t idle;    /* the queue emptied or a call ended */
	struct dlv_attempt *head, *tail;
	size_t queued, busy, queue_max;
	int stopping;           /* no more submits */
	int quit;               /* workers exit when the queue is empty */
	unsigned nthreads;
	pthread_t *threads;
	int joined;
};

static size_t
discard_body(char *p, size_t size, size_t n, void *arg)
{
	(void)p;
	(void)arg;
	return size * n;
}

/* a header value is passed on only if it holds no control bytes */
static int
header_safe(const char *v)
{
	for (; *v; v++)
		if ((unsigned char)*v < 0x20 || *v == 0x7f)
			return 0;
	return 1;
}

static struct curl_slist *
add_header(struct curl_slist *l, const char *name, const char *value, int *bad)
{
	char line[1200];
	struct curl_slist *n;

	if (value == NULL || !header_safe(value))
		return l;
	snprintf(line, sizeof(line), "%s: %s", name, value);
	n = curl_slist_append(l, line);
	if (n == NULL)
		*bad = 1;
	return n ? n : l;
}

static void
publish_processed(struct dlv *d, const Envelope *e, const char *detail)
{
	Receipt r = CLAWRELAY__V1__RECEIPT__INIT;

	(void)d;
	r.schema_version = ENV_SCHEMA;
	r.message_id = e->message_id;
	r.correlation_id = e->correlation_id;
	r.sender = e->sender;
	r.recipient = e->recipient;
	r.state = (char *)(uintptr_t)"processed";
	r.at_ms = now_ms();
	r.attempts = e->attempt;
	r.detail = (char *)(uintptr_t)detail;
	hop_receipt(&r, e->sender);
}

static void
call_webhook(struct dlv *d, CURL *h, struct dlv_attempt *a)
{
	const Envelope *e = a->req->envelope;
	struct curl_slist *hdrs = NULL;
	char tp[56], detail[300];
	long status = 0;
	int bad = 0, outcome;
	CURLcode rc;
	uint64_t t0;
	const char *ct = e->content_type[0] && header_safe(e->content_type)
	    ? e->content_type : "application/octet-stream";

	hdrs = add_header(hdrs, "Content-Type", ct, &bad);
	hdrs = add_header(hdrs, "X-Claw-Correlation-Id", e->correlation_id, &bad);
	hdrs = add_header(hdrs, "X-Claw-Message-Id", e->message_id, &bad);
	hdrs = add_header(hdrs, "X-Claw-Sender", e->sender, &bad);
	hdrs = add_header(hdrs, "X-Claw-Priority", env_priority_name(e->priority), &bad);
	if (strlen(e->trace_id) == 32 && strlen(e->span_id) == 16) {
		traceparent_format(tp, e->trace_id, e->span_id, e->trace_flags);
		hdrs = add_header(hdrs, "traceparent", tp, &bad);
	}
	/* no "Expect: 100-continue" round trip before larger bodies */
	hdrs = add_header(hdrs, "Expect", "", &bad);
	if (bad) {
		curl_slist_free_all(hdrs);
		dlv_finish(a, DLV_RETRY, "out of memory", 0);
		return;
	}

	curl_easy_reset(h);
	curl_easy_setopt(h, CURLOPT_URL, a->url);
	curl_easy_setopt(h, CURLOPT_PROTOCOLS_STR, "http,https");
	curl_easy_setopt(h, CURLOPT_NOSIGNAL, 1L);
	curl_easy_setopt(h, CURLOPT_POST, 1L);
	curl_easy_setopt(h, CURLOPT_POSTFIELDS, e->payload.data ? (const char *)e->payload.data : "");
	curl_easy_setopt(h, CURLOPT_POSTFIELDSIZE_LARGE, (curl_off_t)e->payload.len);
	curl_easy_setopt(h, CURLOPT_HTTPHEADER, hdrs);
	curl_easy_setopt(h, CURLOPT_TIMEOUT_MS, (long)a->timeout_ms);
	curl_easy_setopt(h, CURLOPT_CONNECTTIMEOUT_MS, (long)a->timeout_ms);
	curl_easy_setopt(h, CURLOPT_WRITEFUNCTION, discard_body);
	curl_easy_setopt(h, CURLOPT_USERAGENT, "clawrelay-delivery");
	curl_easy_setopt(h, CURLOPT_FOLLOWLOCATION, 0L);
	curl_easy_setopt(h, CURLOPT_TCP_NODELAY, 1L);

	hop_emit(e, CLAWRELAY__V1__HOP_KIND__HOP_WEBHOOK_CALLED, "ok", NULL);
	t0 = mono_ms();
	rc = curl_easy_perform(h);
	curl_slist_free_all(hdrs);
	if (rc != CURLE_OK) {
		snprintf(detail, sizeof(detail), "%s after %llu ms", rc == CURLE_OPERATION_TIMEDOUT
		    ? "timeout" : curl_easy_strerror(rc), (unsigned long long)(mono_ms() - t0));
		hop_emit(e, CLAWRELAY__V1__HOP_KIND__HOP_WEBHOOK_ANSWERED, "error", detail);
		dlv_finish(a, DLV_RETRY, detail, 0);
		return;
	}
	curl_easy_getinfo(h, CURLINFO_RESPONSE_CODE, &status);
	snprintf(detail, sizeof(detail), "http %ld in %llu ms", status,
	    (unsigned long long)(mono_ms() - t0));
	if (status >= 200 && status < 300)
		outcome = DLV_DELIVERED;
	else if (status == 408 || status == 429 || status >= 500 || status < 200)
		outcome = DLV_RETRY;
	else
		outcome = DLV_REJECTED;	/* 3xx (not followed) and other 4xx */
	hop_emit(e, CLAWRELAY__V1__HOP_KIND__HOP_WEBHOOK_ANSWERED,
	    outcome == DLV_DELIVERED ? "ok" : "error", detail);
	if (outcome == DLV_DELIVERED) {
		hop_emit(e, CLAWRELAY__V1__HOP_KIND__HOP_DELIVERED, "ok", "webhook");
		publish_processed(d, e, detail);
	} else if (outcome == DLV_REJECTED) {
		hop_emit(e, CLAWRELAY__V1__HOP_KIND__HOP_REJECTED, "error", detail);
	}
	dlv_finish(a, outcome, outcome == DLV_DELIVERED ? NULL : detail, (unsigned)status);
}

static void *
worker_main(void *arg)
{
	struct dlv_pool *p = arg;
	CURL *h = curl_easy_init();

	for (;;) {
		struct dlv_attempt *a;
		pthread_mutex_lock(&p->mu);
		while (p->head == NULL && !p->quit)
			pthread_cond_wait(&p->cv, &p->mu);
		if (p->head == NULL) {
			pthread_mutex_unlock(&p->mu);
			break;
		}
		a = p->head;
		p->head = a->next;
		if (p->head == NULL)
			p->tail = NULL;
		a->next = NULL;
		p->queued--;
		p->busy++;
		pthread_mutex_unlock(&p->mu);

		if (h == NULL)
			dlv_finish(a, DLV_RETRY, "curl handle unavailable", 0);
		else
			call_webhook(p->d, h, a);
		atomic_fetch_sub(&p->d->inflight_webhook, 1);

		pthread_mutex_lock(&p->mu);
		p->busy--;
		pthread_cond_broadcast(&p->idle);
		pthread_mutex_unlock(&p->mu);
	}
	if (h != NULL)
		curl_easy_cleanup(h);
	return NULL;
}

/* dlv_pool_new - start the webhook workers; caller frees with dlv_pool_free */
struct dlv_pool *
dlv_pool_new(struct dlv *d, unsigned workers, size_t queue_max)
{
	struct dlv_pool *p = calloc(1, sizeof(*p));

	if (p == NULL)
		return NULL;
	p->d = d;
	p->queue_max = queue_max;
	pthread_mutex_init(&p->mu, NULL);
	pthread_cond_init(&p->cv, NULL);
	pthread_cond_init(&p->idle, NULL);
	p->threads = calloc(workers, sizeof(*p->threads));
	if (p->threads == NULL)
		goto fail;
	for (unsigned i = 0; i < workers; i++) {
		if (pthread_create(&p->threads[i], NULL, worker_main, p) != 0) {
			log_error(NULL, "webhook worker %u: cannot start a thread", i);
			goto fail;
		}
		p->nthreads++;
	}
	return p;
fail:
	dlv_pool_free(p);
	return NULL;
}

/* dlv_pool_submit - queue a webhook attempt (takes a on CR_OK) */
enum cr_err
dlv_pool_submit(struct dlv_pool *p, struct dlv_attempt *a)
{
	enum cr_err err = CR_OK;

	pthread_mutex_lock(&p->mu);
	if (p->stopping) {
		err = CR_ERR_UNAVAILABLE;
	} else if (p->queued >= p->queue_max) {
		err = CR_ERR_FULL;
	} else {
		a->next = NULL;
		if (p->tail)
			p->tail->next = a;
		else
			p->head = a;
		p->tail = a;
		p->queued++;
		pthread_cond_signal(&p->cv);
	}
	pthread_mutex_unlock(&p->mu);
	return err;
}

/* dlv_pool_counts - attempts queued and calls in progress */
void
dlv_pool_counts(struct dlv_pool *p, size_t *queued, size_t *busy)
{
	pthread_mutex_lock(&p->mu);
	*queued = p->queued;
	*busy = p->busy;
	pthread_mutex_unlock(&p->mu);
}

/* dlv_pool_drain - stop taking work, wait for it, answer the rest, join */
void
dlv_pool_drain(struct dlv_pool *p, uint64_t wait_ms)
{
	struct dlv_attempt *left;
	uint64_t until = mono_ms() + wait_ms;

	if (p == NULL || p->joined)
		return;
	pthread_mutex_lock(&p->mu);
	p->stopping = 1;
	while ((p->queued > 0 || p->busy > 0) && mono_ms() < until) {
		struct timespec ts;
		clock_gettime(CLOCK_REALTIME, &ts);
		ts.tv_nsec += 50 * 1000000L;
		if (ts.tv_nsec >= 1000000000L) {
			ts.tv_sec++;
			ts.tv_nsec -= 1000000000L;
		}
		pthread_cond_timedwait(&p->idle, &p->mu, &ts);
	}
	left = p->head;
	p->head = p->tail = NULL;
	p->queued = 0;
	p->quit = 1;
	pthread_cond_broadcast(&p->cv);
	pthread_mutex_unlock(&p->mu);

	while (left != NULL) {
		struct dlv_attempt *a = left;
		left = a->next;
		atomic_fetch_sub(&p->d->inflight_webhook, 1);
		dlv_finish(a, DLV_RETRY, "delivery is stopping", 0);
	}
	for (unsigned i = 0; i < p->nthreads; i++)
		pthread_join(p->threads[i], NULL);
	p->joined = 1;
}

/* dlv_pool_free - drain (no wait) and free; NULL ok */
void
dlv_pool_free(struct dlv_pool *p)
{
	if (p == NULL)
		return;
	dlv_pool_drain(p, 0);
	pthread_cond_destroy(&p->idle);
	pthread_cond_destroy(&p->cv);
	pthread_mutex_destroy(&p->mu);
	free(p->threads);
	free(p);
}
