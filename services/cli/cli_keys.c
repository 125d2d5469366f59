/*
 * cli_keys.c - `clawrelay keygen` and `clawrelay subject`: local commands
 * that need neither NATS nor the gateway. Main thread only.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "auth.h"
#include "cli.h"
#include "util.h"

static void
keygen_help(FILE *f)
{
	fprintf(f,
	    "usage: clawrelay keygen --out <prefix>\n"
	    "\n"
	    "Creates a new Ed25519 key pair: <prefix>.key (private key, PEM PKCS#8,\n"
	    "mode 0600) and <prefix>.pub (public key, PEM). Existing files are never\n"
	    "overwritten. Prints the public key as base64url (the form the registry\n"
	    "shows). Register it with `clawrelay agent add <id> --pubkey <prefix>.pub`.\n");
}

/* cli_cmd_keygen - write <prefix>.key and <prefix>.pub, print the public key */
int
cli_cmd_keygen(struct cli_ctx *c, int argc, char **argv)
{
	const char *outp = NULL, *pos[1];
	struct cli_opt opts[] = { { "--out", 1, &outp, NULL } };
	struct auth_key *k = NULL;
	char privp[4096], pubp[4096], b64[AUTH_PUBKEY_B64_SIZE];
	unsigned char raw[AUTH_PUBKEY_LEN];
	int npos = 0, rc;
	enum cr_err e;

	rc = cli_parse(c, argc, argv, opts, 1, pos, 1, &npos);
	if (rc == -1) {
		keygen_help(stdout);
		return CLI_OK;
	}
	if (rc != CLI_OK)
		return rc;
	if (outp == NULL && npos == 1)
		outp = pos[0];
	else if (npos > 0)
		return cli_usage_err("keygen", "unexpected argument '%s'", pos[0]);
	if (outp == NULL || *outp == '\0')
		return cli_usage_err("keygen", "keygen needs --out <prefix>");
	if ((size_t)snprintf(privp, sizeof(privp), "%s.key", outp) >= sizeof(privp) ||
	    (size_t)snprintf(pubp, sizeof(pubp), "%s.pub", outp) >= sizeof(pubp))
		return cli_usage_err("keygen", "--out prefix is too long");

	e = auth_key_generate(&k);
	if (e != CR_OK)
		return cli_err("cannot generate a key: %s", cr_strerror(e));
	e = auth_key_save(k, privp, pubp);
	if (e == CR_ERR_EXISTS) {
		rc = cli_err("%s or %s already exists; not overwriting it", privp, pubp);
		goto out;
	}
	if (e != CR_OK) {
		rc = cli_err("cannot write %s / %s: %s", privp, pubp, cr_strerror(e));
		goto out;
	}
	e = auth_key_public_raw(k, raw);
	if (e != CR_OK) {
		rc = cli_err("cannot read the public key: %s", cr_strerror(e));
		goto out;
	}
	auth_pubkey_to_b64url(raw, b64);
	printf("%s\n", b64);
	fprintf(stderr, "wrote %s (private, 0600) and %s\n", privp, pubp);
	rc = CLI_OK;
out:
	auth_key_free(k);
	return rc;
}

static void
subject_help(FILE *f)
{
	fprintf(f,
	    "usage: clawrelay subject <agent-id>\n"
	    "\n"
	    "Prints the agent ID as one NATS subject token (DESIGN section 3): every\n"
	    "character outside [A-Za-z0-9:_-] is percent-encoded, e.g.\n"
	    "  did:cdi:example.com:agent:7  ->  did:cdi:example%%2Ecom:agent:7\n"
	    "With --subjects, also prints the agent's subjects and partition\n"
	    "(--partitions N, default 16 or CLAWRELAY_PARTITIONS).\n");
}

/* cli_cmd_subject - print subj_token of an agent ID (and its subjects) */
int
cli_cmd_subject(struct cli_ctx *c, int argc, char **argv)
{
	const char *pos[1], *why = NULL, *parts = NULL;
	int npos = 0, rc, all = 0;
	struct cli_opt opts[] = {
		{ "--subjects", 0, NULL, &all },
		{ "--partitions", 1, &parts, NULL },
	};
	char tok[AUTH_ID_MAX * 3 + 1];
	uint64_t np = 16;

	rc = cli_parse(c, argc, argv, opts, 2, pos, 1, &npos);
	if (rc == -1) {
		subject_help(stdout);
		return CLI_OK;
	}
	if (rc != CLI_OK)
		return rc;
	if (npos != 1)
		return cli_usage_err("subject", "subject needs exactly one agent ID");
	if (auth_check_agent_id(pos[0], &why) != CR_OK)
		return cli_err("invalid agent ID: %s", why ? why : "bad agent ID");
	if (subj_token(pos[0], tok, sizeof(tok)) == 0)
		return cli_err("cannot encode the agent ID");
	printf("%s\n", tok);
	if (!all)
		return CLI_OK;
	if (parts == NULL)
		parts = getenv("CLAWRELAY_PARTITIONS");
	if (parts != NULL && cli_parse_uint(parts, 1, 4096, &np) != 0)
		return cli_usage_err("subject", "--partitions must be 1-4096");
	printf("partition  %u (of %u)\n", partition_of(pos[0], (uint32_t)np), (unsigned)np);
	printf("enqueue    %s.session.%u.enqueue\n", c->prefix, partition_of(pos[0], (uint32_t)np));
	printf("socket     %s.ws.%s\n", c->prefix, tok);
	printf("failures   %s.notify.failure.%s\n", c->prefix, tok);
	printf("delayed    %s.notify.delayed.%s\n", c->prefix, tok);
	return CLI_OK;
}
