/*
 * gateway_reqpool.c - the gateway's own send-asap NATS connections for its
 * hot requests (enqueue batches, from POSTs and socket frames alike) and
 * replies (deliver acks).
 *
 * Why not the bus's request connection: every civetweb worker and socket
 * thread publishing on one connection queues up on its one lock (nats.c
 * writes a send-asap publish to the socket while holding it), and a
 * natsConnection_Request costs two thread hand-offs for the answer. Here
 * requests are asynchronous, answered on one inbox subscription, which
 * tells the callback whether more answers are already waiting (so that a
 * socket's acks of one burst leave in one send); GW_REQ_CONNS connections
 * are used round-robin.
 *
 * Threads: gw_reqpool_init, _stop and _fini on the main thread. The
 * skeleton closes nats.c before the service's fini, while the HTTP server
 * still runs during drain: so gw_reqpool_stop (drain) first turns new
 * callers away to the bus (pool_stopping), waits until no caller is inside
 * the pool (pool_active), then closes it.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "gateway.h"
#include "log.h"

/* Measured (bench, http): 1 connection 308 us/msg in the gateway, 4
 * connections 321-337: with nats.c's lock spinning off, its lock is no
 * longer the bottleneck, and one reader thread reads more answers per wake */
#define GW_REQ_CONNS 1

static natsConnection *pool_nc[GW_REQ_CONNS];
static int pool_n;
static unsigned pool_next;           /* atomic: round robin */
static int pool_stopping;            /* atomic: callers use the bus instead */

/* Async requests (enqueue frames): one inbox subscription on pool_nc[0],
 * answers matched by the last token; timeouts fired by gw_reqpool_tick. */
#define AREQ_BUCKETS 1024
struct gw_areq {
	uint64_t id, deadline;
	gw_reply_fn fn;
	void *arg;
	struct gw_areq *next;
};
static natsSubscription *areq_sub;
static char areq_inbox[64];
static pthread_mutex_t areq_mu = PTHREAD_MUTEX_INITIALIZER;
static struct gw_areq *areq_tab[AREQ_BUCKETS];  /* under areq_mu */
static uint64_t areq_next;                      /* under areq_mu */
static size_t areq_n;                           /* under areq_mu */
static int pool_active;              /* atomic: callers inside the pool */

/* enter the pool; 0 when it is stopping (then use the bus) */
static int
pool_enter(void)
{
	__atomic_add_fetch(&pool_active, 1, __ATOMIC_SEQ_CST);
	if (!__atomic_load_n(&pool_stopping, __ATOMIC_SEQ_CST) && pool_n > 0)
		return 1;
	__atomic_sub_fetch(&pool_active, 1, __ATOMIC_SEQ_CST);
	return 0;
}

static void
pool_leave(void)
{
	__atomic_sub_fetch(&pool_active, 1, __ATOMIC_SEQ_CST);
}

/* the next pool connection, round-robin (caller is inside the pool) */
static natsConnection *
pool_conn(void)
{
	return pool_nc[__atomic_fetch_add(&pool_next, 1, __ATOMIC_RELAXED) % (unsigned)pool_n];
}

static int areq_start(void);

/* gw_reqpool_init - connect the pool to the bus's servers (the configured
 * CLAWRELAY_NATS_URL, credentials included); 0 or -1 */
int
gw_reqpool_init(struct gw *g)
{
	int rc = -1;
	enum cr_err e;

	for (pool_n = 0; pool_n < GW_REQ_CONNS; pool_n++) {
		char name[64];
		snprintf(name, sizeof(name), "gateway-req%d", pool_n);
		e = bus_conn_open(g->bus, name, 1, &pool_nc[pool_n]);
		if (e != CR_OK) {
			log_error(NULL, "request connection %d: %s", pool_n, cr_strerror(e));
			gw_reqpool_stop(0);
			goto out;
		}
	}
	if (areq_start() < 0) {
		gw_reqpool_stop(0);
		goto out;
	}
	rc = 0;
out:
	return rc;
}

/* gw_publish_asap - publish on a pool connection (replies) */
enum cr_err
gw_publish_asap(struct gw *g, const char *subj, const void *data, size_t len)
{
	enum cr_err err;

	if (!pool_enter())
		return bus_publish_asap(g->bus, subj, data, len);
	err = bus_err(natsConnection_Publish(pool_conn(), subj, data, (int)len));
	pool_leave();
	return err;
}

/* take request id out of the table; NULL if it is gone (answered, timed out) */
static struct gw_areq *
areq_take(uint64_t id)
{
	struct gw_areq *a = NULL, **pp;

	pthread_mutex_lock(&areq_mu);
	for (pp = &areq_tab[id % AREQ_BUCKETS]; *pp != NULL; pp = &(*pp)->next) {
		if ((*pp)->id == id) {
			a = *pp;
			*pp = a->next;
			areq_n--;
			break;
		}
	}
	pthread_mutex_unlock(&areq_mu);
	return a;
}

/* an answer to an async request (the inbox subscription's thread) */
static void
on_areq_reply(natsConnection *nc, natsSubscription *sub, natsMsg *msg, void *closure)
{
	const char *subj = natsMsg_GetSubject(msg), *dot = strrchr(subj, '.');
	struct gw_areq *a = areq_take(dot != NULL ? strtoull(dot + 1, NULL, 10) : 0);
	int pend = 0;

	if (natsSubscription_GetPending(sub, &pend, NULL) != NATS_OK)
		pend = 0;
	if (a != NULL) {
		if (natsMsg_IsNoResponders(msg))
			a->fn(a->arg, CR_ERR_UNAVAILABLE, NULL, pend > 0);
		else
			a->fn(a->arg, CR_OK, msg, pend > 0);
		free(a);
	} else if (pend == 0) {
		gw_reply_flush();
	}
	natsMsg_Destroy(msg);
}

static int
areq_start(void)
{
	char nuid[24], wild[80];
	natsStatus s;

	rand_hex(nuid, 11);
	snprintf(areq_inbox, sizeof(areq_inbox), "_INBOX.gwa%s", nuid);
	snprintf(wild, sizeof(wild), "%s.*", areq_inbox);
	s = natsConnection_Subscribe(&areq_sub, pool_nc[0], wild, on_areq_reply, NULL);
	if (s == NATS_OK)
		s = natsSubscription_SetPendingLimits(areq_sub, 1000000, 1024 * 1024 * 1024);
	if (s != NATS_OK) {
		log_error(NULL, "request inbox: %s", natsStatus_GetText(s));
		return -1;
	}
	return 0;
}

/* gw_request_async - publish a request on this thread's pool connection;
 * fn gets the answer on the inbox thread (more = further answers are
 * waiting there), or CR_ERR_TIMEOUT from gw_reqpool_tick. An error return
 * means fn will not be called. */
enum cr_err
gw_request_async(struct gw *g, const char *subj, const void *data, size_t len,
    int timeout_ms, gw_reply_fn fn, void *arg)
{
	struct gw_areq *a;
	char reply[128];
	natsStatus s;

	if (!pool_enter())
		return CR_ERR_UNAVAILABLE;
	if (areq_sub == NULL || (a = malloc(sizeof(*a))) == NULL) {
		pool_leave();
		return CR_ERR_NOMEM;
	}
	a->fn = fn;
	a->arg = arg;
	a->deadline = mono_ms() + (uint64_t)timeout_ms;
	pthread_mutex_lock(&areq_mu);
	a->id = ++areq_next;
	a->next = areq_tab[a->id % AREQ_BUCKETS];
	areq_tab[a->id % AREQ_BUCKETS] = a;
	areq_n++;
	pthread_mutex_unlock(&areq_mu);
	snprintf(reply, sizeof(reply), "%s.%llu", areq_inbox, (unsigned long long)a->id);
	uint64_t id = a->id;	/* a may be answered and freed once published */
	s = natsConnection_PublishRequest(pool_conn(), subj, reply, data, (int)len);
	pool_leave();
	if (s != NATS_OK && (a = areq_take(id)) != NULL) {
		free(a);
		return bus_err(s);
	}
	return CR_OK;	/* answered, or the tick reports the failure */
}

/* gw_reqpool_tick - time out async requests past their deadline */
void
gw_reqpool_tick(void)
{
	struct gw_areq *expired = NULL;
	uint64_t now = mono_ms();

	pthread_mutex_lock(&areq_mu);
	for (int i = 0; areq_n > 0 && i < AREQ_BUCKETS; i++) {
		for (struct gw_areq **pp = &areq_tab[i]; *pp != NULL;) {
			if ((*pp)->deadline <= now) {
				struct gw_areq *a = *pp;
				*pp = a->next;
				areq_n--;
				a->next = expired;
				expired = a;
			} else {
				pp = &(*pp)->next;
			}
		}
	}
	pthread_mutex_unlock(&areq_mu);
	while (expired != NULL) {
		struct gw_areq *a = expired;
		expired = a->next;
		a->fn(a->arg, CR_ERR_TIMEOUT, NULL, 0);
		free(a);
	}
}

/* gw_reqpool_pending - async requests awaiting an answer */
size_t
gw_reqpool_pending(void)
{
	pthread_mutex_lock(&areq_mu);
	size_t n = areq_n;
	pthread_mutex_unlock(&areq_mu);
	return n;
}

/* gw_reqpool_connected - is every pool connection up? */
int
gw_reqpool_connected(void)
{
	int up;

	if (!pool_enter())
		return 0;
	up = pool_n > 0;
	for (int i = 0; i < pool_n; i++) {
		if (natsConnection_Status(pool_nc[i]) != NATS_CONN_STATUS_CONNECTED)
			up = 0;
	}
	pool_leave();
	return up;
}

/* gw_reqpool_stop - turn callers away to the bus, wait (bounded) until none
 * is inside, close the pool; the HTTP server may still run (drain) */
void
gw_reqpool_stop(int wait_ms)
{
	__atomic_store_n(&pool_stopping, 1, __ATOMIC_SEQ_CST);
	for (int waited = 0; __atomic_load_n(&pool_active, __ATOMIC_SEQ_CST) > 0; waited++) {
		if (waited >= wait_ms) {
			/* a stuck caller would use what we free: leave it (exit is near) */
			log_warn(NULL, "request connections still in use at shutdown: left open");
			return;
		}
		struct timespec ts = { 0, 1000000L };
		nanosleep(&ts, NULL);
	}
	if (areq_sub != NULL) {
		/* a drain still delivers what is queued, so the inbox thread's last
		 * answer (more == 0) writes the acks it held back */
		natsSubscription_Drain(areq_sub);
		natsSubscription_WaitForDrainCompletion(areq_sub, 2000);
		natsSubscription_Destroy(areq_sub);
		areq_sub = NULL;
	}
	/* what was never answered fails now, while the sockets still exist */
	for (int i = 0; i < AREQ_BUCKETS; i++) {
		pthread_mutex_lock(&areq_mu);
		struct gw_areq *a = areq_tab[i];
		areq_tab[i] = NULL;
		pthread_mutex_unlock(&areq_mu);
		while (a != NULL) {
			struct gw_areq *n = a->next;
			a->fn(a->arg, CR_ERR_UNAVAILABLE, NULL, 0);
			free(a);
			a = n;
		}
	}
	pthread_mutex_lock(&areq_mu);
	areq_n = 0;
	pthread_mutex_unlock(&areq_mu);
	for (int i = 0; i < pool_n; i++) {
		natsConnection_FlushTimeout(pool_nc[i], 1000);
		natsConnection_Close(pool_nc[i]);
		natsConnection_Destroy(pool_nc[i]);
		pool_nc[i] = NULL;
	}
	pool_n = 0;
}

/* gw_reqpool_fini - release what is left (after nats.c is closed) */
void
gw_reqpool_fini(void)
{
	/* nothing left: gw_reqpool_stop closed the connections */
}
