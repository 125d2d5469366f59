/*
 * b64.h - base64url (RFC 4648 section 5) without padding.
 *
 * Used for the proof headers (X-Claw-Proof, X-Claw-Body-SHA256) and for raw
 * public keys. The decoder is strict, because its input is untrusted and a
 * signature must have exactly one spelling: it refuses '=' padding, any
 * character outside [A-Za-z0-9_-], a length of 1 mod 4, and non-zero unused
 * bits in the last character. Pure functions, no state: any thread may call.
 */
#ifndef CR_B64_H
#define CR_B64_H

#include <stddef.h>

#include "err.h"

/* b64url_encoded_len - characters b64url_encode writes for n bytes (no NUL) */
size_t b64url_encoded_len(size_t n);

/* b64url_decoded_len - bytes a valid encoding of n characters decodes to */
size_t b64url_decoded_len(size_t n);

/* b64url_encode - encode n bytes into out as a NUL-terminated string without
 * padding; returns its length, or 0 when outsz cannot hold it and the NUL
 * (an empty input also gives 0, with out = ""). out is the caller's. */
size_t b64url_encode(const unsigned char *in, size_t n, char *out, size_t outsz);

/* b64url_decode - strictly decode n characters (no NUL needed) into out;
 * CR_ERR_INVALID on a bad encoding, CR_ERR_TOO_BIG if outsz is too small.
 * *outlen gets the byte count on success. out is the caller's. */
enum cr_err b64url_decode(const char *in, size_t n, unsigned char *out,
    size_t outsz, size_t *outlen);

#endif
