/*
 * b64.c - strict base64url without padding.
 *
 * Invariant: b64url_decode accepts exactly the strings b64url_encode can
 * produce, so decode(s) succeeding implies encode(decode(s)) == s. That keeps
 * signatures and hashes from having two spellings. No state; thread-safe.
 */
#include <stdint.h>

#include "b64.h"

static const char alphabet[64] =
    "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";

/* value of a base64url character, or -1 */
static int
b64_value(unsigned char c)
{
	if (c >= 'A' && c <= 'Z')
		return c - 'A';
	if (c >= 'a' && c <= 'z')
		return c - 'a' + 26;
	if (c >= '0' && c <= '9')
		return c - '0' + 52;
	if (c == '-')
		return 62;
	if (c == '_')
		return 63;
	return -1;
}

/* b64url_encoded_len - characters b64url_encode writes for n bytes (no NUL) */
size_t
b64url_encoded_len(size_t n)
{
	size_t r = n % 3;

	return (n / 3) * 4 + (r == 0 ? 0 : r + 1);
}

/* b64url_decoded_len - bytes a valid encoding of n characters decodes to */
size_t
b64url_decoded_len(size_t n)
{
	size_t r = n % 4;

	return (n / 4) * 3 + (r == 0 ? 0 : r - 1);
}

/* b64url_encode - encode n bytes into out, NUL-terminated, no padding;
 * returns the length, or 0 when outsz is too small. out is the caller's. */
size_t
b64url_encode(const unsigned char *in, size_t n, char *out, size_t outsz)
{
	size_t len, i, o = 0;
	uint32_t v;

	if (n > (SIZE_MAX - 4) / 4 * 3)
		return 0;
	len = b64url_encoded_len(n);
	if (out == NULL || outsz < len + 1)
		return 0;
	for (i = 0; i + 3 <= n; i += 3) {
		v = (uint32_t)in[i] << 16 | (uint32_t)in[i + 1] << 8 | in[i + 2];
		out[o++] = alphabet[v >> 18 & 63];
		out[o++] = alphabet[v >> 12 & 63];
		out[o++] = alphabet[v >> 6 & 63];
		out[o++] = alphabet[v & 63];
	}
	if (n - i == 1) {
		v = (uint32_t)in[i] << 16;
		out[o++] = alphabet[v >> 18 & 63];
		out[o++] = alphabet[v >> 12 & 63];
	} else if (n - i == 2) {
		v = (uint32_t)in[i] << 16 | (uint32_t)in[i + 1] << 8;
		out[o++] = alphabet[v >> 18 & 63];
		out[o++] = alphabet[v >> 12 & 63];
		out[o++] = alphabet[v >> 6 & 63];
	}
	out[o] = '\0';
	return o;
}

/* b64url_decode - strictly decode n characters into out; CR_ERR_INVALID on a
 * bad encoding, CR_ERR_TOO_BIG if outsz is too small. out is the caller's. */
enum cr_err
b64url_decode(const char *in, size_t n, unsigned char *out, size_t outsz,
    size_t *outlen)
{
	size_t i, o = 0, need;
	uint32_t acc = 0;
	int bits = 0, v;

	if (outlen != NULL)
		*outlen = 0;
	if (in == NULL && n > 0)
		return CR_ERR_INVALID;
	/* one leftover character carries only 6 bits: never a whole byte */
	if (n % 4 == 1)
		return CR_ERR_INVALID;
	need = b64url_decoded_len(n);
	for (i = 0; i < n; i++)
		if (b64_value((unsigned char)in[i]) < 0)
			return CR_ERR_INVALID;
	if (need > outsz || (need > 0 && out == NULL))
		return CR_ERR_TOO_BIG;
	for (i = 0; i < n; i++) {
		v = b64_value((unsigned char)in[i]);
		acc = acc << 6 | (uint32_t)v;
		bits += 6;
		if (bits >= 8) {
			bits -= 8;
			out[o++] = (unsigned char)(acc >> bits & 0xff);
			acc &= (1u << bits) - 1;
		}
	}
	/* the unused low bits of the last character must be zero (canonical) */
	if (acc != 0)
		return CR_ERR_INVALID;
	if (outlen != NULL)
		*outlen = o;
	return CR_OK;
}
