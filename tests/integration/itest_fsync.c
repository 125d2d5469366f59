/*
 * itest_fsync.c - a 202 means the commit reached the disk, meta page too.
 *
 * relay-session runs under strace (every thread, descriptors shown with
 * their paths). For each message answered 202, the reply that carries its
 * message ID leaves relay-session only when every LMDB data file is clean:
 * nothing was written to it since its last completed sync, where a sync is
 * an fdatasync/fsync that returned, or a write through a descriptor opened
 * O_DSYNC (how LMDB writes the meta page when it syncs it). With
 * MDB_NOMETASYNC the meta page is written after the data's fdatasync and
 * only synced by the next commit, so the reply would leave with the file
 * dirty: a power cut could undo a group that was answered 202.
 */
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "it_common.h"

#define N       20
#define NFILES  64
#define NPIDS   256

static struct h_stack st;
static char trace_path[400];

static void
setup(void)
{
	static char o_arg[420];
	static const char *argv[] = { "strace", "-f", "-qq", "-y", "-s", "65536",
		"-e", "trace=openat,close,pwrite64,pwritev,write,writev,sendto,sendmsg,fdatasync,fsync",
		"-o", o_arg, NULL };

	h_stack_init(&st, "fsync");
	snprintf(trace_path, sizeof(trace_path), "%s/relay-session.strace", st.dir);
	snprintf(o_arg, sizeof(o_arg), "%s", trace_path);
	st.wrap_name = "relay-session";
	st.wrap_argv = argv;
	h_nats_start(&st);
	static const char *const env[] = { "CLAWRELAY_FSYNC=1", NULL };
	h_start_services(&st, env);
	h_agent(&st, "alice", NULL);
	h_agent(&st, "bob", NULL);
	h_trust(&st, "alice", "bob");
}

static void
teardown(void)
{
	h_stop_all(&st);
}

/* the sync state of one LMDB data file, and which descriptors are O_DSYNC */
struct dfile {
	char path[300];
	int dirty;
	long writes, syncs;
};
static struct dfile files[NFILES];
static int nfiles;
static char dsync_fd[1024];

/* what one thread's unfinished call was, for its "resumed" line */
struct pending {
	int pid;
	char call[16];
	int fd;
	struct dfile *f;
};
static struct pending pend[NPIDS];

static struct dfile *
dfile_of(const char *path, size_t n)
{
	for (int i = 0; i < nfiles; i++)
		if (strlen(files[i].path) == n && strncmp(files[i].path, path, n) == 0)
			return &files[i];
	ck_assert_int_lt(nfiles, NFILES);
	ck_assert_int_lt((int)n, (int)sizeof(files[0].path));
	memcpy(files[nfiles].path, path, n);
	files[nfiles].path[n] = '\0';
	return &files[nfiles++];
}

/* the data.mdb a call's first argument names ("7</dir/p3/data.mdb>"), or NULL */
static struct dfile *
arg_file(const char *args, int *fd)
{
	const char *lt = strchr(args, '<'), *gt;
	*fd = atoi(args);
	if (lt == NULL || (gt = strchr(lt, '>')) == NULL || gt - lt < 9 ||
	    strncmp(gt - 8, "data.mdb", 8) != 0)
		return NULL;
	return dfile_of(lt + 1, (size_t)(gt - lt - 1));
}

static struct pending *
pend_of(int pid)
{
	for (int i = 0; i < NPIDS; i++)
		if (pend[i].pid == pid || pend[i].pid == 0) {
			pend[i].pid = pid;
			return &pend[i];
		}
	ck_abort_msg("more than %d threads", NPIDS);
	return NULL;
}

static int
is_write(const char *call)
{
	return strcmp(call, "pwrite64") == 0 || strcmp(call, "pwritev") == 0 ||
	    strcmp(call, "write") == 0 || strcmp(call, "writev") == 0;
}

/* a call on a data file finished: a sync or an O_DSYNC write cleans it */
static void
finished(const char *call, int fd, struct dfile *f, long ret)
{
	if (f == NULL || ret < 0)
		return;
	if (strcmp(call, "fdatasync") == 0 || strcmp(call, "fsync") == 0 ||
	    (is_write(call) && fd >= 0 && fd < (int)sizeof(dsync_fd) && dsync_fd[fd])) {
		f->dirty = 0;
		f->syncs++;
	}
}

/* check_reply - a reply is leaving: every data file must be clean */
static void
check_reply(const char *id, int line)
{
	for (int i = 0; i < nfiles; i++)
		ck_assert_msg(!files[i].dirty,
		    "line %d: the reply for %s left while %s had writes not yet synced",
		    line, id, files[i].path);
}

START_TEST(reply_after_full_sync)
{
	char ids[N][64];
	for (int i = 0; i < N; i++) {
		struct h_resp r;
		char body[32];
		snprintf(body, sizeof(body), "fsync-%d", i);
		ck_assert_int_eq(h_send(&st, "alice", "bob", body, strlen(body), NULL, &r), 0);
		ck_assert_msg(r.status == 202, "message %d answered %ld: %s", i, r.status, r.body.data);
		cJSON *j = cJSON_Parse(r.body.data);
		ck_assert_ptr_nonnull(j);
		snprintf(ids[i], sizeof(ids[i]), "%s",
		    cJSON_GetStringValue(cJSON_GetObjectItem(j, "messageId")));
		ck_assert_int_eq((int)strlen(ids[i]), 26);
		cJSON_Delete(j);
		h_resp_free(&r);
	}
	/* strace writes its log as calls finish; every reply was answered, so
	 * its line is there once the log holds the last message's ID */
	struct strbuf sb;
	int tries;
	for (tries = 0; tries < 200; tries++) {
		sb_init(&sb);
		if (h_read_file(trace_path, &sb) == 0 && strstr(sb.data, ids[N - 1]) != NULL)
			break;
		sb_free(&sb);
		h_sleep_ms(100);
	}
	ck_assert_msg(tries < 200, "the trace never showed the reply for %s", ids[N - 1]);
	sb_free(&sb);

	FILE *fp = fopen(trace_path, "r");
	ck_assert_ptr_nonnull(fp);
	char *ln = NULL;
	size_t cap = 0;
	int seen[N] = { 0 }, lineno = 0;
	long writes = 0, syncs = 0;
	while (getline(&ln, &cap, fp) > 0) {
		lineno++;
		int pid;
		char call[16];
		int off = 0;
		if (sscanf(ln, "%d <... %15[a-z0-9_] resumed>%n", &pid, call, &off) == 2 && off > 0) {
			struct pending *p = pend_of(pid);
			const char *eq = strrchr(ln, '=');
			if (strcmp(p->call, call) == 0)
				finished(call, p->fd, p->f, eq ? atol(eq + 1) : -1);
			p->call[0] = '\0';
			continue;
		}
		if (sscanf(ln, "%d %15[a-z0-9_](%n", &pid, call, &off) != 2 || off == 0)
			continue;
		const char *args = ln + off;
		int unfinished = strstr(ln, "<unfinished ...>") != NULL;
		const char *eq = unfinished ? NULL : strrchr(ln, '=');
		long ret = eq ? atol(eq + 1) : -1;
		if (strcmp(call, "openat") == 0) {
			/* openat(AT_FDCWD, "/dir/p3/data.mdb", O_RDWR|O_DSYNC...) = 7</dir/p3/data.mdb> */
			if (strstr(args, "data.mdb\"") && strstr(args, "O_DSYNC") && ret >= 0 &&
			    ret < (long)sizeof(dsync_fd))
				dsync_fd[ret] = 1;
			else if (ret >= 0 && ret < (long)sizeof(dsync_fd))
				dsync_fd[ret] = 0;
			continue;
		}
		if (strcmp(call, "close") == 0)
			continue;
		int fd;
		struct dfile *f = arg_file(args, &fd);
		if (f != NULL && is_write(call)) {
			f->dirty = 1;
			f->writes++;
			writes++;
		}
		if (f != NULL && (strcmp(call, "fdatasync") == 0 || strcmp(call, "fsync") == 0))
			syncs++;
		if (f == NULL && strstr(ln, "PUB _INBOX.") != NULL) {
			for (int i = 0; i < N; i++)
				if (!seen[i] && strstr(ln, ids[i]) != NULL) {
					check_reply(ids[i], lineno);
					seen[i] = 1;
				}
		}
		if (unfinished) {
			struct pending *p = pend_of(pid);
			snprintf(p->call, sizeof(p->call), "%s", call);
			p->fd = fd;
			p->f = f;
		} else {
			finished(call, fd, f, ret);
		}
	}
	free(ln);
	fclose(fp);
	for (int i = 0; i < N; i++)
		ck_assert_msg(seen[i], "no reply carrying %s in the trace", ids[i]);
	/* the check above saw real commits: data written and synced */
	ck_assert_int_gt(writes, 0);
	ck_assert_int_gt(syncs, 0);
	printf("fsync: %d replies, each after a completed sync; %ld writes and %ld fdatasyncs "
	    "to %d data files\n", N, writes, syncs, nfiles);
}
END_TEST

int
main(void)
{
	Suite *s = suite_create("fsync");
	TCase *tc = tcase_create("202 after the sync");
	tcase_set_timeout(tc, 120);
	tcase_add_unchecked_fixture(tc, setup, teardown);
	tcase_add_test(tc, reply_after_full_sync);
	suite_add_tcase(s, tc);
	return it_run(s);
}
