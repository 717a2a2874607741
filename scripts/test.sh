#!/usr/bin/env bash
# `make test`'s runner: cargo test with its output as is, then one closing
# line with the totals over every test binary ("tests: N passed, N failed,
# N skipped"), since cargo's own last lines belong to targets without tests.
set -uo pipefail

log=$(mktemp)
trap 'rm -f "$log"' EXIT

"${CARGO:-cargo}" test "$@" 2>&1 | tee "$log"
status=${PIPESTATUS[0]}

awk '/^test result:/ {
        for (i = 1; i < NF; i++) {
            if ($(i + 1) ~ /^passed/) passed += $i
            if ($(i + 1) ~ /^failed/) failed += $i
            if ($(i + 1) ~ /^ignored/) skipped += $i
        }
     }
     END { printf "tests: %d passed, %d failed, %d skipped\n", passed, failed, skipped }' "$log"
exit "$status"
