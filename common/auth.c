/*
 * auth.c - Ed25519 proof of possession, SHA-256 and header rules (DESIGN 5).
 *
 * OpenSSL 3 holds the keys (generation, PEM files) and the hashes, through
 * EVP only. The SHA-256 EVP_MD is fetched once (pthread_once) and kept for
 * the life of the process; every hash gets its own EVP_MD_CTX.
 *
 * The Ed25519 signatures themselves (per message: the gateway verifies one
 * for every signed POST) are made and checked with libsodium: OpenSSL 3.0
 * needs a fresh EVP_DigestVerifyInit per message, which fetches the
 * algorithm from its provider store each time (a locked hash-table walk),
 * and measured here that is 130 us per verification against libsodium's
 * 71 us, and worse with many threads. libsodium also refuses small-order
 * keys and signature points, which OpenSSL accepts. The same 32-byte seed
 * gives both libraries the same key: the private key's raw seed is expanded
 * once, when the key is made. Keys are immutable after construction, which
 * is what makes sharing them between threads safe.
 *
 * Untrusted bytes (headers, signatures, PEM text) only ever produce an error
 * code; OpenSSL's per-thread error queue is cleared after a failure so that
 * stale entries never surface in another library's error report.
 */
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/pem.h>
#include <sodium.h>

#include "auth.h"
#include "b64.h"

struct auth_key {
	EVP_PKEY *pkey;
	unsigned char sk[crypto_sign_SECRETKEYBYTES];	/* libsodium's: seed + public key */
};

struct auth_pubkey {
	EVP_PKEY *pkey;
	unsigned char raw[AUTH_PUBKEY_LEN];
};

struct auth_sha256 {
	EVP_MD_CTX *ctx;
};

/* lines of the canonical text after the tag */
#define CANON_LINES 11

/* canonical texts up to this size are built on the stack */
#define CANON_STACK 2048

static pthread_once_t md_once = PTHREAD_ONCE_INIT;
static EVP_MD *md_sha256;

static void
md_init(void)
{
	md_sha256 = EVP_MD_fetch(NULL, "SHA256", NULL);
	ERR_clear_error();
}

/* the process-wide SHA-256 method, or NULL if OpenSSL has none */
static const EVP_MD *
sha256_md(void)
{
	pthread_once(&md_once, md_init);
	return md_sha256;
}

/* --- hashing --------------------------------------------------------- */

/* auth_sha256_raw - SHA-256 of data as 32 raw bytes in out */
enum cr_err
auth_sha256_raw(const void *data, size_t n, unsigned char out[32])
{
	const EVP_MD *md = sha256_md();
	EVP_MD_CTX *ctx = NULL;
	unsigned int len = 0;
	enum cr_err rc = CR_ERR_CRYPTO;

	if (md == NULL)
		goto out;
	if (data == NULL && n > 0) {
		rc = CR_ERR_INVALID;
		goto out;
	}
	if ((ctx = EVP_MD_CTX_new()) == NULL) {
		rc = CR_ERR_NOMEM;
		goto out;
	}
	if (EVP_DigestInit_ex2(ctx, md, NULL) != 1 ||
	    EVP_DigestUpdate(ctx, data == NULL ? "" : data, n) != 1 ||
	    EVP_DigestFinal_ex(ctx, out, &len) != 1 || len != 32)
		goto out;
	rc = CR_OK;
out:
	EVP_MD_CTX_free(ctx);
	if (rc != CR_OK)
		ERR_clear_error();
	return rc;
}

/* auth_sha256_b64url - SHA-256 of data as 43 base64url characters + NUL */
enum cr_err
auth_sha256_b64url(const void *data, size_t n, char out[AUTH_SHA256_B64_SIZE])
{
	unsigned char d[32];
	enum cr_err rc;

	if ((rc = auth_sha256_raw(data, n, d)) != CR_OK)
		return rc;
	if (b64url_encode(d, sizeof(d), out, AUTH_SHA256_B64_SIZE) !=
	    AUTH_SHA256_B64_LEN)
		return CR_ERR_INTERNAL;
	return CR_OK;
}

/* auth_sha256_new - start an incremental SHA-256; caller frees with
 * auth_sha256_free */
enum cr_err
auth_sha256_new(struct auth_sha256 **out)
{
	const EVP_MD *md = sha256_md();
	struct auth_sha256 *h = NULL;
	enum cr_err rc = CR_ERR_CRYPTO;

	*out = NULL;
	if (md == NULL)
		goto out;
	if ((h = calloc(1, sizeof(*h))) == NULL ||
	    (h->ctx = EVP_MD_CTX_new()) == NULL) {
		rc = CR_ERR_NOMEM;
		goto out;
	}
	if (EVP_DigestInit_ex2(h->ctx, md, NULL) != 1)
		goto out;
	*out = h;
	h = NULL;
	rc = CR_OK;
out:
	auth_sha256_free(h);
	if (rc != CR_OK)
		ERR_clear_error();
	return rc;
}

/* auth_sha256_update - feed n bytes into h */
enum cr_err
auth_sha256_update(struct auth_sha256 *h, const void *data, size_t n)
{
	if (data == NULL && n > 0)
		return CR_ERR_INVALID;
	if (n == 0)
		return CR_OK;
	if (EVP_DigestUpdate(h->ctx, data, n) != 1) {
		ERR_clear_error();
		return CR_ERR_CRYPTO;
	}
	return CR_OK;
}

/* auth_sha256_final_b64url - finish h into out and reset it; h stays the
 * caller's */
enum cr_err
auth_sha256_final_b64url(struct auth_sha256 *h, char out[AUTH_SHA256_B64_SIZE])
{
	unsigned char d[32];
	unsigned int len = 0;

	if (EVP_DigestFinal_ex(h->ctx, d, &len) != 1 || len != 32 ||
	    EVP_DigestInit_ex2(h->ctx, sha256_md(), NULL) != 1) {
		ERR_clear_error();
		return CR_ERR_CRYPTO;
	}
	if (b64url_encode(d, sizeof(d), out, AUTH_SHA256_B64_SIZE) !=
	    AUTH_SHA256_B64_LEN)
		return CR_ERR_INTERNAL;
	return CR_OK;
}

/* auth_sha256_free - free h; NULL does nothing */
void
auth_sha256_free(struct auth_sha256 *h)
{
	if (h == NULL)
		return;
	EVP_MD_CTX_free(h->ctx);
	free(h);
}

/* --- canonical text -------------------------------------------------- */

/* the lines after the tag, in order; query is folded into the path line */
static void
canon_fields(const struct auth_proof_input *in, const char *f[CANON_LINES - 1])
{
	f[0] = in->method;
	f[1] = in->path;
	f[2] = in->agent;
	f[3] = in->timestamp;
	f[4] = in->nonce;
	f[5] = in->body_sha256;
	f[6] = in->correlation_id;
	f[7] = in->idempotency_key;
	f[8] = in->priority;
	f[9] = in->ttl_seconds;
}

/* auth_canonical_len - bytes auth_canonical writes for in, without the NUL */
size_t
auth_canonical_len(const struct auth_proof_input *in)
{
	const char *f[CANON_LINES - 1];
	size_t len = strlen(AUTH_PROOF_TAG) + (CANON_LINES - 1);
	int i;

	canon_fields(in, f);
	for (i = 0; i < CANON_LINES - 1; i++)
		if (f[i] != NULL)
			len += strlen(f[i]);
	if (in->query != NULL)
		len += 1 + strlen(in->query);
	return len;
}

/* auth_canonical - the eleven CLAW-PROOF-V1 lines joined by '\n' into buf,
 * NUL-terminated; buf is the caller's */
enum cr_err
auth_canonical(const struct auth_proof_input *in, char *buf, size_t bufsz,
    size_t *len)
{
	const char *f[CANON_LINES - 1];
	size_t need, o, l;
	int i;

	if (len != NULL)
		*len = 0;
	canon_fields(in, f);
	/*
	 * Only the decoded path may hold a '\n' (from %0A): with every other
	 * field free of it the text still splits back into one field list, so
	 * no two requests share a canonical text.
	 */
	for (i = 0; i < CANON_LINES - 1; i++)
		if (i != 1 && f[i] != NULL && strchr(f[i], '\n') != NULL)
			return CR_ERR_INVALID;
	if (in->query != NULL && strchr(in->query, '\n') != NULL)
		return CR_ERR_INVALID;
	need = auth_canonical_len(in);
	if (buf == NULL || bufsz < need + 1)
		return CR_ERR_TOO_BIG;
	o = strlen(AUTH_PROOF_TAG);
	memcpy(buf, AUTH_PROOF_TAG, o);
	for (i = 0; i < CANON_LINES - 1; i++) {
		buf[o++] = '\n';
		if (f[i] != NULL) {
			l = strlen(f[i]);
			memcpy(buf + o, f[i], l);
			o += l;
		}
		if (i == 1 && in->query != NULL) {
			buf[o++] = '?';
			l = strlen(in->query);
			memcpy(buf + o, in->query, l);
			o += l;
		}
	}
	buf[o] = '\0';
	if (len != NULL)
		*len = o;
	return CR_OK;
}

/* --- private keys ---------------------------------------------------- */

/* never prompt for a passphrase: an encrypted key is simply refused */
static int
no_passphrase(char *buf, int size, int rwflag, void *u)
{
	(void)buf;
	(void)size;
	(void)rwflag;
	(void)u;
	return -1;
}

static pthread_once_t sodium_once = PTHREAD_ONCE_INIT;
static int sodium_ok;

static void
sodium_start(void)
{
	sodium_ok = sodium_init() >= 0;
}

static int
sodium_ready(void)
{
	pthread_once(&sodium_once, sodium_start);
	return sodium_ok;
}

static enum cr_err
key_wrap(EVP_PKEY *pkey, struct auth_key **out)
{
	struct auth_key *k;
	unsigned char seed[crypto_sign_SEEDBYTES], pk[crypto_sign_PUBLICKEYBYTES];
	size_t len = sizeof(seed);

	if (!sodium_ready()) {
		EVP_PKEY_free(pkey);
		return CR_ERR_CRYPTO;
	}
	if ((k = calloc(1, sizeof(*k))) == NULL) {
		EVP_PKEY_free(pkey);
		return CR_ERR_NOMEM;
	}
	if (EVP_PKEY_get_raw_private_key(pkey, seed, &len) != 1 || len != sizeof(seed) ||
	    crypto_sign_seed_keypair(pk, k->sk, seed) != 0) {
		ERR_clear_error();
		sodium_memzero(seed, sizeof(seed));
		EVP_PKEY_free(pkey);
		free(k);
		return CR_ERR_CRYPTO;
	}
	sodium_memzero(seed, sizeof(seed));
	k->pkey = pkey;
	*out = k;
	return CR_OK;
}

/* auth_key_generate - new random Ed25519 key; caller frees with auth_key_free */
enum cr_err
auth_key_generate(struct auth_key **out)
{
	EVP_PKEY_CTX *pctx = NULL;
	EVP_PKEY *pkey = NULL;
	enum cr_err rc = CR_ERR_CRYPTO;

	*out = NULL;
	if ((pctx = EVP_PKEY_CTX_new_from_name(NULL, "ED25519", NULL)) == NULL)
		goto out;
	if (EVP_PKEY_keygen_init(pctx) != 1 || EVP_PKEY_generate(pctx, &pkey) != 1)
		goto out;
	rc = key_wrap(pkey, out);
out:
	EVP_PKEY_CTX_free(pctx);
	if (rc != CR_OK)
		ERR_clear_error();
	return rc;
}

/* auth_key_from_seed - key from its 32-byte private seed; caller frees with
 * auth_key_free */
enum cr_err
auth_key_from_seed(const unsigned char seed[AUTH_SEED_LEN], struct auth_key **out)
{
	EVP_PKEY *pkey;

	*out = NULL;
	pkey = EVP_PKEY_new_raw_private_key_ex(NULL, "ED25519", NULL, seed,
	    AUTH_SEED_LEN);
	if (pkey == NULL) {
		ERR_clear_error();
		return CR_ERR_CRYPTO;
	}
	return key_wrap(pkey, out);
}

/* auth_key_load_private - read a PEM Ed25519 private key; caller frees *out
 * with auth_key_free */
enum cr_err
auth_key_load_private(const char *path, struct auth_key **out)
{
	BIO *bio = NULL;
	EVP_PKEY *pkey = NULL;
	enum cr_err rc = CR_ERR_IO;

	*out = NULL;
	if ((bio = BIO_new_file(path, "r")) == NULL)
		goto out;
	rc = CR_ERR_INVALID;
	pkey = PEM_read_bio_PrivateKey(bio, NULL, no_passphrase, NULL);
	if (pkey == NULL || !EVP_PKEY_is_a(pkey, "ED25519"))
		goto out;
	rc = key_wrap(pkey, out);
	pkey = NULL;
out:
	EVP_PKEY_free(pkey);
	BIO_free(bio);
	if (rc != CR_OK)
		ERR_clear_error();
	return rc;
}

enum pem_kind { PEM_PRIVATE, PEM_PUBLIC };

/* write pkey as PEM to a new temporary file next to path; *tmp is malloc'd
 * and names the file (caller unlinks and frees it) */
static enum cr_err
pem_write_tmp(EVP_PKEY *pkey, enum pem_kind kind, const char *path, char **tmp)
{
	static atomic_uint seq;
	FILE *f = NULL;
	char *name = NULL;
	int fd = -1, ok;
	size_t sz;
	enum cr_err rc = CR_ERR_IO;

	*tmp = NULL;
	sz = strlen(path) + 64;
	if ((name = malloc(sz)) == NULL) {
		rc = CR_ERR_NOMEM;
		goto out;
	}
	snprintf(name, sz, "%s.tmp.%ld.%u", path, (long)getpid(),
	    atomic_fetch_add(&seq, 1));
	fd = open(name, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC,
	    kind == PEM_PRIVATE ? 0600 : 0644);
	if (fd < 0)
		goto out;
	*tmp = name;
	name = NULL;
	if ((f = fdopen(fd, "w")) == NULL)
		goto out;
	fd = -1;
	if (kind == PEM_PRIVATE)
		ok = PEM_write_PrivateKey(f, pkey, NULL, NULL, 0, NULL, NULL);
	else
		ok = PEM_write_PUBKEY(f, pkey);
	if (ok != 1) {
		rc = CR_ERR_CRYPTO;
		goto out;
	}
	if (fflush(f) != 0 || fsync(fileno(f)) != 0)
		goto out;
	ok = fclose(f);
	f = NULL;
	if (ok != 0)
		goto out;
	rc = CR_OK;
out:
	if (f != NULL)
		fclose(f);
	if (fd >= 0)
		close(fd);
	free(name);
	return rc;
}

/* auth_key_save - write the private key (0600) and optionally the public key
 * as PEM; never overwrites an existing file */
enum cr_err
auth_key_save(const struct auth_key *k, const char *priv_path,
    const char *pub_path)
{
	char *tmp_priv = NULL, *tmp_pub = NULL;
	int priv_linked = 0;
	enum cr_err rc;

	if (k == NULL || priv_path == NULL)
		return CR_ERR_INVALID;
	if ((rc = pem_write_tmp(k->pkey, PEM_PRIVATE, priv_path, &tmp_priv)) != CR_OK)
		goto out;
	if (pub_path != NULL &&
	    (rc = pem_write_tmp(k->pkey, PEM_PUBLIC, pub_path, &tmp_pub)) != CR_OK)
		goto out;
	/* link() publishes a complete file and fails if the name is taken */
	if (link(tmp_priv, priv_path) != 0) {
		rc = errno == EEXIST ? CR_ERR_EXISTS : CR_ERR_IO;
		goto out;
	}
	priv_linked = 1;
	if (pub_path != NULL && link(tmp_pub, pub_path) != 0) {
		rc = errno == EEXIST ? CR_ERR_EXISTS : CR_ERR_IO;
		goto out;
	}
	rc = CR_OK;
out:
	if (rc != CR_OK && priv_linked)
		unlink(priv_path);
	if (tmp_priv != NULL)
		unlink(tmp_priv);
	if (tmp_pub != NULL)
		unlink(tmp_pub);
	free(tmp_priv);
	free(tmp_pub);
	ERR_clear_error();
	return rc;
}

/* auth_key_public_raw - the key's 32-byte public half into out */
enum cr_err
auth_key_public_raw(const struct auth_key *k, unsigned char out[AUTH_PUBKEY_LEN])
{
	size_t len = AUTH_PUBKEY_LEN;

	if (EVP_PKEY_get_raw_public_key(k->pkey, out, &len) != 1 ||
	    len != AUTH_PUBKEY_LEN) {
		ERR_clear_error();
		return CR_ERR_CRYPTO;
	}
	return CR_OK;
}

/* auth_key_free - free k; NULL does nothing */
void
auth_key_free(struct auth_key *k)
{
	if (k == NULL)
		return;
	EVP_PKEY_free(k->pkey);
	sodium_memzero(k->sk, sizeof(k->sk));
	free(k);
}

/* --- public keys ----------------------------------------------------- */

/* raw bytes of the Ed25519 public key PEM in bio */
static enum cr_err
pubkey_from_bio(BIO *bio, unsigned char out[AUTH_PUBKEY_LEN])
{
	EVP_PKEY *pkey;
	size_t len = AUTH_PUBKEY_LEN;
	enum cr_err rc = CR_ERR_INVALID;

	pkey = PEM_read_bio_PUBKEY(bio, NULL, no_passphrase, NULL);
	if (pkey == NULL || !EVP_PKEY_is_a(pkey, "ED25519"))
		goto out;
	if (EVP_PKEY_get_raw_public_key(pkey, out, &len) != 1 ||
	    len != AUTH_PUBKEY_LEN)
		goto out;
	rc = CR_OK;
out:
	EVP_PKEY_free(pkey);
	if (rc != CR_OK)
		ERR_clear_error();
	return rc;
}

/* auth_pubkey_from_pem_file - raw 32 bytes of the Ed25519 public key in a
 * PEM file */
enum cr_err
auth_pubkey_from_pem_file(const char *path, unsigned char out[AUTH_PUBKEY_LEN])
{
	BIO *bio;
	enum cr_err rc;

	if ((bio = BIO_new_file(path, "r")) == NULL) {
		ERR_clear_error();
		return CR_ERR_IO;
	}
	rc = pubkey_from_bio(bio, out);
	BIO_free(bio);
	return rc;
}

/* auth_pubkey_from_pem_str - raw 32 bytes of the Ed25519 public key in n
 * bytes of PEM text */
enum cr_err
auth_pubkey_from_pem_str(const char *pem, size_t n,
    unsigned char out[AUTH_PUBKEY_LEN])
{
	BIO *bio;
	enum cr_err rc;

	if (pem == NULL || n == 0 || n > 65536)
		return CR_ERR_INVALID;
	if ((bio = BIO_new_mem_buf(pem, (int)n)) == NULL) {
		ERR_clear_error();
		return CR_ERR_NOMEM;
	}
	rc = pubkey_from_bio(bio, out);
	BIO_free(bio);
	return rc;
}

/* auth_pubkey_from_b64url - raw key from its 43-character base64url form */
enum cr_err
auth_pubkey_from_b64url(const char *s, size_t n,
    unsigned char out[AUTH_PUBKEY_LEN])
{
	size_t len;

	if (s == NULL || n != AUTH_PUBKEY_B64_LEN)
		return CR_ERR_INVALID;
	if (b64url_decode(s, n, out, AUTH_PUBKEY_LEN, &len) != CR_OK ||
	    len != AUTH_PUBKEY_LEN)
		return CR_ERR_INVALID;
	return CR_OK;
}

/* auth_pubkey_to_b64url - 43-character base64url form of a raw key + NUL */
void
auth_pubkey_to_b64url(const unsigned char raw[AUTH_PUBKEY_LEN],
    char out[AUTH_PUBKEY_B64_SIZE])
{
	b64url_encode(raw, AUTH_PUBKEY_LEN, out, AUTH_PUBKEY_B64_SIZE);
}

/* auth_pubkey_new - a shareable verifier for a raw public key; caller frees
 * with auth_pubkey_free */
enum cr_err
auth_pubkey_new(const unsigned char raw[AUTH_PUBKEY_LEN],
    struct auth_pubkey **out)
{
	struct auth_pubkey *pk;

	*out = NULL;
	if ((pk = calloc(1, sizeof(*pk))) == NULL)
		return CR_ERR_NOMEM;
	pk->pkey = EVP_PKEY_new_raw_public_key_ex(NULL, "ED25519", NULL, raw,
	    AUTH_PUBKEY_LEN);
	if (pk->pkey == NULL) {
		free(pk);
		ERR_clear_error();
		return CR_ERR_INVALID;
	}
	memcpy(pk->raw, raw, AUTH_PUBKEY_LEN);
	*out = pk;
	return CR_OK;
}

/* auth_pubkey_raw - the 32 raw bytes pk was made from */
void
auth_pubkey_raw(const struct auth_pubkey *pk, unsigned char out[AUTH_PUBKEY_LEN])
{
	memcpy(out, pk->raw, AUTH_PUBKEY_LEN);
}

/* auth_pubkey_free - free pk; NULL does nothing */
void
auth_pubkey_free(struct auth_pubkey *pk)
{
	if (pk == NULL)
		return;
	EVP_PKEY_free(pk->pkey);
	free(pk);
}

/* --- signatures ------------------------------------------------------ */

/* auth_sign - Ed25519 signature of msg as 86 base64url characters + NUL */
enum cr_err
auth_sign(const struct auth_key *k, const void *msg, size_t n,
    char out_b64[AUTH_SIG_B64_SIZE])
{
	unsigned char sig[crypto_sign_BYTES];

	out_b64[0] = '\0';
	if (k == NULL || (msg == NULL && n > 0))
		return CR_ERR_INVALID;
	if (crypto_sign_detached(sig, NULL, msg == NULL ? (const unsigned char *)"" : msg,
	    n, k->sk) != 0)
		return CR_ERR_CRYPTO;
	if (b64url_encode(sig, sizeof(sig), out_b64, AUTH_SIG_B64_SIZE) != AUTH_SIG_B64_LEN)
		return CR_ERR_INTERNAL;
	return CR_OK;
}

/* check a signature against a raw public key */
static enum cr_err
verify_raw(const unsigned char pub[AUTH_PUBKEY_LEN], const void *msg, size_t n,
    const char *sig_b64, size_t sig_len)
{
	unsigned char sig[AUTH_SIG_LEN];
	size_t len;

	/* exactly one spelling of a 64-byte signature is accepted */
	if (sig_b64 == NULL || sig_len != AUTH_SIG_B64_LEN ||
	    (msg == NULL && n > 0) || !sodium_ready())
		return CR_ERR_AUTH;
	if (b64url_decode(sig_b64, sig_len, sig, sizeof(sig), &len) != CR_OK ||
	    len != AUTH_SIG_LEN)
		return CR_ERR_AUTH;
	return crypto_sign_verify_detached(sig, msg == NULL ? (const unsigned char *)"" : msg,
	    n, pub) == 0 ? CR_OK : CR_ERR_AUTH;
}

/* auth_pubkey_verify - CR_OK if sig_b64 is pk's signature of msg, else
 * CR_ERR_AUTH */
enum cr_err
auth_pubkey_verify(const struct auth_pubkey *pk, const void *msg, size_t n,
    const char *sig_b64, size_t sig_len)
{
	if (pk == NULL)
		return CR_ERR_AUTH;
	return verify_raw(pk->raw, msg, n, sig_b64, sig_len);
}

/* auth_verify - CR_OK if sig_b64 is the signature of msg by the raw key pub */
enum cr_err
auth_verify(const unsigned char pub[AUTH_PUBKEY_LEN], const void *msg,
    size_t n, const char *sig_b64, size_t sig_len)
{
	struct auth_pubkey *pk;
	enum cr_err rc;

	if (pub == NULL)
		return CR_ERR_AUTH;
	rc = auth_pubkey_new(pub, &pk);
	if (rc == CR_ERR_INVALID)
		return CR_ERR_AUTH;
	if (rc != CR_OK)
		return rc;
	rc = verify_raw(pk->raw, msg, n, sig_b64, sig_len);
	auth_pubkey_free(pk);
	return rc;
}

/* canonical text of in in stack or, when longer, in *heap (caller frees) */
static enum cr_err
canon_build(const struct auth_proof_input *in, char *stack, char **heap,
    const char **text, size_t *len)
{
	size_t need = auth_canonical_len(in);
	char *buf = stack;

	*heap = NULL;
	if (need + 1 > CANON_STACK) {
		if ((buf = *heap = malloc(need + 1)) == NULL)
			return CR_ERR_NOMEM;
	}
	*text = buf;
	return auth_canonical(in, buf, need + 1, len);
}

/* auth_sign_request - build the canonical text of in and sign it */
enum cr_err
auth_sign_request(const struct auth_key *k, const struct auth_proof_input *in,
    char out_sig[AUTH_SIG_B64_SIZE])
{
	char stack[CANON_STACK], *heap = NULL;
	const char *text = NULL;
	size_t len = 0;
	enum cr_err rc;

	out_sig[0] = '\0';
	if ((rc = canon_build(in, stack, &heap, &text, &len)) != CR_OK)
		goto out;
	rc = auth_sign(k, text, len, out_sig);
out:
	free(heap);
	return rc;
}

/* auth_verify_request - CR_OK if sig proves the request in */
enum cr_err
auth_verify_request(const struct auth_pubkey *pk,
    const struct auth_proof_input *in, const char *sig)
{
	char stack[CANON_STACK], *heap = NULL;
	const char *text = NULL;
	size_t len = 0;
	enum cr_err rc;

	if (sig == NULL)
		return CR_ERR_AUTH;
	if ((rc = canon_build(in, stack, &heap, &text, &len)) != CR_OK)
		goto out;
	rc = auth_pubkey_verify(pk, text, len, sig, strnlen(sig, AUTH_SIG_B64_LEN + 1));
out:
	free(heap);
	return rc;
}

/* --- header rules ---------------------------------------------------- */

static enum cr_err
fail(const char **reason, const char *why, enum cr_err rc)
{
	if (reason != NULL)
		*reason = why;
	return rc;
}

static enum cr_err
pass(const char **reason)
{
	if (reason != NULL)
		*reason = NULL;
	return CR_OK;
}

static int
is_digit(unsigned char c)
{
	return c >= '0' && c <= '9';
}

static int
is_alnum(unsigned char c)
{
	return is_digit(c) || (c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z');
}

/* DESIGN 3: [A-Za-z0-9._:@+-] */
static int
is_id_char(unsigned char c)
{
	return is_alnum(c) || c == '.' || c == '_' || c == ':' || c == '@' ||
	    c == '+' || c == '-';
}

static int
is_nonce_char(unsigned char c)
{
	return is_alnum(c) || c == '_' || c == '-';
}

/* auth_check_timestamp - ts is 1-19 digits within +-window_s of now_s */
enum cr_err
auth_check_timestamp(const char *ts, int64_t now_s, int window_s,
    const char **reason)
{
	int64_t v = 0;
	uint64_t diff;
	int i, overflow = 0;

	if (ts == NULL || ts[0] == '\0')
		return fail(reason, "X-Claw-Timestamp is required", CR_ERR_INVALID);
	for (i = 0; ts[i] != '\0'; i++) {
		if (!is_digit((unsigned char)ts[i]))
			return fail(reason,
			    "X-Claw-Timestamp must be unix seconds, digits only",
			    CR_ERR_INVALID);
		if (i >= AUTH_TIMESTAMP_MAX)
			return fail(reason,
			    "X-Claw-Timestamp must be at most 19 digits",
			    CR_ERR_INVALID);
		if (v > (INT64_MAX - (ts[i] - '0')) / 10)
			overflow = 1;
		else
			v = v * 10 + (ts[i] - '0');
	}
	if (window_s < 0)
		window_s = 0;
	if (overflow)
		return fail(reason, "X-Claw-Timestamp is outside the clock window",
		    CR_ERR_EXPIRED);
	diff = v >= now_s ? (uint64_t)v - (uint64_t)now_s :
	    (uint64_t)now_s - (uint64_t)v;
	if (diff > (uint64_t)window_s)
		return fail(reason, "X-Claw-Timestamp is outside the clock window",
		    CR_ERR_EXPIRED);
	return pass(reason);
}

/* auth_check_nonce - nonce is 16-128 characters of [A-Za-z0-9_-] */
enum cr_err
auth_check_nonce(const char *nonce, const char **reason)
{
	size_t i;

	if (nonce == NULL || nonce[0] == '\0')
		return fail(reason, "X-Claw-Nonce is required", CR_ERR_INVALID);
	for (i = 0; nonce[i] != '\0'; i++) {
		if (i >= AUTH_NONCE_MAX)
			return fail(reason,
			    "X-Claw-Nonce must be at most 128 characters",
			    CR_ERR_INVALID);
		if (!is_nonce_char((unsigned char)nonce[i]))
			return fail(reason,
			    "X-Claw-Nonce must be characters of [A-Za-z0-9_-]",
			    CR_ERR_INVALID);
	}
	if (i < AUTH_NONCE_MIN)
		return fail(reason, "X-Claw-Nonce must be at least 16 characters",
		    CR_ERR_INVALID);
	return pass(reason);
}

/* an ID of 1-128 characters of [A-Za-z0-9._:@+-]; messages per header */
static enum cr_err
check_id(const char *id, const char **reason, const char *empty,
    const char *too_long, const char *bad_char)
{
	size_t i;

	if (id == NULL || id[0] == '\0')
		return fail(reason, empty, CR_ERR_INVALID);
	for (i = 0; id[i] != '\0'; i++) {
		if (i >= AUTH_ID_MAX)
			return fail(reason, too_long, CR_ERR_INVALID);
		if (!is_id_char((unsigned char)id[i]))
			return fail(reason, bad_char, CR_ERR_INVALID);
	}
	return pass(reason);
}

/* auth_check_agent_id - id is 1-128 characters of [A-Za-z0-9._:@+-] */
enum cr_err
auth_check_agent_id(const char *id, const char **reason)
{
	return check_id(id, reason, "agent ID is required",
	    "agent ID must be at most 128 characters",
	    "agent ID must be characters of [A-Za-z0-9._:@+-]");
}

/* auth_check_correlation_id - same alphabet and length as an agent ID */
enum cr_err
auth_check_correlation_id(const char *id, const char **reason)
{
	return check_id(id, reason, "X-Claw-Correlation-Id must not be empty",
	    "X-Claw-Correlation-Id must be at most 128 characters",
	    "X-Claw-Correlation-Id must be characters of [A-Za-z0-9._:@+-]");
}

/* auth_check_idempotency_key - 1-256 characters of printable ASCII 0x21-0x7e */
enum cr_err
auth_check_idempotency_key(const char *key, const char **reason)
{
	size_t i;

	if (key == NULL || key[0] == '\0')
		return fail(reason, "X-Claw-Idempotency-Key must not be empty",
		    CR_ERR_INVALID);
	for (i = 0; key[i] != '\0'; i++) {
		if (i >= AUTH_IDEM_KEY_MAX)
			return fail(reason,
			    "X-Claw-Idempotency-Key must be at most 256 characters",
			    CR_ERR_INVALID);
		if ((unsigned char)key[i] < 0x21 || (unsigned char)key[i] > 0x7e)
			return fail(reason,
			    "X-Claw-Idempotency-Key must be printable ASCII without spaces",
			    CR_ERR_INVALID);
	}
	return pass(reason);
}

/* auth_check_priority - exactly "critical", "normal" or "low" */
enum cr_err
auth_check_priority(const char *p, const char **reason)
{
	if (p != NULL && (strcmp(p, "critical") == 0 || strcmp(p, "normal") == 0 ||
	    strcmp(p, "low") == 0))
		return pass(reason);
	return fail(reason,
	    "X-Claw-Priority must be exactly critical, normal or low",
	    CR_ERR_INVALID);
}

/* auth_check_ttl - s is digits only with a value in 1-604800 */
enum cr_err
auth_check_ttl(const char *s, uint32_t *out, const char **reason)
{
	static const char *const why =
	    "X-Claw-Ttl-Seconds must be whole seconds from 1 to 604800";
	uint32_t v = 0;
	size_t i;

	if (s == NULL || s[0] == '\0')
		return fail(reason, why, CR_ERR_INVALID);
	for (i = 0; s[i] != '\0'; i++) {
		if (!is_digit((unsigned char)s[i]))
			return fail(reason, why, CR_ERR_INVALID);
		v = v * 10 + (uint32_t)(s[i] - '0');
		/* stop before v can wrap: out of range is refused anyway */
		if (v > AUTH_TTL_MAX_S)
			return fail(reason, why, CR_ERR_INVALID);
	}
	if (v < 1)
		return fail(reason, why, CR_ERR_INVALID);
	if (out != NULL)
		*out = v;
	return pass(reason);
}
