/*
 * harness.c - see harness.h. Single-threaded: used from the test process.
 */
#include <arpa/inet.h>
#include <errno.h>
#include <stdarg.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <curl/curl.h>

#include "auth.h"
#include "harness.h"

static void __attribute__((format(printf, 1, 2), noreturn))
die(const char *fmt, ...)
{
	va_list ap;
	fprintf(stderr, "harness: ");
	va_start(ap, fmt);
	vfprintf(stderr, fmt, ap);
	va_end(ap);
	fprintf(stderr, "\n");
	exit(2);
}

/* processes that ended with valgrind's error exit code */
int h_valgrind_failures;

/* h_sleep_ms - sleep */
void
h_sleep_ms(int ms)
{
	struct timespec ts = { ms / 1000, (long)(ms % 1000) * 1000000L };
	while (nanosleep(&ts, &ts) < 0 && errno == EINTR)
		;
}

/* h_stack_init - temp dir, binary dir */
void
h_stack_init(struct h_stack *s, const char *name)
{
	memset(s, 0, sizeof(*s));
	snprintf(s->dir, sizeof(s->dir), "/tmp/clawrelay-%s-XXXXXX", name);
	if (mkdtemp(s->dir) == NULL)
		die("mkdtemp: %s", strerror(errno));
	const char *bin = getenv("CLAWRELAY_BIN");
	snprintf(s->bin, sizeof(s->bin), "%s", bin ? bin : "bin");
	curl_global_init(CURL_GLOBAL_DEFAULT);
	signal(SIGPIPE, SIG_IGN);
}

/* h_free_port - a free TCP port on 127.0.0.1 */
int
h_free_port(void)
{
	struct sockaddr_in a;
	socklen_t len = sizeof(a);
	int fd = socket(AF_INET, SOCK_STREAM, 0);
	memset(&a, 0, sizeof(a));
	a.sin_family = AF_INET;
	a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
	if (fd < 0 || bind(fd, (struct sockaddr *)&a, sizeof(a)) < 0 ||
	    getsockname(fd, (struct sockaddr *)&a, &len) < 0)
		die("free port: %s", strerror(errno));
	close(fd);
	return ntohs(a.sin_port);
}

static pid_t
spawn(const char *log, char *const argv[], const char *const *env)
{
	pid_t pid = fork();
	if (pid < 0)
		die("fork: %s", strerror(errno));
	if (pid == 0) {
		int fd = open(log, O_WRONLY | O_CREAT | O_APPEND, 0644);
		if (fd >= 0) {
			dup2(fd, 1);
			dup2(fd, 2);
			close(fd);
		}
		setpgid(0, 0);
		/* a test that crashes must not leave its stack running */
		prctl(PR_SET_PDEATHSIG, SIGKILL);
		for (int i = 0; env && env[i]; i++)
			putenv((char *)(uintptr_t)env[i]);
		execvp(argv[0], argv);
		fprintf(stderr, "exec %s: %s\n", argv[0], strerror(errno));
		_exit(127);
	}
	return pid;
}

static struct h_proc *
slot(struct h_stack *s, const char *name)
{
	if (s->nprocs >= H_MAX_PROCS)
		die("too many processes (%s)", name);
	char nm[64], dir[256];
	snprintf(nm, sizeof(nm), "%s", name);
	snprintf(dir, sizeof(dir), "%s", s->dir);
	struct h_proc *p = &s->procs[s->nprocs++];
	memset(p, 0, sizeof(*p));
	snprintf(p->name, sizeof(p->name), "%s", nm);
	snprintf(p->log, sizeof(p->log), "%s/%s.log", dir, nm);
	return p;
}

static int
tcp_open(int port)
{
	struct sockaddr_in a;
	int fd = socket(AF_INET, SOCK_STREAM, 0);
	memset(&a, 0, sizeof(a));
	a.sin_family = AF_INET;
	a.sin_port = htons((uint16_t)port);
	a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
	int ok = connect(fd, (struct sockaddr *)&a, sizeof(a)) == 0;
	close(fd);
	return ok;
}

/* h_nats_start - start nats-server -js on a free port */
void
h_nats_start(struct h_stack *s)
{
	char port[16], sd[300];
	struct h_proc *p = slot(s, "nats");
	s->nats_port = h_free_port();
	snprintf(port, sizeof(port), "%d", s->nats_port);
	snprintf(sd, sizeof(sd), "%s/jetstream", s->dir);
	snprintf(s->nats_url, sizeof(s->nats_url), "nats://127.0.0.1:%d", s->nats_port);
	char a0[] = "nats-server", a1[] = "-js", a2[] = "-a", a3[] = "127.0.0.1", a4[] = "-p",
	    a6[] = "-sd";
	char *argv[] = { a0, a1, a2, a3, a4, port, a6, sd, NULL };
	p->pid = spawn(p->log, argv, NULL);
	for (int i = 0; i < 200; i++) {
		if (tcp_open(s->nats_port)) {
			h_sleep_ms(100);
			return;
		}
		h_sleep_ms(50);
	}
	die("nats-server did not start (see %s)", p->log);
}

static size_t
collect(char *ptr, size_t size, size_t n, void *ud)
{
	sb_append(ud, ptr, size * n);
	return size * n;
}

/* h_http - one HTTP request */
int
h_http(const char *method, const char *url, const char *const *headers, const void *body,
    size_t len, struct h_resp *resp)
{
	CURL *c = curl_easy_init();
	struct curl_slist *hl = NULL;
	memset(resp, 0, sizeof(*resp));
	sb_init(&resp->body);
	sb_init(&resp->headers);
	for (int i = 0; headers && headers[i]; i++)
		hl = curl_slist_append(hl, headers[i]);
	hl = curl_slist_append(hl, "Expect:");
	curl_easy_setopt(c, CURLOPT_URL, url);
	curl_easy_setopt(c, CURLOPT_CUSTOMREQUEST, method);
	curl_easy_setopt(c, CURLOPT_HTTPHEADER, hl);
	curl_easy_setopt(c, CURLOPT_TIMEOUT_MS, 30000L);
	curl_easy_setopt(c, CURLOPT_WRITEFUNCTION, collect);
	curl_easy_setopt(c, CURLOPT_WRITEDATA, &resp->body);
	curl_easy_setopt(c, CURLOPT_HEADERFUNCTION, collect);
	curl_easy_setopt(c, CURLOPT_HEADERDATA, &resp->headers);
	if (body != NULL || strcmp(method, "POST") == 0) {
		curl_easy_setopt(c, CURLOPT_POSTFIELDS, body ? body : "");
		curl_easy_setopt(c, CURLOPT_POSTFIELDSIZE, (long)len);
	}
	CURLcode rc = curl_easy_perform(c);
	if (rc == CURLE_OK)
		curl_easy_getinfo(c, CURLINFO_RESPONSE_CODE, &resp->status);
	curl_slist_free_all(hl);
	curl_easy_cleanup(c);
	if (resp->body.data == NULL)
		sb_append(&resp->body, "", 0);
	if (resp->headers.data == NULL)
		sb_append(&resp->headers, "", 0);
	return rc == CURLE_OK ? 0 : -1;
}

/* h_resp_free - free a response */
void
h_resp_free(struct h_resp *r)
{
	sb_free(&r->body);
	sb_free(&r->headers);
}

/* h_header - value of a response header (static buffer) or NULL */
const char *
h_header(const struct h_resp *r, const char *name)
{
	static char val[512];
	size_t n = strlen(name);
	for (const char *l = r->headers.data; l && *l;) {
		const char *e = strstr(l, "\r\n");
		if (!e)
			break;
		if ((size_t)(e - l) > n && strncasecmp(l, name, n) == 0 && l[n] == ':') {
			const char *v = l + n + 1;
			while (*v == ' ')
				v++;
			snprintf(val, sizeof(val), "%.*s", (int)(e - v), v);
			return val;
		}
		l = e + 2;
	}
	return NULL;
}

/* h_wait_ready - wait for GET /readyz 200 */
int
h_wait_ready(int port, int timeout_ms)
{
	char url[128];
	snprintf(url, sizeof(url), "http://127.0.0.1:%d/readyz", port);
	for (int t = 0; t < timeout_ms; t += 100) {
		struct h_resp r;
		int ok = h_http("GET", url, NULL, NULL, 0, &r) == 0 && r.status == 200;
		h_resp_free(&r);
		if (ok)
			return 0;
		h_sleep_ms(100);
	}
	return -1;
}

/* h_spawn - start a binary of the project */
struct h_proc *
h_spawn(struct h_stack *s, const char *name, const char *prog, int port,
    const char *const *env, const char *const *args)
{
	struct h_proc *p = slot(s, name);
	char path[700], e_nats[128], e_port[64], e_inst[128];
	const char *envs[48];
	char *argv[32];
	int n = 0, a = 0;

	snprintf(path, sizeof(path), "%s/%s", s->bin, prog);
	snprintf(e_nats, sizeof(e_nats), "CLAWRELAY_NATS_URL=%s", s->nats_url);
	snprintf(e_port, sizeof(e_port), "CLAWRELAY_HTTP_PORT=%d", port);
	snprintf(e_inst, sizeof(e_inst), "CLAWRELAY_INSTANCE=%s", name);
	envs[n++] = e_nats;
	if (port > 0)
		envs[n++] = e_port;
	envs[n++] = e_inst;
	for (int i = 0; env && env[i] && n < 44; i++)
		envs[n++] = env[i];
	/* tests send hundreds of messages per pair in seconds: the per-pair and
	 * per-sender rate limits are off unless the test sets them */
	static const char *const test_defaults[] = { "CLAWRELAY_PAIR_RATE_PER_MIN=0",
		"CLAWRELAY_SENDER_RATE_PER_MIN=0" };
	for (size_t d = 0; d < sizeof(test_defaults) / sizeof(test_defaults[0]); d++) {
		size_t kl = (size_t)(strchr(test_defaults[d], '=') - test_defaults[d]) + 1;
		int set = 0;
		for (int i = 0; env && env[i]; i++)
			set |= strncmp(env[i], test_defaults[d], kl) == 0;
		if (!set && n < 46)
			envs[n++] = test_defaults[d];
	}
	envs[n] = NULL;
	char vg_log[600];
	if (getenv("CLAWRELAY_TEST_VALGRIND") && strstr(prog, "demo-hook") == NULL) {
		/* run the service under valgrind; h_kill checks its exit code */
		static char v0[] = "valgrind", v1[] = "-q", v2[] = "--leak-check=full",
		    v3[] = "--errors-for-leak-kinds=definite", v4[] = "--error-exitcode=99";
		snprintf(vg_log, sizeof(vg_log), "--log-file=%s/%s.valgrind", s->dir, name);
		argv[a++] = v0;
		argv[a++] = v1;
		argv[a++] = v2;
		argv[a++] = v3;
		argv[a++] = v4;
		argv[a++] = vg_log;
		p->valgrind = 1;
	}
	if (s->wrap_name != NULL && strcmp(name, s->wrap_name) == 0 && !p->valgrind)
		for (int i = 0; s->wrap_argv[i] != NULL && a < 24; i++)
			argv[a++] = (char *)(uintptr_t)s->wrap_argv[i];
	argv[a++] = path;
	for (int i = 0; args && args[i] && a < 31; i++)
		argv[a++] = (char *)(uintptr_t)args[i];
	argv[a] = NULL;
	p->port = port;
	p->pid = spawn(p->log, argv, envs);
	if (port > 0 && h_wait_ready(port, p->valgrind ? 60000 : 20000) < 0)
		die("%s did not become ready", p->log);
	return p;
}

/* h_start_services - the five services on free ports */
void
h_start_services(struct h_stack *s, const char *const *extra_env)
{
	static const char *const names[] = { "relay-session", "delivery", "notifier",
		"metrics-collector", "gateway" };
	char data[400], prog[64];
	const char *env[40];
	for (size_t i = 0; i < sizeof(names) / sizeof(names[0]); i++) {
		int n = 0;
		snprintf(data, sizeof(data), "CLAWRELAY_DATA_DIR=%s/%s", s->dir, names[i]);
		env[n++] = data;
		for (int j = 0; extra_env && extra_env[j] && n < 38; j++)
			env[n++] = extra_env[j];
		env[n] = NULL;
		snprintf(prog, sizeof(prog), "clawrelay-%s", names[i]);
		int port = h_free_port();
		h_spawn(s, names[i], prog, port, env, NULL);
		if (strcmp(names[i], "gateway") == 0) {
			s->gw_port = port;
			snprintf(s->gw_url, sizeof(s->gw_url), "http://127.0.0.1:%d", port);
		}
	}
}

/* h_find - the proc named name, or NULL */
struct h_proc *
h_find(struct h_stack *s, const char *name)
{
	for (int i = 0; i < s->nprocs; i++)
		if (s->procs[i].pid > 0 && strcmp(s->procs[i].name, name) == 0)
			return &s->procs[i];
	return NULL;
}

/* h_kill - send sig and wait for the process to end */
void
h_kill(struct h_proc *p, int sig)
{
	int st;
	if (p == NULL || p->pid <= 0)
		return;
	kill(p->pid, sig);
	for (int i = 0; i < (p->valgrind ? 600 : 150); i++) {
		if (waitpid(p->pid, &st, WNOHANG) == p->pid) {
			if (p->valgrind && sig == SIGTERM && WIFEXITED(st) && WEXITSTATUS(st) == 99) {
				fprintf(stderr, "harness: valgrind found errors in %s (see %s/%s.valgrind)\n",
				    p->name, p->log, p->name);
				h_valgrind_failures++;
			}
			p->pid = 0;
			return;
		}
		h_sleep_ms(100);
	}
	kill(p->pid, SIGKILL);
	waitpid(p->pid, &st, 0);
	p->pid = 0;
}

/* h_stop_all - stop everything started, newest first; remove the temp dir */
void
h_stop_all(struct h_stack *s)
{
	for (int i = s->nprocs - 1; i >= 0; i--)
		h_kill(&s->procs[i], SIGTERM);
	if (getenv("KEEP_TEST_DIR") == NULL && h_valgrind_failures == 0) {
		char cmd[400];
		snprintf(cmd, sizeof(cmd), "rm -rf '%s'", s->dir);
		if (system(cmd) != 0)
			fprintf(stderr, "harness: could not remove %s\n", s->dir);
	} else {
		fprintf(stderr, "harness: kept %s\n", s->dir);
	}
	curl_global_cleanup();
}

/* h_cli - run bin/clawrelay with args; stdout captured into out */
int
h_cli(struct h_stack *s, struct strbuf *out, const char *const *args)
{
	int fds[2], st;
	char path[700], e_nats[128], e_gw[128];
	char *argv[40];
	int a = 0;
	snprintf(path, sizeof(path), "%s/clawrelay", s->bin);
	argv[a++] = path;
	for (int i = 0; args[i] && a < 39; i++)
		argv[a++] = (char *)(uintptr_t)args[i];
	argv[a] = NULL;
	snprintf(e_nats, sizeof(e_nats), "CLAWRELAY_NATS_URL=%s", s->nats_url);
	snprintf(e_gw, sizeof(e_gw), "CLAWRELAY_GATEWAY_URL=%s", s->gw_url);
	if (pipe(fds) < 0)
		return -1;
	pid_t pid = fork();
	if (pid == 0) {
		dup2(fds[1], 1);
		close(fds[0]);
		close(fds[1]);
		putenv(e_nats);
		if (s->gw_url[0])
			putenv(e_gw);
		execv(path, argv);
		_exit(127);
	}
	close(fds[1]);
	char buf[4096];
	ssize_t n;
	while ((n = read(fds[0], buf, sizeof(buf))) > 0)
		if (out)
			sb_append(out, buf, (size_t)n);
	close(fds[0]);
	waitpid(pid, &st, 0);
	if (out && out->data == NULL)
		sb_append(out, "", 0);
	return WIFEXITED(st) ? WEXITSTATUS(st) : 128;
}

/* h_key_path - "<dir>/<id>.key" (IDs used in tests are file-name safe) */
void
h_key_path(const struct h_stack *s, const char *id, char *out, size_t sz)
{
	snprintf(out, sz, "%s/%s.key", s->dir, id);
}

/* h_agent - keygen + agent add */
void
h_agent(struct h_stack *s, const char *id, const char *webhook)
{
	char prefix[400], pub[420];
	snprintf(prefix, sizeof(prefix), "%s/%s", s->dir, id);
	snprintf(pub, sizeof(pub), "%s.pub", prefix);
	const char *kg[] = { "keygen", "--out", prefix, NULL };
	if (h_cli(s, NULL, kg) != 0)
		die("keygen failed for %s", id);
	if (webhook) {
		const char *add[] = { "agent", "add", id, "--pubkey", pub, "--webhook", webhook, NULL };
		if (h_cli(s, NULL, add) != 0)
			die("agent add failed for %s", id);
	} else {
		const char *add[] = { "agent", "add", id, "--pubkey", pub, NULL };
		if (h_cli(s, NULL, add) != 0)
			die("agent add failed for %s", id);
	}
}

/* h_trust - trust add from to */
void
h_trust(struct h_stack *s, const char *from, const char *to)
{
	const char *args[] = { "trust", "add", from, to, NULL };
	if (h_cli(s, NULL, args) != 0)
		die("trust add failed for %s", from);
}

static const char *
hval(const char *const *extra, const char *name)
{
	size_t n = strlen(name);
	for (int i = 0; extra && extra[i]; i++)
		if (strncasecmp(extra[i], name, n) == 0 && extra[i][n] == ':')
			return extra[i] + n + 2;
	return NULL;
}

/* h_send - signed POST as `from` to `to` */
int
h_send(struct h_stack *s, const char *from, const char *to, const void *body, size_t len,
    const char *const *extra, struct h_resp *resp)
{
	char keyp[400], path[512], url[700], ts[32], nonce[40], sha[64], sig[96];
	char h_agent_[300], h_ts[64], h_nonce[64], h_sha[96], h_sig[128];
	struct auth_key *k = NULL;
	const char *hdrs[24];
	int n = 0;

	h_key_path(s, from, keyp, sizeof(keyp));
	if (auth_key_load_private(keyp, &k) != CR_OK)
		die("cannot load key %s", keyp);
	snprintf(path, sizeof(path), "/v1/agents/%s/messages", to);
	snprintf(url, sizeof(url), "%s%s", s->gw_url, path);
	snprintf(ts, sizeof(ts), "%llu", (unsigned long long)(now_ms() / 1000));
	rand_hex(nonce, 12);
	auth_sha256_b64url(body, len, sha);
	struct auth_proof_input in = {
		.method = "POST", .path = path, .query = NULL, .agent = from, .timestamp = ts,
		.nonce = nonce, .body_sha256 = sha,
		.correlation_id = hval(extra, "X-Claw-Correlation-Id"),
		.idempotency_key = hval(extra, "X-Claw-Idempotency-Key"),
		.priority = hval(extra, "X-Claw-Priority"),
		.ttl_seconds = hval(extra, "X-Claw-Ttl-Seconds"),
	};
	if (auth_sign_request(k, &in, sig) != CR_OK)
		die("sign failed for %s", from);
	auth_key_free(k);
	snprintf(h_agent_, sizeof(h_agent_), "X-Claw-Agent: %s", from);
	snprintf(h_ts, sizeof(h_ts), "X-Claw-Timestamp: %s", ts);
	snprintf(h_nonce, sizeof(h_nonce), "X-Claw-Nonce: %s", nonce);
	snprintf(h_sha, sizeof(h_sha), "X-Claw-Body-SHA256: %s", sha);
	snprintf(h_sig, sizeof(h_sig), "X-Claw-Proof: %s", sig);
	hdrs[n++] = h_agent_;
	hdrs[n++] = h_ts;
	hdrs[n++] = h_nonce;
	hdrs[n++] = h_sha;
	hdrs[n++] = h_sig;
	for (int i = 0; extra && extra[i] && n < 23; i++)
		hdrs[n++] = extra[i];
	hdrs[n] = NULL;
	return h_http("POST", url, hdrs, body, len, resp);
}

/* h_read_file - whole file into sb; -1 if missing */
int
h_read_file(const char *path, struct strbuf *sb)
{
	FILE *f = fopen(path, "r");
	char buf[8192];
	size_t n;
	if (f == NULL)
		return -1;
	while ((n = fread(buf, 1, sizeof(buf), f)) > 0)
		sb_append(sb, buf, n);
	fclose(f);
	if (sb->data == NULL)
		sb_append(sb, "", 0);
	return 0;
}

/* h_file_lines - count complete lines of a file (0 if missing) */
int
h_file_lines(const char *path)
{
	FILE *f = fopen(path, "r");
	int c, n = 0;
	if (f == NULL)
		return 0;
	while ((c = getc(f)) != EOF)
		if (c == '\n')
			n++;
	fclose(f);
	return n;
}

/* h_wait_lines - wait until file has at least n lines */
int
h_wait_lines(const char *path, int n, int timeout_ms)
{
	int have = 0;
	for (int t = 0; t <= timeout_ms; t += 100) {
		have = h_file_lines(path);
		if (have >= n)
			break;
		h_sleep_ms(100);
	}
	return have;
}

/* h_wait_log - wait until a process log contains needle */
int
h_wait_log(const struct h_proc *p, const char *needle, int timeout_ms)
{
	for (int t = 0; t <= timeout_ms; t += 100) {
		struct strbuf sb;
		sb_init(&sb);
		int found = h_read_file(p->log, &sb) == 0 && strstr(sb.data, needle) != NULL;
		sb_free(&sb);
		if (found)
			return 0;
		h_sleep_ms(100);
	}
	return -1;
}
