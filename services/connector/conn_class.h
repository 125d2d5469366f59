/*
 * conn_class.h - what an answer means at the connector's two boundaries
 * (pure functions, no connector state; the unit tests link conn_class.c
 * alone). The rules are explained in conn_hook.c and conn_outbox.c.
 */
#ifndef CONN_CLASS_H
#define CONN_CLASS_H

/* the hook's answer, for the message */
enum conn_hook_answer {
	CONN_HOOK_TAKEN = 0,         /* 2xx */
	CONN_HOOK_UNAVAILABLE,       /* no answer (0), 408, 429, 502, 503, 504: not now; no attempt used */
	CONN_HOOK_REFUSED            /* anything else: the hook failed the message; one attempt used */
};

/* the gateway's answer to an outbound message */
enum conn_out_class {
	CONN_OUT_OK = 0,             /* 2xx: queued (202) or a duplicate (200) */
	CONN_OUT_RETRY,              /* no answer, timeout, 5xx other than 507: the gateway
	                                (or the relay behind it) is unavailable; breaker failure */
	CONN_OUT_LATER,              /* 408, 429, 507: the recipient cannot take it now */
	CONN_OUT_REFUSED,            /* other 4xx with the gateway's JSON error (and our own
	                                failure to build the request) */
	CONN_OUT_EXPIRED             /* past its expiry, not sent */
};

/* conn_hook_classify - status 0 = no answer (transport error, timeout) */
enum conn_hook_answer conn_hook_classify(long status);
/* conn_hook_brk_ok - does the answer count as a success for the hook breaker?
 * 2xx and 4xx other than 408/429 (the hook is up); not 5xx, 408, 429, none */
int conn_hook_brk_ok(long status);
/* conn_out_classify - status 0 = no answer; bare = the answer had no
 * {"error": {"code": ...}} body, so it did not come from the gateway's own
 * handlers (a server still starting, a proxy): a bare 4xx is not a refusal
 * but unavailability; local_error = the request could not be built;
 * expired = not sent because its expiry passed */
enum conn_out_class conn_out_classify(int status, int bare, int local_error, int expired);

#endif
