/*
 * delivery_dispatch.c - one dispatch request = one delivery attempt.
 *
 * dlv_on_dispatch runs on the dispatch subscription's nats.c thread: it
 * decodes and checks the DispatchRequest, emits HOP_DELIVERY_ATTEMPT, looks
 * the recipient up in the registry cache and hands the attempt either to the
 * webhook pool (delivery_webhook.c) or to the socket path
 * (delivery_socket.c). It never waits for the destination: both paths answer
 * later, from other threads, through dlv_finish(), which publishes the
 * DispatchResult on the copied reply subject.
 *
 * A request that cannot be decoded is answered at once with
 * DISPATCH_REJECTED ("bad dispatch request: ...") and counted; it is never
 * fatal. Counters are atomics; nothing else here is shared.
 */
#include <stdlib.h>
#include <string.h>

#include "dlv.h"
#include "hop.h"
#include "log.h"
#include "util.h"

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

/* dlv_attempt_free - free an attempt without answering; NULL ok */
void
dlv_attempt_free(struct dlv_attempt *a)
{
	if (a == NULL)
		return;
	free(a->reply);
	if (a->req != NULL)
		protobuf_c_message_free_unpacked(&a->req->base, NULL);
	free(a);
}

static void
send_result(struct dlv *d, const char *reply, const char *message_id, const char *recipient,
    const char *correlation_id, int outcome, const char *detail, unsigned http_status)
{
	DispatchResult r = CLAWRELAY__V1__DISPATCH_RESULT__INIT;
	unsigned char buf[2048];
	void *heap = NULL;
	size_t len = 0;
	enum cr_err err;

	if (reply == NULL || *reply == '\0')
		return;
	r.schema_version = ENV_SCHEMA;
	r.message_id = (char *)(uintptr_t)(message_id ? message_id : "");
	r.recipient = (char *)(uintptr_t)(recipient ? recipient : "");
	r.correlation_id = (char *)(uintptr_t)(correlation_id ? correlation_id : "");
	r.outcome = (Clawrelay__V1__DispatchOutcome)outcome;
	r.detail = (char *)(uintptr_t)(detail ? detail : "");
	r.http_status = http_status;
	err = env_pack_into(&r.base, buf, sizeof(buf), &len);
	if (err == CR_ERR_TOO_BIG)
		err = env_pack(&r.base, &heap, &len);
	if (err == CR_OK)
		err = bus_publish_asap(d->bus, reply, heap ? heap : buf, len);
	if (err != CR_OK) {
		struct log_ctx lc = { correlation_id, message_id, recipient };
		log_warn(&lc, "dispatch reply: %s", cr_strerror(err));
	}
	free(heap);
}

/* dlv_finish - reply with the DispatchResult, count it, free a */
void
dlv_finish(struct dlv_attempt *a, int outcome, const char *detail, unsigned http_status)
{
	struct dlv *d = a->d;
	const Envelope *e = a->req->envelope;
	struct log_ctx lc = { e->correlation_id, e->message_id, e->recipient };
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
	send_result(d, a->reply, e->message_id, e->recipient, e->correlation_id, outcome,
	    detail, http_status);
	dlv_attempt_free(a);
}

static void
answer_bad(struct dlv *d, natsMsg *msg, const char *why)
{
	DispatchResult r = CLAWRELAY__V1__DISPATCH_RESULT__INIT;
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
	if (env_pack_into(&r.base, buf, sizeof(buf), &len) == CR_OK)
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

/* dlv_on_dispatch - bus handler for <P>.delivery.dispatch */
void
dlv_on_dispatch(void *arg, natsMsg *msg)
{
	struct dlv *d = arg;
	ProtobufCMessage *m = NULL;
	struct dlv_attempt *a = NULL;
	const char *why = NULL;
	const char *reply = natsMsg_GetReply(msg);
	struct reg_agent ag;
	const Envelope *e;
	enum cr_err err;

	err = env_unpack_msg(&clawrelay__v1__dispatch_request__descriptor,
	    natsMsg_GetData(msg), (size_t)natsMsg_GetDataLength(msg), &m);
	if (err != CR_OK) {
		answer_bad(d, msg, cr_strerror(err));
		return;
	}
	a = calloc(1, sizeof(*a));
	if (a == NULL) {
		protobuf_c_message_free_unpacked(m, NULL);
		answer_bad(d, msg, "out of memory");
		return;
	}
	a->d = d;
	a->req = (DispatchRequest *)m;
	a->start_mono = mono_ms();
	if (a->req->envelope == NULL) {
		answer_bad(d, msg, "no envelope");
		goto drop;
	}
	if (env_validate(a->req->envelope, &why) != CR_OK) {
		answer_bad(d, msg, why ? why : "invalid envelope");
		goto drop;
	}
	if (reply != NULL && *reply != '\0' && (a->reply = strdup(reply)) == NULL) {
		answer_bad(d, msg, "out of memory");
		goto drop;
	}
	e = a->req->envelope;
	hop_emit(e, CLAWRELAY__V1__HOP_KIND__HOP_DELIVERY_ATTEMPT, "ok", NULL);

	err = reg_cache_agent(d->reg, e->recipient, &ag);
	if (err == CR_ERR_NOT_FOUND) {
		hop_emit(e, CLAWRELAY__V1__HOP_KIND__HOP_REJECTED, "error", "unknown agent");
		dlv_finish(a, DLV_REJECTED, "unknown agent", 0);
		return;
	}
	if (err == CR_OK) {
		snprintf(a->url, sizeof(a->url), "%s", ag.webhook_url);
	} else {
		/* registry unreachable and nothing cached: trust the request */
		struct log_ctx lc = { e->correlation_id, e->message_id, e->recipient };
		log_warn(&lc, "registry: %s; using the dispatch request's destination",
		    cr_strerror(err));
		snprintf(a->url, sizeof(a->url), "%s", a->req->webhook_url);
	}
	if (a->url[0] != '\0') {
		a->timeout_ms = budget_ms(d->webhook_timeout_ms, a->req->deadline_ms);
		if (a->timeout_ms <= 0) {
			dlv_finish(a, DLV_RETRY, "deadline passed", 0);
			return;
		}
		atomic_fetch_add(&d->inflight_webhook, 1);
		err = dlv_pool_submit(d->pool, a);
		if (err != CR_OK) {
			atomic_fetch_sub(&d->inflight_webhook, 1);
			dlv_finish(a, DLV_RETRY, err == CR_ERR_FULL ? "webhook queue full"
			    : "delivery is stopping", 0);
		}
		return;
	}
	a->timeout_ms = budget_ms(d->socket_timeout_ms, a->req->deadline_ms);
	if (a->timeout_ms <= 0) {
		dlv_finish(a, DLV_RETRY, "deadline passed", 0);
		return;
	}
	dlv_socket_start(a);
	return;
drop:
	dlv_attempt_free(a);
}
