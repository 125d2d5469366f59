/*
 * lg.h - private header of clawrelay-loadgen (nothing outside tools/loadgen
 * includes it).
 *
 * The load generator drives the real stack and measures it end to end:
 *   lg_send.c  - the HTTP sender threads: signed POSTs straight to the
 *                gateway (http, fixed), open loop at a fixed rate or as fast
 *                as the concurrency allows; and the informational connector
 *                scenario's POSTs to sending connectors' local API (which
 *                forward them over their socket with `enqueue`).
 *   lg_http.c  - the minimal keep-alive HTTP/1.1 client they use (lg_http.h).
 *   lg_sock.c  - the socket scenario: the load generator's own WebSockets to
 *                the gateway's /v1/connect, one per sender identity, with
 *                `enqueue` frames pipelined up to the gateway's window and a
 *                limit on messages not yet delivered.
 *   lg_ws.c    - the small RFC 6455 client lg_sock.c uses (lg_ws.h).
 *   lg_hook.c  - the embedded hook server (a small epoll HTTP/1.1 server)
 *                the receiving connectors call: it parses the payload, which
 *                carries the scenario, a sequence number and the send time,
 *                and records the arrival.
 *   lg_sock.c and lg_send.c also share lg_count (the answers' tally).
 *   lg_stats.c - percentiles, per-process CPU from /proc, the report.
 *   main.c     - options, helper commands for scripts/bench.sh, the run.
 *
 * Payload: "clawbench s=<scenario> q=<seq> t=<send time, monotonic us>;"
 * padded with 'x' to the requested size. Sender and hook live in one process,
 * so both ends read the same CLOCK_MONOTONIC and e2e latency = arrival - t.
 * For fixed-rate runs t is the *intended* send time, so a sender that falls
 * behind shows up in the latency (no coordinated omission).
 *
 * Threads and ownership:
 *   - struct lg_run is built by main before any thread starts and is
 *     read-only afterwards, except for the struct lg_rec it points to.
 *   - struct lg_rec: the arrays are allocated before the scenario's threads
 *     start and freed by main after they are joined and the hook has been
 *     pointed away; slots are written with atomics (bitmap) or by the one
 *     thread that owns the slot (seq is handed out once; the latency array
 *     index by an atomic counter). Counters are atomics.
 *   - the hook server runs on its own thread and only touches the lg_rec
 *     of the scenario named in the payload, through lg_hook_set().
 */
#ifndef LG_H
#define LG_H

#include <stdatomic.h>
#include <stddef.h>
#include <stdint.h>

#define LG_MAX_SCEN     8
#define LG_MAX_IDS      256
#define LG_MAX_WATCH    32
#define LG_MAX_CONC     1024  /* HTTP sender threads (requests in flight) of one scenario */
#define LG_PAYLOAD_MAX  (64 * 1024)

struct auth_key;

enum lg_kind {
	LG_KIND_HTTP = 0,    /* signed POST to the gateway */
	LG_KIND_SOCKET,      /* enqueue frames on the load generator's own sockets */
	LG_KIND_CONNECTOR    /* POST to a sending connector's local API -> enqueue frame */
};

/* one sender identity (signed HTTP, or a socket's upgrade) */
struct lg_sender {
	char id[130];
	struct auth_key *key;        /* owned; freed by lg_run_free */
};

/* where HTTP requests go: http://host:port/base */
struct lg_dest {
	char host[256];
	int port;
	char base[256];              /* path prefix, "" or "/x" */
};

/* one watched process (CPU accounting per scenario) */
struct lg_watch {
	char name[64];
	int pid;
	uint64_t ticks0;             /* utime+stime at scenario start */
	uint64_t sys0;               /* stime at scenario start */
};

/* The measurements of one scenario. */
struct lg_rec {
	int id;                      /* scenario number, in the payload */
	size_t cap;                  /* max sequence numbers */
	uint64_t t0_us;              /* monotonic start of sending */
	uint64_t t_end_us;           /* sending stops at this time */
	_Atomic uint64_t t_last_send_us;

	atomic_size_t next_seq;      /* handed out to senders */
	atomic_size_t sent;          /* requests completed (any answer) */
	atomic_size_t accepted;      /* 202 (or 200) answers */
	atomic_size_t refused[6];    /* 4xx other, 429, 503, 507, 5xx other, transport */
	char first_refusal[256];     /* status and body of the first refusal */
	atomic_int have_refusal;

	uint32_t *acc_us;            /* [cap] request round trip of accepted ones, 0 = none */
	uint32_t *send_ms;           /* [cap] send time - t0 in ms (sender thread of the seq) */
	uint32_t *e2e_by_seq;        /* [cap] e2e latency in us + 1, 0 = not delivered (hook) */
	_Atomic uint64_t *seen;      /* [cap/64+1] bitmap of seqs delivered */
	uint32_t *lat_us;            /* [cap] e2e latency per unique delivery, arrival order */
	atomic_size_t delivered;     /* unique deliveries (= filled lat_us slots) */
	atomic_size_t delivered_in_window; /* unique deliveries before t_end_us */
	atomic_size_t dups;          /* a seq delivered again */
	_Atomic uint64_t t_last_deliver_us;
	_Atomic uint64_t sender_cpu_ns; /* CPU time of the sender threads (each adds its own) */
};

/* A scenario as asked for. */
struct lg_scen {
	char name[32];               /* "http", "socket", "fixed", "connector" */
	enum lg_kind kind;
	double rate;                 /* msg/s; 0 = as fast as possible */
	double seconds;
	int concurrency;             /* sender threads (socket: sockets) */
	int window;                  /* socket: enqueue frames in flight per socket */
	double floor_rate;           /* delivered/s floor, 0 = none */
	double floor_p99_ms;         /* p99 e2e floor, 0 = none */
	int report;                  /* 0 for the warm-up */
};

/* Everything the run needs (main.c fills it). */
struct lg_run {
	char gateway[256];           /* http://127.0.0.1:port */
	struct lg_dest gw;           /* its parts */
	struct lg_sender senders[LG_MAX_IDS];      /* HTTP senders */
	int nsenders;
	struct lg_sender ws_senders[LG_MAX_IDS];   /* socket senders, one socket each */
	int nws;
	int ws_window;               /* enqueue frames in flight per socket */
	int ws_events;               /* send connector_sent hop events, as a connector */
	int ws_backlog;              /* socket: at most this many sent and not yet delivered
	                              * or refused, all sockets together (0: no limit) */
	char recipients[LG_MAX_IDS][130];
	int nrecipients;
	struct lg_dest conns[LG_MAX_IDS];  /* sending connectors' local API */
	int nconn;
	size_t payload_bytes;
	double drain_seconds;
	double settle_seconds;
	char run_tag[24];            /* random, makes nonces unique across runs */
	struct lg_watch watch[LG_MAX_WATCH];
	int nwatch;
};

/* --- lg_send.c -------------------------------------------------------- */

/* lg_send_run - run scenario sc against rec (borrowed) with its sender
 * threads until its time is up; returns when every thread has finished
 * (the socket kind goes to lg_sock_run) */
int lg_send_run(const struct lg_run *run, const struct lg_scen *sc, struct lg_rec *rec);
/* lg_count - count the answer to seq: status 0 is a transport failure;
 * rt_us the round trip; detail says why, for the first refusal's report.
 * Any sender thread. */
void lg_count(struct lg_rec *rec, size_t seq, long status, uint64_t rt_us, const char *detail);
/* lg_send_cleanup - close the kept connections (after the last scenario) */
void lg_send_cleanup(void);
/* lg_payload - write the payload of (scenario, seq, t_us) padded to n bytes
 * into buf (at least n+1 bytes); returns its length */
size_t lg_payload(char *buf, size_t n, int scen, size_t seq, uint64_t t_us);

/* --- lg_sock.c -------------------------------------------------------- */

/* lg_sock_open_all - open (signed upgrade, reconnect, reconnect_ack) every
 * socket sender's socket not open yet; 0 if all are open (main thread, no
 * scenario running) */
int lg_sock_open_all(const struct lg_run *run);
/* lg_sock_run - the socket scenario: one thread per socket until its time
 * is up and every frame is answered (or its socket broke) */
int lg_sock_run(const struct lg_run *run, const struct lg_scen *sc, struct lg_rec *rec);
/* lg_sock_close_all - close the sockets (after the last scenario) */
void lg_sock_close_all(void);

/* --- lg_hook.c -------------------------------------------------------- */

/* lg_hook_start - start the hook server on 127.0.0.1:port; 0 or -1 */
int lg_hook_start(int port);
/* lg_hook_stop - stop it (joins its thread, closes its connections) */
void lg_hook_stop(void);
/* lg_hook_set - the record deliveries of scenario rec->id go to (borrowed
 * until lg_hook_set(NULL) returns); NULL: deliveries are only counted as stray */
void lg_hook_set(struct lg_rec *rec);
/* lg_hook_stray - deliveries that named no current scenario (late ones from
 * an earlier scenario, or unparsable payloads) */
size_t lg_hook_stray(void);
/* lg_hook_calls - every hook request so far */
size_t lg_hook_calls(void);

/* --- lg_stats.c ------------------------------------------------------- */

/* lg_rec_new - a record with room for cap sequence numbers; caller frees
 * with lg_rec_free */
struct lg_rec *lg_rec_new(int id, size_t cap);
/* lg_rec_free - NULL does nothing */
void lg_rec_free(struct lg_rec *rec);
/* lg_mono_us - CLOCK_MONOTONIC in microseconds */
uint64_t lg_mono_us(void);
/* lg_sleep_until_us - sleep until the monotonic time t_us */
void lg_sleep_until_us(uint64_t t_us);
/* lg_thread_cpu_done - add the calling thread's CPU time to rec->sender_cpu_ns
 * (a sender thread, just before it ends) */
void lg_thread_cpu_done(struct lg_rec *rec);
/* lg_proc_ticks - utime+stime (clock ticks) of pid and its threads, 0 if
 * gone; the system part in *sys when sys is not NULL */
uint64_t lg_proc_ticks(int pid, uint64_t *sys);
/* lg_watch_begin - remember every watched process's CPU ticks now */
void lg_watch_begin(struct lg_run *run);
/* lg_report - print one scenario's results (and its floors) on stdout;
 * returns 1 if every floor of sc was met, 0 if not */
int lg_report(struct lg_run *run, const struct lg_scen *sc, struct lg_rec *rec,
    double cpu_seconds);

#endif
