/*
 * notifier_notice.c - failures and delay warnings from the notice stream,
 * each told exactly once.
 *
 * Whoever sees a message fail for good (relay-session, gateway) publishes
 * a Failure on <P>.failure.<tok(sender)>; relay-session publishes one on
 * <P>.delayed.<tok(sender)> for a message still undelivered after its
 * delay-warning time. Both are plain publishes kept by the JetStream stream
 * <PREFIX>_NOTICES (bus_notice_stream), so a failure published while no
 * notifier runs waits there. The notifier reads the stream through one
 * durable pull consumer ("notifier") that every replica shares: the server
 * hands each stream message to one replica at a time, and the replica acks
 * it only once its work is done (or NAKs it with a delay to try again).
 *
 * The work for a failure:
 *   1. fold it into the message's StatusRecord (state failed, reason,
 *      detail, attempts, times), synchronously with compare-and-set;
 *   2. publish the public notice on <P>.notify.failure.<tok(sender)>: the
 *      Failure as published, with the X-Claw-* headers of DESIGN 5;
 *   3. enqueue a critical KIND_DELIVERY_STATUS message to the sender, from
 *      ENV_SYSTEM_SENDER, through relay-session's <P>.session.<p>.enqueue of
 *      the sender's partition, with an idempotency key made from the failed
 *      message's ID, so doing it twice queues it once; retried (NAK with a
 *      growing delay) until relay-session answers queued, duplicate or a
 *      refusal for good. A failed DELIVERY_STATUS message (sender
 *      ENV_SYSTEM_SENDER) gets 1 and 2, never another DELIVERY_STATUS.
 * A delay warning gets only 2, on <P>.notify.delayed.<tok(sender)>.
 *
 * Exactly once: redeliveries (a replica died before its ack, an ack was
 * lost) and duplicate publications (a service repeating a failure after a
 * crash) mean the same notice may be handled twice, even at once by two
 * replicas. A claim record in the status bucket, key
 * n.<f|d>.<kvtok(message_id)>, decides who publishes, by compare-and-set:
 *   absent  -> "claimed <ms> <owner>"  (create: only one replica wins)
 *   claimed -> "noticed <ms> <owner>"  (right after the notice is on the wire)
 *   noticed -> "done <ms> <owner>"     (after the DELIVERY_STATUS enqueue)
 * A replica that finds "claimed" younger than NOTICE_CLAIM_S leaves the
 * message for later (NAK with delay); older, the claimer died between claim
 * and publish, and the replica takes the claim over (CAS) and publishes.
 * "noticed" means: publish no more, only enqueue (idempotent). "done": ack.
 * The window left: a replica that dies (or is cut off from NATS) after its
 * notice left and before "noticed" was written - about one KV round trip,
 * well under a millisecond on a healthy bus - lets another replica publish
 * the notice a second time once the claim is stale. Subscribers that must
 * never see a repeat drop notices by X-Claw-Message-Id. The DELIVERY_STATUS
 * message cannot be doubled that way (relay-session's idempotency window,
 * 24 h by default, covers it).
 *
 * Threads: NOTICE_WORKERS threads, each with its own pull subscription
 * bound to the shared consumer, handle one message at a time; they share
 * only atomics and the (thread-safe) bus. Start and stop on the main
 * thread.
 */
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "log.h"
#include "ntf.h"
#include "status.h"
#include "util.h"

#define NTF_CONSUMER "notifier"
#define NTF_FETCH_BATCH 8
#define NTF_FETCH_WAIT_MS 1000
#define NTF_RETRY_MIN_MS 1000
#define NTF_RETRY_MAX_MS 60000
#define NTF_CLAIM_TRIES 6
#define NTF_DS_PREFIX "delivery-status:"
#define NTF_DS_PAIR_UNLIMITED 1000000000u

enum { ACT_ACK = 0, ACT_NAK };
enum { CL_ABSENT = 0, CL_CLAIMED, CL_NOTICED, CL_DONE };

static const char *const claim_names[] = { "", "claimed", "noticed", "done" };

struct ntf_worker {
	struct ntf *n;
	unsigned idx;
	natsSubscription *sub;
	pthread_t thr;
	int started;
	char owner[NTF_OWNER_MAX + 16];
};

/* one notice being handled */
struct notice {
	struct ntf_worker *w;
	natsMsg *msg;                /* the stream message, borrowed */
	const Failure *f;            /* decoded from it, borrowed */
	int delayed;                 /* 0: <P>.failure., 1: <P>.delayed. */
	uint64_t delivered;          /* how often the stream handed it out */
	char key[416];               /* its claim record: "n.<f|d>.<token>" */
};

static int
stopping(const struct ntf *n)
{
	return atomic_load(&n->notice_stop) != 0;
}

/* the delay before the next try of a notice handed out `delivered` times */
static int64_t
retry_delay(uint64_t delivered)
{
	int64_t d = NTF_RETRY_MIN_MS;

	for (uint64_t i = 1; i < delivered && d < NTF_RETRY_MAX_MS; i++)
		d *= 2;
	return d < NTF_RETRY_MAX_MS ? d : NTF_RETRY_MAX_MS;
}

/* --- the claim record ------------------------------------------------- */

/* read the claim: 1 found (state, at, rev set), 0 absent, -1 error */
static int
claim_read(struct ntf *n, const char *key, int *state, uint64_t *at, uint64_t *rev)
{
	kvEntry *e = NULL;
	natsStatus s = kvStore_Get(&e, n->kv, key);
	char val[NTF_OWNER_MAX + 64];
	int len;

	atomic_fetch_add(&n->kv_gets, 1);
	if (s == NATS_NOT_FOUND)
		return 0;
	if (s != NATS_OK) {
		log_warn(NULL, "claim %s: %s", key, natsStatus_GetText(s));
		return -1;
	}
	*rev = kvEntry_Revision(e);
	len = kvEntry_ValueLen(e);
	if (len < 0 || (size_t)len >= sizeof(val))
		len = (int)sizeof(val) - 1;
	memcpy(val, kvEntry_Value(e), (size_t)len);
	val[len] = '\0';
	kvEntry_Destroy(e);
	*state = CL_CLAIMED;	/* unreadable: treat as a claim, which ages */
	*at = 0;
	for (int k = CL_CLAIMED; k <= CL_DONE; k++) {
		size_t nl = strlen(claim_names[k]);
		if (strncmp(val, claim_names[k], nl) == 0 && val[nl] == ' ') {
			*state = k;
			*at = strtoull(val + nl + 1, NULL, 10);
			break;
		}
	}
	return 1;
}

/* write the claim as state if its revision is rev (0: if absent); 0 with
 * *newrev on success, -1 if it failed (changed meanwhile, or the bus) */
static int
claim_write(struct ntf_worker *w, const char *key, int state, uint64_t rev, uint64_t *newrev)
{
	struct ntf *n = w->n;
	char val[NTF_OWNER_MAX + 64];
	int len;
	natsStatus s;

	len = snprintf(val, sizeof(val), "%s %llu %s", claim_names[state],
	    (unsigned long long)now_ms(), w->owner);
	if (len < 0 || (size_t)len >= sizeof(val))
		len = (int)sizeof(val) - 1;
	if (rev == 0)
		s = kvStore_Create(newrev, n->kv, key, val, len);
	else
		s = kvStore_Update(newrev, n->kv, key, val, len, rev);
	return s == NATS_OK ? 0 : -1;
}

/* --- the public notice ------------------------------------------------ */

/* publish nt's notice on <P>.notify.<failure|delayed>.<tok(sender)> (on the
 * send-asap connection: it is on the wire before the claim's next write) */
static int
publish_notice(struct notice *nt)
{
	struct ntf *n = nt->w->n;
	const Failure *f = nt->f;
	struct log_ctx lc = { f->correlation_id, f->message_id, f->sender, NULL };
	const char *reason = env_failure_reason_name(f->reason);
	natsMsg *out = NULL;
	char subj[512];
	natsStatus s;

	if (bus_subj_agent(n->bus, subj, sizeof(subj),
	    nt->delayed ? "notify.delayed" : "notify.failure", f->sender) < 0)
		return -1;
	/* the notice carries the Failure exactly as it was published */
	s = natsMsg_Create(&out, subj, NULL, natsMsg_GetData(nt->msg),
	    natsMsg_GetDataLength(nt->msg));
	if (s == NATS_OK)
		s = natsMsgHeader_Set(out, "X-Claw-Correlation-Id", f->correlation_id);
	if (s == NATS_OK)
		s = natsMsgHeader_Set(out, "X-Claw-Message-Id", f->message_id);
	if (s == NATS_OK)
		s = natsMsgHeader_Set(out, "X-Claw-Sender", f->sender);
	if (s == NATS_OK)
		s = natsMsgHeader_Set(out, "X-Claw-Recipient", f->recipient);
	if (s == NATS_OK)
		s = natsMsgHeader_Set(out, "X-Claw-Reason", reason);
	if (s == NATS_OK)
		s = natsMsgHeader_Set(out, "Content-Type", "application/protobuf");
	if (s != NATS_OK) {
		natsMsg_Destroy(out);
		goto fail;
	}
	if (bus_publish_msg_asap(n->bus, out) != CR_OK)	/* takes out */
		goto fail;
	if (nt->delayed) {
		atomic_fetch_add(&n->notices_delayed, 1);
		metric_add(n->m_notices_delayed, 1);
		log_info(&lc, "delay notice: %s", f->detail);
	} else {
		atomic_fetch_add(&n->notices, 1);
		metric_add(n->m_notices, 1);
		log_info(&lc, "failure notice: %s (%s)", reason, f->detail);
	}
	return 0;
fail:
	atomic_fetch_add(&n->notice_errors, 1);
	log_error(&lc, "%s notice not published", nt->delayed ? "delay" : "failure");
	return -1;
}

/* --- DELIVERY_STATUS to the sender ------------------------------------ */

/* a duration as people say it: "40 s", "15 min", "1.5 h", "24 h", "7 d" */
static void
fmt_duration(uint64_t ms, char *out, size_t sz)
{
	uint64_t s = (ms + 500) / 1000;
	double v;
	const char *unit;

	if (s < 120) {
		snprintf(out, sz, "%llu s", (unsigned long long)s);
		return;
	}
	if (s < 3600) {
		snprintf(out, sz, "%llu min", (unsigned long long)((s + 30) / 60));
		return;
	}
	if (s < 2 * 86400) {
		v = (double)s / 3600.0;
		unit = "h";
	} else {
		v = (double)s / 86400.0;
		unit = "d";
	}
	/* one decimal only where it says something: 1.5 h, but 24 h */
	if (v < 10 && (long long)(v * 10 + 0.5) % 10 != 0)
		snprintf(out, sz, "%.1f %s", v, unit);
	else
		snprintf(out, sz, "%.0f %s", v, unit);
}

/* ntf_status_text - the sentence a sender's agent reads about failure f */
void
ntf_status_text(const Failure *f, char *out, size_t sz)
{
	char dur[32] = "", after[48] = "";
	const char *b = f->recipient[0] ? f->recipient : "the recipient";
	const char *detail = f->detail[0] ? f->detail : "no detail";
	int n;

	if (f->created_at_ms != 0 && f->failed_at_ms >= f->created_at_ms) {
		fmt_duration(f->failed_at_ms - f->created_at_ms, dur, sizeof(dur));
		snprintf(after, sizeof(after), " after %s", dur);
	}
	n = snprintf(out, sz, "your message %s to %s could not be delivered: ", f->message_id, b);
	if (n < 0 || (size_t)n >= sz)
		return;
	out += n;
	sz -= (size_t)n;
	switch (f->reason) {
	case CLAWRELAY__V1__FAILURE_REASON__FAIL_EXPIRED:
		if (f->attempts == 0)
			snprintf(out, sz, "%s was offline and it expired%s", b, after);
		else
			snprintf(out, sz, "it expired%s, %u delivery attempt%s did not reach %s", after,
			    f->attempts, f->attempts == 1 ? "" : "s", b);
		break;
	case CLAWRELAY__V1__FAILURE_REASON__FAIL_SHED:
		snprintf(out, sz, "%s's queue was full and it was dropped (shed) to make room "
		    "for more urgent messages%s", b, after);
		break;
	case CLAWRELAY__V1__FAILURE_REASON__FAIL_REJECTED:
		snprintf(out, sz, "%s refused it (%s)", b, detail);
		break;
	case CLAWRELAY__V1__FAILURE_REASON__FAIL_DEAD_LETTERED:
		snprintf(out, sz, "%s's connector could not hand it to its agent and gave up (%s)",
		    b, detail);
		break;
	case CLAWRELAY__V1__FAILURE_REASON__FAIL_ATTEMPTS_EXHAUSTED:
		snprintf(out, sz, "%u delivery attempts failed and the relay gave up%s",
		    f->attempts, after);
		break;
	default:
		snprintf(out, sz, "%s", detail);
		break;
	}
}

/* ntf_status_payload - the DELIVERY_STATUS JSON for failure f (the same
 * bytes every time for the same f: a second enqueue is a duplicate);
 * caller frees with cJSON_free; NULL when out of memory */
char *
ntf_status_payload(const Failure *f)
{
	cJSON *o = cJSON_CreateObject();
	char when[32], text[1024];
	char *s;

	if (o == NULL)
		return NULL;
	ntf_status_text(f, text, sizeof(text));
	cJSON_AddStringToObject(o, "type", "delivery_status");
	cJSON_AddStringToObject(o, "status", "failed");
	cJSON_AddStringToObject(o, "message_id", f->message_id);
	cJSON_AddStringToObject(o, "correlation_id", f->correlation_id);
	cJSON_AddStringToObject(o, "recipient", f->recipient);
	cJSON_AddStringToObject(o, "reason", env_failure_reason_name(f->reason));
	cJSON_AddStringToObject(o, "detail", f->detail);
	if (f->created_at_ms != 0) {
		iso_time_ms(f->created_at_ms, when);
		cJSON_AddStringToObject(o, "created_at", when);
	}
	iso_time_ms(f->failed_at_ms, when);
	cJSON_AddStringToObject(o, "failed_at", when);
	cJSON_AddNumberToObject(o, "attempts", f->attempts);
	cJSON_AddStringToObject(o, "text", text);
	s = cJSON_PrintUnformatted(o);
	cJSON_Delete(o);
	return s;
}

/* enqueue nt's DELIVERY_STATUS message: ACT_ACK when relay-session answered
 * for good (queued, duplicate, or refused), ACT_NAK with *delay to retry */
static int
ds_enqueue(struct notice *nt, int64_t *delay)
{
	struct ntf *n = nt->w->n;
	const Failure *f = nt->f;
	struct log_ctx lc = { f->correlation_id, f->message_id, f->sender, NULL };
	Envelope e = CLAWRELAY__V1__ENVELOPE__INIT;
	ProtobufCMessage *pm = NULL;
	natsMsg *reply = NULL;
	char mid[ULID_LEN + 1], cid[160], ikey[160], trace[40], span[24], subj[256];
	char *payload = NULL;
	void *buf = NULL;
	size_t len = 0;
	enum cr_err err;
	int act = ACT_NAK;

	*delay = retry_delay(nt->delivered);
	payload = ntf_status_payload(f);
	if (payload == NULL)
		return ACT_NAK;
	ulid_new(mid);
	/* its own correlation ID: its receipts must not fold into the record
	 * of the message it reports on */
	if ((size_t)snprintf(cid, sizeof(cid), NTF_DS_PREFIX "%s", f->message_id) > 128)
		snprintf(cid, sizeof(cid), NTF_DS_PREFIX "%08x%s", fnv1a32(f->message_id), mid);
	snprintf(ikey, sizeof(ikey), NTF_DS_PREFIX "%s", f->message_id);
	rand_hex(trace, 16);
	rand_hex(span, 8);
	e.schema_version = ENV_SCHEMA;
	e.message_id = mid;
	e.correlation_id = cid;
	e.trace_id = trace;
	e.span_id = span;
	e.idempotency_key = ikey;
	e.sender = (char *)(uintptr_t)ENV_SYSTEM_SENDER;
	e.recipient = f->sender;
	e.priority = CLAWRELAY__V1__PRIORITY__PRIORITY_CRITICAL;
	e.kind = CLAWRELAY__V1__KIND__KIND_DELIVERY_STATUS;
	e.created_at_ms = now_ms();
	e.content_type = (char *)(uintptr_t)"application/json";
	e.payload.data = (uint8_t *)payload;
	e.payload.len = strlen(payload);
	/* the relay's own messages are bounded by the sender's failures, not
	 * by a pair limit meant for agents: no pair rate or cap of their own
	 * (the recipient's queue caps still apply) */
	e.pair_rate_per_min = NTF_DS_PAIR_UNLIMITED;
	e.pair_burst = NTF_DS_PAIR_UNLIMITED;
	e.pair_queue_max = NTF_DS_PAIR_UNLIMITED;
	err = env_pack(&e.base, &buf, &len);
	if (err != CR_OK ||
	    bus_subj(n->bus, subj, sizeof(subj), "session.%u.enqueue",
	    partition_of(f->sender, svc_partitions(n->svc))) < 0) {
		log_error(&lc, "delivery status not encoded: %s", cr_strerror(err));
		goto out;
	}
	err = bus_request(n->bus, subj, buf, len, (int)n->enqueue_timeout_ms, &reply);
	if (err != CR_OK) {
		atomic_fetch_add(&n->ds_retries, 1);
		log_warn(&lc, "delivery status to %s: %s on %s; again in %lld ms", f->sender,
		    err == CR_ERR_UNAVAILABLE ? "no relay-session answers" : cr_strerror(err), subj,
		    (long long)*delay);
		goto out;
	}
	if (env_unpack_msg(&clawrelay__v1__enqueue_reply__descriptor, natsMsg_GetData(reply),
	    (size_t)natsMsg_GetDataLength(reply), &pm) != CR_OK) {
		atomic_fetch_add(&n->ds_retries, 1);
		log_warn(&lc, "delivery status: undecodable answer on %s", subj);
		goto out;
	}
	const EnqueueReply *r = (const EnqueueReply *)pm;
	switch (r->status) {
	case CLAWRELAY__V1__ENQUEUE_STATUS__ENQ_QUEUED:
		atomic_fetch_add(&n->ds_queued, 1);
		metric_add(n->m_ds_queued, 1);
		log_info(&lc, "delivery status queued for %s as %s", f->sender, r->message_id);
		act = ACT_ACK;
		break;
	case CLAWRELAY__V1__ENQUEUE_STATUS__ENQ_DUPLICATE:
	case CLAWRELAY__V1__ENQUEUE_STATUS__ENQ_CONFLICT:
		/* queued before (a redelivery; or, conflict, a repeated failure
		 * whose details differ): one is enough */
		atomic_fetch_add(&n->ds_duplicates, 1);
		log_info(&lc, "delivery status for %s was queued before (%s)", f->sender,
		    r->message_id);
		act = ACT_ACK;
		break;
	case CLAWRELAY__V1__ENQUEUE_STATUS__ENQ_RATE_LIMITED:
	case CLAWRELAY__V1__ENQUEUE_STATUS__ENQ_QUEUE_FULL:
	case CLAWRELAY__V1__ENQUEUE_STATUS__ENQ_UNAVAILABLE:
		if ((int64_t)r->retry_after_s * 1000 > *delay)
			*delay = (int64_t)r->retry_after_s * 1000;
		atomic_fetch_add(&n->ds_retries, 1);
		log_warn(&lc, "delivery status to %s not queued yet (%s); again in %lld ms",
		    f->sender, r->error, (long long)*delay);
		break;
	default:	/* rejected for good */
		atomic_fetch_add(&n->ds_refused, 1);
		log_error(&lc, "delivery status to %s refused: %s", f->sender, r->error);
		act = ACT_ACK;
		break;
	}
out:
	if (pm != NULL)
		protobuf_c_message_free_unpacked(pm, NULL);
	natsMsg_Destroy(reply);
	free(buf);
	cJSON_free(payload);
	return act;
}

/* --- one stream message ----------------------------------------------- */

/* does nt get a DELIVERY_STATUS message? */
static int
wants_ds(const struct notice *nt)
{
	return !nt->delayed && nt->w->n->delivery_status &&
	    strcmp(nt->f->sender, ENV_SYSTEM_SENDER) != 0;
}

/* fold a failure into its status record (synchronously: the stream message
 * is acked only after it) */
static int
fold_status(struct ntf *n, const Failure *f)
{
	struct ntf_rec d, r;
	uint64_t rev = 0, now = now_ms();

	ntf_rec_init(&d);
	ntf_copy(d.correlation_id, sizeof(d.correlation_id), f->correlation_id);
	ntf_copy(d.message_id, sizeof(d.message_id), f->message_id);
	ntf_copy(d.sender, sizeof(d.sender), f->sender);
	ntf_copy(d.recipient, sizeof(d.recipient), f->recipient);
	d.at[NTF_FAILED] = f->failed_at_ms ? f->failed_at_ms : now;
	if (f->created_at_ms != 0 && f->created_at_ms <= d.at[NTF_FAILED])
		d.at[NTF_ACCEPTED] = f->created_at_ms;
	d.attempts = f->attempts;
	d.failure_reason = (int)f->reason;
	snprintf(d.last_error, sizeof(d.last_error), "%s",
	    f->detail[0] ? f->detail : env_failure_reason_name(f->reason));
	d.updated_at_ms = now;
	return ntf_status_write(n, &d, &r, &rev);
}

/* the claim protocol of the file header; ACT_ACK or ACT_NAK with *delay */
static int
notify_once(struct notice *nt, int64_t *delay)
{
	struct ntf_worker *w = nt->w;
	struct ntf *n = w->n;
	struct log_ctx lc = { nt->f->correlation_id, nt->f->message_id, nt->f->sender, NULL };
	uint64_t rev = 0, at = 0, claim_ms = (uint64_t)n->notice_claim_s * 1000;
	int state = CL_ABSENT, final = !wants_ds(nt);

	*delay = NTF_RETRY_MIN_MS;
	/* most notices are new: try to create the claim before reading it */
	for (int tries = 0; tries < NTF_CLAIM_TRIES; tries++) {
		if (tries == 0 || state == CL_ABSENT) {
			if (claim_write(w, nt->key, CL_CLAIMED, 0, &rev) == 0)
				goto own;
		} else if (state == CL_CLAIMED) {
			uint64_t now = now_ms(), age = now > at ? now - at : 0;
			if (age < claim_ms) {
				/* another replica is at it right now */
				atomic_fetch_add(&n->claim_waits, 1);
				*delay = (int64_t)(claim_ms - age) + 200;
				return ACT_NAK;
			}
			if (claim_write(w, nt->key, CL_CLAIMED, rev, &rev) == 0) {
				atomic_fetch_add(&n->takeovers, 1);
				log_warn(&lc, "notice claim older than %lld s taken over",
				    n->notice_claim_s);
				goto own;
			}
		} else if (state == CL_NOTICED) {
			goto noticed;
		} else {
			atomic_fetch_add(&n->notices_skipped, 1);
			log_debug(&lc, "notice %s told before", nt->key);
			return ACT_ACK;
		}
		state = CL_ABSENT;
		if (claim_read(n, nt->key, &state, &at, &rev) < 0)
			return ACT_NAK;
	}
	return ACT_NAK;	/* changing under us all the time: later */
own:
	if (publish_notice(nt) != 0) {
		/* nothing went out: once the claim is stale, anyone may retry */
		*delay = (int64_t)claim_ms + 200;
		return ACT_NAK;
	}
	for (int tries = 0;; tries++) {
		uint64_t nrev = 0;
		if (claim_write(w, nt->key, final ? CL_DONE : CL_NOTICED, rev, &nrev) == 0) {
			rev = nrev;
			break;
		}
		int st = CL_ABSENT;
		if (claim_read(n, nt->key, &st, &at, &nrev) == 1 && nrev != rev) {
			/* taken over while this replica was stalled: the notice went
			 * out twice, the rest is the new owner's */
			log_warn(&lc, "notice claim was taken over meanwhile");
			return ACT_ACK;
		}
		if (tries == 3) {
			log_error(&lc, "notice published, claim %s not updated", nt->key);
			*delay = (int64_t)claim_ms + 200;
			return ACT_NAK;
		}
		usleep(100000);
	}
	if (final)
		return ACT_ACK;
noticed:
	if (wants_ds(nt) && ds_enqueue(nt, delay) != ACT_ACK)
		return ACT_NAK;
	/* a failed write leaves "noticed": the next time only enqueues
	 * again, which relay-session answers as a duplicate */
	if (claim_write(w, nt->key, CL_DONE, rev, &rev) != 0)
		log_debug(&lc, "claim %s: done not recorded", nt->key);
	return ACT_ACK;
}

static int
ids_ok(const Failure *f)
{
	return env_id_ok(f->correlation_id) &&
	    (f->message_id[0] == '\0' || env_id_ok(f->message_id)) &&
	    env_id_ok(f->sender) && (f->recipient[0] == '\0' || env_id_ok(f->recipient));
}

/* handle one stream message (borrowed): ACT_ACK or ACT_NAK with *delay */
static int
handle(struct ntf_worker *w, natsMsg *msg, int64_t *delay)
{
	struct ntf *n = w->n;
	struct notice nt;
	ProtobufCMessage *pm = NULL;
	jsMsgMetaData *meta = NULL;
	const char *subj = natsMsg_GetSubject(msg);
	size_t pl = strlen(bus_prefix(n->bus));
	char tok[400];
	int act = ACT_ACK;

	memset(&nt, 0, sizeof(nt));
	nt.w = w;
	nt.msg = msg;
	*delay = NTF_RETRY_MIN_MS;
	if (strncmp(subj, bus_prefix(n->bus), pl) != 0 || subj[pl] != '.')
		goto bad;
	if (strncmp(subj + pl + 1, "failure.", 8) == 0)
		nt.delayed = 0;
	else if (strncmp(subj + pl + 1, "delayed.", 8) == 0)
		nt.delayed = 1;
	else
		goto bad;
	if (env_unpack_msg(&clawrelay__v1__failure__descriptor, natsMsg_GetData(msg),
	    (size_t)natsMsg_GetDataLength(msg), &pm) != CR_OK)
		goto bad;
	nt.f = (const Failure *)pm;
	if (!ids_ok(nt.f))
		goto bad;
	if (natsMsg_GetMetaData(&meta, msg) == NATS_OK) {
		nt.delivered = meta->NumDelivered;
		if (nt.delivered > 1)
			atomic_fetch_add(&n->redeliveries, 1);
	}
	/* the claim is per message and kind; a failure without a message ID
	 * (none is published so) is told once per stream message */
	if (nt.f->message_id[0] == '\0' || kv_token(nt.f->message_id, tok, sizeof(tok)) == 0)
		snprintf(tok, sizeof(tok), "seq%llu",
		    (unsigned long long)(meta != NULL ? meta->Sequence.Stream : 0));
	snprintf(nt.key, sizeof(nt.key), "n.%c.%s", nt.delayed ? 'd' : 'f', tok);
	if (nt.delayed) {
		atomic_fetch_add(&n->delayed, 1);
	} else {
		atomic_fetch_add(&n->failures, 1);
		metric_add(n->m_failures, 1);
		if (fold_status(n, nt.f) != 0) {
			act = ACT_NAK;
			goto out;
		}
	}
	act = notify_once(&nt, delay);
	goto out;
bad:
	/* never better on a second try: drop it */
	atomic_fetch_add(&n->bad, 1);
	metric_add(n->m_bad, 1);
	log_warn(NULL, "dropped a malformed notice on %s (%d bytes)", subj,
	    natsMsg_GetDataLength(msg));
out:
	jsMsgMetaData_Destroy(meta);
	if (pm != NULL)
		protobuf_c_message_free_unpacked(pm, NULL);
	return act;
}

static void *
worker_main(void *arg)
{
	struct ntf_worker *w = arg;
	struct ntf *n = w->n;
	uint64_t last_warn = 0;

	while (!stopping(n)) {
		natsMsgList list = { NULL, 0 };
		jsErrCode jerr = 0;
		natsStatus s = natsSubscription_Fetch(&list, w->sub, NTF_FETCH_BATCH,
		    NTF_FETCH_WAIT_MS, &jerr);

		if (s == NATS_TIMEOUT)
			continue;
		if (s != NATS_OK) {
			if (mono_ms() - last_warn > 30000) {
				log_warn(NULL, "notice stream fetch: %s (%d)", natsStatus_GetText(s),
				    (int)jerr);
				last_warn = mono_ms();
			}
			for (int i = 0; i < 5 && !stopping(n); i++)
				usleep(100000);
			continue;
		}
		uint64_t touched = mono_ms();
		for (int i = 0; i < list.Count; i++) {
			natsMsg *m = list.Msgs[i];
			int64_t delay = 0;

			if (stopping(n)) {
				natsMsg_Nak(m, NULL);	/* to another replica, now */
				continue;
			}
			if (handle(w, m, &delay) == ACT_ACK) {
				natsMsg_Ack(m, NULL);
			} else {
				atomic_fetch_add(&n->naks, 1);
				natsMsg_NakWithDelay(m, delay, NULL);
			}
			/* the rest of the batch waits: keep them ours */
			if (mono_ms() - touched > (uint64_t)n->notice_ack_wait_s * 1000 / 3) {
				for (int k = i + 1; k < list.Count; k++)
					natsMsg_InProgress(list.Msgs[k], NULL);
				touched = mono_ms();
			}
		}
		natsMsgList_Destroy(&list);
	}
	return NULL;
}

/* create (or update) the shared durable consumer */
static int
consumer_ensure(struct ntf *n)
{
	jsConsumerConfig cc;
	jsConsumerInfo *ci = NULL;
	jsErrCode jerr = 0;
	natsStatus s;
	jsCtx *js = bus_js(n->bus);

	jsConsumerConfig_Init(&cc);
	cc.Durable = NTF_CONSUMER;
	cc.Description = "clawrelay-notifier replicas: each notice to one of them";
	cc.DeliverPolicy = js_DeliverAll;
	cc.AckPolicy = js_AckExplicit;
	cc.AckWait = n->notice_ack_wait_s * 1000000000LL;
	cc.MaxDeliver = -1;
	/* NAKed notices waiting for relay-session count here: many may wait
	 * while new ones keep coming */
	cc.MaxAckPending = 100000;
	cc.MaxWaiting = 512;
	s = js_AddConsumer(&ci, js, n->stream, &cc, NULL, &jerr);
	if (s != NATS_OK) {
		jsConsumerInfo_Destroy(ci);
		ci = NULL;
		s = js_UpdateConsumer(&ci, js, n->stream, &cc, NULL, &jerr);
	}
	if (s != NATS_OK) {
		jsConsumerInfo_Destroy(ci);
		ci = NULL;
		s = js_GetConsumerInfo(&ci, js, n->stream, NTF_CONSUMER, NULL, &jerr);
		if (s == NATS_OK)
			log_warn(NULL, "consumer %s on %s keeps its own settings", NTF_CONSUMER,
			    n->stream);
	}
	jsConsumerInfo_Destroy(ci);
	if (s != NATS_OK) {
		const char *why = nats_GetLastError(NULL);
		log_error(NULL, "consumer %s on %s: %s", NTF_CONSUMER, n->stream,
		    why != NULL ? why : natsStatus_GetText(s));
		return -1;
	}
	return 0;
}

/* ntf_notices_start - the stream, the consumer and the workers */
int
ntf_notices_start(struct ntf *n)
{
	struct bus_stream_limits lim = {
		n->notice_max_age_s * 1000, n->notice_max_bytes, n->notice_max_msgs,
		BUS_NOTICE_DUP_WINDOW_MS, (int)n->notice_replicas
	};
	char rnd[16];

	if (lim.dup_window_ms > lim.max_age_ms)
		lim.dup_window_ms = lim.max_age_ms;
	if (bus_notice_stream_name(n->bus, n->stream, sizeof(n->stream)) < 0 ||
	    bus_notice_stream(n->bus, &lim) != CR_OK || consumer_ensure(n) != 0)
		return -1;
	rand_hex(rnd, 4);
	n->workers = calloc((size_t)n->notice_workers, sizeof(*n->workers));
	if (n->workers == NULL)
		return -1;
	for (unsigned i = 0; i < (unsigned)n->notice_workers; i++) {
		struct ntf_worker *w = &n->workers[i];
		jsSubOptions so;
		jsErrCode jerr = 0;
		natsStatus s;

		w->n = n;
		w->idx = i;
		snprintf(w->owner, sizeof(w->owner), "%.*s/%s/%u", NTF_OWNER_MAX - 24,
		    svc_instance(n->svc), rnd, i);
		jsSubOptions_Init(&so);
		so.Stream = n->stream;
		so.Consumer = NTF_CONSUMER;	/* bind: never create, never delete it */
		s = js_PullSubscribe(&w->sub, bus_js(n->bus), NULL, NTF_CONSUMER, NULL, &so, &jerr);
		if (s != NATS_OK) {
			log_error(NULL, "pull subscription on %s: %s", n->stream, natsStatus_GetText(s));
			return -1;
		}
		n->nworkers = i + 1;
		if (pthread_create(&w->thr, NULL, worker_main, w) != 0) {
			log_error(NULL, "notice worker %u: cannot start a thread", i);
			return -1;
		}
		w->started = 1;
	}
	log_info(NULL, "telling failures and delays from stream %s (consumer %s, %lld workers)",
	    n->stream, NTF_CONSUMER, n->notice_workers);
	return 0;
}

/* ntf_notices_stop - finish the notice in hand, hand back the rest, stop */
void
ntf_notices_stop(struct ntf *n)
{
	atomic_store(&n->notice_stop, 1);
	for (unsigned i = 0; i < n->nworkers; i++) {
		struct ntf_worker *w = &n->workers[i];
		if (w->started)
			pthread_join(w->thr, NULL);
		w->started = 0;
		/* Destroy, not Unsubscribe: the durable consumer stays */
		natsSubscription_Destroy(w->sub);
		w->sub = NULL;
	}
	n->nworkers = 0;
	free(n->workers);
	n->workers = NULL;
}

/* ntf_notices_status - the consumer's backlog for /v1/status */
void
ntf_notices_status(struct ntf *n, cJSON *obj)
{
	jsConsumerInfo *ci = NULL;
	jsErrCode jerr = 0;

	cJSON_AddStringToObject(obj, "stream", n->stream);
	cJSON_AddStringToObject(obj, "consumer", NTF_CONSUMER);
	if (n->stream[0] != '\0' &&
	    js_GetConsumerInfo(&ci, bus_js(n->bus), n->stream, NTF_CONSUMER, NULL, &jerr) == NATS_OK) {
		cJSON_AddNumberToObject(obj, "waiting", (double)ci->NumPending);
		cJSON_AddNumberToObject(obj, "inHand", (double)ci->NumAckPending);
		cJSON_AddNumberToObject(obj, "redelivered", (double)ci->NumRedelivered);
	}
	jsConsumerInfo_Destroy(ci);
}
