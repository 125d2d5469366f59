/*
 * lg_ws.h - a small RFC 6455 WebSocket client for clawrelay-loadgen (only
 * tools/loadgen includes it).
 *
 * One struct lg_ws is one TCP connection (TCP_NODELAY). lg_ws_open connects
 * and does the HTTP upgrade blocking, with a time limit; afterwards the
 * socket is non-blocking and the caller drives it with poll():
 *   - outgoing messages are appended to an output buffer (masked, as a
 *     client must) and leave with lg_ws_flush, so everything queued in one
 *     round goes out in as few write()s as the kernel takes;
 *   - lg_ws_read takes what the kernel has, and lg_ws_next hands out whole
 *     messages one by one. Pings are answered (the pong is queued), pongs
 *     are dropped, fragments are joined, and a close from the server is
 *     answered and reported as LG_WS_CLOSED.
 *
 * Threads: a struct lg_ws belongs to one thread at a time; nothing is shared
 * between connections.
 */
#ifndef LG_WS_H
#define LG_WS_H

#include <stddef.h>
#include <stdint.h>

#define LG_WS_OP_CONT  0x0
#define LG_WS_OP_TEXT  0x1
#define LG_WS_OP_BIN   0x2
#define LG_WS_OP_CLOSE 0x8
#define LG_WS_OP_PING  0x9
#define LG_WS_OP_PONG  0xa

#define LG_WS_MAX_MSG  (8u * 1024 * 1024)  /* a larger incoming message is an error */

/* lg_ws_next / lg_ws_read results besides "got one" */
#define LG_WS_AGAIN    0                   /* nothing (more) yet */
#define LG_WS_CLOSED   (-1)                /* closed by the server, EOF or error */

struct lg_ws {
	int fd;                      /* -1 when not open */
	int close_sent;              /* a close frame was queued */
	uint64_t rng;                /* mask keys */
	unsigned char *in;           /* received bytes [in_off, in_len) not yet handed out */
	size_t in_off, in_len, in_cap;
	unsigned char *out;          /* queued bytes [out_off, out_len) not yet written */
	size_t out_off, out_len, out_cap;
	unsigned char *frag;         /* a fragmented message being joined */
	size_t frag_len, frag_cap;
	int frag_op;                 /* its opcode, -1 when none */
	size_t pending;              /* offset in out of the frame lg_ws_begin opened */
	char why[160];               /* why the connection failed or closed */
};

/* lg_ws_open - connect to host:port and upgrade GET path (extra_headers:
 * complete "Name: value\r\n" lines, or NULL) within timeout_ms. Returns 0
 * with ws open; -1 with ws closed, the HTTP status in *status (0 if none)
 * and the reason (status line and the start of the body) in ws->why. */
int lg_ws_open(struct lg_ws *ws, const char *host, int port, const char *path,
    const char *extra_headers, int timeout_ms, int *status);

/* lg_ws_begin - open a frame of opcode with a payload of len bytes in the
 * output buffer; returns where the payload goes (write exactly len bytes,
 * then lg_ws_commit before the next begin), NULL when out of memory */
unsigned char *lg_ws_begin(struct lg_ws *ws, int opcode, size_t len);
/* lg_ws_commit - mask the payload of the frame lg_ws_begin opened */
void lg_ws_commit(struct lg_ws *ws);
/* lg_ws_put - queue one message (a copy of data); 0 or -1 (out of memory) */
int lg_ws_put(struct lg_ws *ws, int opcode, const void *data, size_t len);
/* lg_ws_queued - bytes queued and not yet written */
size_t lg_ws_queued(const struct lg_ws *ws);

/* lg_ws_flush - write queued bytes until done or the kernel takes no more:
 * 0 all written, 1 some left (wait for POLLOUT), -1 broken (ws->why) */
int lg_ws_flush(struct lg_ws *ws);
/* lg_ws_read - take what the kernel has: >0 bytes read, LG_WS_AGAIN,
 * LG_WS_CLOSED (EOF or error, ws->why) */
int lg_ws_read(struct lg_ws *ws);
/* lg_ws_next - the next whole data message already read: 1 with *opcode,
 * *data and *len set (valid until the next lg_ws_read or lg_ws_next),
 * LG_WS_AGAIN, or LG_WS_CLOSED (close frame or protocol error, ws->why) */
int lg_ws_next(struct lg_ws *ws, int *opcode, const unsigned char **data, size_t *len);

/* lg_ws_close - queue a close frame (1000), write what the kernel takes
 * at once, close the socket and free the buffers; ws can be opened again */
void lg_ws_close(struct lg_ws *ws);

#endif
