/*
 * err.c - names of the project's error codes.
 */
#include <stddef.h>

#include "err.h"

static const char *const names[CR_ERR__COUNT] = {
	[CR_OK] = "ok",
	[CR_ERR_NOMEM] = "out_of_memory",
	[CR_ERR_INVALID] = "invalid",
	[CR_ERR_TOO_BIG] = "too_big",
	[CR_ERR_NOT_FOUND] = "not_found",
	[CR_ERR_EXISTS] = "exists",
	[CR_ERR_AUTH] = "auth",
	[CR_ERR_EXPIRED] = "expired",
	[CR_ERR_REPLAY] = "replay",
	[CR_ERR_FORBIDDEN] = "forbidden",
	[CR_ERR_CONFLICT] = "conflict",
	[CR_ERR_FULL] = "full",
	[CR_ERR_RATE] = "rate_limited",
	[CR_ERR_TIMEOUT] = "timeout",
	[CR_ERR_UNAVAILABLE] = "unavailable",
	[CR_ERR_IO] = "io",
	[CR_ERR_BUS] = "bus",
	[CR_ERR_CRYPTO] = "crypto",
	[CR_ERR_VERSION] = "version",
	[CR_ERR_INTERNAL] = "internal",
};

/* cr_strerror - stable name of an error code; never NULL */
const char *
cr_strerror(enum cr_err e)
{
	if ((int)e < 0 || e >= CR_ERR__COUNT || names[e] == NULL)
		return "unknown";
	return names[e];
}
