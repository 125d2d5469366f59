/*
 * cli_books.c - `clawrelay accounting`: the books of every partition, from
 * whichever relay-session replica owns it (<P>.session.<p>.books), summed,
 * and whether they balance: accepted = delivered + failed + queued. Exit 0
 * when every partition answered and balances, 1 otherwise.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cJSON.h>

#include "cli.h"
#include "env.h"

#define NREASONS 6	/* FailureReason values */

static void
accounting_help(FILE *f)
{
	fprintf(f, "usage: clawrelay accounting [--partitions N] [--json]\n"
	    "Asks the relay-session replica that owns each partition (N: --partitions,\n"
	    "CLAWRELAY_PARTITIONS or 16) for its books: messages accepted, delivered,\n"
	    "failed by reason and still queued, kept with the queue in the same commits.\n"
	    "Prints each partition and the sum; says whether accepted = delivered +\n"
	    "failed + queued holds everywhere. Exit 1 if a partition did not answer or\n"
	    "its books do not balance. --json prints one JSON document.\n");
}

struct sum {
	uint64_t accepted, delivered, queued, failed[NREASONS], failed_all;
};

static void
sum_json(cJSON *o, const struct sum *s)
{
	cJSON *f = cJSON_AddObjectToObject(o, "failed");
	cJSON_AddNumberToObject(o, "accepted", (double)s->accepted);
	cJSON_AddNumberToObject(o, "delivered", (double)s->delivered);
	for (int r = 1; r < NREASONS; r++)
		cJSON_AddNumberToObject(f, env_failure_reason_name(r), (double)s->failed[r]);
	cJSON_AddNumberToObject(o, "failedTotal", (double)s->failed_all);
	cJSON_AddNumberToObject(o, "queued", (double)s->queued);
	cJSON_AddBoolToObject(o, "balanced", s->accepted == s->delivered + s->failed_all + s->queued);
}

/* cli_cmd_accounting - sum the books of every partition */
int
cli_cmd_accounting(struct cli_ctx *c, int argc, char **argv)
{
	const char *parts = NULL;
	int npos = 0, rc, json = 0, missing = 0, unbalanced = 0;
	struct cli_opt opts[] = { { "--json", 0, NULL, &json }, { "--partitions", 1, &parts, NULL } };
	uint64_t np = 16;
	struct sum tot;
	struct bus *b;
	cJSON *doc = cJSON_CreateObject(), *arr = cJSON_AddArrayToObject(doc, "partitions");

	rc = cli_parse(c, argc, argv, opts, 2, NULL, 0, &npos);
	if (rc == -1) {
		accounting_help(stdout);
		rc = CLI_OK;
		goto out;
	}
	if (rc != CLI_OK)
		goto out;
	if (parts == NULL)
		parts = getenv("CLAWRELAY_PARTITIONS");
	if (parts != NULL && cli_parse_uint(parts, 1, 4096, &np) != 0) {
		rc = cli_usage_err("accounting", "--partitions must be 1-4096");
		goto out;
	}
	if ((b = cli_bus(c)) == NULL) {
		rc = CLI_FAIL;
		goto out;
	}
	memset(&tot, 0, sizeof(tot));
	for (uint32_t p = 0; p < (uint32_t)np; p++) {
		char subj[160];
		natsMsg *reply = NULL;
		ProtobufCMessage *m = NULL;
		enum cr_err e;
		cJSON *po = cJSON_CreateObject();

		cJSON_AddNumberToObject(po, "partition", p);
		cJSON_AddItemToArray(arr, po);
		if (bus_subj(b, subj, sizeof(subj), "session.%u.books", p) < 0) {
			rc = cli_err("subject prefix too long");
			goto out;
		}
		e = bus_request(b, subj, "", 0, c->timeout_ms, &reply);
		if (e == CR_OK)
			e = env_unpack_msg(&clawrelay__v1__books__descriptor, natsMsg_GetData(reply),
			    (size_t)natsMsg_GetDataLength(reply), &m);
		natsMsg_Destroy(reply);
		if (e != CR_OK) {
			missing++;
			cJSON_AddStringToObject(po, "error", e == CR_ERR_UNAVAILABLE ?
			    "no relay-session owns it" : cr_strerror(e));
			if (!json)
				printf("partition %3u  no answer (%s)\n", p, e == CR_ERR_UNAVAILABLE ?
				    "no relay-session owns it" : cr_strerror(e));
			continue;
		}
		const Books *bk = (const Books *)m;
		struct sum s;
		memset(&s, 0, sizeof(s));
		s.accepted = bk->accepted;
		s.delivered = bk->delivered;
		s.queued = bk->queued;
		for (size_t r = 0; r < bk->n_failed && r < NREASONS; r++) {
			s.failed[r] = bk->failed[r];
			s.failed_all += bk->failed[r];
		}
		sum_json(po, &s);
		cJSON_AddStringToObject(po, "instance", bk->instance ? bk->instance : "");
		int ok = s.accepted == s.delivered + s.failed_all + s.queued;
		unbalanced += !ok;
		if (!json)
			printf("partition %3u  accepted %llu = delivered %llu + failed %llu + queued %llu"
			    "%s  (%s)\n", p, (unsigned long long)s.accepted,
			    (unsigned long long)s.delivered, (unsigned long long)s.failed_all,
			    (unsigned long long)s.queued, ok ? "" : "  DOES NOT BALANCE",
			    bk->instance ? bk->instance : "");
		tot.accepted += s.accepted;
		tot.delivered += s.delivered;
		tot.queued += s.queued;
		tot.failed_all += s.failed_all;
		for (int r = 0; r < NREASONS; r++)
			tot.failed[r] += s.failed[r];
		protobuf_c_message_free_unpacked(m, NULL);
	}
	cJSON *t = cJSON_AddObjectToObject(doc, "total");
	sum_json(t, &tot);
	cJSON_AddNumberToObject(doc, "partitionsAnswered", (double)np - missing);
	cJSON_AddNumberToObject(doc, "partitionsMissing", missing);
	cJSON_AddBoolToObject(doc, "balanced", missing == 0 && unbalanced == 0);
	if (json) {
		char *txt = cJSON_Print(doc);
		printf("%s\n", txt ? txt : "{}");
		free(txt);
	} else {
		printf("total          accepted %llu = delivered %llu + failed %llu + queued %llu\n",
		    (unsigned long long)tot.accepted, (unsigned long long)tot.delivered,
		    (unsigned long long)tot.failed_all, (unsigned long long)tot.queued);
		printf("failed         ");
		for (int r = 1; r < NREASONS; r++)
			printf("%s %llu%s", env_failure_reason_name(r), (unsigned long long)tot.failed[r],
			    r + 1 < NREASONS ? ", " : "\n");
		if (missing == 0 && unbalanced == 0)
			printf("the books balance (%llu partitions)\n", (unsigned long long)np);
		else
			printf("the books DO NOT balance: %d partition(s) did not answer, %d do not "
			    "balance\n", missing, unbalanced);
	}
	rc = missing == 0 && unbalanced == 0 ? CLI_OK : CLI_FAIL;
out:
	cJSON_Delete(doc);
	return rc;
}
