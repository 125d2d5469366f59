/*
 * lg_hook.c - the hook server embedded in clawrelay-loadgen.
 *
 * The receiving connectors' CLAWRELAY_HOOK_URL points here
 * (http://127.0.0.1:<port>/hook/<agent>). Each POST is one delivered
 * message: the server reads the payload's header (scenario, sequence number,
 * send time), records the arrival in the current scenario's record and
 * answers 200, keeping the connection alive. Anything it cannot parse, or
 * that belongs to no current scenario, is counted as stray and still
 * answered 200, so a connector never retries because of the bench.
 * GET /healthz answers 200 too; other paths 404.
 *
 * It is a small HTTP/1.1 server of its own (one thread, epoll, level-
 * triggered) rather than civetweb: a delivered message then costs the load
 * generator one read and one write instead of a civetweb request (about a
 * third of the CPU on this path), which leaves that CPU to the stack under
 * test. Requests must carry Content-Length (the connectors' libcurl does);
 * a chunked request is answered 411 and its connection closed. Pipelined
 * requests are answered in order with one write; `Expect: 100-continue` is
 * honoured; `Connection: close` and HTTP/1.0 close after the answer.
 *
 * Threads: one server thread owns every connection. The current record is
 * guarded by cur_lock: the server holds it for reading while it records,
 * and lg_hook_set takes it for writing, so after lg_hook_set(NULL) returns
 * the server no longer touches the old record and main may free it.
 * Counters are atomics.
 */
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <unistd.h>
#include <arpa/inet.h>

#include "lg.h"

#define HOOK_HEAD_MAX   16384              /* the longest request head taken */
#define HOOK_BODY_MAX   (64u * 1024 * 1024)  /* the largest body taken */
#define HOOK_READ_MIN   16384              /* room made before each read */
#define HOOK_EVENTS     64

/* one client connection (the server thread only) */
struct hconn {
	int fd;
	int closing;                 /* close once out is written */
	int continued;               /* 100 Continue sent for the request being read */
	char *in;                    /* received, not yet consumed */
	size_t in_len, in_cap;
	char *out;                   /* answers not yet written */
	size_t out_off, out_len, out_cap;
	struct hconn *prev, *next;   /* every connection, for the stop */
};

static int listen_fd = -1, stop_fd = -1, ep_fd = -1;
static pthread_t hook_th;
static int hook_running;
static struct hconn *conns;
static pthread_rwlock_t cur_lock = PTHREAD_RWLOCK_INITIALIZER;
static struct lg_rec *cur;
static atomic_size_t stray, calls;

static const char ok_answer[] = "HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n";
static const char health_answer[] = "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n"
    "Content-Length: 3\r\n\r\nok\n";
static const char notfound_answer[] = "HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n";
static const char continue_answer[] = "HTTP/1.1 100 Continue\r\n\r\n";
static const char bad_answer[] = "HTTP/1.1 400 Bad Request\r\nConnection: close\r\n"
    "Content-Length: 0\r\n\r\n";
static const char length_answer[] = "HTTP/1.1 411 Length Required\r\nConnection: close\r\n"
    "Content-Length: 0\r\n\r\n";
static const char large_answer[] = "HTTP/1.1 413 Content Too Large\r\nConnection: close\r\n"
    "Content-Length: 0\r\n\r\n";

/* parse "clawbench s=<n> q=<n> t=<n>;" at the start of the n bytes at p */
static int
parse_payload(const char *p, size_t n, int *scen, size_t *seq, uint64_t *t)
{
	static const char magic[] = "clawbench s=";
	unsigned long long v[3];
	const char *keys[3] = { "", " q=", " t=" };
	const char *end = p + n;

	if (n < sizeof(magic) - 1 || memcmp(p, magic, sizeof(magic) - 1) != 0)
		return -1;
	p += sizeof(magic) - 1;
	for (int i = 0; i < 3; i++) {
		size_t kl = strlen(keys[i]);
		if ((size_t)(end - p) < kl || memcmp(p, keys[i], kl) != 0)
			return -1;
		p += kl;
		if (p >= end || *p < '0' || *p > '9')
			return -1;
		for (v[i] = 0; p < end && *p >= '0' && *p <= '9'; p++)
			v[i] = v[i] * 10 + (unsigned long long)(*p - '0');
	}
	if (p >= end || *p != ';' || v[0] > 1000000)
		return -1;
	*scen = (int)v[0];
	*seq = (size_t)v[1];
	*t = (uint64_t)v[2];
	return 0;
}

static void
record(int scen, size_t seq, uint64_t t, uint64_t arrival)
{
	struct lg_rec *rec;

	pthread_rwlock_rdlock(&cur_lock);
	rec = cur;
	if (rec == NULL || rec->id != scen || seq >= rec->cap) {
		atomic_fetch_add(&stray, 1);
		goto out;
	}
	uint64_t bit = 1ull << (seq & 63);
	if (atomic_fetch_or(&rec->seen[seq >> 6], bit) & bit) {
		atomic_fetch_add(&rec->dups, 1);
		goto out;
	}
	uint64_t lat = arrival > t ? arrival - t : 0;
	size_t i = atomic_fetch_add(&rec->delivered, 1);
	rec->lat_us[i] = lat > UINT32_MAX ? UINT32_MAX : (uint32_t)lat;
	rec->e2e_by_seq[seq] = lat >= UINT32_MAX ? UINT32_MAX : (uint32_t)lat + 1;
	if (arrival < rec->t_end_us)
		atomic_fetch_add(&rec->delivered_in_window, 1);
	uint64_t last = atomic_load(&rec->t_last_deliver_us);
	while (arrival > last && !atomic_compare_exchange_weak(&rec->t_last_deliver_us, &last, arrival))
		;
out:
	pthread_rwlock_unlock(&cur_lock);
}

static int
grow(char **buf, size_t *cap, size_t want)
{
	size_t c = *cap ? *cap : 4096;
	char *nb;

	if (want <= *cap)
		return 0;
	while (c < want)
		c *= 2;
	if ((nb = realloc(*buf, c)) == NULL)
		return -1;
	*buf = nb;
	*cap = c;
	return 0;
}

static int
queue_out(struct hconn *c, const char *s, size_t n)
{
	if (c->out_off == c->out_len)
		c->out_off = c->out_len = 0;
	if (grow(&c->out, &c->out_cap, c->out_len + n) != 0)
		return -1;
	memcpy(c->out + c->out_len, s, n);
	c->out_len += n;
	return 0;
}

/* the value of header name in head[0, n), or NULL; *vl its length */
static const char *
header(const char *head, size_t n, const char *name, size_t *vl)
{
	size_t nl = strlen(name);
	const char *p = memchr(head, '\n', n), *end = head + n;

	while (p != NULL && ++p < end) {
		const char *eol = memchr(p, '\n', (size_t)(end - p));
		if (eol == NULL)
			break;
		if ((size_t)(eol - p) > nl && strncasecmp(p, name, nl) == 0 && p[nl] == ':') {
			const char *v = p + nl + 1, *e = eol;
			while (v < e && (*v == ' ' || *v == '\t'))
				v++;
			while (e > v && (e[-1] == '\r' || e[-1] == ' ' || e[-1] == '\t'))
				e--;
			*vl = (size_t)(e - v);
			return v;
		}
		p = eol;
	}
	return NULL;
}

/* answer every whole request in c->in; -1: close the connection now */
static int
serve(struct hconn *c, uint64_t arrival)
{
	size_t off = 0;

	while (off < c->in_len && !c->closing) {
		const char *req = c->in + off, *v, *hend;
		size_t have = c->in_len - off, hlen, vl, body = 0;

		/* find the head's end without relying on a NUL */
		hend = NULL;
		for (const char *p = req; (p = memchr(p, '\r', have - (size_t)(p - req))) != NULL; p++) {
			if ((size_t)(req + have - p) >= 4 && memcmp(p, "\r\n\r\n", 4) == 0) {
				hend = p;
				break;
			}
		}
		if (hend == NULL) {
			if (have > HOOK_HEAD_MAX) {
				queue_out(c, bad_answer, sizeof(bad_answer) - 1);
				c->closing = 1;
			}
			break;
		}
		hlen = (size_t)(hend - req) + 4;
		if ((v = header(req, hlen, "Transfer-Encoding", &vl)) != NULL) {
			queue_out(c, length_answer, sizeof(length_answer) - 1);
			c->closing = 1;
			break;
		}
		if ((v = header(req, hlen, "Content-Length", &vl)) != NULL) {
			int digits = vl > 0;
			for (size_t i = 0; i < vl && digits && body <= HOOK_BODY_MAX; i++) {
				digits = v[i] >= '0' && v[i] <= '9';
				body = body * 10 + (size_t)(v[i] - '0');
			}
			if (!digits) {
				queue_out(c, bad_answer, sizeof(bad_answer) - 1);
				c->closing = 1;
				break;
			}
			if (body > HOOK_BODY_MAX) {
				queue_out(c, large_answer, sizeof(large_answer) - 1);
				c->closing = 1;
				break;
			}
		}
		if (have < hlen + body) {
			/* the body is still coming; a client waiting for 100 gets it once */
			if (!c->continued && header(req, hlen, "Expect", &vl) != NULL) {
				c->continued = 1;
				queue_out(c, continue_answer, sizeof(continue_answer) - 1);
			}
			break;
		}
		c->continued = 0;

		/* the request line: METHOD SP PATH SP HTTP/1.x */
		const char *sp1 = memchr(req, ' ', hlen), *sp2;
		sp2 = sp1 ? memchr(sp1 + 1, ' ', (size_t)(req + hlen - sp1 - 1)) : NULL;
		if (sp1 == NULL || sp2 == NULL) {
			queue_out(c, bad_answer, sizeof(bad_answer) - 1);
			c->closing = 1;
			break;
		}
		if (strncmp(sp2 + 1, "HTTP/1.0", 8) == 0 ||
		    ((v = header(req, hlen, "Connection", &vl)) != NULL && vl == 5 &&
		    strncasecmp(v, "close", 5) == 0))
			c->closing = 1;
		size_t plen = (size_t)(sp2 - sp1 - 1);
		const char *path = sp1 + 1;
		if (plen >= 5 && memcmp(path, "/hook", 5) == 0 &&
		    (plen == 5 || path[5] == '/' || path[5] == '?')) {
			int scen;
			size_t seq;
			uint64_t t;

			atomic_fetch_add(&calls, 1);
			if (parse_payload(req + hlen, body, &scen, &seq, &t) == 0)
				record(scen, seq, t, arrival);
			else
				atomic_fetch_add(&stray, 1);
			queue_out(c, ok_answer, sizeof(ok_answer) - 1);
		} else if (plen >= 8 && memcmp(path, "/healthz", 8) == 0) {
			queue_out(c, health_answer, sizeof(health_answer) - 1);
		} else {
			queue_out(c, notfound_answer, sizeof(notfound_answer) - 1);
		}
		off += hlen + body;
	}
	if (off > 0) {
		memmove(c->in, c->in + off, c->in_len - off);
		c->in_len -= off;
	}
	return 0;
}

/* write what is queued; 0 done or waiting for POLLOUT, -1 broken */
static int
flush_out(struct hconn *c)
{
	while (c->out_off < c->out_len) {
		ssize_t w = send(c->fd, c->out + c->out_off, c->out_len - c->out_off, MSG_NOSIGNAL);
		if (w > 0)
			c->out_off += (size_t)w;
		else if (w < 0 && errno == EINTR)
			continue;
		else if (w < 0 && (errno == EAGAIN || errno == EWOULDBLOCK))
			break;
		else
			return -1;
	}
	struct epoll_event ev = { .events = EPOLLIN | (c->out_off < c->out_len ? EPOLLOUT : 0),
		.data.ptr = c };
	epoll_ctl(ep_fd, EPOLL_CTL_MOD, c->fd, &ev);
	return 0;
}

static void
conn_close(struct hconn *c)
{
	epoll_ctl(ep_fd, EPOLL_CTL_DEL, c->fd, NULL);
	close(c->fd);
	if (c->prev)
		c->prev->next = c->next;
	else
		conns = c->next;
	if (c->next)
		c->next->prev = c->prev;
	free(c->in);
	free(c->out);
	free(c);
}

static void
accept_all(void)
{
	for (;;) {
		int fd = accept4(listen_fd, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC), one = 1;
		struct hconn *c;

		if (fd < 0)
			return;	/* EAGAIN, or out of descriptors: the next event retries */
		setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
		if ((c = calloc(1, sizeof(*c))) == NULL) {
			close(fd);
			continue;
		}
		c->fd = fd;
		struct epoll_event ev = { .events = EPOLLIN, .data.ptr = c };
		if (epoll_ctl(ep_fd, EPOLL_CTL_ADD, fd, &ev) != 0) {
			close(fd);
			free(c);
			continue;
		}
		c->next = conns;
		if (conns)
			conns->prev = c;
		conns = c;
	}
}

/* a readable (or writable) connection; -1: close it */
static int
on_ready(struct hconn *c, uint32_t events)
{
	if (events & EPOLLIN) {
		if (grow(&c->in, &c->in_cap, c->in_len + HOOK_READ_MIN) != 0)
			return -1;
		ssize_t r = read(c->fd, c->in + c->in_len, c->in_cap - c->in_len);
		if (r == 0 || (r < 0 && errno != EAGAIN && errno != EINTR))
			return -1;
		if (r > 0) {
			c->in_len += (size_t)r;
			if (serve(c, lg_mono_us()) != 0)
				return -1;
		}
	} else if (events & (EPOLLERR | EPOLLHUP)) {
		return -1;
	}
	if (flush_out(c) != 0)
		return -1;
	return c->closing && c->out_off == c->out_len ? -1 : 0;
}

static void *
hook_main(void *arg)
{
	struct epoll_event evs[HOOK_EVENTS];

	for (;;) {
		int n = epoll_wait(ep_fd, evs, HOOK_EVENTS, -1);
		if (n < 0 && errno == EINTR)
			continue;
		if (n < 0)
			break;
		for (int i = 0; i < n; i++) {
			if (evs[i].data.ptr == &listen_fd) {
				accept_all();
			} else if (evs[i].data.ptr == &stop_fd) {
				return NULL;
			} else {
				struct hconn *c = evs[i].data.ptr;
				if (on_ready(c, evs[i].events) != 0)
					conn_close(c);
			}
		}
	}
	return NULL;
}

/* lg_hook_start - start the hook server on 127.0.0.1:port */
int
lg_hook_start(int port)
{
	struct sockaddr_in a;
	int one = 1;
	struct epoll_event ev = { .events = EPOLLIN };

	memset(&a, 0, sizeof(a));
	a.sin_family = AF_INET;
	a.sin_port = htons((uint16_t)port);
	a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
	listen_fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
	stop_fd = eventfd(0, EFD_CLOEXEC);
	ep_fd = epoll_create1(EPOLL_CLOEXEC);
	if (listen_fd < 0 || stop_fd < 0 || ep_fd < 0)
		goto fail;
	setsockopt(listen_fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
	if (bind(listen_fd, (struct sockaddr *)&a, sizeof(a)) != 0 || listen(listen_fd, 512) != 0)
		goto fail;
	ev.data.ptr = &listen_fd;
	if (epoll_ctl(ep_fd, EPOLL_CTL_ADD, listen_fd, &ev) != 0)
		goto fail;
	ev.data.ptr = &stop_fd;
	if (epoll_ctl(ep_fd, EPOLL_CTL_ADD, stop_fd, &ev) != 0)
		goto fail;
	if (pthread_create(&hook_th, NULL, hook_main, NULL) != 0)
		goto fail;
	hook_running = 1;
	return 0;
fail:
	if (listen_fd >= 0)
		close(listen_fd);
	if (stop_fd >= 0)
		close(stop_fd);
	if (ep_fd >= 0)
		close(ep_fd);
	listen_fd = stop_fd = ep_fd = -1;
	return -1;
}

/* lg_hook_stop - stop the server thread, close every connection */
void
lg_hook_stop(void)
{
	uint64_t one = 1;

	if (!hook_running)
		return;
	if (write(stop_fd, &one, sizeof(one)) != (ssize_t)sizeof(one))
		perror("loadgen: stopping the hook server");
	pthread_join(hook_th, NULL);
	hook_running = 0;
	while (conns != NULL)
		conn_close(conns);
	close(listen_fd);
	close(stop_fd);
	close(ep_fd);
	listen_fd = stop_fd = ep_fd = -1;
}

/* lg_hook_set - direct deliveries to rec (borrowed until lg_hook_set(NULL)) */
void
lg_hook_set(struct lg_rec *rec)
{
	pthread_rwlock_wrlock(&cur_lock);
	cur = rec;
	pthread_rwlock_unlock(&cur_lock);
}

/* lg_hook_stray - deliveries that named no current scenario */
size_t
lg_hook_stray(void)
{
	return atomic_load(&stray);
}

/* lg_hook_calls - every hook request so far */
size_t
lg_hook_calls(void)
{
	return atomic_load(&calls);
}
