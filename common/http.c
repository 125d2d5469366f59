/*
 * http.c - civetweb helpers. Stateless; safe from any worker thread.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include <cJSON.h>

#include "http.h"

/* http_status_text - reason phrase for the codes we use */
const char *
http_status_text(int status)
{
	switch (status) {
	case 200: return "OK";
	case 201: return "Created";
	case 202: return "Accepted";
	case 204: return "No Content";
	case 400: return "Bad Request";
	case 401: return "Unauthorized";
	case 403: return "Forbidden";
	case 404: return "Not Found";
	case 405: return "Method Not Allowed";
	case 409: return "Conflict";
	case 413: return "Payload Too Large";
	case 429: return "Too Many Requests";
	case 500: return "Internal Server Error";
	case 502: return "Bad Gateway";
	case 503: return "Service Unavailable";
	case 504: return "Gateway Timeout";
	case 507: return "Insufficient Storage";
	default: return "Status";
	}
}

/* http_reply - status line, headers, body; one write */
void
http_reply(struct mg_connection *c, int status, const char *content_type,
    const char *extra_headers, const void *body, size_t len)
{
	char head[1024];
	int n = snprintf(head, sizeof(head),
	    "HTTP/1.1 %d %s\r\nContent-Type: %s\r\nContent-Length: %zu\r\n%sCache-Control: no-store\r\n\r\n",
	    status, http_status_text(status), content_type ? content_type : "text/plain", len,
	    extra_headers ? extra_headers : "");
	if (n < 0 || (size_t)n >= sizeof(head))
		return;
	if (len > 0 && len < 16384) {
		char buf[sizeof(head) + 16384];
		memcpy(buf, head, (size_t)n);
		memcpy(buf + n, body, len);
		mg_write(c, buf, (size_t)n + len);
	} else {
		mg_write(c, head, (size_t)n);
		if (len > 0)
			mg_write(c, body, len);
	}
}

/* http_json - reply with a JSON text body */
void
http_json(struct mg_connection *c, int status, const char *json)
{
	http_reply(c, status, "application/json", NULL, json, strlen(json));
}

/* http_error - {"error":{...}} with Retry-After when retry_after_s > 0 */
void
http_error(struct mg_connection *c, int status, const char *code, const char *message,
    const char *correlation_id, unsigned retry_after_s)
{
	cJSON *root = cJSON_CreateObject(), *e = cJSON_AddObjectToObject(root, "error");
	char extra[64] = "";
	cJSON_AddStringToObject(e, "code", code);
	cJSON_AddStringToObject(e, "message", message);
	if (correlation_id && *correlation_id)
		cJSON_AddStringToObject(e, "correlationId", correlation_id);
	char *txt = cJSON_PrintUnformatted(root);
	if (retry_after_s > 0)
		snprintf(extra, sizeof(extra), "Retry-After: %u\r\n", retry_after_s);
	if (txt)
		http_reply(c, status, "application/json", extra, txt, strlen(txt));
	free(txt);
	cJSON_Delete(root);
}

/* http_read_body - read the whole body into sb (at most max bytes) */
enum cr_err
http_read_body(struct mg_connection *c, size_t max, struct strbuf *sb)
{
	const struct mg_request_info *ri = mg_get_request_info(c);
	char buf[16384];
	if (ri->content_length > 0 && (unsigned long long)ri->content_length > max)
		return CR_ERR_TOO_BIG;
	for (;;) {
		int n = mg_read(c, buf, sizeof(buf));
		if (n < 0)
			return CR_ERR_IO;
		if (n == 0)
			break;
		if (sb->len + (size_t)n > max)
			return CR_ERR_TOO_BIG;
		if (sb_append(sb, buf, (size_t)n) < 0)
			return CR_ERR_NOMEM;
	}
	if (sb->data == NULL && sb_append(sb, "", 0) < 0)
		return CR_ERR_NOMEM;
	return CR_OK;
}

/* http_header_count - how many times the request carries header name */
int
http_header_count(const struct mg_connection *c, const char *name)
{
	const struct mg_request_info *ri = mg_get_request_info(c);
	int n = 0;
	for (int i = 0; i < ri->num_headers; i++)
		if (strcasecmp(ri->http_headers[i].name, name) == 0)
			n++;
	return n;
}
