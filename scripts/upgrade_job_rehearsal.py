#!/usr/bin/env python3
"""Rehearse the driver rollout (playbooks/upgrade-driver.yml) under a real multi-node Composer
job, and check on the hosts themselves that the job is drained whole, checkpointed, started
again only once all its hosts passed, and resumed from its checkpoint.

    make lab-upgrade-job      # also the second part of `make lab-upgrade`
    .venvs/controller/bin/python scripts/upgrade_job_rehearsal.py [--batches 3] [--no-fail] [--keep]

Its own lab (lab/upgrade-job, hosts upgrade-job-01 and -02 on 127.0.0.1:2651..), made by
`scripts/lab.py up --gpu sim` with three simulated drivers (VERSIONS; the 2nd host's GPU fails
under the newest) and one folder of the lab bind-mounted at /data/checkpoints in both hosts
(LAB_SHARED): what a shared filesystem is to a fleet. Steps, each checked:
1. site.yml converges both hosts with the loader's production stack (the wheelhouse of
   `make wheelhouse`: Composer, torch) and the oldest driver; the training unit may write the
   checkpoint folder (ReadWritePaths=), the training user is the same on both hosts.
2. playbooks/train.yml starts one 2-host job (hf-train@default: CPU, gloo; ResNet-50 on 64 px
   crops; autoresume, run_name, save_folder on the shared folder, declared shared); every host
   records the job and its hosts; the job trains --batches batches (rank 0's console).
3. The rollout to the middle driver: both hosts in one batch; hf-train's SIGTERM on both
   units within a few seconds; both ranks stop after the same batch N, rank 0 naming its
   checkpoint; the checkpoint on the shared folder says batch N and N x the global batch
   samples; both hosts upgraded; both units started again after both hosts rebooted and
   passed; the restarted job trains batch N+1 first (Composer's console), not batch 1.
   Measured from the hosts' journals (both share this machine's clock): the drain (SIGTERM to
   both units inactive), the whole job down (SIGTERM to both units active again) and until the
   first batch trained after the restart.
4. Unless --no-fail: the rollout to a new branch alone (upgrade_driver_branch=590, no version:
   the branch's newest driver is the target), under which one GPU of the 2nd host fails.
   Expected: the job drained whole again (both ranks stop at the same batch M, and their
   last lines say they had resumed from batch N, sample N x the global batch, and count
   M x the global batch samples), the 1st host upgraded to the branch's newest, the 2nd
   failed and cordoned with the reason, the job stopped on BOTH hosts with the report saying
   why, the drained unit remembered on both, train.yml refusing the 2nd host; the runbook
   exits non-zero.
   Without the failing case the job is stopped by hand at the end for its last lines.
The measured times are printed and written to lab/upgrade-job/results.json. The lab is
removed at the end unless --keep. Python 3.11 standard library (the checkpoint is read with
the loader's venv, LAB_PYTHON).
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
from lablib import BIN, Lab, lab_inventory, run_lab  # noqa: E402  the lab library
from upgrade_rehearsal import Checks, loaded_driver, log, on, rollout_cordon  # noqa: E402

LAB = "lab/upgrade-job"
PREFIX = "upgrade-job-"
HOSTS = [f"{PREFIX}01", f"{PREFIX}02"]
FAILING = HOSTS[1]  # one GPU fails there under the newest simulated driver
# First converge, the rollout that passes (an exact version), the one that fails (a branch alone:
# a host already on a branch is current for that branch, so the branch target is a new one).
VERSIONS = ("580.82.07", "580.95.05", "590.44.01")
CHECKPOINTS = "/data/checkpoints"  # in every host: the lab's folder SHARED_DIR
SHARED_DIR = "shared"
RUN_NAME = "rehearsal"
JOB = "default"  # hf_loader_train_job: site.yml writes train-default.yaml from hf_loader_train_config
UNIT = f"hf-train@{JOB}.service"
BATCH = 8  # per rank
WORLD = len(HOSTS)  # one rank a host (hf_loader_gpus_per_node 1)
STOP_TIMEOUT = 120  # hf_loader_train_stop_timeout; the drain timeout is this plus the margin
# A job much longer than the rehearsal: only a SIGTERM stops it, and only then is a checkpoint written.
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
CONSOLE_BATCH = re.compile(r"^\[batch=(\d+)/\d+\]")
# The loader venv reads the checkpoint's Composer timestamp (as files/hf_loader/tests/test_train_resume.py).
READ_TIMESTAMP = r"""
import json, sys, torch
state = torch.load(sys.argv[1], map_location="cpu", weights_only=False)
stamp = state["state"]["timestamp"]["Timestamp"]
print(json.dumps({"batch": int(stamp["batch"]), "sample": int(stamp["sample"])}))
"""


def upgrade_job_lab() -> Lab:
    return Lab.from_env().beside(
        LAB,
        PREFIX,
        2650,
        gpu="sim",
        gpu_fail=FAILING,
        driver_versions=" ".join(VERSIONS),
        shared=f"{SHARED_DIR}:{CHECKPOINTS}",
    )


def lab(cmd: str) -> None:
    up = ["--hosts", str(len(HOSTS)), "--gpu", "sim", "--gpu-fail", FAILING]
    run_lab(upgrade_job_lab(), cmd, *(up if cmd == "up" else []))


def playbook(name: str, inventory: Path, extra: list[str], logfile: Path, *more: str) -> tuple[int, float, str]:
    env = dict(os.environ, ANSIBLE_CACHE_PLUGIN_CONNECTION=str(ROOT / LAB / "facts"), ANSIBLE_NOCOLOR="1")
    env["PATH"] = f"{BIN}:{env.get('PATH', '')}"
    cmd = [str(BIN / "ansible-playbook"), "-i", str(inventory), name, *more]
    for e in extra:
        cmd += ["-e", e]
    t0 = time.monotonic()
    with logfile.open("w") as out:
        rc = subprocess.run(cmd, cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT, check=False).returncode
    return rc, round(time.monotonic() - t0, 1), logfile.read_text()


def journal(host: str, since: float) -> list[tuple[float, str]]:
    """(wall time, line) of the job unit's journal on the host since `since`, across boots (the
    lab image keeps a persistent journal): systemd's own lines and the rank's output."""
    proc = on(host, "journalctl", "--no-pager", "-o", "json", "-u", UNIT, "--since", f"@{int(since)}")
    lines = []
    for text in proc.stdout.splitlines():
        entry = json.loads(text)
        message = entry.get("MESSAGE", "")
        if isinstance(message, list):  # bytes that are not UTF-8
            message = bytes(message).decode(errors="replace")
        lines.append((int(entry["__REALTIME_TIMESTAMP"]) / 1e6, message))
    return lines


def unit_events(lines: list[tuple[float, str]]) -> dict[str, list[float]]:
    """When systemd began stopping the unit (SIGTERM), when it was stopped, when it started."""
    events: dict[str, list[float]] = {"stopping": [], "stopped": [], "started": []}
    for at, message in lines:
        for kind in events:
            if message.startswith(f"{kind.capitalize()} {UNIT}"):
                events[kind].append(at)
    return events


def stopped_lines(lines: list[tuple[float, str]]) -> list[re.Match]:
    return [m for _, message in lines if (m := STOPPED_LINE.search(message))]


def console_batches(lines: list[tuple[float, str]]) -> list[tuple[float, int]]:
    return [(at, int(m[1])) for at, message in lines if (m := CONSOLE_BATCH.match(message))]


def wait_for_batches(host: str, since: float, after: float, count: int, timeout: float) -> list[tuple[float, int]]:
    """Rank 0's console lines since `since`, once `count` batches were logged after wall time `after`."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        seen = [(at, n) for at, n in console_batches(journal(host, since)) if at >= after]
        if len(seen) >= count:
            return seen
        if any(unit_active(h) not in ("active", "activating") for h in HOSTS):
            break  # a rank crashed: its journal says why
        time.sleep(3)
    return [(at, n) for at, n in console_batches(journal(host, since)) if at >= after]


def unit_active(host: str) -> str:
    return on(host, "systemctl", "is-active", UNIT).stdout.strip()


def boots(host: str, since: float) -> list[float]:
    """Wall times at which the host booted since `since`: lab-boot.service starts at every boot
    (a container's restart keeps the machine's kernel boot id, so journalctl's boots do not tell)."""
    proc = on(host, "journalctl", "--no-pager", "-o", "json", "-u", "lab-boot.service", "--since", f"@{int(since)}")
    starts = []
    for text in proc.stdout.splitlines():
        entry = json.loads(text)
        if str(entry.get("MESSAGE", "")).startswith("lab-boot: boot id "):  # its first line at every boot
            starts.append(int(entry["__REALTIME_TIMESTAMP"]) / 1e6)
    return starts


def checkpoint_stamp(python: Path) -> tuple[str, dict]:
    """The shared folder's latest checkpoint of rank 0 (the link's target) and its Composer timestamp."""
    latest = ROOT / LAB / SHARED_DIR / RUN_NAME / "latest-rank0.pt"
    if not latest.is_symlink():
        return "", {}
    proc = subprocess.run([str(python), "-c", READ_TIMESTAMP, str(latest)], capture_output=True, text=True, check=False)
    stamp = json.loads(proc.stdout) if proc.returncode == 0 else {"error": proc.stderr[-400:]}
    return str(latest.readlink()), stamp


def drain_figures(events: dict[str, dict[str, list[float]]], since: float) -> dict[str, float]:
    """Seconds, from each host's first stop after `since`: SIGTERM to both units inactive (drain),
    SIGTERM to both active again (down); the spread of the SIGTERMs across the hosts."""
    sigterm = {h: min((t for t in e["stopping"] if t >= since), default=0.0) for h, e in events.items()}
    stopped = {h: min((t for t in e["stopped"] if t >= sigterm[h]), default=0.0) for h, e in events.items()}
    started = {h: min((t for t in e["started"] if t >= stopped[h]), default=0.0) for h, e in events.items()}
    first = min(sigterm.values())
    figures = {
        "sigterm_spread_s": round(max(sigterm.values()) - first, 2),
        "drain_s": round(max(stopped.values()) - first, 2),
    }
    if all(started.values()):
        figures["down_s"] = round(max(started.values()) - first, 2)
    figures["_sigterm"], figures["_stopped"], figures["_started"] = sigterm, stopped, started  # type: ignore[assignment]
    return figures


def check_whole_drain(checks: Checks, since: float) -> tuple[dict, dict, dict[str, int]]:
    """A rollout's drain of the job since `since`, read from both hosts' journals: SIGTERM on
    both units together, both ranks stopped after the same batch. Returns the drain's figures,
    each host's stop lines and the batch each rank stopped after."""
    lines = {host: journal(host, since) for host in HOSTS}
    figures = drain_figures({host: unit_events(lines[host]) for host in HOSTS}, since)
    checks.expect(
        all(figures["_sigterm"].values()) and figures["sigterm_spread_s"] < 10,
        f"SIGTERM on both units together: {figures['sigterm_spread_s']} s apart",
    )
    stops = {host: stopped_lines(lines[host]) for host in HOSTS}
    steps = {host: int(m[0][1]) for host, m in stops.items() if m}
    checks.expect(
        len(steps) == WORLD and len(set(steps.values())) == 1,
        f"both ranks stopped after the same batch: {steps}",
    )
    return figures, stops, steps


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--batches", type=int, default=3, help="batches the job trains before each rollout")
    p.add_argument("--no-fail", action="store_true", help="leave out the rollout under which the 2nd host fails")
    p.add_argument("--keep", action="store_true", help="keep the lab hosts afterwards")
    args = p.parse_args()
    python = Lab.from_env(python=".venvs/loader/bin/python").python_path
    old, mid, new = VERSIONS
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
                "hf_loader_train_stop_timeout": STOP_TIMEOUT,
                "fleet_report_dir": str(reports),
                "hf_loader_fleet_report_dir": f"{reports}/hosts",
            }
        )
    ]
    rollout_vars = [
        *extra,
        json.dumps(
            {
                "upgrade_driver_serial": 2,
                "upgrade_driver_report_dir": str(reports),
                "upgrade_driver_pause_after_canary": False,
                # Both hosts of the job are taken out at once: the default budget (25%) of a
                # 2-host fleet is one host, and a job larger than the budget is skipped.
                "upgrade_driver_max_unavailable": len(HOSTS),
                "upgrade_driver_drain_timeout": STOP_TIMEOUT + 30,
            }
        ),
    ]
    checks = Checks()
    times: dict[str, float] = {}
    figures: dict[str, dict] = {}
    report_file = reports / "upgrade-driver.json"
    try:
        t0 = time.monotonic()
        lab("up")
        times["lab up"] = round(time.monotonic() - t0, 1)

        log(f"site.yml: first converge, the loader's production stack, driver {old}")
        rc, times["site.yml"], _ = playbook("site.yml", inventory, extra, logs / "site.log")
        checks.expect(rc == 0, f"site.yml converged both hosts (log {logs / 'site.log'})")
        if rc != 0:
            return 1
        for host in HOSTS:
            checks.expect(loaded_driver(host) == old, f"{host} runs {old}")
            paths = on(host, "systemctl", "show", "-p", "ReadWritePaths", "--value", f"hf-train@{JOB}.service").stdout
            checks.expect(CHECKPOINTS in paths.split(), f"{host}: the unit may write {CHECKPOINTS} ({paths.strip()})")
        uids = {host: on(host, "id", "-u", "trainer").stdout.strip() for host in HOSTS}
        checks.expect(len(set(uids.values())) == 1, f"the training user has one uid on both hosts: {uids}")

        log(f"train.yml: one job on {', '.join(HOSTS)}, autoresume, save_folder {TRAIN_CONFIG['save_folder']}")
        started_at = time.time()
        rc, times["train.yml"], _ = playbook("playbooks/train.yml", inventory, extra, logs / "train.log")
        checks.expect(rc == 0, f"train.yml started the job (log {logs / 'train.log'})")
        for host in HOSTS:
            record = json.loads(on(host, "cat", f"/etc/hf-loader/job-{JOB}.json").stdout or "{}")
            checks.expect(
                record.get("hosts") == HOSTS and record.get("autoresume") is True,
                f"{host}: job record names both hosts, autoresume on (node rank {record.get('node_rank')})",
            )
            checks.expect(unit_active(host) == "active", f"{host}: {UNIT} runs")
        trained = wait_for_batches(HOSTS[0], started_at, started_at, args.batches, timeout=900)
        times[f"job start to batch {args.batches}"] = round(trained[-1][0] - started_at, 1) if trained else -1
        checks.expect(len(trained) >= args.batches, f"the job trained {len(trained)} batches before the rollout")
        if checks.failed:
            for host in HOSTS:  # the lab is removed at the end: keep why a rank stopped
                for _, line in journal(host, started_at)[-15:]:
                    log(f"{host} {UNIT}: {line}")
            return 1

        log(f"upgrade-driver.yml: {old} -> {mid} under the job")
        before = time.time()
        rc, times[f"upgrade-driver.yml to {mid}"], _ = playbook(
            "playbooks/upgrade-driver.yml", inventory, [*rollout_vars, f"upgrade_driver_version={mid}"],
            logs / "upgrade-driver.log",
        )  # fmt: skip
        doc = json.loads(report_file.read_text()) if report_file.exists() else {"rows": [], "batches": []}
        rows = {row["host"]: row for row in doc["rows"]}
        checks.expect(rc == 0, f"the rollout to {mid} succeeds (rc {rc}, log {logs / 'upgrade-driver.log'})")
        shared_batch = [b for b in doc["batches"] if set(HOSTS) <= set(b["hosts"])]
        checks.expect(bool(shared_batch), f"both job hosts in one batch: {[b['hosts'] for b in doc['batches']]}")
        first, stops, steps = check_whole_drain(checks, before)
        figures[f"to {mid}"] = first
        step = steps.get(HOSTS[0], -1)
        saved = stops[HOSTS[0]][0][2] if stops[HOSTS[0]] else ""
        target, stamp = checkpoint_stamp(python)
        checks.expect(
            bool(target) and saved == f"checkpoint {CHECKPOINTS}/{RUN_NAME}/{Path(target).name}",
            f"rank 0 wrote the checkpoint at the stop: {saved!r} (latest-rank0.pt -> {target})",
        )
        checks.expect(
            stamp.get("batch") == step and stamp.get("sample") == step * BATCH * WORLD,
            f"the checkpoint says batch {step}, sample {step * BATCH * WORLD}: {stamp}",
        )
        for host in HOSTS:
            checks.expect(rows.get(host, {}).get("state") == "upgraded", f"{host}: upgraded ({rows.get(host, {})})")
            checks.expect(loaded_driver(host) == mid, f"{host} runs {mid}")
            checks.expect(unit_active(host) == "active", f"{host}: {UNIT} runs again")
        booted = {host: max(boots(host, before), default=0.0) for host in HOSTS}
        restarted = first["_started"]
        checks.expect(
            all(booted.values()) and all(restarted.values()) and min(restarted.values()) > max(booted.values()),
            "both hosts rebooted after the drain, and both units started again only after both were back "
            f"(booted {sorted(round(t - before, 1) for t in booted.values())} s, "
            f"started {sorted(round(t - before, 1) for t in restarted.values())} s into the rollout)",
        )
        resumed = wait_for_batches(HOSTS[0], before, max(restarted.values() or [before]), args.batches, timeout=900)
        checks.expect(
            bool(resumed) and resumed[0][1] == step + 1,
            f"the restarted job's first batch is {resumed[0][1] if resumed else None}, the checkpoint's {step} + 1",
        )
        if resumed:
            first["first_batch_after_s"] = round(resumed[0][0] - min(first["_sigterm"].values()), 2)
        times[f"restart to {args.batches} batches"] = (
            round(resumed[-1][0] - max(restarted.values()), 1) if resumed and restarted else -1
        )

        second_step = None
        if not args.no_fail:
            branch = new.split(".")[0]
            log(f"upgrade-driver.yml: {mid} -> branch {branch}, its newest {new}; one GPU of {FAILING} fails under it")
            before = time.time()
            rc, times[f"upgrade-driver.yml to branch {branch} ({new})"], _ = playbook(
                "playbooks/upgrade-driver.yml", inventory, [*rollout_vars, f"upgrade_driver_branch={branch}"],
                logs / "upgrade-driver-fail.log",
            )  # fmt: skip
            doc2 = json.loads(report_file.read_text()) if report_file.exists() else {"rows": [], "batches": []}
            rows = {row["host"]: row for row in doc2["rows"]}
            checks.expect(rc != 0, f"the rollout to {new} exits non-zero (rc {rc})")
            second, stops, steps2 = check_whole_drain(checks, before)
            figures[f"to {new}, {FAILING} fails"] = second
            second_step = steps2.get(HOSTS[0], -1)
            tail = f"{second_step} batches, {second_step * BATCH * WORLD} samples, resumed from batch {step} sample"
            tail += f" {step * BATCH * WORLD}"
            for host in HOSTS:
                line = stops[host][0][0] if stops[host] else ""
                checks.expect(tail in line, f"{host}: its rank counts on from the checkpoint: {line!r}")
            target, stamp = checkpoint_stamp(python)
            checks.expect(
                stamp.get("batch") == second_step and stamp.get("sample") == second_step * BATCH * WORLD,
                f"the new checkpoint ({target}) says batch {second_step}: {stamp}",
            )
            passed, failing = HOSTS[0], FAILING
            checks.expect(rows.get(passed, {}).get("state") == "upgraded", f"{passed}: upgraded")
            checks.expect(
                loaded_driver(passed) == new,
                f"{passed} runs branch {branch}'s newest driver {new}, not the {mid} it had ({loaded_driver(passed)})",
            )
            checks.expect(
                rows.get(failing, {}).get("state") == "failed",
                f"{failing}: failed ({json.dumps(rows.get(failing, {}))[:300]})",
            )
            for host in HOSTS:
                checks.expect(unit_active(host) != "active", f"{host}: {UNIT} stays stopped")
                left = on(host, "cat", "/var/lib/gpu-fleet/upgrade-driver-drained").stdout.split()
                checks.expect(UNIT in left, f"{host}: the stopped unit is remembered for the next rollout ({left})")
            said = " ".join(json.dumps(rows.get(host, {})) for host in HOSTS)
            checks.expect(
                f"job {JOB} stays stopped on all its hosts" in said and failing in said,
                f"the report says why the job stays stopped: {re.search(r'job [^.]*stays stopped[^.]*', said)}",
            )
            cordon = rollout_cordon(failing)
            checks.expect("failed" in cordon, f"{failing}: cordoned, saying why ({cordon[:160]})")
            rc_train, _, train_text = playbook(
                "playbooks/train.yml", inventory, extra, logs / "train-failed.log", "--limit", failing
            )
            line = next((ln.strip() for ln in train_text.splitlines() if "Not starting training" in ln), "")
            checks.expect(
                rc_train != 0 and "it is cordoned: upgrade-driver" in train_text,
                f"train.yml refuses {failing}: {line[:200]}",
            )
            checks.expect(unit_active(failing) != "active", f"{failing}: still no training after train.yml")
            print()
            print((reports / "upgrade-driver.md").read_text())
        else:
            before = time.time()
            for host in HOSTS:
                on(host, "systemctl", "stop", "--no-block", UNIT)
            time.sleep(STOP_TIMEOUT / 4)
            for host in HOSTS:
                line = next((m[0] for m in stopped_lines(journal(host, before))), "")
                checks.expect(f"resumed from batch {step} sample {step * BATCH * WORLD}" in line, f"{host}: {line!r}")

        print("Steps (wall seconds):")
        for name, seconds in times.items():
            print(f"  {name:40s} {seconds:7.1f}")
        for name, fig in figures.items():
            shown = {k: v for k, v in fig.items() if not k.startswith("_")}
            print(f"  rollout {name}: {shown}")
        (work / "results.json").write_text(
            json.dumps(
                {
                    "times": times,
                    "figures": {n: {k: v for k, v in f.items() if not k.startswith("_")} for n, f in figures.items()},
                    "first_stop_batch": step,
                    "second_stop_batch": second_step,
                },
                indent=2,
            )
            + "\n"
        )
    finally:
        if not args.keep:
            group_vars.unlink(missing_ok=True)
            lab("down")
    for what in checks.failed:
        print(f"[rehearsal] FAILED: {what}", file=sys.stderr)
    return 1 if checks.failed else 0


if __name__ == "__main__":
    sys.exit(main())
