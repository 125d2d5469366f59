/*
 * cli_http.c - signed requests to the gateway (DESIGN section 5) with
 * libcurl, and `clawrelay send`.
 *
 * The proof covers the method, the path exactly as the gateway sees it, the
 * X-Claw-* headers and the SHA-256 of the body. libcurl is told not to touch
 * the path (CURLOPT_PATH_AS_IS: an ID such as ".." must not be squashed away)
 * and not to add headers the proof or the gateway would trip over (Expect).
 * Main thread only; one request per process.
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/random.h>
#include <time.h>

#include <cJSON.h>
#include <curl/curl.h>

#include "auth.h"
#include "cli.h"
#include "env.h"
#include "util.h"

#define CLI_NONCE_LEN 24
#define CLI_BODY_MAX (4u * 1024 * 1024)   /* the gateway refuses more anyway */
#define CLI_RESP_MAX (1u * 1024 * 1024)

static const char nonce_alphabet[] =
    "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";

/* 24 characters of [A-Za-z0-9_-] from the OS's random source (64 symbols:
 * one byte's low 6 bits each, no bias) */
static int
make_nonce(char out[CLI_NONCE_LEN + 1])
{
	unsigned char r[CLI_NONCE_LEN];
	size_t got = 0;

	while (got < sizeof(r)) {
		ssize_t n = getrandom(r + got, sizeof(r) - got, 0);
		if (n < 0) {
			if (errno == EINTR)
				continue;
			return -1;
		}
		got += (size_t)n;
	}
	for (int i = 0; i < CLI_NONCE_LEN; i++)
		out[i] = nonce_alphabet[r[i] & 63];
	out[CLI_NONCE_LEN] = '\0';
	return 0;
}

static size_t
on_body(char *p, size_t size, size_t n, void *arg)
{
	struct strbuf *sb = arg;
	size_t len = size * n;

	if (sb->len + len > CLI_RESP_MAX || sb_append(sb, p, len) != 0)
		return 0;	/* makes curl fail with CURLE_WRITE_ERROR */
	return len;
}

static size_t
on_header(char *p, size_t size, size_t n, void *arg)
{
	struct cli_http_resp *resp = arg;
	size_t len = size * n;
	static const char name[] = "Retry-After:";

	if (len > sizeof(name) - 1 && strncasecmp(p, name, sizeof(name) - 1) == 0) {
		const char *v = p + sizeof(name) - 1;
		size_t vl = len - (sizeof(name) - 1);
		while (vl > 0 && (*v == ' ' || *v == '\t'))
			v++, vl--;
		while (vl > 0 && (v[vl - 1] == '\r' || v[vl - 1] == '\n' || v[vl - 1] == ' '))
			vl--;
		if (vl >= sizeof(resp->retry_after))
			vl = sizeof(resp->retry_after) - 1;
		memcpy(resp->retry_after, v, vl);
		resp->retry_after[vl] = '\0';
	}
	return len;
}

static int
add_header(struct curl_slist **h, const char *name, const char *val)
{
	char line[2048];
	struct curl_slist *n;

	if (val == NULL || *val == '\0')
		return 0;
	if ((size_t)snprintf(line, sizeof(line), "%s: %s", name, val) >= sizeof(line))
		return -1;
	n = curl_slist_append(*h, line);
	if (n == NULL)
		return -1;
	*h = n;
	return 0;
}

/* cli_http_resp_free - free the body of resp */
void
cli_http_resp_free(struct cli_http_resp *resp)
{
	free(resp->body);
	resp->body = NULL;
}

/* cli_http_signed - one signed request to the gateway (see cli.h) */
int
cli_http_signed(struct cli_ctx *c, const struct cli_http_req *rq, struct cli_http_resp *resp)
{
	struct auth_key *k = NULL;
	struct auth_proof_input in;
	char ts[24], nonce[CLI_NONCE_LEN + 1], sha[AUTH_SHA256_B64_SIZE], sig[AUTH_SIG_B64_SIZE];
	char errbuf[CURL_ERROR_SIZE] = "";
	struct curl_slist *h = NULL;
	struct strbuf body, url;
	CURL *cu = NULL;
	CURLcode cc;
	enum cr_err e;
	int rc = -1;
	size_t gl;

	memset(resp, 0, sizeof(*resp));
	sb_init(&body);
	sb_init(&url);
	e = auth_key_load_private(rq->key_path, &k);
	if (e == CR_ERR_IO) {
		cli_err("cannot read the key file %s", rq->key_path);
		goto out;
	}
	if (e != CR_OK) {
		cli_err("%s is not an Ed25519 private key in PEM (%s)", rq->key_path, cr_strerror(e));
		goto out;
	}
	snprintf(ts, sizeof(ts), "%lld", (long long)time(NULL));
	if (make_nonce(nonce) != 0) {
		cli_err("cannot read random bytes for the nonce: %s", strerror(errno));
		goto out;
	}
	e = auth_sha256_b64url(rq->body ? rq->body : "", rq->body_len, sha);
	if (e != CR_OK) {
		cli_err("cannot hash the body: %s", cr_strerror(e));
		goto out;
	}
	memset(&in, 0, sizeof(in));
	in.method = rq->method;
	in.path = rq->path;
	in.query = NULL;
	in.agent = rq->agent;
	in.timestamp = ts;
	in.nonce = nonce;
	in.body_sha256 = sha;
	in.correlation_id = rq->correlation_id;
	in.idempotency_key = rq->idempotency_key;
	in.priority = rq->priority;
	in.ttl_seconds = rq->ttl_seconds;
	e = auth_sign_request(k, &in, sig);
	if (e != CR_OK) {
		cli_err("cannot sign the request: %s", cr_strerror(e));
		goto out;
	}

	gl = strlen(c->gateway_url);
	while (gl > 0 && c->gateway_url[gl - 1] == '/')
		gl--;
	if (sb_append(&url, c->gateway_url, gl) != 0 || sb_append(&url, rq->path, strlen(rq->path) + 1) != 0) {
		cli_err("out of memory");
		goto out;
	}
	if (add_header(&h, "X-Claw-Agent", rq->agent) || add_header(&h, "X-Claw-Timestamp", ts) ||
	    add_header(&h, "X-Claw-Nonce", nonce) || add_header(&h, "X-Claw-Body-SHA256", sha) ||
	    add_header(&h, "X-Claw-Proof", sig) ||
	    add_header(&h, "X-Claw-Correlation-Id", rq->correlation_id) ||
	    add_header(&h, "X-Claw-Idempotency-Key", rq->idempotency_key) ||
	    add_header(&h, "X-Claw-Priority", rq->priority) ||
	    add_header(&h, "X-Claw-Ttl-Seconds", rq->ttl_seconds) ||
	    add_header(&h, "traceparent", rq->traceparent) ||
	    add_header(&h, "Content-Type", rq->content_type) ||
	    add_header(&h, "Accept", "application/json")) {
		cli_err("a header value is too long");
		goto out;
	}
	/* "Name:" with no value removes a header curl would add by itself */
	struct curl_slist *n = curl_slist_append(h, "Expect:");
	if (n == NULL) {
		cli_err("out of memory");
		goto out;
	}
	h = n;

	if (curl_global_init(CURL_GLOBAL_DEFAULT) != CURLE_OK || (cu = curl_easy_init()) == NULL) {
		cli_err("cannot initialise libcurl");
		goto out;
	}
	curl_easy_setopt(cu, CURLOPT_URL, url.data);
	curl_easy_setopt(cu, CURLOPT_PATH_AS_IS, 1L);
	curl_easy_setopt(cu, CURLOPT_HTTPHEADER, h);
	curl_easy_setopt(cu, CURLOPT_NOSIGNAL, 1L);
	curl_easy_setopt(cu, CURLOPT_TIMEOUT_MS, (long)c->timeout_ms);
	curl_easy_setopt(cu, CURLOPT_CONNECTTIMEOUT_MS, (long)(c->timeout_ms < 3000 ? c->timeout_ms : 3000));
	curl_easy_setopt(cu, CURLOPT_ERRORBUFFER, errbuf);
	curl_easy_setopt(cu, CURLOPT_WRITEFUNCTION, on_body);
	curl_easy_setopt(cu, CURLOPT_WRITEDATA, &body);
	curl_easy_setopt(cu, CURLOPT_HEADERFUNCTION, on_header);
	curl_easy_setopt(cu, CURLOPT_HEADERDATA, resp);
	curl_easy_setopt(cu, CURLOPT_USERAGENT, "clawrelay-cli/0.1");
	curl_easy_setopt(cu, CURLOPT_PROTOCOLS_STR, "http,https");
	if (strcmp(rq->method, "GET") == 0) {
		curl_easy_setopt(cu, CURLOPT_HTTPGET, 1L);
	} else {
		curl_easy_setopt(cu, CURLOPT_POST, 1L);
		curl_easy_setopt(cu, CURLOPT_POSTFIELDS, rq->body ? rq->body : "");
		curl_easy_setopt(cu, CURLOPT_POSTFIELDSIZE_LARGE, (curl_off_t)rq->body_len);
		if (strcmp(rq->method, "POST") != 0)
			curl_easy_setopt(cu, CURLOPT_CUSTOMREQUEST, rq->method);
	}
	cc = curl_easy_perform(cu);
	if (cc != CURLE_OK) {
		cli_err("request to %s failed: %s", url.data, errbuf[0] ? errbuf : curl_easy_strerror(cc));
		if (cc == CURLE_COULDNT_CONNECT)
			fprintf(stderr, "(is the gateway running? set --gateway or CLAWRELAY_GATEWAY_URL)\n");
		goto out;
	}
	curl_easy_getinfo(cu, CURLINFO_RESPONSE_CODE, &resp->status);
	if (sb_append(&body, "", 1) != 0) {
		cli_err("out of memory");
		goto out;
	}
	resp->body = body.data;
	resp->body_len = body.len - 1;
	body.data = NULL;
	rc = 0;
out:
	if (cu != NULL) {
		curl_easy_cleanup(cu);
		curl_global_cleanup();
	}
	curl_slist_free_all(h);
	sb_free(&body);
	sb_free(&url);
	auth_key_free(k);
	return rc;
}

/* cli_print_json - pretty-print text if it is JSON, else print it as is */
void
cli_print_json(const char *text)
{
	cJSON *j = cJSON_Parse(text);
	char *s = j ? cJSON_Print(j) : NULL;

	if (s != NULL)
		printf("%s\n", s);
	else if (*text != '\0')
		printf("%s%s", text, text[strlen(text) - 1] == '\n' ? "" : "\n");
	cJSON_free(s);
	cJSON_Delete(j);
}

static void
send_help(FILE *f)
{
	fprintf(f,
	    "usage: clawrelay send --from <id> --key <file.key> <to>\n"
	    "                      [--data <text> | --file <path> | (standard input)]\n"
	    "                      [--correlation-id X] [--priority critical|normal|low]\n"
	    "                      [--ttl SECONDS] [--idempotency-key K] [--content-type T]\n"
	    "                      [--traceparent TP] [--quiet]\n"
	    "\n"
	    "POSTs the payload to <gateway>/v1/agents/<to>/messages, signed with the\n"
	    "sender's Ed25519 key (DESIGN section 5). Prints the HTTP status and the\n"
	    "gateway's JSON answer (messageId, correlationId, status); with --quiet only\n"
	    "the correlation ID. Exit 0 on a 2xx answer, 1 otherwise.\n"
	    "The content type defaults to text/plain; charset=utf-8 for --data and\n"
	    "application/octet-stream otherwise. --ttl is 1-604800 seconds.\n");
}

/* cli_cmd_send - signed POST of one message to the gateway */
int
cli_cmd_send(struct cli_ctx *c, int argc, char **argv)
{
	const char *from = NULL, *key = NULL, *data = NULL, *file = NULL, *cid = NULL, *prio = NULL;
	const char *ttl = NULL, *idem = NULL, *ctype = NULL, *tp = NULL, *pos[1], *why = NULL;
	int quiet = 0, npos = 0, rc;
	struct cli_opt opts[] = {
		{ "--from", 1, &from, NULL },
		{ "--key", 1, &key, NULL },
		{ "--data", 1, &data, NULL },
		{ "--file", 1, &file, NULL },
		{ "--correlation-id", 1, &cid, NULL },
		{ "--priority", 1, &prio, NULL },
		{ "--ttl", 1, &ttl, NULL },
		{ "--idempotency-key", 1, &idem, NULL },
		{ "--content-type", 1, &ctype, NULL },
		{ "--traceparent", 1, &tp, NULL },
		{ "--quiet", 0, NULL, &quiet },
		{ "-q", 0, NULL, &quiet },
	};
	struct cli_http_req rq;
	struct cli_http_resp resp;
	char *buf = NULL, path[512];
	size_t len = 0;

	rc = cli_parse(c, argc, argv, opts, sizeof(opts) / sizeof(opts[0]), pos, 1, &npos);
	if (rc == -1) {
		send_help(stdout);
		return CLI_OK;
	}
	if (rc != CLI_OK)
		return rc;
	if (npos != 1)
		return cli_usage_err("send", "send needs one recipient agent ID");
	if (from == NULL || key == NULL)
		return cli_usage_err("send", "send needs --from <id> and --key <file.key>");
	if (data != NULL && file != NULL)
		return cli_usage_err("send", "give --data or --file, not both");
	/* check locally what the gateway would refuse, with the same rule */
	if (auth_check_agent_id(from, &why) != CR_OK)
		return cli_err("invalid --from agent ID: %s", why);
	if (auth_check_agent_id(pos[0], &why) != CR_OK)
		return cli_err("invalid recipient agent ID: %s", why);
	if (cid != NULL && auth_check_correlation_id(cid, &why) != CR_OK)
		return cli_err("invalid --correlation-id: %s", why);
	if (prio != NULL && auth_check_priority(prio, &why) != CR_OK)
		return cli_err("invalid --priority: %s", why);
	if (ttl != NULL && auth_check_ttl(ttl, NULL, &why) != CR_OK)
		return cli_err("invalid --ttl: %s", why);
	if (idem != NULL && auth_check_idempotency_key(idem, &why) != CR_OK)
		return cli_err("invalid --idempotency-key: %s", why);

	if (data != NULL) {
		len = strlen(data);
		if (len > CLI_BODY_MAX)
			return cli_err("--data is larger than %u bytes", CLI_BODY_MAX);
		if (ctype == NULL)
			ctype = "text/plain; charset=utf-8";
	} else if (cli_read_file(file ? file : "-", CLI_BODY_MAX, &buf, &len) != 0) {
		return CLI_FAIL;
	}
	if (ctype == NULL)
		ctype = "application/octet-stream";
	snprintf(path, sizeof(path), "/v1/agents/%s/messages", pos[0]);

	memset(&rq, 0, sizeof(rq));
	rq.method = "POST";
	rq.path = path;
	rq.agent = from;
	rq.key_path = key;
	rq.body = data ? data : buf;
	rq.body_len = len;
	rq.content_type = ctype;
	rq.correlation_id = cid;
	rq.idempotency_key = idem;
	rq.priority = prio;
	rq.ttl_seconds = ttl;
	rq.traceparent = tp;
	if (cli_http_signed(c, &rq, &resp) != 0) {
		free(buf);
		return CLI_FAIL;
	}
	free(buf);
	rc = resp.status >= 200 && resp.status < 300 ? CLI_OK : CLI_FAIL;
	if (quiet && rc == CLI_OK) {
		cJSON *j = cJSON_Parse(resp.body);
		const cJSON *v = cJSON_GetObjectItemCaseSensitive(j, "correlationId");
		if (cJSON_IsString(v))
			printf("%s\n", v->valuestring);
		else
			cli_print_json(resp.body);
		cJSON_Delete(j);
	} else {
		printf("HTTP %ld\n", resp.status);
		if (resp.retry_after[0])
			printf("Retry-After: %s\n", resp.retry_after);
		cli_print_json(resp.body);
		if (rc != CLI_OK && quiet)
			fprintf(stderr, "clawrelay: the gateway answered %ld\n", resp.status);
	}
	cli_http_resp_free(&resp);
	return rc;
}
