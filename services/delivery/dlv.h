/*
 * dlv.h - private header of clawrelay-delivery (nothing outside
 * services/delivery/ includes it).
 *
 * One struct dlv is the service state. One struct dlv_batch is one
 * dispatch request (a DispatchBatch: messages for one recipient), answered
 * by one DispatchBatchResult once each of its attempts has finished. One
 * struct dlv_attempt is one message's delivery attempt: it is created on the
 * dispatch subscription's thread and then owned by exactly one of: the
 * webhook pool (queue, then one worker), or a socket request (the bus's
 * async-request table) until its reply callback runs. dlv_finish() records
 * its result in the batch, counts and frees it; the last one answers.
 */
#ifndef DLV_H
#define DLV_H

#include <stdatomic.h>
#include <stddef.h>
#include <stdint.h>

#include "brkset.h"
#include "bus.h"
#include "env.h"
#include "metrics.h"
#include "registry.h"
#include "svc.h"

/* short names for the generated enums */
#define DLV_DELIVERED    CLAWRELAY__V1__DISPATCH_OUTCOME__DISPATCH_DELIVERED
#define DLV_OFFLINE      CLAWRELAY__V1__DISPATCH_OUTCOME__DISPATCH_OFFLINE
#define DLV_NACKED       CLAWRELAY__V1__DISPATCH_OUTCOME__DISPATCH_NACKED
#define DLV_RETRY        CLAWRELAY__V1__DISPATCH_OUTCOME__DISPATCH_RETRY
#define DLV_REJECTED     CLAWRELAY__V1__DISPATCH_OUTCOME__DISPATCH_REJECTED
#define DLV_BREAKER_OPEN CLAWRELAY__V1__DISPATCH_OUTCOME__DISPATCH_BREAKER_OPEN
#define DLV_NOUTCOMES 6

struct dlv_pool;

struct dlv {
	/* settings (written once by the skeleton's config load) */
	long long webhook_timeout_ms;
	long long socket_timeout_ms;
	long long webhook_workers;
	long long webhook_queue_max;
	long long registry_cache_ms;
	long long drain_wait_ms;
	struct brkset_cfg brk_cfg;

	/* set up by init on the main thread, read-only afterwards */
	struct svc *svc;
	struct bus *bus;
	struct reg_cache *reg;
	struct dlv_pool *pool;
	struct brkset *brk;           /* "destination" breakers, one per agent */
	int curl_inited;
	struct metric *m_outcome[DLV_NOUTCOMES];
	struct metric *m_bad;

	/* any thread */
	atomic_ullong outcomes[DLV_NOUTCOMES];
	atomic_ullong bad_requests;
	atomic_llong inflight_socket;
	atomic_llong inflight_webhook;   /* queued + being called */
};

struct dlv_batch;

struct dlv_attempt {
	struct dlv *d;
	struct dlv_batch *batch;  /* answered through it */
	size_t idx;               /* place in the batch */
	const DispatchRequest *req; /* the batch's; req->envelope is set and valid */
	char url[1024];           /* webhook URL, empty for a socket agent */
	int timeout_ms;           /* this attempt's budget */
	uint64_t start_mono;
	struct brk *bk;           /* the destination's breaker, once the call may go */
	struct dlv_attempt *next; /* pool queue link */
};

/* dlv_on_dispatch - bus handler for <P>.delivery.dispatch; msg borrowed */
void dlv_on_dispatch(void *arg, natsMsg *msg);
/* dlv_finish - record the attempt's result in its batch (the last one
 * answers the batch), count it and free a (takes ownership of a); any thread */
void dlv_finish(struct dlv_attempt *a, int outcome, const char *detail, unsigned http_status);
/* dlv_outcome_name - "delivered", "offline", ... */
const char *dlv_outcome_name(int outcome);

/* dlv_socket_start - send the n attempts' envelopes (one recipient) to the
 * agent's gateway in one request; takes ownership of each (answered later
 * from the bus's threads) */
void dlv_socket_start(struct dlv_attempt **v, size_t n);

/* dlv_pool_new - start `workers` webhook threads with a queue of at most
 * queue_max attempts; caller frees with dlv_pool_free. NULL on failure. */
struct dlv_pool *dlv_pool_new(struct dlv *d, unsigned workers, size_t queue_max);
/* dlv_pool_submit - queue a webhook attempt; takes ownership of a on CR_OK;
 * CR_ERR_FULL (queue full) or CR_ERR_UNAVAILABLE (stopping): a stays the caller's */
enum cr_err dlv_pool_submit(struct dlv_pool *p, struct dlv_attempt *a);
/* dlv_pool_drain - stop taking attempts, wait up to wait_ms for the queue and
 * the calls in progress, answer what is left RETRY, join the workers */
void dlv_pool_drain(struct dlv_pool *p, uint64_t wait_ms);
/* dlv_pool_free - drain (no wait) and free; NULL ok */
void dlv_pool_free(struct dlv_pool *p);
/* dlv_pool_counts - attempts queued and calls in progress */
void dlv_pool_counts(struct dlv_pool *p, size_t *queued, size_t *busy);

#endif
