/*
 * notifier_kv.c - status record writes on the wire, pipelined.
 *
 * A KV write is a JetStream publish on "$KV.<bucket>.<key>" whose ack says
 * the new revision; compare-and-set is the header
 * Nats-Expected-Last-Subject-Sequence (0: the key must not exist). nats.c's
 * kvStore_Create/Update send one such publish and block for its ack: a
 * round trip, two thread hand-offs and a socket write per message in the
 * notifier, and one read, one ack write and one goroutine wake-up per
 * message in nats-server. ntf_kv_send publishes the same message on the
 * buffered connection without waiting, so the writes a shard takes at once
 * leave in one socket write and their acks come back together.
 *
 * Each write's reply subject is "<inbox>.<shard>.<write id>"; on_ack (the
 * reply subscription's nats.c thread) parses the ack and hands the result
 * to ntf_shards_acked; the writer keeps the timeouts. (The bus's windowed
 * request cannot carry the CAS header, and nats.c's js_PublishMsgAsync
 * tells its ack handler the message, not the write, and parses every ack
 * into allocated structures.) Reads, and the rare write that needs a read
 * first, stay synchronous, in notifier_shard.c, through nats.c's kvStore.
 *
 * Threads: ntf_kv_open/ntf_kv_close on the main thread (before the writers
 * start, after they stopped); ntf_kv_send from the writer threads (nats.c
 * publishes are thread-safe); on_ack on the subscription's thread.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "log.h"
#include "ntf.h"
#include "status.h"
#include "util.h"

#define CAS_HEADER "Nats-Expected-Last-Subject-Sequence"

/* ack body -> revision; 0 and *conflict set when it reports an error */
static uint64_t
parse_ack(const char *data, int len, int *conflict)
{
	char buf[512];
	const char *p;
	size_t n = len > 0 ? (size_t)len : 0;

	*conflict = 0;
	if (n >= sizeof(buf))
		n = sizeof(buf) - 1;
	memcpy(buf, data, n);
	buf[n] = '\0';
	/* {"stream":"KV_x","seq":12} or {"error":{"code":400,"err_code":10071,
	 * "description":"wrong last sequence: 11"},...} */
	if (strstr(buf, "\"error\"") != NULL) {
		*conflict = strstr(buf, "wrong last sequence") != NULL;
		return 0;
	}
	p = strstr(buf, "\"seq\":");
	return p != NULL ? strtoull(p + 6, NULL, 10) : 0;
}

static void
on_ack(natsConnection *nc, natsSubscription *sub, natsMsg *msg, void *closure)
{
	struct ntf *n = closure;
	const char *subj = natsMsg_GetSubject(msg);
	size_t il = strlen(n->kv_inbox);
	char *end;
	unsigned long shard;
	uint64_t wid, rev = 0;
	int conflict = 0;

	if (strncmp(subj, n->kv_inbox, il) != 0 || subj[il] != '.')
		goto out;
	shard = strtoul(subj + il + 1, &end, 10);
	if (*end != '.' || shard >= n->nshards)
		goto out;
	wid = strtoull(end + 1, NULL, 10);
	if (natsMsg_IsNoResponders(msg))	/* no JetStream behind the subject */
		log_warn(NULL, "status write: no responders on %s*", n->kv_prefix);
	else
		rev = parse_ack(natsMsg_GetData(msg), natsMsg_GetDataLength(msg), &conflict);
	ntf_shards_acked(n, (unsigned)shard, wid, rev, conflict);
out:
	natsMsg_Destroy(msg);
}

/* ntf_kv_open - the reply inbox of async writes, on the buffered connection */
int
ntf_kv_open(struct ntf *n)
{
	char rand[24], wild[96];
	natsStatus s;

	n->kv_nc = bus_nc_bulk(n->bus);
	rand_hex(rand, 11);
	snprintf(n->kv_inbox, sizeof(n->kv_inbox), "_INBOX.ntf%s", rand);
	snprintf(n->kv_prefix, sizeof(n->kv_prefix), "$KV.%s.", STATUS_BUCKET);
	snprintf(wild, sizeof(wild), "%s.>", n->kv_inbox);
	s = natsConnection_Subscribe(&n->kv_sub, n->kv_nc, wild, on_ack, n);
	if (s == NATS_OK)	/* an ack is never dropped as a slow consumer */
		s = natsSubscription_SetPendingLimits(n->kv_sub, -1, -1);
	if (s != NATS_OK) {
		log_error(NULL, "status write inbox: %s", natsStatus_GetText(s));
		return -1;
	}
	return 0;
}

/* ntf_kv_close - stop the reply subscription once its handler has returned
 * for the last time (the writers have stopped); idempotent */
void
ntf_kv_close(struct ntf *n)
{
	if (n->kv_sub == NULL)
		return;
	natsSubscription_Unsubscribe(n->kv_sub);
	natsSubscription_Drain(n->kv_sub);
	natsSubscription_WaitForDrainCompletion(n->kv_sub, 2000);
	natsSubscription_Destroy(n->kv_sub);
	n->kv_sub = NULL;
}

/* ntf_kv_send - publish a packed StatusRecord (borrowed) as key's value if
 * its last revision is rev (0: if it does not exist); the ack arrives at
 * ntf_shards_acked(shard, wid) */
enum cr_err
ntf_kv_send(struct ntf *n, unsigned shard, uint64_t wid, const char *key, uint64_t rev,
    const void *buf, size_t len)
{
	char subj[600], reply[128], revtxt[24];
	natsMsg *m = NULL;
	natsStatus s;

	if ((size_t)snprintf(subj, sizeof(subj), "%s%s", n->kv_prefix, key) >= sizeof(subj))
		return CR_ERR_TOO_BIG;
	snprintf(reply, sizeof(reply), "%s.%u.%llu", n->kv_inbox, shard, (unsigned long long)wid);
	snprintf(revtxt, sizeof(revtxt), "%llu", (unsigned long long)rev);
	s = natsMsg_Create(&m, subj, reply, buf, (int)len);
	if (s == NATS_OK)
		s = natsMsgHeader_Set(m, CAS_HEADER, revtxt);
	if (s == NATS_OK)
		s = natsConnection_PublishMsg(n->kv_nc, m);
	natsMsg_Destroy(m);
	return s == NATS_OK ? CR_OK : bus_err(s);
}
