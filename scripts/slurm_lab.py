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
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "bench"))
from fleet_rerun import BIN, lab_inventory, light_stack  # noqa: E402  the fleet bench's lab helpers

LAB = "lab/slurm"
PREFIX = "slurm-gpu-"
HEALTH = "/usr/local/sbin/gpu-fleet-slurm-health"
PROLOG = "/usr/local/sbin/gpu-fleet-slurm-prolog"
CACHE_ROOT = "/data/hf"  # inventory/lab/group_vars: lab_cache_root
CORDON_DIR = "/var/lib/gpu-fleet/cordon"


def log(msg: str) -> None:
    print(f"[slurm-lab] {msg}", flush=True)


class Checks:
    def __init__(self) -> None:
        self.failed: list[str] = []

    def expect(self, ok: bool, what: str) -> bool:
        log(f"{'ok  ' if ok else 'FAIL'} {what}")
        if not ok:
            self.failed.append(what)
        return ok


def lab_env() -> dict:
    return dict(
        os.environ,
        LAB_DIR=LAB,
        LAB_INVENTORY=f"{LAB}/inventory/hosts.yml",
        LAB_PREFIX=PREFIX,
        LAB_BASE_PORT="2700",
        LAB_FACT_CACHE=f"{LAB}/facts",
        LAB_HOST_REPORTS=f"{LAB}/reports/hosts",
        LAB_SEED="full",
        LAB_SHARDS="2",
        LAB_GPU="none",
    )


def lab(cmd: str, n: int) -> None:
    args = [sys.executable, str(ROOT / "scripts" / "lab.py"), cmd]
    if cmd == "up":
        args += ["--hosts", str(n)]
    subprocess.run(args, cwd=ROOT, env=lab_env(), check=True)


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


def wait_idle(controller: str, nodes: list[str], seconds: int = 90) -> dict[str, str]:
    states: dict[str, str] = {}
    for _ in range(seconds // 2):
        states = {node: node_state(controller, node)[0] for node in nodes}
        if all(state == "IDLE" for state in states.values()):
            break
        time.sleep(2)
    return states


def write_slurm_inventory(work: Path, nodes: list[str], controller: str) -> Path:
    """The Slurm groups beside the lab's hosts.yml, and this lab's munge key (0600, never logged)."""
    key = base64.b64encode(secrets.token_bytes(1024)).decode()
    secret = work / "munge-key.yml"
    secret.touch(mode=0o600)
    secret.write_text(json.dumps({"slurm_node_munge_key": key, "slurm_controller_munge_key": key}) + "\n")
    groups = {
        "slurm_controller": {"hosts": {controller: None}},
        "slurm_nodes": {
            "hosts": dict.fromkeys(nodes),
            "vars": {"slurm_node_memory_reserve_mb": 512},
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


def cache_test(host: str) -> int:
    """hf_loader's cache test unit, run now (it writes the report the health check reads)."""
    return on(host, "systemctl", "start", "hf-cache-test.service", timeout=600).returncode


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--nodes", type=int, default=2)
    p.add_argument("--keep", action="store_true", help="keep the lab hosts afterwards")
    args = p.parse_args()
    if not 1 <= args.nodes <= 8:
        sys.exit("--nodes must be 1..8")
    hosts = [f"{PREFIX}{i:02d}" for i in range(1, args.nodes + 2)]
    nodes, controller = hosts[:-1], hosts[-1]
    work = ROOT / LAB
    logs = work / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    inventory, group_vars = lab_inventory(work)
    reports = work / "reports"
    extra = [*light_stack(work), f"fleet_report_dir={reports}", f"hf_loader_fleet_report_dir={reports}/hosts"]
    checks = Checks()
    times: dict[str, float] = {}
    first = nodes[0]
    try:
        t0 = time.monotonic()
        lab("up", len(hosts))
        times["lab up"] = round(time.monotonic() - t0, 1)
        secret = write_slurm_inventory(work, nodes, controller)

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
        print("Steps (wall seconds):")
        for step, seconds in times.items():
            print(f"  {step:24s} {seconds:7.1f}")
    finally:
        if not args.keep:
            group_vars.unlink(missing_ok=True)
            lab("down", len(hosts))
            (work / "munge-key.yml").unlink(missing_ok=True)
    for what in checks.failed:
        print(f"[slurm-lab] FAILED: {what}", file=sys.stderr)
    return 1 if checks.failed else 0


if __name__ == "__main__":
    sys.exit(main())
