/*
 * unit.h - what every unit test's main() does after building its suite.
 */
#ifndef CR_UNIT_H
#define CR_UNIT_H

#include <check.h>

/* unit_run - run s (forking per test, Check's default), free the runner;
 * the exit status: 0 when every test passed */
static inline int
unit_run(Suite *s)
{
	SRunner *sr = srunner_create(s);
	int failed;

	srunner_run_all(sr, CK_NORMAL);
	failed = srunner_ntests_failed(sr);
	srunner_free(sr);
	return failed ? 1 : 0;
}

#endif
