/*
 * auth.h - proof of possession for the edge API (DESIGN section 5).
 *
 * Holds: SHA-256 in base64url (X-Claw-Body-SHA256), the CLAW-PROOF-V1
 * canonical text, Ed25519 keys (generate, load, save as PEM), signing and
 * verifying (X-Claw-Proof), and the header validation rules the gateway
 * applies before it verifies anything.
 *
 * Encodings: raw public keys are 32 bytes; signatures travel as 86 characters
 * of base64url without padding; hashes as 43. The validators return CR_OK or
 * CR_ERR_INVALID (CR_ERR_EXPIRED for a timestamp outside the window) and, when
 * reason is not NULL, set *reason to a static string naming the rule that was
 * broken (NULL on success), suitable for a 400 answer.
 *
 * Threads: every function is safe to call from any thread. struct auth_key and
 * struct auth_pubkey are immutable after creation, so one object may be used
 * by many threads at once (the gateway shares cached registry keys); freeing
 * one while another thread uses it is the caller's bug.
 */
#ifndef CR_AUTH_H
#define CR_AUTH_H

#include <stddef.h>
#include <stdint.h>

#include "err.h"

#define AUTH_PUBKEY_LEN      32  /* raw Ed25519 public key */
#define AUTH_SEED_LEN        32  /* raw Ed25519 private key (seed) */
#define AUTH_SIG_LEN         64  /* raw Ed25519 signature */
#define AUTH_SIG_B64_LEN     86  /* base64url of a signature, no padding */
#define AUTH_SIG_B64_SIZE    90  /* buffer for it with the NUL, rounded up */
#define AUTH_SHA256_B64_LEN  43  /* base64url of a SHA-256, no padding */
#define AUTH_SHA256_B64_SIZE 44  /* buffer for it with the NUL */
#define AUTH_PUBKEY_B64_LEN  43
#define AUTH_PUBKEY_B64_SIZE 44

#define AUTH_PROOF_TAG       "CLAW-PROOF-V1"
#define AUTH_CLOCK_WINDOW_S  300 /* default timestamp window, seconds */
#define AUTH_TTL_MAX_S       604800
#define AUTH_ID_MAX          128 /* agent and correlation IDs */
#define AUTH_NONCE_MIN       16
#define AUTH_NONCE_MAX       128
#define AUTH_IDEM_KEY_MAX    256
#define AUTH_TIMESTAMP_MAX   19  /* digits */

/* What the proof covers. Each field is borrowed; NULL and "" both give an
 * empty line, except query: NULL means the request had no '?', a non-NULL
 * query (even "") is appended to path after a '?', exactly as sent. */
struct auth_proof_input {
	const char *method;          /* upper case, as the server sees it */
	const char *path;            /* percent-decoded once (local_uri_raw) */
	const char *query;           /* raw query string without the '?' */
	const char *agent;           /* X-Claw-Agent */
	const char *timestamp;       /* X-Claw-Timestamp, exactly as sent */
	const char *nonce;           /* X-Claw-Nonce */
	const char *body_sha256;     /* X-Claw-Body-SHA256 */
	const char *correlation_id;  /* X-Claw-Correlation-Id */
	const char *idempotency_key; /* X-Claw-Idempotency-Key */
	const char *priority;        /* X-Claw-Priority */
	const char *ttl_seconds;     /* X-Claw-Ttl-Seconds */
};

struct auth_key;    /* an Ed25519 private key */
struct auth_pubkey; /* an Ed25519 public key ready to verify with */
struct auth_sha256; /* an incremental SHA-256 */

/* --- hashing --------------------------------------------------------- */

/* auth_sha256_b64url - SHA-256 of data as 43 base64url characters + NUL in out */
enum cr_err auth_sha256_b64url(const void *data, size_t n,
    char out[AUTH_SHA256_B64_SIZE]);

/* auth_sha256_raw - SHA-256 of data as 32 raw bytes in out */
enum cr_err auth_sha256_raw(const void *data, size_t n, unsigned char out[32]);

/* auth_sha256_new - start an incremental SHA-256 (for a body read in pieces);
 * caller frees with auth_sha256_free */
enum cr_err auth_sha256_new(struct auth_sha256 **out);

/* auth_sha256_update - feed n bytes into h */
enum cr_err auth_sha256_update(struct auth_sha256 *h, const void *data, size_t n);

/* auth_sha256_final_b64url - finish h into out (43 chars + NUL); h is then
 * reset and may hash a new input. h stays the caller's. */
enum cr_err auth_sha256_final_b64url(struct auth_sha256 *h,
    char out[AUTH_SHA256_B64_SIZE]);

/* auth_sha256_free - free h; NULL does nothing */
void auth_sha256_free(struct auth_sha256 *h);

/* --- canonical text -------------------------------------------------- */

/* auth_canonical_len - bytes auth_canonical writes for in, without the NUL */
size_t auth_canonical_len(const struct auth_proof_input *in);

/* auth_canonical - write the eleven CLAW-PROOF-V1 lines joined by '\n' (no
 * trailing newline) into buf, NUL-terminated, length in *len; CR_ERR_TOO_BIG
 * if bufsz cannot hold it and the NUL, CR_ERR_INVALID if a field other than
 * the path holds a '\n'. buf is the caller's. */
enum cr_err auth_canonical(const struct auth_proof_input *in, char *buf,
    size_t bufsz, size_t *len);

/* --- private keys ---------------------------------------------------- */

/* auth_key_generate - new random Ed25519 key; caller frees with auth_key_free */
enum cr_err auth_key_generate(struct auth_key **out);

/* auth_key_from_seed - key from its 32-byte private seed (RFC 8032); caller
 * frees with auth_key_free */
enum cr_err auth_key_from_seed(const unsigned char seed[AUTH_SEED_LEN],
    struct auth_key **out);

/* auth_key_load_private - read a PEM (PKCS#8) Ed25519 private key; CR_ERR_IO
 * if the file cannot be opened, CR_ERR_INVALID if it is not such a key.
 * Caller frees *out with auth_key_free. */
enum cr_err auth_key_load_private(const char *path, struct auth_key **out);

/* auth_key_save - write the private key (PEM PKCS#8, mode 0600) to priv_path
 * and, unless pub_path is NULL, the public key (PEM SubjectPublicKeyInfo,
 * mode 0644 less umask) to pub_path. Never overwrites: CR_ERR_EXISTS if either
 * file exists (nothing is left behind then), CR_ERR_IO on other failures. */
enum cr_err auth_key_save(const struct auth_key *k, const char *priv_path,
    const char *pub_path);

/* auth_key_public_raw - the key's 32-byte public half into out */
enum cr_err auth_key_public_raw(const struct auth_key *k,
    unsigned char out[AUTH_PUBKEY_LEN]);

/* auth_key_free - free k; NULL does nothing */
void auth_key_free(struct auth_key *k);

/* --- public keys ----------------------------------------------------- */

/* auth_pubkey_from_pem_file - raw 32 bytes of the Ed25519 public key in a PEM
 * file (SubjectPublicKeyInfo, as `openssl pkey -pubout` writes); CR_ERR_IO if
 * it cannot be opened, CR_ERR_INVALID if it holds no Ed25519 public key */
enum cr_err auth_pubkey_from_pem_file(const char *path,
    unsigned char out[AUTH_PUBKEY_LEN]);

/* auth_pubkey_from_pem_str - same for n bytes of PEM text in memory */
enum cr_err auth_pubkey_from_pem_str(const char *pem, size_t n,
    unsigned char out[AUTH_PUBKEY_LEN]);

/* auth_pubkey_from_b64url - raw key from its 43-character base64url form */
enum cr_err auth_pubkey_from_b64url(const char *s, size_t n,
    unsigned char out[AUTH_PUBKEY_LEN]);

/* auth_pubkey_to_b64url - 43-character base64url form of a raw key + NUL */
void auth_pubkey_to_b64url(const unsigned char raw[AUTH_PUBKEY_LEN],
    char out[AUTH_PUBKEY_B64_SIZE]);

/* auth_pubkey_new - a verifier for a raw public key, built once and shared
 * (e.g. kept in the gateway's registry cache); caller frees with
 * auth_pubkey_free */
enum cr_err auth_pubkey_new(const unsigned char raw[AUTH_PUBKEY_LEN],
    struct auth_pubkey **out);

/* auth_pubkey_raw - the 32 raw bytes pk was made from */
void auth_pubkey_raw(const struct auth_pubkey *pk,
    unsigned char out[AUTH_PUBKEY_LEN]);

/* auth_pubkey_free - free pk; NULL does nothing */
void auth_pubkey_free(struct auth_pubkey *pk);

/* --- signatures ------------------------------------------------------ */

/* auth_sign - Ed25519 signature of msg as 86 base64url characters + NUL */
enum cr_err auth_sign(const struct auth_key *k, const void *msg, size_t n,
    char out_b64[AUTH_SIG_B64_SIZE]);

/* auth_pubkey_verify - CR_OK if sig_b64 (sig_len characters, base64url, no
 * padding) is pk's signature of msg, else CR_ERR_AUTH; any garbage is
 * CR_ERR_AUTH (CR_ERR_NOMEM only when memory runs out) */
enum cr_err auth_pubkey_verify(const struct auth_pubkey *pk, const void *msg,
    size_t n, const char *sig_b64, size_t sig_len);

/* auth_verify - same as auth_pubkey_verify for a raw 32-byte key (builds and
 * drops a verifier per call; hold a struct auth_pubkey on hot paths) */
enum cr_err auth_verify(const unsigned char pub[AUTH_PUBKEY_LEN],
    const void *msg, size_t n, const char *sig_b64, size_t sig_len);

/* auth_sign_request - build the canonical text of in and sign it (client
 * side: fill in everything but the proof first) */
enum cr_err auth_sign_request(const struct auth_key *k,
    const struct auth_proof_input *in, char out_sig[AUTH_SIG_B64_SIZE]);

/* auth_verify_request - CR_OK if sig (NUL-terminated X-Claw-Proof) proves the
 * request in; CR_ERR_AUTH if not, CR_ERR_INVALID if in cannot be made into
 * canonical text (a '\n' in a header field) */
enum cr_err auth_verify_request(const struct auth_pubkey *pk,
    const struct auth_proof_input *in, const char *sig);

/* --- header rules ---------------------------------------------------- */

/* auth_check_timestamp - ts is 1-19 digits (no sign, no space) and within
 * +-window_s seconds of now_s: CR_ERR_INVALID / CR_ERR_EXPIRED otherwise */
enum cr_err auth_check_timestamp(const char *ts, int64_t now_s, int window_s,
    const char **reason);

/* auth_check_nonce - nonce is 16-128 characters of [A-Za-z0-9_-] */
enum cr_err auth_check_nonce(const char *nonce, const char **reason);

/* auth_check_agent_id - id is 1-128 characters of [A-Za-z0-9._:@+-] */
enum cr_err auth_check_agent_id(const char *id, const char **reason);

/* auth_check_correlation_id - same alphabet and length as an agent ID */
enum cr_err auth_check_correlation_id(const char *id, const char **reason);

/* auth_check_idempotency_key - 1-256 characters of printable ASCII 0x21-0x7e */
enum cr_err auth_check_idempotency_key(const char *key, const char **reason);

/* auth_check_priority - exactly "critical", "normal" or "low" */
enum cr_err auth_check_priority(const char *p, const char **reason);

/* auth_check_ttl - s is digits only with a value in 1-604800, stored in *out
 * (may be NULL); out of range is refused, never clamped */
enum cr_err auth_check_ttl(const char *s, uint32_t *out, const char **reason);

#endif
