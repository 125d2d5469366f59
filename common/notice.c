/*
 * notice.c - Failure notices on the bus (see notice.h). Any thread.
 */
#include <stdint.h>

#include "env.h"
#include "notice.h"
#include "util.h"

/* protobuf-c fields are char *: pack only reads them */
static char *
mut(const char *s)
{
	return (char *)(uintptr_t)(s != NULL ? s : "");
}

enum cr_err
notice_publish(struct bus *b, const char *kind, const struct notice *n)
{
	Failure f = CLAWRELAY__V1__FAILURE__INIT;
	unsigned char buf[2048];
	size_t len;
	enum cr_err err;

	f.schema_version = ENV_SCHEMA;
	f.message_id = mut(n->message_id);
	f.correlation_id = mut(n->correlation_id);
	f.sender = mut(n->sender);
	f.recipient = mut(n->recipient);
	f.reason = (Clawrelay__V1__FailureReason)n->reason;
	f.detail = mut(n->detail);
	f.failed_at_ms = now_ms();
	f.created_at_ms = n->created_at_ms;
	f.attempts = n->attempts;
	if ((err = env_pack_into(&f.base, buf, sizeof(buf), &len)) != CR_OK)
		return err;
	return bus_notice_publish(b, kind, f.sender, f.message_id, buf, len);
}
