/*
 * bus.h - the NATS bus: connections, subjects, handlers, requests, KV.
 *
 * A bus holds two connections to the same server: a send-asap one for
 * requests and replies (latency, STACK-NOTES: ~0.2 ms instead of ~1 ms) and a
 * buffered one for bulk publishes (hop events, receipts). Both reconnect
 * forever. Subjects start with the configured prefix.
 *
 * Threads: handlers run on nats.c's threads (one per subscription); the
 * async-request table is guarded by one mutex and its timeouts are fired by
 * one timer thread. Reply callbacks run on the reply subscription's thread or
 * the timer thread, never while the table lock is held.
 */
#ifndef CR_BUS_H
#define CR_BUS_H

#include <stddef.h>
#include <stdint.h>
#include <nats/nats.h>

#include "err.h"

struct bus;

/* bus_connect - connect to url (comma-separated list allowed); name is the
 * client name; prefix the subject prefix (copied). Caller frees with bus_free. */
enum cr_err bus_connect(const char *url, const char *name, const char *prefix, struct bus **out);
/* bus_free - drain subscriptions, fail pending requests, close; NULL ok */
void bus_free(struct bus *b);
/* bus_drain_subs - stop taking new messages (first step of shutdown) */
void bus_drain_subs(struct bus *b);
/* bus_conn_open - one more connection to the bus's servers with the bus's
 * options (reconnects forever; asap: send-asap); caller closes and destroys it */
enum cr_err bus_conn_open(struct bus *b, const char *name, int asap, natsConnection **out);
/* bus_probe - can url's server be reached within timeout_ms? CR_OK, or an
 * error with nats.c's reason in why (bus_connect itself waits for NATS) */
enum cr_err bus_probe(const char *url, int timeout_ms, char *why, size_t whysz);
/* bus_is_connected - is the request connection up? */
int bus_is_connected(struct bus *b);
const char *bus_prefix(const struct bus *b);
natsConnection *bus_nc(struct bus *b);
natsConnection *bus_nc_bulk(struct bus *b);
jsCtx *bus_js(struct bus *b);

/* bus_subj - "<prefix>." + formatted rest into out; -1 if it does not fit */
int bus_subj(const struct bus *b, char *out, size_t sz, const char *fmt, ...)
	__attribute__((format(printf, 4, 5)));
/* bus_subj_agent - "<prefix>.<kind>.<token(agent_id)>"; -1 if it does not fit */
int bus_subj_agent(const struct bus *b, char *out, size_t sz, const char *kind, const char *agent_id);

/* A handler gets a borrowed message; the bus destroys it after return. */
typedef void (*bus_handler_fn)(void *arg, natsMsg *msg);

/* bus_subscribe - subscribe subject (in queue group if queue != NULL) on the
 * request connection; the subscription lives until bus_free. */
enum cr_err bus_subscribe(struct bus *b, const char *subject, const char *queue,
    bus_handler_fn fn, void *arg);
/* bus_reply - answer a request (asap connection); no-op without reply subject */
enum cr_err bus_reply(struct bus *b, natsMsg *req, const void *data, size_t len);
/* bus_publish - publish on the buffered connection (events, receipts) */
enum cr_err bus_publish(struct bus *b, const char *subj, const void *data, size_t len);
/* bus_publish_asap - publish on the send-asap connection */
enum cr_err bus_publish_asap(struct bus *b, const char *subj, const void *data, size_t len);
/* bus_publish_msg - publish a natsMsg with headers (takes ownership of m) */
enum cr_err bus_publish_msg(struct bus *b, natsMsg *m);

/* bus_request - synchronous request. On CR_OK *reply is the answer (caller
 * destroys with natsMsg_Destroy). CR_ERR_UNAVAILABLE: no responders;
 * CR_ERR_TIMEOUT: no answer in time. */
enum cr_err bus_request(struct bus *b, const char *subj, const void *data, size_t len,
    int timeout_ms, natsMsg **reply);

/* Called once per async request: err CR_OK with the reply (borrowed, may be
 * NULL otherwise), CR_ERR_UNAVAILABLE (no responders), CR_ERR_TIMEOUT. */
typedef void (*bus_reply_fn)(void *arg, enum cr_err err, natsMsg *reply);

/* bus_request_async - publish a request whose reply comes to fn; the caller
 * keeps its own window. Returns an error (and does not call fn) if the
 * publish itself fails. */
enum cr_err bus_request_async(struct bus *b, const char *subj, const void *data, size_t len,
    int timeout_ms, bus_reply_fn fn, void *arg);
/* bus_pending_requests - async requests awaiting a reply */
size_t bus_pending_requests(struct bus *b);

/* bus_set_kv_replicas - replicas (1..5, default 1) of the buckets bus_kv
 * creates from now on (CLAWRELAY_KV_REPLICAS: 3 on a 3-node NATS cluster);
 * a bucket that exists keeps the replicas it was created with. */
void bus_set_kv_replicas(struct bus *b, int replicas);
/* bus_kv_replicas - that number: the streams a service creates use it too */
int bus_kv_replicas(const struct bus *b);
/* bus_kv - bind the KV bucket, creating it (history, ttl_ms 0 = none) if it
 * does not exist. The handle belongs to the bus. */
enum cr_err bus_kv(struct bus *b, const char *bucket, int history, int64_t ttl_ms, kvStore **out);

/* bus_err - nats.c status to the project's error */
enum cr_err bus_err(natsStatus s);

/* --- the notice stream ------------------------------------------------
 * Failures (<P>.failure.<tok(sender)>) and delay warnings
 * (<P>.delayed.<tok(sender)>) are plain core publishes; the JetStream
 * stream "<PREFIX>_NOTICES" (CLAWRELAY_NOTICES by default) stores every
 * one of them, so they wait there for the notifier even when none runs.
 * Limits retention, file storage, discard old, bounded by age, bytes and
 * count. */

#define BUS_NOTICE_MAX_AGE_MS (7LL * 24 * 3600 * 1000)
#define BUS_NOTICE_MAX_BYTES (1024LL * 1024 * 1024)
#define BUS_NOTICE_MAX_MSGS 5000000LL
#define BUS_NOTICE_DUP_WINDOW_MS (2LL * 60 * 1000)

/* Settings of the notice stream (the notifier's NOTICE_* settings). */
struct bus_stream_limits {
	int64_t max_age_ms;
	int64_t max_bytes;
	int64_t max_msgs;
	int64_t dup_window_ms;     /* Nats-Msg-Id duplicate window */
	int replicas;              /* 1; up to 5 in a NATS cluster */
};

/* bus_notice_stream_name - "<PREFIX>_NOTICES": the prefix upper-cased, every
 * byte outside [A-Z0-9_-] as '_'; -1 if it does not fit */
int bus_notice_stream_name(const struct bus *b, char *out, size_t sz);
/* bus_notice_stream - make sure the notice stream exists. lim NULL: create
 * it with the defaults above if it is missing, never change an existing one
 * (relay-session, gateway). lim set (the notifier, which owns it): create
 * it with lim, or bring an existing one's limits to lim; a refused update
 * is logged, not fatal. CR_OK once the stream exists; an error (logged)
 * when JetStream cannot be reached or refuses to create it. */
enum cr_err bus_notice_stream(struct bus *b, const struct bus_stream_limits *lim);
/* bus_notice_publish - publish a packed Failure (data borrowed) on
 * "<P>.<kind>.<tok(sender)>" (kind "failure" or "delayed") with the header
 * Nats-Msg-Id "<kind>:<message_id>", so the stream stores one copy of a
 * notice published twice within its duplicate window (buffered connection) */
enum cr_err bus_notice_publish(struct bus *b, const char *kind, const char *sender,
    const char *message_id, const void *data, size_t len);
/* bus_publish_msg_asap - bus_publish_msg on the send-asap connection: the
 * message is on the wire, ahead of anything this connection sends later
 * (takes ownership of m) */
enum cr_err bus_publish_msg_asap(struct bus *b, natsMsg *m);

#endif
