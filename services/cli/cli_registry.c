/*
 * cli_registry.c - `clawrelay agent ...` and `clawrelay trust ...`: manage
 * the registry (KV bucket clawrelay_agents) through common/registry.c.
 *
 * Main thread only; list callbacks run synchronously inside reg_*_list.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include <cJSON.h>

#include "auth.h"
#include "cli.h"
#include "registry.h"
#include "util.h"

#define ID_RULE "an agent ID is 1-128 characters of [A-Za-z0-9._:@+-]"

static void
agent_help(FILE *f)
{
	fprintf(f,
	    "usage: clawrelay agent add <id> --pubkey <file.pub | base64url> [--webhook <url>] [--replace]\n"
	    "       clawrelay agent list [--json]\n"
	    "       clawrelay agent show <id>\n"
	    "       clawrelay agent remove <id> [--keep-trust]\n"
	    "\n"
	    "Agents live in the NATS KV bucket clawrelay_agents (use --nats URL).\n"
	    "  add     register an agent with its Ed25519 public key (a PEM file from\n"
	    "          `clawrelay keygen`, or the 43-character base64url key). With\n"
	    "          --webhook, messages to it are POSTed to that http(s) URL instead\n"
	    "          of its connector's socket. An existing agent is only changed\n"
	    "          with --replace (it keeps its creation time).\n"
	    "  list    one line per agent: id, webhook (- if none), created (UTC)\n"
	    "  show    one agent, with its public key\n"
	    "  remove  unregister an agent and drop the trust pairs that name it\n"
	    "          (unless --keep-trust)\n"
	    "\n"
	    ID_RULE ".\n");
}

static void
trust_help(FILE *f)
{
	fprintf(f,
	    "usage: clawrelay trust add <from> <to> [--rate-per-min N] [--burst N] [--queue-max N]\n"
	    "       clawrelay trust list [--json]\n"
	    "       clawrelay trust remove <from> <to>\n"
	    "\n"
	    "A trust pair lets <from> send to <to> (one direction; add both pairs for\n"
	    "a conversation). Both agents must be registered. The limits override the\n"
	    "relay's defaults for this pair (0 or absent = default).\n");
}

static int
check_id(const char *id)
{
	const char *why = NULL;
	if (auth_check_agent_id(id, &why) == CR_OK)
		return 0;
	fprintf(stderr, "clawrelay: invalid agent ID '%s': %s\n(" ID_RULE ")\n", id,
	    why ? why : "bad agent ID");
	return -1;
}

/* the relay's own sender ID: no agent may be registered or trusted as it */
static int
check_not_reserved(const char *id)
{
	if (strcmp(id, ENV_SYSTEM_SENDER) != 0)
		return 0;
	fprintf(stderr, "clawrelay: agent ID '%s' is reserved: the relay sends its "
	    "delivery-status messages as it\n", id);
	return -1;
}

static kvStore *
open_registry(struct cli_ctx *c)
{
	struct bus *b = cli_bus(c);
	kvStore *kv = NULL;
	enum cr_err e;

	if (b == NULL)
		return NULL;
	e = reg_open(b, &kv);
	if (e != CR_OK) {
		cli_err("cannot open the registry (KV bucket %s) at %s: %s (is JetStream on? "
		    "nats-server -js)", REG_BUCKET, c->nats_url, cr_strerror(e));
		return NULL;
	}
	return kv;
}

/* A webhook must be an absolute http(s) URL with a host and no spaces or
 * control characters, short enough for the registry record. */
static int
check_webhook(const char *url)
{
	const char *host;

	if (strncmp(url, "http://", 7) == 0)
		host = url + 7;
	else if (strncmp(url, "https://", 8) == 0)
		host = url + 8;
	else
		return cli_err("webhook must start with http:// or https:// (got '%s')", url), -1;
	if (*host == '\0' || *host == '/' || *host == ':')
		return cli_err("webhook '%s' has no host", url), -1;
	if (strlen(url) >= sizeof(((struct reg_agent *)NULL)->webhook_url))
		return cli_err("webhook URL is too long (max %zu)",
		    sizeof(((struct reg_agent *)NULL)->webhook_url) - 1), -1;
	for (const unsigned char *p = (const unsigned char *)url; *p; p++)
		if (*p <= 0x20 || *p == 0x7f)
			return cli_err("webhook URL contains a space or control character"), -1;
	return 0;
}

/* --pubkey: a PEM file, or the raw key in base64url */
static int
load_pubkey(const char *arg, unsigned char raw[AUTH_PUBKEY_LEN])
{
	struct stat st;
	enum cr_err e;

	if (stat(arg, &st) == 0) {
		e = auth_pubkey_from_pem_file(arg, raw);
		if (e == CR_OK)
			return 0;
		return cli_err("%s does not hold an Ed25519 public key in PEM (%s)", arg,
		    cr_strerror(e)), -1;
	}
	if (strlen(arg) == AUTH_PUBKEY_B64_LEN &&
	    auth_pubkey_from_b64url(arg, strlen(arg), raw) == CR_OK)
		return 0;
	return cli_err("--pubkey %s: no such file, and not a base64url Ed25519 key", arg), -1;
}

static int
agent_add(struct cli_ctx *c, int argc, char **argv)
{
	const char *pos[1], *pub = NULL, *hook = NULL;
	int npos = 0, replace = 0, rc, existed;
	struct cli_opt opts[] = {
		{ "--pubkey", 1, &pub, NULL },
		{ "--webhook", 1, &hook, NULL },
		{ "--replace", 0, NULL, &replace },
	};
	struct reg_agent a, old;
	kvStore *kv;
	enum cr_err e;
	char b64[AUTH_PUBKEY_B64_SIZE];

	rc = cli_parse(c, argc, argv, opts, 3, pos, 1, &npos);
	if (rc == -1) {
		agent_help(stdout);
		return CLI_OK;
	}
	if (rc != CLI_OK)
		return rc;
	if (npos != 1)
		return cli_usage_err("agent", "agent add needs one agent ID");
	if (pub == NULL)
		return cli_usage_err("agent", "agent add needs --pubkey <file.pub>");
	if (check_id(pos[0]) != 0 || check_not_reserved(pos[0]) != 0)
		return CLI_FAIL;
	memset(&a, 0, sizeof(a));
	snprintf(a.id, sizeof(a.id), "%s", pos[0]);
	if (hook != NULL && *hook != '\0') {
		if (check_webhook(hook) != 0)
			return CLI_FAIL;
		snprintf(a.webhook_url, sizeof(a.webhook_url), "%s", hook);
	}
	if (load_pubkey(pub, a.pubkey) != 0)
		return CLI_FAIL;
	if ((kv = open_registry(c)) == NULL)
		return CLI_FAIL;
	memset(&old, 0, sizeof(old));
	e = reg_agent_get(kv, a.id, &old);
	existed = e == CR_OK;
	if (existed && !replace)
		return cli_err("agent %s is already registered (use --replace to change it)", a.id);
	if (e != CR_OK && e != CR_ERR_NOT_FOUND)
		return cli_err("cannot read the registry: %s", cr_strerror(e));
	a.created_at_ms = existed ? old.created_at_ms : now_ms();
	e = reg_agent_put(kv, &a);
	if (e != CR_OK)
		return cli_err("cannot store agent %s: %s", a.id, cr_strerror(e));
	auth_pubkey_to_b64url(a.pubkey, b64);
	printf("%s agent %s (key %s%s%s)\n", existed ? "updated" : "added",
	    a.id, b64, a.webhook_url[0] ? ", webhook " : "", a.webhook_url);
	return CLI_OK;
}

struct list_ctx {
	int json;
	int count;
	cJSON *arr;
	/* agent remove: trust pairs naming the agent */
	const char *match;
	char (*pairs)[2][AUTH_ID_MAX + 1];
	int npairs, cap;
};

static void
agent_list_one(void *arg, const struct reg_agent *a)
{
	struct list_ctx *l = arg;
	char when[32], b64[AUTH_PUBKEY_B64_SIZE];

	iso_time_ms(a->created_at_ms, when);
	auth_pubkey_to_b64url(a->pubkey, b64);
	l->count++;
	if (l->json) {
		cJSON *o = cJSON_CreateObject();
		cJSON_AddStringToObject(o, "id", a->id);
		cJSON_AddStringToObject(o, "webhook", a->webhook_url);
		cJSON_AddStringToObject(o, "created", when);
		cJSON_AddNumberToObject(o, "createdAtMs", (double)a->created_at_ms);
		cJSON_AddStringToObject(o, "publicKey", b64);
		cJSON_AddItemToArray(l->arr, o);
		return;
	}
	printf("%s %s %s\n", a->id, a->webhook_url[0] ? a->webhook_url : "-", when);
}

static int
print_json_array(cJSON *arr)
{
	char *s = cJSON_Print(arr);
	if (s == NULL)
		return cli_err("out of memory");
	printf("%s\n", s);
	cJSON_free(s);
	return CLI_OK;
}

/* `agent list` and `trust list`: options, the registry, one line (or JSON
 * element) per entry from each(), a note on stderr when there is none */
static int
list_cmd(struct cli_ctx *c, int argc, char **argv, void (*help)(FILE *),
    enum cr_err (*each)(kvStore *, struct list_ctx *), const char *what, const char *none)
{
	const char *pos[1];
	int npos = 0, rc;
	struct list_ctx l;
	struct cli_opt opts[] = { { "--json", 0, NULL, &l.json } };
	kvStore *kv;
	enum cr_err e;

	memset(&l, 0, sizeof(l));
	rc = cli_parse(c, argc, argv, opts, 1, pos, 0, &npos);
	if (rc == -1) {
		help(stdout);
		return CLI_OK;
	}
	if (rc != CLI_OK)
		return rc;
	if ((kv = open_registry(c)) == NULL)
		return CLI_FAIL;
	if (l.json && (l.arr = cJSON_CreateArray()) == NULL)
		return cli_err("out of memory");
	e = each(kv, &l);
	if (e != CR_OK) {
		cJSON_Delete(l.arr);
		return cli_err("cannot list %s: %s", what, cr_strerror(e));
	}
	rc = l.json ? print_json_array(l.arr) : CLI_OK;
	cJSON_Delete(l.arr);
	if (!l.json && l.count == 0)
		fprintf(stderr, "%s\n", none);
	return rc;
}

static enum cr_err
each_agent(kvStore *kv, struct list_ctx *l)
{
	return reg_agent_list(kv, agent_list_one, l);
}

static int
agent_list(struct cli_ctx *c, int argc, char **argv)
{
	return list_cmd(c, argc, argv, agent_help, each_agent, "agents", "(no agents registered)");
}

static int
agent_show(struct cli_ctx *c, int argc, char **argv)
{
	const char *pos[1];
	int npos = 0, rc;
	struct reg_agent a;
	kvStore *kv;
	enum cr_err e;
	char when[32], b64[AUTH_PUBKEY_B64_SIZE];

	rc = cli_parse(c, argc, argv, NULL, 0, pos, 1, &npos);
	if (rc == -1) {
		agent_help(stdout);
		return CLI_OK;
	}
	if (rc != CLI_OK)
		return rc;
	if (npos != 1)
		return cli_usage_err("agent", "agent show needs one agent ID");
	if (check_id(pos[0]) != 0)
		return CLI_FAIL;
	if ((kv = open_registry(c)) == NULL)
		return CLI_FAIL;
	e = reg_agent_get(kv, pos[0], &a);
	if (e == CR_ERR_NOT_FOUND)
		return cli_err("agent %s is not registered", pos[0]);
	if (e != CR_OK)
		return cli_err("cannot read agent %s: %s", pos[0], cr_strerror(e));
	iso_time_ms(a.created_at_ms, when);
	auth_pubkey_to_b64url(a.pubkey, b64);
	printf("id         %s\npublic key %s\nwebhook    %s\ncreated    %s\n", a.id, b64,
	    a.webhook_url[0] ? a.webhook_url : "- (connector socket)", when);
	return CLI_OK;
}

static void
collect_pair(void *arg, const char *from, const char *to, const struct reg_trust *t)
{
	struct list_ctx *l = arg;

	if (strcmp(from, l->match) != 0 && strcmp(to, l->match) != 0)
		return;
	if (strlen(from) > AUTH_ID_MAX || strlen(to) > AUTH_ID_MAX)
		return;
	if (l->npairs == l->cap) {
		int ncap = l->cap ? l->cap * 2 : 16;
		void *np = realloc(l->pairs, (size_t)ncap * sizeof(*l->pairs));
		if (np == NULL)
			return;
		l->pairs = np;
		l->cap = ncap;
	}
	snprintf(l->pairs[l->npairs][0], AUTH_ID_MAX + 1, "%s", from);
	snprintf(l->pairs[l->npairs][1], AUTH_ID_MAX + 1, "%s", to);
	l->npairs++;
}

static int
agent_remove(struct cli_ctx *c, int argc, char **argv)
{
	const char *pos[1];
	int npos = 0, rc, keep = 0;
	struct cli_opt opts[] = { { "--keep-trust", 0, NULL, &keep } };
	struct list_ctx l;
	kvStore *kv;
	enum cr_err e;

	rc = cli_parse(c, argc, argv, opts, 1, pos, 1, &npos);
	if (rc == -1) {
		agent_help(stdout);
		return CLI_OK;
	}
	if (rc != CLI_OK)
		return rc;
	if (npos != 1)
		return cli_usage_err("agent", "agent remove needs one agent ID");
	if (check_id(pos[0]) != 0)
		return CLI_FAIL;
	if ((kv = open_registry(c)) == NULL)
		return CLI_FAIL;
	e = reg_agent_del(kv, pos[0]);
	if (e == CR_ERR_NOT_FOUND)
		return cli_err("agent %s is not registered", pos[0]);
	if (e != CR_OK)
		return cli_err("cannot remove agent %s: %s", pos[0], cr_strerror(e));
	printf("removed agent %s\n", pos[0]);
	if (keep)
		return CLI_OK;
	memset(&l, 0, sizeof(l));
	l.match = pos[0];
	e = reg_trust_list(kv, collect_pair, &l);
	if (e != CR_OK) {
		free(l.pairs);
		return cli_err("agent removed, but its trust pairs could not be listed: %s",
		    cr_strerror(e));
	}
	rc = CLI_OK;
	for (int i = 0; i < l.npairs; i++) {
		e = reg_trust_del(kv, l.pairs[i][0], l.pairs[i][1]);
		if (e == CR_OK || e == CR_ERR_NOT_FOUND)
			printf("removed trust %s -> %s\n", l.pairs[i][0], l.pairs[i][1]);
		else
			rc = cli_err("cannot remove trust %s -> %s: %s", l.pairs[i][0],
			    l.pairs[i][1], cr_strerror(e));
	}
	free(l.pairs);
	return rc;
}

/* cli_cmd_agent - agent add | list | show | remove */
int
cli_cmd_agent(struct cli_ctx *c, int argc, char **argv)
{
	if (argc < 1 || strcmp(argv[0], "--help") == 0 || strcmp(argv[0], "-h") == 0 ||
	    strcmp(argv[0], "help") == 0) {
		agent_help(argc < 1 ? stderr : stdout);
		return argc < 1 ? CLI_USAGE : CLI_OK;
	}
	if (strcmp(argv[0], "add") == 0)
		return agent_add(c, argc - 1, argv + 1);
	if (strcmp(argv[0], "list") == 0 || strcmp(argv[0], "ls") == 0)
		return agent_list(c, argc - 1, argv + 1);
	if (strcmp(argv[0], "show") == 0 || strcmp(argv[0], "get") == 0)
		return agent_show(c, argc - 1, argv + 1);
	if (strcmp(argv[0], "remove") == 0 || strcmp(argv[0], "rm") == 0 ||
	    strcmp(argv[0], "del") == 0)
		return agent_remove(c, argc - 1, argv + 1);
	return cli_usage_err("agent", "unknown agent command '%s' (add, list, show, remove)", argv[0]);
}

static int
parse_limit(const char *s, const char *name, uint32_t *out)
{
	uint64_t v;

	if (s == NULL)
		return 0;
	if (cli_parse_uint(s, 0, 1000000000, &v) != 0) {
		cli_usage_err("trust", "%s must be a whole number 0-1000000000", name);
		return -1;
	}
	*out = (uint32_t)v;
	return 0;
}

static int
trust_add(struct cli_ctx *c, int argc, char **argv)
{
	const char *pos[2], *rate = NULL, *burst = NULL, *qmax = NULL;
	int npos = 0, rc;
	struct cli_opt opts[] = {
		{ "--rate-per-min", 1, &rate, NULL },
		{ "--burst", 1, &burst, NULL },
		{ "--queue-max", 1, &qmax, NULL },
	};
	struct reg_trust t;
	struct reg_agent a;
	kvStore *kv;
	enum cr_err e;

	rc = cli_parse(c, argc, argv, opts, 3, pos, 2, &npos);
	if (rc == -1) {
		trust_help(stdout);
		return CLI_OK;
	}
	if (rc != CLI_OK)
		return rc;
	if (npos != 2)
		return cli_usage_err("trust", "trust add needs <from> <to>");
	memset(&t, 0, sizeof(t));
	if (parse_limit(rate, "--rate-per-min", &t.rate_per_min) != 0 ||
	    parse_limit(burst, "--burst", &t.burst) != 0 ||
	    parse_limit(qmax, "--queue-max", &t.queue_max) != 0)
		return CLI_USAGE;
	if (check_id(pos[0]) != 0 || check_id(pos[1]) != 0 ||
	    check_not_reserved(pos[0]) != 0 || check_not_reserved(pos[1]) != 0)
		return CLI_FAIL;
	if ((kv = open_registry(c)) == NULL)
		return CLI_FAIL;
	for (int i = 0; i < 2; i++) {
		e = reg_agent_get(kv, pos[i], &a);
		if (e == CR_ERR_NOT_FOUND)
			return cli_err("agent %s is not registered (clawrelay agent add %s --pubkey ...)",
			    pos[i], pos[i]);
		if (e != CR_OK)
			return cli_err("cannot read agent %s: %s", pos[i], cr_strerror(e));
	}
	e = reg_trust_put(kv, pos[0], pos[1], &t);
	if (e != CR_OK)
		return cli_err("cannot store trust %s -> %s: %s", pos[0], pos[1], cr_strerror(e));
	printf("trusted %s -> %s\n", pos[0], pos[1]);
	return CLI_OK;
}

static void
trust_list_one(void *arg, const char *from, const char *to, const struct reg_trust *t)
{
	struct list_ctx *l = arg;

	l->count++;
	if (l->json) {
		cJSON *o = cJSON_CreateObject();
		cJSON_AddStringToObject(o, "from", from);
		cJSON_AddStringToObject(o, "to", to);
		cJSON_AddNumberToObject(o, "ratePerMin", t->rate_per_min);
		cJSON_AddNumberToObject(o, "burst", t->burst);
		cJSON_AddNumberToObject(o, "queueMax", t->queue_max);
		cJSON_AddItemToArray(l->arr, o);
		return;
	}
	printf("%s -> %s", from, to);
	if (t->rate_per_min)
		printf(" rate_per_min=%u", t->rate_per_min);
	if (t->burst)
		printf(" burst=%u", t->burst);
	if (t->queue_max)
		printf(" queue_max=%u", t->queue_max);
	putchar('\n');
}

static enum cr_err
each_pair(kvStore *kv, struct list_ctx *l)
{
	return reg_trust_list(kv, trust_list_one, l);
}

static int
trust_list(struct cli_ctx *c, int argc, char **argv)
{
	return list_cmd(c, argc, argv, trust_help, each_pair, "trust pairs", "(no trust pairs)");
}

static int
trust_remove(struct cli_ctx *c, int argc, char **argv)
{
	const char *pos[2];
	int npos = 0, rc;
	kvStore *kv;
	enum cr_err e;

	rc = cli_parse(c, argc, argv, NULL, 0, pos, 2, &npos);
	if (rc == -1) {
		trust_help(stdout);
		return CLI_OK;
	}
	if (rc != CLI_OK)
		return rc;
	if (npos != 2)
		return cli_usage_err("trust", "trust remove needs <from> <to>");
	if (check_id(pos[0]) != 0 || check_id(pos[1]) != 0)
		return CLI_FAIL;
	if ((kv = open_registry(c)) == NULL)
		return CLI_FAIL;
	e = reg_trust_del(kv, pos[0], pos[1]);
	if (e == CR_ERR_NOT_FOUND)
		return cli_err("%s -> %s is not a trust pair", pos[0], pos[1]);
	if (e != CR_OK)
		return cli_err("cannot remove trust %s -> %s: %s", pos[0], pos[1], cr_strerror(e));
	printf("removed trust %s -> %s\n", pos[0], pos[1]);
	return CLI_OK;
}

/* cli_cmd_trust - trust add | list | remove */
int
cli_cmd_trust(struct cli_ctx *c, int argc, char **argv)
{
	if (argc < 1 || strcmp(argv[0], "--help") == 0 || strcmp(argv[0], "-h") == 0 ||
	    strcmp(argv[0], "help") == 0) {
		trust_help(argc < 1 ? stderr : stdout);
		return argc < 1 ? CLI_USAGE : CLI_OK;
	}
	if (strcmp(argv[0], "add") == 0)
		return trust_add(c, argc - 1, argv + 1);
	if (strcmp(argv[0], "list") == 0 || strcmp(argv[0], "ls") == 0)
		return trust_list(c, argc - 1, argv + 1);
	if (strcmp(argv[0], "remove") == 0 || strcmp(argv[0], "rm") == 0 ||
	    strcmp(argv[0], "del") == 0)
		return trust_remove(c, argc - 1, argv + 1);
	return cli_usage_err("trust", "unknown trust command '%s' (add, list, remove)", argv[0]);
}
