#!/usr/bin/env bash
# `make pytest` and `make loader-test`: PYTEST_PROCESSES (default 2) pytest processes side by side
# share one run of the suite, file by file (scripts/pytest_file_claims.py). Many tests wait on
# ansible-playbook or a subprocess, so one process leaves a core idle. Each process's output is
# printed after the run, one after the other; the run fails if any process failed.
#   usage: scripts/pytest-shared.sh PYTEST [ARGS...]
set -uo pipefail
processes=${PYTEST_PROCESSES:-2}
if ! [[ $processes =~ ^[1-9][0-9]*$ ]]; then
    echo "[pytest] PYTEST_PROCESSES must be a whole number of at least 1, not '$processes'" >&2
    exit 2
fi
claims=$(mktemp -d) logs=$(mktemp -d)
pids=()
trap 'kill "${pids[@]}" 2>/dev/null; rm -rf "$claims" "$logs"' EXIT
trap 'exit 130' INT TERM
for n in $(seq "$processes"); do
    PYTEST_FILE_CLAIMS=$claims "$@" -p pytest_file_claims >"$logs/$n.log" 2>&1 &
    pids+=($!)
done
failed=0
for n in "${!pids[@]}"; do
    wait "${pids[$n]}"
    rc=$?
    printf -- '----- pytest process %d of %d: exit status %d -----\n' "$((n + 1))" "$processes" "$rc"
    cat "$logs/$((n + 1)).log"
    [ "$rc" -eq 0 ] || failed=1
done
pids=()
exit "$failed"
