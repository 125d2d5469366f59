/*
 * bus.c - NATS connections, subscriptions, windowed async requests, KV.
 * See bus.h for the thread rules.
 */
#include <pthread.h>
#include <stdatomic.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "bus.h"
#include "log.h"
#include "metrics.h"
#include "util.h"

#define REQ_BUCKETS 1024
#define MAX_SUBS 64
#define MAX_KV 8

struct pending {
	uint64_t id;
	uint64_t t0_us;
	uint64_t deadline;
	bus_reply_fn fn;
	void *arg;
	struct pending *next;
};

struct sub {
	natsSubscription *ns;
	bus_handler_fn fn;
	void *arg;
};

struct kvh {
	char name[64];
	kvStore *kv;
};

struct bus {
	natsConnection *nc, *bulk;
	jsCtx *js;
	char prefix[64];
	char *url;                   /* the servers, as given to bus_connect */
	char inbox[96];
	natsSubscription *inbox_sub;
	pthread_mutex_t mu;          /* guards pending, npending, next_id, kvs */
	struct pending *pending[REQ_BUCKETS];
	size_t npending;
	uint64_t next_id;
	pthread_t timer;
	int timer_started;
	volatile int stopping;
	struct sub subs[MAX_SUBS];
	int nsubs;
	struct kvh kvs[MAX_KV];
	int nkv;
	int kv_replicas;          /* of the buckets bus_kv creates (1..5) */
};

/* bus_err - nats.c status to the project's error */
enum cr_err
bus_err(natsStatus s)
{
	switch (s) {
	case NATS_OK:
		return CR_OK;
	case NATS_TIMEOUT:
		return CR_ERR_TIMEOUT;
	case NATS_NO_RESPONDERS:
		return CR_ERR_UNAVAILABLE;
	case NATS_NOT_FOUND:
		return CR_ERR_NOT_FOUND;
	case NATS_NO_MEMORY:
		return CR_ERR_NOMEM;
	case NATS_CONNECTION_CLOSED:
	case NATS_CONNECTION_DISCONNECTED:
	case NATS_NO_SERVER:
	case NATS_STALE_CONNECTION:
		return CR_ERR_UNAVAILABLE;
	case NATS_MAX_PAYLOAD:
		return CR_ERR_TOO_BIG;
	default:
		return CR_ERR_BUS;
	}
}

/* Connections being closed on purpose (bus_free): their "disconnected"
 * callback, which nats.c may run after the bus is gone, is not worth a
 * warning. The closures are static strings, never the bus. */
static _Atomic int closing_now;
static char tag_req[] = "req", tag_bulk[] = "bulk";

static void
on_disconnected(natsConnection *nc, void *closure)
{
	if (atomic_load(&closing_now) == 0)
		log_warn(NULL, "nats disconnected (%s)", (const char *)closure);
}

static void
on_reconnected(natsConnection *nc, void *closure)
{
	log_info(NULL, "nats reconnected (%s)", (const char *)closure);
}

static void
on_async_err(natsConnection *nc, natsSubscription *sub, natsStatus err, void *closure)
{
	log_warn(NULL, "nats async error: %s", natsStatus_GetText(err));
}

/* A connection to url's servers. probe_ms > 0: one attempt that fails
 * after probe_ms (to report an unreachable server); otherwise it reconnects
 * forever and Connect returns at once while it keeps trying. */
static natsStatus
make_conn(const char *url, const char *name, int asap, int probe_ms, natsConnection **out)
{
	natsOptions *o = NULL;
	natsStatus s;
	const char *urls[16];
	int n = 0;
	char *copy = strdup(url), *save = NULL;

	if (copy == NULL)
		return NATS_NO_MEMORY;
	for (char *t = strtok_r(copy, ",", &save); t && n < 16; t = strtok_r(NULL, ",", &save))
		urls[n++] = t;
	s = natsOptions_Create(&o);
	if (s == NATS_OK)
		s = natsOptions_SetServers(o, urls, n);
	if (s == NATS_OK)
		s = natsOptions_SetName(o, name);
	if (s == NATS_OK)
		s = natsOptions_SetSendAsap(o, asap ? true : false);
	if (s == NATS_OK && probe_ms > 0) {
		s = natsOptions_SetTimeout(o, probe_ms);
		if (s == NATS_OK)
			s = natsOptions_SetMaxReconnect(o, 0);
		if (s == NATS_OK)
			s = natsConnection_Connect(out, o);
		goto out;
	}
	if (s == NATS_OK)
		s = natsOptions_SetMaxReconnect(o, -1);
	if (s == NATS_OK)
		s = natsOptions_SetReconnectWait(o, 250);
	if (s == NATS_OK)
		s = natsOptions_SetReconnectJitter(o, 100, 1000);
	if (s == NATS_OK)
		s = natsOptions_SetReconnectBufSize(o, 64 * 1024 * 1024);
	if (s == NATS_OK)
		s = natsOptions_SetRetryOnFailedConnect(o, true, NULL, NULL);
	if (s == NATS_OK)
		s = natsOptions_SetDisconnectedCB(o, on_disconnected, asap ? tag_req : tag_bulk);
	if (s == NATS_OK)
		s = natsOptions_SetReconnectedCB(o, on_reconnected, asap ? tag_req : tag_bulk);
	if (s == NATS_OK)
		s = natsOptions_SetErrorHandler(o, on_async_err, NULL);
	if (s == NATS_OK) {
		s = natsConnection_Connect(out, o);
		/* with retry-on-failed-connect, NOT_YET_CONNECTED means it keeps trying */
		if (s == NATS_NOT_YET_CONNECTED)
			s = NATS_OK;
	}
out:
	natsOptions_Destroy(o);
	free(copy);
	return s;
}

static struct metric_slot m_req, m_req_timeout, m_req_norsp;

/* one request's outcome into the metrics */
static void
count_request(uint64_t t0_us, enum cr_err err)
{
	if (err == CR_OK)
		metric_observe_us(metric_histogram_at(&m_req, "clawrelay_nats_request_seconds", NULL,
		    "NATS requests: time to the reply", NULL, 0), now_us() - t0_us);
	else if (err == CR_ERR_TIMEOUT)
		metric_add(metric_counter_at(&m_req_timeout, "clawrelay_nats_request_failures_total",
		    "reason=\"timeout\"", "NATS requests without a reply"), 1);
	else
		metric_add(metric_counter_at(&m_req_norsp, "clawrelay_nats_request_failures_total",
		    "reason=\"no_responders\"", "NATS requests without a reply"), 1);
}

static void
fire(struct pending *p, enum cr_err err, natsMsg *m)
{
	count_request(p->t0_us, err);
	p->fn(p->arg, err, m);
	free(p);
}

static void
on_inbox_reply(natsConnection *nc, natsSubscription *sub, natsMsg *msg, void *closure)
{
	struct bus *b = closure;
	const char *subj = natsMsg_GetSubject(msg);
	const char *dot = strrchr(subj, '.');
	uint64_t id = dot ? strtoull(dot + 1, NULL, 10) : 0;
	struct pending *p = NULL, **pp;

	pthread_mutex_lock(&b->mu);
	for (pp = &b->pending[id % REQ_BUCKETS]; *pp; pp = &(*pp)->next) {
		if ((*pp)->id == id) {
			p = *pp;
			*pp = p->next;
			b->npending--;
			break;
		}
	}
	pthread_mutex_unlock(&b->mu);
	if (p != NULL) {
		if (natsMsg_IsNoResponders(msg))
			fire(p, CR_ERR_UNAVAILABLE, NULL);
		else
			fire(p, CR_OK, msg);
	}
	natsMsg_Destroy(msg);
}

static void *
timer_main(void *arg)
{
	struct bus *b = arg;
	while (!b->stopping) {
		usleep(20000);
		uint64_t now = mono_ms();
		struct pending *expired = NULL;
		pthread_mutex_lock(&b->mu);
		if (b->npending > 0) {
			for (int i = 0; i < REQ_BUCKETS; i++) {
				struct pending **pp = &b->pending[i];
				while (*pp) {
					if ((*pp)->deadline <= now) {
						struct pending *p = *pp;
						*pp = p->next;
						p->next = expired;
						expired = p;
						b->npending--;
					} else {
						pp = &(*pp)->next;
					}
				}
			}
		}
		pthread_mutex_unlock(&b->mu);
		while (expired) {
			struct pending *p = expired;
			expired = p->next;
			fire(p, CR_ERR_TIMEOUT, NULL);
		}
	}
	return NULL;
}

/* bus_connect - connect both connections and set up the reply inbox */
enum cr_err
bus_connect(const char *url, const char *name, const char *prefix, struct bus **out)
{
	struct bus *b = calloc(1, sizeof(*b));
	natsStatus s;
	char bname[160], wild[128];
	enum cr_err err = CR_ERR_BUS;

	if (b == NULL)
		return CR_ERR_NOMEM;
	pthread_mutex_init(&b->mu, NULL);
	b->kv_replicas = 1;
	snprintf(b->prefix, sizeof(b->prefix), "%s", prefix);
	if ((b->url = strdup(url)) == NULL) {
		err = CR_ERR_NOMEM;
		goto out;
	}
	s = make_conn(url, name, 1, 0, &b->nc);
	if (s != NATS_OK) {
		log_error(NULL, "nats connect %s: %s", url, natsStatus_GetText(s));
		goto out;
	}
	snprintf(bname, sizeof(bname), "%s-bulk", name);
	s = make_conn(url, bname, 0, 0, &b->bulk);
	if (s != NATS_OK) {
		log_error(NULL, "nats connect %s: %s", url, natsStatus_GetText(s));
		goto out;
	}
	char nuid[32];
	rand_hex(nuid, 11);
	snprintf(b->inbox, sizeof(b->inbox), "_INBOX.%s", nuid);
	snprintf(wild, sizeof(wild), "%s.*", b->inbox);
	s = natsConnection_Subscribe(&b->inbox_sub, b->nc, wild, on_inbox_reply, b);
	if (s == NATS_OK)
		s = natsSubscription_SetPendingLimits(b->inbox_sub, 1000000, 1024 * 1024 * 1024);
	if (s != NATS_OK)
		goto out;
	s = natsConnection_JetStream(&b->js, b->nc, NULL);
	if (s != NATS_OK)
		goto out;
	if (pthread_create(&b->timer, NULL, timer_main, b) != 0)
		goto out;
	b->timer_started = 1;
	*out = b;
	return CR_OK;
out:
	bus_free(b);
	return err;
}

/* bus_drain_subs - stop taking new messages (first step of shutdown) */
void
bus_drain_subs(struct bus *b)
{
	if (b == NULL)
		return;
	for (int i = 0; i < b->nsubs; i++) {
		if (b->subs[i].ns == NULL)
			continue;
		natsSubscription_Unsubscribe(b->subs[i].ns);
		/* wait until its callback has returned for the last time */
		natsSubscription_Drain(b->subs[i].ns);
		natsSubscription_WaitForDrainCompletion(b->subs[i].ns, 2000);
		natsSubscription_Destroy(b->subs[i].ns);
		b->subs[i].ns = NULL;
	}
}

/* bus_free - drain subscriptions, fail pending requests, close; NULL ok */
void
bus_free(struct bus *b)
{
	if (b == NULL)
		return;
	bus_drain_subs(b);
	b->stopping = 1;
	if (b->timer_started)
		pthread_join(b->timer, NULL);
	if (b->inbox_sub) {
		natsSubscription_Unsubscribe(b->inbox_sub);
		natsSubscription_Destroy(b->inbox_sub);
	}
	for (int i = 0; i < REQ_BUCKETS; i++) {
		while (b->pending[i]) {
			struct pending *p = b->pending[i];
			b->pending[i] = p->next;
			fire(p, CR_ERR_UNAVAILABLE, NULL);
		}
	}
	for (int i = 0; i < b->nkv; i++)
		kvStore_Destroy(b->kvs[i].kv);
	atomic_fetch_add(&closing_now, 1);
	jsCtx_Destroy(b->js);
	if (b->bulk) {
		natsConnection_FlushTimeout(b->bulk, 1000);
		natsConnection_Close(b->bulk);
		natsConnection_Destroy(b->bulk);
	}
	if (b->nc) {
		natsConnection_FlushTimeout(b->nc, 1000);
		natsConnection_Close(b->nc);
		natsConnection_Destroy(b->nc);
	}
	pthread_mutex_destroy(&b->mu);
	free(b->url);
	free(b);
	atomic_fetch_sub(&closing_now, 1);
}

/* bus_conn_open - one more connection to the bus's servers with the bus's
 * options (asap: send-asap); caller closes and destroys it */
enum cr_err
bus_conn_open(struct bus *b, const char *name, int asap, natsConnection **out)
{
	return bus_err(make_conn(b->url, name, asap, 0, out));
}

/* bus_probe - can url's server be reached within timeout_ms? CR_OK, or an
 * error with nats.c's reason in why */
enum cr_err
bus_probe(const char *url, int timeout_ms, char *why, size_t whysz)
{
	natsConnection *nc = NULL;
	natsStatus s = make_conn(url, "clawrelay-probe", 0, timeout_ms > 0 ? timeout_ms : 1, &nc);
	if (s != NATS_OK)
		snprintf(why, whysz, "%s", natsStatus_GetText(s));
	natsConnection_Destroy(nc);
	return bus_err(s);
}

/* bus_is_connected - is the request connection up? */
int
bus_is_connected(struct bus *b)
{
	return b && natsConnection_Status(b->nc) == NATS_CONN_STATUS_CONNECTED;
}

const char *bus_prefix(const struct bus *b) { return b->prefix; }
natsConnection *bus_nc(struct bus *b) { return b->nc; }
natsConnection *bus_nc_bulk(struct bus *b) { return b->bulk; }
jsCtx *bus_js(struct bus *b) { return b->js; }

/* bus_subj - "<prefix>." + formatted rest into out */
int
bus_subj(const struct bus *b, char *out, size_t sz, const char *fmt, ...)
{
	va_list ap;
	int n = snprintf(out, sz, "%s.", b->prefix);
	if (n < 0 || (size_t)n >= sz)
		return -1;
	va_start(ap, fmt);
	int m = vsnprintf(out + n, sz - (size_t)n, fmt, ap);
	va_end(ap);
	if (m < 0 || (size_t)(n + m) >= sz)
		return -1;
	return n + m;
}

/* bus_subj_agent - "<prefix>.<kind>.<token(agent_id)>" */
int
bus_subj_agent(const struct bus *b, char *out, size_t sz, const char *kind, const char *agent_id)
{
	char tok[400];
	if (subj_token(agent_id, tok, sizeof(tok)) == 0)
		return -1;
	return bus_subj(b, out, sz, "%s.%s", kind, tok);
}

static void
on_sub_msg(natsConnection *nc, natsSubscription *ns, natsMsg *msg, void *closure)
{
	struct sub *s = closure;
	s->fn(s->arg, msg);
	natsMsg_Destroy(msg);
}

/* bus_subscribe - subscribe subject (queue group optional) until bus_free */
enum cr_err
bus_subscribe(struct bus *b, const char *subject, const char *queue, bus_handler_fn fn, void *arg)
{
	natsStatus s;
	if (b->nsubs >= MAX_SUBS)
		return CR_ERR_FULL;
	struct sub *sb = &b->subs[b->nsubs];
	sb->fn = fn;
	sb->arg = arg;
	if (queue)
		s = natsConnection_QueueSubscribe(&sb->ns, b->nc, subject, queue, on_sub_msg, sb);
	else
		s = natsConnection_Subscribe(&sb->ns, b->nc, subject, on_sub_msg, sb);
	if (s == NATS_OK)
		s = natsSubscription_SetPendingLimits(sb->ns, 1000000, 1024 * 1024 * 1024);
	if (s != NATS_OK) {
		log_error(NULL, "subscribe %s: %s", subject, natsStatus_GetText(s));
		return bus_err(s);
	}
	b->nsubs++;
	return CR_OK;
}

/* bus_reply - answer a request; no-op without reply subject */
enum cr_err
bus_reply(struct bus *b, natsMsg *req, const void *data, size_t len)
{
	const char *r = natsMsg_GetReply(req);
	if (r == NULL || *r == '\0')
		return CR_OK;
	return bus_err(natsConnection_Publish(b->nc, r, data, (int)len));
}

/* bus_publish - publish on the buffered connection */
enum cr_err
bus_publish(struct bus *b, const char *subj, const void *data, size_t len)
{
	return bus_err(natsConnection_Publish(b->bulk, subj, data, (int)len));
}

/* bus_publish_asap - publish on the send-asap connection */
enum cr_err
bus_publish_asap(struct bus *b, const char *subj, const void *data, size_t len)
{
	return bus_err(natsConnection_Publish(b->nc, subj, data, (int)len));
}

/* bus_publish_msg - publish a natsMsg with headers (takes ownership of m) */
enum cr_err
bus_publish_msg(struct bus *b, natsMsg *m)
{
	natsStatus s = natsConnection_PublishMsg(b->bulk, m);
	natsMsg_Destroy(m);
	return bus_err(s);
}

/* bus_request - synchronous request */
enum cr_err
bus_request(struct bus *b, const char *subj, const void *data, size_t len, int timeout_ms,
    natsMsg **reply)
{
	uint64_t t0 = now_us();
	natsStatus s = natsConnection_Request(reply, b->nc, subj, data, (int)len, timeout_ms);
	if (s != NATS_OK)
		*reply = NULL;
	count_request(t0, bus_err(s));
	return bus_err(s);
}

/* bus_request_async - publish a request whose reply comes to fn */
enum cr_err
bus_request_async(struct bus *b, const char *subj, const void *data, size_t len, int timeout_ms,
    bus_reply_fn fn, void *arg)
{
	struct pending *p = malloc(sizeof(*p));
	char reply[128];
	natsStatus s;

	if (p == NULL)
		return CR_ERR_NOMEM;
	p->fn = fn;
	p->arg = arg;
	p->deadline = mono_ms() + (uint64_t)timeout_ms;
	p->t0_us = now_us();
	pthread_mutex_lock(&b->mu);
	p->id = ++b->next_id;
	p->next = b->pending[p->id % REQ_BUCKETS];
	b->pending[p->id % REQ_BUCKETS] = p;
	b->npending++;
	pthread_mutex_unlock(&b->mu);
	snprintf(reply, sizeof(reply), "%s.%llu", b->inbox, (unsigned long long)p->id);
	s = natsConnection_PublishRequest(b->nc, subj, reply, data, (int)len);
	if (s != NATS_OK) {
		/* take it back unless a (timeout) callback already has */
		struct pending **pp;
		int found = 0;
		pthread_mutex_lock(&b->mu);
		for (pp = &b->pending[p->id % REQ_BUCKETS]; *pp; pp = &(*pp)->next) {
			if (*pp == p) {
				*pp = p->next;
				b->npending--;
				found = 1;
				break;
			}
		}
		pthread_mutex_unlock(&b->mu);
		if (found) {
			free(p);
			return bus_err(s);
		}
		return CR_OK;	/* the timer owns it now and will report */
	}
	return CR_OK;
}

/* bus_pending_requests - async requests awaiting a reply */
size_t
bus_pending_requests(struct bus *b)
{
	pthread_mutex_lock(&b->mu);
	size_t n = b->npending;
	pthread_mutex_unlock(&b->mu);
	return n;
}

/* bus_set_kv_replicas - replicas (1..5) of the buckets bus_kv creates from now on */
void
bus_set_kv_replicas(struct bus *b, int replicas)
{
	pthread_mutex_lock(&b->mu);
	b->kv_replicas = replicas < 1 ? 1 : replicas > 5 ? 5 : replicas;
	pthread_mutex_unlock(&b->mu);
}

/* bus_kv - bind the KV bucket, creating it if it does not exist */
enum cr_err
bus_kv(struct bus *b, const char *bucket, int history, int64_t ttl_ms, kvStore **out)
{
	kvStore *kv = NULL;
	natsStatus s;
	int replicas;

	pthread_mutex_lock(&b->mu);
	for (int i = 0; i < b->nkv; i++) {
		if (strcmp(b->kvs[i].name, bucket) == 0) {
			*out = b->kvs[i].kv;
			pthread_mutex_unlock(&b->mu);
			return CR_OK;
		}
	}
	replicas = b->kv_replicas;
	pthread_mutex_unlock(&b->mu);
	s = js_KeyValue(&kv, b->js, bucket);
	if (s != NATS_OK) {
		kvConfig cfg;
		kvConfig_Init(&cfg);
		cfg.Bucket = bucket;
		cfg.History = (uint8_t)(history > 0 ? history : 1);
		cfg.TTL = ttl_ms * 1000000LL;	/* nanoseconds (STACK-NOTES) */
		cfg.StorageType = js_FileStorage;
		cfg.Replicas = replicas;
		s = js_CreateKeyValue(&kv, b->js, &cfg);
		if (s != NATS_OK)	/* created meanwhile by someone else? */
			s = js_KeyValue(&kv, b->js, bucket);
	}
	if (s != NATS_OK) {
		log_error(NULL, "kv bucket %s: %s", bucket, natsStatus_GetText(s));
		return bus_err(s);
	}
	pthread_mutex_lock(&b->mu);
	for (int i = 0; i < b->nkv; i++) {
		if (strcmp(b->kvs[i].name, bucket) == 0) {
			pthread_mutex_unlock(&b->mu);
			kvStore_Destroy(kv);
			*out = b->kvs[i].kv;
			return CR_OK;
		}
	}
	if (b->nkv >= MAX_KV) {
		pthread_mutex_unlock(&b->mu);
		kvStore_Destroy(kv);
		return CR_ERR_FULL;
	}
	snprintf(b->kvs[b->nkv].name, sizeof(b->kvs[b->nkv].name), "%s", bucket);
	b->kvs[b->nkv++].kv = kv;
	pthread_mutex_unlock(&b->mu);
	*out = kv;
	return CR_OK;
}

/* --- the notice stream ------------------------------------------------ */

/* bus_notice_stream_name - "<PREFIX>_NOTICES" */
int
bus_notice_stream_name(const struct bus *b, char *out, size_t sz)
{
	size_t n = 0;

	for (const char *p = b->prefix; *p != '\0'; p++) {
		char c = *p;
		if (c >= 'a' && c <= 'z')
			c = (char)(c - 'a' + 'A');
		else if (!((c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '-' || c == '_'))
			c = '_';	/* '.', '*', '>' cannot be in a stream name */
		if (n + 1 >= sz)
			return -1;
		out[n++] = c;
	}
	if (n + sizeof("_NOTICES") > sz)
		return -1;
	memcpy(out + n, "_NOTICES", sizeof("_NOTICES"));
	return (int)(n + sizeof("_NOTICES") - 1);
}

/* bus_kv_replicas - the replicas of what this service creates (KV_REPLICAS) */
int
bus_kv_replicas(const struct bus *b)
{
	return b->kv_replicas;
}

static void
notice_limits(const struct bus *b, const struct bus_stream_limits *lim, jsStreamConfig *sc)
{
	sc->MaxAge = lim->max_age_ms * 1000000LL;		/* nanoseconds */
	sc->MaxBytes = lim->max_bytes;
	sc->MaxMsgs = lim->max_msgs;
	sc->Duplicates = lim->dup_window_ms * 1000000LL;	/* nanoseconds */
	sc->Replicas = lim->replicas > 0 ? lim->replicas : b->kv_replicas;	/* 0: as the buckets */
}

/* bus_notice_stream - create the notice stream if it is missing; with lim,
 * also bring an existing one's limits to lim */
enum cr_err
bus_notice_stream(struct bus *b, const struct bus_stream_limits *lim)
{
	static const struct bus_stream_limits defaults = {
		BUS_NOTICE_MAX_AGE_MS, BUS_NOTICE_MAX_BYTES, BUS_NOTICE_MAX_MSGS,
		BUS_NOTICE_DUP_WINDOW_MS, 0
	};
	char name[96], s_fail[128], s_delay[128];
	const char *subjects[2] = { s_fail, s_delay };
	jsStreamInfo *si = NULL;
	jsStreamConfig sc;
	jsErrCode jerr = 0;
	natsStatus s;

	if (bus_notice_stream_name(b, name, sizeof(name)) < 0 ||
	    bus_subj(b, s_fail, sizeof(s_fail), "failure.>") < 0 ||
	    bus_subj(b, s_delay, sizeof(s_delay), "delayed.>") < 0)
		return CR_ERR_INVALID;
	s = js_GetStreamInfo(&si, b->js, name, NULL, &jerr);
	if (s == NATS_NOT_FOUND) {
		jsStreamConfig_Init(&sc);
		sc.Name = name;
		sc.Description = "clawrelay failure notices and delay warnings, kept for the notifier";
		sc.Subjects = subjects;
		sc.SubjectsLen = 2;
		sc.Retention = js_LimitsPolicy;
		sc.Storage = js_FileStorage;
		sc.Discard = js_DiscardOld;
		notice_limits(b, lim != NULL ? lim : &defaults, &sc);
		s = js_AddStream(&si, b->js, &sc, NULL, &jerr);
		if (s == NATS_OK) {
			log_info(NULL, "stream %s created (%s, %s)", name, s_fail, s_delay);
			jsStreamInfo_Destroy(si);
			return CR_OK;
		}
		/* created meanwhile by another service? */
		log_debug(NULL, "stream %s: create: %s (%d)", name, natsStatus_GetText(s), (int)jerr);
		s = js_GetStreamInfo(&si, b->js, name, NULL, &jerr);
	}
	if (s != NATS_OK) {
		const char *why = nats_GetLastError(NULL);
		log_error(NULL, "stream %s: %s", name, why != NULL ? why : natsStatus_GetText(s));
		return bus_err(s);
	}
	/* it exists: whoever made it, and with whatever settings, it serves */
	int ours = 0;
	for (int i = 0; i < si->Config->SubjectsLen; i++)
		ours |= strcmp(si->Config->Subjects[i], s_fail) == 0;
	if (!ours)
		log_warn(NULL, "stream %s exists without the subject %s: failures may not be kept",
		    name, s_fail);
	if (lim != NULL) {
		sc = *si->Config;
		notice_limits(b, lim, &sc);
		if (sc.MaxAge != si->Config->MaxAge || sc.MaxBytes != si->Config->MaxBytes ||
		    sc.MaxMsgs != si->Config->MaxMsgs || sc.Duplicates != si->Config->Duplicates ||
		    sc.Replicas != si->Config->Replicas) {
			jsStreamInfo *ui = NULL;
			s = js_UpdateStream(&ui, b->js, &sc, NULL, &jerr);
			if (s == NATS_OK) {
				log_info(NULL, "stream %s: limits updated", name);
			} else {
				const char *why = nats_GetLastError(NULL);
				log_warn(NULL, "stream %s keeps its own limits (update refused: %s)", name,
				    why != NULL ? why : natsStatus_GetText(s));
			}
			jsStreamInfo_Destroy(ui);
		}
	}
	jsStreamInfo_Destroy(si);
	return CR_OK;
}

/* bus_notice_publish - a Failure on "<P>.<kind>.<tok(sender)>" with
 * Nats-Msg-Id "<kind>:<message_id>" */
enum cr_err
bus_notice_publish(struct bus *b, const char *kind, const char *sender, const char *message_id,
    const void *data, size_t len)
{
	char subj[512], id[300];
	natsMsg *m = NULL;
	natsStatus s;

	if (bus_subj_agent(b, subj, sizeof(subj), kind, sender) < 0 ||
	    (size_t)snprintf(id, sizeof(id), "%s:%s", kind, message_id) >= sizeof(id))
		return CR_ERR_TOO_BIG;
	s = natsMsg_Create(&m, subj, NULL, data, (int)len);
	if (s == NATS_OK && message_id[0] != '\0')
		s = natsMsgHeader_Set(m, "Nats-Msg-Id", id);
	if (s == NATS_OK)
		s = natsConnection_PublishMsg(b->bulk, m);
	natsMsg_Destroy(m);
	return bus_err(s);
}

/* bus_publish_msg_asap - publish a natsMsg on the send-asap connection */
enum cr_err
bus_publish_msg_asap(struct bus *b, natsMsg *m)
{
	natsStatus s = natsConnection_PublishMsg(b->nc, m);
	natsMsg_Destroy(m);
	return bus_err(s);
}
