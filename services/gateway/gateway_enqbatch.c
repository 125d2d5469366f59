/*
 * gateway_enqbatch.c - signed POSTs reach relay-session in batches.
 *
 * Each POST is handled on its own civetweb worker thread, which used to make
 * one enqueue request of its own. Here the workers of one partition share a
 * queue: when no enqueue_batch request of that partition is out, a POST's
 * envelope leaves at once as a batch of one; while one is out, POSTs wait
 * in the queue and leave together when it is answered (Nagle's rule, as for
 * a socket's enqueue frames in gateway_ws.c). relay-session handles each
 * envelope exactly as a single enqueue (a 202 still means on disk) and
 * answers all of them in one EnqueueBatchReply. A waiting worker sleeps on
 * its own condition variable until its answer is in; the request's own
 * timeout (CLAWRELAY_SESSION_TIMEOUT_MS, failed by the reqpool tick)
 * guarantees that every batch is answered.
 *
 * Threads: gw_enq_http on civetweb workers; answers on the pool's inbox
 * thread (or the tick for timeouts), which also sends the next batch.
 * hp->mu guards a partition's queue and `busy`; a waiter's fields are
 * written by the answering thread before `done` is set under hp->mu, and
 * the waiter (on its worker's stack) is not touched after that.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "gateway.h"
#include "log.h"

struct gw_hwait {
	struct gw_bq_item q;          /* first: the queue links waiters by it */
	pthread_cond_t cv;
	int done;
	const Envelope *e;
	struct gw_enq_result *out;
};

struct gw_hpart {
	pthread_mutex_t mu;
	struct gw_bq q;
};

struct gw_hbatch {
	struct gw *g;
	uint32_t part;
	size_t n;
	struct gw_hwait *w[];
};

static size_t
varint_put(unsigned char *p, uint64_t v)
{
	size_t n = 0;

	do {
		p[n++] = (unsigned char)((v & 0x7f) | (v > 0x7f ? 0x80 : 0));
		v >>= 7;
	} while (v != 0);
	return n;
}

/* gw_enq_batch_pack - an EnqueueBatch around n packed envelopes, written by
 * hand (field 1 schema_version, one field 2 per envelope: no second pack);
 * malloc'd, *len its size; NULL when out of memory */
unsigned char *
gw_enq_batch_pack(const void *const *wires, const size_t *lens, size_t n, size_t *len)
{
	size_t bytes = 2;
	unsigned char *buf, *p;

	for (size_t i = 0; i < n; i++)
		bytes += 1 + 10 + lens[i];
	if ((buf = malloc(bytes)) == NULL)
		return NULL;
	p = buf;
	*p++ = 0x08;
	*p++ = ENV_SCHEMA;
	for (size_t i = 0; i < n; i++) {
		*p++ = 0x12;
		p += varint_put(p, lens[i]);
		memcpy(p, wires[i], lens[i]);
		p += lens[i];
	}
	*len = (size_t)(p - buf);
	return buf;
}

/* gw_enqbatch_init - the partitions' queues; 0 or -1 */
int
gw_enqbatch_init(struct gw *g)
{
	g->hparts = calloc(g->partitions, sizeof(*g->hparts));
	if (g->hparts == NULL)
		return -1;
	for (uint32_t i = 0; i < g->partitions; i++)
		pthread_mutex_init(&g->hparts[i].mu, NULL);
	return 0;
}

/* gw_enqbatch_fini - free the queues (no POST is in flight any more) */
void
gw_enqbatch_fini(struct gw *g)
{
	if (g->hparts == NULL)
		return;
	for (uint32_t i = 0; i < g->partitions; i++)
		pthread_mutex_destroy(&g->hparts[i].mu);
	free(g->hparts);
	g->hparts = NULL;
}

/* gw_bq_enter - queue it, or take the idle queue for a batch of one */
int
gw_bq_enter(struct gw_bq *q, struct gw_bq_item *it)
{
	it->next = NULL;
	if (!q->busy) {
		q->busy = 1;
		return 0;
	}
	if (q->tail)
		q->tail->next = it;
	else
		q->head = it;
	q->tail = it;
	return 1;
}

/* gw_bq_take - the next batch of q, or NULL (and q is idle) */
struct gw_bq_item *
gw_bq_take(struct gw_bq *q)
{
	struct gw_bq_item *head = q->head, *it = head;
	size_t n = 1, bytes;

	if (head == NULL) {
		q->busy = 0;
		return NULL;
	}
	bytes = head->wlen;
	while (it->next != NULL && n < GW_BQ_MAX && bytes + it->next->wlen <= GW_BQ_BYTES) {
		it = it->next;
		bytes += it->wlen;
		n++;
	}
	q->head = it->next;
	if (q->head == NULL)
		q->tail = NULL;
	it->next = NULL;
	return head;
}

static void send_batch(struct gw *g, uint32_t part, struct gw_bq_item *list);

/* the answer of a batch (pool inbox thread, or the tick on a timeout) */
static void
on_reply(void *arg, enum cr_err err, natsMsg *reply, int more)
{
	struct gw_hbatch *b = arg;
	struct gw_hpart *hp = &b->g->hparts[b->part];
	ProtobufCMessage *m = NULL;
	const EnqueueBatchReply *br = NULL;
	struct gw_bq_item *next;

	(void)more;
	gw_part_report(b->g, b->part, err, reply);
	if (err == CR_OK && reply != NULL &&
	    env_unpack_msg(&clawrelay__v1__enqueue_batch_reply__descriptor,
	    natsMsg_GetData(reply), (size_t)natsMsg_GetDataLength(reply), &m) == CR_OK)
		br = (const EnqueueBatchReply *)m;
	for (size_t i = 0; i < b->n; i++) {
		struct gw_hwait *w = b->w[i];

		if (br != NULL && i < br->n_replies && br->replies[i] != NULL)
			gw_enq_map_reply(br->replies[i], w->e, w->out);
		else if (err == CR_OK && reply != NULL)
			gw_enq_map(CR_ERR_INVALID, NULL, w->e, w->out);	/* no answer for it */
		else
			gw_enq_map(err, reply, w->e, w->out);
	}
	protobuf_c_message_free_unpacked(m, NULL);
	pthread_mutex_lock(&hp->mu);
	for (size_t i = 0; i < b->n; i++) {
		b->w[i]->done = 1;
		pthread_cond_signal(&b->w[i]->cv);
	}
	next = gw_bq_take(&hp->q);
	pthread_mutex_unlock(&hp->mu);
	if (next != NULL)
		send_batch(b->g, b->part, next);
	free(b);
}

/* send the waiters of list (one partition, in order) as one request */
static void
send_batch(struct gw *g, uint32_t part, struct gw_bq_item *list)
{
	const void *wires[GW_BQ_MAX];
	size_t lens[GW_BQ_MAX], n = 0, len = 0;
	struct gw_hbatch *b;
	struct gw_bq_item *it;
	unsigned char *buf = NULL;
	char subj[256];

	for (it = list; it != NULL; it = it->next)
		n++;
	if ((b = malloc(sizeof(*b) + n * sizeof(b->w[0]))) == NULL) {
		/* answer them unavailable by hand, then try the next ones */
		struct gw_hpart *hp = &g->hparts[part];
		struct gw_bq_item *next;

		log_error(NULL, "enqueue batch of %zu POSTs: out of memory", n);
		for (it = list; it != NULL; it = it->next)
			gw_enq_map(CR_ERR_UNAVAILABLE, NULL, ((struct gw_hwait *)it)->e,
			    ((struct gw_hwait *)it)->out);
		pthread_mutex_lock(&hp->mu);
		for (it = list; it != NULL; it = next) {
			next = it->next;
			((struct gw_hwait *)it)->done = 1;
			pthread_cond_signal(&((struct gw_hwait *)it)->cv);
		}
		next = gw_bq_take(&hp->q);
		pthread_mutex_unlock(&hp->mu);
		if (next != NULL)
			send_batch(g, part, next);
		return;
	}
	b->g = g;
	b->part = part;
	b->n = n;
	n = 0;
	for (it = list; it != NULL; it = it->next) {
		b->w[n] = (struct gw_hwait *)it;
		wires[n] = it->wire;
		lens[n] = it->wlen;
		n++;
	}
	if (gw_enq_subject(g, part, subj, sizeof(subj)) < 0 ||
	    (buf = gw_enq_batch_pack(wires, lens, n, &len)) == NULL ||
	    gw_request_async(g, subj, buf, len, (int)g->cfg.session_timeout_ms, on_reply,
	    b) != CR_OK)
		on_reply(b, CR_ERR_UNAVAILABLE, NULL, 0);
	free(buf);
}

/* gw_enq_http - enqueue one POST's packed envelope e (wire) for its
 * recipient's partition and wait for the answer in *out */
void
gw_enq_http(struct gw *g, const char *recipient, const void *wire, size_t wlen,
    const Envelope *e, struct gw_enq_result *out)
{
	uint32_t part = partition_of(recipient, g->partitions);
	struct gw_hpart *hp = &g->hparts[part];
	struct gw_hwait w;
	int send_now;

	memset(&w, 0, sizeof(w));
	pthread_cond_init(&w.cv, NULL);
	w.q.wire = wire;
	w.q.wlen = wlen;
	w.e = e;
	w.out = out;
	pthread_mutex_lock(&hp->mu);
	send_now = !gw_bq_enter(&hp->q, &w.q);
	pthread_mutex_unlock(&hp->mu);
	if (send_now)
		send_batch(g, part, &w.q);
	pthread_mutex_lock(&hp->mu);
	while (!w.done)
		pthread_cond_wait(&w.cv, &hp->mu);
	pthread_mutex_unlock(&hp->mu);
	pthread_cond_destroy(&w.cv);
}
