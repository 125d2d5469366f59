/*
 * util.c - clocks, ULIDs, hashing, subject tokens, backoff, trace ids,
 * string buffers. The ULID generator keeps its last value under a mutex so
 * IDs from one process sort in the order they were made.
 */
#include <errno.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <time.h>

#include "util.h"

/* now_ms - wall clock milliseconds since the epoch */
uint64_t
now_ms(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_REALTIME, &ts);
	return (uint64_t)ts.tv_sec * 1000u + (uint64_t)ts.tv_nsec / 1000000u;
}

/* now_us - wall clock microseconds since the epoch */
uint64_t
now_us(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_REALTIME, &ts);
	return (uint64_t)ts.tv_sec * 1000000u + (uint64_t)ts.tv_nsec / 1000u;
}

/* mono_ms - monotonic milliseconds */
uint64_t
mono_ms(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000u + (uint64_t)ts.tv_nsec / 1000000u;
}

/* iso_time_ms - ms since the epoch as ISO 8601 UTC with milliseconds */
void
iso_time_ms(uint64_t ms, char out[32])
{
	time_t s = (time_t)(ms / 1000);
	struct tm tm;

	if (ms == 0 || gmtime_r(&s, &tm) == NULL) {
		snprintf(out, 32, "-");
		return;
	}
	size_t n = strftime(out, 32, "%Y-%m-%dT%H:%M:%S", &tm);
	snprintf(out + n, 32 - n, ".%03uZ", (unsigned)(ms % 1000));
}

static void
os_random(void *p, size_t n)
{
	unsigned char *b = p;
	while (n > 0) {
		ssize_t r = getrandom(b, n, 0);
		if (r < 0) {
			if (errno == EINTR)
				continue;
			abort();	/* no entropy: a broken environment */
		}
		b += r;
		n -= (size_t)r;
	}
}

static __thread uint64_t rng_state;

/* rand_u64 - thread-safe fast random numbers (xorshift64*, not for secrets) */
uint64_t
rand_u64(void)
{
	if (rng_state == 0) {
		os_random(&rng_state, sizeof(rng_state));
		rng_state |= 1;
	}
	rng_state ^= rng_state >> 12;
	rng_state ^= rng_state << 25;
	rng_state ^= rng_state >> 27;
	return rng_state * 2685821657736338717ULL;
}

/* rand_hex - n random bytes from the OS as 2n hex chars + NUL */
void
rand_hex(char *out, size_t nbytes)
{
	static const char hex[] = "0123456789abcdef";
	unsigned char b[64];
	if (nbytes > sizeof(b))
		nbytes = sizeof(b);
	os_random(b, nbytes);
	for (size_t i = 0; i < nbytes; i++) {
		out[2 * i] = hex[b[i] >> 4];
		out[2 * i + 1] = hex[b[i] & 15];
	}
	out[2 * nbytes] = '\0';
}

static const char crockford[] = "0123456789ABCDEFGHJKMNPQRSTVWXYZ";
static pthread_mutex_t ulid_mu = PTHREAD_MUTEX_INITIALIZER;
static uint64_t ulid_last_ms;
static unsigned char ulid_last_rand[10];

/* ulid_new - a new ULID (26 chars + NUL), monotonic within one process */
void
ulid_new(char out[ULID_LEN + 1])
{
	unsigned char r[10];
	uint64_t t = now_ms();

	pthread_mutex_lock(&ulid_mu);
	if (t <= ulid_last_ms) {
		/* same (or earlier) millisecond: increment the random part */
		t = ulid_last_ms;
		for (int i = 9; i >= 0; i--)
			if (++ulid_last_rand[i] != 0)
				break;
	} else {
		os_random(ulid_last_rand, sizeof(ulid_last_rand));
		ulid_last_rand[0] &= 0x7f;	/* room to increment */
		ulid_last_ms = t;
	}
	memcpy(r, ulid_last_rand, sizeof(r));
	pthread_mutex_unlock(&ulid_mu);

	for (int i = 9; i >= 0; i--) {
		out[i] = crockford[t & 31];
		t >>= 5;
	}
	/* 80 bits of randomness as 16 base32 chars */
	unsigned __int128 v = 0;
	for (int i = 0; i < 10; i++)
		v = (v << 8) | r[i];
	for (int i = 25; i >= 10; i--) {
		out[i] = crockford[(unsigned)(v & 31)];
		v >>= 5;
	}
	out[26] = '\0';
}

static int
crockford_val(char c)
{
	const char *p = strchr(crockford, c);
	return (c && p) ? (int)(p - crockford) : -1;
}

/* ulid_valid - is s a well-formed ULID (upper-case Crockford base32)? */
int
ulid_valid(const char *s)
{
	if (s == NULL || strlen(s) != ULID_LEN)
		return 0;
	if (s[0] > '7')
		return 0;
	for (int i = 0; i < ULID_LEN; i++)
		if (crockford_val(s[i]) < 0)
			return 0;
	return 1;
}

/* ulid_time_ms - the timestamp part of a valid ULID */
uint64_t
ulid_time_ms(const char *s)
{
	uint64_t t = 0;
	for (int i = 0; i < 10; i++)
		t = (t << 5) | (uint64_t)crockford_val(s[i]);
	return t;
}

/* fnv1a32 - FNV-1a hash of a string */
uint32_t
fnv1a32(const char *s)
{
	uint32_t h = 2166136261u;
	for (; *s; s++) {
		h ^= (unsigned char)*s;
		h *= 16777619u;
	}
	return h;
}

/* partition_of - the relay-session partition that owns an agent */
uint32_t
partition_of(const char *agent_id, uint32_t partitions)
{
	return partitions ? fnv1a32(agent_id) % partitions : 0;
}

static int
token_safe(unsigned char c)
{
	return (c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') ||
	    (c >= '0' && c <= '9') || c == ':' || c == '_' || c == '-';
}

static int
kv_safe(unsigned char c)
{
	return (c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') ||
	    (c >= '0' && c <= '9') || c == '_' || c == '-';
}

/* Copy id to out, writing every byte that safe() refuses as <esc>XX. */
static size_t
escape_token(const char *id, char *out, size_t outsz, int (*safe)(unsigned char), char esc)
{
	static const char hex[] = "0123456789ABCDEF";
	size_t o = 0;
	for (const unsigned char *p = (const unsigned char *)id; *p; p++) {
		if (safe(*p)) {
			if (o + 1 >= outsz)
				return 0;
			out[o++] = (char)*p;
		} else {
			if (o + 3 >= outsz)
				return 0;
			out[o++] = esc;
			out[o++] = hex[*p >> 4];
			out[o++] = hex[*p & 15];
		}
	}
	if (o >= outsz || o == 0)
		return 0;
	out[o] = '\0';
	return o;
}

/* subj_token - agent ID as one subject token (see util.h) */
size_t
subj_token(const char *id, char *out, size_t outsz)
{
	return escape_token(id, out, outsz, token_safe, '%');
}

/* kv_token - ID as one JetStream KV key token (see util.h) */
size_t
kv_token(const char *id, char *out, size_t outsz)
{
	return escape_token(id, out, outsz, kv_safe, '=');
}

static int
hexval(char c)
{
	if (c >= '0' && c <= '9')
		return c - '0';
	if (c >= 'A' && c <= 'F')
		return c - 'A' + 10;
	if (c >= 'a' && c <= 'f')
		return c - 'a' + 10;
	return -1;
}

/* subj_token_decode - reverse of subj_token; 0 on bad input */
size_t
subj_token_decode(const char *tok, char *out, size_t outsz)
{
	size_t o = 0;
	for (const char *p = tok; *p; p++) {
		if (o + 1 >= outsz)
			return 0;
		if (*p == '%') {
			int h = hexval(p[1]), l = h >= 0 ? hexval(p[2]) : -1;
			if (h < 0 || l < 0)
				return 0;
			out[o++] = (char)(h << 4 | l);
			p += 2;
		} else if (token_safe((unsigned char)*p)) {
			out[o++] = *p;
		} else {
			return 0;
		}
	}
	out[o] = '\0';
	return o;
}

/* backoff_ms - exponential backoff with jitter in [d/2, d], d capped */
uint64_t
backoff_ms(unsigned attempt, uint64_t base_ms, uint64_t cap_ms)
{
	uint64_t d = base_ms;
	for (unsigned i = 0; i < attempt && d < cap_ms; i++)
		d *= 2;
	if (d > cap_ms)
		d = cap_ms;
	if (d < 2)
		return d;
	return d / 2 + rand_u64() % (d / 2 + 1);
}

static int
all_hex_lower(const char *s, size_t n)
{
	int nonzero = 0;
	for (size_t i = 0; i < n; i++) {
		if (!((s[i] >= '0' && s[i] <= '9') || (s[i] >= 'a' && s[i] <= 'f')))
			return 0;
		if (s[i] != '0')
			nonzero = 1;
	}
	return nonzero;
}

/* traceparent_parse - W3C traceparent; 0 on success, -1 if malformed */
int
traceparent_parse(const char *tp, char trace_id[33], char span_id[17], unsigned *flags)
{
	if (tp == NULL || strlen(tp) != 55)
		return -1;
	if (tp[0] != '0' || tp[1] != '0' || tp[2] != '-' || tp[35] != '-' || tp[52] != '-')
		return -1;
	if (!all_hex_lower(tp + 3, 32) || !all_hex_lower(tp + 36, 16))
		return -1;
	int h = hexval(tp[53]), l = hexval(tp[54]);
	if (h < 0 || l < 0)
		return -1;
	memcpy(trace_id, tp + 3, 32);
	trace_id[32] = '\0';
	memcpy(span_id, tp + 36, 16);
	span_id[16] = '\0';
	if (flags)
		*flags = (unsigned)(h << 4 | l);
	return 0;
}

/* traceparent_format - "00-trace-span-flags" into out (56 bytes) */
void
traceparent_format(char out[56], const char *trace_id, const char *span_id, unsigned flags)
{
	snprintf(out, 56, "00-%.32s-%.16s-%02x", trace_id, span_id, flags & 0xff);
}

/* sb_init - an empty buffer */
void
sb_init(struct strbuf *sb)
{
	sb->data = NULL;
	sb->len = sb->cap = 0;
}

/* sb_free - release the buffer's memory */
void
sb_free(struct strbuf *sb)
{
	free(sb->data);
	sb_init(sb);
}

static int
sb_reserve(struct strbuf *sb, size_t extra)
{
	if (sb->len + extra + 1 <= sb->cap)
		return 0;
	size_t cap = sb->cap ? sb->cap : 256;
	while (cap < sb->len + extra + 1)
		cap *= 2;
	char *d = realloc(sb->data, cap);
	if (d == NULL)
		return -1;
	sb->data = d;
	sb->cap = cap;
	return 0;
}

/* sb_append - append n bytes; keeps data NUL-terminated; -1 on ENOMEM */
int
sb_append(struct strbuf *sb, const void *p, size_t n)
{
	if (sb_reserve(sb, n) < 0)
		return -1;
	memcpy(sb->data + sb->len, p, n);
	sb->len += n;
	sb->data[sb->len] = '\0';
	return 0;
}

/* sb_printf - append formatted text; -1 on ENOMEM */
int
sb_printf(struct strbuf *sb, const char *fmt, ...)
{
	va_list ap;
	va_start(ap, fmt);
	int n = vsnprintf(NULL, 0, fmt, ap);
	va_end(ap);
	if (n < 0 || sb_reserve(sb, (size_t)n) < 0)
		return -1;
	va_start(ap, fmt);
	vsnprintf(sb->data + sb->len, (size_t)n + 1, fmt, ap);
	va_end(ap);
	sb->len += (size_t)n;
	return 0;
}
