/*
 * itest_outbox.c - the connector -> gateway boundary and idempotency, with
 * real processes (nats-server, every service, connectors, a demo hook):
 *  1. deterministic keys: the same local send twice is one delivery (the
 *     second answer is 200 with the first's messageId); another
 *     X-Claw-Event-Id, or another X-Claw-Correlation-Id from the agent, is
 *     another message; an explicit key reused with another body is 409.
 *  2. outbox: with the senders' gateway stopped (the recipient has its own),
 *     local sends answer 202 "outboxed"
 *     (outbox ID, correlation ID, idempotency key); the gateway breaker
 *     opens; a second connector with OUTBOX_MAX=3 answers 507 past 3; the
 *     same send again while it waits is the same outbox entry; the outbox
 *     survives a restart of the connector; when the gateway is back every
 *     message is delivered exactly once, in order; a message the gateway
 *     refuses for good (untrusted pair, 403) ends in the failed records of
 *     GET /v1/outbox; the breaker closes; sending an outboxed message again
 *     afterwards answers 200 with its messageId.
 */
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "it_common.h"

static struct h_stack st;
static char hook[400];
static struct h_proc *conn_a, *conn_c;

/* quick retries toward the gateway, so the test does not wait 30 s */
static const char *const fast[] = { "CLAWRELAY_BREAKER_CONSECUTIVE=3",
	"CLAWRELAY_BREAKER_OPEN_MS=500", "CLAWRELAY_BREAKER_OPEN_MAX_MS=2000",
	"CLAWRELAY_RECONNECT_BASE_MS=200", "CLAWRELAY_RECONNECT_CAP_MS=2000",
	"CLAWRELAY_ENQUEUE_TIMEOUT_MS=5000", NULL };

/* start a connector for id on gateway gw (NULL: the stack's); port 0 = a
 * free one; ready = wait for /readyz (the socket up), else only for /healthz */
static struct h_proc *
connector(const char *id, const char *name, const char *hook_url, int port, int ready,
    const char *extra, const char *gw)
{
	char e_agent[200], e_key[500], e_gw[128], e_hook[256], e_data[400], e_port[64], key[400];
	const char *env[32];
	int n = 0;

	h_key_path(&st, id, key, sizeof(key));
	if (!port)
		port = h_free_port();
	snprintf(e_agent, sizeof(e_agent), "CLAWRELAY_AGENT_ID=%s", id);
	snprintf(e_key, sizeof(e_key), "CLAWRELAY_KEY_FILE=%s", key);
	snprintf(e_gw, sizeof(e_gw), "CLAWRELAY_GATEWAY_URL=%s", gw ? gw : st.gw_url);
	snprintf(e_hook, sizeof(e_hook), "CLAWRELAY_HOOK_URL=%s", hook_url);
	snprintf(e_data, sizeof(e_data), "CLAWRELAY_DATA_DIR=%s/connector-%s", st.dir, id);
	snprintf(e_port, sizeof(e_port), "CLAWRELAY_HTTP_PORT=%d", port);
	env[n++] = e_agent;
	env[n++] = e_key;
	env[n++] = e_gw;
	env[n++] = e_hook;
	env[n++] = e_data;
	env[n++] = e_port;
	for (int i = 0; fast[i]; i++)
		env[n++] = fast[i];
	if (extra)
		env[n++] = extra;
	env[n] = NULL;
	if (ready)
		return h_spawn(&st, name, "clawrelay-connector", port, env, NULL);
	struct h_proc *p = h_spawn(&st, name, "clawrelay-connector", 0, env, NULL);
	p->port = port;
	char url[96];
	snprintf(url, sizeof(url), "http://127.0.0.1:%d/healthz", port);
	for (int i = 0; i < 300; i++) {
		struct h_resp r;
		int ok = h_http("GET", url, NULL, NULL, 0, &r) == 0 && r.status == 200;
		h_resp_free(&r);
		if (ok)
			return p;
		h_sleep_ms(100);
	}
	ck_abort_msg("%s never answered /healthz", name);
	return NULL;
}

static void
setup(void)
{
	char hook_url[128];
	h_stack_init(&st, "outbox");
	h_nats_start(&st);
	h_start_services(&st, NULL);
	int port = it_hook(&st, "hook-bob", hook, sizeof(hook), NULL);
	snprintf(hook_url, sizeof(hook_url), "http://127.0.0.1:%d/hook", port);
	h_agent(&st, "alice", NULL);
	h_agent(&st, "bob", NULL);
	h_agent(&st, "carol", NULL);
	h_agent(&st, "dave", NULL);	/* nobody may send to dave */
	h_trust(&st, "alice", "bob");
	h_trust(&st, "carol", "bob");
	/* bob's connector uses a gateway of its own, which stays up: what reaches
	 * its hook, and in what order, is what the senders' outboxes sent */
	char data[400], gw_b[64];
	int port_b = h_free_port();
	snprintf(data, sizeof(data), "CLAWRELAY_DATA_DIR=%s/gateway-b", st.dir);
	snprintf(gw_b, sizeof(gw_b), "http://127.0.0.1:%d", port_b);
	const char *genv[] = { data, NULL };
	h_spawn(&st, "gateway-b", "clawrelay-gateway", port_b, genv, NULL);
	connector("bob", "connector-bob", hook_url, 0, 1, NULL, gw_b);
	conn_a = connector("alice", "connector-alice", "http://127.0.0.1:9/unused", 0, 1, NULL,
	    NULL);
	conn_c = connector("carol", "connector-carol", "http://127.0.0.1:9/unused", 0, 1,
	    "CLAWRELAY_OUTBOX_MAX=3", NULL);
}

static void
teardown(void)
{
	h_stop_all(&st);
}

/* POST /v1/outbound/<to> on a connector; the parsed answer in *j (caller frees) */
static long
out_post(const struct h_proc *p, const char *to, const char *body, const char *h1,
    const char *h2, cJSON **j)
{
	char url[128];
	struct h_resp r;
	const char *hdrs[] = { h1, h2, NULL };
	if (!h1)
		hdrs[0] = NULL;
	snprintf(url, sizeof(url), "http://127.0.0.1:%d/v1/outbound/%s", p->port, to);
	ck_assert_int_eq(h_http("POST", url, hdrs, body, strlen(body), &r), 0);
	long status = r.status;
	*j = cJSON_Parse(r.body.data);
	ck_assert_msg(*j != NULL, "answer %ld is not JSON: %s", status, r.body.data);
	if (status == 507 || status == 429)
		ck_assert_ptr_nonnull(h_header(&r, "Retry-After"));
	h_resp_free(&r);
	return status;
}

static const char *
str(cJSON *j, const char *k)
{
	cJSON *v = cJSON_GetObjectItem(j, k);
	return v && cJSON_IsString(v) ? v->valuestring : "";
}

static double
num(cJSON *j, const char *k)
{
	cJSON *v = cJSON_GetObjectItem(j, k);
	return v && cJSON_IsNumber(v) ? v->valuedouble : -1;
}

static cJSON *
get_json(const struct h_proc *p, const char *path)
{
	char url[128];
	struct h_resp r;
	cJSON *j = NULL;
	snprintf(url, sizeof(url), "http://127.0.0.1:%d%s", p->port, path);
	if (h_http("GET", url, NULL, NULL, 0, &r) == 0 && r.status == 200)
		j = cJSON_Parse(r.body.data);
	h_resp_free(&r);
	return j;
}

/* the connector's gateway breaker state (its entry in /v1/status "breakers") */
static void
gw_brk(const struct h_proc *p, char *out, size_t sz)
{
	cJSON *j = get_json(p, "/v1/status"), *e, *s = NULL;
	cJSON_ArrayForEach(e, cJSON_GetObjectItem(j, "breakers")) {
		cJSON *b = cJSON_GetObjectItem(e, "boundary");
		if (b && cJSON_IsString(b) && strcmp(b->valuestring, "gateway") == 0)
			s = cJSON_GetObjectItem(e, "state");
	}
	snprintf(out, sz, "%s", s && cJSON_IsString(s) ? s->valuestring : "?");
	cJSON_Delete(j);
}

static double
outbox_num(const struct h_proc *p, const char *k)
{
	cJSON *j = get_json(p, "/v1/outbox");
	double v = j ? num(j, k) : -1;
	cJSON_Delete(j);
	return v;
}

/* how many hook lines have exactly this body */
static int
count_body(const char *body)
{
	int n, c = 0;
	cJSON **v = it_lines(hook, &n);
	for (int i = 0; i < n; i++)
		if (strcmp(cJSON_GetObjectItem(v[i], "body")->valuestring, body) == 0)
			c++;
	it_lines_free(v, n);
	return c;
}

START_TEST(same_send_twice_is_one_message)
{
	cJSON *a, *b;
	long s1 = out_post(conn_a, "bob", "dup-body", NULL, NULL, &a);
	ck_assert_msg(s1 == 202, "first send: %ld", s1);
	ck_assert_str_eq(str(a, "status"), "queued");
	ck_assert_str_ne(str(a, "messageId"), "");
	ck_assert_int_eq(strncmp(str(a, "idempotencyKey"), "ck1-", 4), 0);
	long s2 = out_post(conn_a, "bob", "dup-body", NULL, NULL, &b);
	ck_assert_msg(s2 == 200, "second send: %ld", s2);
	ck_assert_str_eq(str(a, "messageId"), str(b, "messageId"));
	ck_assert_str_eq(str(a, "idempotencyKey"), str(b, "idempotencyKey"));
	cJSON_Delete(a);
	cJSON_Delete(b);

	/* another event ID: another message, with the same body */
	ck_assert_int_eq(out_post(conn_a, "bob", "ev-body", "X-Claw-Event-Id: e1", NULL, &a), 202);
	ck_assert_int_eq(out_post(conn_a, "bob", "ev-body", "X-Claw-Event-Id: e2", NULL, &b), 202);
	ck_assert_str_ne(str(a, "messageId"), str(b, "messageId"));
	ck_assert_str_ne(str(a, "idempotencyKey"), str(b, "idempotencyKey"));
	cJSON_Delete(a);
	cJSON_Delete(b);
	/* the same event ID again: the first one */
	ck_assert_int_eq(out_post(conn_a, "bob", "ev-body", "X-Claw-Event-Id: e1", NULL, &a), 200);
	cJSON_Delete(a);

	/* the agent's own correlation IDs name messages too: two IDs, two
	 * messages; the same one again, the first */
	ck_assert_int_eq(out_post(conn_a, "bob", "corr-body", "X-Claw-Correlation-Id: cc-1", NULL,
	    &a), 202);
	ck_assert_int_eq(out_post(conn_a, "bob", "corr-body", "X-Claw-Correlation-Id: cc-2", NULL,
	    &b), 202);
	ck_assert_str_ne(str(a, "messageId"), str(b, "messageId"));
	cJSON_Delete(b);
	ck_assert_int_eq(out_post(conn_a, "bob", "corr-body", "X-Claw-Correlation-Id: cc-1", NULL,
	    &b), 200);
	ck_assert_str_eq(str(a, "messageId"), str(b, "messageId"));
	ck_assert_str_eq(str(b, "correlationId"), "cc-1");
	cJSON_Delete(a);
	cJSON_Delete(b);

	/* the agent's own key wins; reused with another body it is a conflict */
	ck_assert_int_eq(out_post(conn_a, "bob", "k-body-1", "X-Claw-Idempotency-Key: my-key-1",
	    NULL, &a), 202);
	ck_assert_str_eq(str(a, "idempotencyKey"), "my-key-1");
	cJSON_Delete(a);
	ck_assert_int_eq(out_post(conn_a, "bob", "k-body-2", "X-Claw-Idempotency-Key: my-key-1",
	    NULL, &a), 409);
	cJSON_Delete(a);

	ck_assert_msg(h_wait_lines(hook, 6, 30000) >= 6, "only %d delivered", h_file_lines(hook));
	h_sleep_ms(1500);	/* a duplicate would arrive by now */
	ck_assert_int_eq(count_body("dup-body"), 1);
	ck_assert_int_eq(count_body("ev-body"), 2);
	ck_assert_int_eq(count_body("corr-body"), 2);
	ck_assert_int_eq(count_body("k-body-1"), 1);
	ck_assert_int_eq(count_body("k-body-2"), 0);
}
END_TEST

#define NO 20

START_TEST(outbox_survives_and_drains_in_order)
{
	char body[64], s[32];
	cJSON *j;
	double first_id = 0, prev_id = 0;
	char first_key[80] = "";

	/* the senders' gateway goes away (bob's stays) */
	struct h_proc *gw = h_find(&st, "gateway");
	ck_assert_ptr_nonnull(gw);
	h_kill(gw, SIGKILL);
	for (int i = 0; i < 100; i++) {
		cJSON *stt = get_json(conn_a, "/v1/status");
		const char *sock = str(cJSON_GetObjectItem(stt, "socket"), "state");
		int down = strcmp(sock, "open") != 0;
		cJSON_Delete(stt);
		if (down)
			break;
		h_sleep_ms(100);
	}

	for (int i = 0; i < NO; i++) {
		snprintf(body, sizeof(body), "o=%d", i);
		long code = out_post(conn_a, "bob", body, NULL, NULL, &j);
		ck_assert_msg(code == 202, "send %d answered %ld", i, code);
		ck_assert_str_eq(str(j, "status"), "outboxed");
		ck_assert_str_eq(str(j, "state"), "outboxed");
		ck_assert(cJSON_IsNull(cJSON_GetObjectItem(j, "messageId")));
		ck_assert_str_ne(str(j, "correlationId"), "");
		ck_assert_int_eq(strncmp(str(j, "idempotencyKey"), "ck1-", 4), 0);
		ck_assert_msg(num(j, "outboxId") > prev_id, "outbox IDs must grow");
		prev_id = num(j, "outboxId");
		if (i == 0) {
			first_id = prev_id;
			snprintf(first_key, sizeof(first_key), "%s", str(j, "idempotencyKey"));
		}
		cJSON_Delete(j);
	}
	/* a message the gateway will refuse for good once it is back */
	ck_assert_int_eq(out_post(conn_a, "dave", "to-dave", NULL, NULL, &j), 202);
	cJSON_Delete(j);
	/* the same send again while it waits: the same entry */
	ck_assert_int_eq(out_post(conn_a, "bob", "o=0", NULL, NULL, &j), 202);
	ck_assert(cJSON_IsTrue(cJSON_GetObjectItem(j, "duplicate")));
	ck_assert_int_eq((long long)num(j, "outboxId"), (long long)first_id);
	ck_assert_str_eq(str(j, "idempotencyKey"), first_key);
	cJSON_Delete(j);
	ck_assert_int_eq((int)outbox_num(conn_a, "depth"), NO + 1);

	/* the gateway breaker opens: the worker's sends fail fast */
	int opened = 0;
	for (int i = 0; i < 300 && !opened; i++) {
		gw_brk(conn_a, s, sizeof(s));
		opened = strcmp(s, "open") == 0 || strcmp(s, "half-open") == 0;
		if (!opened)
			h_sleep_ms(100);
	}
	ck_assert_msg(opened, "the gateway breaker never opened (%s)", s);
	ck_assert_msg(h_wait_log(conn_a, "breaker connector gateway: closed -> open", 5000) == 0,
	    "no log line for the change");

	/* a bounded outbox: 3 fit, the 4th is 507 */
	for (int i = 0; i < 3; i++) {
		snprintf(body, sizeof(body), "c=%d", i);
		ck_assert_int_eq(out_post(conn_c, "bob", body, NULL, NULL, &j), 202);
		cJSON_Delete(j);
	}
	ck_assert_int_eq(out_post(conn_c, "bob", "c=3", NULL, NULL, &j), 507);
	ck_assert_str_eq(str(cJSON_GetObjectItem(j, "error"), "code"), "outbox_full");
	cJSON_Delete(j);

	/* the connector restarts while the gateway is still away */
	int port = conn_a->port;
	h_kill(conn_a, SIGTERM);
	conn_a = connector("alice", "connector-alice-2", "http://127.0.0.1:9/unused", port, 0, NULL,
	    NULL);
	/* /healthz answers before the routes exist: wait for the outbox's */
	j = NULL;
	for (int i = 0; i < 300 && !(j = get_json(conn_a, "/v1/outbox")); i++)
		h_sleep_ms(100);
	ck_assert_ptr_nonnull(j);
	ck_assert_int_eq((int)num(j, "depth"), NO + 1);
	cJSON *w = cJSON_GetObjectItem(j, "waiting");
	ck_assert_int_eq(cJSON_GetArraySize(w), NO + 1);
	ck_assert_int_eq((long long)num(cJSON_GetArrayItem(w, 0), "outboxId"), (long long)first_id);
	ck_assert_str_eq(str(cJSON_GetArrayItem(w, 0), "recipient"), "bob");
	ck_assert_str_eq(str(cJSON_GetArrayItem(w, NO), "recipient"), "dave");
	cJSON_Delete(j);

	/* the gateway comes back on the same port */
	char data[400];
	snprintf(data, sizeof(data), "CLAWRELAY_DATA_DIR=%s/gateway", st.dir);
	const char *genv[] = { data, NULL };
	h_spawn(&st, "gateway-2", "clawrelay-gateway", st.gw_port, genv, NULL);

	int want = NO;
	for (int t = 0; t < 900; t++) {	/* 90 s */
		int got = 0;
		for (int i = 0; i < NO; i++) {
			snprintf(body, sizeof(body), "o=%d", i);
			got += count_body(body) > 0;
		}
		if (got == want && count_body("c=2") > 0)
			break;
		h_sleep_ms(100);
	}
	h_sleep_ms(1500);	/* a duplicate would arrive by now */
	int n;
	cJSON **v = it_lines(hook, &n);
	int next = 0, cnext = 0;
	for (int i = 0; i < n; i++) {
		const char *b = cJSON_GetObjectItem(v[i], "body")->valuestring;
		if (strncmp(b, "o=", 2) == 0) {
			ck_assert_msg(atoi(b + 2) == next, "got %s, want o=%d (once each, in order)", b,
			    next);
			next++;
		} else if (strncmp(b, "c=", 2) == 0) {
			ck_assert_msg(atoi(b + 2) == cnext, "got %s, want c=%d", b, cnext);
			cnext++;
		}
	}
	it_lines_free(v, n);
	ck_assert_int_eq(next, NO);
	ck_assert_int_eq(cnext, 3);

	/* the outbox is empty; the refused one is a failed record */
	for (int i = 0; i < 100 && outbox_num(conn_a, "depth") != 0; i++)
		h_sleep_ms(100);
	j = get_json(conn_a, "/v1/outbox");
	ck_assert_int_eq((int)num(j, "depth"), 0);
	ck_assert_int_eq((int)num(j, "sent"), NO);
	cJSON *f = cJSON_GetObjectItem(j, "failedRecords");
	ck_assert_int_eq(cJSON_GetArraySize(f), 1);
	ck_assert_str_eq(str(cJSON_GetArrayItem(f, 0), "recipient"), "dave");
	ck_assert_int_eq((int)num(cJSON_GetArrayItem(f, 0), "status"), 403);
	cJSON_Delete(j);
	gw_brk(conn_a, s, sizeof(s));
	ck_assert_str_eq(s, "closed");

	/* sent again now: the gateway knows it, 200 with its message ID */
	ck_assert_int_eq(out_post(conn_a, "bob", "o=0", NULL, NULL, &j), 200);
	ck_assert_str_ne(str(j, "messageId"), "");
	ck_assert_str_eq(str(j, "idempotencyKey"), first_key);
	cJSON_Delete(j);
	h_sleep_ms(1000);
	ck_assert_int_eq(count_body("o=0"), 1);

	/* the failed records can be cleared */
	{
		char url[128];
		struct h_resp r;
		snprintf(url, sizeof(url), "http://127.0.0.1:%d/v1/outbox/failed", conn_a->port);
		ck_assert_int_eq(h_http("DELETE", url, NULL, NULL, 0, &r), 0);
		ck_assert_int_eq(r.status, 200);
		h_resp_free(&r);
		j = get_json(conn_a, "/v1/outbox");
		ck_assert_int_eq(cJSON_GetArraySize(cJSON_GetObjectItem(j, "failedRecords")), 0);
		cJSON_Delete(j);
	}
}
END_TEST

int
main(void)
{
	Suite *s = suite_create("outbox");
	TCase *tc = tcase_create("gateway boundary");
	tcase_set_timeout(tc, 600);
	tcase_add_unchecked_fixture(tc, setup, teardown);
	tcase_add_test(tc, same_send_twice_is_one_message);
	tcase_add_test(tc, outbox_survives_and_drains_in_order);
	suite_add_tcase(s, tc);
	return it_run(s);
}
