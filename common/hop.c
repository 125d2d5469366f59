/*
 * hop.c - hop event emission. hop_init runs once before threads emit; after
 * that the state is read-only, so any thread may call hop_emit.
 */
#include <stdio.h>
#include <string.h>

#include "hop.h"
#include "log.h"
#include "util.h"

static struct bus *hop_bus;
static char hop_service[64], hop_instance[128], hop_subject[256];
static volatile int hop_enabled = 1;

/* hop_init - remember the bus, service and instance */
void
hop_init(struct bus *b, const char *service, const char *instance)
{
	hop_bus = b;
	snprintf(hop_service, sizeof(hop_service), "%s", service ? service : "");
	snprintf(hop_instance, sizeof(hop_instance), "%s", instance ? instance : "");
	if (b != NULL)
		bus_subj(b, hop_subject, sizeof(hop_subject), "events.%s", hop_service);
}

/* hop_set_enabled - turn emission on/off */
void
hop_set_enabled(int on)
{
	hop_enabled = on;
}

static char empty[] = "";

static char *
nz(const char *s)
{
	return s ? (char *)(uintptr_t)s : empty;
}

/* hop_forward - publish a hop event made elsewhere */
void
hop_forward(const HopEvent *ev)
{
	uint8_t buf[4096];
	size_t len;
	if (hop_bus == NULL || !hop_enabled)
		return;
	if (env_pack_into(&ev->base, buf, sizeof(buf), &len) != CR_OK)
		return;
	bus_publish(hop_bus, hop_subject, buf, len);
}

/* hop_emit_ids - publish one hop from bare IDs */
void
hop_emit_ids(const char *correlation_id, const char *message_id, const char *sender,
    const char *recipient, const char *trace_id, Clawrelay__V1__HopKind hop,
    const char *outcome, const char *detail)
{
	HopEvent ev = CLAWRELAY__V1__HOP_EVENT__INIT;
	if (hop_bus == NULL || !hop_enabled)
		return;
	uint64_t us = now_us();
	ev.schema_version = ENV_SCHEMA;
	ev.correlation_id = nz(correlation_id);
	ev.message_id = nz(message_id);
	ev.hop = hop;
	ev.ts_ms = us / 1000;
	ev.ts_us = us;
	ev.service = hop_service;
	ev.instance = hop_instance;
	ev.outcome = nz(outcome ? outcome : "ok");
	ev.detail = nz(detail);
	ev.sender = nz(sender);
	ev.recipient = nz(recipient);
	ev.trace_id = nz(trace_id);
	hop_forward(&ev);
}

/* hop_emit - publish one hop of envelope e */
void
hop_emit(const Envelope *e, Clawrelay__V1__HopKind hop, const char *outcome, const char *detail)
{
	hop_emit_ids(e->correlation_id, e->message_id, e->sender, e->recipient, e->trace_id,
	    hop, outcome, detail);
}
