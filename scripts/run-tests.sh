#!/bin/sh
# run-tests.sh KIND BIN... - run each test binary, print a summary line
# "N passed, N failed" and exit non-zero when any failed. A test that runs
# longer than TEST_TIMEOUT_S (default 900) is stopped and counts as failed,
# so a hang cannot eat CI's whole time. The failure lines of the failed
# tests (Check's ":F:" and ":E:" lines, and the last lines they printed) are
# repeated at the end, where a CI log's tail shows them.
kind=$1; shift
pass=0; fail=0; failed=""
logs=$(mktemp -d "${TMPDIR:-/tmp}/run-tests.XXXXXX")
for t in "$@"; do
	name=$(basename "$t")
	echo "=== $kind: $name"
	# the test's output goes to the terminal as it comes and into a log
	if { timeout --kill-after=15 "${TEST_TIMEOUT_S:-900}" "$t" 2>&1; echo $? >"$logs/$name.rc"; } |
	    tee "$logs/$name.log"; [ "$(cat "$logs/$name.rc")" -eq 0 ]; then
		pass=$((pass + 1))
	else
		fail=$((fail + 1)); failed="$failed $name"
	fi
done
echo "$kind: $pass passed, $fail failed"
if [ "$fail" -ne 0 ]; then
	for name in $failed; do
		echo "--- $name (exit $(cat "$logs/$name.rc")):"
		grep -E ':[FE]:' "$logs/$name.log" || tail -n 15 "$logs/$name.log"
	done
	echo "failed:$failed"
	rm -rf "$logs"
	exit 1
fi
rm -rf "$logs"
