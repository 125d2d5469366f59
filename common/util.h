/*
 * util.h - small generic helpers: clocks, ULIDs, FNV-1a, subject tokens,
 * backoff with jitter, W3C trace ids, a growable string buffer.
 * Everything here is thread-safe.
 */
#ifndef CR_UTIL_H
#define CR_UTIL_H

#include <stddef.h>
#include <stdint.h>

#define ULID_LEN 26

/* now_ms / now_us - wall clock since the epoch */
uint64_t now_ms(void);
uint64_t now_us(void);
/* mono_ms - monotonic clock for timers */
uint64_t mono_ms(void);

/* iso_time_ms - ms since the epoch as "2024-05-01T12:00:00.123Z" ("-" for 0) */
void iso_time_ms(uint64_t ms, char out[32]);

/* ulid_new - a new ULID (26 chars + NUL), monotonic within one process */
void ulid_new(char out[ULID_LEN + 1]);
/* ulid_valid - is s a well-formed ULID? */
int ulid_valid(const char *s);
/* ulid_time_ms - the timestamp part of a valid ULID */
uint64_t ulid_time_ms(const char *s);

/* fnv1a32 - FNV-1a hash of a string */
uint32_t fnv1a32(const char *s);
/* partition_of - the relay-session partition that owns an agent */
uint32_t partition_of(const char *agent_id, uint32_t partitions);

/* subj_token - agent ID as one subject token: every byte outside
 * [A-Za-z0-9:_-] percent-encoded. Returns length, or 0 if out is too small. */
size_t subj_token(const char *id, char *out, size_t outsz);
/* subj_token_decode - reverse of subj_token; 0 on bad input */
size_t subj_token_decode(const char *tok, char *out, size_t outsz);

/* kv_token - ID as one JetStream KV key token: every byte outside
 * [A-Za-z0-9_-] written as =XX (upper-case hex), since KV keys allow only
 * [-/_=.A-Za-z0-9]. Returns length, or 0 if out is too small or id empty. */
size_t kv_token(const char *id, char *out, size_t outsz);

/* rand_u64 - thread-safe fast random numbers (not for secrets) */
uint64_t rand_u64(void);
/* rand_hex - n random bytes from the OS as 2n hex chars + NUL */
void rand_hex(char *out, size_t nbytes);

/* backoff_ms - exponential backoff with full jitter: a random delay in
 * [base*2^attempt / 2, base*2^attempt], capped at cap_ms */
uint64_t backoff_ms(unsigned attempt, uint64_t base_ms, uint64_t cap_ms);

/* traceparent_parse - W3C traceparent "00-<32 hex>-<16 hex>-<2 hex>";
 * fills trace_id (33) and span_id (17); returns 0 on success */
int traceparent_parse(const char *tp, char trace_id[33], char span_id[17], unsigned *flags);
/* traceparent_format - "00-trace-span-flags" into out (56 bytes) */
void traceparent_format(char out[56], const char *trace_id, const char *span_id, unsigned flags);

/* A growable byte buffer; sb_free releases data. */
struct strbuf {
	char *data;
	size_t len, cap;
};
void sb_init(struct strbuf *sb);
void sb_free(struct strbuf *sb);
int sb_append(struct strbuf *sb, const void *p, size_t n);
int sb_printf(struct strbuf *sb, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

#endif
