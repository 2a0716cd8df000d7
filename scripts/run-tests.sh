#!/usr/bin/env bash
# `make test`: run every stage, time each, print a summary, fail if any failed.
# Stages keep going after a failure so one run reports everything.
set -uo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

declare -a STAGES=(venv engine lint pytest loader-lint loader-test molecule lab-upgrade-short lab-pull-short)

declare -a RESULTS=()
failed=0
total_start=$SECONDS
for stage in "${STAGES[@]}"; do
    printf '\n===== stage %s =====\n' "$stage"
    start=$SECONDS
    if make --no-print-directory "$stage"; then status=ok; else status=FAILED; failed=$((failed + 1)); fi
    RESULTS+=("$(printf '%-12s %-7s %5ds' "$stage" "$status" $((SECONDS - start)))")
    # Without the toolchain or the engine the later stages cannot mean anything.
    if [ "$status" = FAILED ] && { [ "$stage" = venv ] || [ "$stage" = engine ]; }; then break; fi
done

printf '\n===== summary =====\n'
printf '%s\n' "${RESULTS[@]}"
printf 'total %ds, %d stage(s) failed\n' $((SECONDS - total_start)) "$failed"
[ "$failed" -eq 0 ]
