#!/usr/bin/env bash
# `make molecule` and `make rehearsals`: every Molecule scenario's full sequence and, with
# --labs, the labs' short versions, taken from one queue by workers that run side by side.
#
# A queue, not fixed lanes: each worker takes the next job when its last one ends, so no core
# waits while a lane's last, long job runs alone, and the labs (waiting on reboots and systemd)
# fill the time Molecule leaves idle. The queue starts with the longest jobs (ORDER, measured),
# so that the short ones fill the end.
#
# Jobs share nothing they write: scenarios' containers carry the scenario's name, each prepare
# records and detaches its own loop devices, each lab has its own prefix, network and folder.
# Each job's output goes to .cache/test-logs/JOB.log (molecule-SCENARIO.log for a scenario); a
# failed job's last lines are printed when it fails and its longer tail at the end (CI keeps
# only the tail of the output, and a run stopped by its time limit has no end).
#
#   --labs                  the labs' short versions too (make test)
#   REHEARSALS="a b"        only these jobs (scenario names, lab make targets)
#   REHEARSAL_WORKERS=N     jobs side by side (default 2)
set -uo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

# Longest first. Measured side by side in a fresh clone of 7b075c0 (2 cores, seconds;
# docs/testing.md): default 719, lab-upgrade-short 699, nvidia_driver_dkms 542 (726 before its
# compiler cache), hf_seed 540, lab-slurm-short 525, nvidia_driver 473, dataset_volume 334,
# lab-pull-short 205, hf_env 99.
ORDER="default lab-upgrade-short nvidia_driver_dkms hf_seed lab-slurm-short nvidia_driver dataset_volume lab-pull-short hf_env"
LABS="lab-slurm-short lab-upgrade-short lab-pull-short"
WITH_LABS=no
[ "${1:-}" = --labs ] && WITH_LABS=yes
# Two, as the old lanes: with three, each job had two thirds of a core, and on a slow run
# hf_seed's verify failed (its playbook runs had 300 s timeouts, now 900 s). Three were 4 and 2 %
# shorter in two fresh clones (docs/testing.md): what they fill of the idle, sharing loses again.
WORKERS=${REHEARSAL_WORKERS:-2}
LOGS=.cache/test-logs
mkdir -p "$LOGS"

is_lab() { [[ " $LABS " == *" $1 "* ]]; }
scenarios=$(find molecule -mindepth 2 -maxdepth 2 -name molecule.yml -printf '%h\n' | xargs -n1 basename | sort)
ordered_scenarios=$(for job in $ORDER; do is_lab "$job" || echo "$job"; done | sort)
if [ "$scenarios" != "$ordered_scenarios" ]; then
    echo "[rehearsals] ORDER in $0 must name every scenario of molecule/ once:" >&2
    diff <(echo "$ordered_scenarios") <(echo "$scenarios") >&2
    exit 2
fi
wanted=${REHEARSALS:-$ORDER}
for job in $wanted; do
    if [[ " $ORDER " != *" $job "* ]]; then
        echo "[rehearsals] REHEARSALS names '$job', which is neither a scenario of molecule/ nor one of: $LABS" >&2
        exit 2
    fi
done

QUEUE=$LOGS/rehearsals.queue
: >"$QUEUE"
for job in $ORDER; do
    [[ " $wanted " == *" $job "* ]] || continue
    if is_lab "$job" && [ $WITH_LABS = no ] && [ -z "${REHEARSALS:-}" ]; then continue; fi
    echo "$job" >>"$QUEUE"
done
rm -f "$LOGS/rehearsals-failed"

take_job() {  # the queue's first job, removed from it; fails when the queue is empty
    local job
    # A lock file of its own: sed -i replaces the queue file, and a lock on it would go with it.
    job=$(flock "$QUEUE.lock" sh -c 'head -n 1 "$1" && sed -i 1d "$1"' _ "$QUEUE")
    [ -n "$job" ] && echo "$job"
}

job_log() { if is_lab "$1"; then echo "$LOGS/$1.log"; else echo "$LOGS/molecule-$1.log"; fi; }
plain_tail() { sed 's/\x1b\[[0-9;]*m//g' "$(job_log "$2")" | tail -n "$1"; }
# A worker's lines, together: bash writes its stdout a line at a time, so without the lock the
# other worker's line could land between a failed job's name and its last lines.
say() { { flock 9 && printf '%s\n' "$@"; } 9>"$LOGS/rehearsals.say.lock"; }

worker() {
    local job start
    while job=$(take_job); do
        start=$SECONDS
        say "[rehearsals] $job: started"
        if is_lab "$job"; then
            make --no-print-directory "$job" >"$(job_log "$job")" 2>&1
        else
            molecule test -s "$job" >"$(job_log "$job")" 2>&1
        fi
        if [ $? -eq 0 ]; then
            say "[rehearsals] $job: passed in $((SECONDS - start))s"
        else
            # Now, not only at the end: a run stopped by CI's time limit never reaches the end.
            say "[rehearsals] $job: FAILED after $((SECONDS - start))s; the last lines of $(job_log "$job"):" \
                "$(plain_tail 40 "$job" | sed "s/^/    $job| /")"
            echo "$job" >>"$LOGS/rehearsals-failed"
        fi
    done
}

echo "[rehearsals] $(wc -l <"$QUEUE") jobs, $WORKERS side by side: $(tr '\n' ' ' <"$QUEUE")"
start=$SECONDS
pids=()
for _ in $(seq "$WORKERS"); do
    worker &
    pids+=($!)
done
wait "${pids[@]}"
echo "[rehearsals] all jobs done in $((SECONDS - start))s"

[ -f "$LOGS/rehearsals-failed" ] || exit 0
while read -r job; do
    printf '\n===== %s failed: the last lines of %s =====\n' "$job" "$(job_log "$job")"
    plain_tail 200 "$job"
done <"$LOGS/rehearsals-failed"
exit 1
