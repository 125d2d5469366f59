/*
 * lg_http.h - a minimal blocking HTTP/1.1 client for clawrelay-loadgen's
 * POSTs (only tools/loadgen includes it).
 *
 * One struct lg_http is one keep-alive connection to one host:port, used by
 * one thread at a time. lg_http_post writes the request (head and body in
 * one writev) and reads the whole answer: Content-Length, chunked, or
 * delimited by the server closing. It (re)connects when needed, with
 * TCP_NODELAY, and tries once more on a fresh connection when a kept one
 * turns out to be closed by the server before any byte of the answer came
 * (the usual keep-alive race). Everything waits at most the time limit.
 *
 * Why not libcurl: this is the load generator's hot path, and a request
 * here costs a fraction of a libcurl easy transfer (no URL parsing, header
 * assembly or state machine per request), which leaves that CPU to the
 * stack under test on a shared machine.
 */
#ifndef LG_HTTP_H
#define LG_HTTP_H

#include <stddef.h>

struct lg_http {
	int fd;                      /* -1 when not connected */
	char host[256];
	int port;
	char *buf;                   /* request head, then the answer */
	size_t cap;
	char why[160];               /* why the last request failed */
};

/* lg_url_parse - split http://host[:port][/base] (no trailing '/' kept in
 * base); 0 or -1 */
int lg_url_parse(const char *url, char *host, size_t hostsz, int *port, char *base,
    size_t basesz);

/* lg_http_init - an unconnected client for host:port */
void lg_http_init(struct lg_http *c, const char *host, int port);

/* lg_http_post - POST body (len bytes) to path with extra_headers
 * (complete "Name: value\r\n" lines, or NULL) within timeout_ms. Returns 0
 * with the answer's status in *status and the start of its body (NUL-
 * terminated, at most snipsz - 1 bytes) in snip; -1 on a transport failure
 * (c->why says what), with the connection closed. */
int lg_http_post(struct lg_http *c, const char *path, const char *extra_headers,
    const void *body, size_t len, int timeout_ms, long *status, char *snip, size_t snipsz);

/* lg_http_close - close the connection and free the buffer */
void lg_http_close(struct lg_http *c);

#endif
