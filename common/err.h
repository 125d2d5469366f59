/*
 * err.h - the project's one error enum.
 *
 * Every function that can fail returns an enum cr_err: CR_OK (0) or a named
 * failure. Library results (nats.c, LMDB, civetweb, OpenSSL) are converted at
 * the boundary; cr_strerror() gives a stable lower-case name for logs.
 */
#ifndef CR_ERR_H
#define CR_ERR_H

enum cr_err {
	CR_OK = 0,
	CR_ERR_NOMEM,       /* allocation failed */
	CR_ERR_INVALID,     /* bad input from a peer or a caller */
	CR_ERR_TOO_BIG,     /* over a hard size limit */
	CR_ERR_NOT_FOUND,
	CR_ERR_EXISTS,
	CR_ERR_AUTH,        /* proof missing or wrong */
	CR_ERR_EXPIRED,     /* timestamp or message out of its window */
	CR_ERR_REPLAY,      /* nonce seen before */
	CR_ERR_FORBIDDEN,   /* pair not trusted */
	CR_ERR_CONFLICT,
	CR_ERR_FULL,        /* queue or buffer full */
	CR_ERR_RATE,        /* rate limited */
	CR_ERR_TIMEOUT,
	CR_ERR_UNAVAILABLE, /* peer not reachable / no responders */
	CR_ERR_IO,          /* storage or socket failure */
	CR_ERR_BUS,         /* NATS failure */
	CR_ERR_CRYPTO,
	CR_ERR_VERSION,     /* unknown schema version */
	CR_ERR_INTERNAL,
	CR_ERR__COUNT
};

/* cr_strerror - stable name of an error code; never NULL */
const char *cr_strerror(enum cr_err e);

#endif
