/*
 * svc.h - the one service skeleton every program runs on.
 *
 * svc_main() does what every service repeats: --help / --print-config,
 * config from CLAWRELAY_* variables (common table + the service's), JSON
 * logging, signals (handlers only set a flag), the NATS bus, hop events, an
 * HTTP server with /healthz, /readyz, /v1/status and /metrics, a periodic
 * tick on the main thread, draining on SIGTERM/SIGINT and teardown in the
 * reverse order of start-up.
 *
 * Threads: init, tick, drain and fini run on the main thread. HTTP handlers
 * run on civetweb's workers, bus handlers on nats.c's threads: services guard
 * what those share.
 */
#ifndef CR_SVC_H
#define CR_SVC_H

#include <civetweb.h>
#include <cJSON.h>

#include "bus.h"
#include "cfg.h"
#include "util.h"

struct svc;

struct svc_def {
	const char *name;          /* "gateway": logs, NATS client name, events subject */
	const char *summary;       /* one line for --help */
	const char *default_port;  /* HTTP port default, as text */
	const struct cfg_item *cfg;/* the service's own settings */
	size_t ncfg;
	int no_bus;                /* 1: do not connect to NATS (connector) */
	int (*init)(struct svc *s, void *st);     /* register routes/subs; nonzero = exit 1 */
	void (*tick)(struct svc *s, void *st);    /* every TICK_MS on the main thread */
	int (*ready)(struct svc *s, void *st);    /* extra readiness; NULL = ready when bus is */
	void (*status)(struct svc *s, void *st, cJSON *obj);    /* add to /v1/status */
	void (*metrics)(struct svc *s, void *st, struct strbuf *sb); /* extra /metrics text */
	void (*drain)(struct svc *s, void *st);   /* SIGTERM: stop taking work, flush (bus up) */
	void (*fini)(struct svc *s, void *st);    /* free state (bus and HTTP gone) */
};

/* svc_main - run the service; returns the process exit code */
int svc_main(int argc, char **argv, const struct svc_def *def, void *st);

struct bus *svc_bus(struct svc *s);
struct mg_context *svc_http(struct svc *s);
const char *svc_instance(const struct svc *s);
const char *svc_name(const struct svc *s);
int svc_http_port(const struct svc *s);
/* svc_partitions - CLAWRELAY_PARTITIONS (common setting, default 16) */
uint32_t svc_partitions(const struct svc *s);
/* svc_route - add an HTTP handler (civetweb URI pattern) */
void svc_route(struct svc *s, const char *uri, mg_request_handler h, void *arg);
/* svc_stopping - has a stop been asked for? (any thread) */
int svc_stopping(const struct svc *s);
/* svc_request_stop - ask the main loop to drain and stop (any thread) */
void svc_request_stop(struct svc *s);

#endif
