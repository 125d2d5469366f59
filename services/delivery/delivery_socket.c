/*
 * delivery_socket.c - delivery to an agent whose connector holds a socket
 * on some gateway: one request on <P>.ws.<tok(agent)> carrying a
 * DeliverBatch (the envelopes of consecutive attempts for that agent),
 * answered by the gateway with a DeliverAckBatch of the connector's acks.
 *
 * Many requests are in flight at once: each is a bus_request_async whose
 * callback (on the bus's reply thread, or its timer thread for timeouts)
 * maps each answer to an outcome and finishes its attempt. No responders =
 * no gateway holds the agent's socket = OFFLINE; accepted = DELIVERED (the
 * connector committed it to its inbox); not accepted = NACKED (inbox full);
 * timeout, an undecodable answer or no ack for a message = RETRY.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "dlv.h"
#include "log.h"

/* one request to a gateway: its attempts */
struct dlv_sreq {
	size_t n;
	int timeout_ms;
	struct dlv_attempt *a[];
};

static void
finish_all(struct dlv_sreq *r, int outcome, const char *detail)
{
	for (size_t i = 0; i < r->n; i++)
		dlv_finish(r->a[i], outcome, detail, 0);
}

/* the ack of the i-th envelope: in place normally, else found by ID */
static const DeliverAck *
find_ack(const DeliverAckBatch *b, size_t i, const char *mid)
{
	if (i < b->n_acks && b->acks[i] != NULL && strcmp(b->acks[i]->message_id, mid) == 0)
		return b->acks[i];
	for (size_t k = 0; k < b->n_acks; k++)
		if (b->acks[k] != NULL && strcmp(b->acks[k]->message_id, mid) == 0)
			return b->acks[k];
	return NULL;
}

static void
on_ack(void *arg, enum cr_err err, natsMsg *reply)
{
	struct dlv_sreq *r = arg;
	struct dlv *d = r->a[0]->d;
	DeliverAckBatch *acks = NULL;
	char detail[256];

	atomic_fetch_sub(&d->inflight_socket, (long long)r->n);
	if (err == CR_ERR_UNAVAILABLE) {
		finish_all(r, DLV_OFFLINE, "no socket");
	} else if (err == CR_ERR_TIMEOUT) {
		snprintf(detail, sizeof(detail), "no ack in %d ms", r->timeout_ms);
		finish_all(r, DLV_RETRY, detail);
	} else if (err != CR_OK || reply == NULL) {
		finish_all(r, DLV_RETRY, cr_strerror(err));
	} else if ((acks = clawrelay__v1__deliver_ack_batch__unpack(NULL,
	    (size_t)natsMsg_GetDataLength(reply), (const uint8_t *)natsMsg_GetData(reply))) == NULL) {
		finish_all(r, DLV_RETRY, "undecodable deliver ack");
	} else {
		for (size_t i = 0; i < r->n; i++) {
			const DeliverAck *ack = find_ack(acks, i, r->a[i]->req->envelope->message_id);

			if (ack == NULL) {
				dlv_finish(r->a[i], DLV_RETRY, "no ack for the message", 0);
			} else if (ack->accepted) {
				dlv_finish(r->a[i], DLV_DELIVERED, NULL, 0);
			} else {
				snprintf(detail, sizeof(detail), "refused: %.200s",
				    ack->reason[0] ? ack->reason : "no reason");
				dlv_finish(r->a[i], DLV_NACKED, detail, 0);
			}
		}
		clawrelay__v1__deliver_ack_batch__free_unpacked(acks, NULL);
	}
	free(r);
}

/* dlv_socket_start - one DeliverBatch request for n attempts of one recipient */
void
dlv_socket_start(struct dlv_attempt **v, size_t n)
{
	struct dlv *d = v[0]->d;
	const char *recipient = v[0]->req->envelope->recipient;
	DeliverBatch db = CLAWRELAY__V1__DELIVER_BATCH__INIT;
	Envelope **envs = calloc(n, sizeof(*envs));
	struct dlv_sreq *r = malloc(sizeof(*r) + n * sizeof(r->a[0]));
	char subj[512];
	void *buf = NULL;
	size_t len = 0;
	enum cr_err err;

	if (envs == NULL || r == NULL) {
		free(envs);
		free(r);
		for (size_t i = 0; i < n; i++)
			dlv_finish(v[i], DLV_RETRY, "out of memory", 0);
		return;
	}
	r->n = n;
	r->timeout_ms = v[0]->timeout_ms;
	for (size_t i = 0; i < n; i++) {
		r->a[i] = v[i];
		envs[i] = v[i]->req->envelope;
		if (v[i]->timeout_ms < r->timeout_ms)
			r->timeout_ms = v[i]->timeout_ms;
	}
	if (bus_subj_agent(d->bus, subj, sizeof(subj), "ws", recipient) < 0) {
		free(envs);
		finish_all(r, DLV_REJECTED, "recipient does not fit a subject");
		free(r);
		return;
	}
	db.n_envelopes = n;
	db.envelopes = envs;
	err = env_pack(&db.base, &buf, &len);
	free(envs);
	if (err != CR_OK) {
		finish_all(r, DLV_RETRY, cr_strerror(err));
		free(r);
		return;
	}
	atomic_fetch_add(&d->inflight_socket, (long long)n);
	err = bus_request_async(d->bus, subj, buf, len, r->timeout_ms, on_ack, r);
	free(buf);
	if (err != CR_OK) {
		atomic_fetch_sub(&d->inflight_socket, (long long)n);
		finish_all(r, DLV_RETRY, cr_strerror(err));
		free(r);
	}
}
