/*
 * conn_class.c - answer classes of the connector's boundaries (see
 * conn_class.h). Pure: no state, any thread.
 */
#include "conn_class.h"

/* conn_hook_classify - what the hook's answer means for the message */
enum conn_hook_answer conn_hook_classify(long status)
{
	if (status >= 200 && status < 300)
		return CONN_HOOK_TAKEN;
	if (status == 0 || status == 408 || status == 429 || status == 502 || status == 503 ||
	    status == 504)
		return CONN_HOOK_UNAVAILABLE;
	return CONN_HOOK_REFUSED;
}

/* conn_hook_brk_ok - a success for the hook breaker? */
int conn_hook_brk_ok(long status)
{
	if (status >= 200 && status < 300)
		return 1;
	return status >= 400 && status < 500 && status != 408 && status != 429;
}

/* conn_out_classify - what the gateway's answer means */
enum conn_out_class conn_out_classify(int status, int bare, int local_error, int expired)
{
	if (expired)
		return CONN_OUT_EXPIRED;
	if (status >= 200 && status < 300)
		return CONN_OUT_OK;
	if (local_error)
		return CONN_OUT_REFUSED;
	if (status == 0 || (status >= 500 && status != 507))
		return CONN_OUT_RETRY;
	if (status == 429 || status == 507 || status == 408)
		return CONN_OUT_LATER;
	/* every refusal of the gateway is a JSON error; a bare 404 is e.g. a
	 * gateway whose routes are not registered yet */
	return bare ? CONN_OUT_RETRY : CONN_OUT_REFUSED;
}
