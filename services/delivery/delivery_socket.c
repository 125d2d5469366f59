/*
 * delivery_socket.c - delivery to an agent whose connector holds a socket
 * on some gateway: a request on <P>.ws.<tok(agent)> carrying the packed
 * Envelope, answered by the gateway with the connector's DeliverAck.
 *
 * Many attempts are in flight at once: each is a bus_request_async whose
 * callback (on the bus's reply thread, or its timer thread for timeouts)
 * maps the answer to an outcome and finishes the attempt. No responders =
 * no gateway holds the agent's socket = OFFLINE; accepted = DELIVERED (the
 * connector committed it to its inbox); not accepted = NACKED (inbox full);
 * timeout or an undecodable ack = RETRY.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "dlv.h"
#include "log.h"

static void
on_ack(void *arg, enum cr_err err, natsMsg *reply)
{
	struct dlv_attempt *a = arg;
	struct dlv *d = a->d;
	DeliverAck *ack = NULL;
	char detail[256];

	atomic_fetch_sub(&d->inflight_socket, 1);
	if (err == CR_ERR_UNAVAILABLE) {
		dlv_finish(a, DLV_OFFLINE, "no socket", 0);
		return;
	}
	if (err == CR_ERR_TIMEOUT) {
		snprintf(detail, sizeof(detail), "no ack in %d ms", a->timeout_ms);
		dlv_finish(a, DLV_RETRY, detail, 0);
		return;
	}
	if (err != CR_OK || reply == NULL) {
		dlv_finish(a, DLV_RETRY, cr_strerror(err), 0);
		return;
	}
	ack = clawrelay__v1__deliver_ack__unpack(NULL, (size_t)natsMsg_GetDataLength(reply),
	    (const uint8_t *)natsMsg_GetData(reply));
	if (ack == NULL) {
		dlv_finish(a, DLV_RETRY, "undecodable deliver ack", 0);
		return;
	}
	if (ack->message_id[0] != '\0' &&
	    strcmp(ack->message_id, a->req->envelope->message_id) != 0) {
		snprintf(detail, sizeof(detail), "ack for another message");
		dlv_finish(a, DLV_RETRY, detail, 0);
	} else if (ack->accepted) {
		dlv_finish(a, DLV_DELIVERED, NULL, 0);
	} else {
		snprintf(detail, sizeof(detail), "refused: %.200s",
		    ack->reason[0] ? ack->reason : "no reason");
		dlv_finish(a, DLV_NACKED, detail, 0);
	}
	clawrelay__v1__deliver_ack__free_unpacked(ack, NULL);
}

/* dlv_socket_start - send the envelope to the agent's gateway; takes a */
void
dlv_socket_start(struct dlv_attempt *a)
{
	struct dlv *d = a->d;
	const Envelope *e = a->req->envelope;
	char subj[512];
	void *buf = NULL;
	size_t len = 0;
	enum cr_err err;

	if (bus_subj_agent(d->bus, subj, sizeof(subj), "ws", e->recipient) < 0) {
		dlv_finish(a, DLV_REJECTED, "recipient does not fit a subject", 0);
		return;
	}
	err = env_pack(&e->base, &buf, &len);
	if (err != CR_OK) {
		dlv_finish(a, DLV_RETRY, cr_strerror(err), 0);
		return;
	}
	atomic_fetch_add(&d->inflight_socket, 1);
	err = bus_request_async(d->bus, subj, buf, len, a->timeout_ms, on_ack, a);
	free(buf);
	if (err != CR_OK) {
		atomic_fetch_sub(&d->inflight_socket, 1);
		dlv_finish(a, DLV_RETRY, cr_strerror(err), 0);
	}
}
