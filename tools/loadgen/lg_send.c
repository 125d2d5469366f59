/*
 * lg_send.c - the sender threads of clawrelay-loadgen.
 *
 * Each scenario runs sc->concurrency threads, each with one libcurl easy
 * handle (one keep-alive connection). A thread takes the next sequence
 * number from the record (an atomic counter), so every number is sent once:
 *   - as fast as possible (rate 0): send at once; the scenario is closed
 *     loop with `concurrency` requests in flight;
 *   - at a fixed rate: sequence number n is due at t0 + n/rate; the thread
 *     sleeps until then and writes that intended time into the payload, so a
 *     late send counts against latency.
 * HTTP requests are signed with the sender's key (DESIGN 5); connector requests
 * are POSTs to a sending connector's local API, which forwards them as
 * `enqueue` frames over its authenticated socket.
 *
 * Threads: every function here runs on a sender thread except lg_send_run
 * (the caller's thread, which starts and joins them). Threads share only the
 * record (atomics, and slots owned by the thread that took the seq) and the
 * read-only run and scenario.
 */
#include <inttypes.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <curl/curl.h>

#include "auth.h"
#include "lg.h"
#include "util.h"

/* one easy handle (one keep-alive connection) per worker slot, kept across
 * scenarios so a scenario does not pay for new connections; slot i is used
 * only by worker i of the running scenario, and scenarios run one at a time */
static CURL *handles[LG_MAX_CONC];

struct lg_worker {
	const struct lg_run *run;
	const struct lg_scen *sc;
	struct lg_rec *rec;
	int idx;
	pthread_t th;
	int started;
};

/* the first bytes of an answer, kept for the first refusal's report */
struct lg_body {
	char buf[200];
	size_t len;
};

static size_t
keep_body(char *ptr, size_t size, size_t n, void *ud)
{
	struct lg_body *b = ud;
	size_t len = size * n, room = sizeof(b->buf) - 1 - b->len;

	if (len < room)
		room = len;
	memcpy(b->buf + b->len, ptr, room);
	b->len += room;
	b->buf[b->len] = '\0';
	return size * n;
}

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

static void
count_answer(struct lg_rec *rec, size_t seq, long status, CURLcode rc, uint64_t rt_us,
    const struct lg_body *body)
{
	if (rc != CURLE_OK)
		lg_count(rec, seq, 0, rt_us, curl_easy_strerror(rc));
	else
		lg_count(rec, seq, status ? status : 999, rt_us, body->buf);
}

/* one signed POST to the gateway; returns the curl result, status in *status */
static CURLcode
send_http(const struct lg_run *run, CURL *h, const struct lg_sender *snd, const char *rcpt,
    const char *payload, size_t len, const char *nonce, long *status)
{
	char path[200], url[512], ts[24], sha[AUTH_SHA256_B64_SIZE], sig[AUTH_SIG_B64_SIZE];
	char h_agent[200], h_ts[48], h_nonce[160], h_sha[80], h_sig[128];
	struct curl_slist *hl = NULL, *n;
	CURLcode rc = CURLE_OUT_OF_MEMORY;

	snprintf(path, sizeof(path), "/v1/agents/%s/messages", rcpt);
	snprintf(url, sizeof(url), "%s%s", run->gateway, path);
	snprintf(ts, sizeof(ts), "%" PRIu64, now_ms() / 1000);
	if (auth_sha256_b64url(payload, len, sha) != CR_OK)
		return CURLE_ABORTED_BY_CALLBACK;
	struct auth_proof_input in = {
		.method = "POST", .path = path, .query = NULL, .agent = snd->id,
		.timestamp = ts, .nonce = nonce, .body_sha256 = sha,
	};
	if (auth_sign_request(snd->key, &in, sig) != CR_OK)
		return CURLE_ABORTED_BY_CALLBACK;
	snprintf(h_agent, sizeof(h_agent), "X-Claw-Agent: %s", snd->id);
	snprintf(h_ts, sizeof(h_ts), "X-Claw-Timestamp: %s", ts);
	snprintf(h_nonce, sizeof(h_nonce), "X-Claw-Nonce: %s", nonce);
	snprintf(h_sha, sizeof(h_sha), "X-Claw-Body-SHA256: %s", sha);
	snprintf(h_sig, sizeof(h_sig), "X-Claw-Proof: %s", sig);
	const char *hdrs[] = { h_agent, h_ts, h_nonce, h_sha, h_sig,
		"Content-Type: text/plain", "Expect:", NULL };
	for (int i = 0; hdrs[i]; i++) {
		if ((n = curl_slist_append(hl, hdrs[i])) == NULL)
			goto out;
		hl = n;
	}
	curl_easy_setopt(h, CURLOPT_URL, url);
	curl_easy_setopt(h, CURLOPT_HTTPHEADER, hl);
	curl_easy_setopt(h, CURLOPT_POSTFIELDS, payload);
	curl_easy_setopt(h, CURLOPT_POSTFIELDSIZE, (long)len);
	rc = curl_easy_perform(h);
	if (rc == CURLE_OK)
		curl_easy_getinfo(h, CURLINFO_RESPONSE_CODE, status);
	curl_easy_setopt(h, CURLOPT_HTTPHEADER, NULL);
out:
	curl_slist_free_all(hl);
	return rc;
}

/* one POST to a sending connector's local API */
static CURLcode
send_connector(const char *base, CURL *h, struct curl_slist *hl, const char *rcpt,
    const char *payload, size_t len, long *status)
{
	char url[512];
	CURLcode rc;

	snprintf(url, sizeof(url), "%s/v1/outbound/%s", base, rcpt);
	curl_easy_setopt(h, CURLOPT_URL, url);
	curl_easy_setopt(h, CURLOPT_HTTPHEADER, hl);
	curl_easy_setopt(h, CURLOPT_POSTFIELDS, payload);
	curl_easy_setopt(h, CURLOPT_POSTFIELDSIZE, (long)len);
	rc = curl_easy_perform(h);
	if (rc == CURLE_OK)
		curl_easy_getinfo(h, CURLINFO_RESPONSE_CODE, status);
	return rc;
}

static void *
worker_main(void *arg)
{
	struct lg_worker *w = arg;
	const struct lg_run *run = w->run;
	const struct lg_scen *sc = w->sc;
	struct lg_rec *rec = w->rec;
	const struct lg_sender *snd = run->nsenders ? &run->senders[w->idx % run->nsenders] : NULL;
	const char *conn = run->nconn ? run->conn_urls[w->idx % run->nconn] : NULL;
	struct curl_slist *conn_hl = NULL;
	struct lg_body body;
	char nonce[96];
	char *payload = malloc(run->payload_bytes + 1);
	CURL *h = handles[w->idx];

	if (h == NULL)
		h = handles[w->idx] = curl_easy_init();
	if (payload == NULL || h == NULL)
		goto out;
	conn_hl = curl_slist_append(NULL, "Content-Type: text/plain");
	if (conn_hl == NULL || curl_slist_append(conn_hl, "Expect:") == NULL)
		goto out;
	curl_easy_setopt(h, CURLOPT_NOSIGNAL, 1L);
	curl_easy_setopt(h, CURLOPT_TCP_NODELAY, 1L);
	curl_easy_setopt(h, CURLOPT_TIMEOUT_MS, 30000L);
	curl_easy_setopt(h, CURLOPT_CONNECTTIMEOUT_MS, 5000L);
	curl_easy_setopt(h, CURLOPT_WRITEFUNCTION, keep_body);
	curl_easy_setopt(h, CURLOPT_WRITEDATA, &body);
	curl_easy_setopt(h, CURLOPT_POST, 1L);

	for (;;) {
		size_t seq = atomic_fetch_add(&rec->next_seq, 1);
		uint64_t t;
		long status = 0;
		CURLcode rc;

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

		body.len = 0;
		body.buf[0] = '\0';
		if (sc->kind == LG_KIND_HTTP) {
			snprintf(nonce, sizeof(nonce), "lg%s-%d-%zu", run->run_tag, rec->id, seq);
			rc = send_http(run, h, snd, rcpt, payload, len, nonce, &status);
		} else {
			rc = send_connector(conn, h, conn_hl, rcpt, payload, len, &status);
		}
		uint64_t end = lg_mono_us();
		count_answer(rec, seq, status, rc, end - start, &body);
		uint64_t last = atomic_load(&rec->t_last_send_us);
		while (end > last && !atomic_compare_exchange_weak(&rec->t_last_send_us, &last, end))
			;
		if (!(rc == CURLE_OK && (status == 202 || status == 200)) && sc->rate <= 0) {
			/* do not spin on a refusing stack; a real client backs off too */
			struct timespec ts = { 0, 1000000L };
			nanosleep(&ts, NULL);
		}
	}
out:
	curl_slist_free_all(conn_hl);
	free(payload);
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
		if (handles[i])
			curl_easy_cleanup(handles[i]);
		handles[i] = NULL;
	}
}
