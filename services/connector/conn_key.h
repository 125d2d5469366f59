/*
 * conn_key.h - the connector's deterministic idempotency keys (pure
 * functions, no connector state; the unit tests link conn_key.c alone).
 *
 * An outbound message that arrives without X-Claw-Idempotency-Key gets
 *   "ck1-" + the first 32 hex digits of SHA-256 over
 *   "clawrelay-idem-v1\0", then sender, recipient, the agent's own
 *   X-Claw-Correlation-Id and X-Claw-Event-Id, each as a 4-byte big-endian
 *   length and its bytes (an absent optional one as the length 0xffffffff
 *   alone, so absent and empty differ), then SHA-256(payload).
 * So the same send fired twice (same sender, recipient, payload, and the
 * same correlation and event IDs if the agent gave them) carries the same
 * key and the relay delivers it once; a different event ID or correlation
 * ID names another message. A correlation ID the connector assigned (the
 * agent gave none) is not part of it: it differs on every call. 128 bits
 * keep accidental collisions out of reach; the key is printable ASCII, as
 * auth_check_idempotency_key wants.
 */
#ifndef CONN_KEY_H
#define CONN_KEY_H

#include <stddef.h>

#include "err.h"

#define CONN_KEY_PREFIX "ck1-"
#define CONN_KEY_HEX 32
#define CONN_KEY_LEN (sizeof(CONN_KEY_PREFIX) - 1 + CONN_KEY_HEX)
#define CONN_KEY_SIZE (CONN_KEY_LEN + 1)

/* conn_idem_key - the deterministic key of (sender, recipient, the agent's
 * correlation ID, event ID, payload) into out (CONN_KEY_LEN characters +
 * NUL). correlation_id and event_id NULL = not given; payload may be NULL
 * when len is 0. CR_ERR_INVALID for NULL IDs or fields over their limits. */
enum cr_err conn_idem_key(const char *sender, const char *recipient,
    const char *correlation_id, const char *event_id, const void *payload, size_t len,
    char out[CONN_KEY_SIZE]);

#endif
