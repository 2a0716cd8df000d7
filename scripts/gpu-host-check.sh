#!/usr/bin/env bash
# The GPU paths on one real GPU host, from a checkout of this project, as root:
#   driver   nvidia_driver against the live driver in verify-only mode
#            (nvidia_driver_preinstalled): a first run, a second that must change
#            nothing, check mode, and two runs that must fail (a GPU count and a
#            branch the host does not have) with the role's own message;
#   capture  the role's probe and nvidia-smi query, raw, for tests/fixtures/nvidia;
#   cache    a small ImageNet-shaped cache written by `datasets` and `hf-cache-test`
#            on it, offline;
#   pytest   the hf_loader tests marked gpu (files/hf_loader/tests, `pytest -m gpu`; the CPU
#            run deselects them): pinned host batches, amp_bf16 and cudnn_benchmark through
#            hf_loader.train on CUDA, checked from inside the Trainer;
#   train    `hf-train` (ResNet-50, Composer Trainer.fit) on the GPU from that cache;
#   launch   the same through Composer's launcher on every GPU of the host, with the
#            command line of hf-train@.service and the launcher environment train.yml writes;
#   speed    bench/train_bench.py: images/s on real and synthetic data and per device lever
#            (not in the default STEPS: about ten minutes on one H200).
#
# Needs ansible-core (ansible-playbook on PATH) and the loader stack importable by
# $PYTHON, with pytest for the pytest step; hf_loader is taken from files/hf_loader/src. It changes nothing on the host
# but /etc/ansible/facts.d/nvidia_driver.fact and $OUT_DIR.
# Settings: OUT_DIR (gpu-check), PYTHON (python3), NVIDIA_DRIVER_BRANCH (580),
# EXPECTED_GPUS (0 = any), TRAIN_IMAGES (4096), TRAIN_DURATION (2ep), BATCH_SIZE (256),
# TRAIN_DEVICE (gpu), STEPS (driver capture cache pytest train launch), SPEED_ARGS (speed's flags).
# Exit status: the number of steps that failed; every step's log is in $OUT_DIR.
set -u
cd "$(dirname "$0")/.."

OUT_DIR=${OUT_DIR:-gpu-check}
PYTHON=${PYTHON:-python3}
BRANCH=${NVIDIA_DRIVER_BRANCH:-580}
EXPECTED_GPUS=${EXPECTED_GPUS:-0}
TRAIN_IMAGES=${TRAIN_IMAGES:-4096}
TRAIN_DURATION=${TRAIN_DURATION:-2ep}
BATCH_SIZE=${BATCH_SIZE:-256}
TRAIN_DEVICE=${TRAIN_DEVICE:-gpu}
STEPS=${STEPS:-driver capture cache pytest train launch}
mkdir -p "$OUT_DIR"
OUT_DIR=$(cd "$OUT_DIR" && pwd)
CACHE=$OUT_DIR/hf-cache
export PYTHONPATH="$PWD/files/hf_loader/src${PYTHONPATH:+:$PYTHONPATH}"
failed=0

say() { printf '[gpu-host-check] %s\n' "$*"; }
fail() { say "FAIL: $*"; failed=$((failed + 1)); }

# ansible-playbook against this host, for the driver play; $1 names the log.
driver_play() {
    local log=$OUT_DIR/$1
    shift
    ANSIBLE_FORCE_COLOR=0 ansible-playbook -i localhost, -c local site.yml --tags driver --skip-tags report \
        -e fleet_hosts=localhost -e ansible_become=false \
        -e "ansible_python_interpreter=$(command -v "$PYTHON")" \
        -e nvidia_driver_preinstalled=true -e nvidia_driver_require_gpu=true \
        -e "nvidia_driver_branch=$BRANCH" -e "nvidia_driver_expected_gpu_count=$EXPECTED_GPUS" \
        "$@" >"$log" 2>&1
}

recap() { grep -A1 '^PLAY RECAP' "$OUT_DIR/$1" | tail -1; }

gpu_count() { nvidia-smi -L | grep -c '^GPU '; }

step_driver() {
    driver_play driver-run1.log || { fail "first driver run (driver-run1.log)"; return; }
    say "driver run 1: $(recap driver-run1.log)"
    driver_play driver-run2.log || { fail "second driver run (driver-run2.log)"; return; }
    say "driver run 2: $(recap driver-run2.log)"
    grep -q 'changed=0 ' "$OUT_DIR/driver-run2.log" || fail "second driver run changed something"
    driver_play driver-check.log --check --diff || fail "check mode (driver-check.log)"
    cp /etc/ansible/facts.d/nvidia_driver.fact "$OUT_DIR/nvidia_driver.fact" 2>/dev/null ||
        fail "no local fact written"
    local gpus
    gpus=$(gpu_count)
    if driver_play driver-wrong-count.log -e nvidia_driver_local_facts=false \
        -e "nvidia_driver_expected_gpu_count=$((gpus + 1))"; then
        fail "a GPU count of $((gpus + 1)) was accepted"
    else
        grep -q 'NVIDIA driver verification failed' "$OUT_DIR/driver-wrong-count.log" ||
            fail "wrong GPU count failed without the role's message"
    fi
    local other=$((BRANCH == 570 ? 580 : 570))
    if driver_play driver-wrong-branch.log -e nvidia_driver_local_facts=false -e "nvidia_driver_branch=$other"; then
        fail "branch $other was accepted"
    else
        grep -q 'NVIDIA driver verification failed' "$OUT_DIR/driver-wrong-branch.log" ||
            fail "wrong branch failed without the role's message"
    fi
}

step_capture() {
    local fields
    # The role's nvidia-smi fields (printed), from its vars.
    fields=$("$PYTHON" -c 'import sys, yaml
print(",".join(yaml.safe_load(open(sys.argv[1]))["__nvidia_driver_smi_fields"]))' roles/nvidia_driver/vars/main.yml) ||
        { fail "cannot read the role's nvidia-smi fields"; return; }
    # The role's own probe (the nvidia_driver_probe module's hardware concern) on /, to probe.txt.
    "$PYTHON" -c 'import sys
sys.path.insert(0, "collections")
from ansible_collections.gpu_fleet.common.plugins.module_utils.nvidia_driver.hardware_probe import hardware_report
from ansible_collections.gpu_fleet.common.plugins.module_utils.nvidia_driver.host_commands import local_runner
sys.stdout.write(hardware_report(local_runner, "/"))' >"$OUT_DIR/probe.txt" || fail "probe"
    nvidia-smi --query-gpu="$fields" --format=csv,noheader,nounits >"$OUT_DIR/nvidia-smi.csv" || fail "nvidia-smi query"
    nvidia-smi >"$OUT_DIR/nvidia-smi.txt" 2>&1
    cat /proc/driver/nvidia/version >"$OUT_DIR/proc-driver-nvidia-version.txt" 2>&1
    "$PYTHON" - "$OUT_DIR" "$fields" "$BRANCH" <<'EOF' || fail "the role's parsers on the captured output"
import json, sys
from pathlib import Path
sys.path.insert(0, "collections")
from ansible_collections.gpu_fleet.common.plugins.module_utils.nvidia_driver.nvidia_smi import parse_nvidia_smi_csv, verify
from ansible_collections.gpu_fleet.common.plugins.module_utils.nvidia_driver.probe import host_state
out, fields, branch = Path(sys.argv[1]), sys.argv[2].split(","), sys.argv[3]
state = host_state((out / "probe.txt").read_text())
rows = parse_nvidia_smi_csv((out / "nvidia-smi.csv").read_text(), fields)
result = {"host_state": state, "nvidia_smi": rows, "verify_branch": verify(rows, "", branch)}
(out / "parsed.json").write_text(json.dumps(result, indent=2) + "\n")
print(json.dumps(result["host_state"]), json.dumps(result["verify_branch"]))
assert state["gpu_present"] and result["verify_branch"]["verified"], result
EOF
}

step_cache() {
    rm -rf "$CACHE"
    "$PYTHON" -m hf_loader.fixtures "$CACHE" ILSVRC/imagenet-1k --train "$TRAIN_IMAGES" \
        --val "$(( TRAIN_IMAGES / 8 > 256 ? TRAIN_IMAGES / 8 : 256 ))" --classes 10 --size 160x128 --shards 4 \
        >"$OUT_DIR/cache-build.log" 2>&1 || { fail "cache build (cache-build.log)"; return; }
    offline_env "$PYTHON" -m hf_loader.cachetest ILSVRC/imagenet-1k --json --batches 4 --workers 4 \
        >"$OUT_DIR/cache-test.json" 2>"$OUT_DIR/cache-test.log"
    local rc=$?
    say "hf-cache-test exit $rc"
    [ "$rc" -eq 0 ] || fail "hf-cache-test exit $rc (cache-test.json, cache-test.log)"
}

step_pytest() {
    # Without -m gpu, the tests' conftest deselects them; no gpu test collected is pytest's
    # exit 5, a failure here too.
    (cd files/hf_loader && "$PYTHON" -m pytest -q -rA -p no:cacheprovider -m gpu tests) \
        >"$OUT_DIR/pytest-gpu.log" 2>&1
    local rc=$?
    say "pytest -m gpu: $(tail -1 "$OUT_DIR/pytest-gpu.log")"
    [ "$rc" -eq 0 ] || fail "pytest -m gpu exit $rc (pytest-gpu.log)"
}

offline_env() {
    env HF_DATASETS_CACHE="$CACHE/datasets" HF_HUB_CACHE="$CACHE/hub" HF_HOME="$CACHE/home" \
        HF_DATASETS_OFFLINE=1 HF_HUB_OFFLINE=1 "$@"
}

# The job both training steps run, as site.yml writes train-JOB.yaml from hf_loader_train_config.
write_train_config() {
    cat >"$OUT_DIR/train-check.yaml" <<EOF
dataset: ILSVRC/imagenet-1k
batch_size: $BATCH_SIZE
eval_batch_size: $BATCH_SIZE
workers: 16
max_duration: $TRAIN_DURATION
eval_interval: $TRAIN_DURATION
lr: 0.2
warmup: 4ba
speed_window: 5
device: $TRAIN_DEVICE
EOF
}

last_throughput() { grep 'throughput/samples_per_sec' "$1" | tail -1 | tr -s ' \t' ' '; }

step_train() {
    local start=$SECONDS
    write_train_config
    # 8 workers here, 16 in the launch step: a loader-bound job would show the difference.
    offline_env "$PYTHON" -m hf_loader.train --config-file "$OUT_DIR/train-check.yaml" --workers 8 \
        --save-folder "$OUT_DIR/checkpoints" --save-interval "$TRAIN_DURATION" \
        >"$OUT_DIR/train.log" 2>&1 || { fail "hf-train (train.log)"; return; }
    say "hf-train on $TRAIN_DEVICE: $((SECONDS - start)) s; last $(last_throughput "$OUT_DIR/train.log")"
    ls "$OUT_DIR"/checkpoints/*.pt >/dev/null 2>&1 || fail "no checkpoint written"
    rm -rf "$OUT_DIR/checkpoints"
}

step_launch() {
    local gpus start=$SECONDS
    gpus=$(gpu_count)
    write_train_config
    # The command line of hf-train@.service, its variables from the environment file train.yml writes.
    offline_env NPROC_PER_NODE="$gpus" WORLD_SIZE="$gpus" NODE_RANK=0 MASTER_ADDR=127.0.0.1 MASTER_PORT=7501 \
        sh -c 'exec composer -n "$NPROC_PER_NODE" --world_size "$WORLD_SIZE" --node_rank "$NODE_RANK" \
            --master_addr "$MASTER_ADDR" --master_port "$MASTER_PORT" -m hf_loader.train --config-file "$1"' \
        launch "$OUT_DIR/train-check.yaml" >"$OUT_DIR/launch.log" 2>&1 || { fail "composer launcher (launch.log)"; return; }
    grep -q 'hf-train: done' "$OUT_DIR/launch.log" || fail "the launched job did not say it was done"
    say "launcher on $gpus GPU(s): $((SECONDS - start)) s; last $(last_throughput "$OUT_DIR/launch.log")"
}

step_speed() {
    # shellcheck disable=SC2086 # SPEED_ARGS is a list of flags
    offline_env "$PYTHON" bench/train_bench.py ${SPEED_ARGS:-} >"$OUT_DIR/speed.log" 2>&1 ||
        { fail "train bench (speed.log)"; return; }
    sed -n '/^run /,$p' "$OUT_DIR/speed.log"
}

say "host: $(. /etc/os-release; echo "$PRETTY_NAME"), kernel $(uname -r), $(nvidia-smi -L 2>&1 | head -1)"
for step in $STEPS; do
    say "step $step"
    "step_$step"
done
say "failed steps: $failed"
exit "$failed"
