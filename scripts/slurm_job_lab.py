#!/usr/bin/env python3
"""Training as a Slurm batch job (playbooks/train.yml -e train_launcher=slurm), checked on the lab
hosts themselves with a real 3-node Composer job (--nodes).

    make lab-slurm-job                               # removed at the end; not in `make test`
    .venvs/controller/bin/python scripts/slurm_job_lab.py [--nodes 3] [--batches 3] [--keep]

Its own lab (lab/slurm-job, hosts slurm-job-01..04 on 127.0.0.1:2741..: the nodes, then the
controller), one folder of the lab bind-mounted at /data/checkpoints in every host (LAB_SHARED):
what a shared filesystem is to a cluster. Steps, each checked:
1. site.yml converges the nodes with the loader's production stack (the wheelhouse of
   `make wheelhouse`: Composer, torch; CPU, gloo) and a training configuration that runs far
   longer than the lab (autoresume, run_name, save_folder on the shared folder).
2. playbooks/slurm.yml makes them Slurm nodes of the controller (Debian 12's Slurm 22.05.8).
3. train.yml -e train_launcher=slurm submits one sbatch job on every node from the first node;
   a second run submits nothing. The job runs on every node (squeue) and trains --batches
   batches (rank 0's Composer console in the job's log).
4. SIGTERM to the batch shell alone (what --signal=B:TERM@S delivers before the time limit): every
   rank stops after the same batch N, rank 0 naming its checkpoint; the checkpoint on the shared
   folder says batch N; the job requeues itself, runs again (restart 1) and its first batch is
   N+1, not 1.
5. `scontrol requeue` (an operator's requeue): the job runs again (restart 2) and its first batch
   is the latest checkpoint's + 1 (srun kills its tasks on the job's SIGTERM, so the ranks may not
   write a new checkpoint: what they said is printed).
With --rollout (make lab-slurm-job-upgrade) the hosts have simulated GPUs (scripts/gpu_sim, the
older driver loaded), and then:
6. playbooks/upgrade-driver.yml rolls the newer simulated driver out over the nodes (a canary,
   then batches of one) while the job trains: the canary is held through Slurm and the job is
   stopped through its batch shell (SIGTERM, as before a time limit); every rank stops after the
   same batch N with a checkpoint that says N; the job requeues itself; every node runs the newer
   driver, are resumed, and the job runs again with N+1 as its first batch. The rollout lost no
   more than the batch in flight.
The lab is removed at the end unless --keep. Python 3.11 standard library (the checkpoint is read
with the loader's venv, LAB_PYTHON).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "scripts"))
from lablib import BIN, Lab, Logger, lab_inventory, run_lab  # noqa: E402  the lab library
from slurm_lab import (  # noqa: E402
    HEALTH,
    Checks,
    changed_per_host,
    gpu_build,
    loaded_driver,
    on,
    wait_idle,
    write_slurm_inventory,
)
from upgrade_job_rehearsal import READ_TIMESTAMP  # noqa: E402

LAB = "lab/slurm-job"
PREFIX = "slurm-job-"
CHECKPOINTS = "/data/checkpoints"
SHARED_DIR = "shared"
RUN_NAME = "slurm-job"
JOB_NAME = "hf-train-default"
LOG_DIR = "/var/lib/hf-loader"  # slurm_node_job_log_dir's default: the training user's home
BATCH = 8  # per rank; one rank a node
SIGNAL_SECONDS = 120
TRAIN_CONFIG = {
    "batch_size": BATCH,
    "eval_batch_size": BATCH,
    "workers": 0,
    "crop_size": 64,
    "val_resize": 72,
    "max_duration": "100000ba",
    "eval_interval": "100000ba",
    "eval_subset_num_batches": 1,
    "warmup": "0ba",
    "lr": 0.1,
    "device": "cpu",
    "speed_window": 0,
    "save_folder": f"{CHECKPOINTS}/{{run_name}}",
    "save_interval": "100000ba",
    "run_name": RUN_NAME,
    "autoresume": True,
}
STOPPED_LINE = re.compile(r"hf-train: stopped by SIGTERM after batch (\d+), (.*?) \(rank (\d+) of (\d+), (.*)\)$")
CONSOLE_BATCH = re.compile(r"\[batch=(\d+)/\d+\]")
RESTART_LINE = re.compile(r"^gpu-fleet: job (\d+) \(restart (\d+)\) on (\S+): world (\d+), master (\S+)")


log = Logger("slurm-job-lab")


def slurm_job_lab(gpu: str) -> Lab:
    return Lab.from_env().beside(LAB, PREFIX, 2740, gpu=gpu, shared=f"{SHARED_DIR}:{CHECKPOINTS}")


def lab(cmd: str, n: int, gpu: str = "none") -> None:
    run_lab(slurm_job_lab(gpu), cmd, *(["--hosts", str(n), "--gpu", gpu] if cmd == "up" else []))


def playbook(name: str, inventory: Path, extra: list[str], logfile: Path, *more: str) -> tuple[int, str]:
    env = dict(os.environ, ANSIBLE_CACHE_PLUGIN_CONNECTION=str(ROOT / LAB / "facts"), ANSIBLE_NOCOLOR="1")
    env["PATH"] = f"{BIN}:{env.get('PATH', '')}"
    cmd = [str(BIN / "ansible-playbook"), "-i", str(inventory), name, *more]
    for e in extra:
        cmd += ["-e", e]
    with logfile.open("w") as out:
        rc = subprocess.run(cmd, cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT, check=False).returncode
    return rc, logfile.read_text()


def job_state(controller: str, job: str) -> tuple[str, str, str]:
    """(state, node list, restart count) of the job from scontrol."""
    text = on(controller, "scontrol", "show", "job", job).stdout
    state = re.search(r"\bJobState=(\S+)", text)
    nodes = re.search(r"(?<![A-Za-z])NodeList=(\S+)", text)
    restarts = re.search(r"\bRestarts=(\d+)", text)
    return (state[1] if state else ""), (nodes[1] if nodes else ""), (restarts[1] if restarts else "")


def job_log(node: str, job: str) -> list[str]:
    return on(node, "cat", f"{LOG_DIR}/{JOB_NAME}-{job}.out").stdout.splitlines()


def runs(lines: list[str]) -> list[list[str]]:
    """The log's lines per run of the job (each run starts with the batch script's first line)."""
    found: list[list[str]] = []
    for line in lines:
        if RESTART_LINE.match(line):
            found.append([])
        if found:
            found[-1].append(line)
    return found


def batches(lines: list[str]) -> list[int]:
    """The batches the log shows, each once, in the order they first appear (every rank's console
    goes to the one log: a batch of a 3-node job appears three times)."""
    return list(dict.fromkeys(int(m[1]) for line in lines if (m := CONSOLE_BATCH.search(line))))


def wait_for(what, timeout: float, every: float = 3):
    deadline = time.monotonic() + timeout
    while True:
        value = what()
        if value or time.monotonic() > deadline:
            return value
        time.sleep(every)


def checkpoint_stamp(python: Path) -> tuple[str, dict]:
    latest = ROOT / LAB / SHARED_DIR / RUN_NAME / "latest-rank0.pt"
    if not latest.is_symlink():
        return "", {}
    proc = subprocess.run([str(python), "-c", READ_TIMESTAMP, str(latest)], capture_output=True, text=True, check=False)
    stamp = json.loads(proc.stdout) if proc.returncode == 0 else {"error": proc.stderr[-400:]}
    return str(latest.readlink()), stamp


def stop_and_resume(
    checks: Checks, how: str, node: str, job: str, run: int, world: int, batches_wanted: int, python: Path
) -> int:
    """After `how` stopped run `run - 1`: all `world` ranks stopped after one batch N with a checkpoint
    that says N, and run `run` trains N+1 first. Returns N (-1 when unknown)."""

    def run_lines(index: int) -> list[str]:
        found = runs(job_log(node, job))
        return found[index] if len(found) > index else []

    def stopped_ranks() -> bool:
        return sum(1 for line in run_lines(run - 1) if STOPPED_LINE.search(line)) >= world

    stopped = wait_for(stopped_ranks, 300)
    previous = run_lines(run - 1)
    stops = [m for line in previous if (m := STOPPED_LINE.search(line))]
    ranks = {int(m[3]): int(m[1]) for m in stops}
    checks.expect(
        bool(stopped) and sorted(ranks) == list(range(world)) and len(set(ranks.values())) == 1,
        f"{how}: all {world} ranks stopped after the same batch: {ranks}",
    )
    for m in stops:
        log(f"  {m[0]}")
    step = ranks.get(0, -1)
    saved = next((m[2] for m in stops if m[3] == "0"), "")
    target, stamp = checkpoint_stamp(python)
    checks.expect(
        bool(target) and saved == f"checkpoint {CHECKPOINTS}/{RUN_NAME}/{Path(target).name}",
        f"{how}: rank 0 wrote the checkpoint at the stop: {saved!r} (latest-rank0.pt -> {target})",
    )
    checks.expect(
        stamp.get("batch") == step and stamp.get("sample") == step * BATCH * world,
        f"{how}: the checkpoint says batch {step}, sample {step * BATCH * world}: {stamp}",
    )
    resumed = wait_for(lambda: len(batches(run_lines(run))) >= batches_wanted, 600)
    again = run_lines(run)
    first = RESTART_LINE.match(again[0]) if again else None
    log(f"  {again[0] if again else '(no run after the stop)'}")
    checks.expect(
        bool(first) and first[2] == str(run),
        f"{how}: the job runs again as restart {run} ({first[0] if first else None})",
    )
    seen = batches(again)
    checks.expect(
        bool(resumed) and bool(seen) and seen[0] == step + 1,
        f"{how}: the requeued job's first batch is {seen[0] if seen else None}, the checkpoint's {step} + 1 "
        f"(batches {seen[:batches_wanted]})",
    )
    return step


def rollout(
    checks: Checks,
    inventory: Path,
    extra: list[str],
    logs: Path,
    nodes: list[str],
    job: str,
    batches_wanted: int,
    python: Path,
) -> float:
    """Step 6: the driver rollout over the nodes while the job trains; its seconds."""
    versions = gpu_build.parse_versions(Lab.from_env().driver_versions)
    new, canary = versions[-1], nodes[0]
    run = len(runs(job_log(canary, job)))
    reports = ROOT / LAB / "reports"
    log(f"upgrade-driver.yml: {versions[0]} -> {new} over {nodes} while job {job} trains (its run {run - 1})")
    t0 = time.monotonic()
    rc, _ = playbook(
        "playbooks/upgrade-driver.yml",
        inventory,
        [
            *extra,
            json.dumps(
                {
                    "upgrade_driver_version": new,
                    "upgrade_driver_hosts": "slurm_nodes",
                    "upgrade_driver_serial": 1,
                    "upgrade_driver_pause_after_canary": False,
                    "upgrade_driver_report_dir": str(reports),
                }
            ),
        ],
        logs / "upgrade-driver.log",
    )
    seconds = round(time.monotonic() - t0, 1)
    report = json.loads((reports / "upgrade-driver.json").read_text()) if rc == 0 else {}
    rows = {row["host"]: row for row in report.get("rows", [])}
    checks.expect(rc == 0, f"upgrade-driver.yml rolled {new} out over the nodes (log {logs / 'upgrade-driver.log'})")
    for node in nodes:
        checks.expect(
            loaded_driver(node) == new and rows.get(node, {}).get("state") == "upgraded",
            f"{node} runs {new}, reported {rows.get(node, {}).get('state')}",
        )
    detail = rows.get(canary, {}).get("detail", "")
    checks.expect(
        f"Slurm jobs requeued: {job}" in detail, f"the report names job {job} requeued on {canary}: {detail[-160:]!r}"
    )
    stop_and_resume(checks, "the driver rollout", canary, job, run, len(nodes), batches_wanted, python)
    return seconds


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--nodes", type=int, default=3, help="Slurm nodes, one rank each (a controller besides)")
    p.add_argument("--batches", type=int, default=3, help="batches each run trains before it is stopped")
    p.add_argument("--keep", action="store_true", help="keep the lab hosts afterwards")
    p.add_argument("--rollout", action="store_true", help="simulated GPUs, and the driver rollout while the job trains")
    args = p.parse_args()
    gpu = "sim" if args.rollout else "none"
    python = Lab.from_env(python=".venvs/loader/bin/python").python_path
    if args.nodes < 2:
        p.error("--nodes must be 2 or more: the job is a multi-node one")
    hosts = [f"{PREFIX}{i:02d}" for i in range(1, args.nodes + 2)]
    nodes, controller = hosts[:-1], hosts[-1]
    first = nodes[0]
    work = ROOT / LAB
    logs = work / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    inventory, group_vars = lab_inventory(work)
    reports = work / "reports"
    extra = [
        json.dumps(
            {
                "hf_loader_train_config": TRAIN_CONFIG,
                "hf_loader_train_save_folder_shared": True,
                "fleet_report_dir": str(reports),
                "hf_loader_fleet_report_dir": f"{reports}/hosts",
            }
        )
    ]
    job_vars = json.dumps(
        {
            "train_launcher": "slurm",
            "train_slurm_submit_host": first,
            "slurm_node_job_gres": "",  # the lab's nodes have no GPUs
            "slurm_node_job_signal_seconds": SIGNAL_SECONDS,
        }
    )
    checks = Checks()
    times: dict[str, float] = {}
    try:
        t0 = time.monotonic()
        lab("up", len(hosts), gpu)
        times["lab up"] = round(time.monotonic() - t0, 1)
        secret = write_slurm_inventory(work, nodes, controller, gres=not args.rollout)

        log("site.yml: the nodes, with the loader's production stack")
        t0 = time.monotonic()
        rc, _ = playbook("site.yml", inventory, extra, logs / "site.log", "--limit", ",".join(nodes))
        times["site.yml (nodes)"] = round(time.monotonic() - t0, 1)
        if not checks.expect(rc == 0, f"site.yml converged the nodes (log {logs / 'site.log'})"):
            return 1
        uids = {host: on(host, "id", "-u", "trainer").stdout.strip() for host in nodes}
        checks.expect(len(set(uids.values())) == 1, f"the training user has one uid on every node: {uids}")
        # slurmctld must know a job's user too (a site's directory service; the lab's controller is
        # not converged by site.yml): the same uid and gid.
        uid, gid = uids[first], on(first, "id", "-g", "trainer").stdout.strip()
        on(controller, "groupadd", "-g", gid, "trainer")
        on(controller, "useradd", "-u", uid, "-g", gid, "-M", "-d", LOG_DIR, "-s", "/usr/sbin/nologin", "trainer")

        t0 = time.monotonic()
        rc, _ = playbook("playbooks/slurm.yml", inventory, [f"@{secret}"], logs / "slurm.log")
        times["slurm.yml"] = round(time.monotonic() - t0, 1)
        if not checks.expect(rc == 0, f"playbooks/slurm.yml made the cluster (log {logs / 'slurm.log'})"):
            return 1
        for name in nodes:
            on(name, HEALTH)
        states = wait_idle(controller, nodes)
        if not checks.expect(all(s == "IDLE" for s in states.values()), f"every node idle ({states})"):
            return 1

        log("train.yml -e train_launcher=slurm")
        t0 = time.monotonic()
        rc, text = playbook("playbooks/train.yml", inventory, [*extra, job_vars], logs / "train.log")
        times["train.yml (sbatch)"] = round(time.monotonic() - t0, 1)
        submitted = re.search(r"Submitted job (\d+)", text)
        if not checks.expect(rc == 0 and bool(submitted), f"train.yml submitted the job (log {logs / 'train.log'})"):
            return 1
        job = submitted[1]
        script = on(first, "cat", f"/etc/gpu-fleet/slurm-jobs/{JOB_NAME}.sbatch").stdout
        log("batch script options: " + " ".join(line[8:] for line in script.splitlines() if line.startswith("#SBATCH")))
        rc, text = playbook("playbooks/train.yml", inventory, [*extra, job_vars], logs / "train-again.log")
        changed = changed_per_host(text)
        checks.expect(
            rc == 0 and "Not submitted: job " + job in " ".join(text.split()) and not any(changed.values()),
            f"a second train.yml submits nothing while job {job} is queued ({changed})",
        )
        running = wait_for(lambda: job_state(controller, job)[0] == "RUNNING", 120)
        state, nodelist, _ = job_state(controller, job)
        names = on(controller, "scontrol", "show", "hostnames", nodelist).stdout.split()
        checks.expect(bool(running) and sorted(names) == sorted(nodes), f"job {job} {state} on {names}")
        t0 = time.monotonic()
        trained = wait_for(lambda: len(batches(job_log(first, job))) >= args.batches, 900)
        times[f"job start to batch {args.batches}"] = round(time.monotonic() - t0, 1)
        lines = job_log(first, job)
        log(f"  {lines[0] if lines else '(no log)'}")
        checks.expect(
            bool(trained), f"the job trained batches {batches(lines)[: args.batches]} (log {LOG_DIR} on {first})"
        )
        if checks.failed:
            return 1
        procs = {n: on(n, "pgrep", "-u", "trainer", "-f", "hf_loader.train").stdout.split() for n in nodes}
        checks.expect(all(procs.values()), f"a rank runs on each node after {args.batches} batches: {procs}")

        # --signal=B:TERM@S signals the batch shell alone, S seconds before the time limit: the same,
        # now, without waiting for a limit (Slurm may send it up to 60 s early anyway).
        shell = on(first, "pgrep", "-u", "trainer", "-f", "slurm_script").stdout.split()
        log(f"SIGTERM to the batch shell {shell} on {first}: what --signal=B:TERM@{SIGNAL_SECONDS} sends")
        checks.expect(len(shell) == 1, f"one batch shell of job {job} on {first}: {shell}")
        t0 = time.monotonic()
        on(first, "kill", "-TERM", *shell[:1])
        step = stop_and_resume(checks, "SIGTERM to the batch shell", first, job, 1, len(nodes), args.batches, python)
        times["SIGTERM to resumed batches"] = round(time.monotonic() - t0, 1)

        # An operator's requeue (a preemption alike): Slurm signals the whole job, srun kills its tasks
        # at once, so the ranks may not checkpoint; the job must resume from the latest checkpoint.
        log(f"scontrol requeue {job}: an operator's requeue")
        t0 = time.monotonic()
        requeue = on(controller, "scontrol", "requeue", job)
        checks.expect(requeue.returncode == 0, f"scontrol requeue {job}: {requeue.stderr.strip() or 'ok'}")
        resumed_run = wait_for(lambda: len(batches((runs(job_log(first, job)) + [[]] * 3)[2])) >= args.batches, 600)
        all_runs = runs(job_log(first, job))
        stops = [m[0] for line in (all_runs[1] if len(all_runs) > 1 else []) if (m := STOPPED_LINE.search(line))]
        log(f"  at the requeue the ranks said: {stops or 'nothing (killed)'}")
        again = all_runs[2] if len(all_runs) > 2 else []
        log(f"  {again[0] if again else '(no run after the requeue)'}")
        target, stamp = checkpoint_stamp(python)
        seen = batches(again)
        checks.expect(
            bool(resumed_run)
            and bool(seen)
            and stamp.get("batch", -1) >= step
            and seen[0] == stamp.get("batch", -2) + 1,
            f"scontrol requeue: the job runs again ({again[0][:60] if again else None}) and its first batch is "
            f"{seen[0] if seen else None}, the latest checkpoint's {stamp.get('batch')} + 1 ({target})",
        )
        times["requeue to resumed batches"] = round(time.monotonic() - t0, 1)
        if args.rollout and not checks.failed:
            times["upgrade-driver.yml"] = rollout(checks, inventory, extra, logs, nodes, job, args.batches, python)
        on(controller, "scancel", job)
        print("Steps (wall seconds):")
        for step, seconds in times.items():
            print(f"  {step:28s} {seconds:7.1f}")
    finally:
        if not args.keep:
            group_vars.unlink(missing_ok=True)
            lab("down", len(hosts), gpu)
            (work / "munge-key.yml").unlink(missing_ok=True)
    for what in checks.failed:
        print(f"[slurm-job-lab] FAILED: {what}", file=sys.stderr)
    return 1 if checks.failed else 0


if __name__ == "__main__":
    sys.exit(main())
