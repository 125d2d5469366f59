/*
 * lg_ws.c - a small RFC 6455 WebSocket client (see lg_ws.h).
 *
 * Framing: client frames are always masked (a fresh 4-byte key per frame
 * from a per-connection xorshift generator seeded from util's rand_u64: a
 * load generator needs no unpredictable keys, only correct framing); server
 * frames must not be. Control frames (close, ping, pong) may arrive between
 * the fragments of a data message and are handled at once.
 *
 * Threads: none of its own; see lg_ws.h.
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
#include <unistd.h>

#include <openssl/evp.h>

#include "lg_ws.h"
#include "util.h"

#define WS_GUID       "258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
#define WS_HEAD_MAX   8192      /* the upgrade answer's head */
#define WS_READ_CHUNK 65536     /* room made before each read */

static void
set_why(struct lg_ws *ws, const char *what, int err)
{
	if (err)
		snprintf(ws->why, sizeof(ws->why), "%s: %s", what, strerror(err));
	else
		snprintf(ws->why, sizeof(ws->why), "%s", what);
}

/* make room for n more bytes at the end of a buffer */
static int
reserve(unsigned char **buf, size_t *cap, size_t len, size_t n)
{
	size_t want = len + n, c = *cap ? *cap : 4096;
	unsigned char *nb;

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

static void
free_bufs(struct lg_ws *ws)
{
	free(ws->in);
	free(ws->out);
	free(ws->frag);
	ws->in = ws->out = ws->frag = NULL;
	ws->in_off = ws->in_len = ws->in_cap = 0;
	ws->out_off = ws->out_len = ws->out_cap = 0;
	ws->frag_len = ws->frag_cap = 0;
	ws->frag_op = -1;
}

/* wait for events on fd until the monotonic deadline; 1 ready, 0 timeout, -1 error */
static int
wait_fd(int fd, short events, uint64_t deadline)
{
	struct pollfd p = { .fd = fd, .events = events };
	uint64_t now;
	int rc;

	for (;;) {
		now = mono_ms();
		if (now >= deadline)
			return 0;
		rc = poll(&p, 1, (int)(deadline - now));
		if (rc > 0)
			return 1;
		if (rc < 0 && errno != EINTR)
			return -1;
	}
}

static int
connect_tcp(struct lg_ws *ws, const char *host, int port, uint64_t deadline)
{
	struct addrinfo hints, *res = NULL, *ai;
	char ports[16];
	int fd = -1, one = 1, rc;

	memset(&hints, 0, sizeof(hints));
	hints.ai_family = AF_UNSPEC;
	hints.ai_socktype = SOCK_STREAM;
	hints.ai_flags = AI_NUMERICSERV;
	snprintf(ports, sizeof(ports), "%d", port);
	if ((rc = getaddrinfo(host, ports, &hints, &res)) != 0) {
		snprintf(ws->why, sizeof(ws->why), "resolve %s: %s", host, gai_strerror(rc));
		return -1;
	}
	for (ai = res; ai != NULL; ai = ai->ai_next) {
		int err = 0;
		socklen_t el = sizeof(err);

		fd = socket(ai->ai_family, ai->ai_socktype | SOCK_NONBLOCK | SOCK_CLOEXEC,
		    ai->ai_protocol);
		if (fd < 0)
			continue;
		if (connect(fd, ai->ai_addr, ai->ai_addrlen) == 0 ||
		    (errno == EINPROGRESS && wait_fd(fd, POLLOUT, deadline) == 1 &&
		    getsockopt(fd, SOL_SOCKET, SO_ERROR, &err, &el) == 0 && err == 0))
			break;
		set_why(ws, "connect", err ? err : errno ? errno : ETIMEDOUT);
		close(fd);
		fd = -1;
	}
	freeaddrinfo(res);
	if (fd >= 0)
		setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
	return fd;
}

/* the value of header name in the head (NUL-terminated), copied into out */
static int
head_value(const char *head, const char *name, char *out, size_t outsz)
{
	size_t nl = strlen(name);

	for (const char *p = strstr(head, "\r\n"); p != NULL; p = strstr(p, "\r\n")) {
		p += 2;
		if (strncasecmp(p, name, nl) == 0 && p[nl] == ':') {
			const char *v = p + nl + 1, *e = strstr(v, "\r\n");
			size_t n;

			while (*v == ' ' || *v == '\t')
				v++;
			n = e ? (size_t)(e - v) : strlen(v);
			while (n > 0 && (v[n - 1] == ' ' || v[n - 1] == '\t'))
				n--;
			if (n >= outsz)
				return -1;
			memcpy(out, v, n);
			out[n] = '\0';
			return 0;
		}
	}
	return -1;
}

/* base64 (standard alphabet) of SHA-1(key + GUID): the expected accept value */
static int
accept_value(const char *key, char out[64])
{
	char buf[128];
	unsigned char md[EVP_MAX_MD_SIZE];
	unsigned int mdlen = 0;
	int n = snprintf(buf, sizeof(buf), "%s%s", key, WS_GUID);

	if (n < 0 || (size_t)n >= sizeof(buf) ||
	    EVP_Digest(buf, (size_t)n, md, &mdlen, EVP_sha1(), NULL) != 1 || mdlen != 20)
		return -1;
	EVP_EncodeBlock((unsigned char *)out, md, (int)mdlen);
	return 0;
}

/* lg_ws_open - connect and upgrade; see lg_ws.h */
int
lg_ws_open(struct lg_ws *ws, const char *host, int port, const char *path,
    const char *extra_headers, int timeout_ms, int *status)
{
	uint64_t deadline = mono_ms() + (uint64_t)(timeout_ms > 0 ? timeout_ms : 1);
	unsigned char raw[16];
	char key[32], want[64], got[64], *req = NULL, *head;
	size_t reqlen, off = 0, hlen = 0;
	int n;

	memset(ws, 0, sizeof(*ws));
	ws->fd = -1;
	ws->frag_op = -1;
	*status = 0;
	for (size_t i = 0; i < sizeof(raw); i += 8) {
		uint64_t r = rand_u64();
		memcpy(raw + i, &r, 8);
	}
	ws->rng = rand_u64() | 1;
	EVP_EncodeBlock((unsigned char *)key, raw, (int)sizeof(raw));
	if (accept_value(key, want) != 0) {
		set_why(ws, "SHA-1 unavailable", 0);
		return -1;
	}
	n = asprintf(&req, "GET %s HTTP/1.1\r\nHost: %s:%d\r\nUpgrade: websocket\r\n"
	    "Connection: Upgrade\r\nSec-WebSocket-Key: %s\r\nSec-WebSocket-Version: 13\r\n"
	    "%s\r\n", path, host, port, key, extra_headers ? extra_headers : "");
	if (n < 0) {
		set_why(ws, "out of memory", 0);
		return -1;
	}
	reqlen = (size_t)n;
	if ((ws->fd = connect_tcp(ws, host, port, deadline)) < 0)
		goto fail;
	while (off < reqlen) {
		ssize_t w = write(ws->fd, req + off, reqlen - off);
		if (w > 0) {
			off += (size_t)w;
		} else if (w < 0 && errno == EINTR) {
			continue;
		} else if (w < 0 && errno == EAGAIN && wait_fd(ws->fd, POLLOUT, deadline) == 1) {
			continue;
		} else {
			set_why(ws, "sending the upgrade", w < 0 ? errno : EPIPE);
			goto fail;
		}
	}
	/* the answer's head; what follows it (frames) stays in ws->in */
	if (reserve(&ws->in, &ws->in_cap, 0, WS_HEAD_MAX + 1) != 0) {
		set_why(ws, "out of memory", 0);
		goto fail;
	}
	head = (char *)ws->in;
	for (;;) {
		char *end;

		head[ws->in_len] = '\0';
		if ((end = strstr(head, "\r\n\r\n")) != NULL) {
			hlen = (size_t)(end - head) + 4;
			break;
		}
		if (ws->in_len >= WS_HEAD_MAX) {
			set_why(ws, "the upgrade answer's head is too long", 0);
			goto fail;
		}
		ssize_t r = read(ws->fd, ws->in + ws->in_len, WS_HEAD_MAX - ws->in_len);
		if (r > 0) {
			ws->in_len += (size_t)r;
		} else if (r < 0 && errno == EINTR) {
			continue;
		} else if (r < 0 && errno == EAGAIN) {
			if (wait_fd(ws->fd, POLLIN, deadline) != 1) {
				set_why(ws, "no answer to the upgrade", ETIMEDOUT);
				goto fail;
			}
		} else {
			set_why(ws, "reading the upgrade answer", r < 0 ? errno : ECONNRESET);
			goto fail;
		}
	}
	if (sscanf(head, "HTTP/1.%*d %d", status) != 1)
		*status = 0;
	if (*status != 101) {
		/* the status line and the start of the body: enough to say why */
		const char *eol = strstr(head, "\r\n");
		size_t body = ws->in_len - hlen;
		snprintf(ws->why, sizeof(ws->why), "upgrade refused: %.*s %.*s",
		    eol ? (int)(eol - head) : 40, head, (int)(body > 100 ? 100 : body), head + hlen);
		goto fail;
	}
	if (head_value(head, "Sec-WebSocket-Accept", got, sizeof(got)) != 0 ||
	    strcmp(got, want) != 0) {
		set_why(ws, "the upgrade answer has a wrong Sec-WebSocket-Accept", 0);
		*status = 0;
		goto fail;
	}
	ws->in_off = hlen;
	free(req);
	return 0;
fail:
	free(req);
	if (ws->fd >= 0)
		close(ws->fd);
	ws->fd = -1;
	free_bufs(ws);
	return -1;
}

static uint32_t
mask_key(struct lg_ws *ws)
{
	/* xorshift64 */
	ws->rng ^= ws->rng << 13;
	ws->rng ^= ws->rng >> 7;
	ws->rng ^= ws->rng << 17;
	return (uint32_t)(ws->rng >> 16);
}

/* lg_ws_begin - open a frame in the output buffer; see lg_ws.h */
unsigned char *
lg_ws_begin(struct lg_ws *ws, int opcode, size_t len)
{
	unsigned char *h;
	size_t hl = 2;
	uint32_t k = mask_key(ws);

	/* compact what was written already, so the buffer does not creep */
	if (ws->out_off > 0 && ws->out_off == ws->out_len)
		ws->out_off = ws->out_len = 0;
	if (reserve(&ws->out, &ws->out_cap, ws->out_len, 14 + len) != 0)
		return NULL;
	h = ws->out + ws->out_len;
	h[0] = (unsigned char)(0x80 | (opcode & 0x0f));
	if (len < 126) {
		h[1] = (unsigned char)(0x80 | len);
	} else if (len <= 0xffff) {
		h[1] = 0x80 | 126;
		h[2] = (unsigned char)(len >> 8);
		h[3] = (unsigned char)len;
		hl = 4;
	} else {
		h[1] = 0x80 | 127;
		for (int i = 0; i < 8; i++)
			h[2 + i] = (unsigned char)((uint64_t)len >> (56 - 8 * i));
		hl = 10;
	}
	memcpy(h + hl, &k, 4);
	ws->pending = ws->out_len;
	ws->out_len += hl + 4 + len;
	return h + hl + 4;
}

/* lg_ws_commit - mask the payload of the open frame in place */
void
lg_ws_commit(struct lg_ws *ws)
{
	unsigned char *h = ws->out + ws->pending, *p, m[4];
	size_t hl = (h[1] & 0x7f) == 126 ? 4 : (h[1] & 0x7f) == 127 ? 10 : 2;
	size_t n, i = 0;
	uint64_t m8;

	memcpy(m, h + hl, 4);
	p = h + hl + 4;
	n = (size_t)((ws->out + ws->out_len) - p);
	/* eight bytes at a time: the key repeats every four */
	for (int j = 0; j < 8; j++)
		((unsigned char *)&m8)[j] = m[j & 3];
	for (; i + 8 <= n; i += 8) {
		uint64_t v;
		memcpy(&v, p + i, 8);
		v ^= m8;
		memcpy(p + i, &v, 8);
	}
	for (; i < n; i++)
		p[i] ^= m[i & 3];
}

/* lg_ws_put - queue one message */
int
lg_ws_put(struct lg_ws *ws, int opcode, const void *data, size_t len)
{
	unsigned char *p = lg_ws_begin(ws, opcode, len);

	if (p == NULL)
		return -1;
	if (len > 0)
		memcpy(p, data, len);
	lg_ws_commit(ws);
	return 0;
}

/* lg_ws_queued - bytes not yet written */
size_t
lg_ws_queued(const struct lg_ws *ws)
{
	return ws->out_len - ws->out_off;
}

/* lg_ws_flush - write what is queued */
int
lg_ws_flush(struct lg_ws *ws)
{
	if (ws->fd < 0)
		return -1;
	while (ws->out_off < ws->out_len) {
		ssize_t w = send(ws->fd, ws->out + ws->out_off, ws->out_len - ws->out_off,
		    MSG_NOSIGNAL);
		if (w > 0) {
			ws->out_off += (size_t)w;
		} else if (w < 0 && errno == EINTR) {
			continue;
		} else if (w < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
			return 1;
		} else {
			set_why(ws, "write", w < 0 ? errno : EPIPE);
			return -1;
		}
	}
	ws->out_off = ws->out_len = 0;
	return 0;
}

/* lg_ws_read - take what the kernel has */
int
lg_ws_read(struct lg_ws *ws)
{
	ssize_t r;

	if (ws->fd < 0)
		return LG_WS_CLOSED;
	/* move what is left to the front before making room */
	if (ws->in_off > 0) {
		memmove(ws->in, ws->in + ws->in_off, ws->in_len - ws->in_off);
		ws->in_len -= ws->in_off;
		ws->in_off = 0;
	}
	if (reserve(&ws->in, &ws->in_cap, ws->in_len, WS_READ_CHUNK) != 0) {
		set_why(ws, "out of memory", 0);
		return LG_WS_CLOSED;
	}
	for (;;) {
		r = read(ws->fd, ws->in + ws->in_len, ws->in_cap - ws->in_len);
		if (r > 0) {
			ws->in_len += (size_t)r;
			return (int)(r > 0x7fffffff ? 0x7fffffff : r);
		}
		if (r < 0 && errno == EINTR)
			continue;
		if (r < 0 && (errno == EAGAIN || errno == EWOULDBLOCK))
			return LG_WS_AGAIN;
		set_why(ws, r == 0 ? "the server closed the connection" : "read", r == 0 ? 0 : errno);
		return LG_WS_CLOSED;
	}
}

/* lg_ws_next - the next whole data message; see lg_ws.h */
int
lg_ws_next(struct lg_ws *ws, int *opcode, const unsigned char **data, size_t *len)
{
	for (;;) {
		const unsigned char *h = ws->in + ws->in_off;
		size_t have = ws->in_len - ws->in_off, hl = 2;
		uint64_t n;
		int op, fin;

		if (have < 2)
			return LG_WS_AGAIN;
		fin = (h[0] & 0x80) != 0;
		op = h[0] & 0x0f;
		if (h[1] & 0x80) {
			set_why(ws, "the server sent a masked frame", 0);
			return LG_WS_CLOSED;
		}
		n = h[1] & 0x7f;
		if (n == 126) {
			if (have < 4)
				return LG_WS_AGAIN;
			n = (uint64_t)h[2] << 8 | h[3];
			hl = 4;
		} else if (n == 127) {
			if (have < 10)
				return LG_WS_AGAIN;
			n = 0;
			for (int i = 0; i < 8; i++)
				n = n << 8 | h[2 + i];
			hl = 10;
		}
		if (n > LG_WS_MAX_MSG) {
			set_why(ws, "a message over 8 MiB", 0);
			return LG_WS_CLOSED;
		}
		if (have < hl + n)
			return LG_WS_AGAIN;
		const unsigned char *p = h + hl;
		ws->in_off += hl + (size_t)n;

		if (op & 0x8) {		/* control: close, ping, pong */
			if (op == LG_WS_OP_PING) {
				if (lg_ws_put(ws, LG_WS_OP_PONG, p, (size_t)n) != 0) {
					set_why(ws, "out of memory", 0);
					return LG_WS_CLOSED;
				}
				continue;
			}
			if (op == LG_WS_OP_CLOSE) {
				unsigned code = n >= 2 ? (unsigned)p[0] << 8 | p[1] : 1005;
				snprintf(ws->why, sizeof(ws->why), "the server closed the socket: %u %.*s",
				    code, n > 2 ? (int)(n - 2 > 100 ? 100 : n - 2) : 0,
				    n > 2 ? (const char *)p + 2 : "");
				if (!ws->close_sent) {
					ws->close_sent = 1;
					lg_ws_put(ws, LG_WS_OP_CLOSE, p, n >= 2 ? 2 : 0);
					lg_ws_flush(ws);
				}
				return LG_WS_CLOSED;
			}
			continue;	/* pong, or a reserved control opcode */
		}
		if (op == LG_WS_OP_CONT) {
			if (ws->frag_op < 0) {
				set_why(ws, "a continuation frame without a start", 0);
				return LG_WS_CLOSED;
			}
		} else if (ws->frag_op >= 0) {
			set_why(ws, "a new message inside a fragmented one", 0);
			return LG_WS_CLOSED;
		} else if (fin) {
			*opcode = op;	/* the common case: one frame, handed out in place */
			*data = p;
			*len = (size_t)n;
			return 1;
		} else {
			ws->frag_op = op;
			ws->frag_len = 0;
		}
		if (ws->frag_len + n > LG_WS_MAX_MSG ||
		    reserve(&ws->frag, &ws->frag_cap, ws->frag_len, (size_t)n + 1) != 0) {
			set_why(ws, "a fragmented message too large", 0);
			return LG_WS_CLOSED;
		}
		memcpy(ws->frag + ws->frag_len, p, (size_t)n);
		ws->frag_len += (size_t)n;
		if (fin) {
			*opcode = ws->frag_op;
			*data = ws->frag;
			*len = ws->frag_len;
			ws->frag_op = -1;
			return 1;
		}
	}
}

/* lg_ws_close - close frame, close the socket, free */
void
lg_ws_close(struct lg_ws *ws)
{
	if (ws->fd >= 0) {
		if (!ws->close_sent) {
			static const unsigned char normal[2] = { 0x03, 0xe8 };	/* 1000 */
			ws->close_sent = 1;
			if (lg_ws_put(ws, LG_WS_OP_CLOSE, normal, sizeof(normal)) == 0)
				lg_ws_flush(ws);
		}
		shutdown(ws->fd, SHUT_WR);
		close(ws->fd);
		ws->fd = -1;
	}
	free_bufs(ws);
}
