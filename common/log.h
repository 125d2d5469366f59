/*
 * log.h - JSON-line logs on stdout (or another descriptor: log_set_fd).
 *
 * One JSON object per line: ts, level, svc, instance, msg, and
 * correlation_id / message_id / agent when the context has them. The level is
 * checked before anything is formatted. Each line is written with one
 * write(2), so lines from several threads never interleave.
 */
#ifndef CR_LOG_H
#define CR_LOG_H

enum log_level { LOG_DEBUG = 0, LOG_INFO, LOG_WARN, LOG_ERROR };

/* Message identity carried into a log line; any field may be NULL. */
struct log_ctx {
	const char *correlation_id;
	const char *message_id;
	const char *agent;
	const char *trace_id;   /* W3C trace ID (from traceparent), when known */
};

/* log_init - set the service name and instance (copied) and the level */
void log_init(const char *svc, const char *instance, enum log_level level);
/* log_set_fd - write log lines to fd instead of stdout; call before threads start */
void log_set_fd(int fd);
/* log_level_parse - "debug|info|warn|error" to a level; -1 if unknown */
int log_level_parse(const char *s);
/* log_enabled - would a line at this level be written? */
int log_enabled(enum log_level level);
/* log_write - format and write one line; ctx may be NULL */
void log_write(enum log_level level, const struct log_ctx *ctx, const char *fmt, ...)
	__attribute__((format(printf, 3, 4)));

#define log_debug(ctx, ...) do { if (log_enabled(LOG_DEBUG)) log_write(LOG_DEBUG, ctx, __VA_ARGS__); } while (0)
#define log_info(ctx, ...)  do { if (log_enabled(LOG_INFO))  log_write(LOG_INFO, ctx, __VA_ARGS__); } while (0)
#define log_warn(ctx, ...)  do { if (log_enabled(LOG_WARN))  log_write(LOG_WARN, ctx, __VA_ARGS__); } while (0)
#define log_error(ctx, ...) do { if (log_enabled(LOG_ERROR)) log_write(LOG_ERROR, ctx, __VA_ARGS__); } while (0)

#endif
