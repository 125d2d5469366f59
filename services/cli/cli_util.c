/*
 * cli_util.c - the `clawrelay` command's plumbing: option parsing, the lazy
 * NATS connection, error printing, times, reading files.
 *
 * Main thread only.
 */
#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "cli.h"
#include "util.h"

/* cli_err - print "clawrelay: <fmt>\n" on stderr; returns CLI_FAIL */
int
cli_err(const char *fmt, ...)
{
	va_list ap;

	fputs("clawrelay: ", stderr);
	va_start(ap, fmt);
	vfprintf(stderr, fmt, ap);
	va_end(ap);
	fputc('\n', stderr);
	return CLI_FAIL;
}

/* cli_usage_err - print the problem and where to find help; returns CLI_USAGE */
int
cli_usage_err(const char *cmd, const char *fmt, ...)
{
	va_list ap;

	fputs("clawrelay: ", stderr);
	va_start(ap, fmt);
	vfprintf(stderr, fmt, ap);
	va_end(ap);
	fprintf(stderr, "\n(see `clawrelay %s --help`)\n", cmd ? cmd : "");
	return CLI_USAGE;
}

/* cli_parse_uint - decimal text to *out within [min, max]; 0 ok, -1 bad */
int
cli_parse_uint(const char *s, uint64_t min, uint64_t max, uint64_t *out)
{
	char *end = NULL;
	unsigned long long v;

	if (s == NULL || *s < '0' || *s > '9')
		return -1;
	errno = 0;
	v = strtoull(s, &end, 10);
	if (errno != 0 || *end != '\0' || v < min || v > max)
		return -1;
	*out = v;
	return 0;
}

/* cli_global_opt - store a global option (and its value) if argv[*i] is one */
int
cli_global_opt(struct cli_ctx *c, int argc, char **argv, int *i)
{
	const char *a = argv[*i], *v = NULL;
	size_t n = strcspn(a, "=");
	static const char *const names[] = { "--nats", "--prefix", "--gateway", "--timeout-ms" };
	int which = -1;

	for (int k = 0; k < 4; k++)
		if (strlen(names[k]) == n && strncmp(a, names[k], n) == 0)
			which = k;
	if (which < 0)
		return 0;
	if (a[n] == '=') {
		v = a + n + 1;
	} else if (*i + 1 < argc && strncmp(argv[*i + 1], "--", 2) != 0) {
		v = argv[++*i];
	} else if (which == 0) {
		/* a bare --nats means "go through NATS" (status) with the default URL */
		c->nats_flag = 1;
		return 1;
	} else {
		fprintf(stderr, "clawrelay: %s needs a value\n", names[which]);
		return CLI_USAGE;
	}
	switch (which) {
	case 0:
		c->nats_url = v;
		c->nats_flag = 1;
		break;
	case 1:
		if (*v == '\0' || strpbrk(v, " \t*>") != NULL || v[0] == '.' || v[strlen(v) - 1] == '.') {
			fprintf(stderr, "clawrelay: --prefix '%s' is not a valid subject prefix\n", v);
			return CLI_USAGE;
		}
		c->prefix = v;
		break;
	case 2:
		c->gateway_url = v;
		break;
	case 3: {
		uint64_t ms;
		if (cli_parse_uint(v, 1, 3600000, &ms) != 0) {
			fprintf(stderr, "clawrelay: --timeout-ms must be 1-3600000\n");
			return CLI_USAGE;
		}
		c->timeout_ms = (int)ms;
		break;
	}
	}
	return 1;
}

/* cli_parse - parse a subcommand's arguments (see cli.h) */
int
cli_parse(struct cli_ctx *c, int argc, char **argv, const struct cli_opt *opts,
    size_t nopts, const char **pos, int maxpos, int *npos)
{
	int only_pos = 0;

	*npos = 0;
	for (int i = 0; i < argc; i++) {
		const char *a = argv[i];
		if (only_pos || a[0] != '-' || strcmp(a, "-") == 0) {
			if (*npos >= maxpos) {
				fprintf(stderr, "clawrelay: unexpected argument '%s'\n", a);
				return CLI_USAGE;
			}
			pos[(*npos)++] = a;
			continue;
		}
		if (strcmp(a, "--") == 0) {
			only_pos = 1;
			continue;
		}
		if (strcmp(a, "--help") == 0 || strcmp(a, "-h") == 0)
			return -1;
		size_t n = strcspn(a, "=");
		const struct cli_opt *o = NULL;
		for (size_t k = 0; k < nopts; k++) {
			if (strlen(opts[k].name) == n && strncmp(a, opts[k].name, n) == 0) {
				o = &opts[k];
				break;
			}
		}
		if (o == NULL) {
			int rc = cli_global_opt(c, argc, argv, &i);
			if (rc == 1)
				continue;
			if (rc == 0)
				fprintf(stderr, "clawrelay: unknown option '%s'\n", a);
			return CLI_USAGE;
		}
		if (!o->has_arg) {
			if (a[n] == '=') {
				fprintf(stderr, "clawrelay: %s takes no value\n", o->name);
				return CLI_USAGE;
			}
			*o->flag = 1;
			continue;
		}
		if (a[n] == '=') {
			*o->val = a + n + 1;
		} else if (i + 1 < argc) {
			/* a value may start with '-' (e.g. --data -x): take it as is */
			*o->val = argv[++i];
		} else {
			fprintf(stderr, "clawrelay: %s needs a value\n", o->name);
			return CLI_USAGE;
		}
	}
	return CLI_OK;
}

/* cli_bus - connect to NATS once; an unreachable server is reported instead
 * of every request timing out */
struct bus *
cli_bus(struct cli_ctx *c)
{
	uint64_t deadline;
	enum cr_err e;

	char why[128] = "";

	if (c->bus != NULL)
		return c->bus;
	if (bus_probe(c->nats_url, c->timeout_ms < 3000 ? c->timeout_ms : 3000, why, sizeof(why)) != CR_OK) {
		cli_err("cannot connect to NATS at %s: %s (is nats-server running? set --nats or "
		    "CLAWRELAY_NATS_URL)", c->nats_url, why);
		return NULL;
	}
	e = bus_connect(c->nats_url, "clawrelay-cli", c->prefix, &c->bus);
	if (e != CR_OK) {
		cli_err("cannot connect to NATS at %s: %s", c->nats_url, cr_strerror(e));
		c->bus = NULL;
		return NULL;
	}
	bus_set_kv_replicas(c->bus, c->kv_replicas);
	deadline = mono_ms() + (uint64_t)(c->timeout_ms < 3000 ? c->timeout_ms : 3000);
	while (!bus_is_connected(c->bus) && mono_ms() < deadline)
		usleep(10000);
	if (!bus_is_connected(c->bus)) {
		cli_err("cannot connect to NATS at %s (is nats-server running? set --nats or "
		    "CLAWRELAY_NATS_URL)", c->nats_url);
		/* main frees it; keep the pointer so teardown stays in one place */
		return NULL;
	}
	return c->bus;
}

/* cli_read_file - whole file (or stdin for "-") into a malloc'd buffer */
int
cli_read_file(const char *path, size_t max, char **out, size_t *len)
{
	FILE *f = strcmp(path, "-") == 0 ? stdin : fopen(path, "rb");
	char *buf = NULL;
	size_t n = 0, cap = 0;
	int rc = -1;

	if (f == NULL) {
		cli_err("cannot open %s: %s", path, strerror(errno));
		return -1;
	}
	for (;;) {
		if (n == cap) {
			size_t ncap = cap ? cap * 2 : 65536;
			if (ncap > max + 1)
				ncap = max + 1;
			if (ncap <= cap) {
				cli_err("%s is larger than the limit of %zu bytes",
				    f == stdin ? "standard input" : path, max);
				goto out;
			}
			char *nb = realloc(buf, ncap + 1);
			if (nb == NULL) {
				cli_err("out of memory reading %s", path);
				goto out;
			}
			buf = nb;
			cap = ncap;
		}
		size_t r = fread(buf + n, 1, cap - n, f);
		n += r;
		if (r == 0) {
			if (ferror(f)) {
				cli_err("cannot read %s: %s", path, strerror(errno));
				goto out;
			}
			break;
		}
	}
	if (n > max) {
		cli_err("%s is larger than the limit of %zu bytes", f == stdin ? "standard input" : path, max);
		goto out;
	}
	if (buf == NULL && (buf = malloc(1)) == NULL)
		goto out;
	buf[n] = '\0';
	*out = buf;
	*len = n;
	buf = NULL;
	rc = 0;
out:
	free(buf);
	if (f != stdin)
		fclose(f);
	return rc;
}
