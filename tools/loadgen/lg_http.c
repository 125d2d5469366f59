/*
 * lg_http.c - a minimal blocking HTTP/1.1 client (see lg_http.h).
 *
 * The socket is blocking with SO_SNDTIMEO/SO_RCVTIMEO set to the request's
 * time limit, so a request is one writev and usually one read; only the
 * connect is non-blocking (to bound it). Answers are framed by
 * Content-Length (what the gateway and the connector send), chunked
 * encoding, or the server closing the connection.
 *
 * Threads: none of its own; a struct lg_http belongs to one thread at a time.
 */
#include <errno.h>
#include <fcntl.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <sys/uio.h>
#include <unistd.h>

#include "lg_http.h"

#define HTTP_HEAD_MAX  16384    /* the longest request or answer head */
#define HTTP_READ_MIN  4096     /* room made before each read */

/* lg_url_parse - split http://host[:port][/base] */
int
lg_url_parse(const char *url, char *host, size_t hostsz, int *port, char *base, size_t basesz)
{
	const char *h, *slash, *colon, *hend;
	size_t n;

	if (strncmp(url, "http://", 7) != 0)
		return -1;
	h = url + 7;
	slash = strchr(h, '/');
	hend = slash ? slash : h + strlen(h);
	colon = memchr(h, ':', (size_t)(hend - h));
	*port = 80;
	if (colon != NULL) {
		char *end;
		long p = strtol(colon + 1, &end, 10);
		if (end != hend || p < 1 || p > 65535)
			return -1;
		*port = (int)p;
		hend = colon;
	}
	n = (size_t)(hend - h);
	if (n == 0 || n >= hostsz)
		return -1;
	memcpy(host, h, n);
	host[n] = '\0';
	n = slash ? strlen(slash) : 0;
	while (n > 0 && slash[n - 1] == '/')
		n--;
	if (n >= basesz)
		return -1;
	if (n > 0)
		memcpy(base, slash, n);
	base[n] = '\0';
	return 0;
}

/* lg_http_init - an unconnected client */
void
lg_http_init(struct lg_http *c, const char *host, int port)
{
	memset(c, 0, sizeof(*c));
	c->fd = -1;
	snprintf(c->host, sizeof(c->host), "%s", host);
	c->port = port;
}

static void
drop(struct lg_http *c)
{
	if (c->fd >= 0)
		close(c->fd);
	c->fd = -1;
}

static int
fail(struct lg_http *c, const char *what, int err)
{
	if (err)
		snprintf(c->why, sizeof(c->why), "%s: %s", what, strerror(err));
	else
		snprintf(c->why, sizeof(c->why), "%s", what);
	drop(c);
	return -1;
}

static int
reserve(struct lg_http *c, size_t want)
{
	size_t cap = c->cap ? c->cap : 8192;
	char *nb;

	if (want <= c->cap)
		return 0;
	while (cap < want)
		cap *= 2;
	if ((nb = realloc(c->buf, cap)) == NULL)
		return -1;
	c->buf = nb;
	c->cap = cap;
	return 0;
}

static int
connect_to(struct lg_http *c, int timeout_ms)
{
	struct addrinfo hints, *res = NULL, *ai;
	struct timeval tv = { timeout_ms / 1000, (timeout_ms % 1000) * 1000 };
	char ports[16];
	int fd = -1, one = 1, err = 0, rc;

	memset(&hints, 0, sizeof(hints));
	hints.ai_family = AF_UNSPEC;
	hints.ai_socktype = SOCK_STREAM;
	hints.ai_flags = AI_NUMERICSERV;
	snprintf(ports, sizeof(ports), "%d", c->port);
	if ((rc = getaddrinfo(c->host, ports, &hints, &res)) != 0) {
		snprintf(c->why, sizeof(c->why), "resolve %.100s: %s", c->host, gai_strerror(rc));
		return -1;
	}
	for (ai = res; ai != NULL; ai = ai->ai_next) {
		struct pollfd p;
		socklen_t el = sizeof(err);

		fd = socket(ai->ai_family, ai->ai_socktype | SOCK_NONBLOCK | SOCK_CLOEXEC,
		    ai->ai_protocol);
		if (fd < 0) {
			err = errno;
			continue;
		}
		err = 0;
		if (connect(fd, ai->ai_addr, ai->ai_addrlen) != 0) {
			err = errno;
			p.fd = fd;
			p.events = POLLOUT;
			if (err == EINPROGRESS) {
				err = ETIMEDOUT;
				if (poll(&p, 1, timeout_ms) == 1 &&
				    getsockopt(fd, SOL_SOCKET, SO_ERROR, &err, &el) != 0)
					err = errno;
			}
		}
		if (err == 0)
			break;
		close(fd);
		fd = -1;
	}
	freeaddrinfo(res);
	if (fd < 0)
		return fail(c, "connect", err ? err : ECONNREFUSED);
	/* blocking from here on, every call bounded by the time limit */
	fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) & ~O_NONBLOCK);
	setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
	setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
	setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof(tv));
	c->fd = fd;
	return 0;
}

/* read more of the answer into c->buf[*len..]; 0, or -1 with errno (0: EOF) */
static int
read_more(struct lg_http *c, size_t *len)
{
	ssize_t r;

	if (reserve(c, *len + HTTP_READ_MIN + 1) != 0) {
		errno = ENOMEM;
		return -1;
	}
	do
		r = read(c->fd, c->buf + *len, c->cap - *len - 1);
	while (r < 0 && errno == EINTR);
	if (r <= 0) {
		if (r == 0)
			errno = 0;
		return -1;
	}
	*len += (size_t)r;
	c->buf[*len] = '\0';
	return 0;
}

/* the value of header name in the head, or NULL */
static const char *
head_value(const char *head, const char *name)
{
	size_t nl = strlen(name);

	for (const char *p = strstr(head, "\r\n"); p != NULL; p = strstr(p, "\r\n")) {
		p += 2;
		if (*p == '\r')
			break;
		if (strncasecmp(p, name, nl) == 0 && p[nl] == ':') {
			p += nl + 1;
			while (*p == ' ' || *p == '\t')
				p++;
			return p;
		}
	}
	return NULL;
}

static void
keep_snip(char *snip, size_t snipsz, size_t *have, const char *p, size_t n)
{
	size_t room = snipsz > *have + 1 ? snipsz - 1 - *have : 0;

	if (n > room)
		n = room;
	memcpy(snip + *have, p, n);
	*have += n;
	snip[*have] = '\0';
}

/* one attempt; 0 done, -1 failed, -2 failed before any answer byte (retry) */
static int
attempt(struct lg_http *c, const char *path, const char *extra, const void *body, size_t len,
    int timeout_ms, long *status, char *snip, size_t snipsz)
{
	struct iovec iov[2];
	size_t got = 0, hlen, off, have = 0;
	char *end;
	int n, closing;

	n = snprintf(c->buf, c->cap,
	    "POST %s HTTP/1.1\r\nHost: %s:%d\r\n%sContent-Length: %zu\r\n\r\n",
	    path, c->host, c->port, extra ? extra : "", len);
	if (n < 0 || (size_t)n >= c->cap)
		return fail(c, "request head too long", 0);
	iov[0].iov_base = c->buf;
	iov[0].iov_len = (size_t)n;
	iov[1].iov_base = (void *)(uintptr_t)body;
	iov[1].iov_len = len;
	for (int i = 0; i < 2;) {
		ssize_t w = writev(c->fd, iov + i, 2 - i);
		if (w < 0 && errno == EINTR)
			continue;
		if (w <= 0) {
			fail(c, "write", w < 0 ? errno : EPIPE);
			return -2;
		}
		while (i < 2 && (size_t)w >= iov[i].iov_len) {
			w -= (ssize_t)iov[i].iov_len;
			i++;
		}
		if (i < 2) {
			iov[i].iov_base = (char *)iov[i].iov_base + w;
			iov[i].iov_len -= (size_t)w;
		}
	}

	/* the head: look for its end in what came since the last look */
	c->buf[0] = '\0';
	for (size_t seen = 0;
	    (end = strstr(c->buf + (seen > 3 ? seen - 3 : 0), "\r\n\r\n")) == NULL;) {
		if (got >= HTTP_HEAD_MAX)
			return fail(c, "answer head too long", 0);
		seen = got;
		if (read_more(c, &got) != 0) {
			int e = errno;
			fail(c, e ? "read" : "the server closed the connection", e == EAGAIN ?
			    ETIMEDOUT : e);
			return got == 0 ? -2 : -1;
		}
	}
	hlen = (size_t)(end - c->buf) + 4;
	end[2] = '\0';	/* the head as a string, for head_value */
	if (sscanf(c->buf, "HTTP/1.%*d %ld", status) != 1)
		return fail(c, "not an HTTP answer", 0);
	const char *cl = head_value(c->buf, "Content-Length");
	const char *te = head_value(c->buf, "Transfer-Encoding");
	const char *co = head_value(c->buf, "Connection");
	closing = co != NULL && strncasecmp(co, "close", 5) == 0;
	int chunked = te != NULL && strncasecmp(te, "chunked", 7) == 0;
	end[2] = '\r';
	if (snipsz > 0)
		snip[0] = '\0';

	if (chunked) {
		off = hlen;
		for (;;) {
			char *eol;
			unsigned long sz;
			while ((eol = memchr(c->buf + off, '\n', got - off)) == NULL) {
				if (got - off > 64 || read_more(c, &got) != 0)
					return fail(c, "bad chunked answer", errno);
			}
			sz = strtoul(c->buf + off, NULL, 16);
			off = (size_t)(eol - c->buf) + 1;
			while (got - off < sz + 2) {
				if (read_more(c, &got) != 0)
					return fail(c, "chunked answer cut short", errno);
			}
			keep_snip(snip, snipsz, &have, c->buf + off, sz);
			off += sz + 2;
			if (sz == 0)
				break;	/* (a trailer is not expected from these servers) */
		}
	} else if (cl != NULL) {
		size_t want = hlen + (size_t)strtoull(cl, NULL, 10);
		while (got < want) {
			if (read_more(c, &got) != 0)
				return fail(c, "answer cut short", errno);
		}
		keep_snip(snip, snipsz, &have, c->buf + hlen, want - hlen);
	} else if (*status >= 200 && *status != 204 && *status != 304) {
		/* delimited by the server closing */
		for (;;) {
			if (read_more(c, &got) != 0) {
				if (errno != 0)
					return fail(c, "read", errno);
				break;
			}
		}
		keep_snip(snip, snipsz, &have, c->buf + hlen, got - hlen);
		closing = 1;
	}
	if (closing)
		drop(c);
	return 0;
}

/* lg_http_post - one POST, answer read whole; see lg_http.h */
int
lg_http_post(struct lg_http *c, const char *path, const char *extra_headers,
    const void *body, size_t len, int timeout_ms, long *status, char *snip, size_t snipsz)
{
	*status = 0;
	if (reserve(c, HTTP_HEAD_MAX + HTTP_READ_MIN + 1) != 0) {
		snprintf(c->why, sizeof(c->why), "out of memory");
		return -1;
	}
	for (int tries = 0; tries < 2; tries++) {
		int reused = c->fd >= 0, rc;

		if (!reused && connect_to(c, timeout_ms) != 0)
			return -1;
		rc = attempt(c, path, extra_headers, body, len, timeout_ms, status, snip, snipsz);
		if (rc == 0)
			return 0;
		/* a kept connection the server had closed: once more on a new one */
		if (rc != -2 || !reused)
			return -1;
	}
	return -1;
}

/* lg_http_close - close and free */
void
lg_http_close(struct lg_http *c)
{
	drop(c);
	free(c->buf);
	c->buf = NULL;
	c->cap = 0;
}
