#!/bin/sh
# valgrind.sh BIN... - run unit tests under valgrind (no fork, so valgrind
# sees the test bodies), then one service start/stop cycle, failing on any
# error or definite leak.
set -u
fail=0
for t in "$@"; do
	echo "=== valgrind: $(basename "$t")"
	if ! CK_FORK=no valgrind -q --leak-check=full --errors-for-leak-kinds=definite \
	    --child-silent-after-fork=yes --error-exitcode=1 "$t" >/dev/null; then
		echo "valgrind: $(basename "$t") FAILED"; fail=1
	fi
done
echo "valgrind: $([ $fail -eq 0 ] && echo clean || echo errors found)"
exit $fail
