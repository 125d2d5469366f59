/*
 * lg_stats.c - records, clocks, CPU accounting from /proc and the report of
 * clawrelay-loadgen.
 *
 * Threads: lg_rec_new/free, lg_watch_begin and lg_report run on the main
 * thread, after (or before) a scenario's sender threads; lg_report reads the
 * record while the hook may still count stray deliveries, which only touch
 * atomics. lg_mono_us and lg_sleep_until_us are called from any thread.
 */
#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "lg.h"

/* lg_mono_us - CLOCK_MONOTONIC in microseconds */
uint64_t
lg_mono_us(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000000u + (uint64_t)ts.tv_nsec / 1000u;
}

/* lg_sleep_until_us - sleep until the monotonic time t_us */
void
lg_sleep_until_us(uint64_t t_us)
{
	struct timespec ts = { (time_t)(t_us / 1000000u), (long)(t_us % 1000000u) * 1000L };
	while (clock_nanosleep(CLOCK_MONOTONIC, TIMER_ABSTIME, &ts, NULL) == EINTR)
		;
}

/* lg_thread_cpu_done - add the calling thread's CPU time to the record */
void
lg_thread_cpu_done(struct lg_rec *rec)
{
	struct timespec ts;

	if (clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts) == 0)
		atomic_fetch_add(&rec->sender_cpu_ns,
		    (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec);
}

/* lg_rec_new - a record with room for cap sequence numbers; caller frees
 * with lg_rec_free */
struct lg_rec *
lg_rec_new(int id, size_t cap)
{
	struct lg_rec *r = calloc(1, sizeof(*r));

	if (r == NULL)
		return NULL;
	r->id = id;
	r->cap = cap;
	r->acc_us = calloc(cap, sizeof(*r->acc_us));
	r->lat_us = calloc(cap, sizeof(*r->lat_us));
	r->seen = calloc(cap / 64 + 1, sizeof(*r->seen));
	r->send_ms = calloc(cap, sizeof(*r->send_ms));
	r->e2e_by_seq = calloc(cap, sizeof(*r->e2e_by_seq));
	if (r->acc_us == NULL || r->lat_us == NULL || r->seen == NULL || r->send_ms == NULL ||
	    r->e2e_by_seq == NULL) {
		lg_rec_free(r);
		return NULL;
	}
	return r;
}

/* lg_rec_free - NULL does nothing */
void
lg_rec_free(struct lg_rec *rec)
{
	if (rec == NULL)
		return;
	free(rec->acc_us);
	free(rec->lat_us);
	free(rec->seen);
	free(rec->send_ms);
	free(rec->e2e_by_seq);
	free(rec);
}

/* lg_proc_ticks - utime+stime (clock ticks) of pid and its threads, 0 if
 * gone; the system part in *sys when sys is not NULL */
uint64_t
lg_proc_ticks(int pid, uint64_t *sys)
{
	char path[64], buf[1024];
	unsigned long long ut = 0, st = 0;
	size_t n;
	FILE *f;

	if (sys)
		*sys = 0;
	snprintf(path, sizeof(path), "/proc/%d/stat", pid);
	if ((f = fopen(path, "r")) == NULL)
		return 0;
	n = fread(buf, 1, sizeof(buf) - 1, f);
	fclose(f);
	buf[n] = '\0';
	/* the command name may hold spaces: fields count from the last ')' */
	char *p = strrchr(buf, ')');
	if (p == NULL || sscanf(p + 2, "%*c %*d %*d %*d %*d %*d %*u %*u %*u %*u %*u %llu %llu",
	    &ut, &st) != 2)
		return 0;
	if (sys)
		*sys = st;
	return ut + st;
}

/* busy and total jiffies of the whole machine */
static void
machine_ticks(uint64_t *busy, uint64_t *total)
{
	unsigned long long v[10] = { 0 };
	FILE *f = fopen("/proc/stat", "r");

	*busy = *total = 0;
	if (f == NULL)
		return;
	if (fscanf(f, "cpu %llu %llu %llu %llu %llu %llu %llu %llu %llu %llu", &v[0], &v[1],
	    &v[2], &v[3], &v[4], &v[5], &v[6], &v[7], &v[8], &v[9]) >= 8) {
		for (int i = 0; i < 8; i++)
			*total += v[i];
		*busy = *total - v[3] - v[4];
	}
	fclose(f);
}

static uint64_t m_busy0, m_total0;

/* lg_watch_begin - remember every watched process's CPU ticks now */
void
lg_watch_begin(struct lg_run *run)
{
	for (int i = 0; i < run->nwatch; i++)
		run->watch[i].ticks0 = lg_proc_ticks(run->watch[i].pid, &run->watch[i].sys0);
	machine_ticks(&m_busy0, &m_total0);
}

static int
cmp_u32(const void *a, const void *b)
{
	uint32_t x = *(const uint32_t *)a, y = *(const uint32_t *)b;
	return x < y ? -1 : x > y;
}

/* percentile p (0-100) of n sorted values, in ms */
static double
pct_ms(const uint32_t *v, size_t n, double p)
{
	if (n == 0)
		return 0;
	size_t i = (size_t)((p / 100.0) * (double)n);
	if (i >= n)
		i = n - 1;
	return v[i] / 1000.0;
}

/* per second of sending: messages accepted, and the worst accept and e2e
 * latency of the messages sent in that second (stalls show up here) */
static void
timeline(const struct lg_rec *rec, size_t top, double seconds)
{
	size_t nb = (size_t)seconds + 2, acc[64] = { 0 };
	uint32_t worst_acc[64] = { 0 }, worst_e2e[64] = { 0 };

	if (nb > 64)
		nb = 64;
	for (size_t i = 0; i < top; i++) {
		size_t b = rec->send_ms[i] / 1000;
		if (rec->acc_us[i] == 0 || b >= nb)
			continue;
		acc[b]++;
		if (rec->acc_us[i] > worst_acc[b])
			worst_acc[b] = rec->acc_us[i];
		if (rec->e2e_by_seq[i] > worst_e2e[b])
			worst_e2e[b] = rec->e2e_by_seq[i];
	}
	printf("  per second        accepted / worst accept ms / worst e2e ms:");
	for (size_t b = 0; b < nb; b++) {
		if (acc[b] == 0)
			continue;
		printf("%s %zus:%zu/%.0f/%.0f", b % 5 == 0 ? "\n   " : "", b + 1, acc[b],
		    worst_acc[b] / 1000.0, worst_e2e[b] ? (worst_e2e[b] - 1) / 1000.0 : -1.0);
	}
	printf("\n");
}

/* lg_report - print one scenario's results and floors; 1 if all met */
int
lg_report(struct lg_run *run, const struct lg_scen *sc, struct lg_rec *rec,
    double cpu_seconds)
{
	size_t sent = atomic_load(&rec->sent), acc = atomic_load(&rec->accepted);
	size_t del = atomic_load(&rec->delivered), dups = atomic_load(&rec->dups);
	size_t delw = atomic_load(&rec->delivered_in_window);
	uint64_t t_send_end = atomic_load(&rec->t_last_send_us);
	uint64_t t_last = atomic_load(&rec->t_last_deliver_us);
	double send_s = t_send_end > rec->t0_us ? (double)(t_send_end - rec->t0_us) / 1e6 : 0;
	double del_s = t_last > rec->t0_us ? (double)(t_last - rec->t0_us) / 1e6 : 0;
	double acc_rate = send_s > 0 ? (double)acc / send_s : 0;
	double del_rate = del_s > 0 ? (double)del / del_s : 0;
	double win_rate = sc->seconds > 0 ? (double)delw / sc->seconds : 0;
	uint32_t *lat = NULL, *accl = NULL;
	size_t nacc = 0;
	double p50 = 0, p95 = 0, p99 = 0, pmax = 0, a50 = 0, a99 = 0;
	int met = 1;

	if (del > 0 && (lat = malloc(del * sizeof(*lat))) != NULL) {
		memcpy(lat, rec->lat_us, del * sizeof(*lat));
		qsort(lat, del, sizeof(*lat), cmp_u32);
		p50 = pct_ms(lat, del, 50);
		p95 = pct_ms(lat, del, 95);
		p99 = pct_ms(lat, del, 99);
		pmax = lat[del - 1] / 1000.0;
	}
	size_t top = atomic_load(&rec->next_seq);
	if (top > rec->cap)
		top = rec->cap;
	if (acc > 0 && (accl = malloc(acc * sizeof(*accl))) != NULL) {
		for (size_t i = 0; i < top && nacc < acc; i++)
			if (rec->acc_us[i])
				accl[nacc++] = rec->acc_us[i];
		qsort(accl, nacc, sizeof(*accl), cmp_u32);
		a50 = pct_ms(accl, nacc, 50);
		a99 = pct_ms(accl, nacc, 99);
	}

	if (!sc->report) {
		printf("warm-up %-6s %zu accepted (%.0f/s), %zu delivered\n", sc->name, acc,
		    acc_rate, del);
		free(lat);
		free(accl);
		return 1;
	}

	if (sc->kind == LG_KIND_SOCKET)
		printf("\n== scenario %s: enqueue frames on the load generator's own sockets to the"
		    " gateway, as fast as accepted, %d sockets (one per sender), window %d frames per"
		    " socket, at most %d sent and not yet delivered, %.0f s ==\n", sc->name,
		    sc->concurrency, sc->window, run->ws_backlog, sc->seconds);
	else
		printf("\n== scenario %s: %s, %s, %d concurrent senders, %.0f s ==\n", sc->name,
		    sc->kind == LG_KIND_HTTP ? "signed HTTP POST to the gateway" :
		    "POST to sending connectors' local API -> their socket enqueue (informational)",
		    sc->rate > 0 ? "fixed rate" : "as fast as accepted", sc->concurrency, sc->seconds);
	if (sc->rate > 0)
		printf("  target rate       %.0f msg/s\n", sc->rate);
	printf("  sent              %zu requests in %.2f s\n", sent, send_s);
	printf("  accepted          %zu  = %.0f msg/s\n", acc, acc_rate);
	printf("  refused           429=%zu 503=%zu 507=%zu other-4xx=%zu 5xx=%zu transport=%zu\n",
	    atomic_load(&rec->refused[1]), atomic_load(&rec->refused[2]),
	    atomic_load(&rec->refused[3]), atomic_load(&rec->refused[0]),
	    atomic_load(&rec->refused[4]), atomic_load(&rec->refused[5]));
	if (atomic_load(&rec->have_refusal))
		printf("  first refusal     %s\n", rec->first_refusal);
	printf("  accept latency    p50 %.2f ms  p99 %.2f ms  (%s)\n", a50, a99,
	    sc->kind == LG_KIND_SOCKET ? "enqueue frame made -> its enqueue_ack read" :
	    "request round trip");
	printf("  delivered         %zu of %zu accepted (%zu duplicates)  = %.0f msg/s end to end"
	    " (last after %.2f s; %.0f msg/s inside the send window)\n", del, acc, dups, del_rate,
	    del_s, win_rate);
	if (del < acc)
		printf("  NOT DELIVERED     %zu accepted messages had not reached the hook when the"
		    " drain gave up\n", acc - del);
	printf("  e2e latency       p50 %.2f ms  p95 %.2f ms  p99 %.2f ms  max %.2f ms\n", p50, p95,
	    p99, pmax);
	timeline(rec, top, sc->seconds);
	printf("  CPU               %% of one core over %.1f s (system part), CPU us per delivered"
	    " message", cpu_seconds);
	double sum = 0, tck = (double)sysconf(_SC_CLK_TCK);
	for (int i = 0; i < run->nwatch; i++) {
		uint64_t sys1, t1 = lg_proc_ticks(run->watch[i].pid, &sys1);
		const struct lg_watch *w = &run->watch[i];
		double used = t1 >= w->ticks0 ? (double)(t1 - w->ticks0) / tck : 0;
		double sys = sys1 >= w->sys0 ? (double)(sys1 - w->sys0) / tck : 0;
		double pc = cpu_seconds > 0 ? 100.0 * used / cpu_seconds : 0;
		sum += pc;
		printf("%s %s %.0f%% (%.0f%%) %.0fus", i % 4 == 0 ? "\n   " : ",", w->name, pc,
		    cpu_seconds > 0 ? 100.0 * sys / cpu_seconds : 0, del ? used * 1e6 / (double)del : 0);
	}
	uint64_t busy1, total1;
	machine_ticks(&busy1, &total1);
	long ncpu = sysconf(_SC_NPROCESSORS_ONLN);
	double mach = total1 > m_total0 ?
	    100.0 * (double)ncpu * (double)(busy1 - m_busy0) / (double)(total1 - m_total0) : 0;
	printf("\n    watched sum %.0f%%; whole machine %.0f%% of %ld00%% busy; other processes"
	    " %.0f%%\n", sum, mach, ncpu, mach > sum ? mach - sum : 0);
	printf("    of loadgen: its sender threads %.0f us per sent message; the rest is mostly the"
	    " receivers' hook server\n", sent ? (double)atomic_load(&rec->sender_cpu_ns) / 1e3 /
	    (double)sent : 0);

	if (sc->floor_rate > 0) {
		int ok = del_rate >= sc->floor_rate && del >= acc;
		printf("  FLOOR             >= %.0f msg/s end to end, all delivered: %s (%.0f msg/s%s)\n",
		    sc->floor_rate, ok ? "MET" : "NOT MET", del_rate, del >= acc ? "" : ", some undelivered");
		met &= ok;
	}
	if (sc->floor_p99_ms > 0) {
		int rate_ok = sc->rate <= 0 || acc_rate >= 0.95 * sc->rate;
		int ok = del > 0 && p99 < sc->floor_p99_ms && rate_ok && del >= acc;
		printf("  FLOOR             p99 e2e < %.0f ms at %.0f msg/s: %s (p99 %.2f ms, %.0f msg/s"
		    " accepted%s)\n", sc->floor_p99_ms, sc->rate, ok ? "MET" : "NOT MET", p99, acc_rate,
		    del >= acc ? "" : ", some undelivered");
		met &= ok;
	}
	printf("RESULT scenario=%s accepted=%zu accepted_per_s=%.0f delivered=%zu "
	    "delivered_per_s=%.0f p50_ms=%.2f p95_ms=%.2f p99_ms=%.2f max_ms=%.2f floors_met=%d\n",
	    sc->name, acc, acc_rate, del, del_rate, p50, p95, p99, pmax, met);
	fflush(stdout);
	free(lat);
	free(accl);
	return met;
}
