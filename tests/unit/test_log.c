/*
 * test_log.c - JSON log lines (one parseable object per line, escaping,
 * context IDs, level filter) and the Prometheus text of the metrics registry.
 */
#include <check.h>
#include <cJSON.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "log.h"
#include "metrics.h"
#include "unit.h"

/* Run fn with stdout redirected to a temp file; return what it wrote. */
static char *
capture(void (*fn)(void))
{
	char path[] = "/tmp/clawrelay-logtest-XXXXXX";
	int fd = mkstemp(path), saved = dup(1);
	fflush(stdout);
	dup2(fd, 1);
	fn();
	fflush(stdout);
	dup2(saved, 1);
	close(saved);
	off_t n = lseek(fd, 0, SEEK_END);
	char *buf = calloc(1, (size_t)n + 1);
	ck_assert_int_eq(pread(fd, buf, (size_t)n, 0), n);
	close(fd);
	unlink(path);
	return buf;
}

static void
write_lines(void)
{
	struct log_ctx ctx = { "corr-\"1\"", "01ARZ3NDEKTSV4RRFFQ69G5FAV", "did:x:a.b",
		"4bf92f3577b34da6a3ce929d0e0e4736" };
	log_init("gateway", "gw-1", LOG_INFO);
	log_debug(&ctx, "hidden %d", 1);
	log_info(&ctx, "accepted %s", "a\nb\t\x01");
	log_error(NULL, "plain");
}

START_TEST(json_lines)
{
	char *out = capture(write_lines);
	char *save = NULL;
	int n = 0;
	for (char *l = strtok_r(out, "\n", &save); l; l = strtok_r(NULL, "\n", &save), n++) {
		cJSON *j = cJSON_Parse(l);
		ck_assert_msg(j != NULL, "not JSON: %s", l);
		ck_assert_str_eq(cJSON_GetObjectItem(j, "svc")->valuestring, "gateway");
		ck_assert_str_eq(cJSON_GetObjectItem(j, "instance")->valuestring, "gw-1");
		ck_assert_ptr_nonnull(cJSON_GetObjectItem(j, "ts"));
		if (n == 0) {
			ck_assert_str_eq(cJSON_GetObjectItem(j, "level")->valuestring, "info");
			ck_assert_str_eq(cJSON_GetObjectItem(j, "msg")->valuestring, "accepted a\nb\t\x01");
			ck_assert_str_eq(cJSON_GetObjectItem(j, "correlation_id")->valuestring, "corr-\"1\"");
			ck_assert_str_eq(cJSON_GetObjectItem(j, "message_id")->valuestring, "01ARZ3NDEKTSV4RRFFQ69G5FAV");
			ck_assert_str_eq(cJSON_GetObjectItem(j, "agent")->valuestring, "did:x:a.b");
			ck_assert_str_eq(cJSON_GetObjectItem(j, "trace_id")->valuestring,
			    "4bf92f3577b34da6a3ce929d0e0e4736");
		} else {
			ck_assert_str_eq(cJSON_GetObjectItem(j, "level")->valuestring, "error");
			ck_assert_ptr_null(cJSON_GetObjectItem(j, "correlation_id"));
			ck_assert_ptr_null(cJSON_GetObjectItem(j, "trace_id"));
		}
		cJSON_Delete(j);
	}
	ck_assert_int_eq(n, 2);	/* the debug line was filtered */
	free(out);
	ck_assert_int_eq(log_level_parse("warn"), LOG_WARN);
	ck_assert_int_eq(log_level_parse("verbose"), -1);
}
END_TEST

static void
write_to_stderr(void)
{
	char path[] = "/tmp/clawrelay-logtest-XXXXXX";
	int fd = mkstemp(path);
	log_init("clawrelay", "cli", LOG_DEBUG);
	log_set_fd(fd);
	log_warn(NULL, "nats disconnected (%s)", "req");
	log_set_fd(STDOUT_FILENO);
	char buf[512] = "";
	ck_assert_int_gt(pread(fd, buf, sizeof(buf) - 1, 0), 0);
	close(fd);
	unlink(path);
	ck_assert_ptr_nonnull(strstr(buf, "\"msg\":\"nats disconnected (req)\""));
}

/* log_set_fd: the CLI's lines go to its descriptor, never to stdout */
START_TEST(other_fd)
{
	char *out = capture(write_to_stderr);
	ck_assert_str_eq(out, "");
	free(out);
}
END_TEST

START_TEST(prometheus_text)
{
	struct strbuf sb;
	struct metric *a = metric_counter("clawrelay_test_total", "code=\"401\"", "refusals");
	struct metric *b = metric_counter("clawrelay_test_total", "code=\"403\"", "refusals");
	struct metric *g = metric_gauge("clawrelay_test_depth", NULL, "queue depth");
	ck_assert_ptr_eq(metric_counter("clawrelay_test_total", "code=\"401\"", "x"), a);
	metric_add(a, 3);
	metric_add(b, 1);
	metric_set(g, -7);
	ck_assert_int_eq(metric_value(a), 3);
	sb_init(&sb);
	metrics_render(&sb);
	ck_assert_ptr_nonnull(strstr(sb.data, "# TYPE clawrelay_test_total counter\n"
	    "clawrelay_test_total{code=\"401\"} 3\nclawrelay_test_total{code=\"403\"} 1\n"));
	ck_assert_ptr_nonnull(strstr(sb.data, "# TYPE clawrelay_test_depth gauge\nclawrelay_test_depth -7\n"));
	/* HELP/TYPE once per name */
	const char *first = strstr(sb.data, "# HELP clawrelay_test_total");
	ck_assert_ptr_null(strstr(first + 1, "# HELP clawrelay_test_total"));
	sb_free(&sb);
	metrics_free_all();
}
END_TEST

int
main(void)
{
	Suite *s = suite_create("log");
	TCase *tc = tcase_create("core");
	tcase_add_test(tc, json_lines);
	tcase_add_test(tc, other_fd);
	tcase_add_test(tc, prometheus_text);
	suite_add_tcase(s, tc);
	return unit_run(s);
}
