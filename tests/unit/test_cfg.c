/*
 * test_cfg.c - configuration tables: defaults, environment, bounds, errors
 * that name the variable.
 */
#include <check.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cfg.h"
#include "unit.h"

static char *s_url;
static long long i_port;
static int b_flag;

static const struct cfg_item items[] = {
	{ "T_URL", CFG_STR, "nats://127.0.0.1:4222", 1, 64, "url", &s_url },
	{ "T_PORT", CFG_INT, "8080", 1, 65535, "port", &i_port },
	{ "T_FLAG", CFG_BOOL, "false", 0, 0, "flag", &b_flag },
};
#define N (sizeof(items) / sizeof(items[0]))

static void
clear_env(void)
{
	unsetenv("CLAWRELAY_T_URL");
	unsetenv("CLAWRELAY_T_PORT");
	unsetenv("CLAWRELAY_T_FLAG");
}

START_TEST(defaults)
{
	char err[256];
	clear_env();
	ck_assert_int_eq(cfg_load(items, N, err, sizeof(err)), 0);
	ck_assert_str_eq(s_url, "nats://127.0.0.1:4222");
	ck_assert_int_eq(i_port, 8080);
	ck_assert_int_eq(b_flag, 0);
	cfg_free(items, N);
	ck_assert_ptr_null(s_url);
}
END_TEST

START_TEST(from_env)
{
	char err[256];
	clear_env();
	setenv("CLAWRELAY_T_URL", "nats://10.0.0.1:1", 1);
	setenv("CLAWRELAY_T_PORT", "65535", 1);
	setenv("CLAWRELAY_T_FLAG", "yes", 1);
	ck_assert_int_eq(cfg_load(items, N, err, sizeof(err)), 0);
	ck_assert_str_eq(s_url, "nats://10.0.0.1:1");
	ck_assert_int_eq(i_port, 65535);
	ck_assert_int_eq(b_flag, 1);
	cfg_free(items, N);
	clear_env();
}
END_TEST

static const struct {
	const char *var, *val, *want;
} bad[] = {
	{ "CLAWRELAY_T_PORT", "0", "CLAWRELAY_T_PORT: 0 is outside 1..65535" },
	{ "CLAWRELAY_T_PORT", "65536", "CLAWRELAY_T_PORT: 65536 is outside 1..65535" },
	{ "CLAWRELAY_T_PORT", "80x", "CLAWRELAY_T_PORT: \"80x\" is not an integer" },
	{ "CLAWRELAY_T_PORT", "", "CLAWRELAY_T_PORT: \"\" is not an integer" },
	{ "CLAWRELAY_T_PORT", "99999999999999999999", "is not an integer" },
	{ "CLAWRELAY_T_FLAG", "maybe", "CLAWRELAY_T_FLAG: \"maybe\" is not a boolean" },
	{ "CLAWRELAY_T_URL", "", "CLAWRELAY_T_URL: must not be empty" },
	{ "CLAWRELAY_T_URL", "nats://aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa", "longer than 64" },
};

START_TEST(bad_values)
{
	char err[256];
	clear_env();
	setenv(bad[_i].var, bad[_i].val, 1);
	ck_assert_int_eq(cfg_load(items, N, err, sizeof(err)), -1);
	ck_assert_msg(strstr(err, bad[_i].want) != NULL, "got \"%s\", want \"%s\"", err, bad[_i].want);
	cfg_free(items, N);
	clear_env();
}
END_TEST

START_TEST(print_config)
{
	char err[256], *buf = NULL;
	size_t len = 0;
	clear_env();
	setenv("CLAWRELAY_T_PORT", "9", 1);
	ck_assert_int_eq(cfg_load(items, N, err, sizeof(err)), 0);
	FILE *f = open_memstream(&buf, &len);
	cfg_print(items, N, f);
	fclose(f);
	ck_assert_str_eq(buf, "CLAWRELAY_T_URL=nats://127.0.0.1:4222\nCLAWRELAY_T_PORT=9\nCLAWRELAY_T_FLAG=false\n");
	free(buf);
	cfg_free(items, N);
	clear_env();
}
END_TEST

int
main(void)
{
	Suite *s = suite_create("cfg");
	TCase *tc = tcase_create("core");
	tcase_add_test(tc, defaults);
	tcase_add_test(tc, from_env);
	tcase_add_loop_test(tc, bad_values, 0, sizeof(bad) / sizeof(bad[0]));
	tcase_add_test(tc, print_config);
	suite_add_tcase(s, tc);
	return unit_run(s);
}
