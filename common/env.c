/*
 * env.c - strict decoding and packing of bus messages. Stateless.
 */
#include <stdlib.h>
#include <string.h>

#include "env.h"
#include "util.h"

#define MAX_PAYLOAD (4u * 1024 * 1024)

/* env_pack - serialise any generated message; caller frees *out */
enum cr_err
env_pack(const ProtobufCMessage *m, void **out, size_t *len)
{
	size_t n = protobuf_c_message_get_packed_size(m);
	if (n > ENV_MAX_WIRE)
		return CR_ERR_TOO_BIG;
	uint8_t *buf = malloc(n ? n : 1);
	if (buf == NULL)
		return CR_ERR_NOMEM;
	*len = protobuf_c_message_pack(m, buf);
	*out = buf;
	return CR_OK;
}

/* env_pack_into - serialise into buf if it fits */
enum cr_err
env_pack_into(const ProtobufCMessage *m, void *buf, size_t cap, size_t *len)
{
	size_t n = protobuf_c_message_get_packed_size(m);
	if (n > cap)
		return CR_ERR_TOO_BIG;
	*len = protobuf_c_message_pack(m, buf);
	return CR_OK;
}

/* env_pack_buf - into buf when it fits, else into *heap (caller frees) */
const void *
env_pack_buf(const ProtobufCMessage *m, void *buf, size_t cap, void **heap, size_t *len)
{
	*heap = NULL;
	if (env_pack_into(m, buf, cap, len) == CR_OK)
		return buf;
	if (env_pack(m, heap, len) != CR_OK)
		return NULL;
	return *heap;
}

static int
id_ok(const char *s, size_t max)
{
	size_t n = s ? strlen(s) : 0;
	if (n == 0 || n > max)
		return 0;
	for (size_t i = 0; i < n; i++) {
		unsigned char c = (unsigned char)s[i];
		if (!((c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') ||
		    c == '.' || c == '_' || c == ':' || c == '@' || c == '+' || c == '-'))
			return 0;
	}
	return 1;
}

/* env_id_ok - 1..128 chars of the ID alphabet [A-Za-z0-9._:@+-] (DESIGN 3) */
int
env_id_ok(const char *s)
{
	return id_ok(s, 128);
}

/* env_validate - field rules: IDs present and well-formed, sizes, priority */
enum cr_err
env_validate(const Envelope *e, const char **why)
{
	const char *w = NULL;
	if (e->schema_version != ENV_SCHEMA)
		w = "unknown schema_version";
	else if (e->message_id && *e->message_id && !ulid_valid(e->message_id))
		w = "message_id is not a ULID";
	else if (!id_ok(e->correlation_id, 128))
		w = "correlation_id must be 1-128 chars of [A-Za-z0-9._:@+-]";
	else if (!id_ok(e->sender, 128))
		w = "sender is not a valid agent ID";
	else if (!id_ok(e->recipient, 128))
		w = "recipient is not a valid agent ID";
	else if (e->priority != CLAWRELAY__V1__PRIORITY__PRIORITY_NORMAL &&
	    e->priority != CLAWRELAY__V1__PRIORITY__PRIORITY_CRITICAL &&
	    e->priority != CLAWRELAY__V1__PRIORITY__PRIORITY_LOW)
		w = "unknown priority";
	else if (e->kind != CLAWRELAY__V1__KIND__KIND_MESSAGE &&
	    e->kind != CLAWRELAY__V1__KIND__KIND_DELIVERY_STATUS)
		w = "unknown kind";
	else if (e->payload.len > MAX_PAYLOAD)
		w = "payload too large";
	else if (e->idempotency_key && strlen(e->idempotency_key) > 256)
		w = "idempotency_key too long";
	else if (e->content_type && strlen(e->content_type) > 256)
		w = "content_type too long";
	if (why)
		*why = w;
	return w ? CR_ERR_INVALID : CR_OK;
}

/* env_unpack - decode and validate an envelope; caller frees with env_free */
enum cr_err
env_unpack(const void *data, size_t len, Envelope **out, const char **why)
{
	*out = NULL;
	if (len > ENV_MAX_WIRE) {
		if (why)
			*why = "envelope too large";
		return CR_ERR_TOO_BIG;
	}
	Envelope *e = clawrelay__v1__envelope__unpack(NULL, len, data);
	if (e == NULL) {
		if (why)
			*why = "malformed envelope";
		return CR_ERR_INVALID;
	}
	enum cr_err err = env_validate(e, why);
	if (err != CR_OK) {
		int bad_version = e->schema_version != ENV_SCHEMA;
		clawrelay__v1__envelope__free_unpacked(e, NULL);
		return bad_version ? CR_ERR_VERSION : err;
	}
	*out = e;
	return CR_OK;
}

/* env_free - free an unpacked envelope; NULL ok */
void
env_free(Envelope *e)
{
	if (e)
		clawrelay__v1__envelope__free_unpacked(e, NULL);
}

/* env_unpack_msg - decode any message with a schema_version field */
enum cr_err
env_unpack_msg(const ProtobufCMessageDescriptor *desc, const void *data, size_t len,
    ProtobufCMessage **out)
{
	*out = NULL;
	if (len > ENV_MAX_WIRE)
		return CR_ERR_TOO_BIG;
	ProtobufCMessage *m = protobuf_c_message_unpack(desc, NULL, len, data);
	if (m == NULL)
		return CR_ERR_INVALID;
	const ProtobufCFieldDescriptor *f = protobuf_c_message_descriptor_get_field_by_name(desc, "schema_version");
	if (f != NULL && f->type == PROTOBUF_C_TYPE_UINT32) {
		uint32_t v;
		memcpy(&v, (const char *)m + f->offset, sizeof(v));
		if (v != ENV_SCHEMA) {
			protobuf_c_message_free_unpacked(m, NULL);
			return CR_ERR_VERSION;
		}
	}
	*out = m;
	return CR_OK;
}

/* env_priority_name - "critical", "normal" or "low" */
const char *
env_priority_name(int p)
{
	switch (p) {
	case CLAWRELAY__V1__PRIORITY__PRIORITY_CRITICAL:
		return "critical";
	case CLAWRELAY__V1__PRIORITY__PRIORITY_LOW:
		return "low";
	default:
		return "normal";
	}
}

/* env_priority_parse - name to enum; -1 if not exactly one of the three */
int
env_priority_parse(const char *s)
{
	if (s == NULL)
		return -1;
	if (strcmp(s, "critical") == 0)
		return CLAWRELAY__V1__PRIORITY__PRIORITY_CRITICAL;
	if (strcmp(s, "normal") == 0)
		return CLAWRELAY__V1__PRIORITY__PRIORITY_NORMAL;
	if (strcmp(s, "low") == 0)
		return CLAWRELAY__V1__PRIORITY__PRIORITY_LOW;
	return -1;
}

/* env_lane - 0 critical, 1 normal, 2 low */
int
env_lane(int priority)
{
	switch (priority) {
	case CLAWRELAY__V1__PRIORITY__PRIORITY_CRITICAL:
		return 0;
	case CLAWRELAY__V1__PRIORITY__PRIORITY_LOW:
		return 2;
	default:
		return 1;
	}
}

/* env_failure_reason_name - "expired", "shed", ... */
const char *
env_failure_reason_name(int r)
{
	switch (r) {
	case CLAWRELAY__V1__FAILURE_REASON__FAIL_EXPIRED:
		return "expired";
	case CLAWRELAY__V1__FAILURE_REASON__FAIL_SHED:
		return "shed";
	case CLAWRELAY__V1__FAILURE_REASON__FAIL_REJECTED:
		return "rejected";
	case CLAWRELAY__V1__FAILURE_REASON__FAIL_DEAD_LETTERED:
		return "dead_lettered";
	case CLAWRELAY__V1__FAILURE_REASON__FAIL_ATTEMPTS_EXHAUSTED:
		return "attempts_exhausted";
	default:
		return "unknown";
	}
}

/* env_hop_name - "gateway_accepted", ... */
const char *
env_hop_name(int hop)
{
	static const char *const names[] = {
		"unknown", "connector_sent", "gateway_accepted", "session_queued", "dispatched",
		"delivery_attempt", "socket_sent", "connector_stored", "hook_called",
		"hook_answered", "delivered", "webhook_called", "webhook_answered", "failed",
		"expired", "rejected", "processed",
	};
	if (hop < 0 || (size_t)hop >= sizeof(names) / sizeof(names[0]))
		return "unknown";
	return names[hop];
}
