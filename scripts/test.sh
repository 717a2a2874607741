#!/usr/bin/env bash
# `make test`'s runner: cargo test with its output as is, then one closing
# line with the totals over every test binary ("tests: N passed, N failed,
# N skipped"), since cargo's own last lines belong to targets without tests.
#
# "Skipped" counts ignored tests and tests that found the machine unsuitable
# and did not run: Rust's harness counts those as passed, so they record
# themselves (`llmq_tests::skip`, tests/src/skip.rs) in the file named by
# LLMQ_TEST_SKIPS, and are moved from passed to skipped here, each with its
# reason printed. Under CI=true such a test fails instead.
set -uo pipefail

log=$(mktemp)
LLMQ_TEST_SKIPS=$(mktemp)
export LLMQ_TEST_SKIPS
trap 'rm -f "$log" "$LLMQ_TEST_SKIPS"' EXIT

"${CARGO:-cargo}" test "$@" 2>&1 | tee "$log"
status=${PIPESTATUS[0]}

marker='llmq-test-skipped: '
runtime_skips=$(grep -c "^$marker" "$LLMQ_TEST_SKIPS")
if [ "$runtime_skips" -gt 0 ]; then
    echo
    echo "tests that did not run on this machine:"
    sed "s/^$marker/  skipped: /" "$LLMQ_TEST_SKIPS"
fi

awk -v runtime_skips="$runtime_skips" '/^test result:/ {
        for (i = 1; i < NF; i++) {
            if ($(i + 1) ~ /^passed/) passed += $i
            if ($(i + 1) ~ /^failed/) failed += $i
            if ($(i + 1) ~ /^ignored/) skipped += $i
        }
     }
     END {
        passed -= runtime_skips; skipped += runtime_skips
        printf "tests: %d passed, %d failed, %d skipped\n", passed, failed, skipped
     }' "$log"
exit "$status"
