/*
 * notice.h - a Failure notice about one message, published where the
 * notifier's stream takes it: <P>.failure.<tok(sender)> for a message that
 * failed for good, <P>.delayed.<tok(sender)> for one still queued after the
 * warning time (docs/PROTOCOL.md). relay-session and the gateway (a
 * connector's dead letter) both tell the notifier this way.
 */
#ifndef CR_NOTICE_H
#define CR_NOTICE_H

#include <stdint.h>

#include "bus.h"

struct notice {
	const char *message_id, *correlation_id, *sender, *recipient;
	int reason;                 /* Clawrelay__V1__FailureReason */
	const char *detail;         /* NULL: none */
	uint64_t created_at_ms;     /* 0: unknown */
	uint32_t attempts;
};

/* notice_publish - publish n on <P>.<kind>.<tok(sender)>, failed_at now,
 * with Nats-Msg-Id "<kind>:<message_id>" (bus_notice_publish: the stream
 * keeps one copy of a notice published twice within its duplicate window);
 * kind is "failure" or "delayed". CR_OK once handed to the bus. */
enum cr_err notice_publish(struct bus *b, const char *kind, const struct notice *n);

#endif
