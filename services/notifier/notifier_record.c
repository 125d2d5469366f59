/*
 * notifier_record.c - the StatusRecord fold: state order, merging a delta
 * into a record, conversion to and from the protobuf, and the record's KV
 * key. Pure functions, safe from any thread.
 *
 * Order: accepted < queued < dispatched < delivered < processed < failed.
 * A record's state is the highest state it has a time for, so a late or
 * duplicated receipt never moves it back and nothing follows failed.
 * history lists each state reached once, in that order, with its first time.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "ntf.h"
#include "util.h"

static const char *const state_names[NTF_NSTATES] = {
	"accepted", "queued", "dispatched", "delivered", "processed", "failed",
};

/* ntf_state_rank - state name to enum ntf_state; -1 if unknown */
int
ntf_state_rank(const char *name)
{
	for (int i = 0; i < NTF_NSTATES; i++)
		if (name != NULL && strcmp(name, state_names[i]) == 0)
			return i;
	return -1;
}

/* ntf_state_name - enum ntf_state to its name */
const char *
ntf_state_name(int rank)
{
	return rank >= 0 && rank < NTF_NSTATES ? state_names[rank] : "";
}

/* ntf_rec_init - empty record */
void
ntf_rec_init(struct ntf_rec *r)
{
	memset(r, 0, sizeof(*r));
	r->failure_reason = -1;
}

/* ntf_rec_state - highest state reached, -1 if none */
int
ntf_rec_state(const struct ntf_rec *r)
{
	for (int i = NTF_NSTATES - 1; i >= 0; i--)
		if (r->at[i] != 0)
			return i;
	return -1;
}

/* ntf_copy - src into dst (sz bytes), cut to fit; snprintf's formatting
 * cost several times as much, four times per receipt */
void
ntf_copy(char *dst, size_t sz, const char *src)
{
	size_t n = strlen(src);

	if (n >= sz)
		n = sz - 1;
	memcpy(dst, src, n);
	dst[n] = '\0';
}

static int
fill(char *dst, size_t sz, const char *src)
{
	if (dst[0] != '\0' || src[0] == '\0')
		return 0;
	ntf_copy(dst, sz, src);
	return 1;
}

/* ntf_rec_merge - fold delta d into r; 1 if r changed */
int
ntf_rec_merge(struct ntf_rec *r, const struct ntf_rec *d)
{
	int changed = 0;
	int failed = r->at[NTF_FAILED] != 0;

	changed |= fill(r->correlation_id, sizeof(r->correlation_id), d->correlation_id);
	changed |= fill(r->message_id, sizeof(r->message_id), d->message_id);
	changed |= fill(r->sender, sizeof(r->sender), d->sender);
	changed |= fill(r->recipient, sizeof(r->recipient), d->recipient);
	for (int i = 0; i < NTF_NSTATES; i++) {
		if (d->at[i] == 0)
			continue;
		/* after failed, only states reached before the failure (late
		 * receipts) are still recorded; the state stays failed */
		if (failed && i != NTF_FAILED && d->at[i] >= r->at[NTF_FAILED])
			continue;
		if (r->at[i] == 0 || d->at[i] < r->at[i]) {
			r->at[i] = d->at[i];
			changed = 1;
		}
	}
	if (d->attempts > r->attempts) {
		r->attempts = d->attempts;
		changed = 1;
	}
	if (d->failure_reason >= 0 && r->failure_reason < 0) {
		r->failure_reason = d->failure_reason;
		changed = 1;
	}
	if (d->last_error[0] != '\0' && strcmp(d->last_error, r->last_error) != 0 &&
	    !(failed && r->last_error[0] != '\0')) {
		ntf_copy(r->last_error, sizeof(r->last_error), d->last_error);
		changed = 1;
	}
	if (d->updated_at_ms > r->updated_at_ms && changed)
		r->updated_at_ms = d->updated_at_ms;
	return changed;
}

/* ntf_rec_from_proto - decode a StatusRecord into r */
void
ntf_rec_from_proto(struct ntf_rec *r, const StatusRecord *p)
{
	ntf_rec_init(r);
	ntf_copy(r->correlation_id, sizeof(r->correlation_id), p->correlation_id);
	ntf_copy(r->message_id, sizeof(r->message_id), p->message_id);
	ntf_copy(r->sender, sizeof(r->sender), p->sender);
	ntf_copy(r->recipient, sizeof(r->recipient), p->recipient);
	for (size_t i = 0; i < p->n_history; i++) {
		int k = p->history[i] ? ntf_state_rank(p->history[i]->state) : -1;
		if (k >= 0 && (r->at[k] == 0 || p->history[i]->at_ms < r->at[k]))
			r->at[k] = p->history[i]->at_ms ? p->history[i]->at_ms : 1;
	}
	int k = ntf_state_rank(p->state);
	if (k >= 0 && r->at[k] == 0)
		r->at[k] = p->updated_at_ms ? p->updated_at_ms : 1;
	r->attempts = p->attempts;
	ntf_copy(r->last_error, sizeof(r->last_error), p->last_error);
	for (int i = 0; i < 16 && p->failure_reason[0]; i++) {
		if (strcmp(env_failure_reason_name(i), p->failure_reason) == 0) {
			r->failure_reason = i;
			break;
		}
	}
	r->updated_at_ms = p->updated_at_ms;
}

/* ntf_rec_pack - r as a packed StatusRecord into buf */
enum cr_err
ntf_rec_pack(const struct ntf_rec *r, void *buf, size_t cap, size_t *len)
{
	StatusRecord p = CLAWRELAY__V1__STATUS_RECORD__INIT;
	StateTime st[NTF_NSTATES];
	StateTime *hist[NTF_NSTATES];
	size_t n = 0;

	p.schema_version = ENV_SCHEMA;
	p.message_id = (char *)(uintptr_t)r->message_id;
	p.correlation_id = (char *)(uintptr_t)r->correlation_id;
	p.sender = (char *)(uintptr_t)r->sender;
	p.recipient = (char *)(uintptr_t)r->recipient;
	p.state = (char *)(uintptr_t)ntf_state_name(ntf_rec_state(r));
	for (int i = 0; i < NTF_NSTATES; i++) {
		if (r->at[i] == 0)
			continue;
		clawrelay__v1__state_time__init(&st[n]);
		st[n].state = (char *)(uintptr_t)state_names[i];
		st[n].at_ms = r->at[i];
		hist[n] = &st[n];
		n++;
	}
	p.n_history = n;
	p.history = hist;
	p.attempts = r->attempts;
	p.last_error = (char *)(uintptr_t)r->last_error;
	p.failure_reason = (char *)(uintptr_t)(r->failure_reason >= 0
	    ? env_failure_reason_name(r->failure_reason) : "");
	p.updated_at_ms = r->updated_at_ms;
	return env_pack_into(&p.base, buf, cap, len);
}

