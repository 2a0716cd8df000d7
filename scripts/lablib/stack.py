"""What the labs share beyond making hosts: running scripts/lab.py for a lab, each lab's inventory
folder, the light stack its hosts install, the CPU its containers used. Used by the lab rehearsals
(scripts/*_lab.py, scripts/upgrade_*rehearsal.py, scripts/first_hour.py), the benchmarks (bench/)
and the lab tests (tests/ara_lab_browser.py). Python 3.11 standard library only.
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import platform
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Mapping
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


def wait_systemd(name: str) -> None:
    """Until systemd in the container `name` has finished booting ("degraded": a unit a container
    cannot run); dies after a minute."""
    for _ in range(120):
        out = subprocess.run(
            ["docker", "exec", name, "systemctl", "is-system-running"], capture_output=True, text=True, check=False
        ).stdout.strip()
        if out in ("running", "degraded"):
            return
        time.sleep(0.5)
    log.die(f"{name}: systemd did not finish booting (is-system-running: {out})")


# The light stack: the production lock without the training-only packages (Composer,
# torchvision, CUDA libraries) and with the CPU build of torch, enough for hf-cache-test.
# About 1 GB a host instead of about 9 GB (3 GB wheelhouse + 5.7 GB venv): 10 hosts fit.
LIGHT_SOURCE = ROOT / "requirements" / "loader-prod.txt"
LIGHT_DROP = re.compile(r"^(composer|torchvision|torch-optimizer|torchmetrics|nvidia-|triton|torch==)", re.I)
LIGHT_TORCH = "torch==2.13.0"
LIGHT_PYTHON = "3.11"
HASH_LOCK = ROOT / "scripts" / "hash-lock.py"
BUILD_WHEELHOUSE = ROOT / "scripts" / "build-wheelhouse.sh"
# A light build's folder is named by its key; only names of this shape are ever pruned, so a
# LIGHT_WHEELHOUSE_DIR pointed at a folder holding anything else loses nothing else.
LIGHT_BUILD = re.compile(r"^light-[0-9a-f]{16}$")
LIGHT_SCRATCH_PREFIX = ".building-"


class LightStackError(RuntimeError):
    """The machine's light wheelhouse cannot be built or used; the message says what to change."""


def light_wheelhouse_root(environ: Mapping[str, str] = os.environ) -> Path:
    """The machine's light wheelhouses: LIGHT_WHEELHOUSE_DIR, else `light-wheelhouse` beside the
    production one (WHEELHOUSE_DIR, default /var/cache/gpu-fleet/wheelhouse). Built once per machine,
    outside the clone, as the production one: a fresh clone (CI) downloads nothing again."""
    if environ.get("LIGHT_WHEELHOUSE_DIR"):
        return Path(environ["LIGHT_WHEELHOUSE_DIR"])
    production = Path(environ.get("WHEELHOUSE_DIR") or "/var/cache/gpu-fleet/wheelhouse")
    return production.parent / "light-wheelhouse"


def light_key() -> str:
    """What the light build is made of: the production lock, the light recipe, and the two scripts
    that decide which wheels are downloaded and which hashes the lock gets (hash-lock.py downloads
    through build-wheelhouse.sh's flags). Any change of one names a new build."""
    digest = hashlib.sha256()
    parts = (
        LIGHT_SOURCE.read_bytes(),
        f"{LIGHT_DROP.pattern}\0{LIGHT_DROP.flags}\0{LIGHT_TORCH}\0{LIGHT_PYTHON}\0{platform.machine()}".encode(),
        HASH_LOCK.read_bytes(),
        BUILD_WHEELHOUSE.read_bytes(),
    )
    for part in parts:
        digest.update(len(part).to_bytes(8, "big") + part)
    return f"light-{digest.hexdigest()[:16]}"


def _light_lock_text() -> str:
    lines = LIGHT_SOURCE.read_text().splitlines()
    kept = [ln for ln in lines if not LIGHT_DROP.match(ln.strip())]
    return "\n".join([*kept, LIGHT_TORCH]) + "\n"


def _wheelhouse_env(wheelhouse: Path, lock: Path, **extra: str) -> dict[str, str]:
    env = dict(os.environ, WHEELHOUSE_DIR=str(wheelhouse), WHEELHOUSE_LOCK=str(lock), WHEELHOUSE_PYTHONS=LIGHT_PYTHON)
    env.setdefault("PIP", str(BIN / "pip"))
    return {**env, **extra}


def _build_light(root: Path, key: str) -> Path:
    """root/KEY: the light lock, hashed, and its third-party wheels (not the project's package, which
    each lab builds from its own checkout). Built in a scratch folder and renamed into place, so no
    caller ever sees half of it. The caller holds root's lock."""
    for entry in root.iterdir():  # a killed build's scratch, or builds of other keys (stale)
        if entry.name.startswith(LIGHT_SCRATCH_PREFIX) or (LIGHT_BUILD.match(entry.name) and entry.name != key):
            shutil.rmtree(entry)
    scratch = Path(tempfile.mkdtemp(prefix=f"{LIGHT_SCRATCH_PREFIX}{key}-", dir=root))
    scratch.chmod(0o755)
    try:
        lock = scratch / "loader-light.txt"
        lock.write_text(_light_lock_text())
        env = _wheelhouse_env(scratch, lock, WHEELHOUSE_PACKAGE="no")
        # Hosts install with --require-hashes: the CPU torch gets its hash, the kept pins keep the production lock's.
        hash_lock = [sys.executable, str(HASH_LOCK), "--add-missing", "--python", LIGHT_PYTHON, str(lock)]
        subprocess.run(hash_lock, cwd=ROOT, env=env, check=True, stdout=subprocess.DEVNULL)
        log(f"light wheelhouse for the lab hosts (production lock without Composer/CUDA, CPU torch): {root / key}")
        subprocess.run(["bash", str(BUILD_WHEELHOUSE)], cwd=ROOT, env=env, check=True)
        scratch.rename(root / key)
    except BaseException:
        shutil.rmtree(scratch, ignore_errors=True)
        raise
    return root / key


def _same_copy(have: Path, want: Path) -> bool:
    """A copy made by _mirror (another file system): same size and time, rsync's quick check."""
    a, b = have.stat(), want.stat()
    return (a.st_size, a.st_mtime_ns) == (b.st_size, b.st_mtime_ns)


def _mirror(source: Path, target: Path) -> None:
    """target holds source's files (wheels, the .lock-HASH marker) as hard links, copies across file
    systems, each replaced whole; files source lacks are removed, but for the project's package wheel
    (build-wheelhouse.sh's, from the lab's checkout). Times are kept: rsync's quick check to hosts."""
    target.mkdir(parents=True, exist_ok=True)
    names = {entry.name for entry in source.iterdir()}
    for entry in target.iterdir():
        if entry.name not in names and not entry.name.startswith("hf_loader-"):
            entry.unlink()
    for name in sorted(names):
        have, want = target / name, source / name
        if have.exists() and (have.samefile(want) or _same_copy(have, want)):
            continue
        partial = target / f".partial-{name}"
        partial.unlink(missing_ok=True)
        try:
            os.link(want, partial)
        except OSError:  # another file system (or one without hard links): a copy
            shutil.copy2(want, partial)
        partial.replace(have)


def light_stack(work: Path) -> list[str]:
    """The light lock and its wheelhouse for a lab under `work`, from the machine's light build
    (built once per machine, see light_wheelhouse_root; labs side by side wait for one build);
    the project's package wheel is built from this checkout. Returns the extra variables that
    make hf_loader install them."""
    lock = work / "loader-light.txt"
    wheelhouse = work / "wheelhouse"
    root = light_wheelhouse_root()
    try:
        root.mkdir(parents=True, exist_ok=True)
        guard = (root / ".lock").open("a")
    except OSError as error:
        raise LightStackError(
            f"cannot write the machine's light wheelhouse in {root} ({error}): make it writable for "
            "this user or set LIGHT_WHEELHOUSE_DIR to a folder that is"
        ) from error
    work.mkdir(parents=True, exist_ok=True)
    with guard:
        try:
            fcntl.flock(guard, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            log(f"waiting for another lab's use of the light wheelhouse ({root})")
            fcntl.flock(guard, fcntl.LOCK_EX)
        key = light_key()
        built = root / key if (root / key).is_dir() else _build_light(root, key)
        # The lab's own lock and wheelhouse (pull_lab.py mounts it, with the lock beside it, into its
        # hosts), made under the lock: no build can prune what is being linked.
        partial = work / ".loader-light.txt.partial"
        shutil.copyfile(built / "loader-light.txt", partial)
        partial.replace(lock)
        _mirror(built / f"cp{LIGHT_PYTHON.replace('.', '')}", wheelhouse / f"cp{LIGHT_PYTHON.replace('.', '')}")
    # The lock's wheels are present (their .lock-HASH marker came along): this builds only the package.
    subprocess.run(["bash", str(BUILD_WHEELHOUSE)], cwd=ROOT, env=_wheelhouse_env(wheelhouse, lock), check=True)
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
