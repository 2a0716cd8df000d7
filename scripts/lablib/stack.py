"""What the labs share beyond making hosts: running scripts/lab.py for a lab, each lab's inventory
folder, the light stack its hosts install, the CPU its containers used. Used by the lab rehearsals
(scripts/*_lab.py, scripts/upgrade_*rehearsal.py, scripts/first_hour.py), the benchmarks (bench/)
and the lab tests (tests/ara_lab_browser.py). Python 3.11 standard library only.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

from .log import Logger
from .settings import ROOT, Lab

log = Logger("lab")
# The toolchain that runs a lab (its pip downloads the light wheelhouse).
BIN = Path(sys.executable).parent


def run_lab(lab: Lab, *argv: str, check: bool = True) -> subprocess.CompletedProcess:
    """scripts/lab.py ARGV (up, down, status and their options) for `lab`, given its settings
    through the environment: a lab is made as root, in a process of its own."""
    command = [sys.executable, str(ROOT / "scripts" / "lab.py"), *argv]
    return subprocess.run(command, cwd=ROOT, env=lab.environment(), check=check)


# The light stack: the production lock without the training-only packages (Composer,
# torchvision, CUDA libraries) and with the CPU build of torch, enough for hf-cache-test.
# About 1 GB a host instead of about 9 GB (3 GB wheelhouse + 5.7 GB venv): 10 hosts fit.
LIGHT_DROP = re.compile(r"^(composer|torchvision|torch-optimizer|torchmetrics|nvidia-|triton|torch==)", re.I)
LIGHT_TORCH = "torch==2.13.0"


def light_stack(work: Path) -> list[str]:
    """The light lock and its wheelhouse under `work`, built (a second build downloads nothing);
    returns the extra variables that make hf_loader install them."""
    lock = work / "loader-light.txt"
    wheelhouse = work / "wheelhouse"
    lines = (ROOT / "requirements" / "loader-prod.txt").read_text().splitlines()
    kept = [ln for ln in lines if not LIGHT_DROP.match(ln.strip())]
    lock.write_text("\n".join([*kept, LIGHT_TORCH]) + "\n")
    env = dict(os.environ, WHEELHOUSE_DIR=str(wheelhouse), WHEELHOUSE_LOCK=str(lock), WHEELHOUSE_PYTHONS="3.11")
    env.setdefault("PIP", str(BIN / "pip"))
    # Hosts install with --require-hashes: the CPU torch gets its hash, the kept pins keep the production lock's.
    hash_lock = [sys.executable, "scripts/hash-lock.py", "--add-missing", "--python", "3.11", str(lock)]
    subprocess.run(hash_lock, cwd=ROOT, env=env, check=True, stdout=subprocess.DEVNULL)
    log("light wheelhouse for the lab hosts (production lock without Composer/CUDA, CPU torch)")
    subprocess.run(["bash", "scripts/build-wheelhouse.sh"], cwd=ROOT, env=env, check=True)
    defaults = (ROOT / "roles" / "hf_loader" / "defaults" / "main.yml").read_text()
    for var in ("hf_loader_lock_file", "hf_loader_wheelhouse_dir"):
        if f"{var}:" not in defaults:
            log.die(f"roles/hf_loader has no {var} any more: update scripts/lablib/stack.py's light_stack()")
    return [f"hf_loader_lock_file={lock}", f"hf_loader_wheelhouse_dir={wheelhouse}"]


def lab_inventory(work: Path) -> tuple[Path, Path]:
    """A lab's own inventory folder under `work`: its hosts.yml (lab.py writes it) beside a link
    to the lab's group_vars. Returns the folder and the link (unlink it when done)."""
    inventory = work / "inventory"
    inventory.mkdir(parents=True, exist_ok=True)
    group_vars = inventory / "group_vars"
    if not group_vars.is_symlink():
        group_vars.symlink_to(os.path.relpath(ROOT / "inventory" / "lab" / "group_vars", inventory))
    return inventory, group_vars


def container_cpu_seconds(names: list[str]) -> float:
    """CPU used so far by the lab containers (cgroup v2 cpu.stat or v1 cpuacct), 0 if unreadable."""
    total = 0.0
    for name in names:
        proc = subprocess.run(
            ["docker", "inspect", "--format", "{{.Id}}", name], capture_output=True, text=True, check=False
        )
        cid = proc.stdout.strip()
        if not cid:
            continue
        v1 = Path(f"/sys/fs/cgroup/cpuacct/docker/{cid}/cpuacct.usage")
        if v1.exists():
            total += int(v1.read_text()) / 1e9
            continue
        for v2 in (
            Path(f"/sys/fs/cgroup/system.slice/docker-{cid}.scope/cpu.stat"),
            Path(f"/sys/fs/cgroup/docker/{cid}/cpu.stat"),
        ):
            if v2.exists():
                usage = [ln for ln in v2.read_text().splitlines() if ln.startswith("usage_usec")]
                total += int(usage[0].split()[1]) / 1e6 if usage else 0
                break
    return total
