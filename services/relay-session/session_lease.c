/*
 * session_lease.c - partition leases in the KV bucket clawrelay_leases.
 *
 * Key "p<p>" holds the owner's instance id; the bucket's TTL is the lease
 * time, so a key nobody renews disappears (silently) LEASE_MS after its last
 * write. A replica:
 *   - renews each lease it holds every LEASE_MS/3 with kvStore_Update on the
 *     last revision; a compare-and-set failure means another replica holds
 *     it now: the partition is closed at once;
 *   - stops serving a partition by itself when it could not renew for
 *     5/6 of the lease time (NATS unreachable), before anyone else can take
 *     it over (the key expires only after the full lease time);
 *   - announces itself every pass with a key "m.<fnv1a32(instance), hex>"
 *     (the bucket's TTL drops it a lease time after the replica stops), so
 *     that a replica holding no lease yet is counted too;
 *   - takes free keys with kvStore_Create, at most ceil(P / replicas seen)
 *     of them, unless a key has stayed free for more than a lease time
 *     (then anyone takes it: takeover after a crash never waits for
 *     fairness);
 *   - holding more than ceil(P / replicas seen), gives one partition back
 *     per pass (closes it, deletes its key), so a replica that started
 *     later, or was scaled up, gets its share from one that took them all;
 *   - takes back at once a key holding its own instance id (a restart
 *     with the same CLAWRELAY_INSTANCE), by compare-and-set;
 *   - on drain, closes its partitions and deletes their keys (and its
 *     member key) so another replica can take them over immediately.
 * Everything here runs on the main thread (tick, drain).
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "log.h"
#include "session.h"
#include "util.h"

#define LEASE_BUCKET "clawrelay_leases"
#define MAX_HOLDERS 64
#define MEMBER_PREFIX "m."

static int
transient(natsStatus st)
{
	return st == NATS_TIMEOUT || st == NATS_CONNECTION_CLOSED ||
	    st == NATS_CONNECTION_DISCONNECTED || st == NATS_NO_SERVER ||
	    st == NATS_STALE_CONNECTION || st == NATS_NOT_YET_CONNECTED ||
	    st == NATS_NO_RESPONDERS;
}

static void
lose(struct session *s, struct session_part *pp, const char *why)
{
	log_warn(NULL, "partition %u: lease lost (%s): stopping", pp->idx, why);
	pp->leased = 0;
	session_part_close(s, pp);
}

static void
renew(struct session *s, struct session_part *pp, uint64_t now)
{
	const char *inst = svc_instance(s->svc);
	char key[16];
	uint64_t rev = 0;
	natsStatus st;

	snprintf(key, sizeof(key), "p%u", pp->idx);
	st = kvStore_Update(&rev, s->leases, key, inst, (int)strlen(inst), pp->lease_rev);
	if (st == NATS_OK) {
		pp->lease_rev = rev;
		pp->lease_ok = now;
		return;
	}
	if (!transient(st)) {
		lose(s, pp, nats_GetLastError(NULL));
		return;
	}
	if (now - pp->lease_ok >= (uint64_t)s->cfg.lease_ms * 5 / 6)
		lose(s, pp, "cannot renew in time");
}

static int
holder_add(char holders[][128], int n, const char *v, size_t len)
{
	if (len >= 128)
		len = 127;
	for (int i = 0; i < n; i++)
		if (strlen(holders[i]) == len && memcmp(holders[i], v, len) == 0)
			return n;
	if (n >= MAX_HOLDERS)
		return n;
	memcpy(holders[n], v, len);
	holders[n][len] = '\0';
	return n + 1;
}

/* Announce this replica and count the replicas announced (itself included);
 * -1 when the bucket does not answer. */
static int
members(struct session *s)
{
	const char *inst = svc_instance(s->svc);
	kvKeysList kl = { 0 };
	char key[16];
	uint64_t rev = 0;
	int n = 0;

	snprintf(key, sizeof(key), MEMBER_PREFIX "%08x", (unsigned)fnv1a32(inst));
	if (kvStore_Put(&rev, s->leases, key, inst, (int)strlen(inst)) != NATS_OK)
		return -1;
	if (kvStore_Keys(&kl, s->leases, NULL) != NATS_OK)
		return -1;
	for (int i = 0; i < kl.Count; i++)
		if (strncmp(kl.Keys[i], MEMBER_PREFIX, strlen(MEMBER_PREFIX)) == 0)
			n++;
	kvKeysList_Destroy(&kl);
	return n;
}

/* Close pp and delete its key if it still holds our instance id (a CAS
 * delete is not in nats.c 3.4, so the holder is checked first). */
static void
give_back(struct session *s, struct session_part *pp)
{
	const char *inst = svc_instance(s->svc);
	kvEntry *ent = NULL;
	char key[16];

	session_part_close(s, pp);
	pp->leased = 0;
	if (s->leases == NULL)
		return;
	snprintf(key, sizeof(key), "p%u", pp->idx);
	if (kvStore_Get(&ent, s->leases, key) == NATS_OK) {
		if ((size_t)kvEntry_ValueLen(ent) == strlen(inst) &&
		    memcmp(kvEntry_Value(ent), inst, strlen(inst)) == 0)
			kvStore_Delete(s->leases, key);
		kvEntry_Destroy(ent);
	}
}

static void
acquire(struct session *s, uint64_t now)
{
	const char *inst = svc_instance(s->svc);
	static char holders[MAX_HOLDERS][128];
	int nh = 0, freeidx[1024], nfree = 0;
	uint32_t owned = 0, target;
	int nm = members(s);

	for (uint32_t p = 0; p < s->nparts; p++) {
		struct session_part *pp = &s->parts[p];
		char key[16];
		kvEntry *ent = NULL;
		natsStatus st;

		if (pp->leased) {
			owned++;
			continue;
		}
		snprintf(key, sizeof(key), "p%u", p);
		st = kvStore_Get(&ent, s->leases, key);
		if (st == NATS_OK) {
			const char *v = kvEntry_Value(ent);
			int vl = kvEntry_ValueLen(ent);
			uint64_t rev = 0;

			pp->free_since = 0;
			if ((size_t)vl == strlen(inst) && memcmp(v, inst, (size_t)vl) == 0) {
				/* ours from before a restart (instance ids are unique
				 * per replica): take it back now, by CAS */
				if (kvStore_Update(&rev, s->leases, key, inst, vl,
				    kvEntry_Revision(ent)) == NATS_OK) {
					pp->leased = 1;
					pp->lease_rev = rev;
					pp->lease_ok = mono_ms();
					if (session_part_open(s, pp) == CR_OK) {
						owned++;
						renew(s, pp, mono_ms());
					} else {
						kvStore_Delete(s->leases, key);
						pp->leased = 0;
					}
				}
			} else if (vl > 0) {
				nh = holder_add(holders, nh, v, (size_t)vl);
			}
			kvEntry_Destroy(ent);
		} else if (st == NATS_NOT_FOUND) {
			if (pp->free_since == 0)
				pp->free_since = now;
			if (nfree < 1024)
				freeidx[nfree++] = (int)p;
		} else {
			return;	/* bus trouble: try again next pass */
		}
	}
	/* replicas holding no lease count too (announced, not holders) */
	if (nm - 1 > nh)
		nh = nm - 1;
	s->others_seen = (uint32_t)nh;
	target = (s->nparts + (uint32_t)nh) / (uint32_t)(nh + 1);
	if (owned > target) {
		/* more than a fair share while another replica has less: give
		 * the highest one back; that replica takes it on its next pass
		 * (if none does within a lease time, anyone may again) */
		for (uint32_t p = s->nparts; p-- > 0;) {
			if (s->parts[p].leased) {
				log_info(NULL, "partition %u: handing over (%u held, %u replicas: %u each)",
				    p, owned, (unsigned)nh + 1, target);
				give_back(s, &s->parts[p]);
				s->parts[p].free_since = now;
				break;
			}
		}
		return;
	}
	for (int i = 0; i < nfree; i++) {
		struct session_part *pp = &s->parts[freeidx[i]];
		char key[16];
		uint64_t rev = 0;
		natsStatus st;

		if (owned >= target && now - pp->free_since <= (uint64_t)s->cfg.lease_ms)
			continue;
		snprintf(key, sizeof(key), "p%u", pp->idx);
		st = kvStore_Create(&rev, s->leases, key, inst, (int)strlen(inst));
		if (st != NATS_OK)
			continue;	/* someone else was faster */
		pp->leased = 1;
		pp->lease_rev = rev;
		pp->lease_ok = mono_ms();
		pp->free_since = 0;
		if (session_part_open(s, pp) != CR_OK) {
			/* give it back so another replica may serve it */
			kvStore_Delete(s->leases, key);
			pp->leased = 0;
			continue;
		}
		owned++;
		/* the open may have taken a while: renew before the next one */
		renew(s, pp, mono_ms());
	}
}

/* session_lease_tick - renew held leases, drop lost ones, take free ones */
void
session_lease_tick(struct session *s)
{
	uint64_t now = mono_ms();

	if (s->leases == NULL) {
		if (bus_kv(s->bus, LEASE_BUCKET, 1, s->cfg.lease_ms, &s->leases) != CR_OK) {
			s->leases = NULL;
			return;
		}
	}
	if (now < s->lease_next)
		return;
	s->lease_next = now + (uint64_t)s->cfg.lease_ms / 3;
	for (uint32_t p = 0; p < s->nparts; p++)
		if (s->parts[p].leased)
			renew(s, &s->parts[p], now);
	if (!svc_stopping(s->svc))
		acquire(s, now);
}

/* session_lease_release_all - close every partition and give its lease back */
void
session_lease_release_all(struct session *s)
{
	for (uint32_t p = 0; p < s->nparts; p++)
		if (s->parts[p].leased)
			give_back(s, &s->parts[p]);
	if (s->leases != NULL) {
		/* no longer a member: the others' fair share grows at once,
		 * so a replica restarted in our place takes every partition
		 * without waiting for our key to expire */
		char key[16];
		snprintf(key, sizeof(key), MEMBER_PREFIX "%08x", (unsigned)fnv1a32(svc_instance(s->svc)));
		kvStore_Delete(s->leases, key);
	}
}
