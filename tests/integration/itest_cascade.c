/*
 * itest_cascade.c - the seed's cascade, replayed. bob's hook takes 30 s per
 * call. bob's connector gives up on each call after 1 s, its hook breaker
 * opens, its inbox (20) fills and it NACKs; delivery's breaker for bob
 * opens and relay-session holds bob; the pair's limits engage (queue cap
 * 100, rate 600/min with a burst of 150). Meanwhile:
 *   - every POST for bob is answered promptly (well under a second) with
 *     202, or 429 / 503 / 507 and Retry-After, never a hang until a timeout;
 *   - messages from alice to carol keep arriving at carol's hook with their
 *     usual latency;
 * and when bob's hook recovers, every message accepted for bob reaches it
 * exactly once.
 */
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <nats/nats.h>

#include "it_common.h"
#include "util.h"

#define NBOB 300
#define CAROL_EVERY 6
#define PROMPT_MS 1000   /* "promptly": far below any timeout */
#define CAROL_MS 2000    /* carol's end-to-end latency bound */

static struct h_stack st;

static void
setup(void)
{
	static const char *const env[] = { "CLAWRELAY_BREAKER_OPEN_MAX_MS=2000", NULL };

	h_stack_init(&st, "cascade");
	h_nats_start(&st);
	h_start_services(&st, env);
	h_agent(&st, "alice", NULL);
	h_agent(&st, "bob", NULL);
	h_agent(&st, "carol", NULL);
	h_trust(&st, "alice", "carol");
	const char *args[] = { "trust", "add", "alice", "bob", "--queue-max", "100",
		"--rate-per-min", "600", "--burst", "150", NULL };
	ck_assert_int_eq(h_cli(&st, NULL, args), 0);
}

static void
teardown(void)
{
	h_stop_all(&st);
}

static long
post(const char *to, const char *body, struct h_resp *r)
{
	ck_assert_int_eq(h_send(&st, "alice", to, body, strlen(body), NULL, r), 0);
	return r->status;
}

/* the time (ms) a hook line for body was written, from the hook's file; 0 if none */
static uint64_t
hook_time(cJSON **v, int n, const char *body)
{
	for (int i = 0; i < n; i++) {
		const cJSON *b = cJSON_GetObjectItem(v[i], "body");
		if (cJSON_IsString(b) && strcmp(b->valuestring, body) == 0)
			return (uint64_t)cJSON_GetObjectItem(v[i], "ts_ms")->valuedouble;
	}
	return 0;
}

START_TEST(slow_hook_does_not_cascade)
{
	static const char *const slow[] = { "--delay-ms", "30000", NULL };
	static const char *const conn_env[] = { "CLAWRELAY_INBOX_MAX=20",
		"CLAWRELAY_HOOK_TIMEOUT_MS=1000", "CLAWRELAY_BREAKER_CONSECUTIVE=2",
		"CLAWRELAY_BREAKER_OPEN_MAX_MS=2000", NULL };
	char bob_slow[400], bob_fast[400], carol_hook[400], url[128], body[64];
	static int accepted[NBOB];
	static uint64_t carol_sent[NBOB];
	int n202 = 0, n429 = 0, n503 = 0, n507 = 0, ncarol = 0;
	uint64_t worst = 0;

	int bport = it_hook(&st, "bob-slow", bob_slow, sizeof(bob_slow), slow);
	snprintf(url, sizeof(url), "http://127.0.0.1:%d/hook", bport);
	it_connector_env(&st, "bob", url, conn_env);
	int cport = it_hook(&st, "carol-hook", carol_hook, sizeof(carol_hook), NULL);
	snprintf(url, sizeof(url), "http://127.0.0.1:%d/hook", cport);
	it_connector(&st, "carol", url);

	natsConnection *nc = NULL;
	natsSubscription *sub = NULL;
	ck_assert_int_eq(natsConnection_ConnectTo(&nc, st.nats_url), NATS_OK);
	ck_assert_int_eq(natsConnection_SubscribeSync(&sub, nc, "clawrelay.breaker.>"), NATS_OK);
	ck_assert_int_eq(natsConnection_Flush(nc), NATS_OK);

	for (int i = 0; i < NBOB; i++) {
		struct h_resp r;
		uint64_t t0 = mono_ms(), took;
		long s;

		snprintf(body, sizeof(body), "bob-%d", i);
		s = post("bob", body, &r);
		took = mono_ms() - t0;
		if (took > worst)
			worst = took;
		ck_assert_msg(took < PROMPT_MS, "POST %d for bob took %llu ms (status %ld)", i,
		    (unsigned long long)took, s);
		switch (s) {
		case 202:
			accepted[i] = 1;
			n202++;
			break;
		case 429:
		case 503:
		case 507:
			ck_assert_msg(h_header(&r, "Retry-After") != NULL, "%ld without Retry-After", s);
			n429 += s == 429;
			n503 += s == 503;
			n507 += s == 507;
			break;
		default:
			ck_abort_msg("POST %d for bob answered %ld: %s", i, s, r.body.data);
		}
		h_resp_free(&r);
		if (i % CAROL_EVERY == 0) {
			snprintf(body, sizeof(body), "carol-%d", i);
			carol_sent[ncarol] = now_ms();
			ck_assert_int_eq(post("carol", body, &r), 202);
			h_resp_free(&r);
			ncarol++;
		}
		h_sleep_ms(20);	/* ~6 s of traffic: the breakers have time to act */
	}
	fprintf(stderr, "cascade: bob 202=%d 429=%d 503=%d 507=%d, slowest answer %llu ms\n",
	    n202, n429, n503, n507, (unsigned long long)worst);
	ck_assert_int_gt(n202, 0);
	ck_assert_msg(n429 + n507 > 0, "the pair's limits never engaged");

	/* carol: everything arrived, each within CAROL_MS of its POST */
	ck_assert_int_eq(h_wait_lines(carol_hook, ncarol, 10000), ncarol);
	int n;
	cJSON **v = it_lines(carol_hook, &n);
	ck_assert_int_eq(n, ncarol);
	for (int k = 0, i = 0; i < NBOB; i += CAROL_EVERY, k++) {
		snprintf(body, sizeof(body), "carol-%d", i);
		uint64_t at = hook_time(v, n, body);
		ck_assert_msg(at != 0, "%s never arrived", body);
		ck_assert_msg(at - carol_sent[k] < CAROL_MS, "%s took %llu ms", body,
		    (unsigned long long)(at - carol_sent[k]));
	}
	it_lines_free(v, n);

	/* the breakers acted: bob's destination breaker at delivery opened, and
	 * so did his connector's hook breaker (published for it by the gateway) */
	int seen_dest = 0, seen_hook = 0;
	for (;;) {
		natsMsg *m = NULL;
		if (natsSubscription_NextMsg(&m, sub, 100) != NATS_OK)
			break;
		cJSON *ev = cJSON_ParseWithLength(natsMsg_GetData(m), (size_t)natsMsg_GetDataLength(m));
		const cJSON *agent = ev ? cJSON_GetObjectItem(ev, "agent") : NULL;
		if (ev != NULL && strcmp(cJSON_GetObjectItem(ev, "state")->valuestring, "open") == 0) {
			const char *svc = cJSON_GetObjectItem(ev, "service")->valuestring;
			const char *bnd = cJSON_GetObjectItem(ev, "boundary")->valuestring;
			const char *name = cJSON_GetObjectItem(ev, "name")->valuestring;
			seen_dest |= strcmp(svc, "delivery") == 0 && strcmp(bnd, "destination") == 0 &&
			    strcmp(name, "bob") == 0;
			seen_hook |= strcmp(svc, "connector") == 0 && strcmp(bnd, "hook") == 0 &&
			    cJSON_IsString(agent) && strcmp(agent->valuestring, "bob") == 0 &&
			    strcmp(natsMsg_GetSubject(m), "clawrelay.breaker.connector") == 0;
		}
		cJSON_Delete(ev);
		natsMsg_Destroy(m);
	}
	ck_assert_msg(seen_dest, "delivery's breaker for bob never opened");
	ck_assert_msg(seen_hook, "no event on clawrelay.breaker.connector for bob's hook breaker");
	natsSubscription_Destroy(sub);
	natsConnection_Destroy(nc);

	/* bob's hook recovers (same port): every accepted message, once */
	h_kill(h_find(&st, "bob-slow"), SIGKILL);
	it_hook_at(&st, "bob-fast", bport, bob_fast, sizeof(bob_fast), NULL);
	ck_assert_int_eq(h_wait_lines(bob_fast, n202, 120000), n202);
	h_sleep_ms(2000);
	v = it_lines(bob_fast, &n);
	ck_assert_int_eq(n, n202);
	{
		static int seen[NBOB];
		memset(seen, 0, sizeof(seen));
		for (int i = 0; i < n; i++) {
			int k = atoi(cJSON_GetObjectItem(v[i], "body")->valuestring + 4);
			ck_assert(k >= 0 && k < NBOB);
			ck_assert_msg(accepted[k], "bob-%d was refused, yet delivered", k);
			ck_assert_msg(!seen[k], "bob-%d delivered twice", k);
			seen[k] = 1;
		}
	}
	it_lines_free(v, n);
}
END_TEST

int
main(void)
{
	Suite *s = suite_create("cascade");
	TCase *tc = tcase_create("slow hook");
	tcase_set_timeout(tc, 300);
	tcase_add_unchecked_fixture(tc, setup, teardown);
	tcase_add_test(tc, slow_hook_does_not_cascade);
	suite_add_tcase(s, tc);
	return it_run(s);
}
