/*
 * main.c - clawrelay-demo-hook: a tiny agent hook / webhook target for the
 * demo and the integration tests.
 *
 * Accepts POST on any path and prints one JSON line per request on stdout
 * (and appends it to --out FILE, flushed per line):
 *   {"hook","ts_ms","method","path","correlation_id","message_id","sender",
 *    "priority","traceparent","content_type","bytes","body"[,"headers"]}
 * body is the payload as text, JSON-escaped; bytes that are not valid UTF-8
 * become U+FFFD. Answers --status (default 200) after --delay-ms; GET
 * /healthz answers 200 so callers can wait for it. Readiness and errors go
 * to stderr, so stdout holds request lines only.
 *
 * Threads: civetweb workers run the handler; the only shared state is the
 * output (stdout and the --out file), written under out_mu one line at a
 * time, and the request counter (atomic). The main thread waits for a
 * signal (the handler only sets a flag), then exits at once (lines are
 * flushed as written) or, with --clean-exit, stops civetweb and frees all.
 */
#include <errno.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>
#include <pthread.h>

#include <civetweb.h>

#include "util.h"

#define HOOK_BODY_MAX (16u * 1024 * 1024)

struct hook {
	const char *name;
	int status;
	int delay_ms;
	int retry_after;
	int headers;       /* include every request header in the line */
	FILE *out;         /* --out, or NULL */
	atomic_ulong requests;
};

static pthread_mutex_t out_mu = PTHREAD_MUTEX_INITIALIZER;
static volatile sig_atomic_t stop_flag;

static void
on_signal(int sig)
{
	stop_flag = 1;
}

/* Append s[0..n) as a JSON string (with quotes). Control characters are
 * escaped, invalid UTF-8 becomes U+FFFD, so the line is always valid JSON. */
static int
json_str(struct strbuf *sb, const char *s, size_t n)
{
	static const char hex[] = "0123456789abcdef";
	const unsigned char *p = (const unsigned char *)s, *end = p + n;

	if (sb_append(sb, "\"", 1) != 0)
		return -1;
	while (p < end) {
		unsigned char c = *p;
		char esc[8];
		size_t len = 0, need = 0;
		unsigned cp = 0, min = 0;

		if (c == '"' || c == '\\') {
			esc[0] = '\\';
			esc[1] = (char)c;
			if (sb_append(sb, esc, 2) != 0)
				return -1;
			p++;
			continue;
		}
		if (c < 0x20 || c == 0x7f) {
			const char *e = NULL;
			switch (c) {
			case '\n': e = "\\n"; break;
			case '\r': e = "\\r"; break;
			case '\t': e = "\\t"; break;
			case '\b': e = "\\b"; break;
			case '\f': e = "\\f"; break;
			default: break;
			}
			if (e == NULL) {
				snprintf(esc, sizeof(esc), "\\u00%c%c", hex[c >> 4], hex[c & 15]);
				e = esc;
			}
			if (sb_append(sb, e, strlen(e)) != 0)
				return -1;
			p++;
			continue;
		}
		if (c < 0x80) {
			if (sb_append(sb, p, 1) != 0)
				return -1;
			p++;
			continue;
		}
		if ((c & 0xe0) == 0xc0) {
			need = 1, cp = c & 0x1f, min = 0x80;
		} else if ((c & 0xf0) == 0xe0) {
			need = 2, cp = c & 0x0f, min = 0x800;
		} else if ((c & 0xf8) == 0xf0) {
			need = 3, cp = c & 0x07, min = 0x10000;
		}
		len = 1;
		if (need > 0 && (size_t)(end - p) > need) {
			for (; len <= need && (p[len] & 0xc0) == 0x80; len++)
				cp = (cp << 6) | (p[len] & 0x3f);
		}
		if (need == 0 || len != need + 1 || cp < min || cp > 0x10ffff ||
		    (cp >= 0xd800 && cp <= 0xdfff)) {
			if (sb_append(sb, "\\ufffd", 6) != 0)
				return -1;
			p++;
			continue;
		}
		if (sb_append(sb, p, len) != 0)
			return -1;
		p += len;
	}
	return sb_append(sb, "\"", 1);
}

static int
json_field(struct strbuf *sb, const char *name, const char *val)
{
	if (sb_printf(sb, ",\"%s\":", name) < 0)
		return -1;
	if (val == NULL)
		return sb_append(sb, "null", 4);
	return json_str(sb, val, strlen(val));
}

static void
emit_line(struct hook *h, const struct strbuf *line)
{
	pthread_mutex_lock(&out_mu);
	fwrite(line->data, 1, line->len, stdout);
	fflush(stdout);
	if (h->out != NULL) {
		fwrite(line->data, 1, line->len, h->out);
		fflush(h->out);
	}
	pthread_mutex_unlock(&out_mu);
}

static void
reply(struct mg_connection *conn, int status, const char *extra, const char *body)
{
	mg_printf(conn,
	    "HTTP/1.1 %d %s\r\n"
	    "Content-Type: application/json\r\n"
	    "Content-Length: %zu\r\n"
	    "%s"
	    "\r\n%s",
	    status, mg_get_response_code_text(conn, status), strlen(body), extra ? extra : "", body);
}

/* Read the whole body (Content-Length or chunked); -1 if over the limit. */
static int
read_body(struct mg_connection *conn, struct strbuf *body)
{
	char buf[16384];
	int n;

	while ((n = mg_read(conn, buf, sizeof(buf))) > 0) {
		if (body->len + (size_t)n > HOOK_BODY_MAX)
			return -1;
		if (sb_append(body, buf, (size_t)n) != 0)
			return -1;
	}
	return n < 0 ? -1 : 0;
}

static int
on_request(struct mg_connection *conn, void *arg)
{
	struct hook *h = arg;
	const struct mg_request_info *ri = mg_get_request_info(conn);
	struct strbuf body, line;
	char extra[64] = "", ans[128];

	if (strcmp(ri->request_method, "GET") == 0 && strcmp(ri->local_uri, "/healthz") == 0) {
		reply(conn, 200, NULL, "{\"ok\":true}");
		return 200;
	}
	if (strcmp(ri->request_method, "POST") != 0) {
		reply(conn, 405, "Allow: POST\r\n", "{\"error\":{\"code\":\"method_not_allowed\"}}");
		return 405;
	}
	sb_init(&body);
	sb_init(&line);
	if (read_body(conn, &body) != 0) {
		reply(conn, 413, NULL, "{\"error\":{\"code\":\"too_large\"}}");
		fprintf(stderr, "demo-hook %s: request body too large or unreadable\n", h->name);
		goto out;
	}
	if (sb_printf(&line, "{\"hook\":") < 0 || json_str(&line, h->name, strlen(h->name)) != 0 ||
	    sb_printf(&line, ",\"ts_ms\":%llu", (unsigned long long)now_ms()) < 0 ||
	    json_field(&line, "method", ri->request_method) != 0 ||
	    json_field(&line, "path", ri->local_uri_raw) != 0 ||
	    json_field(&line, "correlation_id", mg_get_header(conn, "X-Claw-Correlation-Id")) != 0 ||
	    json_field(&line, "message_id", mg_get_header(conn, "X-Claw-Message-Id")) != 0 ||
	    json_field(&line, "sender", mg_get_header(conn, "X-Claw-Sender")) != 0 ||
	    json_field(&line, "priority", mg_get_header(conn, "X-Claw-Priority")) != 0 ||
	    json_field(&line, "traceparent", mg_get_header(conn, "traceparent")) != 0 ||
	    json_field(&line, "content_type", mg_get_header(conn, "Content-Type")) != 0 ||
	    sb_printf(&line, ",\"bytes\":%zu,\"body\":", body.len) < 0 ||
	    json_str(&line, body.data ? body.data : "", body.len) != 0)
		goto nomem;
	if (h->headers) {
		if (sb_printf(&line, ",\"headers\":{") < 0)
			goto nomem;
		for (int i = 0; i < ri->num_headers; i++) {
			if ((i > 0 && sb_append(&line, ",", 1) != 0) ||
			    json_str(&line, ri->http_headers[i].name, strlen(ri->http_headers[i].name)) != 0 ||
			    sb_append(&line, ":", 1) != 0 ||
			    json_str(&line, ri->http_headers[i].value, strlen(ri->http_headers[i].value)) != 0)
				goto nomem;
		}
		if (sb_append(&line, "}", 1) != 0)
			goto nomem;
	}
	if (sb_append(&line, "}\n", 2) != 0)
		goto nomem;
	if (h->delay_ms > 0)
		usleep((useconds_t)h->delay_ms * 1000);
	emit_line(h, &line);
	atomic_fetch_add(&h->requests, 1);
	if (h->retry_after > 0)
		snprintf(extra, sizeof(extra), "Retry-After: %d\r\n", h->retry_after);
	snprintf(ans, sizeof(ans), "{\"ok\":%s,\"hook\":\"%s\"}", h->status < 300 ? "true" : "false",
	    "demo-hook");
	reply(conn, h->status, extra, ans);
	sb_free(&body);
	sb_free(&line);
	return h->status;
nomem:
	reply(conn, 500, NULL, "{\"error\":{\"code\":\"out_of_memory\"}}");
out:
	sb_free(&body);
	sb_free(&line);
	return 500;
}

static void
usage(FILE *f)
{
	fprintf(f,
	    "usage: clawrelay-demo-hook [--port N] [--addr IP] [--name NAME] [--status N]\n"
	    "                           [--delay-ms N] [--retry-after S] [--out FILE] [--headers]\n"
	    "                           [--clean-exit]\n"
	    "\n"
	    "A demo agent hook: accepts POST on any path, prints one JSON line per\n"
	    "request on stdout (hook, correlation_id, message_id, sender, priority,\n"
	    "traceparent, bytes, body, ...) and answers --status (default 200).\n"
	    "  --port N         listen port (default 9000)\n"
	    "  --addr IP        listen address (default 127.0.0.1; 0.0.0.0 in containers)\n"
	    "  --name NAME      the \"hook\" field of each line (default demo)\n"
	    "  --status N       HTTP status to answer (100-599, default 200)\n"
	    "  --delay-ms N     wait this long before answering (default 0)\n"
	    "  --retry-after S  add Retry-After: S to each answer\n"
	    "  --out FILE       also append each line to FILE (flushed per line)\n"
	    "  --headers        include every request header in the line\n"
	    "  --clean-exit     on SIGTERM stop civetweb and free everything (slow,\n"
	    "                   for valgrind) instead of exiting at once\n"
	    "GET /healthz answers 200.\n");
}

static int
num_arg(const char *name, const char *v, long min, long max, int *out)
{
	char *end = NULL;
	long n;

	errno = 0;
	n = v ? strtol(v, &end, 10) : 0;
	if (v == NULL || *v == '\0' || *end != '\0' || errno != 0 || n < min || n > max) {
		fprintf(stderr, "clawrelay-demo-hook: %s must be a number %ld-%ld\n", name, min, max);
		return -1;
	}
	*out = (int)n;
	return 0;
}

int
main(int argc, char **argv)
{
	struct hook h;
	const char *addr = "127.0.0.1", *outp = NULL;
	int port = 9000, rc = 1, clean_exit = 0;
	char ports[128];
	struct mg_context *ctx = NULL;
	struct mg_callbacks cb;
	struct sigaction sa;

	memset(&h, 0, sizeof(h));
	h.name = "demo";
	h.status = 200;
	for (int i = 1; i < argc; i++) {
		const char *a = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
		if (strcmp(a, "--help") == 0 || strcmp(a, "-h") == 0) {
			usage(stdout);
			return 0;
		} else if (strcmp(a, "--headers") == 0) {
			h.headers = 1;
			continue;
		} else if (strcmp(a, "--clean-exit") == 0) {
			clean_exit = 1;
			continue;
		}
		if (v == NULL) {
			fprintf(stderr, "clawrelay-demo-hook: unknown option or missing value: %s\n", a);
			usage(stderr);
			return 2;
		}
		i++;
		if (strcmp(a, "--port") == 0) {
			if (num_arg(a, v, 1, 65535, &port) != 0)
				return 2;
		} else if (strcmp(a, "--addr") == 0) {
			addr = v;
		} else if (strcmp(a, "--name") == 0) {
			h.name = v;
		} else if (strcmp(a, "--status") == 0) {
			if (num_arg(a, v, 100, 599, &h.status) != 0)
				return 2;
		} else if (strcmp(a, "--delay-ms") == 0) {
			if (num_arg(a, v, 0, 3600000, &h.delay_ms) != 0)
				return 2;
		} else if (strcmp(a, "--retry-after") == 0) {
			if (num_arg(a, v, 0, 86400, &h.retry_after) != 0)
				return 2;
		} else if (strcmp(a, "--out") == 0) {
			outp = v;
		} else {
			fprintf(stderr, "clawrelay-demo-hook: unknown option %s\n", a);
			usage(stderr);
			return 2;
		}
	}
	if (outp != NULL && (h.out = fopen(outp, "a")) == NULL) {
		fprintf(stderr, "clawrelay-demo-hook: cannot open %s: %s\n", outp, strerror(errno));
		return 1;
	}
	memset(&sa, 0, sizeof(sa));
	sa.sa_handler = on_signal;
	sigaction(SIGINT, &sa, NULL);
	sigaction(SIGTERM, &sa, NULL);
	signal(SIGPIPE, SIG_IGN);

	snprintf(ports, sizeof(ports), "%s:%d", addr, port);
	const char *options[] = {
		"listening_ports", ports,
		"num_threads", "32",
		"enable_keep_alive", "yes",
		"keep_alive_timeout_ms", "30000",
		"tcp_nodelay", "1",
		"request_timeout_ms", "60000",
		NULL,
	};
	mg_init_library(0);
	memset(&cb, 0, sizeof(cb));
	ctx = mg_start(&cb, NULL, options);
	if (ctx == NULL) {
		fprintf(stderr, "clawrelay-demo-hook: cannot listen on %s\n", ports);
		goto out;
	}
	mg_set_request_handler(ctx, "/", on_request, &h);
	fprintf(stderr, "clawrelay-demo-hook %s listening on %s (status %d, delay %d ms)\n", h.name,
	    ports, h.status, h.delay_ms);
	while (!stop_flag)
		usleep(50000);
	rc = 0;
	if (!clean_exit) {
		/* mg_stop takes ~3 s; tests stop hooks often. Every line is already
		 * flushed; taking out_mu makes sure none is half written. */
		pthread_mutex_lock(&out_mu);
		fflush(stdout);
		if (h.out != NULL)
			fflush(h.out);
		fprintf(stderr, "clawrelay-demo-hook %s stopped after %lu requests\n", h.name,
		    (unsigned long)atomic_load(&h.requests));
		_exit(0);
	}
out:
	if (ctx != NULL)
		mg_stop(ctx);
	mg_exit_library();
	fprintf(stderr, "clawrelay-demo-hook %s stopped after %lu requests\n", h.name,
	    (unsigned long)atomic_load(&h.requests));
	if (h.out != NULL)
		fclose(h.out);
	return rc;
}
