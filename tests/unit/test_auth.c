/*
 * test_auth.c - Check suite for common/b64.c and common/auth.c.
 *
 * Covers base64url (round trips, strict refusals), SHA-256 against published
 * vectors, the CLAW-PROOF-V1 canonical text byte for byte, Ed25519 against the
 * RFC 8032 vectors and against the openssl command-line tool (an
 * implementation we did not write: keys and signatures go both ways through
 * files in a mkdtemp directory), and every header rule with good and bad
 * values. Needs `openssl` on PATH for the interop case.
 */
#include <check.h>
#include <dirent.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "auth.h"
#include "b64.h"

/* --- helpers ---------------------------------------------------------- */

static void
hex_to_bin(const char *hex, unsigned char *out, size_t n)
{
	size_t i;
	unsigned int v;

	ck_assert_uint_eq(strlen(hex), n * 2);
	for (i = 0; i < n; i++) {
		ck_assert_int_eq(sscanf(hex + 2 * i, "%2x", &v), 1);
		out[i] = (unsigned char)v;
	}
}

static void
write_file(const char *path, const void *data, size_t n)
{
	FILE *f = fopen(path, "wb");

	ck_assert_ptr_nonnull(f);
	if (n > 0)
		ck_assert_uint_eq(fwrite(data, 1, n, f), n);
	ck_assert_int_eq(fclose(f), 0);
}

/* reads at most cap bytes; returns the count */
static size_t
read_file(const char *path, void *buf, size_t cap)
{
	FILE *f = fopen(path, "rb");
	size_t n;

	ck_assert_ptr_nonnull(f);
	n = fread(buf, 1, cap, f);
	fclose(f);
	return n;
}

/* exit status of a shell command, -1 if it did not exit normally */
static int
run(const char *fmt, ...) __attribute__((format(printf, 1, 2)));

static int
run(const char *fmt, ...)
{
	char cmd[4096];
	va_list ap;
	int n, st;

	va_start(ap, fmt);
	n = vsnprintf(cmd, sizeof(cmd), fmt, ap);
	va_end(ap);
	ck_assert_int_lt(n, (int)sizeof(cmd));
	st = system(cmd);
	if (st == -1 || !WIFEXITED(st))
		return -1;
	return WEXITSTATUS(st);
}

static int
count_entries(const char *dir)
{
	DIR *d = opendir(dir);
	struct dirent *e;
	int n = 0;

	ck_assert_ptr_nonnull(d);
	while ((e = readdir(d)) != NULL)
		if (strcmp(e->d_name, ".") != 0 && strcmp(e->d_name, ".."))
			n++;
	closedir(d);
	return n;
}

/* remove a flat temporary directory and its files */
static void
rm_flat_dir(const char *dir)
{
	DIR *d = opendir(dir);
	struct dirent *e;
	char p[512];

	if (d == NULL)
		return;
	while ((e = readdir(d)) != NULL) {
		if (strcmp(e->d_name, ".") == 0 || strcmp(e->d_name, "..") == 0)
			continue;
		snprintf(p, sizeof(p), "%s/%s", dir, e->d_name);
		unlink(p);
	}
	closedir(d);
	rmdir(dir);
}

static char tmpdir[64];

static void
tmp_setup(void)
{
	strcpy(tmpdir, "/tmp/test_auth.XXXXXX");
	if (mkdtemp(tmpdir) == NULL) {
		perror("mkdtemp");
		abort();
	}
}

static void
tmp_teardown(void)
{
	rm_flat_dir(tmpdir);
}

static const char *
tmp_path(char *buf, size_t sz, const char *name)
{
	snprintf(buf, sz, "%s/%s", tmpdir, name);
	return buf;
}

/* --- base64url -------------------------------------------------------- */

struct b64_vec {
	const char *raw;
	size_t n;
	const char *enc;
};

static const struct b64_vec b64_vecs[] = {
	{ "", 0, "" },
	{ "f", 1, "Zg" },
	{ "fo", 2, "Zm8" },
	{ "foo", 3, "Zm9v" },
	{ "foob", 4, "Zm9vYg" },
	{ "fooba", 5, "Zm9vYmE" },
	{ "foobar", 6, "Zm9vYmFy" },
	{ "\xfb\xff", 2, "-_8" },           /* "+/8=" in standard base64 */
	{ "\x00\x00\x00", 3, "AAAA" },
	{ "\xff\xff\xff\xff", 4, "_____w" },
};

START_TEST(b64_known_vectors)
{
	const struct b64_vec *v = &b64_vecs[_i];
	char enc[32];
	unsigned char dec[32];
	size_t len = 99;

	ck_assert_uint_eq(b64url_encode((const unsigned char *)v->raw, v->n,
	    enc, sizeof(enc)), strlen(v->enc));
	ck_assert_str_eq(enc, v->enc);
	ck_assert_uint_eq(b64url_encoded_len(v->n), strlen(v->enc));
	ck_assert_int_eq(b64url_decode(v->enc, strlen(v->enc), dec, sizeof(dec),
	    &len), CR_OK);
	ck_assert_uint_eq(len, v->n);
	ck_assert_mem_eq(dec, v->raw, v->n);
}
END_TEST

START_TEST(b64_round_trip_all_lengths)
{
	unsigned char raw[200], dec[200];
	char enc[300];
	size_t n, i, len, elen;

	for (n = 0; n <= sizeof(raw); n++) {
		for (i = 0; i < n; i++)
			raw[i] = (unsigned char)(i * 37 + n * 11 + 5);
		elen = b64url_encode(raw, n, enc, sizeof(enc));
		ck_assert_uint_eq(elen, b64url_encoded_len(n));
		ck_assert_uint_eq(strlen(enc), elen);
		ck_assert_ptr_null(strchr(enc, '='));
		ck_assert_int_eq(b64url_decode(enc, elen, dec, sizeof(dec), &len),
		    CR_OK);
		ck_assert_uint_eq(len, n);
		ck_assert_uint_eq(b64url_decoded_len(elen), n);
		if (n > 0)
			ck_assert_mem_eq(dec, raw, n);
	}
}
END_TEST

struct b64_bad {
	const char *s;
	size_t n;
	const char *why;
};

static const struct b64_bad b64_bads[] = {
	{ "Zg==", 4, "padding" },
	{ "Zm9vYg=", 7, "one pad" },
	{ "=", 1, "only padding" },
	{ "Z", 1, "length 1 mod 4" },
	{ "Zm9vY", 5, "length 1 mod 4 (5)" },
	{ "Zh", 2, "non-zero trailing bits (2 chars)" },
	{ "Zm9", 3, "non-zero trailing bits (3 chars)" },
	{ "_____x", 6, "non-zero trailing bits after full groups" },
	{ "Zm+v", 4, "standard alphabet '+'" },
	{ "Zm/v", 4, "standard alphabet '/'" },
	{ "Zm9 v", 5, "space" },
	{ "Zm9v\n", 5, "newline" },
	{ "Zm\0v", 4, "embedded NUL" },
	{ "Zm9\x80", 4, "high byte" },
	{ "Zm.v", 4, "dot" },
};

START_TEST(b64_refusals)
{
	const struct b64_bad *b = &b64_bads[_i];
	unsigned char out[16];
	size_t len = 7;

	ck_assert_msg(b64url_decode(b->s, b->n, out, sizeof(out), &len) ==
	    CR_ERR_INVALID, "accepted: %s", b->why);
	ck_assert_uint_eq(len, 0);
}
END_TEST

START_TEST(b64_sizes)
{
	char enc[8];
	unsigned char out[8];
	size_t len;

	/* "foobar" needs 8 characters + NUL */
	ck_assert_uint_eq(b64url_encode((const unsigned char *)"foobar", 6, enc, 8), 0);
	ck_assert_uint_eq(b64url_encode((const unsigned char *)"fooba", 5, enc, 8), 7);
	ck_assert_str_eq(enc, "Zm9vYmE");
	ck_assert_int_eq(b64url_decode("Zm9vYmFy", 8, out, 5, &len), CR_ERR_TOO_BIG);
	ck_assert_int_eq(b64url_decode("Zm9vYmFy", 8, out, 6, &len), CR_OK);
	ck_assert_uint_eq(len, 6);
	ck_assert_int_eq(b64url_decode("", 0, NULL, 0, &len), CR_OK);
	ck_assert_uint_eq(len, 0);
}
END_TEST

/* --- SHA-256 ---------------------------------------------------------- */

struct sha_vec {
	const char *in;
	const char *b64;
};

static const struct sha_vec sha_vecs[] = {
	{ "", "47DEQpj8HBSa-_TImW-5JCeuQeRkm5NMpJWZG3hSuFU" },
	{ "abc", "ungWv48Bz-pBQUDeXa4iI7ADYaOWF3qctBD_YfIAFa0" },
	{ "abcdbcdecdefdefgefghfghighijhijkijkljklmklmnlmnomnopnopq",
	  "JI1qYdIGOLjlwCaTDD5gOaM85Flk_yFn9uzt1BnbBsE" },
};

START_TEST(sha256_vectors)
{
	const struct sha_vec *v = &sha_vecs[_i];
	char out[AUTH_SHA256_B64_SIZE];

	ck_assert_int_eq(auth_sha256_b64url(v->in, strlen(v->in), out), CR_OK);
	ck_assert_str_eq(out, v->b64);
	ck_assert_uint_eq(strlen(out), AUTH_SHA256_B64_LEN);
}
END_TEST

START_TEST(sha256_million_a_incremental)
{
	/* FIPS 180-2 vector: one million 'a', fed in uneven pieces */
	static char chunk[7919];
	struct auth_sha256 *h = NULL;
	char out[AUTH_SHA256_B64_SIZE];
	size_t left = 1000000, n;

	memset(chunk, 'a', sizeof(chunk));
	ck_assert_int_eq(auth_sha256_new(&h), CR_OK);
	while (left > 0) {
		n = left < sizeof(chunk) ? left : sizeof(chunk);
		ck_assert_int_eq(auth_sha256_update(h, chunk, n), CR_OK);
		left -= n;
	}
	ck_assert_int_eq(auth_sha256_final_b64url(h, out), CR_OK);
	ck_assert_str_eq(out, "zcduXJkU-5KBocfihNc-Z_GAmkiklyAOBG05zMcRLNA");
	/* final resets: the same object hashes the next body from scratch */
	ck_assert_int_eq(auth_sha256_update(h, "abc", 3), CR_OK);
	ck_assert_int_eq(auth_sha256_final_b64url(h, out), CR_OK);
	ck_assert_str_eq(out, sha_vecs[1].b64);
	auth_sha256_free(h);
	auth_sha256_free(NULL);
}
END_TEST

/* --- canonical text --------------------------------------------------- */

static const struct auth_proof_input full_input = {
	.method = "POST",
	.path = "/v1/agents/did:cdi:example.com:agent:01JBOB/messages",
	.query = "a=1&b=%2F",
	.agent = "did:cdi:example.com:agent:01JALICE",
	.timestamp = "1700000000",
	.nonce = "n0nce_abcdefghij-KLM",
	.body_sha256 = "ungWv48Bz-pBQUDeXa4iI7ADYaOWF3qctBD_YfIAFa0",
	.correlation_id = "corr-42",
	.idempotency_key = "idem/key:1",
	.priority = "critical",
	.ttl_seconds = "3600",
};

static const char full_text[] =
    "CLAW-PROOF-V1\n"
    "POST\n"
    "/v1/agents/did:cdi:example.com:agent:01JBOB/messages?a=1&b=%2F\n"
    "did:cdi:example.com:agent:01JALICE\n"
    "1700000000\n"
    "n0nce_abcdefghij-KLM\n"
    "ungWv48Bz-pBQUDeXa4iI7ADYaOWF3qctBD_YfIAFa0\n"
    "corr-42\n"
    "idem/key:1\n"
    "critical\n"
    "3600";

START_TEST(canonical_full)
{
	char buf[1024];
	size_t len = 0;

	ck_assert_int_eq(auth_canonical(&full_input, buf, sizeof(buf), &len), CR_OK);
	ck_assert_uint_eq(len, sizeof(full_text) - 1);
	ck_assert_uint_eq(auth_canonical_len(&full_input), len);
	ck_assert_mem_eq(buf, full_text, sizeof(full_text));
}
END_TEST

START_TEST(canonical_sparse)
{
	/* a WebSocket upgrade: empty body, no optional headers, "" == NULL */
	static const struct auth_proof_input in = {
		.method = "GET",
		.path = "/v1/connect",
		.agent = "bob",
		.timestamp = "0001700000000",
		.nonce = "AAAAAAAAAAAAAAAA",
		.body_sha256 = "47DEQpj8HBSa-_TImW-5JCeuQeRkm5NMpJWZG3hSuFU",
		.correlation_id = "",
		.priority = "",
	};
	static const char want[] =
	    "CLAW-PROOF-V1\nGET\n/v1/connect\nbob\n0001700000000\n"
	    "AAAAAAAAAAAAAAAA\n47DEQpj8HBSa-_TImW-5JCeuQeRkm5NMpJWZG3hSuFU\n"
	    "\n\n\n";
	char buf[256];
	size_t len = 0;

	ck_assert_int_eq(auth_canonical(&in, buf, sizeof(buf), &len), CR_OK);
	ck_assert_uint_eq(len, sizeof(want) - 1);
	ck_assert_mem_eq(buf, want, sizeof(want));
}
END_TEST

START_TEST(canonical_edges)
{
	struct auth_proof_input in = { .method = "GET", .path = "/x", .query = "" };
	char buf[256];
	size_t len, need;

	/* a '?' with nothing after it was sent, so it is signed */
	ck_assert_int_eq(auth_canonical(&in, buf, sizeof(buf), &len), CR_OK);
	ck_assert_str_eq(buf, "CLAW-PROOF-V1\nGET\n/x?\n\n\n\n\n\n\n\n");
	/* all NULL: the tag and ten empty lines */
	memset(&in, 0, sizeof(in));
	ck_assert_int_eq(auth_canonical(&in, buf, sizeof(buf), &len), CR_OK);
	ck_assert_str_eq(buf, "CLAW-PROOF-V1\n\n\n\n\n\n\n\n\n\n");
	/* buffer exactly one short of the NUL, then exactly enough */
	need = auth_canonical_len(&full_input);
	ck_assert_int_eq(auth_canonical(&full_input, buf, need, &len), CR_ERR_TOO_BIG);
	ck_assert_int_eq(auth_canonical(&full_input, buf, need + 1, &len), CR_OK);
	ck_assert_int_eq(auth_canonical(&full_input, NULL, 0, &len), CR_ERR_TOO_BIG);
	/* a decoded path may hold '\n'; a header may not */
	in = full_input;
	in.path = "/a\nb";
	ck_assert_int_eq(auth_canonical(&in, buf, sizeof(buf), &len), CR_OK);
	in = full_input;
	in.nonce = "abc\ndef";
	ck_assert_int_eq(auth_canonical(&in, buf, sizeof(buf), &len), CR_ERR_INVALID);
	in = full_input;
	in.query = "a\n";
	ck_assert_int_eq(auth_canonical(&in, buf, sizeof(buf), &len), CR_ERR_INVALID);
}
END_TEST

/* --- Ed25519 ---------------------------------------------------------- */

struct rfc_vec {
	const char *seed, *pub, *msg, *sig;
};

/* RFC 8032 section 7.1, tests 1-3 */
static const struct rfc_vec rfc_vecs[] = {
	{ "9d61b19deffd5a60ba844af492ec2cc44449c5697b326919703bac031cae7f60",
	  "d75a980182b10ab7d54bfed3c964073a0ee172f3daa62325af021a68f707511a",
	  "",
	  "e5564300c360ac729086e2cc806e828a84877f1eb8e5d974d873e06522490155"
	  "5fb8821590a33bacc61e39701cf9b46bd25bf5f0595bbe24655141438e7a100b" },
	{ "4ccd089b28ff96da9db6c346ec114e0f5b8a319f35aba624da8cf6ed4fb8a6fb",
	  "3d4017c3e843895a92b70aa74d1b7ebc9c982ccf2ec4968cc0cd55f12af4660c",
	  "72",
	  "92a009a9f0d4cab8720e820b5f642540a2b27b5416503f8fb3762223ebdb69da"
	  "085ac1e43e15996e458f3613d0f11d8c387b2eaeb4302aeeb00d291612bb0c00" },
	{ "c5aa8df43f9f837bedb7442f31dcb7b166d38535076f094b85ce3a2e0b4458f7",
	  "fc51cd8e6218a1a38da47ed00230f0580816ed13ba3303ac5deb911548908025",
	  "af82",
	  "6291d657deec24024827e69c3abe01a30ce548a284743a445e3680d7db5ac3ac"
	  "18ff9b538d16f290ae67f760984dc6594a7c15e9716ed28dc027beceea1ec40a" },
};

START_TEST(ed25519_rfc8032)
{
	const struct rfc_vec *v = &rfc_vecs[_i];
	unsigned char seed[32], pub[32], got_pub[32], msg[8], sig[64];
	char want_b64[AUTH_SIG_B64_SIZE], got_b64[AUTH_SIG_B64_SIZE];
	size_t mlen = strlen(v->msg) / 2;
	struct auth_key *k = NULL;

	hex_to_bin(v->seed, seed, 32);
	hex_to_bin(v->pub, pub, 32);
	hex_to_bin(v->msg, msg, mlen);
	hex_to_bin(v->sig, sig, 64);
	ck_assert_uint_eq(b64url_encode(sig, 64, want_b64, sizeof(want_b64)),
	    AUTH_SIG_B64_LEN);
	ck_assert_int_eq(auth_key_from_seed(seed, &k), CR_OK);
	ck_assert_int_eq(auth_key_public_raw(k, got_pub), CR_OK);
	ck_assert_mem_eq(got_pub, pub, 32);
	ck_assert_int_eq(auth_sign(k, msg, mlen, got_b64), CR_OK);
	ck_assert_str_eq(got_b64, want_b64);
	ck_assert_int_eq(auth_verify(pub, msg, mlen, want_b64, AUTH_SIG_B64_LEN),
	    CR_OK);
	auth_key_free(k);
}
END_TEST

/* add the group order L to the S half of a signature: same point equation,
 * second spelling; RFC 8032 requires S < L so it must be refused */
static void
sig_add_l(unsigned char sig[64])
{
	static const unsigned char l[32] = {
		0xed, 0xd3, 0xf5, 0x5c, 0x1a, 0x63, 0x12, 0x58, 0xd6, 0x9c, 0xf7,
		0xa2, 0xde, 0xf9, 0xde, 0x14, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
		0, 0, 0, 0x10,
	};
	unsigned int carry = 0, i, t;

	for (i = 0; i < 32; i++) {
		t = sig[32 + i] + l[i] + carry;
		sig[32 + i] = (unsigned char)t;
		carry = t >> 8;
	}
}

START_TEST(sign_verify_and_refusals)
{
	static const char msg[] = "CLAW-PROOF-V1\nPOST\n/v1/x";
	struct auth_key *k = NULL, *other = NULL;
	struct auth_pubkey *pk = NULL;
	unsigned char pub[32], opub[32], raw[64], zero[32] = { 0 };
	char sig[AUTH_SIG_B64_SIZE], bad[AUTH_SIG_B64_SIZE + 8], tampered[sizeof(msg)];
	size_t len, i;

	ck_assert_int_eq(auth_key_generate(&k), CR_OK);
	ck_assert_int_eq(auth_key_generate(&other), CR_OK);
	ck_assert_int_eq(auth_key_public_raw(k, pub), CR_OK);
	ck_assert_int_eq(auth_key_public_raw(other, opub), CR_OK);
	ck_assert_mem_ne(pub, opub, 32);
	ck_assert_int_eq(auth_sign(k, msg, strlen(msg), sig), CR_OK);
	ck_assert_uint_eq(strlen(sig), AUTH_SIG_B64_LEN);
	ck_assert_int_eq(auth_pubkey_new(pub, &pk), CR_OK);

	ck_assert_int_eq(auth_verify(pub, msg, strlen(msg), sig, strlen(sig)), CR_OK);
	ck_assert_int_eq(auth_pubkey_verify(pk, msg, strlen(msg), sig, strlen(sig)),
	    CR_OK);
	/* every single-bit change of the message is refused */
	for (i = 0; i < strlen(msg) * 8; i++) {
		memcpy(tampered, msg, sizeof(msg));
		tampered[i / 8] ^= (char)(1 << (i % 8));
		ck_assert_int_eq(auth_pubkey_verify(pk, tampered, strlen(msg), sig,
		    AUTH_SIG_B64_LEN), CR_ERR_AUTH);
	}
	ck_assert_int_eq(auth_pubkey_verify(pk, msg, strlen(msg) - 1, sig,
	    AUTH_SIG_B64_LEN), CR_ERR_AUTH);
	/* every changed signature character is refused */
	for (i = 0; i < AUTH_SIG_B64_LEN; i++) {
		strcpy(bad, sig);
		bad[i] = bad[i] == 'A' ? 'B' : 'A';
		ck_assert_int_eq(auth_pubkey_verify(pk, msg, strlen(msg), bad,
		    AUTH_SIG_B64_LEN), CR_ERR_AUTH);
	}
	/* wrong key */
	ck_assert_int_eq(auth_verify(opub, msg, strlen(msg), sig, AUTH_SIG_B64_LEN),
	    CR_ERR_AUTH);
	ck_assert_int_eq(auth_verify(zero, msg, strlen(msg), sig, AUTH_SIG_B64_LEN),
	    CR_ERR_AUTH);
	/* wrong lengths, padding, garbage, NULL */
	ck_assert_int_eq(auth_pubkey_verify(pk, msg, strlen(msg), sig, 85), CR_ERR_AUTH);
	strcpy(bad, sig);
	strcat(bad, "A");
	ck_assert_int_eq(auth_pubkey_verify(pk, msg, strlen(msg), bad, 87), CR_ERR_AUTH);
	strcpy(bad, sig);
	strcat(bad, "==");
	ck_assert_int_eq(auth_pubkey_verify(pk, msg, strlen(msg), bad, 88), CR_ERR_AUTH);
	memset(bad, '!', AUTH_SIG_B64_LEN);
	bad[AUTH_SIG_B64_LEN] = '\0';
	ck_assert_int_eq(auth_pubkey_verify(pk, msg, strlen(msg), bad,
	    AUTH_SIG_B64_LEN), CR_ERR_AUTH);
	memset(bad, 'A', AUTH_SIG_B64_LEN);
	ck_assert_int_eq(auth_pubkey_verify(pk, msg, strlen(msg), bad,
	    AUTH_SIG_B64_LEN), CR_ERR_AUTH);
	ck_assert_int_eq(auth_pubkey_verify(pk, msg, strlen(msg), "", 0), CR_ERR_AUTH);
	ck_assert_int_eq(auth_pubkey_verify(pk, msg, strlen(msg), NULL, 86), CR_ERR_AUTH);
	ck_assert_int_eq(auth_pubkey_verify(NULL, msg, strlen(msg), sig, 86), CR_ERR_AUTH);
	ck_assert_int_eq(auth_verify(NULL, msg, strlen(msg), sig, 86), CR_ERR_AUTH);
	/* S + L: a malleated second spelling of a valid signature */
	ck_assert_int_eq(b64url_decode(sig, AUTH_SIG_B64_LEN, raw, sizeof(raw), &len),
	    CR_OK);
	sig_add_l(raw);
	b64url_encode(raw, 64, bad, sizeof(bad));
	ck_assert_int_eq(auth_pubkey_verify(pk, msg, strlen(msg), bad,
	    AUTH_SIG_B64_LEN), CR_ERR_AUTH);
	/* empty message signs and verifies too */
	ck_assert_int_eq(auth_sign(k, NULL, 0, sig), CR_OK);
	ck_assert_int_eq(auth_pubkey_verify(pk, NULL, 0, sig, AUTH_SIG_B64_LEN), CR_OK);
	ck_assert_int_eq(auth_pubkey_verify(pk, "", 0, sig, AUTH_SIG_B64_LEN), CR_OK);

	auth_pubkey_raw(pk, raw);
	ck_assert_mem_eq(raw, pub, 32);
	auth_pubkey_free(pk);
	auth_pubkey_free(NULL);
	auth_key_free(k);
	auth_key_free(other);
	auth_key_free(NULL);
}
END_TEST

START_TEST(pubkey_b64url)
{
	unsigned char raw[32], back[32];
	char s[AUTH_PUBKEY_B64_SIZE];
	int i;

	for (i = 0; i < 32; i++)
		raw[i] = (unsigned char)(0xf0 + i);
	auth_pubkey_to_b64url(raw, s);
	ck_assert_uint_eq(strlen(s), AUTH_PUBKEY_B64_LEN);
	ck_assert_int_eq(auth_pubkey_from_b64url(s, strlen(s), back), CR_OK);
	ck_assert_mem_eq(raw, back, 32);
	ck_assert_int_eq(auth_pubkey_from_b64url(s, 42, back), CR_ERR_INVALID);
	ck_assert_int_eq(auth_pubkey_from_b64url("", 0, back), CR_ERR_INVALID);
	ck_assert_int_eq(auth_pubkey_from_b64url(NULL, 43, back), CR_ERR_INVALID);
	s[10] = '+';
	ck_assert_int_eq(auth_pubkey_from_b64url(s, 43, back), CR_ERR_INVALID);
}
END_TEST

/* every field is covered: changing any one breaks the proof */
START_TEST(request_sign_verify)
{
	static char long_path[5000];
	struct auth_key *k = NULL;
	struct auth_pubkey *pk = NULL;
	struct auth_proof_input in;
	unsigned char pub[32];
	char sig[AUTH_SIG_B64_SIZE];
	const char **fields[] = {
		&in.method, &in.path, &in.query, &in.agent, &in.timestamp,
		&in.nonce, &in.body_sha256, &in.correlation_id,
		&in.idempotency_key, &in.priority, &in.ttl_seconds,
	};
	size_t i;

	ck_assert_int_eq(auth_key_generate(&k), CR_OK);
	ck_assert_int_eq(auth_key_public_raw(k, pub), CR_OK);
	ck_assert_int_eq(auth_pubkey_new(pub, &pk), CR_OK);
	ck_assert_int_eq(auth_sign_request(k, &full_input, sig), CR_OK);
	ck_assert_int_eq(auth_verify_request(pk, &full_input, sig), CR_OK);
	for (i = 0; i < sizeof(fields) / sizeof(fields[0]); i++) {
		in = full_input;
		*fields[i] = "x";
		ck_assert_msg(auth_verify_request(pk, &in, sig) == CR_ERR_AUTH,
		    "field %zu not covered", i);
		in = full_input;
		*fields[i] = NULL;
		ck_assert_msg(auth_verify_request(pk, &in, sig) == CR_ERR_AUTH,
		    "field %zu removable", i);
	}
	/* a field moved to its neighbour's line changes the text */
	in = full_input;
	in.correlation_id = full_input.idempotency_key;
	in.idempotency_key = full_input.correlation_id;
	ck_assert_int_eq(auth_verify_request(pk, &in, sig), CR_ERR_AUTH);
	ck_assert_int_eq(auth_verify_request(pk, &full_input, NULL), CR_ERR_AUTH);
	ck_assert_int_eq(auth_verify_request(pk, &full_input, "garbage"), CR_ERR_AUTH);

	/* a path longer than the stack buffer takes the heap path */
	memset(long_path, 'p', sizeof(long_path) - 1);
	long_path[0] = '/';
	in = full_input;
	in.path = long_path;
	ck_assert_int_eq(auth_sign_request(k, &in, sig), CR_OK);
	ck_assert_int_eq(auth_verify_request(pk, &in, sig), CR_OK);
	long_path[100] = 'q';
	ck_assert_int_eq(auth_verify_request(pk, &in, sig), CR_ERR_AUTH);

	in = full_input;
	in.agent = "a\nb";
	ck_assert_int_eq(auth_sign_request(k, &in, sig), CR_ERR_INVALID);
	ck_assert_int_eq(auth_verify_request(pk, &in, sig), CR_ERR_INVALID);

	auth_pubkey_free(pk);
	auth_key_free(k);
}
END_TEST

struct mt_arg {
	const struct auth_pubkey *pk;
	const char *sig;
	int ok;
};

static void *
mt_worker(void *p)
{
	struct mt_arg *a = p;
	char h[AUTH_SHA256_B64_SIZE];
	int i;

	for (i = 0; i < 50; i++) {
		if (auth_verify_request(a->pk, &full_input, a->sig) != CR_OK)
			return NULL;
		if (auth_sha256_b64url("abc", 3, h) != CR_OK ||
		    strcmp(h, sha_vecs[1].b64) != 0)
			return NULL;
	}
	a->ok = 1;
	return NULL;
}

/* one shared auth_pubkey verified from several threads at once */
START_TEST(shared_pubkey_threads)
{
	struct auth_key *k = NULL;
	struct auth_pubkey *pk = NULL;
	unsigned char pub[32];
	char sig[AUTH_SIG_B64_SIZE];
	pthread_t th[4];
	struct mt_arg args[4];
	int i;

	ck_assert_int_eq(auth_key_generate(&k), CR_OK);
	ck_assert_int_eq(auth_key_public_raw(k, pub), CR_OK);
	ck_assert_int_eq(auth_pubkey_new(pub, &pk), CR_OK);
	ck_assert_int_eq(auth_sign_request(k, &full_input, sig), CR_OK);
	for (i = 0; i < 4; i++) {
		args[i] = (struct mt_arg){ .pk = pk, .sig = sig };
		ck_assert_int_eq(pthread_create(&th[i], NULL, mt_worker, &args[i]), 0);
	}
	for (i = 0; i < 4; i++) {
		pthread_join(th[i], NULL);
		ck_assert_int_eq(args[i].ok, 1);
	}
	auth_pubkey_free(pk);
	auth_key_free(k);
}
END_TEST

/* --- key files -------------------------------------------------------- */

START_TEST(key_files)
{
	char priv[256], pub_path[256], p[256];
	struct auth_key *k = NULL, *loaded = NULL, *k2 = NULL;
	unsigned char pub[32], pub2[32], pub3[32];
	struct stat st;
	char pem[1024];
	size_t n;

	tmp_path(priv, sizeof(priv), "k.pem");
	tmp_path(pub_path, sizeof(pub_path), "k.pub.pem");
	ck_assert_int_eq(auth_key_generate(&k), CR_OK);
	ck_assert_int_eq(auth_key_public_raw(k, pub), CR_OK);
	ck_assert_int_eq(auth_key_save(k, priv, pub_path), CR_OK);
	ck_assert_int_eq(count_entries(tmpdir), 2);
	ck_assert_int_eq(stat(priv, &st), 0);
	ck_assert_uint_eq(st.st_mode & 0777, 0600);

	ck_assert_int_eq(auth_key_load_private(priv, &loaded), CR_OK);
	ck_assert_int_eq(auth_key_public_raw(loaded, pub2), CR_OK);
	ck_assert_mem_eq(pub, pub2, 32);
	ck_assert_int_eq(auth_pubkey_from_pem_file(pub_path, pub3), CR_OK);
	ck_assert_mem_eq(pub, pub3, 32);
	n = read_file(pub_path, pem, sizeof(pem));
	memset(pub3, 0, 32);
	ck_assert_int_eq(auth_pubkey_from_pem_str(pem, n, pub3), CR_OK);
	ck_assert_mem_eq(pub, pub3, 32);

	/* never overwrites, and leaves nothing behind */
	ck_assert_int_eq(auth_key_generate(&k2), CR_OK);
	ck_assert_int_eq(auth_key_save(k2, priv, NULL), CR_ERR_EXISTS);
	ck_assert_int_eq(auth_key_save(k2, tmp_path(p, sizeof(p), "new.pem"),
	    pub_path), CR_ERR_EXISTS);
	ck_assert_int_eq(count_entries(tmpdir), 2);
	ck_assert_int_eq(auth_pubkey_from_pem_file(pub_path, pub3), CR_OK);
	ck_assert_mem_eq(pub, pub3, 32);
	ck_assert_int_eq(auth_key_save(k2, tmp_path(p, sizeof(p), "nodir/x.pem"),
	    NULL), CR_ERR_IO);

	auth_key_free(k2);

	/* wrong files; *out is reset to NULL on failure */
	k2 = k;
	ck_assert_int_eq(auth_key_load_private(tmp_path(p, sizeof(p), "missing"),
	    &k2), CR_ERR_IO);
	ck_assert_ptr_null(k2);
	ck_assert_int_eq(auth_key_load_private(pub_path, &k2), CR_ERR_INVALID);
	ck_assert_int_eq(auth_pubkey_from_pem_file(priv, pub3), CR_ERR_INVALID);
	ck_assert_int_eq(auth_pubkey_from_pem_file(tmp_path(p, sizeof(p), "missing"),
	    pub3), CR_ERR_IO);
	write_file(tmp_path(p, sizeof(p), "junk.pem"),
	    "-----BEGIN PRIVATE KEY-----\nnot base64\n-----END PRIVATE KEY-----\n", 63);
	ck_assert_int_eq(auth_key_load_private(p, &k2), CR_ERR_INVALID);
	ck_assert_int_eq(auth_pubkey_from_pem_file(p, pub3), CR_ERR_INVALID);
	write_file(p, "", 0);
	ck_assert_int_eq(auth_key_load_private(p, &k2), CR_ERR_INVALID);
	ck_assert_int_eq(auth_pubkey_from_pem_str("garbage", 7, pub3), CR_ERR_INVALID);
	ck_assert_int_eq(auth_pubkey_from_pem_str(NULL, 0, pub3), CR_ERR_INVALID);

	auth_key_free(k);
	auth_key_free(loaded);
}
END_TEST

/* --- interop with the openssl command-line tool ----------------------- */

/* messages the two implementations sign for each other */
static void
interop_msgs(const char **m, size_t *len, char *big, size_t bigsz)
{
	static char canon[512];
	size_t clen = 0, i;

	ck_assert_int_eq(auth_canonical(&full_input, canon, sizeof(canon), &clen),
	    CR_OK);
	m[0] = canon;
	len[0] = clen;
	m[1] = "x";
	len[1] = 1;
	m[2] = "bin\0ary\n\xff\x00";
	len[2] = 11;
	for (i = 0; i < bigsz; i++)
		big[i] = (char)(i * 7 + 1);
	m[3] = big;
	len[3] = bigsz;
}

START_TEST(openssl_signs_we_verify)
{
	char opriv[256], opub[256], mpath[256], spath[256];
	char big[10000], our[AUTH_SIG_B64_SIZE], theirs[AUTH_SIG_B64_SIZE];
	const char *m[4];
	size_t len[4], i, n;
	unsigned char pub[32], ourpub[32], sig[80];
	struct auth_key *k = NULL;
	struct auth_pubkey *pk = NULL;

	tmp_path(opriv, sizeof(opriv), "o.pem");
	tmp_path(opub, sizeof(opub), "o.pub.pem");
	tmp_path(mpath, sizeof(mpath), "msg.bin");
	tmp_path(spath, sizeof(spath), "sig.bin");
	ck_assert_int_eq(run("openssl genpkey -algorithm ed25519 -out %s", opriv), 0);
	ck_assert_int_eq(run("openssl pkey -in %s -pubout -out %s", opriv, opub), 0);
	ck_assert_int_eq(auth_pubkey_from_pem_file(opub, pub), CR_OK);
	ck_assert_int_eq(auth_pubkey_new(pub, &pk), CR_OK);
	/* the private key openssl wrote loads too, with the same public half */
	ck_assert_int_eq(auth_key_load_private(opriv, &k), CR_OK);
	ck_assert_int_eq(auth_key_public_raw(k, ourpub), CR_OK);
	ck_assert_mem_eq(pub, ourpub, 32);

	interop_msgs(m, len, big, sizeof(big));
	for (i = 0; i < 4; i++) {
		write_file(mpath, m[i], len[i]);
		ck_assert_int_eq(run("openssl pkeyutl -sign -rawin -inkey %s -in %s "
		    "-out %s", opriv, mpath, spath), 0);
		n = read_file(spath, sig, sizeof(sig));
		ck_assert_uint_eq(n, 64);
		ck_assert_uint_eq(b64url_encode(sig, 64, theirs, sizeof(theirs)),
		    AUTH_SIG_B64_LEN);
		ck_assert_msg(auth_pubkey_verify(pk, m[i], len[i], theirs,
		    AUTH_SIG_B64_LEN) == CR_OK, "openssl signature %zu refused", i);
		ck_assert_int_eq(auth_verify(pub, m[i], len[i], theirs,
		    AUTH_SIG_B64_LEN), CR_OK);
		/* Ed25519 is deterministic: our signature is the same bytes */
		ck_assert_int_eq(auth_sign(k, m[i], len[i], our), CR_OK);
		ck_assert_str_eq(our, theirs);
		/* and the same signature over another message is refused */
		ck_assert_int_eq(auth_pubkey_verify(pk, m[i], len[i] - 1, theirs,
		    AUTH_SIG_B64_LEN), CR_ERR_AUTH);
	}
	auth_pubkey_free(pk);
	auth_key_free(k);
}
END_TEST

START_TEST(we_sign_openssl_verifies)
{
	char priv[256], pub_path[256], mpath[256], spath[256], tpath[256];
	char opub[256], big[10000], b64[AUTH_SIG_B64_SIZE];
	char ours_pem[512], theirs_pem[512];
	const char *m[4];
	size_t len[4], i, n, n2;
	unsigned char sig[64];
	struct auth_key *k = NULL;

	tmp_path(priv, sizeof(priv), "we.pem");
	tmp_path(pub_path, sizeof(pub_path), "we.pub.pem");
	tmp_path(opub, sizeof(opub), "we.pub.by-openssl.pem");
	tmp_path(mpath, sizeof(mpath), "wmsg.bin");
	tmp_path(tpath, sizeof(tpath), "wmsg.tampered.bin");
	tmp_path(spath, sizeof(spath), "wsig.bin");
	ck_assert_int_eq(auth_key_generate(&k), CR_OK);
	ck_assert_int_eq(auth_key_save(k, priv, pub_path), CR_OK);
	/* openssl reads our private key and derives the public file we wrote */
	ck_assert_int_eq(run("openssl pkey -in %s -pubout -out %s", priv, opub), 0);
	n = read_file(pub_path, ours_pem, sizeof(ours_pem));
	n2 = read_file(opub, theirs_pem, sizeof(theirs_pem));
	ck_assert_uint_eq(n, n2);
	ck_assert_mem_eq(ours_pem, theirs_pem, n);

	interop_msgs(m, len, big, sizeof(big));
	for (i = 0; i < 4; i++) {
		ck_assert_int_eq(auth_sign(k, m[i], len[i], b64), CR_OK);
		ck_assert_int_eq(b64url_decode(b64, strlen(b64), sig, sizeof(sig), &n),
		    CR_OK);
		ck_assert_uint_eq(n, 64);
		write_file(spath, sig, 64);
		write_file(mpath, m[i], len[i]);
		ck_assert_msg(run("openssl pkeyutl -verify -rawin -pubin -inkey %s "
		    "-in %s -sigfile %s >/dev/null", pub_path, mpath, spath) == 0,
		    "openssl refused our signature %zu", i);
		/* tampered message: openssl must refuse */
		write_file(tpath, m[i], len[i] - 1);
		ck_assert_int_ne(run("openssl pkeyutl -verify -rawin -pubin -inkey %s "
		    "-in %s -sigfile %s >/dev/null 2>&1", pub_path, tpath, spath), 0);
		/* tampered signature: openssl must refuse */
		sig[5] ^= 0x01;
		write_file(spath, sig, 64);
		ck_assert_int_ne(run("openssl pkeyutl -verify -rawin -pubin -inkey %s "
		    "-in %s -sigfile %s >/dev/null 2>&1", pub_path, mpath, spath), 0);
	}
	auth_key_free(k);
}
END_TEST

START_TEST(foreign_key_types_refused)
{
	char p[256], q[256];
	unsigned char pub[32];
	struct auth_key *k = NULL;
	static const char *const algs[] = {
		"-algorithm x25519",
		"-algorithm ed448",
		"-algorithm EC -pkeyopt ec_paramgen_curve:P-256",
	};
	size_t i;

	tmp_path(p, sizeof(p), "foreign.pem");
	tmp_path(q, sizeof(q), "foreign.pub.pem");
	for (i = 0; i < sizeof(algs) / sizeof(algs[0]); i++) {
		unlink(p);
		unlink(q);
		ck_assert_int_eq(run("openssl genpkey %s -out %s 2>/dev/null", algs[i],
		    p), 0);
		ck_assert_int_eq(run("openssl pkey -in %s -pubout -out %s", p, q), 0);
		ck_assert_msg(auth_key_load_private(p, &k) == CR_ERR_INVALID,
		    "loaded %s", algs[i]);
		ck_assert_ptr_null(k);
		ck_assert_msg(auth_pubkey_from_pem_file(q, pub) == CR_ERR_INVALID,
		    "loaded public %s", algs[i]);
	}
}
END_TEST

/* --- header rules ----------------------------------------------------- */

typedef enum cr_err (*check_fn)(const char *, const char **);

struct rule_case {
	const char *in;
	enum cr_err want;
};

static char s128[129], s129[130], s256[257], s257[258], n15[16], n16[17];

static void
init_strings(void)
{
	memset(s128, 'a', 128);
	memset(s129, 'a', 129);
	memset(s256, 'k', 256);
	memset(s257, 'k', 257);
	memset(n15, 'N', 15);
	memset(n16, 'N', 16);
}

static void
run_rule(check_fn fn, const char *name, const struct rule_case *c, size_t n)
{
	const char *reason;
	enum cr_err rc;
	size_t i;

	for (i = 0; i < n; i++) {
		reason = "untouched";
		rc = fn(c[i].in, &reason);
		ck_assert_msg(rc == c[i].want, "%s(\"%s\") = %s, want %s", name,
		    c[i].in ? c[i].in : "(null)", cr_strerror(rc),
		    cr_strerror(c[i].want));
		if (rc == CR_OK)
			ck_assert_ptr_null(reason);
		else
			ck_assert_msg(reason != NULL && strlen(reason) > 10 &&
			    strcmp(reason, "untouched") != 0, "%s: no reason", name);
		/* a NULL reason pointer is allowed */
		ck_assert_int_eq(fn(c[i].in, NULL), rc);
	}
}

START_TEST(rule_agent_and_correlation_id)
{
	const struct rule_case c[] = {
		{ "bob", CR_OK },
		{ "did:cdi:example.com:agent:01JABCDEF", CR_OK },
		{ "a.b_c:d@e+f-g", CR_OK },
		{ ".", CR_OK },
		{ "A", CR_OK },
		{ s128, CR_OK },
		{ s129, CR_ERR_INVALID },
		{ "", CR_ERR_INVALID },
		{ NULL, CR_ERR_INVALID },
		{ "a b", CR_ERR_INVALID },
		{ " ", CR_ERR_INVALID },
		{ "a/b", CR_ERR_INVALID },
		{ "a?b", CR_ERR_INVALID },
		{ "a%2Eb", CR_ERR_INVALID },
		{ "a*", CR_ERR_INVALID },
		{ "a>", CR_ERR_INVALID },
		{ "a\tb", CR_ERR_INVALID },
		{ "a\nb", CR_ERR_INVALID },
		{ "a\x7f", CR_ERR_INVALID },
		{ "a\x01", CR_ERR_INVALID },
		{ "caf\xc3\xa9", CR_ERR_INVALID },
		{ "a,b", CR_ERR_INVALID },
	};

	init_strings();
	run_rule(auth_check_agent_id, "agent_id", c, sizeof(c) / sizeof(c[0]));
	run_rule(auth_check_correlation_id, "correlation_id", c,
	    sizeof(c) / sizeof(c[0]));
}
END_TEST

START_TEST(rule_nonce)
{
	const struct rule_case c[] = {
		{ n16, CR_OK },
		{ "abcdefghijklmnop", CR_OK },
		{ "AZaz09_-AZaz09_-", CR_OK },
		{ s128, CR_OK },
		{ s129, CR_ERR_INVALID },
		{ n15, CR_ERR_INVALID },
		{ "", CR_ERR_INVALID },
		{ NULL, CR_ERR_INVALID },
		{ "abcdefghijklmno.", CR_ERR_INVALID },
		{ "abcdefghijklmno+", CR_ERR_INVALID },
		{ "abcdefghijklmno/", CR_ERR_INVALID },
		{ "abcdefghijklmno=", CR_ERR_INVALID },
		{ "abcdefgh ijklmnop", CR_ERR_INVALID },
		{ "abcdefghijklmnop*", CR_ERR_INVALID },
		{ "abcdefghijklmnop>", CR_ERR_INVALID },
		{ "abcdefghijklmnop\r", CR_ERR_INVALID },
		{ "abcdefghijklmnop\x01", CR_ERR_INVALID },
	};

	init_strings();
	run_rule(auth_check_nonce, "nonce", c, sizeof(c) / sizeof(c[0]));
}
END_TEST

START_TEST(rule_idempotency_key)
{
	const struct rule_case c[] = {
		{ "k", CR_OK },
		{ "order/42:retry*3>{}\"'!~", CR_OK },
		{ s256, CR_OK },
		{ s257, CR_ERR_INVALID },
		{ "", CR_ERR_INVALID },
		{ NULL, CR_ERR_INVALID },
		{ "a b", CR_ERR_INVALID },
		{ "a\tb", CR_ERR_INVALID },
		{ "a\x7f", CR_ERR_INVALID },
		{ "a\x1f", CR_ERR_INVALID },
		{ "caf\xc3\xa9", CR_ERR_INVALID },
	};

	init_strings();
	run_rule(auth_check_idempotency_key, "idempotency_key", c,
	    sizeof(c) / sizeof(c[0]));
}
END_TEST

START_TEST(rule_priority)
{
	const struct rule_case c[] = {
		{ "critical", CR_OK },
		{ "normal", CR_OK },
		{ "low", CR_OK },
		{ "", CR_ERR_INVALID },
		{ NULL, CR_ERR_INVALID },
		{ "Critical", CR_ERR_INVALID },
		{ "NORMAL", CR_ERR_INVALID },
		{ "high", CR_ERR_INVALID },
		{ "low ", CR_ERR_INVALID },
		{ " low", CR_ERR_INVALID },
		{ "lo", CR_ERR_INVALID },
		{ "lowest", CR_ERR_INVALID },
		{ "1", CR_ERR_INVALID },
	};

	run_rule(auth_check_priority, "priority", c, sizeof(c) / sizeof(c[0]));
}
END_TEST

START_TEST(rule_ttl)
{
	static const struct {
		const char *in;
		enum cr_err want;
		uint32_t val;
	} c[] = {
		{ "1", CR_OK, 1 },
		{ "60", CR_OK, 60 },
		{ "604800", CR_OK, 604800 },
		{ "0604800", CR_OK, 604800 },
		{ "0", CR_ERR_INVALID, 0 },
		{ "000", CR_ERR_INVALID, 0 },
		{ "604801", CR_ERR_INVALID, 0 },
		{ "4294967297", CR_ERR_INVALID, 0 },    /* 2^32 + 1: no wrap */
		{ "99999999999999999999999", CR_ERR_INVALID, 0 },
		{ "12a", CR_ERR_INVALID, 0 },
		{ "", CR_ERR_INVALID, 0 },
		{ NULL, CR_ERR_INVALID, 0 },
		{ "-1", CR_ERR_INVALID, 0 },
		{ "+5", CR_ERR_INVALID, 0 },
		{ " 5", CR_ERR_INVALID, 0 },
		{ "5 ", CR_ERR_INVALID, 0 },
		{ "1.5", CR_ERR_INVALID, 0 },
		{ "0x10", CR_ERR_INVALID, 0 },
		{ "1e3", CR_ERR_INVALID, 0 },
	};
	const char *reason;
	uint32_t v;
	size_t i;

	for (i = 0; i < sizeof(c) / sizeof(c[0]); i++) {
		v = 12345;
		reason = NULL;
		ck_assert_msg(auth_check_ttl(c[i].in, &v, &reason) == c[i].want,
		    "ttl \"%s\"", c[i].in ? c[i].in : "(null)");
		if (c[i].want == CR_OK) {
			ck_assert_uint_eq(v, c[i].val);
			ck_assert_ptr_null(reason);
		} else {
			ck_assert_uint_eq(v, 12345); /* untouched: no clamping */
			ck_assert_ptr_nonnull(reason);
		}
	}
	ck_assert_int_eq(auth_check_ttl("30", NULL, NULL), CR_OK);
}
END_TEST

START_TEST(rule_timestamp)
{
	const int64_t now = 1700000000;
	static const struct {
		const char *in;
		int window;
		enum cr_err want;
	} c[] = {
		{ "1700000000", 300, CR_OK },
		{ "1700000300", 300, CR_OK },
		{ "1699999700", 300, CR_OK },
		{ "01700000000", 300, CR_OK },          /* digits only: zeros allowed */
		{ "1700000301", 300, CR_ERR_EXPIRED },
		{ "1699999699", 300, CR_ERR_EXPIRED },
		{ "1700000001", 0, CR_ERR_EXPIRED },
		{ "1700000000", -5, CR_OK },
		{ "0", 300, CR_ERR_EXPIRED },
		{ "9223372036854775807", 300, CR_ERR_EXPIRED }, /* INT64_MAX */
		{ "9999999999999999999", 300, CR_ERR_EXPIRED }, /* 19 digits, > INT64_MAX */
		{ "17000000000000000000", 300, CR_ERR_INVALID }, /* 20 digits */
		{ "+1700000000", 300, CR_ERR_INVALID },
		{ "-1700000000", 300, CR_ERR_INVALID },
		{ " 1700000000", 300, CR_ERR_INVALID },
		{ "1700000000 ", 300, CR_ERR_INVALID },
		{ "1700000000.5", 300, CR_ERR_INVALID },
		{ "1700000000000", 300, CR_ERR_EXPIRED }, /* milliseconds */
		{ "17e8", 300, CR_ERR_INVALID },
		{ "0x65", 300, CR_ERR_INVALID },
		{ "", 300, CR_ERR_INVALID },
		{ NULL, 300, CR_ERR_INVALID },
	};
	const char *reason;
	enum cr_err rc;
	size_t i;

	for (i = 0; i < sizeof(c) / sizeof(c[0]); i++) {
		reason = "untouched";
		rc = auth_check_timestamp(c[i].in, now, c[i].window, &reason);
		ck_assert_msg(rc == c[i].want, "timestamp \"%s\" = %s",
		    c[i].in ? c[i].in : "(null)", cr_strerror(rc));
		if (rc == CR_OK)
			ck_assert_ptr_null(reason);
		else
			ck_assert_ptr_nonnull(reason);
	}
	/* a clock near zero or a huge window does not overflow */
	ck_assert_int_eq(auth_check_timestamp("5", 0, 300, NULL), CR_OK);
	ck_assert_int_eq(auth_check_timestamp("9223372036854775807", 0, 2147483647,
	    NULL), CR_ERR_EXPIRED);
	ck_assert_int_eq(auth_check_timestamp("0", INT64_MAX, 300, NULL),
	    CR_ERR_EXPIRED);
}
END_TEST

/* --- suite ------------------------------------------------------------ */

static Suite *
auth_suite(void)
{
	Suite *s = suite_create("auth");
	TCase *tc;

	tc = tcase_create("b64");
	tcase_add_loop_test(tc, b64_known_vectors, 0,
	    sizeof(b64_vecs) / sizeof(b64_vecs[0]));
	tcase_add_test(tc, b64_round_trip_all_lengths);
	tcase_add_loop_test(tc, b64_refusals, 0,
	    sizeof(b64_bads) / sizeof(b64_bads[0]));
	tcase_add_test(tc, b64_sizes);
	suite_add_tcase(s, tc);

	tc = tcase_create("sha256");
	tcase_add_loop_test(tc, sha256_vectors, 0,
	    sizeof(sha_vecs) / sizeof(sha_vecs[0]));
	tcase_add_test(tc, sha256_million_a_incremental);
	suite_add_tcase(s, tc);

	tc = tcase_create("canonical");
	tcase_add_test(tc, canonical_full);
	tcase_add_test(tc, canonical_sparse);
	tcase_add_test(tc, canonical_edges);
	suite_add_tcase(s, tc);

	tc = tcase_create("ed25519");
	tcase_set_timeout(tc, 60);
	tcase_add_loop_test(tc, ed25519_rfc8032, 0,
	    sizeof(rfc_vecs) / sizeof(rfc_vecs[0]));
	tcase_add_test(tc, sign_verify_and_refusals);
	tcase_add_test(tc, pubkey_b64url);
	tcase_add_test(tc, request_sign_verify);
	tcase_add_test(tc, shared_pubkey_threads);
	suite_add_tcase(s, tc);

	tc = tcase_create("files_and_openssl");
	tcase_set_timeout(tc, 120);
	tcase_add_unchecked_fixture(tc, tmp_setup, tmp_teardown);
	tcase_add_test(tc, key_files);
	tcase_add_test(tc, openssl_signs_we_verify);
	tcase_add_test(tc, we_sign_openssl_verifies);
	tcase_add_test(tc, foreign_key_types_refused);
	suite_add_tcase(s, tc);

	tc = tcase_create("rules");
	tcase_add_test(tc, rule_agent_and_correlation_id);
	tcase_add_test(tc, rule_nonce);
	tcase_add_test(tc, rule_idempotency_key);
	tcase_add_test(tc, rule_priority);
	tcase_add_test(tc, rule_ttl);
	tcase_add_test(tc, rule_timestamp);
	suite_add_tcase(s, tc);
	return s;
}

int
main(void)
{
	SRunner *sr = srunner_create(auth_suite());
	int failed;

	srunner_run_all(sr, CK_NORMAL);
	failed = srunner_ntests_failed(sr);
	srunner_free(sr);
	return failed == 0 ? EXIT_SUCCESS : EXIT_FAILURE;
}
