/*
 * itest_storefull.c - relay-session's data directory runs out of space, then
 * gets space back.
 *
 * The data directory is a small tmpfs (the test mounts it: it runs as root,
 * as CI does). Once a filler file takes the rest of the space, a message
 * that needs new pages is refused with 503 + Retry-After (never a 202), and
 * until writes succeed again relay-session's /readyz is 503, its /v1/status
 * names the partition and the store's error, and its metric counts it. When
 * the filler is removed, relay-session finds out by itself (no traffic
 * needed): /readyz is 200 again, the error is gone, and messages are
 * accepted and delivered.
 */
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mount.h>
#include <sys/stat.h>
#include <unistd.h>

#include "it_common.h"

static struct h_stack st;
static char mnt[400], filler[460];
static int mounted;

static void
setup(void)
{
	h_stack_init(&st, "storefull");
	/* relay-session's data directory (h_start_services: <dir>/relay-session) */
	snprintf(mnt, sizeof(mnt), "%s/relay-session", st.dir);
	snprintf(filler, sizeof(filler), "%s/filler", mnt);
	ck_assert_int_eq(mkdir(mnt, 0755), 0);
	if (mount("tmpfs", mnt, "tmpfs", 0, "size=24m") != 0) {
		fprintf(stderr, "storefull: mount tmpfs on %s: %s (this test needs root)\n", mnt,
		    strerror(errno));
		ck_abort_msg("cannot mount a tmpfs for the data directory");
	}
	mounted = 1;
	h_nats_start(&st);
	static const char *const env[] = { "CLAWRELAY_MAP_SIZE_MB=64", NULL };
	h_start_services(&st, env);
	h_agent(&st, "alice", NULL);
	h_agent(&st, "bob", NULL);
	h_trust(&st, "alice", "bob");
}

static void
teardown(void)
{
	/* lazily: relay-session still has its files open until h_stop_all */
	if (mounted && umount2(mnt, MNT_DETACH) != 0)
		fprintf(stderr, "storefull: umount %s: %s\n", mnt, strerror(errno));
	h_stop_all(&st);
}

/* fill - write the tmpfs full; the bytes written */
static long
fill(void)
{
	static char chunk[64 * 1024];
	int fd = open(filler, O_WRONLY | O_CREAT | O_TRUNC, 0644);
	long n = 0;
	ssize_t w;

	ck_assert_int_ge(fd, 0);
	memset(chunk, 'f', sizeof(chunk));
	while ((w = write(fd, chunk, sizeof(chunk))) > 0)
		n += w;
	/* the last partial pages too */
	while ((w = write(fd, chunk, 512)) > 0)
		n += w;
	ck_assert_int_eq(errno, ENOSPC);
	close(fd);
	return n;
}

static cJSON *
rs_status(int port)
{
	char url[96];
	struct h_resp r;
	snprintf(url, sizeof(url), "http://127.0.0.1:%d/v1/status", port);
	ck_assert_int_eq(h_http("GET", url, NULL, NULL, 0, &r), 0);
	ck_assert_int_eq((int)r.status, 200);
	cJSON *j = cJSON_Parse(r.body.data);
	h_resp_free(&r);
	ck_assert_ptr_nonnull(j);
	return j;
}

static long
rs_get(int port, const char *path, struct strbuf *body)
{
	char url[128];
	struct h_resp r;
	snprintf(url, sizeof(url), "http://127.0.0.1:%d%s", port, path);
	ck_assert_int_eq(h_http("GET", url, NULL, NULL, 0, &r), 0);
	long status = r.status;
	if (body != NULL)
		sb_append(body, r.body.data ? r.body.data : "", r.body.len);
	h_resp_free(&r);
	return status;
}

START_TEST(full_then_space_again)
{
	struct h_proc *rs = h_find(&st, "relay-session");
	ck_assert_ptr_nonnull(rs);
	ck_assert_int_eq(rs_get(rs->port, "/readyz", NULL), 200);

	struct h_resp r;
	ck_assert_int_eq(h_send(&st, "alice", "bob", "before", 6, NULL, &r), 0);
	ck_assert_msg(r.status == 202, "before the disk filled: %ld %s", r.status, r.body.data);
	h_resp_free(&r);

	long filled = fill();
	ck_assert_int_gt(filled, 0);

	/* a body that needs fresh pages cannot be committed */
	static char big[256 * 1024];
	memset(big, 'x', sizeof(big));
	ck_assert_int_eq(h_send(&st, "alice", "bob", big, sizeof(big), NULL, &r), 0);
	ck_assert_msg(r.status == 503, "a message the store could not take answered %ld: %s",
	    r.status, r.body.data);
	ck_assert_ptr_nonnull(h_header(&r, "Retry-After"));
	h_resp_free(&r);

	/* relay-session says so until writes succeed again */
	ck_assert_int_eq(rs_get(rs->port, "/readyz", NULL), 503);
	cJSON *j = rs_status(rs->port);
	ck_assert_int_ge((int)it_jnum(j, "storeFailing"), 1);
	cJSON *errs = cJSON_GetObjectItem(j, "storeErrors");
	ck_assert_int_ge(cJSON_GetArraySize(errs), 1);
	const char *why = cJSON_GetStringValue(cJSON_GetObjectItem(cJSON_GetArrayItem(errs, 0), "error"));
	ck_assert_msg(why != NULL && strstr(why, "No space left") != NULL, "store error: %s",
	    why ? why : "(none)");
	ck_assert(it_jnum(cJSON_GetArrayItem(errs, 0), "sinceMs") > 1e12);	/* unix ms */
	cJSON_Delete(j);
	struct strbuf m;
	sb_init(&m);
	ck_assert_int_eq(rs_get(rs->port, "/metrics", &m), 200);
	const char *g = strstr(m.data, "\nclawrelay_session_store_failing ");
	ck_assert_msg(g != NULL && atoi(g + strlen("\nclawrelay_session_store_failing ")) >= 1,
	    "no failing store in the metrics");
	sb_free(&m);
	/* the probe keeps failing while the disk is full: still not ready */
	h_sleep_ms(1500);
	ck_assert_int_eq(rs_get(rs->port, "/readyz", NULL), 503);

	/* space again: relay-session notices without any traffic */
	ck_assert_int_eq(unlink(filler), 0);
	int ready = 0;
	for (int i = 0; i < 100 && !ready; i++) {
		ready = rs_get(rs->port, "/readyz", NULL) == 200;
		if (!ready)
			h_sleep_ms(100);
	}
	ck_assert_msg(ready, "relay-session never became ready again once space was back");
	j = rs_status(rs->port);
	ck_assert_int_eq((int)it_jnum(j, "storeFailing"), 0);
	ck_assert_int_eq(cJSON_GetArraySize(cJSON_GetObjectItem(j, "storeErrors")), 0);
	cJSON_Delete(j);

	/* and takes messages (the gateway's partition breaker may need its probe) */
	long status = 0;
	for (int i = 0; i < 100 && status != 202; i++) {
		ck_assert_int_eq(h_send(&st, "alice", "bob", big, sizeof(big), NULL, &r), 0);
		status = r.status;
		ck_assert_msg(status == 202 || status == 503, "after recovery: %ld %s", status,
		    r.body.data);
		h_resp_free(&r);
		if (status != 202)
			h_sleep_ms(100);
	}
	ck_assert_int_eq(status, 202);

	/* both accepted messages reach bob: nothing half-written was kept */
	char hook[400], hook_url[128];
	int port = it_hook(&st, "hook-bob", hook, sizeof(hook), NULL);
	snprintf(hook_url, sizeof(hook_url), "http://127.0.0.1:%d/hook", port);
	it_connector(&st, "bob", hook_url);
	ck_assert_int_eq(h_wait_lines(hook, 2, 30000), 2);
	int n;
	cJSON **v = it_lines(hook, &n);
	ck_assert_int_eq(n, 2);
	ck_assert_str_eq(cJSON_GetObjectItem(v[0], "body")->valuestring, "before");
	ck_assert_int_eq(cJSON_GetObjectItem(v[1], "bytes")->valueint, (int)sizeof(big));
	it_lines_free(v, n);
}
END_TEST

int
main(void)
{
	Suite *s = suite_create("storefull");
	TCase *tc = tcase_create("data directory full");
	tcase_set_timeout(tc, 120);
	tcase_add_unchecked_fixture(tc, setup, teardown);
	tcase_add_test(tc, full_then_space_again);
	suite_add_tcase(s, tc);
	return it_run(s);
}
