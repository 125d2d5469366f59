/*
 * conn_key.c - deterministic idempotency keys (see conn_key.h).
 * Pure: no state, any thread.
 */
#include <stdint.h>
#include <string.h>

#include "auth.h"
#include "conn_key.h"

#define KEY_TAG "clawrelay-idem-v1"

static size_t put_field(unsigned char *p, const char *s, size_t n)
{
	uint32_t l = s ? (uint32_t)n : 0xffffffffu;

	p[0] = (unsigned char)(l >> 24);
	p[1] = (unsigned char)(l >> 16);
	p[2] = (unsigned char)(l >> 8);
	p[3] = (unsigned char)l;
	if (s && n)
		memcpy(p + 4, s, n);
	return 4 + (s ? n : 0);
}

/* conn_idem_key - the deterministic key of (sender, recipient, correlation, event, payload) */
enum cr_err conn_idem_key(const char *sender, const char *recipient,
    const char *correlation_id, const char *event_id, const void *payload, size_t len,
    char out[CONN_KEY_SIZE])
{
	static const char hex[] = "0123456789abcdef";
	/* IDs are at most AUTH_ID_MAX, event IDs at most AUTH_IDEM_KEY_MAX
	 * characters; anything longer is refused before it gets here */
	unsigned char buf[sizeof(KEY_TAG) + 4 * 4 + 3 * AUTH_ID_MAX + AUTH_IDEM_KEY_MAX + 32];
	unsigned char d[32];
	size_t n = 0, sl, rl, cl = 0, el = 0;
	enum cr_err e;

	if (!sender || !recipient || (!payload && len))
		return CR_ERR_INVALID;
	sl = strlen(sender);
	rl = strlen(recipient);
	if (correlation_id)
		cl = strlen(correlation_id);
	if (event_id)
		el = strlen(event_id);
	if (sl > AUTH_ID_MAX || rl > AUTH_ID_MAX || cl > AUTH_ID_MAX || el > AUTH_IDEM_KEY_MAX)
		return CR_ERR_INVALID;
	memcpy(buf, KEY_TAG, sizeof(KEY_TAG));	/* with its NUL */
	n = sizeof(KEY_TAG);
	n += put_field(buf + n, sender, sl);
	n += put_field(buf + n, recipient, rl);
	n += put_field(buf + n, correlation_id, cl);
	n += put_field(buf + n, event_id, el);
	if ((e = auth_sha256_raw(payload, len, buf + n)) != CR_OK)
		return e;
	n += 32;
	if ((e = auth_sha256_raw(buf, n, d)) != CR_OK)
		return e;
	memcpy(out, CONN_KEY_PREFIX, sizeof(CONN_KEY_PREFIX) - 1);
	for (size_t i = 0; i < CONN_KEY_HEX / 2; i++) {
		out[sizeof(CONN_KEY_PREFIX) - 1 + 2 * i] = hex[d[i] >> 4];
		out[sizeof(CONN_KEY_PREFIX) - 1 + 2 * i + 1] = hex[d[i] & 15];
	}
	out[CONN_KEY_LEN] = '\0';
	return CR_OK;
}
