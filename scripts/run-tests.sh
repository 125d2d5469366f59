#!/bin/sh
# run-tests.sh KIND BIN... - run each test binary, print a summary line
# "N passed, N failed" and exit non-zero when any failed. A test that runs
# longer than TEST_TIMEOUT_S (default 900) is stopped and counts as failed,
# so a hang cannot eat CI's whole time.
kind=$1; shift
pass=0; fail=0; failed=""
for t in "$@"; do
	name=$(basename "$t")
	echo "=== $kind: $name"
	if timeout --kill-after=15 "${TEST_TIMEOUT_S:-900}" "$t"; then
		pass=$((pass + 1))
	else
		fail=$((fail + 1)); failed="$failed $name"
	fi
done
echo "$kind: $pass passed, $fail failed"
[ "$fail" -eq 0 ] || { echo "failed:$failed"; exit 1; }
