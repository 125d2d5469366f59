/*
 * itest_badinput.c - 5. Every bad input gets its status code and a clear
 * error body, and no process crashes: wrong or missing proof, expired
 * timestamp, replayed nonce (also across two gateways), tampered body or
 * header, unknown recipient, untrusted pair, invalid agent IDs, an ID with
 * '.', oversized body, malformed envelopes on the bus.
 */
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/types.h>
#include <sys/socket.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <arpa/inet.h>
#include <unistd.h>

#include "auth.h"
#include "bus.h"
#include "env.h"
#include "it_common.h"
#include "util.h"

static struct h_stack st;
static int gw2_port;
static char hook_dot[400], hook_team[400];

static void
setup(void)
{
	char u1[128], u2[128];
	h_stack_init(&st, "badinput");
	h_nats_start(&st);
	const char *env[] = { "CLAWRELAY_MAX_BODY_BYTES=65536", NULL };
	h_start_services(&st, env);
	gw2_port = h_free_port();
	h_spawn(&st, "gateway-2", "clawrelay-gateway", gw2_port, env, NULL);
	h_agent(&st, "alice", NULL);
	h_agent(&st, "bob", NULL);
	h_agent(&st, "mallory", NULL);
	int p1 = it_hook(&st, "hook-dot", hook_dot, sizeof(hook_dot), NULL);
	int p2 = it_hook(&st, "hook-team", hook_team, sizeof(hook_team), NULL);
	snprintf(u1, sizeof(u1), "http://127.0.0.1:%d/", p1);
	snprintf(u2, sizeof(u2), "http://127.0.0.1:%d/", p2);
	h_agent(&st, "team.bob", u1);
	h_agent(&st, "team", u2);
	h_trust(&st, "alice", "bob");
	h_trust(&st, "alice", "team.bob");
	h_trust(&st, "alice", "team");
}

static void
teardown(void)
{
	h_stop_all(&st);
}

struct req {
	const char *signer;      /* key used to sign (NULL: no proof header) */
	const char *agent;       /* X-Claw-Agent */
	const char *path;        /* as sent (raw) */
	const char *signed_path; /* as the server decodes it (NULL: same) */
	long ts_offset;
	const char *nonce;       /* NULL: random */
	const char *body, *sent_body;  /* signed body / sent body (NULL: same) */
	const char *prio, *sent_prio;
	const char *ttl;
	int port;                /* 0: first gateway */
	int dup_agent_header;
};

static long
do_req(const struct req *q, struct h_resp *r)
{
	char ts[32], nonce[64], sha[64], sig[96] = "", url[800], keyp[400];
	char h1[300], h2[64], h3[160], h4[96], h5[128], h6[64], h7[64], h8[300];
	const char *hdrs[16];
	int n = 0;
	const char *body = q->body ? q->body : "";
	const char *sent = q->sent_body ? q->sent_body : body;
	snprintf(ts, sizeof(ts), "%ld", (long)(now_ms() / 1000) + q->ts_offset);
	if (q->nonce)
		snprintf(nonce, sizeof(nonce), "%s", q->nonce);
	else
		rand_hex(nonce, 12);
	auth_sha256_b64url(body, strlen(body), sha);
	if (q->signer) {
		struct auth_key *k = NULL;
		h_key_path(&st, q->signer, keyp, sizeof(keyp));
		ck_assert_int_eq(auth_key_load_private(keyp, &k), CR_OK);
		struct auth_proof_input in = { .method = "POST",
			.path = q->signed_path ? q->signed_path : q->path, .agent = q->agent,
			.timestamp = ts, .nonce = nonce, .body_sha256 = sha, .priority = q->prio,
			.ttl_seconds = q->ttl };
		ck_assert_int_eq(auth_sign_request(k, &in, sig), CR_OK);
		auth_key_free(k);
	}
	snprintf(h1, sizeof(h1), "X-Claw-Agent: %s", q->agent);
	snprintf(h2, sizeof(h2), "X-Claw-Timestamp: %s", ts);
	snprintf(h3, sizeof(h3), "X-Claw-Nonce: %s", nonce);
	snprintf(h4, sizeof(h4), "X-Claw-Body-SHA256: %s", sha);
	snprintf(h5, sizeof(h5), "X-Claw-Proof: %s", sig);
	hdrs[n++] = h1;
	hdrs[n++] = h2;
	hdrs[n++] = h3;
	hdrs[n++] = h4;
	if (q->signer)
		hdrs[n++] = h5;
	if (q->sent_prio || q->prio) {
		snprintf(h6, sizeof(h6), "X-Claw-Priority: %s", q->sent_prio ? q->sent_prio : q->prio);
		hdrs[n++] = h6;
	}
	if (q->ttl) {
		snprintf(h7, sizeof(h7), "X-Claw-Ttl-Seconds: %s", q->ttl);
		hdrs[n++] = h7;
	}
	if (q->dup_agent_header) {
		snprintf(h8, sizeof(h8), "X-Claw-Agent: %s", q->agent);
		hdrs[n++] = h8;
	}
	hdrs[n] = NULL;
	snprintf(url, sizeof(url), "http://127.0.0.1:%d%s", q->port ? q->port : st.gw_port, q->path);
	ck_assert_int_eq(h_http("POST", url, hdrs, sent, strlen(sent), r), 0);
	return r->status;
}

/* every refusal has a JSON error body with a code */
static void
assert_error_body(const struct h_resp *r)
{
	cJSON *j = cJSON_Parse(r->body.data);
	ck_assert_msg(j != NULL, "error body is not JSON: %s", r->body.data);
	cJSON *e = cJSON_GetObjectItem(j, "error");
	ck_assert_ptr_nonnull(e);
	ck_assert(cJSON_IsString(cJSON_GetObjectItem(e, "code")));
	ck_assert(cJSON_IsString(cJSON_GetObjectItem(e, "message")));
	cJSON_Delete(j);
}

static void
expect(const struct req *q, long want, const char *what)
{
	struct h_resp r;
	long got = do_req(q, &r);
	ck_assert_msg(got == want, "%s: want %ld, got %ld: %s", what, want, got, r.body.data);
	if (want >= 400)
		assert_error_body(&r);
	h_resp_free(&r);
}

#define P_BOB "/v1/agents/bob/messages"

START_TEST(proofs)
{
	struct req q = { .signer = "alice", .agent = "alice", .path = P_BOB, .body = "hi" };
	expect(&q, 202, "valid request");
	q.signer = NULL;
	expect(&q, 401, "missing proof");
	q.signer = "mallory";
	expect(&q, 401, "proof by another key");
	q.signer = "alice";
	q.ts_offset = -1000;
	expect(&q, 401, "expired timestamp");
	q.ts_offset = +1000;
	expect(&q, 401, "timestamp in the future");
	q.ts_offset = 0;
	q.sent_body = "hi!";
	expect(&q, 401, "tampered body");
	q.sent_body = NULL;
	q.prio = "low";
	q.sent_prio = "critical";
	expect(&q, 401, "tampered priority header");
	q.prio = q.sent_prio = NULL;
	q.dup_agent_header = 1;
	expect(&q, 400, "repeated X-Claw-Agent");
	q.dup_agent_header = 0;
	q.agent = "nobody";
	expect(&q, 401, "unknown sender");
}
END_TEST

START_TEST(replays)
{
	struct req q = { .signer = "alice", .agent = "alice", .path = P_BOB, .body = "once",
		.nonce = "replay-nonce-0123456789" };
	expect(&q, 202, "first use of a nonce");
	expect(&q, 401, "replayed nonce, same gateway");
	q.port = gw2_port;
	expect(&q, 401, "replayed nonce, other gateway");
	/* and after a gateway restart */
	struct h_proc *g2 = h_find(&st, "gateway-2");
	h_kill(g2, SIGTERM);
	const char *env[] = { "CLAWRELAY_MAX_BODY_BYTES=65536", NULL };
	h_spawn(&st, "gateway-2b", "clawrelay-gateway", gw2_port, env, NULL);
	expect(&q, 401, "replayed nonce, restarted gateway");
	/* relay-session keeps POST nonces in LMDB with the message: they
	 * survive its restart too (503 while it takes its partitions back) */
	struct h_proc *rs = h_find(&st, "relay-session");
	char data[400];
	snprintf(data, sizeof(data), "CLAWRELAY_DATA_DIR=%s/relay-session", st.dir);
	const char *renv[] = { data, NULL };
	int rport = rs->port;
	h_kill(rs, SIGTERM);
	h_spawn(&st, "relay-session-2", "clawrelay-relay-session", rport, renv, NULL);
	struct h_resp r;
	long status = 503;
	for (int i = 0; i < 100 && status == 503; i++) {
		memset(&r, 0, sizeof(r));
		status = do_req(&q, &r);
		h_resp_free(&r);
		if (status == 503)
			usleep(100 * 1000);
	}
	ck_assert_int_eq(status, 401);
	/* a fresh nonce still goes through */
	q.nonce = "replay-nonce-after-restart-1";
	expect(&q, 202, "new nonce after relay-session restart");
}
END_TEST

START_TEST(recipients)
{
	struct req q = { .signer = "alice", .agent = "alice", .body = "x" };
	q.path = "/v1/agents/nobody/messages";
	expect(&q, 404, "unknown recipient");
	q.path = "/v1/agents/mallory/messages";
	expect(&q, 403, "untrusted pair");
	static const struct {
		const char *raw, *decoded;
	} bad[] = {
		{ "/v1/agents/a%20b/messages", "/v1/agents/a b/messages" },
		{ "/v1/agents/a%2Ab/messages", "/v1/agents/a*b/messages" },
		{ "/v1/agents/a%3Eb/messages", "/v1/agents/a>b/messages" },
		{ "/v1/agents/a%01b/messages", "/v1/agents/a\x01" "b/messages" },
	};
	for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
		q.path = bad[i].raw;
		q.signed_path = bad[i].decoded;
		expect(&q, 400, bad[i].raw);
	}
	char longp[300], longid[200];
	memset(longid, 'a', 129);
	longid[129] = '\0';
	snprintf(longp, sizeof(longp), "/v1/agents/%s/messages", longid);
	q.path = longp;
	q.signed_path = NULL;
	expect(&q, 400, "129-character recipient");
	/* a '/' inside the ID: not a message route at all, never a 2xx/5xx */
	struct h_resp r;
	q.path = "/v1/agents/a%2Fb/messages";
	q.signed_path = "/v1/agents/a/b/messages";
	long got = do_req(&q, &r);
	ck_assert_msg(got == 400 || got == 404, "a/b: got %ld", got);
	h_resp_free(&r);
}
END_TEST

START_TEST(dotted_id_reaches_only_its_own)
{
	struct req q = { .signer = "alice", .agent = "alice", .path = "/v1/agents/team.bob/messages",
		.body = "for team.bob only" };
	expect(&q, 202, "dotted recipient");
	ck_assert_int_eq(h_wait_lines(hook_dot, 1, 15000), 1);
	h_sleep_ms(1000);
	ck_assert_int_eq(h_file_lines(hook_team), 0);
	ck_assert_int_eq(h_file_lines(hook_dot), 1);
}
END_TEST

START_TEST(headers_and_sizes)
{
	struct req q = { .signer = "alice", .agent = "alice", .path = P_BOB, .body = "x" };
	q.prio = "urgent";
	expect(&q, 400, "unknown priority");
	q.prio = "Critical";
	expect(&q, 400, "priority not exactly lower case");
	q.prio = NULL;
	q.ttl = "0";
	expect(&q, 400, "ttl 0");
	q.ttl = "604801";
	expect(&q, 400, "ttl over 7 days");
	q.ttl = "12a";
	expect(&q, 400, "ttl not digits");
	q.ttl = "604800";
	expect(&q, 202, "ttl of 7 days");
	q.ttl = NULL;
	char *big = malloc(65537 + 1);
	memset(big, 'b', 65537);
	big[65537] = '\0';
	q.body = big;
	expect(&q, 413, "body over the limit");
	free(big);
}
END_TEST


/* --- a minimal WebSocket client, to send what no connector would --- */

/* ws_open - upgrade GET /v1/connect signed by signer as agent; returns the
 * socket and sets *status to the HTTP status of the answer */
static int
ws_open(const char *signer, const char *agent, int *status)
{
	char ts[32], nonce[40], sha[64], sig[96] = "", keyp[400], req[2048], buf[4096];
	struct sockaddr_in a;
	struct timeval tv = { 5, 0 };
	int fd = socket(AF_INET, SOCK_STREAM, 0), one = 1;
	memset(&a, 0, sizeof(a));
	a.sin_family = AF_INET;
	a.sin_port = htons((uint16_t)st.gw_port);
	a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
	ck_assert_int_eq(connect(fd, (struct sockaddr *)&a, sizeof(a)), 0);
	setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
	setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
	snprintf(ts, sizeof(ts), "%llu", (unsigned long long)(now_ms() / 1000));
	rand_hex(nonce, 12);
	auth_sha256_b64url("", 0, sha);
	struct auth_key *k = NULL;
	h_key_path(&st, signer, keyp, sizeof(keyp));
	ck_assert_int_eq(auth_key_load_private(keyp, &k), CR_OK);
	struct auth_proof_input in = { .method = "GET", .path = "/v1/connect", .agent = agent,
		.timestamp = ts, .nonce = nonce, .body_sha256 = sha };
	ck_assert_int_eq(auth_sign_request(k, &in, sig), CR_OK);
	auth_key_free(k);
	int n = snprintf(req, sizeof(req), "GET /v1/connect HTTP/1.1\r\nHost: 127.0.0.1\r\n"
	    "Upgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Version: 13\r\n"
	    "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nX-Claw-Agent: %s\r\n"
	    "X-Claw-Timestamp: %s\r\nX-Claw-Nonce: %s\r\nX-Claw-Body-SHA256: %s\r\n"
	    "X-Claw-Proof: %s\r\n\r\n", agent, ts, nonce, sha, sig);
	ck_assert_int_eq(write(fd, req, (size_t)n), n);
	size_t got = 0;
	while (got < sizeof(buf) - 1) {
		ssize_t r = read(fd, buf + got, 1);	/* byte by byte: stop at the end of the head */
		if (r <= 0)
			break;
		got++;
		buf[got] = '\0';
		if (got >= 4 && memcmp(buf + got - 4, "\r\n\r\n", 4) == 0)
			break;
	}
	buf[got] = '\0';
	*status = 0;
	sscanf(buf, "HTTP/1.1 %d", status);
	return fd;
}

/* ws_send - one masked binary frame */
static void
ws_send(int fd, const void *data, size_t len)
{
	unsigned char h[14], mask[4] = { 0x12, 0x34, 0x56, 0x78 };
	size_t hl = 0;
	h[hl++] = 0x82;
	if (len < 126) {
		h[hl++] = (unsigned char)(0x80 | len);
	} else {
		h[hl++] = 0x80 | 126;
		h[hl++] = (unsigned char)(len >> 8);
		h[hl++] = (unsigned char)len;
	}
	memcpy(h + hl, mask, 4);
	hl += 4;
	unsigned char *buf = malloc(hl + len);
	memcpy(buf, h, hl);
	for (size_t i = 0; i < len; i++)
		buf[hl + i] = ((const unsigned char *)data)[i] ^ mask[i % 4];
	ck_assert_int_eq(write(fd, buf, hl + len), (ssize_t)(hl + len));
	free(buf);
}

static int
read_full(int fd, void *p, size_t n)
{
	size_t got = 0;
	while (got < n) {
		ssize_t r = read(fd, (char *)p + got, n - got);
		if (r <= 0)
			return -1;
		got += (size_t)r;
	}
	return 0;
}

/* ws_recv - next binary frame decoded as a Frame (caller frees with
 * protobuf_c_message_free_unpacked); NULL on close or timeout */
static Frame *
ws_recv(int fd)
{
	for (;;) {
		unsigned char h[2], ext[8];
		uint64_t len;
		if (read_full(fd, h, 2) < 0)
			return NULL;
		len = h[1] & 0x7f;
		if (len == 126) {
			if (read_full(fd, ext, 2) < 0)
				return NULL;
			len = (uint64_t)ext[0] << 8 | ext[1];
		} else if (len == 127) {
			if (read_full(fd, ext, 8) < 0)
				return NULL;
			len = 0;
			for (int i = 0; i < 8; i++)
				len = len << 8 | ext[i];
		}
		unsigned char *p = malloc(len + 1);
		if (read_full(fd, p, len) < 0) {
			free(p);
			return NULL;
		}
		int op = h[0] & 0x0f;
		if (op == 0x8) {
			free(p);
			return NULL;
		}
		if (op != 0x2) {	/* ping, text: not what we wait for */
			free(p);
			continue;
		}
		ProtobufCMessage *m = NULL;
		enum cr_err e = env_unpack_msg(&clawrelay__v1__frame__descriptor, p, len, &m);
		free(p);
		ck_assert_int_eq(e, CR_OK);
		return (Frame *)m;
	}
}

/* ws_send_frame - pack and send f */
static void
ws_send_frame(int fd, Frame *f)
{
	uint8_t buf[4096];
	size_t len;
	f->schema_version = ENV_SCHEMA;
	ck_assert_int_eq(env_pack_into(&f->base, buf, sizeof(buf), &len), CR_OK);
	ws_send(fd, buf, len);
}

/* expect_error_frame - the next frame is an error with this code */
static void
expect_error_frame(int fd, const char *code)
{
	Frame *f = ws_recv(fd);
	ck_assert_msg(f != NULL, "no frame (wanted error %s)", code);
	ck_assert_msg(f->body_case == CLAWRELAY__V1__FRAME__BODY_ERROR, "frame %d, wanted error %s",
	    f->body_case, code);
	ck_assert_str_eq(f->error->code, code);
	protobuf_c_message_free_unpacked(&f->base, NULL);
}

START_TEST(malformed_frames)
{
	int status;
	/* a wrong proof on the upgrade: a complete HTTP 401, no socket */
	int fd = ws_open("mallory", "alice", &status);
	ck_assert_int_eq(status, 401);
	close(fd);

	/* garbage as the first frame */
	fd = ws_open("alice", "alice", &status);
	ck_assert_int_eq(status, 101);
	ws_send(fd, "\xff\xfe\x01garbage", 10);
	expect_error_frame(fd, "bad_frame");
	/* anything but reconnect first: an error and the socket is closed */
	Frame f = CLAWRELAY__V1__FRAME__INIT;
	Heartbeat hb = CLAWRELAY__V1__HEARTBEAT__INIT;
	f.body_case = CLAWRELAY__V1__FRAME__BODY_HEARTBEAT;
	f.heartbeat = &hb;
	ws_send_frame(fd, &f);
	expect_error_frame(fd, "reconnect_required");
	ck_assert_ptr_null(ws_recv(fd));	/* closed */
	close(fd);

	/* after a proper reconnect: bad frames get error frames, the socket lives on */
	fd = ws_open("alice", "alice", &status);
	ck_assert_int_eq(status, 101);
	Frame rf = CLAWRELAY__V1__FRAME__INIT;
	Reconnect rc = CLAWRELAY__V1__RECONNECT__INIT;
	rf.body_case = CLAWRELAY__V1__FRAME__BODY_RECONNECT;
	rf.reconnect = &rc;
	ws_send_frame(fd, &rf);
	Frame *ack = ws_recv(fd);
	ck_assert_ptr_nonnull(ack);
	ck_assert_int_eq(ack->body_case, CLAWRELAY__V1__FRAME__BODY_RECONNECT_ACK);
	protobuf_c_message_free_unpacked(&ack->base, NULL);
	ws_send(fd, "\x0a\xff\xff", 3);
	expect_error_frame(fd, "bad_frame");
	Frame ef = CLAWRELAY__V1__FRAME__INIT;	/* enqueue without an envelope */
	ef.body_case = CLAWRELAY__V1__FRAME__BODY_ENQUEUE;
	ef.enqueue = NULL;
	ef.request_id = 7;
	ws_send_frame(fd, &ef);
	Frame *r = ws_recv(fd);
	ck_assert_ptr_nonnull(r);
	/* either an error frame or an enqueue_ack carrying a 400 */
	if (r->body_case == CLAWRELAY__V1__FRAME__BODY_ENQUEUE_ACK)
		ck_assert_uint_eq(r->enqueue_ack->http_status, 400);
	else
		ck_assert_int_eq(r->body_case, CLAWRELAY__V1__FRAME__BODY_ERROR);
	protobuf_c_message_free_unpacked(&r->base, NULL);
	ws_send_frame(fd, &f);	/* a heartbeat still gets its answer */
	Frame *hack = ws_recv(fd);
	ck_assert_ptr_nonnull(hack);
	ck_assert_int_eq(hack->body_case, CLAWRELAY__V1__FRAME__BODY_HEARTBEAT_ACK);
	protobuf_c_message_free_unpacked(&hack->base, NULL);
	close(fd);
	ck_assert_int_eq(h_wait_ready(st.gw_port, 3000), 0);
}
END_TEST

START_TEST(malformed_bus_messages)
{
	struct bus *b = NULL;
	ck_assert_int_eq(bus_connect(st.nats_url, "itest", "clawrelay", &b), CR_OK);
	for (int i = 0; i < 200 && !bus_is_connected(b); i++)
		h_sleep_ms(20);
	char subj[128];
	/* garbage on every partition's enqueue subjects is answered: a single
	 * enqueue with ENQ_REJECTED, an enqueue_batch with no answers at all
	 * (the gateway then answers each of its frames 503) */
	for (int batch = 0; batch < 2; batch++) {
		int answered = 0;
		for (unsigned p = 0; p < 16; p++) {
			natsMsg *reply = NULL;
			bus_subj(b, subj, sizeof(subj), batch ? "session.%u.enqueue_batch" :
			    "session.%u.enqueue", p);
			if (bus_request(b, subj, "\xff\x01garbage", 9, 3000, &reply) != CR_OK)
				continue;
			ProtobufCMessage *m = NULL;
			if (batch) {
				ck_assert_int_eq(env_unpack_msg(
				    &clawrelay__v1__enqueue_batch_reply__descriptor,
				    natsMsg_GetData(reply), (size_t)natsMsg_GetDataLength(reply), &m),
				    CR_OK);
				ck_assert_uint_eq(((EnqueueBatchReply *)m)->n_replies, 0);
			} else {
				ck_assert_int_eq(env_unpack_msg(&clawrelay__v1__enqueue_reply__descriptor,
				    natsMsg_GetData(reply), (size_t)natsMsg_GetDataLength(reply), &m),
				    CR_OK);
				ck_assert_int_eq(((EnqueueReply *)m)->status,
				    CLAWRELAY__V1__ENQUEUE_STATUS__ENQ_REJECTED);
			}
			protobuf_c_message_free_unpacked(m, NULL);
			natsMsg_Destroy(reply);
			answered++;
		}
		ck_assert_int_eq(answered, 16);
	}
	/* a bad envelope in a good enqueue_batch is refused alone: the batch's
	 * other envelopes are queued, each answered in its place */
	{
		char rcpt[] = "batch-nobody", corr[] = "batch-corr", snd[] = "alice";
		char ct[] = "text/plain", badr[] = "bad recipient";	/* a space: not an agent ID */
		uint8_t one[] = "x";
		Envelope good = CLAWRELAY__V1__ENVELOPE__INIT, bad = CLAWRELAY__V1__ENVELOPE__INIT;
		Envelope *envs[3] = { &good, &bad, &good };
		EnqueueBatch eb = CLAWRELAY__V1__ENQUEUE_BATCH__INIT;
		void *wire = NULL;
		size_t wlen = 0;
		natsMsg *reply = NULL;
		ProtobufCMessage *m = NULL;

		good.schema_version = ENV_SCHEMA;
		good.correlation_id = corr;
		good.sender = snd;
		good.recipient = rcpt;
		good.content_type = ct;
		good.payload.data = one;
		good.payload.len = 1;
		bad = good;
		bad.recipient = badr;
		eb.schema_version = ENV_SCHEMA;
		eb.n_envelopes = 3;
		eb.envelopes = envs;
		ck_assert_int_eq(env_pack(&eb.base, &wire, &wlen), CR_OK);
		bus_subj(b, subj, sizeof(subj), "session.%u.enqueue_batch", partition_of(rcpt, 16));
		ck_assert_int_eq(bus_request(b, subj, wire, wlen, 5000, &reply), CR_OK);
		free(wire);
		ck_assert_int_eq(env_unpack_msg(&clawrelay__v1__enqueue_batch_reply__descriptor,
		    natsMsg_GetData(reply), (size_t)natsMsg_GetDataLength(reply), &m), CR_OK);
		EnqueueBatchReply *br = (EnqueueBatchReply *)m;
		ck_assert_uint_eq(br->n_replies, 3);
		ck_assert_int_eq(br->replies[0]->status, CLAWRELAY__V1__ENQUEUE_STATUS__ENQ_QUEUED);
		ck_assert_int_eq(br->replies[1]->status, CLAWRELAY__V1__ENQUEUE_STATUS__ENQ_REJECTED);
		ck_assert_int_eq(br->replies[2]->status, CLAWRELAY__V1__ENQUEUE_STATUS__ENQ_QUEUED);
		ck_assert_str_ne(br->replies[0]->message_id, br->replies[2]->message_id);
		protobuf_c_message_free_unpacked(m, NULL);
		natsMsg_Destroy(reply);
	}
	/* garbage hop events, receipts, dispatches: nobody crashes */
	static const char *const kinds[] = { "events.x", "receipt.alice", "receipts.x",
		"failure.alice", "delivery.dispatch", "session.0.connect", "session.0.enqueue_batch",
		"ws.bob" };
	for (size_t i = 0; i < sizeof(kinds) / sizeof(kinds[0]); i++) {
		bus_subj(b, subj, sizeof(subj), "%s", kinds[i]);
		for (int k = 0; k < 20; k++)
			bus_publish(b, subj, "\x0a\xff\xff\xff\xff\x0f", 6);
	}
	natsConnection_Flush(bus_nc_bulk(b));
	bus_free(b);
	h_sleep_ms(500);
	/* every process is still alive and ready */
	for (int i = 0; i < st.nprocs; i++) {
		if (st.procs[i].pid <= 0)
			continue;
		ck_assert_msg(kill(st.procs[i].pid, 0) == 0, "%s died", st.procs[i].name);
		if (st.procs[i].port > 0)
			ck_assert_msg(h_wait_ready(st.procs[i].port, 3000) == 0, "%s not ready", st.procs[i].name);
	}
}
END_TEST

int
main(void)
{
	Suite *s = suite_create("badinput");
	TCase *tc = tcase_create("refusals");
	tcase_set_timeout(tc, 120);
	tcase_add_unchecked_fixture(tc, setup, teardown);
	tcase_add_test(tc, proofs);
	tcase_add_test(tc, replays);
	tcase_add_test(tc, recipients);
	tcase_add_test(tc, dotted_id_reaches_only_its_own);
	tcase_add_test(tc, headers_and_sizes);
	tcase_add_test(tc, malformed_frames);
	tcase_add_test(tc, malformed_bus_messages);
	suite_add_tcase(s, tc);
	return it_run(s);
}
