#!/usr/bin/env python3
"""What ansible-builder needs to build execution-environment.yml with no registry reachable.

    python3 scripts/ee_prepare.py [--dest .cache/ee] [--collections-from SITE_PACKAGES]

Writes, under --dest:
- wheels/: every wheel the image installs (its Python pins, ansible-core, ansible-runner, the
  init, and the packages ansible-builder's own builder stage installs), downloaded for the
  base image's Python (cp311, manylinux) with --no-deps: the image's pip runs with
  --no-index over this folder, so it can install nothing else;
- gpu_fleet/: the project's own collection, without bytecode;
- collections/: one tarball per collection of execution-environment.yml, made from the copy
  that the controller lock's `ansible` bundle installed (Galaxy is not reachable; an installed
  collection keeps its MANIFEST.json and FILES.json, which is what an artifact holds).

Every pin is checked first against the locks (requirements/controller.txt, requirements/ee.txt)
and the collections against collections/requirements.yml; a mismatch stops with exit status 2
naming the pin and the file to change. tests/test_execution_environment.py runs the same checks.

    python3 scripts/ee_prepare.py --expect-ready N --runner-dir DIR

make ee-lab's verdict: the fleet summary that the run inside the image left in navigator's
artifact folder says all N lab hosts are ready (exit status 2 otherwise).
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import io
import json
import re
import shutil
import subprocess
import sys
import sysconfig
import tarfile
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent
EE_FILE = ROOT / "execution-environment.yml"
LOCKS = (ROOT / "requirements" / "controller.txt", ROOT / "requirements" / "ee.txt")
COLLECTIONS = ROOT / "collections" / "requirements.yml"
PROJECT_COLLECTION = ROOT / "collections" / "ansible_collections" / "gpu_fleet"
# ansible-builder's builder stage runs `pip install bindep pyyaml packaging` (unpinned, in its
# containerfile.py); these and their dependencies must be among the wheels, at the locks' pins.
BUILDER_STAGE = ("bindep", "pbr", "Parsley", "distro", "packaging", "PyYAML")
# The base image's Python (ee/base.Containerfile: Debian 12's python3).
PYTHON_VERSION, ABI = "3.11", "cp311"
PLATFORMS = [f"manylinux_{glibc}_x86_64" for glibc in ("2_17", "2_24", "2_27", "2_28", "2_31", "2_34")] + [
    "manylinux2014_x86_64",
    "manylinux2010_x86_64",
    "manylinux1_x86_64",
]
PIN = re.compile(r"^([A-Za-z0-9][A-Za-z0-9._-]*)==([^\s;#]+)")
# A collection tarball of the EE file: <dest>/<namespace>-<name>-<version>.tar.gz.
TARBALL = re.compile(r"^(?:.*/)?([a-z0-9_]+)-([a-z0-9_]+)-([0-9][^/]*)\.tar\.gz$")


class PrepareError(Exception):
    """A pin or collection out of step, with what to change."""


def canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def lock_pins() -> dict[str, tuple[str, str]]:
    """canonical name -> (name, version) over the locks the EE may take from."""
    pins: dict[str, tuple[str, str]] = {}
    for lock in LOCKS:
        for line in lock.read_text().splitlines():
            match = PIN.match(line.strip())
            if match:
                pins[canonical(match[1])] = (match[1], match[2])
    return pins


def load_ee(path: Path = EE_FILE) -> dict:
    return yaml.safe_load(path.read_text())


def ee_python_pins(ee: dict) -> list[str]:
    """The exact pins the image's pip installs, as the EE file states them."""
    deps = ee["dependencies"]
    pins = [deps["ansible_core"]["package_pip"], deps["ansible_runner"]["package_pip"]]
    pins += list(deps.get("python", []))
    init = ee.get("options", {}).get("container_init", {}).get("package_pip")
    if init:
        pins.append(init)
    return pins


def checked_pins(ee: dict) -> list[str]:
    """The image's pins plus the builder stage's, each equal to the locks' pin, or PrepareError."""
    locked = lock_pins()
    out: list[str] = []
    for pin in ee_python_pins(ee):
        match = PIN.match(pin)
        if not match or match.end() != len(pin.strip()):
            raise PrepareError(f"{EE_FILE.name}: '{pin}' is not an exact pin (name==version)")
        name, version = match[1], match[2]
        lock = locked.get(canonical(name))
        if lock is None:
            raise PrepareError(f"{EE_FILE.name}: {name} is in no lock ({', '.join(p.name for p in LOCKS)})")
        if lock[1] != version:
            raise PrepareError(f"{EE_FILE.name}: {name}=={version}, the lock pins {lock[1]}: change the EE file")
        out.append(f"{name}=={version}")
    for name in BUILDER_STAGE:
        lock = locked.get(canonical(name))
        if lock is None:
            raise PrepareError(f"ansible-builder's builder stage needs {name}: pin it in requirements/ee.in")
        if canonical(name) not in {canonical(PIN.match(p)[1]) for p in out}:
            out.append(f"{lock[0]}=={lock[1]}")
    return out


def ee_collections(ee: dict) -> dict[str, str]:
    """namespace.name -> version from the EE file's galaxy tarballs."""
    found: dict[str, str] = {}
    for entry in ee["dependencies"]["galaxy"]["collections"]:
        match = TARBALL.match(entry["name"])
        if entry.get("type") != "file" or not match:
            raise PrepareError(f"{EE_FILE.name}: {entry} is not a collections/<ns>-<name>-<version>.tar.gz file")
        found[f"{match[1]}.{match[2]}"] = match[3]
    return found


def checked_collections(ee: dict) -> dict[str, str]:
    pinned = {e["name"]: str(e["version"]) for e in yaml.safe_load(COLLECTIONS.read_text())["collections"]}
    found = ee_collections(ee)
    if found != pinned:
        missing = {k: v for k, v in pinned.items() if found.get(k) != v}
        extra = {k: v for k, v in found.items() if pinned.get(k) != v}
        raise PrepareError(
            f"{EE_FILE.name}'s galaxy collections differ from {COLLECTIONS.relative_to(ROOT)}: "
            f"want {missing}, have {extra}; list each as collections/<ns>-<name>-<version>.tar.gz"
        )
    return found


def download_wheels(pins: list[str], dest: Path) -> None:
    dest.mkdir(parents=True, exist_ok=True)
    wanted = dest / "requirements.txt"
    wanted.write_text("\n".join(pins) + "\n")
    platforms = [arg for p in PLATFORMS for arg in ("--platform", p)]
    subprocess.run(
        [sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--only-binary=:all:",
         "--dest", str(dest), "--python-version", PYTHON_VERSION, "--implementation", "cp",
         "--abi", ABI, "--abi", "abi3", "--abi", "none", *platforms, "-r", str(wanted)],
        check=True,
    )  # fmt: skip
    # Wheels of older pins left from an earlier run would let pip pick them: keep only these.
    keep = {canonical(PIN.match(p)[1]) + "==" + PIN.match(p)[2] for p in pins}
    for wheel in dest.glob("*.whl"):
        name, version = wheel.name.split("-")[:2]
        if f"{canonical(name)}=={version}" not in keep:
            wheel.unlink()


def reset(info: tarfile.TarInfo) -> tarfile.TarInfo:
    # Same bytes for the same collection: docker's layer cache holds across runs.
    info.mtime, info.uid, info.gid, info.uname, info.gname = 0, 0, 0, "", ""
    return info


def pack_collections(found: dict[str, str], source: Path, dest: Path) -> None:
    dest.mkdir(parents=True, exist_ok=True)
    for old in dest.glob("*.tar.gz"):
        old.unlink()
    for fqcn, version in sorted(found.items()):
        namespace, name = fqcn.split(".")
        folder = source / namespace / name
        manifest = folder / "MANIFEST.json"
        if not manifest.is_file():
            raise PrepareError(f"{fqcn}: no installed copy with a MANIFEST.json in {source} (make venv)")
        have = json.loads(manifest.read_text())["collection_info"]["version"]
        if have != version:
            raise PrepareError(f"{fqcn}: the installed copy is {have}, the pin {version}: make venv, or re-pin")
        target = dest / f"{namespace}-{name}-{version}.tar.gz"
        target.write_bytes(artifact(folder))


def artifact(folder: Path) -> bytes:
    """A collection artifact of an installed copy, its FILES.json made to list what is there.

    The bundle leaves out some files its FILES.json lists (CI folders), and ansible-galaxy
    refuses an artifact that lacks any listed file. The files themselves are the bundle's, each
    with its sha256; MANIFEST.json's digest of FILES.json is updated to match.
    """
    paths = [p for p in sorted(folder.rglob("*")) if "__pycache__" not in p.relative_to(folder).parts]
    entries = [{"name": ".", "ftype": "dir", "chksum_type": None, "chksum_sha256": None, "format": 1}]
    for path in paths:
        rel = str(path.relative_to(folder))
        if rel in ("MANIFEST.json", "FILES.json"):
            continue
        digest = None if path.is_dir() else hashlib.sha256(path.read_bytes()).hexdigest()
        entries.append(
            {
                "name": rel,
                "ftype": "dir" if path.is_dir() else "file",
                "chksum_type": None if path.is_dir() else "sha256",
                "chksum_sha256": digest,
                "format": 1,
            }
        )
    files_json = json.dumps({"files": entries, "format": 1}, indent=4).encode()
    manifest = json.loads((folder / "MANIFEST.json").read_text())
    manifest["file_manifest_file"]["chksum_sha256"] = hashlib.sha256(files_json).hexdigest()
    manifest_json = json.dumps(manifest, indent=4).encode()
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for rel, data in (("MANIFEST.json", manifest_json), ("FILES.json", files_json)):
            info = reset(tarfile.TarInfo(rel))
            info.size, info.mode = len(data), 0o644
            tar.addfile(info, io.BytesIO(data))
        for path in paths:
            rel = str(path.relative_to(folder))
            if rel not in ("MANIFEST.json", "FILES.json"):
                tar.add(path, arcname=rel, recursive=False, filter=reset)
    return gzip.compress(buffer.getvalue(), mtime=0)


def expect_ready(runner_dir: Path, hosts: int) -> None:
    """The run's own fleet summary (fleet_artifact_dir under runner) says `hosts` hosts are ready."""
    found = sorted(runner_dir.rglob("gpu_fleet_report.json"), key=lambda p: p.stat().st_mtime)
    if not found:
        raise PrepareError(f"no gpu_fleet_report.json under {runner_dir}: the run wrote no fleet summary")
    report = json.loads(found[-1].read_text())
    print(f"ee_prepare: {found[-1]}: {report.get('summary')}")
    states = report.get("hosts", {})
    if report.get("ready") != hosts or sorted(states.values()) != ["ready"] * hosts:
        raise PrepareError(f"want {hosts} hosts ready, the fleet report says {states}")


def copy_project_collection(dest: Path) -> None:
    """The project's own collection for the image, without the bytecode that tests and runs leave
    beside its plugins: those files change from run to run, and every change rebuilt the image."""
    if dest.exists():
        shutil.rmtree(dest)
    shutil.copytree(PROJECT_COLLECTION, dest, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dest", type=Path, default=ROOT / ".cache" / "ee")
    parser.add_argument(
        "--collections-from",
        type=Path,
        help="an ansible_collections folder holding the pinned collections (default: this Python's ansible bundle)",
    )
    parser.add_argument("--check", action="store_true", help="check the pins only; write nothing")
    parser.add_argument("--expect-ready", type=int, metavar="N", help="after make ee-lab's run: N hosts ready")
    parser.add_argument("--runner-dir", type=Path, help="with --expect-ready: navigator's --rad folder")
    args = parser.parse_args(argv)
    try:
        if args.expect_ready is not None:
            expect_ready(args.runner_dir, args.expect_ready)
            return 0
        ee = load_ee()
        pins = checked_pins(ee)
        found = checked_collections(ee)
        if args.check:
            return 0
        source = args.collections_from
        if source is None:
            source = Path(sysconfig.get_paths()["purelib"]) / "ansible_collections"
        pack_collections(found, source, args.dest / "collections")
        download_wheels(pins, args.dest / "wheels")
        copy_project_collection(args.dest / "gpu_fleet")
    except PrepareError as error:
        print(f"ee_prepare: {error}", file=sys.stderr)
        return 2
    print(f"ee_prepare: {len(pins)} wheels and {len(found)} collections in {args.dest}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
