/*
 * test_bus.c - the bus, the registry and hop batching against a real
 * nats-server (started on a free loopback port, stopped at the end):
 * requests (sync, async, no responders, timeouts), KV buckets, agent and
 * trust records for DIDs and dotted IDs, the cache serving stale entries
 * while NATS is down, hop events arriving in batches, none lost, and the
 * notice stream (created once, keeps plain publishes, drops a repeated
 * Nats-Msg-Id, limits set by its owner only) and the reserved sender ID.
 */
#include <arpa/inet.h>
#include <check.h>
#include <netinet/in.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include "bus.h"
#include "hop.h"
#include "registry.h"
#include "util.h"

static pid_t nats_pid;
static char nats_url[64], nats_dir[64];

static int
free_port(void)
{
	struct sockaddr_in a;
	socklen_t len = sizeof(a);
	int fd = socket(AF_INET, SOCK_STREAM, 0);
	memset(&a, 0, sizeof(a));
	a.sin_family = AF_INET;
	a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
	bind(fd, (struct sockaddr *)&a, sizeof(a));
	getsockname(fd, (struct sockaddr *)&a, &len);
	close(fd);
	return ntohs(a.sin_port);
}

static void
nats_start(void)
{
	char port[16];
	int p = free_port();
	snprintf(port, sizeof(port), "%d", p);
	snprintf(nats_url, sizeof(nats_url), "nats://127.0.0.1:%d", p);
	snprintf(nats_dir, sizeof(nats_dir), "/tmp/clawrelay-bustest-XXXXXX");
	ck_assert_ptr_nonnull(mkdtemp(nats_dir));
	nats_pid = fork();
	if (nats_pid == 0) {
		freopen("/dev/null", "w", stdout);
		freopen("/dev/null", "w", stderr);
		execlp("nats-server", "nats-server", "-js", "-a", "127.0.0.1", "-p", port, "-sd",
		    nats_dir, (char *)NULL);
		_exit(127);
	}
	usleep(400000);
}

static void
nats_stop(void)
{
	char cmd[128];
	if (nats_pid > 0) {
		/* a failed test may have left it stopped: wake it, then end it */
		kill(nats_pid, SIGCONT);
		kill(nats_pid, SIGTERM);
		for (int i = 0; i < 50 && waitpid(nats_pid, NULL, WNOHANG) == 0; i++)
			usleep(100000);
		if (waitpid(nats_pid, NULL, WNOHANG) == 0) {
			kill(nats_pid, SIGKILL);
			waitpid(nats_pid, NULL, 0);
		}
		nats_pid = 0;
	}
	snprintf(cmd, sizeof(cmd), "rm -rf %s", nats_dir);
	if (system(cmd) != 0)
		fprintf(stderr, "could not remove %s\n", nats_dir);
}

static struct bus *
connect_bus(void)
{
	struct bus *b = NULL;
	ck_assert_int_eq(bus_connect(nats_url, "test", "clawrelay", &b), CR_OK);
	for (int i = 0; i < 100 && !bus_is_connected(b); i++)
		usleep(20000);
	ck_assert(bus_is_connected(b));
	return b;
}

static void
echo(void *arg, natsMsg *m)
{
	struct bus *b = arg;
	bus_reply(b, m, natsMsg_GetData(m), (size_t)natsMsg_GetDataLength(m));
}

static _Atomic int async_ok, async_unavail, async_timeout;

static void
on_reply(void *arg, enum cr_err err, natsMsg *m)
{
	if (err == CR_OK && m && natsMsg_GetDataLength(m) == (int)strlen(arg))
		async_ok++;
	else if (err == CR_ERR_UNAVAILABLE)
		async_unavail++;
	else if (err == CR_ERR_TIMEOUT)
		async_timeout++;
}

static void
silent(void *arg, natsMsg *m)
{
}

START_TEST(requests)
{
	struct bus *b = connect_bus();
	natsMsg *r = NULL;
	char subj[128];
	ck_assert_int_gt(bus_subj(b, subj, sizeof(subj), "echo.%d", 1), 0);
	ck_assert_str_eq(subj, "clawrelay.echo.1");
	ck_assert_int_eq(bus_subscribe(b, subj, "q", echo, b), CR_OK);
	ck_assert_int_eq(bus_subscribe(b, "clawrelay.silent", NULL, silent, NULL), CR_OK);
	natsConnection_Flush(bus_nc(b));

	ck_assert_int_eq(bus_request(b, subj, "ping", 4, 2000, &r), CR_OK);
	ck_assert_int_eq(natsMsg_GetDataLength(r), 4);
	natsMsg_Destroy(r);
	ck_assert_int_eq(bus_request(b, "clawrelay.nobody", "x", 1, 2000, &r), CR_ERR_UNAVAILABLE);
	ck_assert_int_eq(bus_request(b, "clawrelay.silent", "x", 1, 200, &r), CR_ERR_TIMEOUT);

	/* a window of async requests: every one answered exactly once */
	static char payload[] = "hello";
	for (int i = 0; i < 2000; i++)
		ck_assert_int_eq(bus_request_async(b, subj, payload, 5, 5000, on_reply, payload), CR_OK);
	for (int i = 0; i < 20; i++)
		ck_assert_int_eq(bus_request_async(b, "clawrelay.nobody", "x", 1, 5000, on_reply, payload), CR_OK);
	for (int i = 0; i < 10; i++)
		ck_assert_int_eq(bus_request_async(b, "clawrelay.silent", "x", 1, 300, on_reply, payload), CR_OK);
	for (int i = 0; i < 200 && async_ok + async_unavail + async_timeout < 2030; i++)
		usleep(20000);
	ck_assert_int_eq(async_ok, 2000);
	ck_assert_int_eq(async_unavail, 20);
	ck_assert_int_eq(async_timeout, 10);
	ck_assert_uint_eq(bus_pending_requests(b), 0);
	bus_free(b);
}
END_TEST

struct seen {
	int n;
	char ids[8][200];
};

static void
list_agent(void *arg, const struct reg_agent *a)
{
	struct seen *s = arg;
	if (s->n < 8)
		snprintf(s->ids[s->n], sizeof(s->ids[0]), "%s", a->id);
	s->n++;
}

/* wait until pid's state is T (stopped); 0, or -1 after timeout_ms */
static int
wait_stopped(pid_t pid, int timeout_ms)
{
	char path[64], buf[256];

	snprintf(path, sizeof(path), "/proc/%d/stat", (int)pid);
	for (int t = 0; t < timeout_ms; t += 5) {
		FILE *f = fopen(path, "r");
		char *p = NULL;

		if (f != NULL) {
			if (fgets(buf, sizeof(buf), f) != NULL)
				p = strrchr(buf, ')');
			fclose(f);
		}
		if (p != NULL && p[1] == ' ' && (p[2] == 'T' || p[2] == 't'))
			return 0;
		usleep(5000);
	}
	return -1;
}

START_TEST(registry)
{
	struct bus *b = connect_bus();
	kvStore *kv = NULL;
	struct reg_agent a, got;
	struct reg_trust t = { 10, 120, 5 }, tg;
	ck_assert_int_eq(reg_open(b, &kv), CR_OK);
	static const char *const ids[] = { "did:cdi:example.com:agent:01J", "team.bob", "team", "u@h+x" };
	for (size_t i = 0; i < 4; i++) {
		memset(&a, 0, sizeof(a));
		snprintf(a.id, sizeof(a.id), "%s", ids[i]);
		memset(a.pubkey, (int)i + 1, 32);
		if (i == 1)
			snprintf(a.webhook_url, sizeof(a.webhook_url), "http://127.0.0.1:9/hook");
		ck_assert_int_eq(reg_agent_put(kv, &a), CR_OK);
	}
	for (size_t i = 0; i < 4; i++) {
		ck_assert_int_eq(reg_agent_get(kv, ids[i], &got), CR_OK);
		ck_assert_str_eq(got.id, ids[i]);
		ck_assert_int_eq(got.pubkey[31], (int)i + 1);
	}
	ck_assert_int_eq(reg_agent_get(kv, "team.bob", &got), CR_OK);
	ck_assert_str_eq(got.webhook_url, "http://127.0.0.1:9/hook");
	ck_assert_int_eq(reg_agent_get(kv, "team.bo", &got), CR_ERR_NOT_FOUND);
	struct seen s = { 0 };
	ck_assert_int_eq(reg_agent_list(kv, list_agent, &s), CR_OK);
	ck_assert_int_eq(s.n, 4);

	/* trust is directional and per pair */
	ck_assert_int_eq(reg_trust_put(kv, "team", "team.bob", &t), CR_OK);
	ck_assert_int_eq(reg_trust_get(kv, "team", "team.bob", &tg), CR_OK);
	ck_assert_uint_eq(tg.rate_per_min, 120);
	ck_assert_int_eq(reg_trust_get(kv, "team.bob", "team", &tg), CR_ERR_NOT_FOUND);
	ck_assert_int_eq(reg_trust_get(kv, "team", "team", &tg), CR_ERR_NOT_FOUND);

	/* the cache: hits, then stale entries while NATS is down */
	struct reg_cache *c = reg_cache_new(kv, 0);	/* ttl 0: always revalidate */
	ck_assert_int_eq(reg_cache_agent(c, "team.bob", &got), CR_OK);
	ck_assert_int_eq(reg_cache_trust(c, "team", "team.bob", &tg), CR_OK);
	ck_assert_int_eq(reg_cache_agent(c, "nobody", &got), CR_ERR_NOT_FOUND);
	/* the registry stops answering; results are checked after it is woken,
	 * so a failing check cannot leave it stopped */
	kill(nats_pid, SIGSTOP);
	/* kill() returns before the stop takes effect: on a busy machine the
	 * server could still answer the next request (seen once) */
	int stopped = wait_stopped(nats_pid, 2000);
	memset(&got, 0, sizeof(got));
	enum cr_err stale_agent = reg_cache_agent(c, "team.bob", &got);
	enum cr_err stale_trust = reg_cache_trust(c, "team", "team.bob", &tg);
	struct reg_agent other;
	enum cr_err unknown = reg_cache_agent(c, "did:cdi:example.com:agent:01J", &other);
	kill(nats_pid, SIGCONT);
	ck_assert_msg(stopped == 0, "nats-server did not stop");
	ck_assert_msg(stale_agent == CR_OK, "stale agent: %s", cr_strerror(stale_agent));
	ck_assert_str_eq(got.id, "team.bob");
	ck_assert_msg(stale_trust == CR_OK, "stale trust: %s", cr_strerror(stale_trust));
	ck_assert_msg(unknown == CR_ERR_UNAVAILABLE, "uncached agent: %s", cr_strerror(unknown));
	/* wait until the bus is back before the next test uses it */
	for (int i = 0; i < 100 && !bus_is_connected(b); i++)
		usleep(50000);
	reg_cache_free(c);

	ck_assert_int_eq(reg_trust_del(kv, "team", "team.bob"), CR_OK);
	ck_assert_int_eq(reg_trust_get(kv, "team", "team.bob", &tg), CR_ERR_NOT_FOUND);
	ck_assert_int_eq(reg_agent_del(kv, "team"), CR_OK);
	ck_assert_int_eq(reg_agent_get(kv, "team", &got), CR_ERR_NOT_FOUND);
	ck_assert_int_eq(reg_agent_get(kv, "team.bob", &got), CR_OK);
	bus_free(b);
}
END_TEST

static _Atomic int hop_events, hop_batches;

static void
on_batch(void *arg, natsMsg *m)
{
	ProtobufCMessage *pm = NULL;
	if (env_unpack_msg(&clawrelay__v1__hop_batch__descriptor, natsMsg_GetData(m),
	    (size_t)natsMsg_GetDataLength(m), &pm) != CR_OK)
		return;
	HopBatch *hb = (HopBatch *)pm;
	/* the process's own events leave service and instance to the batch */
	if (strcmp(hb->service, "unittest") == 0 && strcmp(hb->instance, "u1") == 0)
		for (size_t i = 0; i < hb->n_events; i++)
			if (hb->events[i]->service[0] == '\0' &&
			    hb->events[i]->hop == CLAWRELAY__V1__HOP_KIND__HOP_DISPATCHED &&
			    hb->events[i]->ts_us > 0)
				hop_events++;
	hop_batches++;
	protobuf_c_message_free_unpacked(pm, NULL);
}

START_TEST(hop_batching)
{
	struct bus *b = connect_bus(), *sub = connect_bus();
	ck_assert_int_eq(bus_subscribe(sub, "clawrelay.events.unittest", NULL, on_batch, NULL), CR_OK);
	natsConnection_Flush(bus_nc(sub));
	hop_init(b, "unittest", "u1");
	for (int i = 0; i < 5000; i++)
		hop_emit_ids("corr", "01ARZ3NDEKTSV4RRFFQ69G5FAV", "a", "b", NULL,
		    CLAWRELAY__V1__HOP_KIND__HOP_DISPATCHED, "ok", "detail");
	hop_init(NULL, "unittest", "u1");	/* flushes what is pending */
	natsConnection_Flush(bus_nc_bulk(b));
	for (int i = 0; i < 100 && hop_events < 5000; i++)
		usleep(20000);
	ck_assert_int_eq(hop_events, 5000);
	/* many events per bus message */
	ck_assert_int_lt(hop_batches, 500);
	bus_free(sub);
	bus_free(b);
}
END_TEST

static uint64_t
stream_msgs(struct bus *b, const char *name, int64_t *max_age_ns)
{
	jsStreamInfo *si = NULL;
	uint64_t n;

	ck_assert_int_eq(js_GetStreamInfo(&si, bus_js(b), name, NULL, NULL), NATS_OK);
	n = si->State.Msgs;
	if (max_age_ns != NULL)
		*max_age_ns = si->Config->MaxAge;
	jsStreamInfo_Destroy(si);
	return n;
}

START_TEST(notice_stream)
{
	struct bus *b = connect_bus(), *p = NULL;
	struct bus_stream_limits lim = { 3600 * 1000, 1 << 20, 1000, 1000, 1 };
	struct reg_agent a;
	kvStore *kv = NULL;
	char name[96], subj[128];
	int64_t age = 0;

	ck_assert_int_gt(bus_notice_stream_name(b, name, sizeof(name)), 0);
	ck_assert_str_eq(name, "CLAWRELAY_NOTICES");
	ck_assert_int_eq(bus_connect(nats_url, "test", "prod.cr-1", &p), CR_OK);
	ck_assert_int_gt(bus_notice_stream_name(p, name, sizeof(name)), 0);
	ck_assert_str_eq(name, "PROD_CR-1_NOTICES");
	ck_assert_int_eq(bus_notice_stream_name(b, name, 10), -1);
	bus_free(p);

	/* created once, with the defaults; a second call changes nothing */
	ck_assert_int_eq(bus_notice_stream(b, NULL), CR_OK);
	ck_assert_int_eq(bus_notice_stream(b, NULL), CR_OK);
	ck_assert_uint_eq(stream_msgs(b, "CLAWRELAY_NOTICES", &age), 0);
	ck_assert(age == BUS_NOTICE_MAX_AGE_MS * 1000000LL);

	/* plain publishes are kept; a repeated Nats-Msg-Id is kept once */
	ck_assert_int_gt(bus_subj(b, subj, sizeof(subj), "failure.alice"), 0);
	ck_assert_int_eq(bus_publish(b, subj, "x", 1), CR_OK);
	ck_assert_int_eq(bus_notice_publish(b, "delayed", "a.b", "M1", "y", 1), CR_OK);
	ck_assert_int_eq(bus_notice_publish(b, "delayed", "a.b", "M1", "y", 1), CR_OK);
	ck_assert_int_eq(bus_subj(b, subj, sizeof(subj), "notify.failure.alice") > 0, 1);
	ck_assert_int_eq(bus_publish(b, subj, "z", 1), CR_OK);	/* not a stream subject */
	natsConnection_Flush(bus_nc_bulk(b));
	usleep(200000);
	ck_assert_uint_eq(stream_msgs(b, "CLAWRELAY_NOTICES", NULL), 2);

	/* the owner's limits win; others leave an existing stream alone */
	ck_assert_int_eq(bus_notice_stream(b, &lim), CR_OK);
	stream_msgs(b, "CLAWRELAY_NOTICES", &age);
	ck_assert(age == 3600LL * 1000 * 1000000LL);
	ck_assert_int_eq(bus_notice_stream(b, NULL), CR_OK);
	stream_msgs(b, "CLAWRELAY_NOTICES", &age);
	ck_assert(age == 3600LL * 1000 * 1000000LL);
	/* replicas a lone server cannot have: refused or clamped, never an error */
	lim.replicas = 3;
	ck_assert_int_eq(bus_notice_stream(b, &lim), CR_OK);
	ck_assert_uint_eq(stream_msgs(b, "CLAWRELAY_NOTICES", NULL), 2);

	/* the relay's own sender ID cannot be registered */
	ck_assert_int_eq(reg_open(b, &kv), CR_OK);
	memset(&a, 0, sizeof(a));
	snprintf(a.id, sizeof(a.id), "%s", ENV_SYSTEM_SENDER);
	ck_assert_int_eq(reg_agent_put(kv, &a), CR_ERR_INVALID);
	ck_assert_int_eq(reg_agent_get(kv, ENV_SYSTEM_SENDER, &a), CR_ERR_NOT_FOUND);
	ck_assert_int_eq(reg_trust_put(kv, ENV_SYSTEM_SENDER, "alice", NULL), CR_ERR_INVALID);
	ck_assert_int_eq(reg_trust_put(kv, "alice", ENV_SYSTEM_SENDER, NULL), CR_ERR_INVALID);
	bus_free(b);
}
END_TEST

int
main(void)
{
	Suite *s = suite_create("bus");
	TCase *tc = tcase_create("nats");
	tcase_set_timeout(tc, 60);
	tcase_add_unchecked_fixture(tc, nats_start, nats_stop);
	tcase_add_test(tc, requests);
	tcase_add_test(tc, registry);
	tcase_add_test(tc, hop_batching);
	tcase_add_test(tc, notice_stream);
	suite_add_tcase(s, tc);
	SRunner *sr = srunner_create(s);
	srunner_set_fork_status(sr, CK_NOFORK);
	srunner_run_all(sr, CK_NORMAL);
	int failed = srunner_ntests_failed(sr);
	srunner_free(sr);
	nats_CloseAndWait(2000);
	return failed ? 1 : 0;
}
