/*
 * cfg.c - configuration tables read from CLAWRELAY_* variables.
 * Called once at start-up, before any thread exists.
 */
#include <errno.h>
#include <limits.h>
#include <stdlib.h>
#include <string.h>

#include "cfg.h"

#define PREFIX "CLAWRELAY_"

/* cfg_parse_one - parse text for one item into its dst */
int
cfg_parse_one(const struct cfg_item *it, const char *text, char *err, size_t errsz)
{
	switch (it->type) {
	case CFG_STR: {
		if (it->max > 0 && (long long)strlen(text) > it->max) {
			snprintf(err, errsz, "%s%s: longer than %lld characters", PREFIX, it->name, it->max);
			return -1;
		}
		if (it->min > 0 && (long long)strlen(text) < it->min) {
			snprintf(err, errsz, "%s%s: must not be empty", PREFIX, it->name);
			return -1;
		}
		char *s = strdup(text);
		if (s == NULL) {
			snprintf(err, errsz, "out of memory");
			return -1;
		}
		char **dst = it->dst;
		free(*dst);
		*dst = s;
		return 0;
	}
	case CFG_INT: {
		char *end;
		errno = 0;
		long long v = strtoll(text, &end, 10);
		if (*text == '\0' || *end != '\0' || errno != 0) {
			snprintf(err, errsz, "%s%s: \"%s\" is not an integer", PREFIX, it->name, text);
			return -1;
		}
		if (v < it->min || v > it->max) {
			snprintf(err, errsz, "%s%s: %lld is outside %lld..%lld", PREFIX, it->name, v, it->min, it->max);
			return -1;
		}
		*(long long *)it->dst = v;
		return 0;
	}
	case CFG_BOOL:
		if (!strcmp(text, "1") || !strcmp(text, "true") || !strcmp(text, "yes") || !strcmp(text, "on")) {
			*(int *)it->dst = 1;
		} else if (!strcmp(text, "0") || !strcmp(text, "false") || !strcmp(text, "no") || !strcmp(text, "off")) {
			*(int *)it->dst = 0;
		} else {
			snprintf(err, errsz, "%s%s: \"%s\" is not a boolean (true/false)", PREFIX, it->name, text);
			return -1;
		}
		return 0;
	}
	snprintf(err, errsz, "%s%s: unknown type", PREFIX, it->name);
	return -1;
}

/* cfg_load - read every item from the environment (or its default) */
int
cfg_load(const struct cfg_item *items, size_t n, char *err, size_t errsz)
{
	char var[128];
	for (size_t i = 0; i < n; i++) {
		snprintf(var, sizeof(var), PREFIX "%s", items[i].name);
		const char *v = getenv(var);
		if (v == NULL)
			v = items[i].def;
		if (cfg_parse_one(&items[i], v, err, errsz) < 0)
			return -1;
	}
	return 0;
}

/* cfg_free - free the strings cfg_load allocated */
void
cfg_free(const struct cfg_item *items, size_t n)
{
	for (size_t i = 0; i < n; i++) {
		if (items[i].type == CFG_STR) {
			char **dst = items[i].dst;
			free(*dst);
			*dst = NULL;
		}
	}
}

static void
value(const struct cfg_item *it, char *buf, size_t sz)
{
	switch (it->type) {
	case CFG_STR:
		snprintf(buf, sz, "%s", *(char **)it->dst ? *(char **)it->dst : "");
		break;
	case CFG_INT:
		snprintf(buf, sz, "%lld", *(long long *)it->dst);
		break;
	case CFG_BOOL:
		snprintf(buf, sz, "%s", *(int *)it->dst ? "true" : "false");
		break;
	}
}

/* cfg_print - effective values as NAME=value lines */
void
cfg_print(const struct cfg_item *items, size_t n, FILE *f)
{
	char buf[1024];
	for (size_t i = 0; i < n; i++) {
		value(&items[i], buf, sizeof(buf));
		fprintf(f, PREFIX "%s=%s\n", items[i].name, buf);
	}
}

static void
bounds(const struct cfg_item *it, char *buf, size_t sz)
{
	if (it->type == CFG_INT)
		snprintf(buf, sz, "%lld..%lld", it->min, it->max);
	else if (it->type == CFG_BOOL)
		snprintf(buf, sz, "true or false");
	else if (it->max > 0)
		snprintf(buf, sz, "text, at most %lld chars", it->max);
	else
		snprintf(buf, sz, "text");
}

/* cfg_print_help - one line per setting */
void
cfg_print_help(const struct cfg_item *items, size_t n, FILE *f)
{
	char b[64];
	for (size_t i = 0; i < n; i++) {
		bounds(&items[i], b, sizeof(b));
		fprintf(f, "  " PREFIX "%-26s default \"%s\" (%s)\n      %s\n",
		    items[i].name, items[i].def, b, items[i].help);
	}
}

/* cfg_print_markdown - table rows for the README */
void
cfg_print_markdown(const struct cfg_item *items, size_t n, FILE *f)
{
	char b[64];
	for (size_t i = 0; i < n; i++) {
		bounds(&items[i], b, sizeof(b));
		fprintf(f, "| `" PREFIX "%s` | `%s` | %s | %s |\n",
		    items[i].name, items[i].def, b, items[i].help);
	}
}
