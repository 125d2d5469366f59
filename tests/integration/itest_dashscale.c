/*
 * itest_dashscale.c - the dashboard at scale: 1,000 agents and a day of
 * history, fed through the collector's real input path.
 *
 * Only nats-server and the metrics-collector run. The test publishes into
 * the hop stream what the services would have published over the last
 * 24 h (the wire format of common/hop.c: HopBatch protobuf on
 * <P>.events.<service>, stats JSON on <P>.stats.<service>, each event and
 * stats object carrying its own time, so the collector files it in the
 * minute it happened):
 *   - DS_MSGS messages spread evenly over DS_SPAN_MIN minutes, between
 *     DS_AGENTS agents (a sender and a recipient chosen so that an hour
 *     holds thousands of distinct peer pairs); each message makes a
 *     gateway_accepted hop and then a delivered hop (latency 20-200 ms)
 *     or, every DS_FAIL_EVERY-th, relay-session's failed hop "expired";
 *   - gateway stats every DS_STATS_MIN minutes from DS_GATEWAYS gateways,
 *     each listing its share of the agents' sockets and an auth failure;
 *     in the last round DS_GONE agents are no longer listed;
 *   - relay-session stats every minute with queue gauges for 16
 *     partitions x 3 lanes.
 * Then what a user notices, with bounds about 3x what was measured on the
 * project's 2-core machine (README, "Dashboard at scale"):
 *   1. every /v1/metrics/... answer comes within DS_API_MS and DS_API_BYTES,
 *      and its numbers are what was sent (1,000 connectors, the day's
 *      messages, failures, pair count); the connectors and pairs answers
 *      are a page with totals, a filter and an order; a day's series has at
 *      most 300 points; the collector holds the day in DS_RSS_MB, and a
 *      second of live stats (4 gateways listing 1,000 sockets) costs it
 *      less than DS_LIVE_CPU_PCT of a core;
 *   2. the dashboard in headless Chromium loads within DS_PAGE_MS (its own
 *      refresh within DS_REFRESH_MS, never more than one refresh's requests
 *      in flight), fills every panel, shows a page of the big tables with
 *      their totals, and its numbers equal the JSON API's; a screenshot
 *      goes to build/artifacts/dashscale.png;
 *   3. the collector restarts within DS_RESTART_MS on the day of history
 *      and still shows all of it, counting nothing twice;
 *   4. a collector whose store is too small for the day's traces
 *      (64 MiB) reads the day: the oldest traces go before their time, the
 *      newest stay, and every count is still there (no commit failed).
 */
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <fcntl.h>
#include <time.h>
#include <unistd.h>

#include <nats/nats.h>

#include "env.h"
#include "it_common.h"

#define DS_AGENTS 1000
#define DS_GATEWAYS 4
#define DS_GONE 10                  /* agents whose sockets are gone at the end */
#define DS_SPAN_MIN 1430            /* a day less ten minutes: the test's own run time */
#define DS_MSGS_PER_MIN 120         /* DASHSCALE_MSGS_PER_MIN overrides (to measure) */
#define DS_MSGS (DS_SPAN_MIN * msgs_per_min)
#define DS_FAIL_EVERY 25
#define DS_STATS_MIN 10
#define DS_BATCH 400                /* hop events per HopBatch (hop.c sends up to 64 KiB) */
#define DS_PARTS 16

/* bounds: about 3x what was measured (README, "Dashboard at scale"), times
 * slow: 3 for a sanitizer build (CLAWRELAY_BIN .../bin-san-...), 10 under
 * valgrind (CLAWRELAY_TEST_VALGRIND) */
#define DS_API_MS 200               /* each /v1/metrics answer (<= 36 ms; 65 loaded) */
#define DS_API_BYTES (64 * 1024)    /* each answer (the largest, connectors: 39 KB) */
#define DS_PAGE_MS 12000            /* chromium start + load + render (0.9-4 s) */
#define DS_REFRESH_MS 1000          /* the page's own refresh (30-430 ms) */
#define DS_RESTART_MS 2000          /* restart to ready on the day (0.1-0.7 s) */
#define DS_CATCHUP_MS 60000
#define DS_RSS_MB 240               /* the collector holding the day (77-88 MiB) */
#define DS_LIVE_S 8
#define DS_LIVE_CPU_PCT 6           /* live stats of 1,000 sockets (1.0-2.0 %) */

static struct h_stack st;
static struct h_proc *mc;
static int mc_port;
static char mc_url[64];
static uint64_t t0_ms;              /* "now" when the day was made */
static int want_pairs;              /* distinct (hour, sender, recipient) */
static int want_auth, want_queue;
static int msgs_per_min = DS_MSGS_PER_MIN;
static long long day_bytes;         /* the day's store, as the first case found it */
static int slow = 1;                /* 3 for a sanitizer build, 10 under valgrind */

static uint64_t
mono_us(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000000u + (uint64_t)ts.tv_nsec / 1000u;
}

static double
ms_since(uint64_t start)
{
	return (double)(mono_us() - start) / 1000.0;
}

static void
start_collector(void)
{
	char data[400];
	const char *env[] = { data, "CLAWRELAY_MC_NOSYNC=1", NULL };

	snprintf(data, sizeof(data), "CLAWRELAY_DATA_DIR=%s/metrics-collector", st.dir);
	mc = h_spawn(&st, "metrics-collector", "clawrelay-metrics-collector", mc_port, env, NULL);
}

static void
setup(void)
{
	if (getenv("DASHSCALE_MSGS_PER_MIN") != NULL)
		msgs_per_min = atoi(getenv("DASHSCALE_MSGS_PER_MIN"));
	ck_assert_msg(msgs_per_min > 0 && msgs_per_min <= 1000, "DASHSCALE_MSGS_PER_MIN 1..1000");
	if (getenv("CLAWRELAY_BIN") != NULL && strstr(getenv("CLAWRELAY_BIN"), "bin-san") != NULL)
		slow = 3;
	if (getenv("CLAWRELAY_TEST_VALGRIND") != NULL)
		slow = 10;	/* the collector runs under valgrind */
	h_stack_init(&st, "dashscale");
	h_nats_start(&st);
	mc_port = h_free_port();
	snprintf(mc_url, sizeof(mc_url), "http://127.0.0.1:%d", mc_port);
	start_collector();
}

static void
teardown(void)
{
	h_stop_all(&st);
}

static void
agent_name(char *out, size_t sz, int i)
{
	snprintf(out, sz, "agent-%04d", i);
}

/* --- publishing, as common/hop.c does --- */

struct pub {
	natsConnection *nc;
	jsCtx *js;
	long long n;
};

static void
pub_open(struct pub *p)
{
	jsOptions jo;

	memset(p, 0, sizeof(*p));
	ck_assert_int_eq(natsConnection_ConnectTo(&p->nc, st.nats_url), NATS_OK);
	jsOptions_Init(&jo);
	jo.PublishAsync.MaxPending = 4096;
	ck_assert_int_eq(natsConnection_JetStream(&p->js, p->nc, &jo), NATS_OK);
}

static void
pub_send(struct pub *p, const char *subj, const void *data, size_t len)
{
	ck_assert_int_eq(js_PublishAsync(p->js, subj, data, (int)len, NULL), NATS_OK);
	p->n++;
}

static void
pub_close(struct pub *p)
{
	jsPubOptions po;

	jsPubOptions_Init(&po);
	po.MaxWait = 30000;
	ck_assert_int_eq(js_PublishAsyncComplete(p->js, &po), NATS_OK);
	jsCtx_Destroy(p->js);
	natsConnection_Destroy(p->nc);
}

struct hops {
	HopEvent ev[DS_BATCH];
	HopEvent *evp[DS_BATCH];
	char ids[DS_BATCH][2][32];
	char who[DS_BATCH][2][24];
	size_t n;
};

static void
hops_flush(struct pub *p, struct hops *h)
{
	HopBatch b = CLAWRELAY__V1__HOP_BATCH__INIT;
	void *buf = NULL;
	size_t len = 0;

	if (h->n == 0)
		return;
	b.schema_version = ENV_SCHEMA;
	b.events = h->evp;
	b.n_events = h->n;
	ck_assert_int_eq(env_pack(&b.base, &buf, &len), CR_OK);
	pub_send(p, "clawrelay.events.gateway", buf, len);
	free(buf);
	h->n = 0;
}

static void
hop_add(struct pub *p, struct hops *h, long k, int s, int r, Clawrelay__V1__HopKind kind,
    uint64_t ts_us, const char *svc, const char *outcome, const char *detail)
{
	HopEvent *e = &h->ev[h->n];

	clawrelay__v1__hop_event__init(e);
	snprintf(h->ids[h->n][0], sizeof(h->ids[0][0]), "ds-%ld", k);
	snprintf(h->ids[h->n][1], sizeof(h->ids[0][1]), "m-%ld", k);
	agent_name(h->who[h->n][0], sizeof(h->who[0][0]), s);
	agent_name(h->who[h->n][1], sizeof(h->who[0][1]), r);
	e->schema_version = ENV_SCHEMA;
	e->correlation_id = h->ids[h->n][0];
	e->message_id = h->ids[h->n][1];
	e->hop = kind;
	e->ts_us = ts_us;
	e->ts_ms = ts_us / 1000;
	e->service = (char *)(uintptr_t)svc;
	e->instance = (char *)(uintptr_t)"ds-1";
	e->outcome = (char *)(uintptr_t)outcome;
	e->detail = (char *)(uintptr_t)detail;
	e->sender = h->who[h->n][0];
	e->recipient = h->who[h->n][1];
	h->evp[h->n] = e;
	if (++h->n == DS_BATCH)
		hops_flush(p, h);
}

/* the gateway stats of gateway g at ts: its agents' sockets, one auth failure */
static void
gateway_stats(struct pub *p, int g, uint64_t ts, int last)
{
	cJSON *o = cJSON_CreateObject(), *x, *socks, *c, *row;
	char inst[16], name[24], *txt;

	snprintf(inst, sizeof(inst), "gw-%d", g);
	cJSON_AddNumberToObject(o, "v", 1);
	cJSON_AddStringToObject(o, "service", "gateway");
	cJSON_AddStringToObject(o, "instance", inst);
	cJSON_AddNumberToObject(o, "ts_ms", (double)ts);
	c = cJSON_AddArrayToObject(o, "c");
	row = cJSON_CreateArray();
	cJSON_AddItemToArray(row, cJSON_CreateString("clawrelay_gateway_auth_failures_total"));
	cJSON_AddItemToArray(row, cJSON_CreateString("code=\"bad_proof\""));
	cJSON_AddItemToArray(row, cJSON_CreateNumber(1));
	cJSON_AddItemToArray(c, row);
	x = cJSON_AddObjectToObject(o, "x");
	socks = cJSON_AddArrayToObject(x, "sockets");
	for (int a = g; a < DS_AGENTS; a += DS_GATEWAYS) {
		cJSON *s;
		if (last && a >= DS_AGENTS - DS_GONE)
			continue;
		s = cJSON_CreateObject();
		agent_name(name, sizeof(name), a);
		cJSON_AddStringToObject(s, "agent", name);
		/* every 7th agent's socket is a day old, the others came back an hour ago */
		cJSON_AddNumberToObject(s, "since_ms", (double)(a % 7 == 0 ?
		    t0_ms - (uint64_t)DS_SPAN_MIN * 60000 : t0_ms - 3600000));
		cJSON_AddItemToArray(socks, s);
	}
	txt = cJSON_PrintUnformatted(o);
	pub_send(p, "clawrelay.stats.gateway", txt, strlen(txt));
	free(txt);
	cJSON_Delete(o);
	want_auth++;
}

/* relay-session's stats at ts: queue gauges of DS_PARTS partitions x 3 lanes */
static void
session_stats(struct pub *p, uint64_t ts, int minute)
{
	static const char *const lanes[] = { "critical", "normal", "low" };
	cJSON *o = cJSON_CreateObject(), *g;
	char labels[64], *txt;
	int depth = 0;

	cJSON_AddNumberToObject(o, "v", 1);
	cJSON_AddStringToObject(o, "service", "relay-session");
	cJSON_AddStringToObject(o, "instance", "rs-1");
	cJSON_AddNumberToObject(o, "ts_ms", (double)ts);
	g = cJSON_AddArrayToObject(o, "g");
	for (int part = 0; part < DS_PARTS; part++) {
		for (int l = 0; l < 3; l++) {
			cJSON *row = cJSON_CreateArray();
			int v = (part * 3 + l + minute) % 9;
			snprintf(labels, sizeof(labels), "partition=\"%d\",lane=\"%s\"", part, lanes[l]);
			cJSON_AddItemToArray(row, cJSON_CreateString("clawrelay_queue_messages"));
			cJSON_AddItemToArray(row, cJSON_CreateString(labels));
			cJSON_AddItemToArray(row, cJSON_CreateNumber(v));
			cJSON_AddItemToArray(g, row);
			depth += v;
		}
	}
	txt = cJSON_PrintUnformatted(o);
	pub_send(p, "clawrelay.stats.relay-session", txt, strlen(txt));
	free(txt);
	cJSON_Delete(o);
	want_queue = depth;
}

static int
pair_cmp(const void *a, const void *b)
{
	long long x = *(const long long *)a, y = *(const long long *)b;
	return x < y ? -1 : x > y;
}

/* a day of traffic, stats and sockets into the stream */
static void
publish_day(void)
{
	static struct hops h;
	struct pub p;
	long long *pairs = calloc(DS_MSGS, sizeof(*pairs));
	uint64_t start = t0_ms - (uint64_t)DS_SPAN_MIN * 60000;
	long k = 0;

	ck_assert_ptr_nonnull(pairs);
	pub_open(&p);
	for (int mi = 0; mi < DS_SPAN_MIN; mi++) {
		uint64_t minute = start + (uint64_t)mi * 60000;
		minute -= minute % 60000;
		for (int j = 0; j < msgs_per_min; j++, k++) {
			/* 1,000 agents: a sender and a recipient that make thousands of pairs an hour */
			int s = (int)((k * 7) % DS_AGENTS), r = (int)((k * 13 + k / DS_AGENTS + 1) % DS_AGENTS);
			uint64_t ts = (minute + (uint64_t)j * 59000 / (uint64_t)msgs_per_min) * 1000;
			if (r == s)
				r = (r + 1) % DS_AGENTS;
			pairs[k] = (long long)((minute / 3600000) * DS_AGENTS + (uint64_t)s) * DS_AGENTS + r;
			hop_add(&p, &h, k, s, r, CLAWRELAY__V1__HOP_KIND__HOP_GATEWAY_ACCEPTED, ts,
			    "gateway", "ok", "");
			if (k % DS_FAIL_EVERY == 0)
				hop_add(&p, &h, k, s, r, CLAWRELAY__V1__HOP_KIND__HOP_FAILED, ts + 500000,
				    "relay-session", "error", "expired");
			else
				hop_add(&p, &h, k, s, r, CLAWRELAY__V1__HOP_KIND__HOP_DELIVERED,
				    ts + 20000 + (uint64_t)(k % 10) * 20000, "gateway", "ok", "");
		}
		session_stats(&p, minute + 30000, mi);
		if (mi % DS_STATS_MIN == 0 || mi == DS_SPAN_MIN - 1)
			for (int g = 0; g < DS_GATEWAYS; g++)
				gateway_stats(&p, g, minute + 45000, mi == DS_SPAN_MIN - 1);
	}
	hops_flush(&p, &h);
	pub_close(&p);
	qsort(pairs, DS_MSGS, sizeof(*pairs), pair_cmp);
	want_pairs = 0;
	for (long i = 0; i < DS_MSGS; i++)
		want_pairs += i == 0 || pairs[i] != pairs[i - 1];
	free(pairs);
}

/* the collector's resident memory (KiB) and CPU time (ms) so far */
static void
proc_usage(pid_t pid, long *rss_kb, double *cpu_ms)
{
	char path[64], buf[1024], *p;
	unsigned long ut = 0, stt = 0;
	FILE *f;

	*rss_kb = -1;
	*cpu_ms = -1;
	snprintf(path, sizeof(path), "/proc/%d/status", (int)pid);
	if ((f = fopen(path, "r")) != NULL) {
		while (fgets(buf, sizeof(buf), f) != NULL)
			if (strncmp(buf, "VmRSS:", 6) == 0)
				*rss_kb = atol(buf + 6);
		fclose(f);
	}
	snprintf(path, sizeof(path), "/proc/%d/stat", (int)pid);
	if ((f = fopen(path, "r")) != NULL) {
		/* after the command's ")": state is field 3, utime 14, stime 15 */
		if (fgets(buf, sizeof(buf), f) != NULL && (p = strrchr(buf, ')')) != NULL &&
		    sscanf(p + 2, "%*c %*d %*d %*d %*d %*d %*u %*u %*u %*u %*u %lu %lu", &ut, &stt) == 2)
			*cpu_ms = (double)(ut + stt) * 1000.0 / (double)sysconf(_SC_CLK_TCK);
		fclose(f);
	}
}

/* DS_LIVE_S seconds of what a live day looks like to the collector once a
 * second: every gateway's stats with its sockets, relay-session's gauges;
 * the collector's CPU share meanwhile */
static double
live_cpu_pct(void)
{
	struct pub p;
	long rss;
	double cpu0, cpu1;
	uint64_t t = mono_us();

	proc_usage(mc->pid, &rss, &cpu0);
	pub_open(&p);
	for (int s = 0; s < DS_LIVE_S; s++) {
		uint64_t now = now_ms();
		for (int g = 0; g < DS_GATEWAYS; g++)
			gateway_stats(&p, g, now, 1);
		session_stats(&p, now, DS_SPAN_MIN + s);
		h_sleep_ms(1000);
	}
	pub_close(&p);
	proc_usage(mc->pid, &rss, &cpu1);
	return 100.0 * (cpu1 - cpu0) / ms_since(t);
}

/* --- reading --- */

/* GET url: JSON (caller deletes) or NULL; its time and size */
static cJSON *
get_timed(const char *path, double *ms, size_t *bytes)
{
	char url[512];
	struct h_resp r;
	cJSON *j = NULL;
	uint64_t t = mono_us();

	snprintf(url, sizeof(url), "%s%s", mc_url, path);
	if (h_http("GET", url, NULL, NULL, 0, &r) == 0 && r.status == 200)
		j = cJSON_Parse(r.body.data);
	if (j == NULL)
		fprintf(stderr, "dashscale: GET %s: %ld %.200s\n", path, r.status,
		    r.body.data ? r.body.data : "");
	*ms = ms_since(t);
	*bytes = r.body.len;
	h_resp_free(&r);
	return j;
}


/* wait until the collector applied everything in the stream */
static double
wait_caught_up(int timeout_ms)
{
	uint64_t t = mono_us();
	double ms;
	size_t bytes;

	for (;;) {
		cJSON *s = get_timed("/v1/metrics/summary?window=86400", &ms, &bytes);
		int done = s != NULL && it_jnum(s, "messages.in") == DS_MSGS &&
		    it_jnum(s, "messages.out") + it_jnum(s, "messages.failed") == DS_MSGS &&
		    it_jnum(s, "connectors.known") == DS_AGENTS &&
		    it_jnum(s, "connectors.connected") == DS_AGENTS - DS_GONE &&
		    it_jnum(s, "authFailures.total") == want_auth;
		cJSON_Delete(s);
		if (done)
			return ms_since(t);
		ck_assert_msg(ms_since(t) < timeout_ms, "the collector did not catch up in %d ms",
		    timeout_ms);
		h_sleep_ms(200);
	}
}

/* the day's numbers in a 24 h summary */
static void
check_summary(const cJSON *s)
{
	const int fails = (DS_MSGS + DS_FAIL_EVERY - 1) / DS_FAIL_EVERY;

	ck_assert_int_eq((int)it_jnum(s, "messages.in"), DS_MSGS);
	ck_assert_int_eq((int)it_jnum(s, "messages.out"), DS_MSGS - fails);
	ck_assert_int_eq((int)it_jnum(s, "messages.failed"), fails);
	ck_assert_int_eq((int)it_jnum(s, "messages.failedByReason.expired"), fails);
	ck_assert_int_eq((int)it_jnum(s, "latency.count"), DS_MSGS - fails);
	ck_assert_int_eq((int)it_jnum(s, "connectors.known"), DS_AGENTS);
	ck_assert_int_eq((int)it_jnum(s, "connectors.connected"), DS_AGENTS - DS_GONE);
	ck_assert_int_eq((int)it_jnum(s, "authFailures.total"), want_auth);
	ck_assert_int_eq((int)it_jnum(s, "queue.depth"), want_queue);
	/* latencies were 20..200 ms */
	ck_assert_msg(it_jnum(s, "latency.p50Ms") > 10 && it_jnum(s, "latency.p99Ms") <= 250,
	    "p50 %g p99 %g", it_jnum(s, "latency.p50Ms"), it_jnum(s, "latency.p99Ms"));
}

struct endpoint {
	const char *path;
	double ms;
	size_t bytes;
};

static struct endpoint eps[] = {
	{ "/v1/metrics/summary?window=86400", 0, 0 },
	{ "/v1/metrics/series?window=86400&step=300", 0, 0 },
	{ "/v1/metrics/latency?window=86400", 0, 0 },
	{ "/v1/metrics/pairs?hours=24&limit=100&sort=failed", 0, 0 },
	{ "/v1/metrics/pairs?hours=24&limit=100&q=agent-0042", 0, 0 },
	{ "/v1/metrics/pairs?hours=24&limit=100", 0, 0 },
	{ "/v1/metrics/connectors?limit=200", 0, 0 },
	{ "/v1/metrics/connectors?limit=200&sort=uptime&q=agent-0", 0, 0 },
	{ "/v1/metrics/failures?limit=50", 0, 0 },
	{ "/v1/metrics/breakers", 0, 0 },
};
#define NEPS (sizeof(eps) / sizeof(eps[0]))

START_TEST(a_day_of_a_thousand_agents)
{
	uint64_t t;
	double ms, catchup;
	size_t bytes;
	cJSON *j;

	t0_ms = now_ms();
	t = mono_us();
	publish_day();
	fprintf(stderr, "dashscale: published %d messages (%d hops), %d pair-hours in %.0f ms\n",
	    DS_MSGS, 2 * DS_MSGS, want_pairs, ms_since(t));
	catchup = wait_caught_up(DS_CATCHUP_MS);
	{
		/* the store: every hop of the day (kept TRACE_RETENTION_H) and the rollups */
		char path[512];
		struct stat sb;
		h_sleep_ms(500);	/* the last flush */
		snprintf(path, sizeof(path), "%s/metrics-collector/data.mdb", st.dir);
		ck_assert_int_eq(stat(path, &sb), 0);
		fprintf(stderr, "dashscale: the collector caught up %.0f ms after the last publish; "
		    "its store holds the day in %lld MiB (%lld bytes a hop)\n", catchup,
		    (long long)sb.st_blocks * 512 / 1048576,
		    (long long)sb.st_blocks * 512 / (2LL * DS_MSGS));
		day_bytes = (long long)sb.st_blocks * 512;
	}

	/* 1. every answer: time, size, numbers (the slowest of three tries counts) */
	for (size_t i = 0; i < NEPS; i++) {
		for (int rep = 0; rep < 3; rep++) {
			j = get_timed(eps[i].path, &ms, &bytes);
			ck_assert_msg(j != NULL, "%s: no JSON", eps[i].path);
			cJSON_Delete(j);
			if (ms > eps[i].ms)
				eps[i].ms = ms;
			eps[i].bytes = bytes;
		}
		fprintf(stderr, "dashscale: %-48s %7.1f ms %8zu bytes\n", eps[i].path, eps[i].ms,
		    eps[i].bytes);
	}
	for (size_t i = 0; i < NEPS; i++) {
		ck_assert_msg(eps[i].ms < DS_API_MS * slow, "%s took %.0f ms (bound %d)", eps[i].path,
		    eps[i].ms, DS_API_MS * slow);
		ck_assert_msg(eps[i].bytes < DS_API_BYTES, "%s is %zu bytes (bound %d)", eps[i].path,
		    eps[i].bytes, DS_API_BYTES);
	}
	j = get_timed("/v1/metrics/summary?window=86400", &ms, &bytes);
	check_summary(j);
	cJSON_Delete(j);

	/* memory for the day, and CPU while the stats of 1,000 sockets go on arriving */
	{
		long rss;
		double cpu, live = live_cpu_pct();
		proc_usage(mc->pid, &rss, &cpu);
		fprintf(stderr, "dashscale: the collector holds the day in %ld MiB; live stats cost "
		    "it %.1f %% of a core\n", rss / 1024, live);
		ck_assert_msg(rss > 0 && rss < DS_RSS_MB * 1024L * slow, "RSS %ld KiB (bound %d MiB)",
		    rss, DS_RSS_MB * slow);
		ck_assert_msg(live >= 0 && live < DS_LIVE_CPU_PCT * slow, "live stats cost %.1f %% of a "
		    "core (bound %d)", live, DS_LIVE_CPU_PCT * slow);
		j = get_timed("/v1/metrics/summary?window=86400", &ms, &bytes);
		check_summary(j);
		cJSON_Delete(j);
	}

	/* the series of a day: a bounded number of points, and they add up */
	j = get_timed("/v1/metrics/series?window=86400&step=60", &ms, &bytes);
	{
		cJSON *tt = cJSON_GetObjectItem(j, "t"), *in = cJSON_GetObjectItem(j, "inPerS"), *e;
		double step = it_jnum(j, "stepS"), sum = 0;
		ck_assert_msg(cJSON_GetArraySize(tt) <= 300, "%d points for a day",
		    cJSON_GetArraySize(tt));
		cJSON_ArrayForEach(e, in)
			sum += e->valuedouble * step;
		/* rates are rounded to 1/1000 per second */
		ck_assert_msg(sum > DS_MSGS * 0.99 && sum < DS_MSGS * 1.01, "the series sums to %g, "
		    "not %d", sum, DS_MSGS);
		ck_assert_msg(cJSON_GetArraySize(cJSON_GetObjectItem(j, "queueSeries")) <= 12,
		    "the series carries %d queue series", cJSON_GetArraySize(cJSON_GetObjectItem(j,
		    "queueSeries")));
	}
	cJSON_Delete(j);

	/* connectors: a page of them, the totals, a filter */
	j = get_timed("/v1/metrics/connectors?limit=200", &ms, &bytes);
	ck_assert_int_eq((int)it_jnum(j, "known"), DS_AGENTS);
	ck_assert_int_eq((int)it_jnum(j, "connected"), DS_AGENTS - DS_GONE);
	ck_assert_int_eq((int)it_jnum(j, "total"), DS_AGENTS);
	ck_assert_int_eq(cJSON_GetArraySize(cJSON_GetObjectItem(j, "connectors")), 200);
	cJSON_Delete(j);
	j = get_timed("/v1/metrics/connectors?limit=200&sort=state", &ms, &bytes);
	{
		/* disconnected first when sorted by state */
		cJSON *first = cJSON_GetArrayItem(cJSON_GetObjectItem(j, "connectors"), 0);
		ck_assert(cJSON_IsFalse(cJSON_GetObjectItem(first, "connected")));
	}
	cJSON_Delete(j);
	j = get_timed("/v1/metrics/connectors?limit=200&q=agent-099", &ms, &bytes);
	ck_assert_int_eq((int)it_jnum(j, "total"), 10);
	ck_assert_int_eq(cJSON_GetArraySize(cJSON_GetObjectItem(j, "connectors")), 10);
	cJSON_Delete(j);

	/* pairs: the total of the day's pair-hours, a page of them, the sums, a
	 * filter (hours=25: the day's 1430 minutes touch 25 clock hours) */
	j = get_timed("/v1/metrics/pairs?hours=25&limit=100", &ms, &bytes);
	ck_assert_int_eq((int)it_jnum(j, "total"), want_pairs);
	ck_assert_int_eq(cJSON_GetArraySize(cJSON_GetObjectItem(j, "pairs")), 100);
	cJSON_Delete(j);
	j = get_timed("/v1/metrics/pairs?hours=25&limit=100&sort=failed", &ms, &bytes);
	{
		cJSON *e;
		double tot = it_jnum(j, "delivered") + it_jnum(j, "failed"), prev = 1e18;
		ck_assert_msg(tot == DS_MSGS, "the pairs add up to %g, not %d", tot, DS_MSGS);
		ck_assert_int_eq(cJSON_GetArraySize(cJSON_GetObjectItem(j, "pairs")), 100);
		/* most failures first */
		cJSON_ArrayForEach(e, cJSON_GetObjectItem(j, "pairs")) {
			ck_assert(it_jnum(e, "failed") <= prev);
			prev = it_jnum(e, "failed");
		}
		ck_assert_msg(it_jnum(cJSON_GetArrayItem(cJSON_GetObjectItem(j, "pairs"), 0), "failed") > 0,
		    "the pair with most failures has none");
	}
	cJSON_Delete(j);
	/* a filter finds one agent's pairs among them all */
	j = get_timed("/v1/metrics/pairs?hours=25&limit=1000&q=agent-0042", &ms, &bytes);
	{
		cJSON *e;
		ck_assert_msg(it_jnum(j, "total") > 0 && it_jnum(j, "total") < want_pairs, "filtered total %g",
		    it_jnum(j, "total"));
		cJSON_ArrayForEach(e, cJSON_GetObjectItem(j, "pairs"))
			ck_assert(strcmp(cJSON_GetObjectItem(e, "sender")->valuestring, "agent-0042") == 0 ||
			    strcmp(cJSON_GetObjectItem(e, "recipient")->valuestring, "agent-0042") == 0);
	}
	cJSON_Delete(j);
}
END_TEST


/* an attribute's value after `after` in dom, as a number; -1 when absent */
static double
dom_attr(const char *dom, const char *after, const char *attr)
{
	char pat[64];
	const char *p = strstr(dom, after), *end;

	if (p == NULL || (end = strchr(p, '>')) == NULL)
		return -1;
	snprintf(pat, sizeof(pat), "%s=\"", attr);
	if ((p = strstr(p, pat)) == NULL || p > end)
		return -1;
	return strtod(p + strlen(pat), NULL);
}

/* count of needle in the part of hay from `from` to the next `to` */
static int
count_between(const char *hay, const char *from, const char *to, const char *needle)
{
	const char *p = strstr(hay, from), *e;
	int n = 0;

	if (p == NULL || (e = strstr(p, to)) == NULL)
		return -1;
	while ((p = strstr(p + 1, needle)) != NULL && p < e)
		n++;
	return n;
}


START_TEST(the_dashboard_of_a_day)
{
	const char *dir = getenv("CLAWRELAY_ARTIFACTS") ? getenv("CLAWRELAY_ARTIFACTS") : "build/artifacts";
	char url[256], path[512], shot[600];
	struct strbuf dom;
	double ms, page_ms, refresh_ms;
	size_t bytes;
	uint64_t t;
	cJSON *s;
	static const char *const keys[] = { "messages.in", "messages.out", "messages.failed",
		"messages.successRate", "latency.p50Ms", "latency.p99Ms", "latency.count", "queue.depth",
		"connectors.connected", "connectors.known", "authFailures.total" };

	snprintf(url, sizeof(url), "%s/?window=86400", mc_url);
	sb_init(&dom);
	t = mono_us();
	{
		const char *args[] = { "--virtual-time-budget=4000", "--window-size=1400,1900",
			"--dump-dom", url, NULL };
		ck_assert_msg(it_chromium(&st, &dom, args) == 0, "chromium failed (is it installed? make deps)");
	}
	page_ms = ms_since(t);
	ck_assert_msg(strstr(dom.data, "data-loaded=\"1\"") != NULL, "the page never loaded its data");
	refresh_ms = dom_attr(dom.data, "<body", "data-refresh-ms");
	fprintf(stderr, "dashscale: chromium loaded the 24 h dashboard in %.0f ms (its refresh: "
	    "%.0f ms, %.0f requests, %.0f bytes)\n", page_ms, refresh_ms,
	    dom_attr(dom.data, "<body", "data-requests"), dom_attr(dom.data, "<body", "data-bytes"));
	ck_assert_msg(page_ms < DS_PAGE_MS * slow, "the page took %.0f ms (bound %d)", page_ms,
	    DS_PAGE_MS * slow);
	ck_assert_msg(refresh_ms >= 0 && refresh_ms < DS_REFRESH_MS * slow, "a refresh took %.0f ms "
	    "(bound %d)", refresh_ms, DS_REFRESH_MS * slow);
	/* one refresh at a time: never more requests in flight than one refresh makes */
	ck_assert_msg(dom_attr(dom.data, "<body", "data-max-inflight") >= 1 &&
	    dom_attr(dom.data, "<body", "data-max-inflight") <= 6, "%.0f requests in flight at once",
	    dom_attr(dom.data, "<body", "data-max-inflight"));

	/* every number equals the API's */
	s = get_timed("/v1/metrics/summary?window=86400", &ms, &bytes);
	ck_assert_ptr_nonnull(s);
	check_summary(s);
	it_assert_dom_numbers(dom.data, s, keys, sizeof(keys) / sizeof(keys[0]));
	cJSON_Delete(s);
	/* every panel is filled: each chart has a line, the tables have rows */
	{
		static const char *const charts[] = { "id=\"ch-rate\"", "id=\"ch-success\"",
			"id=\"ch-latency\"", "id=\"ch-queue\"", "id=\"ch-parts\"" };
		for (size_t i = 0; i < sizeof(charts) / sizeof(charts[0]); i++)
			ck_assert_msg(count_between(dom.data, charts[i], "</svg>", "<path") > 0,
			    "chart %s is empty", charts[i]);
	}
	/* the big tables: a page of rows, the totals named */
	ck_assert_msg(dom_attr(dom.data, "id=\"connectors\"", "data-total") == DS_AGENTS,
	    "the connectors table does not say %d", DS_AGENTS);
	ck_assert_int_eq(count_between(dom.data, "id=\"connectors\"", "</table>", "<tr>") - 1, 200);
	ck_assert_msg(dom_attr(dom.data, "id=\"pairs\"", "data-total") > 0, "no pairs total");
	ck_assert_int_eq(count_between(dom.data, "id=\"pairs\"", "</table>", "<tr>") - 1, 100);
	ck_assert_int_eq(count_between(dom.data, "id=\"failures\"", "</table>", "<tr>") - 1, 50);
	sb_free(&dom);

	mkdir("build", 0755);
	mkdir(dir, 0755);
	snprintf(shot, sizeof(shot), "--screenshot=%s/dashscale.png", dir);
	{
		const char *args[] = { "--virtual-time-budget=4000", "--run-all-compositor-stages-before-draw",
			"--window-size=1400,1900", shot, url, NULL };
		struct stat sb;
		ck_assert_int_eq(it_chromium(&st, NULL, args), 0);
		snprintf(path, sizeof(path), "%s/dashscale.png", dir);
		ck_assert(stat(path, &sb) == 0 && sb.st_size > 10000);
	}
}
END_TEST

START_TEST(a_restart_keeps_the_day)
{
	uint64_t t;
	double ms, restart_ms;
	size_t bytes;
	cJSON *s;

	h_kill(mc, SIGTERM);
	t = mono_us();
	start_collector();
	restart_ms = ms_since(t);
	fprintf(stderr, "dashscale: the collector restarted on a day of history in %.0f ms\n",
	    restart_ms);
	ck_assert_msg(restart_ms < DS_RESTART_MS * slow, "restart took %.0f ms (bound %d)", restart_ms,
	    DS_RESTART_MS * slow);
	ck_assert_ptr_nonnull(strstr(mc->log, "metrics-collector"));
	s = get_timed("/v1/metrics/summary?window=86400", &ms, &bytes);
	ck_assert_ptr_nonnull(s);
	check_summary(s);
	cJSON_Delete(s);
	/* nothing re-applied a moment later */
	h_sleep_ms(1500);
	s = get_timed("/v1/metrics/summary?window=86400", &ms, &bytes);
	check_summary(s);
	ck_assert_int_eq((int)it_jnum(s, "collector.skipped"), 0);
	cJSON_Delete(s);
	s = get_timed("/v1/metrics/pairs?hours=25&limit=1", &ms, &bytes);
	ck_assert_int_eq((int)it_jnum(s, "total"), want_pairs);
	cJSON_Delete(s);
}
END_TEST

/* GET path of the collector: its status code */
static long
get_status(const char *path)
{
	char url[512];
	struct h_resp r;
	long code = -1;

	snprintf(url, sizeof(url), "%s%s", mc_url, path);
	if (h_http("GET", url, NULL, NULL, 0, &r) == 0)
		code = r.status;
	h_resp_free(&r);
	return code;
}

START_TEST(a_small_store_keeps_counting)
{
	char data[400];
	const char *env[] = { data, "CLAWRELAY_MC_NOSYNC=1", "CLAWRELAY_MAP_SIZE_MB=64", NULL };
	char path[64];
	double ms;
	size_t bytes;
	cJSON *s;

	/* a collector whose store (64 MiB, the least it takes) is too small
	 * for the day's traces (~96 MiB) reads the whole stream from the start */
	h_kill(mc, SIGTERM);
	snprintf(data, sizeof(data), "CLAWRELAY_DATA_DIR=%s/metrics-collector-small", st.dir);
	mc = h_spawn(&st, "metrics-collector-small", "clawrelay-metrics-collector", mc_port, env,
	    NULL);
	wait_caught_up(DS_CATCHUP_MS * slow);
	/* every count is there: the oldest traces made room, no commit failed */
	s = get_timed("/v1/metrics/summary?window=86400", &ms, &bytes);
	ck_assert_ptr_nonnull(s);
	check_summary(s);
	cJSON_Delete(s);
	s = get_timed("/v1/status", &ms, &bytes);
	ck_assert_ptr_nonnull(s);
	fprintf(stderr, "dashscale: 64 MiB store: %.0f hops kept, %.0f dropped early, %.1f of "
	    "%.1f MiB used, %.0f store errors\n", it_jnum(s, "store.hops"), it_jnum(s, "store.swept"),
	    it_jnum(s, "store.usedBytes") / 1048576, it_jnum(s, "store.mapBytes") / 1048576,
	    it_jnum(s, "events.storeErrors"));
	ck_assert_int_eq((int)it_jnum(s, "events.storeErrors"), 0);
	ck_assert(it_jnum(s, "store.usedBytes") < 0.8 * it_jnum(s, "store.mapBytes"));
	/* the day at the default rate (96 MiB) must make room; a smaller day
	 * (DASHSCALE_MSGS_PER_MIN, to measure) may fit */
	if (day_bytes > 40LL << 20) {
		ck_assert_int_ge((int)it_jnum(s, "store.fullSweeps"), 1);
		ck_assert_int_gt((int)it_jnum(s, "store.swept"), 0);
	}
	cJSON_Delete(s);
	/* the newest traces are kept, the oldest went */
	snprintf(path, sizeof(path), "/v1/traces/ds-%ld", (long)DS_MSGS - 1);
	for (int i = 0; i < 50 && get_status(path) != 200; i++)
		h_sleep_ms(100);	/* the last flush */
	ck_assert_int_eq(get_status(path), 200);
	if (day_bytes > 40LL << 20)
		ck_assert_int_eq(get_status("/v1/traces/ds-0"), 404);
	s = get_timed("/v1/status", &ms, &bytes);
	ck_assert_ptr_nonnull(s);
	ck_assert_int_eq((int)it_jnum(s, "events.storeErrors"), 0);
	cJSON_Delete(s);
}
END_TEST

int
main(void)
{
	Suite *s = suite_create("dashscale");
	TCase *tc = tcase_create("dashscale");
	tcase_set_timeout(tc, 300);
	tcase_add_unchecked_fixture(tc, setup, teardown);
	tcase_add_test(tc, a_day_of_a_thousand_agents);
	tcase_add_test(tc, the_dashboard_of_a_day);
	tcase_add_test(tc, a_restart_keeps_the_day);
	tcase_add_test(tc, a_small_store_keeps_counting);
	suite_add_tcase(s, tc);
	return it_run(s);
}
