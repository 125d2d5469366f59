/*
 * http.h - helpers over civetweb for every service's HTTP handlers:
 * whole responses in one write, JSON error bodies, bounded body reads.
 */
#ifndef CR_HTTP_H
#define CR_HTTP_H

#include <stddef.h>
#include <civetweb.h>

#include "err.h"
#include "util.h"

/* http_reply - status line, headers (extra: "Name: v\r\n..." or NULL), body; one write */
void http_reply(struct mg_connection *c, int status, const char *content_type,
    const char *extra_headers, const void *body, size_t len);
/* http_json - reply with a JSON text body */
void http_json(struct mg_connection *c, int status, const char *json);
/* http_error - {"error":{"code","message","correlationId"}} with Retry-After
 * when retry_after_s > 0 */
void http_error(struct mg_connection *c, int status, const char *code, const char *message,
    const char *correlation_id, unsigned retry_after_s);
/* http_read_body - read the whole body into sb (at most max bytes):
 * CR_ERR_TOO_BIG if larger, CR_ERR_IO on a broken read */
enum cr_err http_read_body(struct mg_connection *c, size_t max, struct strbuf *sb);
/* http_status_text - "OK", "Accepted", ... */
const char *http_status_text(int status);
/* http_header_count - how many times the request carries header name */
int http_header_count(const struct mg_connection *c, const char *name);

#endif
