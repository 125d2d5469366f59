/*
 * env.h - envelopes and other bus messages (generated protobuf-c code in
 * build/gen/clawrelay.pb-c.h, from proto/clawrelay.proto).
 *
 * Short aliases for the generated names, strict decoding (schema version,
 * size limits, field rules) and packing into malloc'd buffers.
 * Everything here is stateless and thread-safe.
 */
#ifndef CR_ENV_H
#define CR_ENV_H

#include <stddef.h>
#include <stdint.h>

#include "clawrelay.pb-c.h"
#include "err.h"

#define ENV_SCHEMA 1
#define ENV_MAX_WIRE (8u * 1024 * 1024)  /* no bus message is larger */

typedef Clawrelay__V1__Envelope Envelope;
typedef Clawrelay__V1__EnqueueReply EnqueueReply;
typedef Clawrelay__V1__EnqueueBatch EnqueueBatch;
typedef Clawrelay__V1__EnqueueBatchReply EnqueueBatchReply;
typedef Clawrelay__V1__IdemClaim IdemClaim;
typedef Clawrelay__V1__IdemClaimReply IdemClaimReply;
typedef Clawrelay__V1__IdemClaims IdemClaims;
typedef Clawrelay__V1__IdemClaimsReply IdemClaimsReply;
typedef Clawrelay__V1__Books Books;
typedef Clawrelay__V1__ConnectRequest ConnectRequest;
typedef Clawrelay__V1__HopEvent HopEvent;
typedef Clawrelay__V1__HopBatch HopBatch;
typedef Clawrelay__V1__ReconnectAck ReconnectAck;
typedef Clawrelay__V1__DispatchRequest DispatchRequest;
typedef Clawrelay__V1__DispatchResult DispatchResult;
typedef Clawrelay__V1__DispatchBatch DispatchBatch;
typedef Clawrelay__V1__DispatchBatchResult DispatchBatchResult;
typedef Clawrelay__V1__DeliverBatch DeliverBatch;
typedef Clawrelay__V1__DeliverAckBatch DeliverAckBatch;
typedef Clawrelay__V1__Failure Failure;
typedef Clawrelay__V1__Receipt Receipt;
typedef Clawrelay__V1__ReceiptBatch ReceiptBatch;
typedef Clawrelay__V1__StatusRecord StatusRecord;
typedef Clawrelay__V1__StateTime StateTime;
typedef Clawrelay__V1__AgentRecord AgentRecord;
typedef Clawrelay__V1__TrustRecord TrustRecord;
typedef Clawrelay__V1__TraceRequest TraceRequest;
typedef Clawrelay__V1__TraceReply TraceReply;
typedef Clawrelay__V1__Frame Frame;
typedef Clawrelay__V1__DeliverAck DeliverAck;
typedef Clawrelay__V1__EnqueueAck EnqueueAck;
typedef Clawrelay__V1__Reconnect Reconnect;
typedef Clawrelay__V1__DeadLetter DeadLetter;
typedef Clawrelay__V1__Heartbeat Heartbeat;
typedef Clawrelay__V1__ErrorFrame ErrorFrame;

/* env_pack - serialise any generated message; caller frees *out with free() */
enum cr_err env_pack(const ProtobufCMessage *m, void **out, size_t *len);
/* env_pack_into - serialise into buf if it fits (returns CR_ERR_TOO_BIG if not) */
enum cr_err env_pack_into(const ProtobufCMessage *m, void *buf, size_t cap, size_t *len);
/* env_pack_buf - serialise into buf when it fits, else into a malloc'd
 * buffer left in *heap (the caller frees *heap either way); returns where
 * the bytes are, or NULL when out of memory */
const void *env_pack_buf(const ProtobufCMessage *m, void *buf, size_t cap, void **heap,
    size_t *len);

/* env_unpack - decode an envelope; refuses bad bytes, unknown schema
 * version and envelopes failing env_validate. Caller frees with env_free. */
enum cr_err env_unpack(const void *data, size_t len, Envelope **out, const char **why);
/* env_free - free an unpacked envelope; NULL ok */
void env_free(Envelope *e);
/* env_validate - field rules: IDs present and well-formed, sizes, priority */
enum cr_err env_validate(const Envelope *e, const char **why);

/* env_unpack_msg - decode any message type with a schema_version field and
 * check it (desc: e.g. &clawrelay__v1__receipt__descriptor). Caller frees
 * with protobuf_c_message_free_unpacked(m, NULL). */
enum cr_err env_unpack_msg(const ProtobufCMessageDescriptor *desc, const void *data, size_t len,
    ProtobufCMessage **out);

/* env_id_ok - 1..128 chars of the ID alphabet [A-Za-z0-9._:@+-] (DESIGN 3) */
int env_id_ok(const char *s);

/* ENV_SYSTEM_SENDER - the sender of the relay's own messages (the notifier's
 * DELIVERY_STATUS notices to a sender). A valid ID that the registry refuses
 * to hold, so no agent can register, sign or be trusted as it. */
#define ENV_SYSTEM_SENDER "clawrelay"

/* Priority names "critical"/"normal"/"low" */
const char *env_priority_name(int p);
/* env_priority_parse - name to enum; -1 if not exactly one of the three */
int env_priority_parse(const char *s);
/* env_lane - lane index for ordering: 0 critical, 1 normal, 2 low */
int env_lane(int priority);
/* env_failure_reason_name - "expired", "shed", ... */
const char *env_failure_reason_name(int reason);
/* env_hop_name - "gateway_accepted", ... */
const char *env_hop_name(int hop);

#endif
