/*
 * notifier_events.c - bus handlers for receipts.
 *
 * Both run on nats.c subscription threads. A message that cannot be decoded
 * or has bad IDs is logged and counted, never fatal. A receipt becomes a
 * delta with one state, merged into its shard's pending table. (Failures
 * come from the notice stream: notifier_notice.c.)
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "log.h"
#include "ntf.h"
#include "status.h"
#include "util.h"

/* A message is decoded into an arena: protobuf-c allocates every string of
 * a message, and those mallocs and frees cost more than the rest of a
 * receipt's handling. A single receipt uses a buffer on the handler's
 * stack, a ReceiptBatch the batch subscription's own buffer (n->batch_arena).
 * What does not fit spills to malloc (and is freed by decoded_free). */
struct arena {
	unsigned char *buf;    /* 16-byte aligned */
	size_t cap, used;
	unsigned spilled;
};

static void *
arena_alloc(void *data, size_t size)
{
	struct arena *a = data;

	size = (size + 15) & ~(size_t)15;
	if (a->cap - a->used >= size) {
		void *p = a->buf + a->used;
		a->used += size;
		return p;
	}
	a->spilled++;
	return malloc(size);
}

static void
arena_free(void *data, void *p)
{
	struct arena *a = data;
	uintptr_t b = (uintptr_t)a->buf, q = (uintptr_t)p;

	if (q < b || q >= b + a->cap)
		free(p);
}

/* decode msg's payload as desc into the arena behind alloc; NULL if it is
 * not one (the caller checks schema_version) */
static ProtobufCMessage *
decode(const ProtobufCMessageDescriptor *desc, natsMsg *msg, ProtobufCAllocator *alloc)
{
	size_t len = (size_t)natsMsg_GetDataLength(msg);

	if (len > ENV_MAX_WIRE)
		return NULL;
	return protobuf_c_message_unpack(desc, alloc, len, (const uint8_t *)natsMsg_GetData(msg));
}

static void
decoded_free(ProtobufCMessage *m, ProtobufCAllocator *alloc)
{
	if (m != NULL && ((struct arena *)alloc->allocator_data)->spilled > 0)
		protobuf_c_message_free_unpacked(m, alloc);
}

static void
bad(struct ntf *n, natsMsg *msg, const char *what)
{
	atomic_fetch_add(&n->bad, 1);
	metric_add(n->m_bad, 1);
	log_warn(NULL, "dropped %s on %s (%d bytes)", what, natsMsg_GetSubject(msg),
	    natsMsg_GetDataLength(msg));
}

static int
ids_ok(const char *corr, const char *mid, const char *sender, const char *rcpt)
{
	return env_id_ok(corr) && (mid[0] == '\0' || env_id_ok(mid)) &&
	    (sender[0] == '\0' || env_id_ok(sender)) && (rcpt[0] == '\0' || env_id_ok(rcpt));
}

static void
set_ids(struct ntf_rec *d, const char *corr, const char *mid, const char *sender, const char *rcpt)
{
	ntf_copy(d->correlation_id, sizeof(d->correlation_id), corr);
	ntf_copy(d->message_id, sizeof(d->message_id), mid);
	ntf_copy(d->sender, sizeof(d->sender), sender);
	ntf_copy(d->recipient, sizeof(d->recipient), rcpt);
}

/* fold one receipt (borrowed) into its status record */
static void
fold_receipt(struct ntf *n, natsMsg *msg, const Receipt *r)
{
	struct ntf_rec d;
	uint64_t now;
	int k = ntf_state_rank(r->state);

	if (k < 0 || k == NTF_FAILED || !ids_ok(r->correlation_id, r->message_id, r->sender,
	    r->recipient)) {
		bad(n, msg, k < 0 || k == NTF_FAILED ? "receipt with unknown state"
		    : "receipt with bad IDs");
		return;
	}
	atomic_fetch_add(&n->receipts, 1);
	metric_add(n->m_receipts, 1);
	ntf_rec_init(&d);
	set_ids(&d, r->correlation_id, r->message_id, r->sender, r->recipient);
	now = now_ms();
	d.at[k] = r->at_ms ? r->at_ms : now;
	d.attempts = r->attempts;
	d.updated_at_ms = now;
	ntf_shards_add(n, &d);
}

/* ntf_on_receipt - fold a Receipt into its status record */
void
ntf_on_receipt(void *arg, natsMsg *msg)
{
	struct ntf *n = arg;
	_Alignas(16) unsigned char mem[4096];
	struct arena a = { mem, sizeof(mem), 0, 0 };
	ProtobufCAllocator alloc = { arena_alloc, arena_free, &a };
	ProtobufCMessage *m;
	const Receipt *r;

	m = decode(&clawrelay__v1__receipt__descriptor, msg, &alloc);
	r = (const Receipt *)m;
	if (r == NULL || r->schema_version != ENV_SCHEMA)
		bad(n, msg, "undecodable receipt");
	else
		fold_receipt(n, msg, r);
	decoded_free(m, &alloc);
}

/* ntf_on_receipt_batch - fold each Receipt of a ReceiptBatch */
void
ntf_on_receipt_batch(void *arg, natsMsg *msg)
{
	struct ntf *n = arg;
	struct arena a = { n->batch_arena, NTF_BATCH_ARENA, 0, 0 };
	ProtobufCAllocator alloc = { arena_alloc, arena_free, &a };
	ProtobufCMessage *m;
	const ReceiptBatch *b;

	m = decode(&clawrelay__v1__receipt_batch__descriptor, msg, &alloc);
	b = (const ReceiptBatch *)m;
	if (b == NULL || b->schema_version != ENV_SCHEMA) {
		bad(n, msg, "undecodable receipt batch");
	} else {
		for (size_t i = 0; i < b->n_receipts; i++)
			fold_receipt(n, msg, b->receipts[i]);
	}
	decoded_free(m, &alloc);
}
