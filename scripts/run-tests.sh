#!/usr/bin/env bash
# `make test`: run every stage, time each, print a summary, fail if any failed.
# Stages keep going after a failure so one run reports everything. Each stage's
# output also goes to .cache/test-logs/STAGE.log, and the summary ends with the
# error lines of each failed stage: CI keeps only the tail of a run.
#
# Stages joined by + run side by side: neither pytest nor loader-test keeps the 2 cores busy
# alone (measured: together in 385 s, one after the other in 731 s). Within a group, stages
# joined by > run one after another in one lane: the controller's venv and then lint (which needs
# it) beside the loader's venv, one pip install of the production lock alone on a core (in a fresh
# clone the two lanes take about as long; before, lint waited for the venv and test-deps for
# lint's group, with a core idle for about a minute in each). test-deps then builds what is left
# (the test tools, the loader's test venv, the wheelhouse) before the stages after it. They share
# nothing they write. The rehearsals stage (every Molecule scenario and the labs' short versions)
# runs its jobs side by side itself, from one queue (scripts/rehearsals.sh); the summary repeats
# each job's time.
set -uo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

declare -a STAGES=(engine "venv>lint+loader-venv" test-deps pytest+loader-lint+loader-test rehearsals)
# Without these the later stages cannot mean anything (and the stages side by side would each
# build the venvs at once): a failure stops the run after its group.
REQUIRED=" engine venv loader-venv test-deps "

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

rm -f "$LOGS"/*.rc
declare -a RESULTS=() FAILED_STAGES=()
failed=0
total_start=$SECONDS
run_stage() {  # stage -> its exit status in $LOGS/STAGE.rc, its output in $LOGS/STAGE.log
    local start=$SECONDS
    make --no-print-directory "$1" >"$LOGS/$1.log" 2>&1
    echo "$? $((SECONDS - start))" >"$LOGS/$1.rc"
}
run_lane() {  # stages one after another; a failed one leaves the rest of its lane not run
    local stage
    for stage in "$@"; do
        run_stage "$stage"
        read -r rc _ <"$LOGS/$stage.rc"
        [ "$rc" -eq 0 ] || break
    done
}

for group in "${STAGES[@]}"; do
    lanes=(${group//+/ })
    stages=(${group//[+>]/ })
    printf '\n===== stage %s =====\n' "$(sed 's/+/ + /g; s/>/ > /g' <<<"$group")"
    if [ "${#stages[@]}" -eq 1 ]; then
        # Alone, a stage's output streams (the engine and the venv are slow to start).
        start=$SECONDS
        make --no-print-directory "$group" 2>&1 | tee "$LOGS/$group.log"
        echo "${PIPESTATUS[0]} $((SECONDS - start))" >"$LOGS/$group.rc"
    else
        for lane in "${lanes[@]}"; do run_lane ${lane//>/ } & done
        wait
        for stage in "${stages[@]}"; do
            [ -e "$LOGS/$stage.rc" ] || continue
            printf '\n----- %s -----\n' "$stage"
            cat "$LOGS/$stage.log"
        done
    fi
    stop=no
    for stage in "${stages[@]}"; do
        if [ ! -e "$LOGS/$stage.rc" ]; then
            status="FAILED"; failed=$((failed + 1)); FAILED_STAGES+=("$stage")
            RESULTS+=("$(printf '%-18s %-7s %6s   not run: a stage before it in its lane failed' "$stage" "$status" -)")
            continue
        fi
        read -r rc seconds <"$LOGS/$stage.rc"
        if [ "$rc" -eq 0 ]; then status=ok; else
            status=FAILED; failed=$((failed + 1)); FAILED_STAGES+=("$stage")
        fi
        RESULTS+=("$(printf '%-18s %-7s %5ds   %s free after' "$stage" "$status" "$seconds" "$(free_disk)")")
        if [ "$status" = FAILED ] && [[ "$REQUIRED" == *" $stage "* ]]; then stop=yes; fi
    done
    [ $stop = no ] || break
done

for stage in "${FAILED_STAGES[@]}"; do
    [ -e "$LOGS/$stage.rc" ] || continue  # not run: its log is an earlier run's
    printf '\n===== why %s failed (the last error lines of %s) =====\n' "$stage" "$LOGS/$stage.log"
    # Molecule colours its lines; the escapes would hide the patterns.
    sed 's/\x1b\[[0-9;]*m//g' "$LOGS/$stage.log" | grep -E -e "$ERROR_LINES" | tail -n 15 | cut -c 1-600
done

printf '\n===== summary =====\n'
printf '%s\n' "${RESULTS[@]}"
grep -h -E '^\[rehearsals\] .*(passed in|FAILED after|done in)' "$LOGS"/rehearsals.log 2>/dev/null
printf 'total %ds, %d stage(s) failed\n' $((SECONDS - total_start)) "$failed"
[ "$failed" -eq 0 ]
