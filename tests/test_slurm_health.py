"""The Slurm health check and Prolog (roles/slurm_node/files/slurm_health.py): its drain and resume
decisions, and its checks on real files and real commands (the real hf-cache-test gate; nvidia-smi
and scontrol, absent on this machine, are stand-ins that print the captured shapes).

Each attack is performed and fails the test if it works: an operator's drain whose reason looks
like the health check's is resumed or overwritten; a munge key made world-readable or swapped for a
link passes; a cordoned host passes.
"""

from __future__ import annotations

import grp
import importlib.util
import json
import os
import pwd
import shutil
import stat
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "roles" / "slurm_node" / "files" / "slurm_health.py"
FIXTURES = ROOT / "tests" / "fixtures"
HF_CACHE_TEST = ROOT / ".venvs" / "loader" / "bin" / "hf-cache-test"

spec = importlib.util.spec_from_file_location("slurm_health", SCRIPT)
health = importlib.util.module_from_spec(spec)
sys.modules["slurm_health"] = health
spec.loader.exec_module(health)

PREFIX = health.REASON_PREFIX


def node(state: str, reason: str = "") -> health.Node:
    return health.Node("gpu-01", frozenset(state.split("+")), reason)


# --- decisions ---------------------------------------------------------------------------------


def test_a_node_not_ready_is_drained_with_the_prefixed_reasons():
    decision = health.decide(node("IDLE"), ["cache test exit 4: shard missing", "cordoned by operator: disk"], "")
    assert decision.action == "drain"
    assert decision.reason == f"{PREFIX}cache test exit 4: shard missing; cordoned by operator: disk"


def test_its_own_drain_is_resumed_when_ready_again():
    ours = health.reason_text(["cache test exit 4: shard missing"])
    decision = health.decide(node("IDLE+DRAIN", ours), [], recorded=ours)
    assert decision.action == "resume"


@pytest.mark.parametrize(
    "operator_reason",
    [
        "maintenance: swapping GPU 3",
        "hf-health:maintenance",  # no space after the prefix
        "HF-HEALTH: maintenance",  # another case
        " hf-health: maintenance",  # a leading blank
        "hf-health - maintenance",
        "hf-healthy: yes",
        # Our exact prefix, the operator's own text: not the reason this check recorded.
        f"{PREFIX}investigating, keep it drained",
    ],
)
@pytest.mark.parametrize("state", ["IDLE+DRAIN", "ALLOCATED+DRAIN", "MIXED+DRAIN", "DOWN+DRAIN"])
def test_an_operators_drain_is_never_resumed_nor_overwritten(operator_reason, state):
    recorded = health.reason_text(["cache test exit 4: shard missing"])
    # The attack: the node passes again; a resume would put the operator's node back in service.
    assert health.decide(node(state, operator_reason), [], recorded).action == "none"
    # The node fails while the operator holds it: the operator's reason must stay.
    assert health.decide(node(state, operator_reason), ["cache test exit 3: not cached"], recorded).action == "none"


def test_a_drain_is_not_resumed_when_our_record_of_it_is_lost():
    ours = health.reason_text(["cordoned by operator: disk"])
    assert health.decide(node("IDLE+DRAIN", ours), [], recorded="").action == "none"


def test_a_new_failure_replaces_its_own_reason_and_the_same_one_changes_nothing():
    ours = health.reason_text(["cache test exit 4: shard missing"])
    again = health.decide(node("IDLE+DRAIN", ours), ["cache test exit 4: shard missing"], ours)
    assert again.action == "none"
    other = health.decide(node("IDLE+DRAIN", ours), ["2 of 8 GPUs visible"], ours)
    assert other.action == "drain" and other.reason == f"{PREFIX}2 of 8 GPUs visible"


def test_a_ready_node_that_is_not_drained_is_left_alone():
    assert health.decide(node("IDLE"), [], "").action == "none"
    assert health.decide(node("ALLOCATED"), [], "").action == "none"


def test_reasons_are_one_short_line():
    reason = health.reason_text(["a\nmulti-line\tfailure", "x" * 500])
    assert "\n" not in reason and "\t" not in reason and len(reason) <= health.MAX_REASON
    assert reason.startswith(PREFIX + "a multi-line failure; ")


SCONTROL_DRAINED = """NodeName=slurm-gpu-01 Arch=x86_64 CoresPerSocket=1
   CPUAlloc=0 CPUEfctv=2 CPUTot=2 CPULoad=0.31
   State=IDLE+DRAIN ThreadsPerCore=1 TmpDisk=0 Weight=1 Owner=N/A MCS_label=N/A
   Partitions=gpu
   Reason=hf-health: cache test exit 4: a [bracket] inside [root@2026-12-04T21:40:02]
"""


def test_the_state_and_reason_of_a_captured_drained_node():
    # Captured in the lab (Slurm 22.05.8): the health check's own drain, its reason cut to MAX_REASON.
    text = (FIXTURES / "slurm" / "captured_22.05.8_scontrol-show-node_drained.txt").read_text()
    parsed = health.parse_node(text, "slurm-gpu-02")
    assert parsed.drained and parsed.flags == {"IDLE", "DRAIN"}
    assert parsed.reason.startswith(PREFIX + "cache test exit 7: ") and parsed.reason.endswith("(hf-cache-test --...")
    assert len(parsed.reason) == health.MAX_REASON
    assert health.decide(parsed, [], recorded=parsed.reason).action == "resume"


def test_the_state_and_reason_are_read_from_scontrol_show_node():
    parsed = health.parse_node(SCONTROL_DRAINED, "slurm-gpu-01")
    assert parsed.drained and parsed.flags == {"IDLE", "DRAIN"}
    assert parsed.reason == "hf-health: cache test exit 4: a [bracket] inside"
    idle = health.parse_node(SCONTROL_DRAINED.replace("IDLE+DRAIN", "IDLE*").split("   Reason")[0], "n")
    assert not idle.drained and idle.reason == ""
    with pytest.raises(health.HealthError, match="NodeName"):
        health.parse_node("Node slurm-gpu-09 not found\n", "slurm-gpu-09")


# --- checks on real files ----------------------------------------------------------------------


def test_a_cordon_makes_the_node_unhealthy_with_its_reason(tmp_path):
    folder = tmp_path / "cordon"
    assert health.cordon_failures(str(folder)) == []  # no folder: nobody cordoned the host
    folder.mkdir()
    assert health.cordon_failures(str(folder)) == []
    (folder / "operator").write_text(json.dumps({"owner": "operator", "reason": "disk replacement"}))
    (folder / "by-hand").write_text("not json, still a hold\n")
    (folder / ".operator.tmp").write_text("a write in progress")
    assert health.cordon_failures(str(folder)) == [
        "cordoned by by-hand: not json, still a hold",
        "cordoned by operator: disk replacement",
    ]


@pytest.fixture
def key_file(tmp_path) -> Path:
    key = tmp_path / "munge.key"
    key.write_bytes(os.urandom(1024))
    key.chmod(0o400)
    return key


def test_a_private_munge_key_passes(key_file):
    assert health.munge_key_failures(str(key_file)) == []


@pytest.mark.parametrize("mode", [0o644, 0o440, 0o404, 0o402, 0o600 | stat.S_IWOTH])
def test_a_munge_key_others_can_read_or_write_fails(key_file, mode):
    key_file.chmod(mode)  # the attack: the key made readable (or writable) by others
    failures = health.munge_key_failures(str(key_file))
    assert failures and "rotate the key" in failures[0], failures


def test_a_symlinked_munge_key_fails(key_file, tmp_path):
    link = tmp_path / "link.key"
    link.symlink_to(key_file)  # the attack: the key path swapped for a link to a key held elsewhere
    failures = health.munge_key_failures(str(link))
    assert failures and "symbolic link" in failures[0]
    assert health.munge_key_failures(str(tmp_path / "none")) == [f"munge key {tmp_path / 'none'} missing"]
    assert "not a regular file" in health.munge_key_failures(str(tmp_path))[0]


def test_the_real_cache_test_gate_closes_without_a_report(tmp_path):
    failures = health.cache_failures(str(HF_CACHE_TEST), str(tmp_path / "cache-test.json"), "")
    assert len(failures) == 1 and failures[0].startswith("cache test exit 7: no cache test report at ")
    failures = health.cache_failures(str(HF_CACHE_TEST), str(tmp_path / "cache-test.json"), "1h")
    assert failures[0].startswith("cache test exit 7")
    assert health.cache_failures(str(tmp_path / "absent"), "/r.json", "") == [
        f"cache test {tmp_path / 'absent'} is not installed (run the hf_loader role)"
    ]


def nvidia_smi(tmp_path: Path, csv: str, rc: int = 0) -> Path:
    """A stand-in for nvidia-smi (none on this machine) printing index and driver_version of a
    captured `nvidia-smi --query-gpu` CSV (columns: index, bus id, name, uuid, driver, ...)."""
    rows = [line.split(", ") for line in csv.splitlines() if line.strip() and not line.startswith("#")]
    text = "".join(f"{row[0]}, {row[4]}\n" for row in rows)
    stub = tmp_path / "nvidia-smi"
    stub.write_text(f"#!/bin/sh\nprintf '%s' '{text}'\nexit {rc}\n")
    stub.chmod(0o755)
    return stub


def test_gpus_and_driver_from_captured_nvidia_smi(tmp_path):
    captured = (FIXTURES / "nvidia" / "captured_h200-vm_580.159.04_nvidia-smi.csv").read_text()
    smi = str(nvidia_smi(tmp_path, captured))
    assert health.gpu_failures(1, "580.159.04", smi) == []
    assert health.gpu_failures(8, "", smi) == ["1 of 8 GPUs visible"]
    assert health.gpu_failures(1, "580.95.05", smi) == ["driver 580.159.04, expected 580.95.05"]
    assert health.gpu_failures(0, "", str(tmp_path / "absent")) == []  # a node without GPUs
    assert health.gpu_failures(2, "", str(tmp_path / "absent")) == [
        f"nvidia-smi not found at {tmp_path / 'absent'} (2 GPUs expected)"
    ]
    eight = (FIXTURES / "nvidia" / "handwritten_h100_580.95.05_nvidia-smi.csv").read_text()
    assert health.gpu_failures(8, "580.95.05", str(nvidia_smi(tmp_path, eight))) == []


def test_nvidia_smi_that_cannot_reach_the_driver_fails(tmp_path):
    stub = tmp_path / "nvidia-smi"
    stub.write_text(
        '#!/bin/sh\necho "NVIDIA-SMI has failed because it couldn\'t communicate with the NVIDIA driver."\nexit 9\n'
    )
    stub.chmod(0o755)
    failures = health.gpu_failures(1, "", str(stub))
    assert failures == [
        "nvidia-smi exit 9: NVIDIA-SMI has failed because it couldn't communicate with the NVIDIA driver."
    ]


def test_the_gate_runs_as_the_training_user_who_owns_the_report():
    # Found in the lab: run as root, the gate refuses the report the cache test unit wrote as the
    # training user ("not trusted ... owned by uid N, not by this user"): the check must run it as
    # that user, as the training unit does.
    folder = Path(tempfile.mkdtemp(prefix="slurm-health-"))
    try:
        folder.chmod(0o755)
        report = folder / "cache-test.json"
        report.write_text('{"ready": true}')
        nobody = pwd.getpwnam("nobody")
        os.chown(report, nobody.pw_uid, nobody.pw_gid)
        group = grp.getgrgid(nobody.pw_gid).gr_name
        as_root = health.cache_failures(str(HF_CACHE_TEST), str(report), "")
        assert "is not trusted" in as_root[0] and f"owned by uid {nobody.pw_uid}" in as_root[0]
        # Who runs the gate: a probe in its place prints the account it runs as (the real gate, in
        # the project's virtual environment, cannot be reached by `nobody` on this machine).
        probe = folder / "gate-probe"
        probe.write_text('#!/bin/sh\necho "run as $(id -un):$(id -gn) in $(pwd)"\nexit 7\n')
        probe.chmod(0o755)
        as_owner = health.cache_failures(str(probe), str(report), "", "nobody", group)
        assert as_owner == [f"cache test exit 7: run as nobody:{group} in /"]
    finally:
        shutil.rmtree(folder)


SCONTROL_STAND_IN = r"""#!/usr/bin/env python3
# scontrol's stand-in (Slurm is absent here): one node's State= and Reason= in a JSON file,
# printed as Slurm 22.05 prints them, every call recorded. A job's line is the one captured in
# the lab (`scontrol -o show job`), with the job's own id, state and Requeue= put in.
import json, re, sys
from pathlib import Path
JOB_LINE = Path(__file__).with_name("job-line.txt").read_text().strip()
state_file = Path(__file__).with_name("node.json")
node = json.loads(state_file.read_text())
with Path(__file__).with_name("calls").open("a") as calls:
    calls.write(" ".join(sys.argv[1:]) + "\n")
if node.get("down"):
    print("slurm_load_node error: Unable to contact slurm controller (connect failure)", file=sys.stderr)
    sys.exit(1)
if sys.argv[1:3] == ["show", "node"]:
    print(f"NodeName={sys.argv[3]} Arch=x86_64 CoresPerSocket=2\n   State={node['state']} ThreadsPerCore=1")
    if node["reason"]:
        print(f"   Reason={node['reason']} [{node['user']}@2026-12-04T21:24:33]")
elif sys.argv[1:4] == ["-o", "show", "job"]:
    job = next(job for job in node.get("jobs", []) if job["id"] == sys.argv[4])
    line = re.sub(r"(^|\s)JobId=\S+", lambda m: f"{m.group(1)}JobId={job['id']}", JOB_LINE)
    line = re.sub(r"\sJobState=\S+", f" JobState={job['state']}", line)
    line = re.sub(r"\sCommand=\S+", f" Command={job.get('command', '(null)')}", line)
    print(re.sub(r"\sRequeue=\S+", f" Requeue={job['requeue']}", line))
elif sys.argv[1] == "requeue":
    job = next(job for job in node["jobs"] if job["id"] == sys.argv[2])
    if job["requeue"] == "0":
        print(f"Requested operation is presently disabled for job {job['id']}", file=sys.stderr)
        sys.exit(1)
    job["state"] = "PENDING"
    state_file.write_text(json.dumps(node))
elif sys.argv[1] == "update":
    args = dict(arg.split("=", 1) for arg in sys.argv[2:])
    if args["state"] == "drain":
        node.update(state="IDLE+DRAIN", reason=args["reason"], user="root")
    elif args["state"] == "resume":
        node.update(state="IDLE", reason="", user="")
    state_file.write_text(json.dumps(node))
"""

SCANCEL_STAND_IN = r"""#!/usr/bin/env python3
# scancel's stand-in: --batch --signal=TERM JOBID is the batch shell's SIGTERM; a fleet batch
# script stops its ranks at a checkpoint and requeues itself (pending again).
import json, sys
from pathlib import Path
state_file = Path(__file__).with_name("node.json")
node = json.loads(state_file.read_text())
with Path(__file__).with_name("calls").open("a") as calls:
    calls.write("scancel " + " ".join(sys.argv[1:]) + "\n")
job = next(job for job in node["jobs"] if job["id"] == sys.argv[-1])
job["state"] = "PENDING"
state_file.write_text(json.dumps(node))
"""

SQUEUE_STAND_IN = r"""#!/usr/bin/env python3
# squeue's stand-in: the ids of the node's jobs in the states asked for (--states=A,B), one a line.
import json, sys
from pathlib import Path
node = json.loads(Path(__file__).with_name("node.json").read_text())
with Path(__file__).with_name("calls").open("a") as calls:
    calls.write("squeue " + " ".join(sys.argv[1:]) + "\n")
states = next(arg.split("=", 1)[1] for arg in sys.argv[1:] if arg.startswith("--states=")).split(",")
for job in node.get("jobs", []):
    if job["state"] in states:
        print(job["id"])
"""


@pytest.fixture
def node_host(tmp_path, key_file) -> dict:
    """A node's health check settings on this machine: the real cache test gate (no report yet),
    a real cordon folder and munge key, scontrol's stand-in; node.json is the controller's view."""
    slurm = tmp_path / "slurm"
    slurm.mkdir()
    scontrol = slurm / "scontrol"
    scontrol.write_text(SCONTROL_STAND_IN)
    scontrol.chmod(0o755)
    for name, text in (("squeue", SQUEUE_STAND_IN), ("scancel", SCANCEL_STAND_IN)):
        (slurm / name).write_text(text)
        (slurm / name).chmod(0o755)
    shutil.copy(FIXTURES / "slurm" / "captured_22.05.8_scontrol-o-show-job_running.txt", slurm / "job-line.txt")
    (slurm / "node.json").write_text(json.dumps({"state": "IDLE", "reason": "", "user": ""}))
    config = {
        "node_name": "gpu-01",
        "hf_cache_test": str(HF_CACHE_TEST),
        "report_file": str(tmp_path / "cache-test.json"),
        "report_max_age": "",
        # As the role writes it: the gate runs as the training user (here the account running the tests).
        "cache_test_user": pwd.getpwuid(os.getuid()).pw_name,
        "cache_test_group": grp.getgrgid(os.getgid()).gr_name,
        "cordon_dir": str(tmp_path / "cordon"),
        "gpu_count": 0,
        "gpu_driver": "",
        "nvidia_smi": str(tmp_path / "no-nvidia-smi"),
        "munge_key_file": str(key_file),
        "scontrol": str(scontrol),
        "state_file": str(tmp_path / "state" / "drain-reason"),
        "job_script_dir": str(tmp_path / "slurm-jobs"),
    }
    (tmp_path / "slurm-health.json").write_text(json.dumps(config))
    return {"config": str(tmp_path / "slurm-health.json"), "slurm": slurm, "settings": config}


def run_check(host: dict, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, str(SCRIPT), "--config", host["config"], *args], capture_output=True, text=True, check=False
    )


def controller_view(host: dict) -> dict:
    return json.loads((host["slurm"] / "node.json").read_text())


def test_the_program_drains_records_its_reason_and_leaves_an_operators_drain(node_host):
    done = run_check(node_host)
    view = controller_view(node_host)
    assert done.returncode == 1 and view["state"] == "IDLE+DRAIN"
    assert view["reason"].startswith(f"{PREFIX}cache test exit 7: no cache test report at ")
    recorded = Path(node_host["settings"]["state_file"])
    assert recorded.read_text().strip() == view["reason"] and stat.S_IMODE(recorded.stat().st_mode) == 0o600
    # Unchanged failure: no second update.
    calls = (node_host["slurm"] / "calls").read_text().splitlines()
    run_check(node_host)
    assert (node_host["slurm"] / "calls").read_text().splitlines()[len(calls) :] == ["show node gpu-01"]
    # The attack: an operator takes the drain over with a reason in our own words; the check, which
    # still fails, must neither overwrite it nor, later, resume it.
    taken_over = {"state": "IDLE+DRAIN", "reason": f"{PREFIX}keep drained, RMA open", "user": "admin"}
    (node_host["slurm"] / "node.json").write_text(json.dumps(taken_over))
    done = run_check(node_host)
    assert controller_view(node_host) == taken_over and "drained by someone else" in done.stdout


def test_the_prolog_refuses_a_job_on_a_node_that_is_not_ready_even_without_the_controller(node_host):
    cordon = Path(node_host["settings"]["cordon_dir"])
    cordon.mkdir()
    (cordon / "operator").write_text(json.dumps({"owner": "operator", "reason": "bad DIMM"}))
    done = run_check(node_host, "--prolog")
    assert done.returncode == 1 and "job refused on gpu-01" in done.stderr and "bad DIMM" in done.stderr
    assert "cordoned by operator: bad DIMM" in controller_view(node_host)["reason"]
    (node_host["slurm"] / "node.json").write_text(json.dumps({"state": "IDLE", "reason": "", "user": "", "down": True}))
    done = run_check(node_host, "--prolog")
    assert done.returncode == 1 and "Unable to contact slurm controller" in done.stderr


def test_a_prolog_without_its_settings_refuses_the_job(tmp_path):
    done = subprocess.run(
        [sys.executable, str(SCRIPT), "--prolog", "--config", str(tmp_path / "absent.json")],
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == 2 and "rerun the slurm_node role" in done.stderr


def test_dry_run_changes_nothing(node_host):
    done = run_check(node_host, "--dry-run")
    assert done.returncode == 1 and "draining gpu-01" in done.stdout
    assert controller_view(node_host)["state"] == "IDLE" and not Path(node_host["settings"]["state_file"]).exists()


# --- a runbook's hold: --hold, --jobs, --requeue, --release ------------------------------------

OWNER = "upgrade-driver"
HOLD = f"{health.HOLD_PREFIX}{OWNER}: "


def runbook_step(host: dict, *args: str) -> tuple[int, dict, str]:
    done = run_check(host, *args)
    return done.returncode, (json.loads(done.stdout) if done.returncode == 0 else {}), done.stderr


def set_view(host: dict, **view) -> None:
    (host["slurm"] / "node.json").write_text(json.dumps({"state": "IDLE", "reason": "", "user": "", **view}))


def checks_pass(host: dict) -> None:
    """The node's checks pass from now on: the cache test gate answers ready."""
    settings = dict(host["settings"], hf_cache_test="/bin/true")
    Path(host["config"]).write_text(json.dumps(settings))


def test_a_hold_drains_the_node_as_its_owner_and_only_its_release_resumes_it(node_host):
    checks_pass(node_host)
    rc, out, err = runbook_step(node_host, "--hold", OWNER, "--reason", "driver rollout to 580.95.05")
    assert rc == 0, err
    assert out["action"] == "drain" and out["held"] is True
    view = controller_view(node_host)
    assert view["state"] == "IDLE+DRAIN" and view["reason"] == f"{HOLD}driver rollout to 580.95.05"
    record = Path(node_host["settings"]["state_file"]).with_name(f"hold-{OWNER}")
    assert record.read_text().strip() == view["reason"] and stat.S_IMODE(record.stat().st_mode) == 0o600
    # The same hold again changes nothing; a new reason replaces its own.
    rc, out, _ = runbook_step(node_host, "--hold", OWNER, "--reason", "driver rollout to 580.95.05")
    assert out["action"] == "none" and out["held"] is True
    rc, out, _ = runbook_step(node_host, "--hold", OWNER, "--reason", "failed at verify")
    assert out["action"] == "drain" and controller_view(node_host)["reason"] == f"{HOLD}failed at verify"
    # The attack: the health check, whose checks pass, resumes a node a runbook holds.
    done = run_check(node_host)
    assert done.returncode == 0 and "drained by someone else" in done.stdout
    assert controller_view(node_host)["reason"] == f"{HOLD}failed at verify"
    # Another owner's release does not end this one's hold.
    rc, out, _ = runbook_step(node_host, "--release", "pull")
    assert out["action"] == "none" and controller_view(node_host)["state"] == "IDLE+DRAIN"
    rc, out, _ = runbook_step(node_host, "--release", OWNER)
    assert rc == 0 and out["action"] == "resume" and controller_view(node_host)["state"] == "IDLE"
    assert record.read_text().strip() == ""


@pytest.mark.parametrize(
    "reason",
    ["RMA: GPU 3 fell off the bus", f"{health.REASON_PREFIX}cache test exit 4: shard missing", f"{HOLD}by hand"],
)
def test_a_drain_someone_else_set_is_neither_taken_over_nor_resumed(node_host, reason):
    checks_pass(node_host)
    # The attack: the rollout holds and releases a node an operator (or the health check, or a
    # person using the rollout's own words) drained; the release would put it back in service.
    set_view(node_host, state="MIXED+DRAIN", reason=reason, user="admin")
    rc, out, _ = runbook_step(node_host, "--hold", OWNER, "--reason", "driver rollout to 580.95.05")
    assert rc == 0 and out["action"] == "none" and out["held"] is False and "someone else" in out["message"]
    rc, out, _ = runbook_step(node_host, "--release", OWNER)
    assert rc == 0 and out["action"] == "none"
    assert controller_view(node_host)["reason"] == reason and controller_view(node_host)["state"] == "MIXED+DRAIN"


def test_a_release_on_a_node_that_is_not_ready_hands_it_to_the_health_check(node_host):
    # No cache test report yet: the node is not ready. Resumed, Slurm would send it a job that the
    # Prolog refuses; it stays drained as the health check's, which resumes it once it is ready.
    rc, out, err = runbook_step(node_host, "--hold", OWNER, "--reason", "driver rollout to 580.95.05")
    assert rc == 0, err
    rc, out, _ = runbook_step(node_host, "--release", OWNER)
    assert rc == 0 and out["action"] == "handover"
    view = controller_view(node_host)
    assert view["state"] == "IDLE+DRAIN" and view["reason"].startswith(f"{health.REASON_PREFIX}cache test exit 7")
    checks_pass(node_host)
    done = run_check(node_host)
    assert done.returncode == 0 and "resuming gpu-01" in done.stdout and controller_view(node_host)["state"] == "IDLE"


def test_the_jobs_on_the_node_and_their_requeue(node_host):
    jobs = [
        {"id": "41", "state": "RUNNING", "requeue": "1"},
        {"id": "42", "state": "PENDING", "requeue": "1"},
        {"id": "57", "state": "RUNNING", "requeue": "0"},
    ]
    set_view(node_host, state="ALLOCATED", jobs=jobs)
    rc, out, err = runbook_step(node_host, "--jobs")
    assert rc == 0, err
    listed = {job["id"]: job for job in out["jobs"]}
    assert sorted(listed) == ["41", "57"]  # a pending job does not hold the node
    assert listed["41"]["requeue"] is True and listed["57"]["requeue"] is False
    captured = health.parse_job((FIXTURES / "slurm" / "captured_22.05.8_scontrol-o-show-job_running.txt").read_text())
    assert {key: listed["41"][key] for key in ("name", "user", "nodes")} == {
        key: captured[key] for key in ("name", "user", "nodes")
    }
    rc, out, _ = runbook_step(node_host, "--requeue", "41")
    assert rc == 0 and out["requeued"] == ["41"]
    assert [job["state"] for job in controller_view(node_host)["jobs"]] == ["PENDING", "PENDING", "RUNNING"]
    rc, _, err = runbook_step(node_host, "--requeue", "57")
    assert rc == 2 and "presently disabled" in err


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--requeue", "41;scancel -u root"], "--requeue takes Slurm job ids"),
        (["--requeue=-u"], "--requeue takes Slurm job ids"),
        (["--hold", "../health", "--reason", "x"], "is not a short lower-case name"),
        (["--release", "Upgrade Driver"], "is not a short lower-case name"),
        (["--hold", OWNER], "--hold needs --reason"),
    ],
)
def test_bad_owners_job_ids_and_reasons_are_refused_before_anything_changes(node_host, args, message):
    # The attack: a job id or an owner that is really an option or a path (they reach scontrol's
    # argv and name a record file beside the health check's).
    set_view(node_host, jobs=[{"id": "41", "state": "RUNNING", "requeue": "1"}])
    done = run_check(node_host, *args)
    assert done.returncode == 2 and message in done.stderr
    view = controller_view(node_host)
    assert view["state"] == "IDLE" and view["jobs"][0]["state"] == "RUNNING"
    assert not list(Path(node_host["settings"]["state_file"]).parent.glob("hold-*"))


def test_a_dry_run_hold_says_what_it_would_do_and_changes_nothing(node_host):
    rc, out, _ = runbook_step(node_host, "--dry-run", "--hold", OWNER, "--reason", "driver rollout to 580.95.05")
    assert rc == 0 and out["action"] == "drain"
    assert (
        controller_view(node_host)["state"] == "IDLE" and not Path(node_host["settings"]["state_file"]).parent.exists()
    )


def test_a_fleet_job_is_stopped_through_its_batch_shell_and_any_other_is_requeued(node_host):
    scripts = Path(node_host["settings"]["job_script_dir"])
    scripts.mkdir()
    (scripts / "hf-train-default.sbatch").write_text("#!/bin/bash\n")
    outside = scripts.parent / "elsewhere"
    outside.mkdir()
    jobs = [
        {"id": "41", "state": "RUNNING", "requeue": "1", "command": str(scripts / "hf-train-default.sbatch")},
        # The attack: a path that names the folder but climbs out of it, to a script that may
        # ignore SIGTERM and hold the node through the drain.
        {"id": "42", "state": "RUNNING", "requeue": "1", "command": f"{scripts}/../elsewhere/evil.sh"},
        {"id": "43", "state": "RUNNING", "requeue": "1"},
    ]
    set_view(node_host, state="ALLOCATED", jobs=jobs)
    rc, out, err = runbook_step(node_host, "--requeue", "41", "42", "43")
    assert rc == 0, err
    assert [entry["how"].split(" ")[0] for entry in out["how"]] == ["SIGTERM", "scontrol", "scontrol"]
    calls = (node_host["slurm"] / "calls").read_text().splitlines()
    assert "scancel --batch --signal=TERM 41" in calls
    assert "requeue 42" in calls and "requeue 43" in calls and "requeue 41" not in calls
    assert [job["state"] for job in controller_view(node_host)["jobs"]] == ["PENDING"] * 3
