/*
 * log.c - JSON-line logger. Any thread may log; the only shared state is
 * set once by log_init() before threads start.
 */
#include <stdarg.h>
#include <stdio.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "log.h"

static char log_svc[64] = "clawrelay";
static char log_instance[128] = "";
static enum log_level log_min = LOG_INFO;
static int log_fd = STDOUT_FILENO;
static const char *const level_names[] = { "debug", "info", "warn", "error" };

/* log_init - set the service name and instance (copied) and the level */
void
log_init(const char *svc, const char *instance, enum log_level level)
{
	snprintf(log_svc, sizeof(log_svc), "%s", svc ? svc : "clawrelay");
	snprintf(log_instance, sizeof(log_instance), "%s", instance ? instance : "");
	log_min = level;
}

/* log_set_fd - write log lines to fd instead of stdout (the CLI: stderr,
 * so that a command's standard output is only what it prints) */
void
log_set_fd(int fd)
{
	log_fd = fd;
}

/* log_level_parse - "debug|info|warn|error" to a level; -1 if unknown */
int
log_level_parse(const char *s)
{
	for (int i = 0; i < 4; i++)
		if (strcmp(s, level_names[i]) == 0)
			return i;
	return -1;
}

/* log_enabled - would a line at this level be written? */
int
log_enabled(enum log_level level)
{
	return level >= log_min;
}

/* Append s as a JSON string body (without quotes) to buf at *off. */
static void
esc(char *buf, size_t cap, size_t *off, const char *s)
{
	static const char hex[] = "0123456789abcdef";
	for (; *s && *off + 7 < cap; s++) {
		unsigned char c = (unsigned char)*s;
		if (c == '"' || c == '\\') {
			buf[(*off)++] = '\\';
			buf[(*off)++] = (char)c;
		} else if (c < 0x20 || c == 0x7f) {
			buf[(*off)++] = '\\';
			buf[(*off)++] = 'u';
			buf[(*off)++] = '0';
			buf[(*off)++] = '0';
			buf[(*off)++] = hex[c >> 4];
			buf[(*off)++] = hex[c & 15];
		} else {
			buf[(*off)++] = (char)c;
		}
	}
}

static void
field(char *buf, size_t cap, size_t *off, const char *name, const char *val)
{
	if (val == NULL || *val == '\0')
		return;
	int n = snprintf(buf + *off, cap - *off, ",\"%s\":\"", name);
	if (n < 0 || (size_t)n >= cap - *off)
		return;
	*off += (size_t)n;
	esc(buf, cap, off, val);
	if (*off + 2 < cap)
		buf[(*off)++] = '"';
}

/* log_write - format and write one line; ctx may be NULL */
void
log_write(enum log_level level, const struct log_ctx *ctx, const char *fmt, ...)
{
	char msg[2048], buf[4096];
	struct timespec ts;
	struct tm tm;
	size_t off = 0;
	va_list ap;

	va_start(ap, fmt);
	vsnprintf(msg, sizeof(msg), fmt, ap);
	va_end(ap);
	clock_gettime(CLOCK_REALTIME, &ts);
	gmtime_r(&ts.tv_sec, &tm);
	off = (size_t)snprintf(buf, sizeof(buf),
	    "{\"ts\":\"%04d-%02d-%02dT%02d:%02d:%02d.%03ldZ\",\"level\":\"%s\"",
	    tm.tm_year + 1900, tm.tm_mon + 1, tm.tm_mday, tm.tm_hour, tm.tm_min,
	    tm.tm_sec, ts.tv_nsec / 1000000, level_names[level]);
	field(buf, sizeof(buf), &off, "svc", log_svc);
	field(buf, sizeof(buf), &off, "instance", log_instance);
	field(buf, sizeof(buf), &off, "msg", msg);
	if (ctx) {
		field(buf, sizeof(buf), &off, "correlation_id", ctx->correlation_id);
		field(buf, sizeof(buf), &off, "message_id", ctx->message_id);
		field(buf, sizeof(buf), &off, "agent", ctx->agent);
		field(buf, sizeof(buf), &off, "trace_id", ctx->trace_id);
	}
	if (off + 2 >= sizeof(buf))
		off = sizeof(buf) - 3;
	buf[off++] = '}';
	buf[off++] = '\n';
	ssize_t w = write(log_fd, buf, off);
	(void)w;
}
