/*
 * delivery_dispatch.c - one dispatch request = a batch of delivery attempts.
 *
 * dlv_on_dispatch runs on the dispatch subscription's nats.c thread: it
 * decodes the DispatchBatch, and for each request checks it, emits
 * HOP_DELIVERY_ATTEMPT, looks the recipient up in the registry cache and
 * hands the attempt either to the webhook pool (delivery_webhook.c) or to
 * the socket path (delivery_socket.c; consecutive socket attempts for one
 * recipient go to its gateway in one request). It never waits for the
 * destination: both paths finish attempts later, from other threads,
 * through dlv_finish(), which records the result in the batch; the last
 * attempt to finish publishes the DispatchBatchResult on the copied reply
 * subject and frees the batch.
 *
 * A request that cannot be decoded is answered at once with one
 * DISPATCH_REJECTED result ("bad dispatch request: ...") and counted; a bad
 * entry of a good batch is rejected alone. Never fatal. The batch's `left`
 * is the only thing attempts share: each writes its own result slot first.
 */
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>

#include "dlv.h"
#include "hop.h"
#include "log.h"
#include "util.h"

struct dlv_batch {
	struct dlv *d;
	char *reply;              /* reply subject (copied); NULL: nobody waits */
	DispatchBatch *req;       /* owned: the attempts borrow its requests */
	size_t n;
	atomic_size_t left;       /* attempts not finished */
	DispatchResult *res;      /* n results; detail strings owned */
	DispatchResult **resp;    /* n pointers into res, for packing */
};

static const char *const outcome_names[DLV_NOUTCOMES] = {
	"delivered", "offline", "nacked", "retry", "rejected", "breaker_open",
};

/* dlv_outcome_name - "delivered", "offline", ... */
const char *
dlv_outcome_name(int outcome)
{
	if (outcome < 0 || outcome >= DLV_NOUTCOMES)
		return "unknown";
	return outcome_names[outcome];
}

static char empty[1];

static void
batch_free(struct dlv_batch *b)
{
	if (b == NULL)
		return;
	for (size_t i = 0; b->res != NULL && i < b->n; i++)
		if (b->res[i].detail != empty)
			free(b->res[i].detail);
	free(b->res);
	free(b->resp);
	free(b->reply);
	if (b->req != NULL)
		protobuf_c_message_free_unpacked(&b->req->base, NULL);
	free(b);
}

/* publish the batch's results (the last attempt's thread) and free it */
static void
batch_answer(struct dlv_batch *b)
{
	DispatchBatchResult r = CLAWRELAY__V1__DISPATCH_BATCH_RESULT__INIT;
	unsigned char buf[4096];
	void *heap = NULL;
	const void *wire;
	size_t len = 0;
	enum cr_err err = CR_ERR_NOMEM;

	if (b->reply != NULL) {
		r.schema_version = ENV_SCHEMA;
		r.n_results = b->n;
		r.results = b->resp;
		if ((wire = env_pack_buf(&r.base, buf, sizeof(buf), &heap, &len)) != NULL)
			err = bus_publish_asap(b->d->bus, b->reply, wire, len);
		if (err != CR_OK)
			log_warn(NULL, "dispatch reply (%zu results): %s", b->n, cr_strerror(err));
		free(heap);
	}
	batch_free(b);
}

/* dlv_finish - record the result in the batch, count it, free a */
void
dlv_finish(struct dlv_attempt *a, int outcome, const char *detail, unsigned http_status)
{
	struct dlv *d = a->d;
	struct dlv_batch *b = a->batch;
	const Envelope *e = a->req->envelope;
	DispatchResult *r = &b->res[a->idx];
	struct log_ctx lc = { e->correlation_id, e->message_id, e->recipient, e->trace_id };
	uint64_t took = mono_ms() - a->start_mono;

	if (outcome >= 0 && outcome < DLV_NOUTCOMES) {
		atomic_fetch_add(&d->outcomes[outcome], 1);
		metric_add(d->m_outcome[outcome], 1);
	}
	if (outcome == DLV_DELIVERED)
		log_debug(&lc, "attempt %u delivered (%s) in %llu ms", e->attempt,
		    a->url[0] ? "webhook" : "socket", (unsigned long long)took);
	else
		log_info(&lc, "attempt %u %s after %llu ms%s%s", e->attempt,
		    dlv_outcome_name(outcome), (unsigned long long)took,
		    detail && *detail ? ": " : "", detail ? detail : "");
	if (a->bk != NULL) {
		/* the destination's health: it took the message or refused it
		 * for good (it answered), or it is absent (offline is no fault
		 * of the destination; relay-session handles it); a timeout, a 5xx,
		 * a refused connection or a NACK (inbox full) count against it */
		if (outcome == DLV_RETRY || outcome == DLV_NACKED)
			brk_failure(a->bk, mono_ms());
		else
			brk_success(a->bk, mono_ms());
	}
	r->outcome = (Clawrelay__V1__DispatchOutcome)outcome;
	r->http_status = http_status;
	if (detail != NULL && *detail != '\0' && (r->detail = strdup(detail)) == NULL)
		r->detail = empty;
	free(a);
	if (atomic_fetch_sub(&b->left, 1) == 1)
		batch_answer(b);
}

static void
answer_bad(struct dlv *d, natsMsg *msg, const char *why)
{
	DispatchResult r = CLAWRELAY__V1__DISPATCH_RESULT__INIT, *rp = &r;
	DispatchBatchResult br = CLAWRELAY__V1__DISPATCH_BATCH_RESULT__INIT;
	char detail[160];
	unsigned char buf[512];
	size_t len = 0;

	atomic_fetch_add(&d->bad_requests, 1);
	metric_add(d->m_bad, 1);
	snprintf(detail, sizeof(detail), "bad dispatch request: %s", why);
	log_warn(NULL, "%s (%d bytes from %s)", detail, natsMsg_GetDataLength(msg),
	    natsMsg_GetReply(msg) ? natsMsg_GetReply(msg) : "-");
	r.schema_version = ENV_SCHEMA;
	r.outcome = DLV_REJECTED;
	r.detail = detail;
	br.schema_version = ENV_SCHEMA;
	br.n_results = 1;
	br.results = &rp;
	if (env_pack_into(&br.base, buf, sizeof(buf), &len) == CR_OK)
		bus_reply(d->bus, msg, buf, len);
}

/* the attempt's time budget: the setting, capped by the request's deadline */
static int
budget_ms(long long setting, uint64_t deadline_ms)
{
	long long t = setting;
	if (deadline_ms != 0) {
		uint64_t now = now_ms();
		long long left = deadline_ms > now ? (long long)(deadline_ms - now) : 0;
		if (left < t)
			t = left;
	}
	return (int)t;
}

/* route one attempt: finished at once, queued to the webhook pool, or
 * returned (1) for the socket path */
static int
route(struct dlv *d, struct dlv_attempt *a)
{
	const Envelope *e = a->req->envelope;
	const char *why = NULL;
	struct reg_agent ag;
	enum cr_err err;

	if (e == NULL) {
		atomic_fetch_add(&d->bad_requests, 1);
		dlv_finish(a, DLV_REJECTED, "bad dispatch request: no envelope", 0);
		return 0;
	}
	if (env_validate(e, &why) != CR_OK) {
		char detail[200];
		atomic_fetch_add(&d->bad_requests, 1);
		metric_add(d->m_bad, 1);
		snprintf(detail, sizeof(detail), "bad dispatch request: %s",
		    why ? why : "invalid envelope");
		dlv_finish(a, DLV_REJECTED, detail, 0);
		return 0;
	}
	hop_emit(e, CLAWRELAY__V1__HOP_KIND__HOP_DELIVERY_ATTEMPT, "ok", NULL);

	err = reg_cache_agent(d->reg, e->recipient, &ag);
	if (err == CR_ERR_NOT_FOUND) {
		hop_emit(e, CLAWRELAY__V1__HOP_KIND__HOP_REJECTED, "error", "unknown agent");
		dlv_finish(a, DLV_REJECTED, "unknown agent", 0);
		return 0;
	}
	if (err == CR_OK) {
		snprintf(a->url, sizeof(a->url), "%s", ag.webhook_url);
	} else {
		/* registry unreachable and nothing cached: trust the request */
		struct log_ctx lc = { e->correlation_id, e->message_id, e->recipient, e->trace_id };
		log_warn(&lc, "registry: %s; using the dispatch request's destination",
		    cr_strerror(err));
		snprintf(a->url, sizeof(a->url), "%s", a->req->webhook_url);
	}
	/* a request that waited past its deadline (a busy or paused delivery)
	 * is not the destination's fault: answered before the breaker counts */
	a->timeout_ms = budget_ms(a->url[0] ? d->webhook_timeout_ms : d->socket_timeout_ms,
	    a->req->deadline_ms);
	if (a->timeout_ms <= 0) {
		dlv_finish(a, DLV_RETRY, "deadline passed", 0);
		return 0;
	}
	/* the destination's breaker (DESIGN §8): while it is open the attempt
	 * is answered at once, with the time the destination may be tried again */
	if ((a->bk = brkset_get(d->brk, "destination", e->recipient)) != NULL &&
	    brk_allow(a->bk, mono_ms()) == BRK_REFUSE) {
		uint64_t retry = brkset_retry_in(a->bk);

		a->bk = NULL;	/* not a call: nothing to report */
		/* 0: half-open with its probe out; its answer decides */
		a->batch->res[a->idx].retry_after_ms = retry > 0 ? retry : 1000;
		dlv_finish(a, DLV_BREAKER_OPEN, "destination breaker open", 0);
		return 0;
	}
	if (a->url[0] != '\0') {
		atomic_fetch_add(&d->inflight_webhook, 1);
		err = dlv_pool_submit(d->pool, a);
		if (err != CR_OK) {
			/* local overload, reported as a failure: a probe must end */
			atomic_fetch_sub(&d->inflight_webhook, 1);
			dlv_finish(a, DLV_RETRY, err == CR_ERR_FULL ? "webhook queue full"
			    : "delivery is stopping", 0);
		}
		return 0;
	}
	return 1;
}

/* start the collected socket attempts: one request per run of one recipient */
static void
socket_runs(struct dlv_attempt **v, size_t n)
{
	size_t i = 0;

	while (i < n) {
		size_t j = i + 1;
		while (j < n && strcmp(v[j]->req->envelope->recipient,
		    v[i]->req->envelope->recipient) == 0)
			j++;
		dlv_socket_start(v + i, j - i);
		i = j;
	}
}

/* dlv_on_dispatch - bus handler for <P>.delivery.dispatch */
void
dlv_on_dispatch(void *arg, natsMsg *msg)
{
	struct dlv *d = arg;
	ProtobufCMessage *m = NULL;
	struct dlv_batch *b = NULL;
	struct dlv_attempt **sock = NULL;
	const char *reply = natsMsg_GetReply(msg);
	size_t n, nsock = 0;
	uint64_t start = mono_ms();
	enum cr_err err;

	err = env_unpack_msg(&clawrelay__v1__dispatch_batch__descriptor,
	    natsMsg_GetData(msg), (size_t)natsMsg_GetDataLength(msg), &m);
	if (err != CR_OK) {
		answer_bad(d, msg, cr_strerror(err));
		return;
	}
	n = ((DispatchBatch *)m)->n_requests;
	if (n == 0) {
		protobuf_c_message_free_unpacked(m, NULL);
		answer_bad(d, msg, "no requests");
		return;
	}
	if ((b = calloc(1, sizeof(*b))) == NULL ||
	    (b->res = calloc(n, sizeof(*b->res))) == NULL ||
	    (b->resp = calloc(n, sizeof(*b->resp))) == NULL ||
	    (sock = calloc(n, sizeof(*sock))) == NULL ||
	    (reply != NULL && *reply != '\0' && (b->reply = strdup(reply)) == NULL)) {
		if (b != NULL)
			b->n = 0;
		batch_free(b);
		free(sock);
		protobuf_c_message_free_unpacked(m, NULL);
		answer_bad(d, msg, "out of memory");
		return;
	}
	b->d = d;
	b->req = (DispatchBatch *)m;
	b->n = n;
	atomic_init(&b->left, n);
	for (size_t i = 0; i < n; i++) {
		const DispatchRequest *rq = b->req->requests[i];
		const Envelope *e = rq->envelope;

		clawrelay__v1__dispatch_result__init(&b->res[i]);
		b->res[i].schema_version = ENV_SCHEMA;
		b->res[i].message_id = e && e->message_id ? e->message_id : empty;
		b->res[i].recipient = e && e->recipient ? e->recipient : empty;
		b->res[i].correlation_id = e && e->correlation_id ? e->correlation_id : empty;
		b->res[i].detail = empty;
		b->resp[i] = &b->res[i];
	}
	/* from here on the batch answers itself when its last attempt ends; hold
	 * one extra count so that it cannot end while this loop still runs */
	atomic_fetch_add(&b->left, 1);
	for (size_t i = 0; i < n; i++) {
		struct dlv_attempt *a = calloc(1, sizeof(*a));

		if (a == NULL) {
			b->res[i].outcome = DLV_RETRY;
			atomic_fetch_sub(&b->left, 1);
			continue;
		}
		a->d = d;
		a->batch = b;
		a->idx = i;
		a->req = b->req->requests[i];
		a->start_mono = start;
		if (route(d, a))
			sock[nsock++] = a;
	}
	socket_runs(sock, nsock);
	free(sock);
	if (atomic_fetch_sub(&b->left, 1) == 1)
		batch_answer(b);
}
