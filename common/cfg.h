/*
 * cfg.h - configuration tables.
 *
 * Each service has one table of settings (plus the common one). A setting is
 * read from the environment variable CLAWRELAY_<NAME>, falls back to its
 * default, and is checked against its bounds at start-up: a bad value stops
 * the service with a message naming the variable. The same table prints
 * --help, --print-config and the README's settings table.
 */
#ifndef CR_CFG_H
#define CR_CFG_H

#include <stddef.h>
#include <stdio.h>

enum cfg_type { CFG_STR, CFG_INT, CFG_BOOL };

struct cfg_item {
	const char *name;   /* without the CLAWRELAY_ prefix, upper case */
	enum cfg_type type;
	const char *def;    /* default as text */
	long long min, max; /* bounds for CFG_INT; for CFG_STR max length (0 = any) */
	const char *help;
	void *dst;          /* char ** (malloc'd, free with cfg_free), long long *, int * */
};

/* cfg_load - read every item from the environment (or its default) into dst.
 * Returns 0, or -1 with a message naming the variable in err. */
int cfg_load(const struct cfg_item *items, size_t n, char *err, size_t errsz);
/* cfg_parse_one - parse text for one item into its dst; -1 and err on failure */
int cfg_parse_one(const struct cfg_item *it, const char *text, char *err, size_t errsz);
/* cfg_free - free the strings cfg_load allocated */
void cfg_free(const struct cfg_item *items, size_t n);
/* cfg_print - effective values as NAME=value lines */
void cfg_print(const struct cfg_item *items, size_t n, FILE *f);
/* cfg_print_help - one line per setting: variable, default, bounds, help */
void cfg_print_help(const struct cfg_item *items, size_t n, FILE *f);
/* cfg_print_markdown - table rows for the README */
void cfg_print_markdown(const struct cfg_item *items, size_t n, FILE *f);

#endif
