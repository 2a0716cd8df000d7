"""The rollout labs' host image: the plain systemd image with the training account and the light
stack's venv baked in by playbooks/bake-image.yml, as a fleet's hosts start from an image
(docs/pull.md). Built once per machine for what it is made of (baked_host_image), so that each
rollout lab's first site.yml finds the venv in place and only checks it, instead of installing
the light lock on every host again. The labs whose first converge is what they measure or
rehearse (the fleet bench, the pull lab's plain image) keep the plain image.
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import subprocess
from pathlib import Path

from .log import Logger
from .settings import ROOT
from .stack import BIN, light_key, light_wheelhouse_root, wait_systemd

log = Logger("lab")

PLAIN_IMAGE = "local/debian-systemd:bookworm"
BAKED_REPOSITORY = "local/lab-host-baked"
# What the bake runs and reads: any change of a file here names a new image.
RECIPE = (
    "playbooks/bake-image.yml",
    "roles/hf_loader",
    "inventory/lab/group_vars",
    "collections/ansible_collections/gpu_fleet",
)
# bake-image.yml's steps a push lab's host needs before site.yml: not the driver (the rollout labs
# install the simulated one through site.yml), not pull mode, not cloud-init's cleaning.
BAKE_TAGS = "account,loader"


class HostImageError(RuntimeError):
    """The lab host image could not be baked; the message names the log."""


def recipe_files(root: Path) -> list[Path]:
    """Every file of RECIPE, sorted, without Python's caches."""
    files: list[Path] = []
    for entry in RECIPE:
        path = root / entry
        found = [path] if path.is_file() else [p for p in path.rglob("*") if p.is_file()]
        files += [p for p in found if "__pycache__" not in p.parts]
    return sorted(files)


def host_image_key(plain_image_id: str, light: str, root: Path | None = None) -> str:
    """What the baked image is made of: the plain image, the light build it installs, and the
    recipe's files under `root` (the checkout; their paths and bytes)."""
    root = root or ROOT
    digest = hashlib.sha256(f"{plain_image_id}\0{light}\0".encode())
    for path in recipe_files(root):
        name, data = str(path.relative_to(root)).encode(), path.read_bytes()
        digest.update(len(name).to_bytes(8, "big") + name + len(data).to_bytes(8, "big") + data)
    return digest.hexdigest()[:16]


def _docker(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    return subprocess.run(["docker", *args], capture_output=True, text=True, check=check)


def baked_host_image(work: Path, light_vars: list[str]) -> str:
    """The baked image's name (REPOSITORY:KEY), baked first if this machine has none for the key.
    `light_vars` are light_stack()'s variables for the lab under `work` (its lock and wheelhouse).
    Labs side by side wait for one bake (a lock beside the light wheelhouse); older bakes are removed
    when no container uses them."""
    plain_id = _docker("image", "inspect", "--format", "{{.Id}}", PLAIN_IMAGE).stdout.strip()
    tag = f"{BAKED_REPOSITORY}:{host_image_key(plain_id, light_key())}"
    root = light_wheelhouse_root()
    root.mkdir(parents=True, exist_ok=True)
    with (root / ".host-image.lock").open("a") as guard:
        fcntl.flock(guard, fcntl.LOCK_EX)
        if _docker("image", "inspect", tag, check=False).returncode != 0:
            _bake(tag, work, light_vars)
        for old in _docker("images", BAKED_REPOSITORY, "--format", "{{.Repository}}:{{.Tag}}").stdout.split():
            if old != tag:
                _docker("rmi", old, check=False)  # refused while a kept lab's container uses it
    return tag


def _bake(tag: str, work: Path, light_vars: list[str]) -> None:
    name = f"lab-bake-{os.getpid()}"
    logfile = work / "logs" / "bake.log"
    logfile.parent.mkdir(parents=True, exist_ok=True)
    log(f"baking {tag}: playbooks/bake-image.yml --tags {BAKE_TAGS} (once per machine; log {logfile})")
    _docker("rm", "-f", name, check=False)
    _docker(
        "run", "--detach", "--name", name, "--hostname", name,
        "--privileged", "--cgroupns", "host", "--volume", "/sys/fs/cgroup:/sys/fs/cgroup:rw",
        "--tmpfs", "/run", "--tmpfs", "/run/lock", "--stop-signal", "SIGRTMIN+3", PLAIN_IMAGE, "/lib/systemd/systemd",
    )  # fmt: skip
    try:
        wait_systemd(name)
        # In gpu_hosts, so that the lab's group_vars apply as they will on the lab's hosts.
        inventory = work / "bake-inventory.yml"
        inventory.write_text(f"gpu_hosts:\n  hosts:\n    {name}:\n      ansible_connection: community.docker.docker\n")
        extra = [arg for var in light_vars for arg in ("-e", var)]
        command = [
            str(BIN / "ansible-playbook"), "-i", str(inventory), "-i", "inventory/lab", "playbooks/bake-image.yml",
            "--tags", BAKE_TAGS, "-e", f"bake_hosts={name}", "-e", "bake_driver=false", *extra,
        ]  # fmt: skip
        with logfile.open("w") as out:
            done = subprocess.run(command, cwd=ROOT, stdout=out, stderr=subprocess.STDOUT, check=False)
        if done.returncode != 0:
            raise HostImageError(f"bake-image.yml failed baking {tag}: see {logfile}")
        # The machine id stays the plain image's, which every lab host shares as before: emptying
        # /etc/machine-id (bake-image.yml's clean step) is not enough here, systemd then takes the
        # plain image's /var/lib/dbus/machine-id, as seen on the lab's hosts.
        _docker("stop", name)
        _docker("commit", "--change", 'CMD ["/lib/systemd/systemd"]', name, tag)
    finally:
        _docker("rm", "-f", name, check=False)
