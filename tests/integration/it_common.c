/*
 * itest_common.c - see it_common.h.
 */
#include <fcntl.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include "it_common.h"

/* it_hook - start a demo hook writing JSON lines to a file */
int
it_hook(struct h_stack *s, const char *name, char *out, size_t outsz, const char *const *args)
{
	return it_hook_at(s, name, h_free_port(), out, outsz, args);
}

/* it_hook_at - it_hook on a given port (e.g. a hook's replacement) */
int
it_hook_at(struct h_stack *s, const char *name, int p, char *out, size_t outsz,
    const char *const *args)
{
	char port[16];
	const char *argv[16];
	int n = 0;
	snprintf(port, sizeof(port), "%d", p);
	snprintf(out, outsz, "%s/%s.jsonl", s->dir, name);
	argv[n++] = "--port";
	argv[n++] = port;
	argv[n++] = "--name";
	argv[n++] = name;
	argv[n++] = "--out";
	argv[n++] = out;
	for (int i = 0; args && args[i] && n < 15; i++)
		argv[n++] = args[i];
	argv[n] = NULL;
	h_spawn(s, name, "clawrelay-demo-hook", 0, NULL, argv);
	/* wait until it listens */
	char url[64];
	snprintf(url, sizeof(url), "http://127.0.0.1:%d/", p);
	for (int i = 0; i < 200; i++) {
		struct h_resp r;
		int ok = h_http("GET", url, NULL, NULL, 0, &r) == 0;
		h_resp_free(&r);
		if (ok)
			return p;
		h_sleep_ms(50);
	}
	ck_abort_msg("hook %s never listened on %d", name, p);
	return -1;
}

/* it_connector - start a connector for agent id */
struct h_proc *
it_connector(struct h_stack *s, const char *id, const char *hook_url)
{
	return it_connector_env(s, id, hook_url, NULL);
}

/* it_connector_env - it_connector with extra settings ("K=V", NULL-terminated) */
struct h_proc *
it_connector_env(struct h_stack *s, const char *id, const char *hook_url,
    const char *const *extra)
{
	char e_agent[200], e_key[500], e_gw[128], e_hook[256], e_data[400], key[400], name[64];
	const char *env[32];
	int n = 0;

	h_key_path(s, id, key, sizeof(key));
	snprintf(e_agent, sizeof(e_agent), "CLAWRELAY_AGENT_ID=%s", id);
	snprintf(e_key, sizeof(e_key), "CLAWRELAY_KEY_FILE=%s", key);
	snprintf(e_gw, sizeof(e_gw), "CLAWRELAY_GATEWAY_URL=%s", s->gw_url);
	snprintf(e_hook, sizeof(e_hook), "CLAWRELAY_HOOK_URL=%s", hook_url);
	snprintf(e_data, sizeof(e_data), "CLAWRELAY_DATA_DIR=%s/connector-%s", s->dir, id);
	snprintf(name, sizeof(name), "connector-%s", id);
	env[n++] = e_agent;
	env[n++] = e_key;
	env[n++] = e_gw;
	env[n++] = e_hook;
	env[n++] = e_data;
	for (int i = 0; extra != NULL && extra[i] != NULL && n < 31; i++)
		env[n++] = extra[i];
	env[n] = NULL;
	return h_spawn(s, name, "clawrelay-connector", h_free_port(), env, NULL);
}

/* it_lines - parse each JSON line of a file */
cJSON **
it_lines(const char *path, int *n)
{
	struct strbuf sb;
	int cap = 64;
	cJSON **v = malloc(sizeof(*v) * (size_t)cap);
	*n = 0;
	sb_init(&sb);
	if (h_read_file(path, &sb) < 0) {
		sb_free(&sb);
		return v;
	}
	char *save = NULL;
	for (char *l = strtok_r(sb.data, "\n", &save); l; l = strtok_r(NULL, "\n", &save)) {
		cJSON *j = cJSON_Parse(l);
		if (j == NULL)
			continue;
		if (*n == cap) {
			cap *= 2;
			v = realloc(v, sizeof(*v) * (size_t)cap);
		}
		v[(*n)++] = j;
	}
	sb_free(&sb);
	return v;
}

/* it_lines_free - free what it_lines returned */
void
it_lines_free(cJSON **v, int n)
{
	for (int i = 0; i < n; i++)
		cJSON_Delete(v[i]);
	free(v);
}

/* it_run - run a suite in this process */
int
it_run(Suite *s)
{
	SRunner *sr = srunner_create(s);
	srunner_set_fork_status(sr, CK_NOFORK);
	srunner_run_all(sr, CK_NORMAL);
	int failed = srunner_ntests_failed(sr);
	srunner_free(sr);
	if (h_valgrind_failures > 0)
		fprintf(stderr, "%d process(es) had valgrind errors or definite leaks\n", h_valgrind_failures);
	return (failed || h_valgrind_failures) ? 1 : 0;
}

/* it_dom_value - the value of data-v in the element carrying data-k="key"
 * of a dumped DOM into out; 0, or -1 when absent */
int
it_dom_value(const char *dom, const char *key, char *out, size_t sz)
{
	char pat[128];
	const char *p, *end, *v;

	snprintf(pat, sizeof(pat), "data-k=\"%s\"", key);
	if ((p = strstr(dom, pat)) == NULL || (end = strchr(p, '>')) == NULL)
		return -1;
	if ((v = strstr(p, "data-v=\"")) == NULL || v > end)
		return -1;
	v += 8;
	snprintf(out, sz, "%.*s", (int)(strchr(v, '"') - v), v);
	return 0;
}

/* it_chromium - run headless chromium with args (profile in the stack's
 * dir); its stdout into out (may be NULL); its exit status */
int
it_chromium(struct h_stack *s, struct strbuf *out, const char *const *args)
{
	char profile[400], prof_arg[420];
	const char *argv[24];
	int n = 0, fds[2], stt;
	pid_t pid;

	snprintf(profile, sizeof(profile), "%s/chromium-profile", s->dir);
	snprintf(prof_arg, sizeof(prof_arg), "--user-data-dir=%s", profile);
	argv[n++] = "chromium";
	argv[n++] = "--headless";
	argv[n++] = "--no-sandbox";
	argv[n++] = "--disable-gpu";
	argv[n++] = "--disable-dev-shm-usage";
	argv[n++] = "--no-first-run";
	argv[n++] = "--hide-scrollbars";
	argv[n++] = prof_arg;
	for (int i = 0; args[i] != NULL && n < 23; i++)
		argv[n++] = args[i];
	argv[n] = NULL;
	if (pipe(fds) < 0)
		return -1;
	if ((pid = fork()) == 0) {
		int null = open("/dev/null", O_WRONLY);
		dup2(fds[1], 1);
		if (null >= 0)
			dup2(null, 2);
		close(fds[0]);
		close(fds[1]);
		execvp(argv[0], (char *const *)(uintptr_t)argv);
		_exit(127);
	}
	close(fds[1]);
	for (char buf[8192];;) {
		ssize_t k = read(fds[0], buf, sizeof(buf));
		if (k <= 0)
			break;
		if (out != NULL)
			sb_append(out, buf, (size_t)k);
	}
	close(fds[0]);
	waitpid(pid, &stt, 0);
	if (out != NULL && out->data == NULL)
		sb_append(out, "", 0);
	return WIFEXITED(stt) ? WEXITSTATUS(stt) : 128;
}

/* it_jnum - the number at a dotted path of objects ("a.b.c"), -1 if absent */
double
it_jnum(const cJSON *o, const char *path)
{
	char buf[128], *save = NULL;
	const cJSON *v = o;

	snprintf(buf, sizeof(buf), "%s", path);
	for (char *k = strtok_r(buf, ".", &save); k && v; k = strtok_r(NULL, ".", &save))
		v = cJSON_GetObjectItemCaseSensitive(v, k);
	return cJSON_IsNumber(v) ? v->valuedouble : -1;
}

/* it_assert_dom_numbers - each of keys shows on the page (it_dom_value) the
 * number the API's JSON has at that path */
void
it_assert_dom_numbers(const char *dom, const cJSON *api, const char *const *keys, size_t n)
{
	char got[256], want[64];

	for (size_t i = 0; i < n; i++) {
		ck_assert_msg(it_dom_value(dom, keys[i], got, sizeof(got)) == 0, "page lacks %s", keys[i]);
		snprintf(want, sizeof(want), "%.10g", it_jnum(api, keys[i]));
		ck_assert_msg(strtod(got, NULL) == strtod(want, NULL), "%s: page shows %s, API says %s",
		    keys[i], got, want);
	}
}
