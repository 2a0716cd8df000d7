#!/usr/bin/env bash
# `make test`: run every stage, time each, print a summary, fail if any failed.
# Stages keep going after a failure so one run reports everything. Each stage's
# output also goes to .cache/test-logs/STAGE.log, and the summary ends with the
# error lines of each failed stage: CI keeps only the tail of a run.
set -uo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

declare -a STAGES=(venv engine lint pytest loader-lint loader-test molecule lab-upgrade-short lab-pull-short)

LOGS=.cache/test-logs
mkdir -p "$LOGS"
# A task's failure (Ansible), a test's (pytest, testinfra), a tool's error line.
ERROR_LINES='fatal: \[|FAILED! =>|^ERROR|^E   |Error:|Traceback|failed=[1-9]|^FAILED |error:|No space left'
# The Molecule hosts install the production lock (CUDA wheels) three at a time:
# each stage's line says how much disk was left after it.
free_disk() {
    local where=.
    [ -d /var/lib/docker ] && where=/var/lib/docker
    df -h --output=avail "$where" | tail -n 1 | tr -d ' '
}
printf '[test] free disk at the start: %s\n' "$(free_disk)"

declare -a RESULTS=() FAILED_STAGES=()
failed=0
total_start=$SECONDS
for stage in "${STAGES[@]}"; do
    printf '\n===== stage %s =====\n' "$stage"
    start=$SECONDS
    make --no-print-directory "$stage" 2>&1 | tee "$LOGS/$stage.log"
    if [ "${PIPESTATUS[0]}" -eq 0 ]; then status=ok; else
        status=FAILED; failed=$((failed + 1)); FAILED_STAGES+=("$stage")
    fi
    RESULTS+=("$(printf '%-12s %-7s %5ds   %s free after' "$stage" "$status" $((SECONDS - start)) "$(free_disk)")")
    # Without the toolchain or the engine the later stages cannot mean anything.
    if [ "$status" = FAILED ] && { [ "$stage" = venv ] || [ "$stage" = engine ]; }; then break; fi
done

for stage in "${FAILED_STAGES[@]}"; do
    printf '\n===== why %s failed (the last error lines of %s) =====\n' "$stage" "$LOGS/$stage.log"
    # Molecule colours its lines; the escapes would hide the patterns.
    sed 's/\x1b\[[0-9;]*m//g' "$LOGS/$stage.log" | grep -E -e "$ERROR_LINES" | tail -n 15 | cut -c 1-600
done

printf '\n===== summary =====\n'
printf '%s\n' "${RESULTS[@]}"
printf 'total %ds, %d stage(s) failed\n' $((SECONDS - total_start)) "$failed"
[ "$failed" -eq 0 ]
