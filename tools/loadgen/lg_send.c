/*
 * lg_send.c - the HTTP sender threads of clawrelay-loadgen (scenarios http,
 * fixed and connector; the socket scenario is lg_sock.c).
 *
 * Each scenario runs sc->concurrency threads, each with one keep-alive
 * connection (lg_http.c). A thread takes the next sequence number from the
 * record (an atomic counter), so every number is sent once:
 *   - as fast as possible (rate 0): send at once; the scenario is closed
 *     loop with `concurrency` requests in flight;
 *   - at a fixed rate: sequence number n is due at t0 + n/rate; the thread
 *     sleeps until then and writes that intended time into the payload, so a
 *     late send counts against latency.
 * http requests are signed with the sender's key (DESIGN 5): thread i sends
 * as sender i % senders. connector requests are POSTs to sending connector
 * i % connectors' local API, which forwards each as an `enqueue` frame over
 * its authenticated socket.
 *
 * A thread per request in flight (rather than a few threads multiplexing
 * them) keeps the offered load up when the machine is saturated: the
 * scheduler shares the CPU by thread, and a blocked sender costs nothing.
 *
 * Threads: every function here runs on a sender thread except lg_send_run
 * (the caller's thread, which starts and joins them) and lg_send_cleanup.
 * Threads share only the record (atomics, and slots owned by the thread
 * that took the seq) and the read-only run and scenario; connection i is
 * used by thread i of the running scenario only.
 */
#include <inttypes.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "auth.h"
#include "lg.h"
#include "lg_http.h"
#include "util.h"

#define HTTP_TIMEOUT_MS 30000

/* connections kept across scenarios (one array per kind of destination),
 * so a scenario does not pay for new connections */
static struct lg_http gw_conns[LG_MAX_CONC], conn_conns[LG_MAX_CONC];
static int gw_used[LG_MAX_CONC], conn_used[LG_MAX_CONC];

struct lg_worker {
	const struct lg_run *run;
	const struct lg_scen *sc;
	struct lg_rec *rec;
	int idx;
	pthread_t th;
	int started;
};

/* lg_payload - write the payload of (scenario, seq, t_us) padded to n bytes */
size_t
lg_payload(char *buf, size_t n, int scen, size_t seq, uint64_t t_us)
{
	int k = snprintf(buf, n + 1, "clawbench s=%d q=%zu t=%" PRIu64 ";", scen, seq, t_us);
	size_t len = k < 0 ? 0 : (size_t)k;

	if (len > n)
		len = n;	/* n is checked >= 64 by main; never cuts the header */
	if (len < n)
		memset(buf + len, 'x', n - len);
	buf[n] = '\0';
	return n;
}

/* lg_count - count the answer to seq (status 0: transport failure) */
void
lg_count(struct lg_rec *rec, size_t seq, long status, uint64_t rt_us, const char *detail)
{
	int slot;

	atomic_fetch_add(&rec->sent, 1);
	if (status == 202 || status == 200) {
		atomic_fetch_add(&rec->accepted, 1);
		rec->acc_us[seq] = rt_us == 0 ? 1 : rt_us > UINT32_MAX ? UINT32_MAX : (uint32_t)rt_us;
		return;
	}
	if (status == 0)
		slot = 5;
	else if (status == 429)
		slot = 1;
	else if (status == 503)
		slot = 2;
	else if (status == 507)
		slot = 3;
	else if (status >= 400 && status < 500)
		slot = 0;
	else
		slot = 4;
	atomic_fetch_add(&rec->refused[slot], 1);
	if (atomic_exchange(&rec->have_refusal, 1) == 0) {
		if (status == 0)
			snprintf(rec->first_refusal, sizeof(rec->first_refusal), "transport: %s", detail);
		else
			snprintf(rec->first_refusal, sizeof(rec->first_refusal), "%ld %s", status, detail);
	}
}

/* one signed POST to the gateway; 0 with *status, or -1 (why in *why) */
static int
send_http(const struct lg_run *run, struct lg_http *c, const struct lg_sender *snd,
    const char *rcpt, const char *payload, size_t len, const char *nonce, long *status,
    char *snip, size_t snipsz, const char **why)
{
	char path[200], url_path[480], ts[24], sha[AUTH_SHA256_B64_SIZE], sig[AUTH_SIG_B64_SIZE];
	char hdrs[800];

	snprintf(path, sizeof(path), "/v1/agents/%s/messages", rcpt);
	snprintf(url_path, sizeof(url_path), "%s%s", run->gw.base, path);
	snprintf(ts, sizeof(ts), "%" PRIu64, now_ms() / 1000);
	struct auth_proof_input in = {
		.method = "POST", .path = path, .query = NULL, .agent = snd->id,
		.timestamp = ts, .nonce = nonce, .body_sha256 = sha,
	};
	if (auth_sha256_b64url(payload, len, sha) != CR_OK ||
	    auth_sign_request(snd->key, &in, sig) != CR_OK) {
		*why = "signing failed";
		return -1;
	}
	snprintf(hdrs, sizeof(hdrs), "X-Claw-Agent: %s\r\nX-Claw-Timestamp: %s\r\n"
	    "X-Claw-Nonce: %s\r\nX-Claw-Body-SHA256: %s\r\nX-Claw-Proof: %s\r\n"
	    "Content-Type: text/plain\r\n", snd->id, ts, nonce, sha, sig);
	if (lg_http_post(c, url_path, hdrs, payload, len, HTTP_TIMEOUT_MS, status, snip,
	    snipsz) != 0) {
		*why = c->why;
		return -1;
	}
	return 0;
}

/* one POST to a sending connector's local API */
static int
send_connector(const struct lg_dest *d, struct lg_http *c, const char *rcpt,
    const char *payload, size_t len, long *status, char *snip, size_t snipsz,
    const char **why)
{
	char path[480];

	snprintf(path, sizeof(path), "%s/v1/outbound/%s", d->base, rcpt);
	if (lg_http_post(c, path, "Content-Type: text/plain\r\n", payload, len, HTTP_TIMEOUT_MS,
	    status, snip, snipsz) != 0) {
		*why = c->why;
		return -1;
	}
	return 0;
}

static void *
worker_main(void *arg)
{
	struct lg_worker *w = arg;
	const struct lg_run *run = w->run;
	const struct lg_scen *sc = w->sc;
	struct lg_rec *rec = w->rec;
	const struct lg_sender *snd = run->nsenders ? &run->senders[w->idx % run->nsenders] : NULL;
	const struct lg_dest *dest = run->nconn ? &run->conns[w->idx % run->nconn] : NULL;
	struct lg_http *c;
	char nonce[96], snip[200];
	char *payload = malloc(run->payload_bytes + 1);

	if (sc->kind == LG_KIND_CONNECTOR) {
		c = &conn_conns[w->idx];
		if (!conn_used[w->idx]) {
			lg_http_init(c, dest->host, dest->port);
			conn_used[w->idx] = 1;
		}
	} else {
		c = &gw_conns[w->idx];
		if (!gw_used[w->idx]) {
			lg_http_init(c, run->gw.host, run->gw.port);
			gw_used[w->idx] = 1;
		}
	}
	if (payload == NULL)
		goto out;

	for (;;) {
		size_t seq = atomic_fetch_add(&rec->next_seq, 1);
		const char *why = NULL;
		uint64_t t;
		long status = 0;
		int rc;

		if (seq >= rec->cap)
			break;
		if (sc->rate > 0) {
			t = rec->t0_us + (uint64_t)((double)seq * 1e6 / sc->rate);
			if (t >= rec->t_end_us)
				break;
			lg_sleep_until_us(t);
		} else {
			t = lg_mono_us();
			if (t >= rec->t_end_us)
				break;
		}
		rec->send_ms[seq] = t > rec->t0_us ? (uint32_t)((t - rec->t0_us) / 1000) : 0;
		const char *rcpt = run->recipients[seq % (size_t)run->nrecipients];
		size_t len = lg_payload(payload, run->payload_bytes, rec->id, seq, t);
		uint64_t start = lg_mono_us();

		snip[0] = '\0';
		if (sc->kind == LG_KIND_CONNECTOR) {
			rc = send_connector(dest, c, rcpt, payload, len, &status, snip, sizeof(snip),
			    &why);
		} else {
			snprintf(nonce, sizeof(nonce), "lg%s-%d-%zu", run->run_tag, rec->id, seq);
			rc = send_http(run, c, snd, rcpt, payload, len, nonce, &status, snip,
			    sizeof(snip), &why);
		}
		uint64_t end = lg_mono_us();
		if (rc != 0)
			lg_count(rec, seq, 0, end - start, why);
		else
			lg_count(rec, seq, status ? status : 999, end - start, snip);
		uint64_t last = atomic_load(&rec->t_last_send_us);
		while (end > last && !atomic_compare_exchange_weak(&rec->t_last_send_us, &last, end))
			;
		if (!(rc == 0 && (status == 202 || status == 200)) && sc->rate <= 0) {
			/* do not spin on a refusing stack; a real client backs off too */
			struct timespec ts = { 0, 1000000L };
			nanosleep(&ts, NULL);
		}
	}
out:
	free(payload);
	lg_thread_cpu_done(rec);
	return NULL;
}

/* lg_send_run - run scenario sc against rec with its sender threads */
int
lg_send_run(const struct lg_run *run, const struct lg_scen *sc, struct lg_rec *rec)
{
	int n = sc->concurrency, rc = 0;
	struct lg_worker *w;

	if (sc->kind == LG_KIND_SOCKET)
		return lg_sock_run(run, sc, rec);
	if (n > LG_MAX_CONC)
		n = LG_MAX_CONC;
	if ((w = calloc((size_t)n, sizeof(*w))) == NULL)
		return -1;
	for (int i = 0; i < n; i++) {
		w[i].run = run;
		w[i].sc = sc;
		w[i].rec = rec;
		w[i].idx = i;
		if (pthread_create(&w[i].th, NULL, worker_main, &w[i]) != 0) {
			fprintf(stderr, "loadgen: cannot start sender thread %d\n", i);
			rc = -1;
			break;
		}
		w[i].started = 1;
	}
	for (int i = 0; i < n; i++)
		if (w[i].started)
			pthread_join(w[i].th, NULL);
	free(w);
	return rc;
}

/* lg_send_cleanup - close every kept connection */
void
lg_send_cleanup(void)
{
	for (int i = 0; i < LG_MAX_CONC; i++) {
		if (gw_used[i])
			lg_http_close(&gw_conns[i]);
		if (conn_used[i])
			lg_http_close(&conn_conns[i]);
		gw_used[i] = conn_used[i] = 0;
	}
}
