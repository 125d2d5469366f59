/*
 * itest_hook_breaker.c - the connector -> hook boundary, with real
 * processes (nats-server, every service, connectors, demo hooks):
 *  1. a hook that answers 500: the breaker opens and the hook is called
 *     only by the breaker's probes (calls counted); with a small inbox the
 *     connector refuses (NAKs) what does not fit; when the hook recovers
 *     every message reaches it exactly once, in order, and the breaker closes.
 *  2. a hook that answers 503 ("unavailable") for much longer than
 *     HOOK_MAX_ATTEMPTS calls: nothing is dead-lettered; all delivered after.
 *  3. a hook that answers 400 (refuses the message): dead-lettered after
 *     exactly HOOK_MAX_ATTEMPTS calls (attempts still count for refusals);
 *     the sender gets one failure notice, reason dead_lettered.
 *  4. priority: low and normal messages wait in the inbox while the hook is
 *     down; critical ones arriving later reach the hook first, then normal,
 *     then low, each lane in order.
 *  5. a DELIVERY_STATUS message reaches the hook with X-Claw-Kind:
 *     delivery_status, an ordinary one with X-Claw-Kind: message.
 * Each test has its own recipient agent, connector and hook; they share one stack.
 */
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "bus.h"
#include "env.h"
#include "it_common.h"

static struct h_stack st;

static void
setup(void)
{
	/* relay-session retries NAKed deliveries after at most 2 s (not 30) */
	static const char *const env[] = { "CLAWRELAY_BACKOFF_MAX_MS=2000", NULL };
	h_stack_init(&st, "hookbrk");
	h_nats_start(&st);
	h_start_services(&st, env);
	h_agent(&st, "alice", NULL);
	static const char *const rcpts[] = { "bob", "dave", "erin", "frank", "gina" };
	for (size_t i = 0; i < sizeof(rcpts) / sizeof(rcpts[0]); i++) {
		h_agent(&st, rcpts[i], NULL);
		h_trust(&st, "alice", rcpts[i]);
	}
}

static void
teardown(void)
{
	h_stop_all(&st);
}

/* a demo hook on a given port answering status (headers logged); its
 * lines go to *out */
static struct h_proc *
hook_on(const char *name, int port, int status, char *out, size_t outsz)
{
	char s[16];
	const char *args[] = { "--status", s, "--headers", NULL };

	snprintf(s, sizeof(s), "%d", status);
	it_hook_at(&st, name, port, out, outsz, args);
	return h_find(&st, name);
}

/* a connector for id with its hook on hook_port and extra settings */
static struct h_proc *
connector(const char *id, int hook_port, const char *const *extra)
{
	char url[64];

	snprintf(url, sizeof(url), "http://127.0.0.1:%d/hook", hook_port);
	return it_connector_env(&st, id, url, extra);
}

/* GET /v1/status of a connector; caller frees with cJSON_Delete */
static cJSON *
status_of(const struct h_proc *p)
{
	char url[96];
	struct h_resp r;
	cJSON *j = NULL;
	snprintf(url, sizeof(url), "http://127.0.0.1:%d/v1/status", p->port);
	if (h_http("GET", url, NULL, NULL, 0, &r) == 0 && r.status == 200)
		j = cJSON_Parse(r.body.data);
	h_resp_free(&r);
	return j;
}

/* a number at a path of objects ("hook", "calls"), -1 if absent */
static double
num_at(const struct h_proc *p, const char *a, const char *b, const char *c)
{
	cJSON *j = status_of(p), *o = j;
	double v = -1;
	if (o && a)
		o = cJSON_GetObjectItem(o, a);
	if (o && b)
		o = cJSON_GetObjectItem(o, b);
	if (o && c)
		o = cJSON_GetObjectItem(o, c);
	if (o && cJSON_IsNumber(o))
		v = o->valuedouble;
	cJSON_Delete(j);
	return v;
}

/* the entry of boundary in the status's "breakers" array, or NULL */
static cJSON *
brk_entry(cJSON *status, const char *boundary)
{
	cJSON *e;
	cJSON_ArrayForEach(e, cJSON_GetObjectItem(status, "breakers")) {
		cJSON *b = cJSON_GetObjectItem(e, "boundary");
		if (b && cJSON_IsString(b) && strcmp(b->valuestring, boundary) == 0)
			return e;
	}
	return NULL;
}

/* the hook breaker's state ("closed", "open", "half-open") into out */
static void
hook_brk_state(const struct h_proc *p, char *out, size_t sz)
{
	cJSON *j = status_of(p);
	cJSON *s = cJSON_GetObjectItem(brk_entry(j, "hook"), "state");
	snprintf(out, sz, "%s", s && cJSON_IsString(s) ? s->valuestring : "?");
	cJSON_Delete(j);
}

/* a number of the hook breaker's status entry, -1 if absent */
static double
hook_brk_num(const struct h_proc *p, const char *k)
{
	cJSON *j = status_of(p);
	cJSON *v = cJSON_GetObjectItem(brk_entry(j, "hook"), k);
	double d = v && cJSON_IsNumber(v) ? v->valuedouble : -1;
	cJSON_Delete(j);
	return d;
}

/* wait until the hook breaker is in one of the states (space separated) */
static int
wait_brk(const struct h_proc *p, const char *states, int timeout_ms)
{
	char s[32];
	for (int t = 0; t < timeout_ms; t += 100) {
		hook_brk_state(p, s, sizeof(s));
		if (strstr(states, s) != NULL && strcmp(s, "?") != 0)
			return 0;
		h_sleep_ms(100);
	}
	return -1;
}

static int
wait_num(const struct h_proc *p, const char *a, const char *b, double want, int timeout_ms)
{
	for (int t = 0; t < timeout_ms; t += 100) {
		if (num_at(p, a, b, NULL) >= want)
			return 0;
		h_sleep_ms(100);
	}
	return -1;
}

/* signed POSTs from alice: bodies "<tag>=<i>" for i in [from, to) */
static void
send_range(const char *to, const char *tag, int from, int upto, const char *prio)
{
	char body[64], ph[64], corr[96];
	for (int i = from; i < upto; i++) {
		struct h_resp r;
		snprintf(body, sizeof(body), "%s=%d", tag, i);
		snprintf(ph, sizeof(ph), "X-Claw-Priority: %s", prio);
		snprintf(corr, sizeof(corr), "X-Claw-Correlation-Id: %s-%s-%d", to, tag, i);
		const char *extra[] = { ph, corr, NULL };
		ck_assert_int_eq(h_send(&st, "alice", to, body, strlen(body), extra, &r), 0);
		ck_assert_msg(r.status == 202, "%s %d answered %ld: %s", tag, i, r.status, r.body.data);
		h_resp_free(&r);
	}
}

/* the bodies a hook received, in order (caller frees each and the array) */
static char **
bodies(const char *path, int *n)
{
	cJSON **v = it_lines(path, n);
	char **out = calloc((size_t)*n + 1, sizeof(*out));
	for (int i = 0; i < *n; i++)
		out[i] = strdup(cJSON_GetObjectItem(v[i], "body")->valuestring);
	it_lines_free(v, *n);
	return out;
}

static void
bodies_free(char **b, int n)
{
	for (int i = 0; i < n; i++)
		free(b[i]);
	free(b);
}

/* the hook at path got exactly "<tag>=0".."<tag>=<n-1>" from index at, in order */
static void
assert_seq(char **b, int nb, int at, const char *tag, int n)
{
	char want[64];
	ck_assert_int_ge(nb, at + n);
	for (int i = 0; i < n; i++) {
		snprintf(want, sizeof(want), "%s=%d", tag, i);
		ck_assert_msg(strcmp(b[at + i], want) == 0, "line %d is %s, want %s", at + i, b[at + i],
		    want);
	}
}

#define N1 20

START_TEST(breaker_opens_then_everything_once_in_order)
{
	char f500[400], f200[400], s[32];
	int port = h_free_port();
	struct h_proc *bad = hook_on("hook-bob-500", port, 500, f500, sizeof(f500));
	/* attempts high: this test is about the breaker, test 3 about attempts */
	static const char *const env[] = { "CLAWRELAY_HOOK_MAX_ATTEMPTS=1000",
		"CLAWRELAY_BREAKER_CONSECUTIVE=3", "CLAWRELAY_BREAKER_OPEN_MS=1000",
		"CLAWRELAY_BREAKER_OPEN_MAX_MS=4000", "CLAWRELAY_HOOK_BACKOFF_BASE_MS=50",
		"CLAWRELAY_HOOK_BACKOFF_CAP_MS=200", "CLAWRELAY_INBOX_MAX=8", NULL };
	struct h_proc *cb = connector("bob", port, env);
	ck_assert_msg(h_wait_log(cb, "reconnect_ack", 20000) == 0, "connector never connected");

	send_range("bob", "m", 0, N1, "normal");
	ck_assert_msg(wait_brk(cb, "open half-open", 30000) == 0, "the hook breaker never opened");
	ck_assert_msg(h_wait_log(cb, "breaker connector hook: closed -> open", 5000) == 0,
	    "no log line for the change");
	/* the inbox holds 8; the rest were refused (NAKed) and wait in the relay */
	ck_assert_msg(wait_num(cb, "inbox", "refusedFull", 1, 30000) == 0, "nothing was NAKed");
	ck_assert_int_eq((int)num_at(cb, "inbox", "depth", NULL), 8);

	/* while open the hook is called only by the probes (open 1, 2, 4, 4 s):
	 * at most 4 calls in 8 s; retrying every <=200 ms would make ~80 */
	int before = h_file_lines(f500);
	h_sleep_ms(8000);
	int during = h_file_lines(f500) - before;
	ck_assert_msg(during <= 6, "the hook was called %d times in 8 s while the breaker was open",
	    during);
	ck_assert_int_ge(hook_brk_num(cb, "timesOpened"), 1);
	ck_assert_int_ge(hook_brk_num(cb, "failures"), 3);
	ck_assert_int_eq((int)num_at(cb, "inbox", "deadLetters", NULL), 0);
	{
		char url[96];
		struct h_resp r;
		snprintf(url, sizeof(url), "http://127.0.0.1:%d/metrics", cb->port);
		ck_assert_int_eq(h_http("GET", url, NULL, NULL, 0, &r), 0);
		/* not closed: open or half-open (a probe may be out) */
		ck_assert_msg(strstr(r.body.data, "clawrelay_breakers{service=\"connector\","
		    "boundary=\"hook\",state=\"closed\"} 0") != NULL, "metric: %s", r.body.data);
		ck_assert_ptr_nonnull(strstr(r.body.data, "clawrelay_breaker_opens_total{service="
		    "\"connector\",boundary=\"hook\"} "));
		h_resp_free(&r);
	}

	/* the hook recovers (same port): the next probe closes the breaker */
	h_kill(bad, SIGTERM);
	hook_on("hook-bob-200", port, 200, f200, sizeof(f200));
	ck_assert_msg(h_wait_lines(f200, N1, 90000) == N1, "only %d of %d delivered",
	    h_file_lines(f200), N1);
	h_sleep_ms(1500);	/* anything more would be a duplicate */
	int n;
	char **b = bodies(f200, &n);
	ck_assert_int_eq(n, N1);
	assert_seq(b, n, 0, "m", N1);
	bodies_free(b, n);
	hook_brk_state(cb, s, sizeof(s));
	ck_assert_str_eq(s, "closed");
	ck_assert_int_eq((int)num_at(cb, "inbox", "deadLetters", NULL), 0);
	ck_assert_msg(h_wait_log(cb, "breaker connector hook: half-open -> closed", 5000) == 0,
	    "no log line for the close");
}
END_TEST

START_TEST(unavailable_hook_uses_no_attempts)
{
	char f503[400], f200[400];
	int port = h_free_port();
	struct h_proc *bad = hook_on("hook-dave-503", port, 503, f503, sizeof(f503));
	static const char *const env[] = { "CLAWRELAY_HOOK_MAX_ATTEMPTS=2",
		"CLAWRELAY_BREAKER_CONSECUTIVE=3", "CLAWRELAY_BREAKER_OPEN_MS=300",
		"CLAWRELAY_BREAKER_OPEN_MAX_MS=600", "CLAWRELAY_HOOK_BACKOFF_BASE_MS=50",
		"CLAWRELAY_HOOK_BACKOFF_CAP_MS=100", NULL };
	struct h_proc *cd = connector("dave", port, env);
	ck_assert_msg(h_wait_log(cd, "reconnect_ack", 20000) == 0, "connector never connected");
	send_range("dave", "u", 0, 3, "normal");
	/* many more calls than HOOK_MAX_ATTEMPTS, all "503 unavailable" */
	ck_assert_msg(h_wait_lines(f503, 8, 60000) >= 8, "the hook saw only %d calls",
	    h_file_lines(f503));
	/* the hook writes its line before it answers: the connector counts the
	 * 8th answer a moment after the 8th line */
	ck_assert_msg(wait_num(cd, "hook", "unavailable", 8, 10000) == 0,
	    "the connector counted %.0f unavailable answers, the hook saw %d calls",
	    num_at(cd, "hook", "unavailable", NULL), h_file_lines(f503));
	ck_assert_int_eq((int)num_at(cd, "inbox", "deadLetters", NULL), 0);
	ck_assert_int_eq((int)num_at(cd, "inbox", "depth", NULL), 3);
	h_kill(bad, SIGTERM);
	hook_on("hook-dave-200", port, 200, f200, sizeof(f200));
	ck_assert_int_eq(h_wait_lines(f200, 3, 60000), 3);
	h_sleep_ms(1000);
	int n;
	char **b = bodies(f200, &n);
	ck_assert_int_eq(n, 3);
	assert_seq(b, n, 0, "u", 3);
	bodies_free(b, n);
	ck_assert_int_eq((int)num_at(cd, "inbox", "deadLetters", NULL), 0);
}
END_TEST

START_TEST(refused_message_dead_lettered_after_max_attempts)
{
	char f400[400];
	int port = h_free_port();
	hook_on("hook-erin-400", port, 400, f400, sizeof(f400));
	static const char *const env[] = { "CLAWRELAY_HOOK_MAX_ATTEMPTS=2",
		"CLAWRELAY_HOOK_BACKOFF_BASE_MS=50", "CLAWRELAY_HOOK_BACKOFF_CAP_MS=100", NULL };
	struct h_proc *ce = connector("erin", port, env);
	ck_assert_msg(h_wait_log(ce, "reconnect_ack", 20000) == 0, "connector never connected");
	/* alice hears of it on the failure subject */
	natsConnection *nc = NULL;
	natsSubscription *sub = NULL;
	natsMsg *m = NULL;
	const char *reason = NULL;
	ck_assert_int_eq(natsConnection_ConnectTo(&nc, st.nats_url), NATS_OK);
	ck_assert_int_eq(natsConnection_SubscribeSync(&sub, nc, "clawrelay.notify.failure.>"), NATS_OK);
	ck_assert_int_eq(natsConnection_Flush(nc), NATS_OK);
	send_range("erin", "r", 0, 1, "normal");
	ck_assert_msg(wait_num(ce, "inbox", "deadLetters", 1, 30000) == 0, "never dead-lettered");
	ck_assert_int_eq(natsSubscription_NextMsg(&m, sub, 20000), NATS_OK);
	ck_assert_int_eq(natsMsgHeader_Get(m, "X-Claw-Reason", &reason), NATS_OK);
	ck_assert_str_eq(reason, "dead_lettered");
	Failure *f = clawrelay__v1__failure__unpack(NULL, (size_t)natsMsg_GetDataLength(m),
	    (const uint8_t *)natsMsg_GetData(m));
	ck_assert_ptr_nonnull(f);
	ck_assert_str_eq(f->correlation_id, "erin-r-0");
	ck_assert_str_eq(f->sender, "alice");
	ck_assert_str_eq(f->recipient, "erin");
	clawrelay__v1__failure__free_unpacked(f, NULL);
	natsMsg_Destroy(m);
	/* once */
	m = NULL;
	ck_assert_int_eq(natsSubscription_NextMsg(&m, sub, 1500), NATS_TIMEOUT);
	natsSubscription_Destroy(sub);
	natsConnection_Destroy(nc);
	h_sleep_ms(1000);
	ck_assert_int_eq(h_file_lines(f400), 2);	/* exactly HOOK_MAX_ATTEMPTS calls */
	ck_assert_int_eq((int)num_at(ce, "inbox", "depth", NULL), 0);
	/* 4xx says the hook is up: the breaker stays closed */
	char s[32];
	hook_brk_state(ce, s, sizeof(s));
	ck_assert_str_eq(s, "closed");
}
END_TEST

#define NL 5

START_TEST(critical_overtakes_waiting_messages)
{
	char fdown[400], fup[400];
	int port = h_free_port();
	struct h_proc *bad = hook_on("hook-frank-503", port, 503, fdown, sizeof(fdown));
	static const char *const env[] = { "CLAWRELAY_BREAKER_CONSECUTIVE=2",
		"CLAWRELAY_BREAKER_OPEN_MS=500", "CLAWRELAY_BREAKER_OPEN_MAX_MS=1000", NULL };
	struct h_proc *cf = connector("frank", port, env);
	ck_assert_msg(h_wait_log(cf, "reconnect_ack", 20000) == 0, "connector never connected");
	send_range("frank", "low", 0, NL, "low");
	send_range("frank", "normal", 0, NL, "normal");
	ck_assert_msg(wait_num(cf, "inbox", "depth", 2 * NL, 30000) == 0, "inbox never held %d",
	    2 * NL);
	/* critical ones arrive after the others already wait in the inbox */
	send_range("frank", "critical", 0, NL, "critical");
	ck_assert_msg(wait_num(cf, "inbox", "depth", 3 * NL, 30000) == 0, "inbox never held %d",
	    3 * NL);
	h_kill(bad, SIGTERM);
	hook_on("hook-frank-200", port, 200, fup, sizeof(fup));
	ck_assert_int_eq(h_wait_lines(fup, 3 * NL, 60000), 3 * NL);
	h_sleep_ms(1000);
	int n;
	char **b = bodies(fup, &n);
	ck_assert_int_eq(n, 3 * NL);
	assert_seq(b, n, 0, "critical", NL);
	assert_seq(b, n, NL, "normal", NL);
	assert_seq(b, n, 2 * NL, "low", NL);
	bodies_free(b, n);
}
END_TEST

START_TEST(delivery_status_tells_itself_apart)
{
	char f[400];
	int port = h_free_port();
	hook_on("hook-gina", port, 200, f, sizeof(f));
	struct h_proc *cg = connector("gina", port, NULL);
	ck_assert_msg(h_wait_log(cg, "reconnect_ack", 20000) == 0, "connector never connected");

	/* a notice as the notifier enqueues it: straight to relay-session */
	struct bus *b = NULL;
	ck_assert_int_eq(bus_connect(st.nats_url, "itest", "clawrelay", &b), CR_OK);
	for (int i = 0; i < 200 && !bus_is_connected(b); i++)
		h_sleep_ms(20);
	char corr[] = "notice-1", snd[] = "alice", rcpt[] = "gina", ct[] = "application/json";
	uint8_t body[] = "{\"failed\":\"m-1\"}";
	Envelope e = CLAWRELAY__V1__ENVELOPE__INIT;
	e.schema_version = ENV_SCHEMA;
	e.correlation_id = corr;
	e.sender = snd;
	e.recipient = rcpt;
	e.content_type = ct;
	e.priority = CLAWRELAY__V1__PRIORITY__PRIORITY_CRITICAL;
	e.kind = CLAWRELAY__V1__KIND__KIND_DELIVERY_STATUS;
	e.payload.data = body;
	e.payload.len = sizeof(body) - 1;
	void *wire = NULL;
	size_t wlen = 0;
	natsMsg *reply = NULL;
	char subj[128];
	ck_assert_int_eq(env_pack(&e.base, &wire, &wlen), CR_OK);
	bus_subj(b, subj, sizeof(subj), "session.%u.enqueue", partition_of(rcpt, 16));
	ck_assert_int_eq(bus_request(b, subj, wire, wlen, 5000, &reply), CR_OK);
	free(wire);
	natsMsg_Destroy(reply);
	bus_free(b);
	/* and an ordinary message */
	send_range("gina", "plain", 0, 1, "normal");

	ck_assert_int_eq(h_wait_lines(f, 2, 30000), 2);
	int n, seen = 0;
	cJSON **v = it_lines(f, &n);
	ck_assert_int_eq(n, 2);
	for (int i = 0; i < n; i++) {
		const char *bd = cJSON_GetObjectItem(v[i], "body")->valuestring;
		cJSON *k = cJSON_GetObjectItem(cJSON_GetObjectItem(v[i], "headers"), "X-Claw-Kind");
		ck_assert_ptr_nonnull(k);
		if (strcmp(bd, (const char *)body) == 0) {
			ck_assert_str_eq(k->valuestring, "delivery_status");
			seen |= 1;
		} else {
			ck_assert_str_eq(bd, "plain=0");
			ck_assert_str_eq(k->valuestring, "message");
			seen |= 2;
		}
	}
	ck_assert_int_eq(seen, 3);
	it_lines_free(v, n);
}
END_TEST

int
main(void)
{
	Suite *s = suite_create("hook_breaker");
	TCase *tc = tcase_create("hook boundary");
	tcase_set_timeout(tc, 600);
	tcase_add_unchecked_fixture(tc, setup, teardown);
	tcase_add_test(tc, breaker_opens_then_everything_once_in_order);
	tcase_add_test(tc, unavailable_hook_uses_no_attempts);
	tcase_add_test(tc, refused_message_dead_lettered_after_max_attempts);
	tcase_add_test(tc, critical_overtakes_waiting_messages);
	tcase_add_test(tc, delivery_status_tells_itself_apart);
	suite_add_tcase(s, tc);
	return it_run(s);
}
