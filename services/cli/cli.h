/*
 * cli.h - private header of the `clawrelay` command (services/cli only).
 *
 * The command is a short-lived, single-threaded program: main() parses the
 * command line into a struct cli_ctx and runs one subcommand. A subcommand
 * returns an exit code: CLI_OK (0), CLI_FAIL (1: the operation failed, with a
 * message on stderr) or CLI_USAGE (2: bad command line). Results go to stdout,
 * diagnostics to stderr. The NATS bus is opened lazily (cli_bus) and closed
 * by main(); nats.c's threads only run inside the bus module and, for
 * `notifications --follow`, in one subscription handler that writes whole
 * lines to stdout.
 */
#ifndef CLI_H
#define CLI_H

#include <stddef.h>
#include <stdint.h>

#include "bus.h"

enum { CLI_OK = 0, CLI_FAIL = 1, CLI_USAGE = 2 };

/* Settings shared by every subcommand; strings are borrowed from argv or the
 * environment for the life of the process. */
struct cli_ctx {
	const char *nats_url;      /* CLAWRELAY_NATS_URL / --nats */
	const char *prefix;        /* CLAWRELAY_SUBJECT_PREFIX / --prefix */
	const char *gateway_url;   /* CLAWRELAY_GATEWAY_URL / --gateway */
	int nats_flag;             /* --nats was given on the command line */
	int timeout_ms;            /* --timeout-ms: NATS requests and HTTP */
	int kv_replicas;           /* CLAWRELAY_KV_REPLICAS: of the buckets it creates */
	struct bus *bus;           /* opened by cli_bus, freed by main */
};

/* One option of a subcommand. has_arg: 0 flag (sets *flag = 1), 1 value
 * (sets *val to the borrowed argv string). */
struct cli_opt {
	const char *name;          /* "--from" */
	int has_arg;
	const char **val;
	int *flag;
};

/* cli_parse - parse argv[0..argc) against opts and the global options
 * (--nats, --gateway, --prefix, --timeout-ms, --help); positional arguments
 * go to pos (at most maxpos, count in *npos). Returns CLI_OK, CLI_USAGE after
 * printing what is wrong, or -1 when --help was asked (caller prints help). */
int cli_parse(struct cli_ctx *c, int argc, char **argv, const struct cli_opt *opts,
    size_t nopts, const char **pos, int maxpos, int *npos);

/* cli_global_opt - if argv[*i] is a global option, store it (advancing *i
 * past its value) and return 1; 0 if it is not one; CLI_USAGE after printing
 * what is wrong with its value */
int cli_global_opt(struct cli_ctx *c, int argc, char **argv, int *i);

/* cli_bus - connect to NATS once (borrowed until main frees c->bus); NULL
 * after printing why when the server cannot be reached */
struct bus *cli_bus(struct cli_ctx *c);

/* cli_err - print "clawrelay: <fmt>\n" on stderr; returns CLI_FAIL */
int cli_err(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
/* cli_usage_err - print "clawrelay: <fmt>" and a hint to --help; returns CLI_USAGE */
int cli_usage_err(const char *cmd, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

/* cli_parse_uint - decimal text to *out within [min, max]; 0 ok, -1 bad */
int cli_parse_uint(const char *s, uint64_t min, uint64_t max, uint64_t *out);
/* cli_read_file - whole file (or stdin for "-") into a malloc'd buffer of at
 * most max bytes; caller frees *out. 0 ok, -1 with a message printed. */
int cli_read_file(const char *path, size_t max, char **out, size_t *len);

/* Subcommands: argc/argv start after the subcommand name. */
int cli_cmd_keygen(struct cli_ctx *c, int argc, char **argv);
int cli_cmd_agent(struct cli_ctx *c, int argc, char **argv);
int cli_cmd_trust(struct cli_ctx *c, int argc, char **argv);
int cli_cmd_send(struct cli_ctx *c, int argc, char **argv);
int cli_cmd_status(struct cli_ctx *c, int argc, char **argv);
int cli_cmd_trace(struct cli_ctx *c, int argc, char **argv);
/* cli_cmd_accounting - every partition's books, summed (cli_books.c) */
int cli_cmd_accounting(struct cli_ctx *c, int argc, char **argv);
int cli_cmd_metrics(struct cli_ctx *c, int argc, char **argv);
int cli_cmd_notifications(struct cli_ctx *c, int argc, char **argv);
int cli_cmd_follow(struct cli_ctx *c, int argc, char **argv);	/* notifications --follow */
int cli_cmd_subject(struct cli_ctx *c, int argc, char **argv);

/* The signed HTTP client (cli_http.c). */
struct cli_http_req {
	const char *method;        /* "GET" / "POST" */
	const char *path;          /* "/v1/agents/<to>/messages", not encoded */
	const char *agent;         /* X-Claw-Agent */
	const char *key_path;      /* PEM private key */
	const void *body;
	size_t body_len;
	const char *content_type;  /* NULL: none */
	const char *correlation_id, *idempotency_key, *priority, *ttl_seconds;
	const char *traceparent;   /* passed on, not signed */
};

struct cli_http_resp {
	long status;
	char *body;                /* NUL-terminated, malloc'd; cli_http_resp_free */
	size_t body_len;
	char retry_after[32];
};

/* cli_http_signed - perform one DESIGN section 5 request against the
 * gateway; fills resp (caller frees with cli_http_resp_free). 0 when an HTTP
 * answer arrived (any status), -1 after printing why it did not. */
int cli_http_signed(struct cli_ctx *c, const struct cli_http_req *rq, struct cli_http_resp *resp);
/* cli_http_resp_free - free the body of resp; resp itself is the caller's */
void cli_http_resp_free(struct cli_http_resp *resp);
/* cli_print_json - pretty-print text if it is JSON, else print it as is */
void cli_print_json(const char *text);

#endif
