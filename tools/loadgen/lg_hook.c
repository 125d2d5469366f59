/*
 * lg_hook.c - the hook server embedded in clawrelay-loadgen.
 *
 * The receiving connectors' CLAWRELAY_HOOK_URL points here
 * (http://127.0.0.1:<port>/hook/<agent>). Each POST is one delivered
 * message: the handler reads the payload's header (scenario, sequence number,
 * send time), records the arrival in the current scenario's record and
 * answers 200 in one write, keeping the connection alive. Anything it cannot
 * parse, or that belongs to no current scenario, is counted as stray and
 * still answered 200, so a connector never retries because of the bench.
 *
 * Threads: civetweb's workers run the handler. The current record is
 * guarded by cur_lock: handlers hold it for reading while they record, and
 * lg_hook_set takes it for writing, so after lg_hook_set(NULL) returns no
 * handler touches the old record and main may free it. Counters are atomics.
 */
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <civetweb.h>

#include "lg.h"

static struct mg_context *hook_ctx;
static pthread_rwlock_t cur_lock = PTHREAD_RWLOCK_INITIALIZER;
static struct lg_rec *cur;
static atomic_size_t stray, calls;

static const char ok_answer[] =
    "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 0\r\n\r\n";

/* parse "clawbench s=<n> q=<n> t=<n>;" at the start of buf */
static int
parse_payload(const char *buf, int *scen, size_t *seq, uint64_t *t)
{
	unsigned long long q, tt;
	int s;

	if (sscanf(buf, "clawbench s=%d q=%llu t=%llu;", &s, &q, &tt) != 3)
		return -1;
	*scen = s;
	*seq = (size_t)q;
	*t = (uint64_t)tt;
	return 0;
}

static void
record(int scen, size_t seq, uint64_t t, uint64_t arrival)
{
	struct lg_rec *rec;

	pthread_rwlock_rdlock(&cur_lock);
	rec = cur;
	if (rec == NULL || rec->id != scen || seq >= rec->cap) {
		atomic_fetch_add(&stray, 1);
		goto out;
	}
	uint64_t bit = 1ull << (seq & 63);
	if (atomic_fetch_or(&rec->seen[seq >> 6], bit) & bit) {
		atomic_fetch_add(&rec->dups, 1);
		goto out;
	}
	uint64_t lat = arrival > t ? arrival - t : 0;
	size_t i = atomic_fetch_add(&rec->delivered, 1);
	rec->lat_us[i] = lat > UINT32_MAX ? UINT32_MAX : (uint32_t)lat;
	rec->e2e_by_seq[seq] = lat >= UINT32_MAX ? UINT32_MAX : (uint32_t)lat + 1;
	if (arrival < rec->t_end_us)
		atomic_fetch_add(&rec->delivered_in_window, 1);
	uint64_t last = atomic_load(&rec->t_last_deliver_us);
	while (arrival > last && !atomic_compare_exchange_weak(&rec->t_last_deliver_us, &last, arrival))
		;
out:
	pthread_rwlock_unlock(&cur_lock);
}

static int
hook_handler(struct mg_connection *c, void *arg)
{
	char head[128], sink[4096];
	size_t have = 0;
	int n, scen;
	size_t seq;
	uint64_t t, arrival = lg_mono_us();

	atomic_fetch_add(&calls, 1);
	/* the header is in the first bytes; read (and drop) the rest so the
	 * keep-alive connection stays in step */
	while (have < sizeof(head) - 1 &&
	    (n = mg_read(c, head + have, sizeof(head) - 1 - have)) > 0)
		have += (size_t)n;
	head[have] = '\0';
	while (mg_read(c, sink, sizeof(sink)) > 0)
		;
	if (parse_payload(head, &scen, &seq, &t) == 0)
		record(scen, seq, t, arrival);
	else
		atomic_fetch_add(&stray, 1);
	mg_write(c, ok_answer, sizeof(ok_answer) - 1);
	return 200;
}

static int
hook_health(struct mg_connection *c, void *arg)
{
	static const char a[] =
	    "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 3\r\n\r\nok\n";
	mg_write(c, a, sizeof(a) - 1);
	return 200;
}

/* lg_hook_start - start the hook server on 127.0.0.1:port */
int
lg_hook_start(int port)
{
	char listen[64];
	struct mg_callbacks cb;

	snprintf(listen, sizeof(listen), "127.0.0.1:%d", port);
	const char *opts[] = {
		"listening_ports", listen,
		"num_threads", "128",
		"enable_keep_alive", "yes",
		"keep_alive_timeout_ms", "120000",
		"request_timeout_ms", "30000",
		"tcp_nodelay", "1",
		NULL
	};
	memset(&cb, 0, sizeof(cb));
	mg_init_library(0);
	hook_ctx = mg_start(&cb, NULL, opts);
	if (hook_ctx == NULL) {
		mg_exit_library();
		return -1;
	}
	mg_set_request_handler(hook_ctx, "/hook", hook_handler, NULL);
	mg_set_request_handler(hook_ctx, "/healthz", hook_health, NULL);
	return 0;
}

/* lg_hook_stop - stop the hook server */
void
lg_hook_stop(void)
{
	if (hook_ctx == NULL)
		return;
	mg_stop(hook_ctx);
	hook_ctx = NULL;
	mg_exit_library();
}

/* lg_hook_set - direct deliveries to rec (borrowed until lg_hook_set(NULL)) */
void
lg_hook_set(struct lg_rec *rec)
{
	pthread_rwlock_wrlock(&cur_lock);
	cur = rec;
	pthread_rwlock_unlock(&cur_lock);
}

/* lg_hook_stray - deliveries that named no current scenario */
size_t
lg_hook_stray(void)
{
	return atomic_load(&stray);
}

/* lg_hook_calls - every hook request so far */
size_t
lg_hook_calls(void)
{
	return atomic_load(&calls);
}
