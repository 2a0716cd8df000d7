#!/usr/bin/env python3
"""Rehearse the rolling driver upgrade (playbooks/upgrade-driver.yml) on lab hosts with a
simulated GPU driver and real reboots, and check what it did on the hosts themselves.

    make lab-upgrade          # 6 hosts, canary + batches of 2, the 4th host fails verification;
                              # nvidia_driver's GPU tags alone (--gpu-tags)
    make lab-upgrade-short    # 2 hosts, canary + a batch of 1, the 2nd host fails (in `make test`); --gpu-tags too
    .venvs/controller/bin/python scripts/upgrade_rehearsal.py --hosts 6 --serial 2 --fail 4 [--gpu-tags] [--keep]

Steps, each checked:
1. Its own lab (lab/upgrade, hosts upgrade-gpu-NN on 127.0.0.1:2601..): `scripts/lab.py up
   --gpu sim` with the older simulated driver; site.yml converges it with the light software
   stack (the fleet bench's) and reboots each host to load the driver. Every host must then run
   the older driver with its dataset volume mounted again after the reboot.
   With --gpu-tags (make lab-upgrade): nvidia_driver's GPU steps (GPU_TAGS: services, reboot,
   verify), each tag alone through site.yml, all at once: the Molecule containers have no GPU,
   so this is where they have work to do. Each run must succeed, change nothing, and run on
   every host tasks of the step's own file (roles/nvidia_driver/tasks/STEP.yml), as the
   task_record callback (molecule/shared/callback_plugins) records them.
2. The cache test must catch a volume that did not come back: on the last host the volume is
   unmounted, playbooks/cache-test.yml must fail there naming the mount point, and it is
   mounted again.
3. A stand-in training job (lab-train@rehearsal.service) starts on every host.
4. The runbook in check mode changes nothing (every host keeps its driver and its job) and
   writes a report that says so. A target the repository lacks (a typo) stops the rollout
   before the first drain: every host keeps its driver and its job, and no cordon is set.
   Then it rolls the newer simulated driver out. On the failing
   host a second job starts while its driver is installed (a dpkg hook starts
   lab-train@late.service, as a scheduler might after the drain), so the role defers its
   reboot. Expected: every host up to the failing host's batch upgraded (newer driver loaded,
   its job drained with SIGTERM, checkpointed and running again, its cordon lifted), the
   failing host "reboot-pending", never "upgraded" (older driver still loaded, its first job
   left stopped, cordoned with the reason, train.yml refusing it), the rollout stopped there,
   every later host never touched (older driver, job never stopped); the runbook exits
   non-zero and its report says all of this.
5. The runbook again with the same target, the hook gone: the upgraded hosts are left alone
   ("current", or "not-reached" when the failing host was the canary: their job not stopped,
   not cordoned); the failing host's
   late job, started after the first plan, is seen and drained, the host reboots, fails
   verification and stays cordoned with that reason (train.yml refuses it); the jobs its
   rollouts left stopped are remembered on it for the rollout that passes there.
The runbook's own summary (batches and their seconds, the whole fleet) is printed, with the
time of each step. The lab is removed at the end unless --keep. Python 3.11 standard library.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "scripts"))
from lablib import BIN, Lab, Logger, baked_host_image, lab_inventory, light_stack, run_lab  # noqa: E402  the lab library

LAB = "lab/upgrade"
PREFIX = "upgrade-gpu-"
CACHE_ROOT = "/data/hf"  # inventory/lab/group_vars: fleet_cache_root
JOB = "lab-train@rehearsal.service"
CHECKPOINT = "/var/lib/lab-train/rehearsal/checkpoint"  # what the stand-in writes on SIGTERM
LATE_JOB = "lab-train@late.service"  # started on the failing host while its driver is installed
# dpkg runs it after each package operation: the job starts after the host was drained.
LATE_HOOK = "/etc/apt/apt.conf.d/99-rehearsal-late-job"
LATE_HOOK_TEXT = f'DPkg::Post-Invoke {{ "systemctl start {LATE_JOB} || true"; }};\n'
ROLLOUT_CORDON = "/var/lib/gpu-fleet/cordon/upgrade-driver"  # hf_loader_cordon_dir / upgrade_driver_cordon_owner
# Extra vars as JSON: a list given as key=value would reach the runbook as a string.
TRAINING_UNITS = json.dumps({"upgrade_driver_training_units": ["hf-train@*.service", "lab-train@*.service"]})
# nvidia_driver's steps of a host with a GPU: on the Molecule containers (no GPU) they have
# nothing to do (molecule/nvidia_driver declares them so); here each runs alone.
GPU_TAGS = ["nvidia_driver_services", "nvidia_driver_reboot", "nvidia_driver_verify"]
TASK_RECORD_PLUGINS = ROOT / "molecule" / "shared" / "callback_plugins"
DRIVER_TASKS = (ROOT / "roles" / "nvidia_driver" / "tasks").resolve()


log = Logger("rehearsal")


def upgrade_lab(fail: list[str], **changes: str) -> Lab:
    return Lab.from_env().beside(LAB, PREFIX, 2600, gpu="sim", gpu_fail=",".join(fail), **changes)


def lab(cmd: str, n: int, fail: list[str], **changes: str) -> None:
    up = ["--hosts", str(n), "--gpu", "sim", "--gpu-fail", ",".join(fail)]
    run_lab(upgrade_lab(fail, **changes), cmd, *(up if cmd == "up" else []))


def playbook(
    name: str, inventory: Path, extra: list[str], logfile: Path, *more: str, env_more: dict | None = None
) -> tuple[int, float, str]:
    env = dict(os.environ, ANSIBLE_CACHE_PLUGIN_CONNECTION=str(ROOT / LAB / "facts"), ANSIBLE_NOCOLOR="1")
    env.update(env_more or {})
    env["PATH"] = f"{BIN}:{env.get('PATH', '')}"
    cmd = [str(BIN / "ansible-playbook"), "-i", str(inventory), name, *more]
    for e in extra:
        cmd += ["-e", e]
    t0 = time.monotonic()
    with logfile.open("w") as out:
        rc = subprocess.run(cmd, cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT, check=False).returncode
    return rc, round(time.monotonic() - t0, 1), logfile.read_text()


def on(host: str, *argv: str) -> subprocess.CompletedProcess:
    return subprocess.run(["docker", "exec", host, *argv], capture_output=True, text=True, check=False)


def loaded_driver(host: str) -> str:
    text = on(host, "cat", "/proc/driver/nvidia/version").stdout
    fields = text.split("Kernel Module for x86_64", 1)[-1].split()
    return fields[0] if text.startswith("NVRM version:") and fields else ""


def mounted(host: str) -> bool:
    return on(host, "mountpoint", "-q", CACHE_ROOT).returncode == 0


def job_state(host: str) -> str:
    return on(host, "systemctl", "is-active", JOB).stdout.strip()


def checkpointed(host: str) -> bool:
    return on(host, "test", "-s", CHECKPOINT).returncode == 0


def rollout_cordon(host: str) -> str:
    """The rollout's cordon on the host ('' when none)."""
    return on(host, "cat", ROLLOUT_CORDON).stdout.strip()


def unit_refused(host: str) -> tuple[bool, str]:
    """Whether the real hf-train@ unit, started by hand, refuses the cordoned host in its gate
    (a launcher environment is written so that the unit gets as far as its gates)."""
    unit = "hf-train@cordon-check.service"
    on(
        host,
        "sh",
        "-c",
        "printf 'NPROC_PER_NODE=1\\nWORLD_SIZE=1\\nNODE_RANK=0\\n' > /etc/hf-loader/launch-cordon-check.env",
    )
    started = on(host, "systemctl", "start", unit)
    journal = on(host, "journalctl", "--no-pager", "-o", "cat", "-u", unit).stdout
    on(host, "rm", "-f", "/etc/hf-loader/launch-cordon-check.env")
    line = next((line for line in journal.splitlines() if "training is held" in line), "")
    return started.returncode != 0 and "cordoned" in line and "upgrade-driver" in line, line


def train_refused(inventory: Path, extra: list[str], logs: Path, host: str, tag: str) -> tuple[bool, str]:
    """playbooks/train.yml on the host alone: whether it refused the host as cordoned, and its message."""
    rc, _, text = playbook("playbooks/train.yml", inventory, extra, logs / f"train-{tag}.log", "--limit", host)
    line = next((line.strip() for line in text.splitlines() if "Not starting training" in line), "")
    return rc != 0 and "it is cordoned: upgrade-driver" in text, line


def step_tasks_run(record: Path, step: str) -> dict[str, list[str]]:
    """host -> the tasks of roles/nvidia_driver/tasks/STEP.yml that ran there (ok or changed, not an
    include), from a task_record callback file."""
    ran: dict[str, list[str]] = {}
    lines = record.read_text().splitlines() if record.exists() else []
    for result in map(json.loads, lines):
        file = Path(result["path"].rpartition(":")[0]).resolve()
        if file == DRIVER_TASKS / f"{step}.yml" and result["status"] in ("ok", "changed") and not result["include"]:
            ran.setdefault(result["host"], []).append(result["name"])
    return ran


def changed_per_host(text: str) -> dict[str, int]:
    """host -> changed= of the PLAY RECAP."""
    return {m[1]: int(m[2]) for m in re.finditer(r"^(\S+)\s+: ok=\d+\s+changed=(\d+)", text, re.M)}


def gpu_tags_alone(
    inventory: Path, extra: list[str], logs: Path, hosts: list[str], driver: str, checks: Checks
) -> None:
    """Each of GPU_TAGS alone through site.yml on the converged sim-GPU hosts (running `driver`),
    the runs together."""

    def run(tag: str) -> tuple[int, float, str]:
        record = logs / f"tag-{tag}.jsonl"
        record.unlink(missing_ok=True)
        env_more = {"ANSIBLE_CALLBACK_PLUGINS": str(TASK_RECORD_PLUGINS), "ANSIBLE_TASK_RECORD": str(record)}
        more = ("--tags", tag, "--skip-tags", "report")
        return playbook("site.yml", inventory, extra, logs / f"tag-{tag}.log", *more, env_more=env_more)

    with ThreadPoolExecutor(max_workers=len(GPU_TAGS)) as pool:
        done = dict(zip(GPU_TAGS, pool.map(run, GPU_TAGS), strict=True))
    for tag, (rc, seconds, text) in done.items():
        step = tag.removeprefix("nvidia_driver_")
        changed = changed_per_host(text)
        ran = step_tasks_run(logs / f"tag-{tag}.jsonl", step)
        checks.expect(rc == 0, f"--tags {tag} alone succeeds ({seconds} s, log {logs / f'tag-{tag}.log'})")
        for host in hosts:
            checks.expect(changed.get(host) == 0, f"{host}: --tags {tag} changes nothing (changed={changed.get(host)})")
            checks.expect(bool(ran.get(host)), f"{host}: --tags {tag} ran {step}.yml's tasks: {ran.get(host, [])}")
    checks.expect(all(loaded_driver(h) == driver for h in hosts), f"after the GPU tags: every host still runs {driver}")


class Checks:
    def __init__(self) -> None:
        self.failed: list[str] = []

    def expect(self, ok: bool, what: str) -> None:
        log(f"{'ok  ' if ok else 'FAIL'} {what}")
        if not ok:
            self.failed.append(what)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--hosts", type=int, default=6)
    p.add_argument("--serial", default="2", help="upgrade_driver_serial (after the canary)")
    p.add_argument(
        "--fail", type=int, default=4, help="the host (1-based) whose new driver fails verification; 0: none"
    )
    p.add_argument("--versions", default=Lab.from_env(driver_versions="580.82.07 580.95.05").driver_versions)
    p.add_argument("--keep", action="store_true", help="keep the lab hosts afterwards")
    p.add_argument(
        "--gpu-tags",
        action="store_true",
        help="after the first converge, run nvidia_driver's GPU tags alone (GPU_TAGS)",
    )
    args = p.parse_args()
    old, new = args.versions.split()[:2]
    hosts = [f"{PREFIX}{i:02d}" for i in range(1, args.hosts + 1)]
    fail = [hosts[args.fail - 1]] if args.fail else []
    work = ROOT / LAB
    logs = work / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    inventory, group_vars = lab_inventory(work)
    reports = work / "reports"
    light = light_stack(work)
    extra = [*light, f"fleet_report_dir={reports}", f"hf_loader_fleet_report_dir={reports}/hosts"]
    checks = Checks()
    times: dict[str, float] = {}
    try:
        t0 = time.monotonic()
        lab("up", args.hosts, fail, image=baked_host_image(work, light))
        times["lab up"] = round(time.monotonic() - t0, 1)

        log(f"site.yml: first converge, driver {old} installed and loaded by a reboot")
        rc, times["site.yml"], _ = playbook("site.yml", inventory, extra, logs / "site.log")
        checks.expect(rc == 0, f"site.yml converged every host (log {logs / 'site.log'})")
        for host in hosts:
            checks.expect(loaded_driver(host) == old, f"{host} runs {old} after its first reboot")
            checks.expect(mounted(host), f"{host} has its volume at {CACHE_ROOT} after the reboot")
        if checks.failed:
            return 1
        if args.gpu_tags:
            log(f"nvidia_driver's GPU tags alone, together: {' '.join(GPU_TAGS)}")
            t0 = time.monotonic()
            gpu_tags_alone(inventory, extra, logs, hosts, old, checks)
            times["GPU tags alone"] = round(time.monotonic() - t0, 1)
            if checks.failed:
                return 1

        probe = hosts[-1]
        on(probe, "umount", CACHE_ROOT)
        rc, times["cache test, volume unmounted"], text = playbook(
            "playbooks/cache-test.yml", inventory, extra, logs / "cache-test-unmounted.log", "--limit", probe
        )
        checks.expect(
            rc != 0 and f"{CACHE_ROOT} is not a mount point" in text,
            f"the cache test fails on {probe} while its volume is not mounted, naming {CACHE_ROOT}",
        )
        on(probe, "mount", CACHE_ROOT)
        checks.expect(mounted(probe), f"{probe}: volume mounted again")

        for host in hosts:
            on(host, "systemctl", "start", JOB)
            checks.expect(job_state(host) == "active", f"{host}: training stand-in {JOB} runs")
        for host in fail:
            subprocess.run(
                ["docker", "exec", "-i", host, "sh", "-c", f"cat > {LATE_HOOK}"],
                input=LATE_HOOK_TEXT,
                text=True,
                check=True,
            )

        log(f"upgrade-driver.yml: {old} -> {new}, canary then batches of {args.serial}, failing host: {fail or 'none'}")
        runbook_vars = [
            *extra,
            f"upgrade_driver_version={new}",
            f"upgrade_driver_serial={args.serial}",
            TRAINING_UNITS,
            f"upgrade_driver_report_dir={reports}",
            "upgrade_driver_pause_after_canary=false",
        ]
        rc, times["upgrade-driver.yml --check"], _ = playbook(
            "playbooks/upgrade-driver.yml", inventory, runbook_vars, logs / "upgrade-driver-check.log", "--check"
        )
        report_file = reports / "upgrade-driver.json"
        checked = json.loads(report_file.read_text()) if report_file.exists() else {}
        checks.expect(checked.get("check_mode") is True, "--check: the runbook wrote a report marked check mode")
        checks.expect(
            all(loaded_driver(h) == old and job_state(h) == "active" and not checkpointed(h) for h in hosts),
            f"--check: every host still runs {old} and its training, never stopped",
        )
        report_file.unlink(missing_ok=True)

        # A version the repository does not carry (a typo) must stop the rollout before the first
        # drain: the role's checks run on every host first, with every job still running.
        typo = f"{new.rsplit('.', 1)[0]}.99"
        rc, times["upgrade-driver.yml, a typo"], _ = playbook(
            "playbooks/upgrade-driver.yml",
            inventory,
            [*runbook_vars, f"upgrade_driver_version={typo}"],
            logs / "upgrade-driver-typo.log",
        )
        typoed = json.loads(report_file.read_text()) if report_file.exists() else {}
        checks.expect(
            rc != 0 and "the check before the first drain failed" in typoed.get("stopped", ""),
            f"a target the repository lacks ({typo}) stops the rollout before any drain: "
            f"{typoed.get('stopped', '')[:200]}",
        )
        checks.expect(
            all(
                loaded_driver(h) == old and job_state(h) == "active" and not checkpointed(h) and not rollout_cordon(h)
                for h in hosts
            ),
            f"after the typo every host still runs {old} and its training, never stopped nor cordoned",
        )
        report_file.unlink(missing_ok=True)

        rc, times["upgrade-driver.yml"], text = playbook(
            "playbooks/upgrade-driver.yml", inventory, runbook_vars, logs / "upgrade-driver.log"
        )
        checks.expect(report_file.exists(), f"the runbook wrote its report (log {logs / 'upgrade-driver.log'})")
        if not report_file.exists():
            return 1
        doc = json.loads(report_file.read_text())
        rows = {row["host"]: row for row in doc["rows"]}
        checks.expect((rc != 0) == bool(fail), f"the runbook exits {'non-zero' if fail else '0'} (rc {rc})")
        stop_batch = next((b for b in doc["batches"] if b["stop"]), None)
        reached = [h for b in doc["batches"] for h in b["hosts"]]
        for host in hosts:
            if host in fail:
                checks.expect(
                    rows[host]["state"] == "reboot-pending",
                    f"{host}: reboot-pending, not upgraded ({rows[host]['detail'][:200]})",
                )
                checks.expect(loaded_driver(host) == old, f"{host} still runs {old} (its reboot was deferred)")
                checks.expect(
                    on(host, "systemctl", "is-active", LATE_JOB).stdout.strip() == "active",
                    f"{host}: the job started during its install ({LATE_JOB}) runs, not killed by a reboot",
                )
                checks.expect(job_state(host) != "active", f"{host}: its drained training stays stopped")
                cordon = rollout_cordon(host)
                checks.expect("deferred" in cordon, f"{host}: stays cordoned, saying why ({cordon[:160]})")
                refused, line = train_refused(inventory, extra, logs, host, "reboot-pending")
                checks.expect(refused, f"{host}: train.yml refuses it as cordoned ({line[:200]})")
            elif host in reached:
                checks.expect(rows[host]["state"] == "upgraded", f"{host}: upgraded ({rows[host]['detail'][:120]})")
                checks.expect(loaded_driver(host) == new, f"{host} runs {new}")
                checks.expect(mounted(host), f"{host} has its volume after the reboot")
                checks.expect(checkpointed(host), f"{host}: the job got SIGTERM and wrote its checkpoint")
                checks.expect(job_state(host) == "active", f"{host}: its training runs again")
                checks.expect(not rollout_cordon(host), f"{host}: its cordon was lifted")
            else:
                checks.expect(rows[host]["state"] == "not-reached", f"{host}: not reached")
                checks.expect(loaded_driver(host) == old, f"{host} keeps {old}")
                checks.expect(
                    job_state(host) == "active" and not checkpointed(host), f"{host}: its training never stopped"
                )
        if fail:
            checks.expect(
                stop_batch is not None and fail[0] in stop_batch["hosts"] and bool(doc["stopped"]),
                f"the rollout stopped at the failing host's batch: {doc['stopped'][:200]}",
            )
        print()
        print((reports / "upgrade-driver.md").read_text())

        log("upgrade-driver.yml again, same target: upgraded hosts are current, their training untouched")
        for host in fail:
            on(host, "rm", "-f", LATE_HOOK)
        upgraded = [host for host in hosts if rows[host]["state"] == "upgraded"]
        stamps = {host: on(host, "stat", "-c", "%Y", CHECKPOINT).stdout.strip() for host in upgraded}
        rc, times["upgrade-driver.yml again"], _ = playbook(
            "playbooks/upgrade-driver.yml", inventory, runbook_vars, logs / "upgrade-driver-again.log"
        )
        again = {row["host"]: row for row in json.loads(report_file.read_text())["rows"]}
        checks.expect((rc != 0) == bool(fail), f"the rerun exits {'non-zero' if fail else '0'} (rc {rc})")
        for host in upgraded:
            # The canary is an idle host that needs the upgrade, else the first such job: with every
            # host training, that is the failing host, and a failed canary stops the rollout there.
            checks.expect(
                again[host]["state"] in ("current", "not-reached"),
                f"{host}: current, or not reached after the canary failed ({again[host]['detail'][:80]})",
            )
            checks.expect(not rollout_cordon(host), f"{host}: not cordoned")
            checks.expect(
                job_state(host) == "active" and on(host, "stat", "-c", "%Y", CHECKPOINT).stdout.strip() == stamps[host],
                f"{host}: its training was not stopped again",
            )
        for host in fail:
            checks.expect(again[host]["state"] == "failed", f"{host}: failed ({again[host]['detail'][:160]})")
            checks.expect("GPU" in again[host]["detail"], f"{host}: its report names the GPU count")
            checks.expect(loaded_driver(host) == new, f"{host}: rebooted into {new} (which fails verification)")
            checks.expect(
                LATE_JOB in again[host].get("drained", [])
                and on(host, "systemctl", "is-active", LATE_JOB).stdout.strip() != "active",
                f"{host}: the job started after the first plan was read is seen and drained",
            )
            cordon = rollout_cordon(host)
            checks.expect(
                "failed" in cordon and "GPU" in cordon, f"{host}: stays cordoned, saying why ({cordon[:160]})"
            )
            refused, line = train_refused(inventory, extra, logs, host, "failed")
            checks.expect(refused, f"{host}: train.yml refuses it as cordoned ({line[:200]})")
            refused, line = unit_refused(host)
            checks.expect(refused, f"{host}: hf-train@ started by hand refuses it in its gate ({line[:200]})")
            left = set(on(host, "cat", "/var/lib/gpu-fleet/upgrade-driver-drained").stdout.split())
            checks.expect(
                left == {JOB, LATE_JOB}, f"{host}: the units its rollouts left stopped are remembered for the next one"
            )
        print("Steps (wall seconds):")
        for step, seconds in times.items():
            print(f"  {step:32s} {seconds:7.1f}")
        print(f"  batches (runbook's own timing): {doc['batch_seconds']}, fleet {doc['fleet_seconds']} s")
        (work / "results.json").write_text(
            json.dumps(
                {"hosts": args.hosts, "serial": args.serial, "fail": fail, "times": times, "report": doc}, indent=2
            )
            + "\n"
        )
    finally:
        if not args.keep:
            group_vars.unlink(missing_ok=True)
            lab("down", args.hosts, fail)
    for what in checks.failed:
        print(f"[rehearsal] FAILED: {what}", file=sys.stderr)
    return 1 if checks.failed else 0


if __name__ == "__main__":
    sys.exit(main())
