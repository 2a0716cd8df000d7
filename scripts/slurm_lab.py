#!/usr/bin/env python3
"""The fleet's lab hosts as a Slurm cluster (playbooks/slurm.yml), checked on the hosts themselves.

    make lab-slurm                                   # 2 nodes and a controller; removed at the end
    .venvs/controller/bin/python scripts/slurm_lab.py [--nodes N] [--keep]

Steps, each checked:
1. Its own lab (lab/slurm, hosts slurm-gpu-NN on 127.0.0.1:2701..): `scripts/lab.py up`, the last
   host the controller. site.yml converges the nodes with the light software stack (the fleet
   bench's), so that each has the real cache test and a report that says ready.
2. playbooks/slurm.yml with a munge key made for this lab (Debian 12's Slurm 22.05;
   proctrack/linuxproc and task/none in containers); a second run, and one with --check --diff,
   change nothing; the key is in no log.
3. `sinfo` shows every node idle; `srun -N<nodes> hostname` runs on each of them.
4. An operator's drain whose reason looks like the health check's (no space after the prefix)
   survives a passing health check: it is never resumed.
5. The first node's cache is broken (an Arrow file moved away) and its cache test rerun: the
   health check drains the node with the cache test's reason; `srun -w` on it does not run.
   The cache is repaired and the cache test rerun: the health check resumes the node.
6. A cordon on the first node: the Prolog refuses a job there before it starts and drains the
   node with the cordon's reason; the cordon lifted, the health check resumes it and a job runs
   on every node again.
With --rollout (make lab-slurm-upgrade) the hosts have simulated GPUs (scripts/gpu_sim: the
older driver loaded, the newer one in the lab's NVIDIA repository) and, after step 6:
7. A requeueable 2-node batch job runs on the nodes; an operator drains the last node while it
   runs. playbooks/upgrade-driver.yml rolls the newer driver out over the nodes (a canary, then
   batches of one) while a poller reads every node's state and reason from the controller.
   Expected: every node runs the newer driver; the canary was held with the rollout's reason
   (gpu-fleet upgrade-driver: ...) before its install, the job requeued (it left both nodes), the
   canary resumed; the operator's node upgraded but never resumed, its reason as the operator
   set it; the report says upgraded and names the requeued job. The operator resumes the node:
   the job runs again, its restart count one higher (Slurm holds a requeued job about two
   minutes before it may start).
With --short (make lab-slurm-short) step 7 ends at the requeued job's check: the
operator's node is resumed but the job's restart is not waited for (Slurm's BeginTime hold, about
two minutes of Slurm's own behaviour; the long version waits for it).
The lab is removed at the end unless --keep. Python 3.11 standard library.
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import re
import secrets
import subprocess
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
from lablib import BIN, Lab, Logger, baked_host_image, lab_inventory, light_stack, run_lab  # noqa: E402  the lab library

sys.path.insert(0, str(ROOT / "scripts"))
from gpu_sim import build as gpu_build  # noqa: E402  the simulated driver versions

LAB = "lab/slurm"
PREFIX = "slurm-gpu-"
HEALTH = "/usr/local/sbin/gpu-fleet-slurm-health"
PROLOG = "/usr/local/sbin/gpu-fleet-slurm-prolog"
CACHE_ROOT = "/data/hf"  # inventory/lab/group_vars: fleet_cache_root
CORDON_DIR = "/var/lib/gpu-fleet/cordon"


log = Logger("slurm-lab")


class Checks:
    def __init__(self) -> None:
        self.failed: list[str] = []

    def expect(self, ok: bool, what: str) -> bool:
        log(f"{'ok  ' if ok else 'FAIL'} {what}")
        if not ok:
            self.failed.append(what)
        return ok


def slurm_lab(gpu: str, **changes: str) -> Lab:
    return Lab.from_env().beside(LAB, PREFIX, 2700, gpu=gpu, **changes)


def lab(cmd: str, n: int, gpu: str = "none", **changes: str) -> None:
    run_lab(slurm_lab(gpu, **changes), cmd, *(["--hosts", str(n), "--gpu", gpu] if cmd == "up" else []))


def playbook(name: str, inventory: Path, extra: list[str], logfile: Path, *more: str) -> tuple[int, str]:
    env = dict(os.environ, ANSIBLE_CACHE_PLUGIN_CONNECTION=str(ROOT / LAB / "facts"), ANSIBLE_NOCOLOR="1")
    env["PATH"] = f"{BIN}:{env.get('PATH', '')}"
    cmd = [str(BIN / "ansible-playbook"), "-i", str(inventory), name, *more]
    for e in extra:
        cmd += ["-e", e]
    with logfile.open("w") as out:
        rc = subprocess.run(cmd, cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT, check=False).returncode
    return rc, logfile.read_text()


def on(host: str, *argv: str, timeout: int = 120) -> subprocess.CompletedProcess:
    try:
        return subprocess.run(
            ["docker", "exec", host, *argv], capture_output=True, text=True, check=False, timeout=timeout
        )
    except subprocess.TimeoutExpired as error:
        return subprocess.CompletedProcess(error.cmd, 124, str(error.stdout or ""), f"timed out after {timeout} s")


def changed_per_host(text: str) -> dict[str, int]:
    return {m[1]: int(m[2]) for m in re.finditer(r"^(\S+)\s+: ok=\d+\s+changed=(\d+)", text, re.M)}


def node_state(controller: str, node: str) -> tuple[str, str]:
    """(State=..., Reason=... without Slurm's [user@time]) of `scontrol show node`."""
    text = on(controller, "scontrol", "show", "node", node).stdout
    state = re.search(r"\bState=(\S+)", text)
    reason = re.search(r"^\s*Reason=(.*?)(?:\s+\[[^\]]*\])?$", text, re.M)
    return (state[1] if state else ""), (reason[1] if reason else "")


def stale_addresses(controller: str, nodes: list[str]) -> dict[str, tuple[str, str]]:
    """The nodes whose NodeAddr (as the controller has it) is not an address the node has now:
    {node: (NodeAddr, its addresses)}. Reboots must not move a node away from its NodeAddr."""
    stale = {}
    for node in nodes:
        found = re.search(r"\bNodeAddr=(\S+)", on(controller, "scontrol", "show", "node", node).stdout)
        addresses = on(node, "hostname", "-I").stdout.split()
        if not found or found[1] not in addresses:
            stale[node] = (found[1] if found else "", " ".join(addresses))
    return stale


def wait_idle(controller: str, nodes: list[str], seconds: int = 90) -> dict[str, str]:
    states: dict[str, str] = {}
    for _ in range(seconds // 2):
        states = {node: node_state(controller, node)[0] for node in nodes}
        if all(state == "IDLE" for state in states.values()):
            break
        time.sleep(2)
    return states


def write_slurm_inventory(work: Path, nodes: list[str], controller: str, gres: bool = True) -> Path:
    """The Slurm groups beside the lab's hosts.yml, and this lab's munge key (0600, never logged)."""
    key = base64.b64encode(secrets.token_bytes(1024)).decode()
    secret = work / "munge-key.yml"
    secret.touch(mode=0o600)
    secret.write_text(json.dumps({"slurm_node_munge_key": key, "slurm_controller_munge_key": key}) + "\n")
    groups = {
        "slurm_controller": {"hosts": {controller: None}},
        "slurm_nodes": {
            "hosts": dict.fromkeys(nodes),
            # The simulated GPUs have no /dev/nvidiaN for gres.conf's File=: no Gres in that lab.
            "vars": {"slurm_node_memory_reserve_mb": 512, **({} if gres else {"slurm_node_gpu_count": 0})},
        },
        "all": {
            "vars": {
                # Containers: no delegated cgroup tree for slurmd.
                "slurm_controller_proctrack_type": "proctrack/linuxproc",
                "slurm_controller_task_plugin": "task/none",
            }
        },
    }
    (work / "inventory" / "slurm.yml").write_text("---\n" + json.dumps(groups, indent=2) + "\n")
    return secret


class NodeWatch(threading.Thread):
    """Every node's (State=, Reason=) as the controller reports them, read every 2 s while a runbook
    runs: each node's successive states, as Slurm showed them."""

    def __init__(self, controller: str, nodes: list[str]) -> None:
        super().__init__(daemon=True)
        self.controller, self.nodes = controller, nodes
        self.seen: dict[str, list[tuple[str, str]]] = {node: [] for node in nodes}
        self.done = threading.Event()

    def run(self) -> None:
        while not self.done.is_set():
            for node in self.nodes:
                now = node_state(self.controller, node)
                if now[0] and (not self.seen[node] or self.seen[node][-1] != now):
                    self.seen[node].append(now)
            self.done.wait(2)

    def stop(self) -> None:
        self.done.set()
        self.join(timeout=30)


def job_fields(controller: str, job_id: str) -> dict[str, str]:
    """JobState=, Restarts=, NodeList= and Reason= of `scontrol -o show job`."""
    text = on(controller, "scontrol", "-o", "show", "job", job_id).stdout
    return {
        key: (m[1] if (m := re.search(rf"(?:^|\s){key}=(\S*)", text)) else "")
        for key in ("JobState", "Restarts", "NodeList", "Reason")
    }


def wait_job(controller: str, job_id: str, state: str, seconds: int) -> dict[str, str]:
    fields = job_fields(controller, job_id)
    for _ in range(seconds // 3):
        if fields["JobState"] == state:
            break
        time.sleep(3)
        fields = job_fields(controller, job_id)
    return fields


def loaded_driver(host: str) -> str:
    text = on(host, "cat", "/proc/driver/nvidia/version").stdout
    fields = text.split("Kernel Module for x86_64", 1)[-1].split()
    return fields[0] if text.startswith("NVRM version:") and fields else ""


def rollout(
    checks: Checks, inventory: Path, extra: list[str], logs: Path, nodes: list[str], controller: str, short: bool
) -> float:
    """Step 7: the driver rollout through Slurm, with a requeueable job on the nodes; its seconds.
    short: the job's restart after the operator's resume is not waited for."""
    versions = gpu_build.parse_versions(Lab.from_env().driver_versions)
    old, new = versions[0], versions[-1]
    canary, last = nodes[0], nodes[-1]
    for node in nodes:
        checks.expect(loaded_driver(node) == old, f"{node} runs the older simulated driver {old}")
    submitted = on(
        controller,
        "sbatch",
        "--parsable",
        "--requeue",
        f"-N{len(nodes)}",
        "--job-name=lab-rollout",
        "--output=/tmp/lab-rollout-%j.out",
        "--wrap",
        "srun sleep 3600",
    )
    job = submitted.stdout.strip().split(";")[0]
    before = wait_job(controller, job, "RUNNING", 60)
    if not checks.expect(
        before["JobState"] == "RUNNING", f"job {job} (sbatch --requeue -N{len(nodes)}) runs on {before['NodeList']}"
    ):
        return 0.0
    operator = "RMA fan swap, keep drained"
    on(controller, "scontrol", "update", f"nodename={last}", "state=drain", f"reason={operator}")
    reports = ROOT / LAB / "reports"
    watch = NodeWatch(controller, nodes)
    watch.start()
    t0 = time.monotonic()
    rc, _ = playbook(
        "playbooks/upgrade-driver.yml",
        inventory,
        [
            *extra,
            f"upgrade_driver_version={new}",
            "upgrade_driver_hosts=slurm_nodes",
            "upgrade_driver_serial=1",
            "upgrade_driver_pause_after_canary=false",
            f"upgrade_driver_report_dir={reports}",
        ],
        logs / "upgrade-driver.log",
    )
    seconds = round(time.monotonic() - t0, 1)
    watch.stop()
    for node in nodes:
        log(f"{node} as the controller showed it during the rollout: {watch.seen[node]}")
    report = json.loads((reports / "upgrade-driver.json").read_text()) if rc == 0 else {}
    rows = {row["host"]: row for row in report.get("rows", [])}
    checks.expect(
        rc == 0, f"upgrade-driver.yml rolled {new} out over the Slurm nodes (log {logs / 'upgrade-driver.log'})"
    )
    for node in nodes:
        checks.expect(
            loaded_driver(node) == new and rows.get(node, {}).get("state") == "upgraded",
            f"{node} runs {new}, reported {rows.get(node, {}).get('state')}",
        )
    held = [
        reason for _, reason in watch.seen[canary] if reason.startswith("gpu-fleet upgrade-driver: driver rollout to")
    ]
    checks.expect(bool(held), f"the canary {canary} was held through Slurm with the rollout's reason ({held[:1]})")
    checks.expect(
        f"Slurm jobs requeued: {job}" in rows.get(canary, {}).get("detail", ""),
        f"the report names job {job} requeued on {canary}: {rows.get(canary, {}).get('detail', '')[-200:]!r}",
    )
    state, reason = node_state(controller, canary)
    checks.expect("DRAIN" not in state and not reason, f"the rollout resumed {canary} ({state}, {reason!r})")
    reasons = {reason for _, reason in watch.seen[last]}
    state, reason = node_state(controller, last)
    checks.expect(
        "DRAIN" in state and reason == operator and reasons == {operator},
        f"the operator's drain of {last} never taken over nor resumed ({state}, {reason!r}; seen {sorted(reasons)})",
    )
    after = job_fields(controller, job)
    checks.expect(
        int(after["Restarts"] or 0) > int(before["Restarts"] or 0) and after["JobState"] == "PENDING",
        f"job {job} was requeued and waits for nodes ({after})",
    )
    stale = stale_addresses(controller, nodes)
    checks.expect(not stale, f"after the rollout's reboots every node is still at its NodeAddr (stale: {stale})")
    on(controller, "scontrol", "update", f"nodename={last}", "state=resume")
    if not short:
        again = wait_job(controller, job, "RUNNING", 240)
        checks.expect(again["JobState"] == "RUNNING", f"the operator resumed {last}: job {job} runs again ({again})")
    on(controller, "scancel", job)
    return seconds


def cache_test(host: str) -> int:
    """hf_loader's cache test unit, run now (it writes the report the health check reads)."""
    return on(host, "systemctl", "start", "hf-cache-test.service", timeout=600).returncode


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--nodes", type=int, default=2)
    p.add_argument("--keep", action="store_true", help="keep the lab hosts afterwards")
    p.add_argument(
        "--rollout", action="store_true", help="simulated GPUs, and the driver rollout through Slurm (step 7)"
    )
    p.add_argument("--short", action="store_true", help="with --rollout: do not wait for the requeued job to run again")
    args = p.parse_args()
    if args.short and not args.rollout:
        sys.exit("--short shortens the rollout step: use it with --rollout")
    gpu = "sim" if args.rollout else "none"
    if not 1 <= args.nodes <= 8:
        sys.exit("--nodes must be 1..8")
    hosts = [f"{PREFIX}{i:02d}" for i in range(1, args.nodes + 2)]
    nodes, controller = hosts[:-1], hosts[-1]
    work = ROOT / LAB
    logs = work / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    inventory, group_vars = lab_inventory(work)
    reports = work / "reports"
    light = light_stack(work)
    extra = [*light, f"fleet_report_dir={reports}", f"hf_loader_fleet_report_dir={reports}/hosts"]
    checks = Checks()
    times: dict[str, float] = {}
    first = nodes[0]
    try:
        t0 = time.monotonic()
        lab("up", len(hosts), gpu, image=baked_host_image(work, light))
        times["lab up"] = round(time.monotonic() - t0, 1)
        secret = write_slurm_inventory(work, nodes, controller, gres=not args.rollout)

        t0 = time.monotonic()
        rc, _ = playbook("site.yml", inventory, extra, logs / "site.log", "--limit", ",".join(nodes))
        times["site.yml (nodes)"] = round(time.monotonic() - t0, 1)
        if not checks.expect(rc == 0, f"site.yml converged the nodes (log {logs / 'site.log'})"):
            return 1

        slurm_extra = [f"@{secret}"]
        t0 = time.monotonic()
        rc, text = playbook("playbooks/slurm.yml", inventory, slurm_extra, logs / "slurm.log")
        times["slurm.yml"] = round(time.monotonic() - t0, 1)
        if not checks.expect(
            rc == 0, f"playbooks/slurm.yml set up the controller and the nodes (log {logs / 'slurm.log'})"
        ):
            return 1
        t0 = time.monotonic()
        rc, text = playbook("playbooks/slurm.yml", inventory, slurm_extra, logs / "slurm-again.log")
        times["slurm.yml again"] = round(time.monotonic() - t0, 1)
        changed = changed_per_host(text)
        checks.expect(rc == 0 and changed and not any(changed.values()), f"a second run changes nothing ({changed})")
        rc, text = playbook(
            "playbooks/slurm.yml", inventory, slurm_extra, logs / "slurm-check.log", "--check", "--diff"
        )
        changed = changed_per_host(text)
        checks.expect(
            rc == 0 and changed and not any(changed.values()),
            f"--check --diff on the cluster changes nothing ({changed})",
        )
        key = json.loads(secret.read_text())["slurm_node_munge_key"]
        logged = "".join((logs / name).read_text() for name in ("slurm.log", "slurm-again.log", "slurm-check.log"))
        checks.expect(key not in logged and key[:40] not in logged, "the munge key is never logged")

        # slurmd ran the health check at its start; run it once more now, as every
        # HealthCheckInterval would (a kept lab's nodes may hold an older drain of the check's own).
        for name in nodes:
            log(f"{name}: {on(name, HEALTH).stdout.strip()}")
        states = wait_idle(controller, nodes)
        checks.expect(all(s == "IDLE" for s in states.values()), f"sinfo: every node idle ({states})")
        stale = stale_addresses(controller, nodes)
        checks.expect(not stale, f"after site.yml's reboots every node is at its NodeAddr (stale: {stale})")
        sinfo = on(controller, "sinfo", "-N", "-h", "-o", "%N %t %G %f").stdout.strip()
        log(f"sinfo -N: {sinfo!r}")
        srun = on(controller, "srun", f"-N{len(nodes)}", "--immediate=30", "--time=1", "hostname", timeout=120)
        ran = sorted(srun.stdout.split())
        checks.expect(srun.returncode == 0 and ran == sorted(nodes), f"srun -N{len(nodes)} hostname ran on {ran}")

        # An operator's drain that looks like ours (no space after the prefix) is never resumed.
        looks_ours = "hf-health:maintenance by an operator"
        on(controller, "scontrol", "update", f"nodename={first}", "state=drain", f"reason={looks_ours}")
        health = on(first, HEALTH)
        state, reason = node_state(controller, first)
        checks.expect(
            "DRAIN" in state and reason == looks_ours,
            f"an operator's look-alike drain survives a passing health check ({state}, {reason!r}; "
            f"{health.stdout.strip()})",
        )
        on(controller, "scontrol", "update", f"nodename={first}", "state=resume")

        # A broken cache: the health check drains the node with the cache test's reason. Both copies
        # are broken (the cache test passes over a broken Arrow copy to a complete hub snapshot).
        moved = on(
            first,
            "sh",
            "-c",
            f"for f in $(find {CACHE_ROOT}/datasets -name '*-train.arrow') "
            f"$(find {CACHE_ROOT}/hub -path '*/snapshots/*' -name 'train-00000-*'); "
            'do mv "$f" "$f.away"; echo $f; done',
        )
        broken = moved.stdout.split()
        checks.expect(len(broken) == 2 and cache_test(first) != 0, f"the cache test fails on {first} without {broken}")
        health = on(first, HEALTH)
        state, reason = node_state(controller, first)
        checks.expect(
            "DRAIN" in state and reason.startswith("hf-health: cache test exit"),
            f"the health check drained {first}: {state}, {reason!r}",
        )
        srun = on(controller, "srun", "-w", first, "--immediate=5", "--time=1", "hostname", timeout=60)
        checks.expect(srun.returncode != 0, f"no job runs on the drained {first} ({srun.stderr.strip()[:160]})")
        for path in broken:
            on(first, "mv", f"{path}.away", path)
        checks.expect(cache_test(first) == 0, f"the cache test passes again on {first} after the repair")
        health = on(first, HEALTH)
        states = wait_idle(controller, [first], 20)
        checks.expect(states[first] == "IDLE", f"the health check resumed {first} ({states}; {health.stdout.strip()})")

        # A cordon: the Prolog refuses a job on the node before it starts, draining it with its own
        # reason (Slurm keeps it: it drains a node whose Prolog failed only when not drained yet).
        on(first, "sh", "-c", f'mkdir -p {CORDON_DIR} && echo \'{{"reason": "lab check"}}\' > {CORDON_DIR}/operator')
        srun = on(controller, "srun", "-w", first, "--immediate=30", "--time=1", "hostname", timeout=60)
        state, reason = node_state(controller, first)
        checks.expect(
            srun.returncode != 0 and first not in srun.stdout and "prolog" in srun.stderr.lower(),
            f"the Prolog refused a job on the cordoned {first} (srun: {srun.stderr.strip()[-120:]!r})",
        )
        checks.expect(
            "DRAIN" in state and reason == "hf-health: cordoned by operator: lab check",
            f"the Prolog drained {first} with the cordon's reason ({state}, {reason!r})",
        )
        on(first, "rm", "-f", f"{CORDON_DIR}/operator")
        health = on(first, HEALTH)
        states = wait_idle(controller, [first], 20)
        checks.expect(states[first] == "IDLE", f"the cordon lifted, the health check resumed {first} ({states})")
        srun = on(controller, "srun", f"-N{len(nodes)}", "--immediate=30", "--time=1", "hostname", timeout=120)
        ran = sorted(srun.stdout.split())
        checks.expect(
            srun.returncode == 0 and ran == sorted(nodes), f"srun -N{len(nodes)} hostname runs again on {ran}"
        )
        if args.rollout and not checks.failed:
            times["upgrade-driver.yml"] = rollout(checks, inventory, extra, logs, nodes, controller, args.short)
        print("Steps (wall seconds):")
        for step, seconds in times.items():
            print(f"  {step:24s} {seconds:7.1f}")
    finally:
        if not args.keep:
            group_vars.unlink(missing_ok=True)
            lab("down", len(hosts), gpu)
            (work / "munge-key.yml").unlink(missing_ok=True)
    for what in checks.failed:
        print(f"[slurm-lab] FAILED: {what}", file=sys.stderr)
    return 1 if checks.failed else 0


if __name__ == "__main__":
    sys.exit(main())
