/*
 * it_common.h - small helpers shared by the integration tests.
 */
#ifndef CR_IT_COMMON_H
#define CR_IT_COMMON_H

#include <check.h>
#include <cJSON.h>

#include "harness.h"

/* it_hook - start bin/clawrelay-demo-hook on a free port writing JSON lines
 * to <dir>/<name>.jsonl; returns the port; path of the file in out */
int it_hook(struct h_stack *s, const char *name, char *out, size_t outsz, const char *const *args);
/* it_hook_at - it_hook on port p (a replacement for a stopped hook) */
int it_hook_at(struct h_stack *s, const char *name, int p, char *out, size_t outsz,
    const char *const *args);
/* it_connector - start a connector for agent id with hook URL; returns proc */
struct h_proc *it_connector(struct h_stack *s, const char *id, const char *hook_url);
/* it_connector_env - it_connector with extra settings ("K=V", NULL-terminated) */
struct h_proc *it_connector_env(struct h_stack *s, const char *id, const char *hook_url,
    const char *const *extra);
/* it_lines - parse each JSON line of a file; caller frees with cJSON_Delete on
 * each and free() on the array */
cJSON **it_lines(const char *path, int *n);
void it_lines_free(cJSON **v, int n);
/* it_dom_value - the value of data-v in the element carrying data-k="key"
 * of a dumped DOM into out; 0, or -1 when absent */
int it_dom_value(const char *dom, const char *key, char *out, size_t sz);
/* it_chromium - run headless chromium with args (profile in the stack's
 * dir); its stdout into out (may be NULL); its exit status */
int it_chromium(struct h_stack *s, struct strbuf *out, const char *const *args);
/* it_jnum - the number at a dotted path of objects ("a.b.c"), -1 if absent */
double it_jnum(const cJSON *o, const char *path);
/* it_assert_dom_numbers - each of keys shows on the page (it_dom_value) the
 * number the API's JSON has at that path */
void it_assert_dom_numbers(const char *dom, const cJSON *api, const char *const *keys, size_t n);
/* it_run - run a Check suite without forking (the stack lives in this process) */
int it_run(Suite *s);

#endif
