/*
 * main.c - the `clawrelay` command: operators' tool for keys, the registry,
 * sending, status, traces and failure notifications.
 *
 * Not a service: it does not run the skeleton. main() reads the common
 * settings from the environment (CLAWRELAY_NATS_URL, CLAWRELAY_SUBJECT_PREFIX,
 * CLAWRELAY_GATEWAY_URL, CLAWRELAY_KV_REPLICAS), picks the subcommand and
 * returns its exit code (0 ok, 1 failure, 2 usage). Single-threaded apart
 * from nats.c's threads.
 */
#include <stdio.h>
#include <unistd.h>
#include <stdlib.h>
#include <string.h>

#include <nats/nats.h>

#include "cli.h"
#include "log.h"

struct cli_cmd {
	const char *name;
	int (*fn)(struct cli_ctx *c, int argc, char **argv);
	const char *summary;
};

static const struct cli_cmd cmds[] = {
	{ "keygen", cli_cmd_keygen, "create an Ed25519 key pair for an agent" },
	{ "agent", cli_cmd_agent, "add, list or remove registered agents" },
	{ "trust", cli_cmd_trust, "add, list or remove trusted (sender, recipient) pairs" },
	{ "send", cli_cmd_send, "send a signed message through the gateway" },
	{ "status", cli_cmd_status, "show a message's state and history" },
	{ "trace", cli_cmd_trace, "show a message's hop timeline" },
	{ "accounting", cli_cmd_accounting, "every partition's books: accepted = delivered + failed + queued" },
	{ "metrics", cli_cmd_metrics, "summary of the relay's health (metrics-collector)" },
	{ "notifications", cli_cmd_notifications, "failure and delay notices: recent, or --follow" },
	{ "follow", cli_cmd_follow, "the same as notifications --follow" },
	{ "subject", cli_cmd_subject, "print the subject token of an agent ID" },
};

static void
usage(FILE *f)
{
	fprintf(f,
	    "usage: clawrelay [global options] <command> [arguments]\n"
	    "\n"
	    "commands:\n");
	for (size_t i = 0; i < sizeof(cmds) / sizeof(cmds[0]); i++)
		fprintf(f, "  %-13s %s\n", cmds[i].name, cmds[i].summary);
	fprintf(f,
	    "\n"
	    "global options (accepted before or after the command):\n"
	    "  --nats URL         NATS server (env CLAWRELAY_NATS_URL, default nats://127.0.0.1:4222)\n"
	    "  --prefix P         subject prefix (env CLAWRELAY_SUBJECT_PREFIX, default clawrelay)\n"
	    "  --gateway URL      gateway base URL (env CLAWRELAY_GATEWAY_URL, default http://127.0.0.1:8080)\n"
	    "  --timeout-ms N     timeout for NATS requests and HTTP calls (default 5000)\n"
	    "  --help             this text; `clawrelay <command> --help` for a command\n"
	    "\n"
	    "environment: CLAWRELAY_KV_REPLICAS (1..5, default 1) replicas of a KV bucket\n"
	    "the command creates because it does not exist yet (3 on a 3-node NATS cluster)\n"
	    "\n"
	    "exit codes: 0 ok, 1 failure, 2 usage error\n");
}

static const char *
env_or(const char *name, const char *def)
{
	const char *v = getenv(name);
	return v != NULL && *v != '\0' ? v : def;
}

int
main(int argc, char **argv)
{
	struct cli_ctx c;
	int i, rc, lvl;

	memset(&c, 0, sizeof(c));
	c.nats_url = env_or("CLAWRELAY_NATS_URL", "nats://127.0.0.1:4222");
	c.prefix = env_or("CLAWRELAY_SUBJECT_PREFIX", "clawrelay");
	c.gateway_url = env_or("CLAWRELAY_GATEWAY_URL", "http://127.0.0.1:8080");
	c.timeout_ms = 5000;
	{
		const char *r = env_or("CLAWRELAY_KV_REPLICAS", "1");
		char *end = NULL;
		long n = strtol(r, &end, 10);
		if (end == r || *end != '\0' || n < 1 || n > 5) {
			fprintf(stderr, "clawrelay: bad setting: CLAWRELAY_KV_REPLICAS: \"%s\" is not 1..5\n", r);
			return CLI_USAGE;
		}
		c.kv_replicas = (int)n;
	}
	/* the library's log lines go to stderr, keep to real errors unless asked:
	 * standard output is only what a command prints (one JSON document for
	 * every --json command) */
	lvl = log_level_parse(env_or("CLAWRELAY_LOG_LEVEL", "error"));
	log_init("clawrelay", "cli", lvl < 0 ? LOG_ERROR : (enum log_level)lvl);
	log_set_fd(STDERR_FILENO);

	/* global options before the command */
	for (i = 1; i < argc && argv[i][0] == '-'; i++) {
		if (strcmp(argv[i], "--help") == 0 || strcmp(argv[i], "-h") == 0) {
			usage(stdout);
			return CLI_OK;
		}
		if (strcmp(argv[i], "--version") == 0) {
			printf("clawrelay 0.1\n");
			return CLI_OK;
		}
		rc = cli_global_opt(&c, argc, argv, &i);
		if (rc == 0) {
			fprintf(stderr, "clawrelay: unknown option '%s'\n\n", argv[i]);
			usage(stderr);
			return CLI_USAGE;
		}
		if (rc != 1)
			return CLI_USAGE;
	}
	if (i >= argc) {
		usage(stderr);
		return CLI_USAGE;
	}
	if (strcmp(argv[i], "help") == 0) {
		if (i + 1 < argc) {
			char *hargv[] = { (char *)(uintptr_t)"--help", NULL };
			for (size_t k = 0; k < sizeof(cmds) / sizeof(cmds[0]); k++)
				if (strcmp(argv[i + 1], cmds[k].name) == 0)
					return cmds[k].fn(&c, 1, hargv);
		}
		usage(stdout);
		return CLI_OK;
	}
	rc = -1;
	for (size_t k = 0; k < sizeof(cmds) / sizeof(cmds[0]); k++) {
		if (strcmp(argv[i], cmds[k].name) == 0) {
			rc = cmds[k].fn(&c, argc - i - 1, argv + i + 1);
			break;
		}
	}
	if (rc == -1) {
		fprintf(stderr, "clawrelay: unknown command '%s'\n\n", argv[i]);
		usage(stderr);
		rc = CLI_USAGE;
	}
	if (c.bus != NULL) {
		bus_free(c.bus);
		nats_Close();
	}
	return rc;
}
