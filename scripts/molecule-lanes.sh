#!/usr/bin/env bash
# `make molecule`: every scenario's full sequence, in lanes that run side by side.
# Scenarios do not share containers (names carry the scenario), loop devices
# (each prepare records and detaches its own) or Molecule state, so two lanes
# halve the wall time of waiting on systemd, apt, pip and the hosts' jobs.
# Each scenario's output goes to .cache/test-logs/molecule-SCENARIO.log; a
# failed scenario's tail is printed at the end (CI keeps only the tail).
#
# MOLECULE_LANES="a,b c,d" chooses the lanes (space between lanes, comma
# within one); the default balances the scenarios' measured times.
set -uo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

# Measured side by side in a fresh-clone run of make test (2 cores, seconds): default 756 beside
# hf_seed 774, then nvidia_driver 542 beside nvidia_driver_dkms 730 (a real DKMS build), then
# dataset_volume 414 beside hf_env 127: all lanes done in 1712 s (docs/testing.md).
LANES=${MOLECULE_LANES:-"default,nvidia_driver,dataset_volume hf_seed,nvidia_driver_dkms,hf_env"}
LOGS=.cache/test-logs
mkdir -p "$LOGS"

listed=$(for lane in $LANES; do tr ',' '\n' <<<"$lane"; done | sort)
present=$(find molecule -mindepth 2 -maxdepth 2 -name molecule.yml -printf '%h\n' | xargs -n1 basename | sort)
# The default must run every scenario once; MOLECULE_LANES may name a subset.
if [ -n "${MOLECULE_LANES:-}" ]; then expected=$(comm -12 <(echo "$listed" | sort -u) <(echo "$present")); else expected=$present; fi
if [ "$listed" != "$expected" ]; then
    echo "[molecule] the lanes must name scenarios of molecule/, each once (and all of them by default)" >&2
    diff <(echo "$listed") <(echo "$expected") >&2
    echo "[molecule] fix MOLECULE_LANES or the default in $0" >&2
    exit 2
fi

run_lane() {
    local scenario start
    for scenario in ${1//,/ }; do
        start=$SECONDS
        echo "[molecule] $scenario: started"
        if molecule test -s "$scenario" >"$LOGS/molecule-$scenario.log" 2>&1; then
            echo "[molecule] $scenario: passed in $((SECONDS - start))s"
        else
            echo "[molecule] $scenario: FAILED after $((SECONDS - start))s"
            echo "$scenario" >>"$LOGS/molecule-failed"
        fi
    done
}

rm -f "$LOGS/molecule-failed"
start=$SECONDS
pids=()
for lane in $LANES; do
    run_lane "$lane" &
    pids+=($!)
done
wait "${pids[@]}"
echo "[molecule] all lanes done in $((SECONDS - start))s"

[ -f "$LOGS/molecule-failed" ] || exit 0
while read -r scenario; do
    printf '\n===== molecule %s failed: the last lines of %s =====\n' "$scenario" "$LOGS/molecule-$scenario.log"
    sed 's/\x1b\[[0-9;]*m//g' "$LOGS/molecule-$scenario.log" | tail -n 200
done <"$LOGS/molecule-failed"
exit 1
