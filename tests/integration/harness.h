/*
 * harness.h - integration test harness: real nats-server and real binaries
 * on free loopback ports, in a temporary directory; everything started is
 * stopped by its PID at the end.
 */
#ifndef CR_HARNESS_H
#define CR_HARNESS_H

#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

#include "util.h"

#define H_MAX_PROCS 32

struct h_proc {
	pid_t pid;
	char name[64];
	char log[512];
	int port;	/* its HTTP port, 0 if none */
	int valgrind;	/* runs under valgrind (CLAWRELAY_TEST_VALGRIND) */
};

struct h_stack {
	char dir[256];          /* temp dir for data and logs */
	char bin[512];          /* folder of the binaries */
	int nats_port;
	char nats_url[64];
	struct h_proc procs[H_MAX_PROCS];
	int nprocs;
	int gw_port;
	char gw_url[64];
	/* h_spawn runs the process named wrap_name under wrap_argv (a command
	 * and its arguments, NULL-terminated; the binary's path follows them):
	 * strace for a test that reads a service's system calls */
	const char *wrap_name;
	const char *const *wrap_argv;
};

/* processes that ended with valgrind's error exit code (see h_kill) */
extern int h_valgrind_failures;

/* h_stack_init - temp dir, binary dir (CLAWRELAY_BIN or ./bin) */
void h_stack_init(struct h_stack *s, const char *name);
/* h_free_port - a free TCP port on 127.0.0.1 */
int h_free_port(void);
/* h_nats_start - start nats-server -js on a free port; aborts on failure */
void h_nats_start(struct h_stack *s);
/* h_spawn - start bin/<prog> with extra env ("K=V", NULL-terminated) and
 * args (NULL-terminated, may be NULL); stdout+stderr to <dir>/<name>.log;
 * waits for /readyz when port > 0. Returns the proc slot. */
struct h_proc *h_spawn(struct h_stack *s, const char *name, const char *prog, int port,
    const char *const *env, const char *const *args);
/* h_start_services - gateway, relay-session, delivery, notifier, metrics-collector */
void h_start_services(struct h_stack *s, const char *const *extra_env);
/* h_find - the proc named name, or NULL */
struct h_proc *h_find(struct h_stack *s, const char *name);
/* h_kill - send sig and wait for the process to end */
void h_kill(struct h_proc *p, int sig);
/* h_stop_all - SIGTERM everything (then SIGKILL) and remove the temp dir
 * unless KEEP_TEST_DIR is set */
void h_stop_all(struct h_stack *s);
/* h_wait_ready - wait for GET /readyz 200; 0 ok, -1 timeout */
int h_wait_ready(int port, int timeout_ms);

struct h_resp {
	long status;
	struct strbuf body;
	struct strbuf headers;
};
/* h_http - one HTTP request; headers NULL-terminated "Name: value"; resp
 * freed with h_resp_free */
int h_http(const char *method, const char *url, const char *const *headers,
    const void *body, size_t len, struct h_resp *resp);
void h_resp_free(struct h_resp *r);
/* h_header - value of a response header (static buffer) or NULL */
const char *h_header(const struct h_resp *r, const char *name);

/* h_cli - run bin/clawrelay with args (NULL-terminated) and NATS/gateway
 * env set; stdout captured into out (may be NULL); returns exit status */
int h_cli(struct h_stack *s, struct strbuf *out, const char *const *args);

/* h_agent - keygen + agent add; key files under dir; webhook may be NULL */
void h_agent(struct h_stack *s, const char *id, const char *webhook);
/* h_key_path - "<dir>/<id>.key" */
void h_key_path(const struct h_stack *s, const char *id, char *out, size_t sz);
/* h_trust - trust add from to */
void h_trust(struct h_stack *s, const char *from, const char *to);

/* h_send - signed POST as `from` to `to` (gateway URL of s); extra headers
 * (NULL-terminated "X-Claw-...: v", signed ones included in the proof) */
int h_send(struct h_stack *s, const char *from, const char *to, const void *body, size_t len,
    const char *const *extra, struct h_resp *resp);

/* h_file_lines - count lines of a file; h_read_file - whole file into sb */
int h_file_lines(const char *path);
int h_read_file(const char *path, struct strbuf *sb);
/* h_wait_lines - wait until file has at least n lines; returns count */
int h_wait_lines(const char *path, int n, int timeout_ms);
/* h_wait_log - wait until a process log contains needle; 0 found */
int h_wait_log(const struct h_proc *p, const char *needle, int timeout_ms);
void h_sleep_ms(int ms);

#endif
