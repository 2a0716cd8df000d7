#!/usr/bin/env python3
"""The lab: N simulated GPU hosts on one machine, reached over SSH like a real fleet.

Each host is a privileged systemd container (the run settings Molecule uses) at a fixed
address on the lab's own bridge network, running sshd, published on 127.0.0.1:<2200+i>, with a
user `ansible` (key the lab generates, passwordless sudo) and a loop-backed ext4 dataset
volume (label `hfcache`) that holds a small ImageNet-shaped Hugging Face cache made by the
real `datasets` library, or with LAB_SEED=empty (--seed empty) a blank one of the same size and
label, for playbooks/seed.yml to fill from the controller's copy of that cache
(lab/cache/content, built either way).

    lab.py up [--hosts N] [--seed full|empty] [--gpu none|sim] [--gpu-count N] [--gpu-fail HOST,...]
                            create or reuse the hosts, write inventory/lab/hosts.yml
    lab.py down             remove everything recorded in lab/state.json
    lab.py status           what state.json records and whether it is still there

Everything created is recorded in lab/state.json as soon as it exists, so that `down`
removes exactly that (containers, the network, loop devices, image files, files) and nothing else. Each
host's seed mode is recorded with its volume image: `up` with another mode recreates that
host's image and container (a seeded "empty" host stays as it is on an `up` that asks empty
again).

Every host is started with the restart policy unless-stopped, so that a reboot inside it
(`systemctl reboot`, Ansible's reboot module) makes systemd exit and Docker start it again,
and gets lab-boot.service (scripts/gpu_sim/payload/lab_boot.py: a new boot marker in
/run/lab-boot-id, the dataset volume mounted again) and the training stand-in
lab-train@.service (not started). With --gpu sim (LAB_GPU) the hosts also get N simulated
NVIDIA H200 GPUs (--gpu-count, LAB_GPU_COUNT, default 2) and a simulated NVIDIA apt
repository built once per lab by scripts/gpu_sim (<LAB_DIR>/gpu-sim), so that the real
nvidia_driver role installs, reboots and verifies there; --gpu-fail (LAB_GPU_FAIL) names
hosts where one GPU fails to initialise under the newest simulated driver. A host made with
another GPU mode or count is recreated (its volume is kept). docs/lab.md, "Simulated GPUs
and reboots". LAB_SHARED=FOLDER:PATH bind-mounts the lab's folder FOLDER (under LAB_DIR,
created and removed with the lab) at PATH in every host, one folder for all of them, as a
shared filesystem (NFS, Lustre) is on a real fleet: a multi-node job's save_folder; a host made
with another LAB_SHARED is recreated (its volume is kept).
The LAB_* variables (docs/lab.md) are read once, into a lablib.Lab (scripts/lablib/settings.py),
which every function here takes; the options of `up` override them. Another script runs a lab of
its own with lablib.run_lab(Lab.from_env().beside(FOLDER, PREFIX, PORT)). The cache is built by
`python -m hf_loader.fixtures`, the project's one cache builder.
Python 3.11 standard library only; run as root (losetup, docker).
"""

from __future__ import annotations

import argparse
import dataclasses
import io
import ipaddress
import json
import os
import shutil
import subprocess
import tarfile
import time
from pathlib import Path

from gpu_sim import build as gpu_build
from lablib import ROOT, Lab, Logger, wait_systemd
from lablib.settings import LabSettingsError

VOLUME_LABEL = "hfcache"
# What a new volume holds: "full" (the cache below) or "empty" (a blank ext4, to be seeded).
SEED_MODES = ("full", "empty")
# The volume's root is the cache root: <volume>/{datasets,hub} (HF_DATASETS_CACHE and
# HF_HUB_CACHE); mounted at /data/hf, the default hf_env_cache_root.
N_CLASSES = 10
# Simulated GPUs (scripts/gpu_sim): none, or sim (N simulated H200s and NVIDIA's repository
# as a signed local apt repository, built once per lab under Lab.gpu_dir).
GPU_MODES = ("none", "sim")
GPU_REPO_MOUNT = "/srv/gpu-sim/repo"  # the sim hosts' nvidia_driver_repo_url (hosts.yml)
GPU_MAX = 8  # an HGX board's eight GPUs (the bus addresses in gpu_sim/payload/lab_boot.py)
LABEL = "project.lab"
RESTART_POLICY = "unless-stopped"
# Each lab's hosts sit on a bridge network of their own (Lab.network), each at a fixed address
# (the subnet's .11, .12, ...), as a real host keeps its address across a reboot. On Docker's
# default bridge a restarted container takes whichever address is free then: with labs side by
# side another lab's host may hold its old one, and what the facts gathered before the reboot
# say (Slurm's NodeAddr, torch's rendezvous address, hf_seed's peers) reaches the wrong host.
# Private /24s tried in order: Docker refuses one that overlaps a network it has (another lab's).
SUBNETS = [f"172.30.{i}.0/24" for i in range(256)]
FIRST_HOST_ADDRESS = 10  # the subnet's .1 is the bridge (this machine)
# Ansible's jsonfile fact cache (ansible.cfg, Lab.fact_caches): a new container must not inherit
# the facts of an earlier one of the same name (smart gathering would skip it for hours). Where
# the site stores each host's readiness summary (Lab.host_reports_dir): a removed host's summary
# goes with it (else the next report still lists it).

# Run inside a fresh container: per-host SSH host keys, the `ansible` user, sshd.
BOOTSTRAP = r"""
set -eu
if [ ! -e /etc/lab-host-keys ]; then
    rm -f /etc/ssh/ssh_host_*
    ssh-keygen -A >/dev/null
    touch /etc/lab-host-keys
fi
id ansible >/dev/null 2>&1 || useradd --create-home --shell /bin/bash ansible
install -d -m 0700 -o ansible -g ansible /home/ansible/.ssh
printf '%s\n' "$LAB_PUBKEY" > /home/ansible/.ssh/authorized_keys
chown ansible:ansible /home/ansible/.ssh/authorized_keys
chmod 0600 /home/ansible/.ssh/authorized_keys
printf 'ansible ALL=(ALL) NOPASSWD: ALL\n' > /etc/sudoers.d/ansible
chmod 0440 /etc/sudoers.d/ansible
visudo -cf /etc/sudoers.d/ansible >/dev/null
printf 'PasswordAuthentication no\nKbdInteractiveAuthentication no\nUseDNS no\n' \
    > /etc/ssh/sshd_config.d/lab.conf
systemctl enable --quiet ssh.service
systemctl restart ssh.service
cat /etc/ssh/ssh_host_ed25519_key.pub
"""


log = Logger("lab")
die = log.die


def run(*cmd, check=True, capture=True, env=None, input=None, timeout=600) -> subprocess.CompletedProcess:
    proc = subprocess.run(
        [str(c) for c in cmd],
        check=False,
        capture_output=capture,
        text=True,
        env=env,
        input=input,
        timeout=timeout,
    )
    if check and proc.returncode != 0:
        err = (proc.stderr or proc.stdout or "").strip()[-2000:] if capture else ""
        die(f"{' '.join(str(c) for c in cmd)} exited {proc.returncode}: {err}")
    return proc


# --- state ------------------------------------------------------------------------------


def load_state(lab: Lab) -> dict:
    if lab.state_file.exists():
        return json.loads(lab.state_file.read_text())
    return {"hosts": {}, "files": [], "dirs": []}


def save_state(lab: Lab, state: dict) -> None:
    lab.dir.mkdir(exist_ok=True)
    tmp = lab.state_file.with_suffix(".tmp")
    tmp.write_text(json.dumps(state, indent=2, sort_keys=True) + "\n")
    tmp.replace(lab.state_file)


def remember(lab: Lab, state: dict, kind: str, path: Path) -> None:
    rel = str(path.relative_to(ROOT))
    if rel not in state[kind]:
        state[kind].append(rel)
        save_state(lab, state)


# --- pieces -----------------------------------------------------------------------------


def ensure_key(lab: Lab, state: dict) -> str:
    if not lab.key.exists():
        lab.ssh_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        remember(lab, state, "dirs", lab.ssh_dir)
        run("ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "ansible@lab", "-f", lab.key)
        log(f"generated {lab.key.relative_to(ROOT)}")
    remember(lab, state, "files", lab.key)
    remember(lab, state, "files", lab.key.with_name(lab.key.name + ".pub"))
    return lab.key.with_name(lab.key.name + ".pub").read_text().strip()


def ensure_controller_tools() -> None:
    """Tools the controller needs to run the site against the lab (rsync: the wheelhouse sync)."""
    missing = [pkg for cmd, pkg in (("rsync", "rsync"), ("ssh", "openssh-client")) if not shutil.which(cmd)]
    if missing:
        log(f"installing {' '.join(missing)} on the controller")
        env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
        run("apt-get", "update", "-qq", env=env)
        run("apt-get", "install", "-y", "-qq", "--no-install-recommends", *missing, env=env)


def hf_env(root: Path) -> dict:
    env = dict(os.environ)
    env.update(
        HF_HOME=str(root),
        HF_HUB_CACHE=str(root / "hub"),
        HF_DATASETS_CACHE=str(root / "datasets"),
        HF_HUB_OFFLINE="1",
        HF_DATASETS_OFFLINE="1",
    )
    return env


def ensure_cache(lab: Lab, state: dict) -> Path:
    """The volume's content, built once: <lab/cache>/content/{datasets,hub}, checked ready."""
    content = root = lab.cache_build / "content"
    stamp = lab.cache_build / "ready.json"
    if stamp.exists():
        return content
    if not lab.python_path.exists():
        die(f"{lab.python_path} is missing: run `make loader-venv` (production venv) first")
    if lab.cache_build.exists():
        shutil.rmtree(lab.cache_build)
    lab.cache_build.mkdir(parents=True)
    remember(lab, state, "dirs", lab.cache_build)
    log(f"building the {lab.dataset} cache ({lab.train_images}+{lab.val_images} JPEGs) with the production libraries")
    t0 = time.monotonic()
    # Arrow files about as large as the train split's parquet shards when there are many (the
    # seed benchmark's shape), else datasets' default.
    arrow = ["--arrow-shard-bytes", "parquet"] if lab.shards > 2 else []
    build = [lab.dataset, "--train", lab.train_images, "--val", lab.val_images, "--classes", N_CLASSES]
    build += ["--size", "96x80", "--shards", lab.shards, *arrow]
    run(lab.python_path, "-m", "hf_loader.fixtures", root, *build, env=hf_env(root))
    # The readiness test the hosts run: environment, cache completeness, real batches.
    proc = run(
        lab.python_path,
        "-m",
        "hf_loader.cachetest",
        lab.dataset,
        "--json",
        "--batches",
        "2",
        "--batch-size",
        "32",
        "--workers",
        "0",
        check=False,
        env=hf_env(root),
    )
    if proc.returncode != 0:
        die(f"hf-cache-test says the built cache is not ready (exit {proc.returncode}):\n{proc.stdout}{proc.stderr}")
    report = json.loads(proc.stdout)
    # `datasets` leaves lock files named after the build path beside the cache: not data.
    for lock in (root / "datasets").glob("*.lock"):
        lock.unlink()
    run("chmod", "-R", "a+rX", content)
    stamp.write_text(json.dumps(report, indent=2) + "\n")
    log(f"cache ready in {time.monotonic() - t0:.0f} s: {run('du', '-sh', root).stdout.split()[0]}")
    return content


def loop_of(image: Path) -> str | None:
    """The loop device backed by this image file (by inode: `losetup -j`), if attached."""
    out = run("losetup", "-j", image, "-O", "NAME", "-n", check=False).stdout.split()
    return out[0] if out else None


def ensure_volume(lab: Lab, state: dict, host: str, content: Path, seed: str) -> str:
    h = state["hosts"][host]
    image = lab.volumes / f"{host}.img"
    lab.volumes.mkdir(parents=True, exist_ok=True)
    remember(lab, state, "dirs", lab.volumes)
    if not image.exists():
        h["image"] = str(image.relative_to(ROOT))
        h["seed"] = seed
        save_state(lab, state)
        tmp = image.with_suffix(".tmp")
        run("truncate", "-s", lab.volume_size, tmp)  # sparse: only the cache takes blocks
        fill = ["-d", content] if seed == "full" else []
        run("mkfs.ext4", "-q", "-F", "-L", VOLUME_LABEL, "-E", "root_owner=0:0", *fill, tmp)
        tmp.replace(image)
        what = "the cache" if seed == "full" else "empty, to be seeded"
        log(f"{host}: volume {image.relative_to(ROOT)} ({lab.volume_size} sparse, ext4 label {VOLUME_LABEL}, {what})")
    h["image"] = str(image.relative_to(ROOT))
    h.setdefault("seed", seed)  # an image from before seed modes were recorded (up() checked it)
    loop = loop_of(image)
    if not loop:
        loop = run("losetup", "--find", "--show", image).stdout.strip()
        log(f"{host}: attached {loop}")
    h["loop"] = loop
    save_state(lab, state)
    return loop


def container_info(name: str) -> dict | None:
    proc = run("docker", "inspect", "--type", "container", name, check=False)
    if proc.returncode != 0:
        return None
    return json.loads(proc.stdout)[0]


def forget_facts(lab: Lab, host: str) -> None:
    for cache in lab.fact_caches:
        for path in cache.glob(f"*{host}"):  # ansible-core 2.19 prefixes the host name (s1_)
            if path.name == host or path.name.endswith(f"_{host}"):
                path.unlink(missing_ok=True)


def ensure_network(lab: Lab, state: dict) -> str:
    """The lab's network, made once and recorded for `down`; returns its subnet."""
    proc = run("docker", "network", "inspect", "--format", "{{json .}}", lab.network, check=False)
    if proc.returncode == 0:
        info = json.loads(proc.stdout)
        if (info.get("Labels") or {}).get(LABEL) != str(ROOT):
            die(f"a docker network named {lab.network} exists that the lab did not make; remove or rename it")
        subnet = info["IPAM"]["Config"][0]["Subnet"]
    else:
        for subnet in SUBNETS:
            proc = run(
                "docker", "network", "create", "--driver", "bridge", "--subnet", subnet,
                "--label", f"{LABEL}={ROOT}", lab.network, check=False,
            )  # fmt: skip
            if proc.returncode == 0:
                log(f"network {lab.network} ({subnet}) created")
                break
            if "overlap" not in proc.stderr:
                die(f"docker network create {lab.network} --subnet {subnet}: {proc.stderr.strip()}")
        else:
            free = f"among {SUBNETS[0]}..{SUBNETS[-1]}"
            die(f"no free /24 for {lab.network} {free}: `docker network ls`, remove stale ones")
    if state.get("network") != {"name": lab.network, "subnet": subnet}:
        state["network"] = {"name": lab.network, "subnet": subnet}
        save_state(lab, state)
    return subnet


def host_address(subnet: str, index: int) -> str:
    return str(ipaddress.ip_network(subnet)[FIRST_HOST_ADDRESS + index])


def shared_folder(lab: Lab, state: dict) -> Path:
    """LAB_SHARED's folder on this machine, created (and recorded for `down`) on first use."""
    name, _, path = lab.shared.partition(":")
    folder = lab.dir / name
    if not name or not path.startswith("/") or folder.resolve().parent != lab.dir.resolve():
        die(
            f"LAB_SHARED must be FOLDER:/PATH (a folder name under {lab.folder}, an absolute path"
            f" in the hosts); got {lab.shared!r}"
        )
    folder.mkdir(parents=True, exist_ok=True)
    remember(lab, state, "dirs", folder)
    return folder


def gpu_labels(gpu: str, gpu_count: int) -> dict[str, str]:
    """The container labels of a GPU mode (a container without them was made before GPU modes: none)."""
    return {"lab.gpu": gpu, "lab.gpu_count": str(gpu_count if gpu == "sim" else 0)}


def ensure_container(
    lab: Lab, state: dict, host: str, index: int, loop: str, pubkey: str, gpu: str, gpu_count: int
) -> int:
    h = state["hosts"][host]
    port = lab.base_port + index
    address = host_address(ensure_network(lab, state), index)
    want_gpu = gpu_labels(gpu, gpu_count)
    info = container_info(host)
    if info is not None:
        labels = info["Config"]["Labels"] or {}
        ours = labels.get(LABEL) == str(ROOT)
        if not ours:
            die(f"a container named {host} exists that the lab did not make; remove or rename it")
        made_gpu = {key: labels.get(key, default) for key, default in gpu_labels("none", 0).items()}
        if labels.get("lab.loop") != loop or labels.get("lab.port") != str(port):
            # The loop device changed (e.g. after a reboot): a privileged container only
            # sees the device nodes present when it was created.
            log(f"{host}: loop device or port changed, recreating the container")
            run("docker", "rm", "-f", host)
            info = None
        elif labels.get("lab.address") != address:
            # A container's networks and address are fixed when it is made (one made before the
            # lab had its own network sits on Docker's default bridge).
            log(f"{host}: not at {address} on {lab.network}: recreating the container (the volume stays)")
            run("docker", "rm", "-f", host)
            info = None
        elif labels.get("lab.shared", "") != lab.shared:
            # Bind mounts are fixed when a container is made.
            was = labels.get("lab.shared", "")
            log(f"{host}: made with LAB_SHARED {was!r}, {lab.shared!r} asked: recreating the container")
            run("docker", "rm", "-f", host)
            info = None
        elif made_gpu != want_gpu:
            # The simulated hardware and the repository mount are fixed when a container is made.
            was = made_gpu["lab.gpu"] + (f" x{made_gpu['lab.gpu_count']}" if made_gpu["lab.gpu"] == "sim" else "")
            now = gpu + (f" x{gpu_count}" if gpu == "sim" else "")
            log(f"{host}: made with GPU mode {was}, {now} asked: recreating the container (the volume stays)")
            run("docker", "rm", "-f", host)
            info = None
        else:
            # Containers made before reboots were rehearsed have no restart policy: a reboot
            # inside must bring them back.
            if (info["HostConfig"].get("RestartPolicy") or {}).get("Name") != RESTART_POLICY:
                run("docker", "update", "--restart", RESTART_POLICY, host)
                log(f"{host}: restart policy set to {RESTART_POLICY}")
            if not info["State"]["Running"]:
                run("docker", "start", host)
            elif h.get("host_key") and h.get("port") == port:
                return port  # running as the lab left it: nothing to do
    if info is None:
        h["container"] = host
        save_state(lab, state)
        forget_facts(lab, host)
        gpu_args = []
        if gpu == "sim":
            # The simulated NVIDIA repository, read-only (nvidia_driver_repo_url file:///srv/gpu-sim/repo).
            gpu_args = ["--volume", f"{lab.gpu_dir / 'repo'}:{GPU_REPO_MOUNT}:ro"]
        shared_args = ["--volume", f"{shared_folder(lab, state)}:{lab.shared.split(':', 1)[1]}"] if lab.shared else []
        run(
            "docker", "run", "--detach",
            "--name", host,
            "--hostname", host,
            "--label", f"{LABEL}={ROOT}",
            "--label", f"lab.loop={loop}",
            "--label", f"lab.port={port}",
            *(f"--label={key}={value}" for key, value in want_gpu.items()),
            "--label", f"lab.shared={lab.shared}",
            "--label", f"lab.address={address}",
            "--network", lab.network,
            "--ip", address,
            "--privileged",
            "--cgroupns", "host",
            "--volume", "/sys/fs/cgroup:/sys/fs/cgroup:rw",
            *gpu_args,
            *shared_args,
            "--tmpfs", "/run",
            "--tmpfs", "/run/lock",
            "--publish", f"127.0.0.1:{port}:22",
            "--stop-signal", "SIGRTMIN+3",
            # A reboot inside (systemd exits) starts the container again: /run is new, the disk stays.
            "--restart", RESTART_POLICY,
            lab.image,
            "/lib/systemd/systemd",
        )  # fmt: skip
        gpus = f", {gpu_count} simulated GPU(s)" if gpu == "sim" else ""
        log(f"{host}: container started at {address}, ssh on 127.0.0.1:{port}, volume {loop}{gpus}")
    h["container"] = host
    h["port"] = port
    save_state(lab, state)
    wait_systemd(host)
    hostkey = run("docker", "exec", "-e", f"LAB_PUBKEY={pubkey}", host, "sh", "-c", BOOTSTRAP).stdout
    h["host_key"] = hostkey.strip().splitlines()[-1]
    save_state(lab, state)
    return port


# Run in each container at every `up`, lab files on stdin (a tar): lab-boot.service enabled.
INSTALL_LAB_FILES = r"""
set -eu
tar -x -o -C /
if [ "$LAB_GPU_FAIL" != yes ]; then rm -f /etc/gpu-sim/fail-version; fi
systemctl daemon-reload
systemctl enable --quiet lab-boot.service
"""

# Run in each --gpu sim container: what the host image would come with. The kernel's headers
# (the stand-in package, dpkg -i), and initramfs-tools from Debian's archive (the role's
# handler runs update-initramfs; the base image has none). initramfs-tools pulls in udev,
# which must not run in a privileged container (it would see, and trigger events for, every
# device of the machine): its units are masked, and policy-rc.d keeps apt from starting it.
INSTALL_SIM_HOST = r"""
set -eu
installed() { dpkg-query -W -f='${Status}' "$1" 2>/dev/null | grep -q ' installed$'; }
deb=/var/cache/lab-gpu-sim/$LAB_HEADERS_DEB
if ! installed "$LAB_HEADERS_PKG"; then
    dpkg -i "$deb" >/dev/null
    echo "installed $LAB_HEADERS_PKG (lab stand-in)"
fi
rm -f "$deb"
if ! installed initramfs-tools; then
    for unit in systemd-udevd.service systemd-udevd-control.socket systemd-udevd-kernel.socket \
        systemd-udev-trigger.service systemd-udev-settle.service; do
        ln -sf /dev/null "/etc/systemd/system/$unit"
    done
    systemctl daemon-reload
    printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d
    chmod 0755 /usr/sbin/policy-rc.d
    trap 'rm -f /usr/sbin/policy-rc.d' EXIT
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends initramfs-tools >/dev/null
    echo "installed initramfs-tools from Debian's archive (udev masked)"
fi
"""


def lab_files(gpu: str, gpu_count: int, fail_version: str, headers: Path | None) -> dict[str, tuple[bytes, int]]:
    """What `up` puts into a container: path -> (bytes, mode)."""
    payload = gpu_build.PAYLOAD
    files = {
        "/usr/local/sbin/lab-boot": ((payload / "lab_boot.py").read_bytes(), 0o755),
        "/etc/systemd/system/lab-boot.service": ((payload / "lab-boot.service").read_bytes(), 0o644),
        "/usr/local/bin/lab-train": ((payload / "lab_train.py").read_bytes(), 0o755),
        "/etc/systemd/system/lab-train@.service": ((payload / "lab-train@.service").read_bytes(), 0o644),
    }
    if gpu == "sim":
        files["/etc/gpu-sim/gpus-count"] = (f"{gpu_count}\n".encode(), 0o644)
        if fail_version:
            files["/etc/gpu-sim/fail-version"] = (f"{fail_version}\n".encode(), 0o644)
        if headers is not None:
            files[f"/var/cache/lab-gpu-sim/{headers.name}"] = (headers.read_bytes(), 0o644)
    return files


def tar_of(files: dict[str, tuple[bytes, int]]) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.GNU_FORMAT) as archive:
        for path, (data, mode) in sorted(files.items()):
            info = tarfile.TarInfo(path.lstrip("/"))
            info.size, info.mode, info.mtime = len(data), mode, int(time.time())
            archive.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


def docker_exec_input(host: str, what: str, script: str, data: bytes, env: dict[str, str]) -> str:
    """Run sh -c SCRIPT in the container with DATA on stdin (bytes: a tar)."""
    args = ["docker", "exec", "-i", *(f"--env={key}={value}" for key, value in env.items()), host, "sh", "-c", script]
    proc = subprocess.run(args, input=data, capture_output=True, check=False, timeout=600)
    if proc.returncode != 0:
        die(f"{host}: {what} exited {proc.returncode}: {proc.stderr.decode()[-2000:]}")
    return proc.stdout.decode()


def setup_host(host: str, gpu: str, gpu_count: int, fail_version: str, headers: Path | None) -> None:
    """lab-boot and lab-train@ on every host; on sim hosts also the simulated GPUs' settings,
    the kernel headers stand-in and initramfs-tools; then lab-boot runs (a no-op when it has
    run in this boot already: a oneshot that remains active)."""
    files = lab_files(gpu, gpu_count, fail_version, headers)
    env = {"LAB_GPU_FAIL": "yes" if fail_version else "no"}
    docker_exec_input(host, "installing lab-boot and lab-train", INSTALL_LAB_FILES, tar_of(files), env)
    if gpu == "sim" and headers is not None:
        package = headers.name.split("_", 1)[0]
        env = {"LAB_HEADERS_DEB": headers.name, "LAB_HEADERS_PKG": package}
        out = docker_exec_input(host, "installing the headers stand-in and initramfs-tools", INSTALL_SIM_HOST, b"", env)
        for line in out.strip().splitlines():
            log(f"{host}: {line}")
    proc = run("docker", "exec", host, "systemctl", "start", "lab-boot.service", check=False)
    if proc.returncode != 0:
        journal = run("docker", "exec", host, "journalctl", "-b", "-u", "lab-boot", "--no-pager", check=False)
        die(f"{host}: lab-boot.service failed:\n{journal.stdout[-2000:]}")


def ensure_gpu_repo(lab: Lab, state: dict) -> tuple[list[str], Path]:
    """The simulated NVIDIA repository of this lab (built once); its versions and the headers .deb."""
    try:
        versions = gpu_build.parse_versions(lab.driver_versions)
    except gpu_build.BuildError as error:
        die(f"LAB_GPU_DRIVER_VERSIONS: {error}")
    if os.uname().machine != "x86_64":
        die(f"--gpu sim simulates NVIDIA's x86_64 repository; this machine is {os.uname().machine}")
    kernel = os.uname().release
    lab.gpu_dir.mkdir(parents=True, exist_ok=True)
    remember(lab, state, "dirs", lab.gpu_dir)
    if not gpu_build.is_built(lab.gpu_dir, versions, kernel):
        log(f"building the simulated NVIDIA repository ({', '.join(versions)}) in {lab.gpu_dir.relative_to(ROOT)}")
        t0 = time.monotonic()
        try:
            info = gpu_build.build(lab.gpu_dir, versions, kernel)
        except (gpu_build.BuildError, RuntimeError, subprocess.CalledProcessError) as error:
            detail = getattr(error, "stderr", "") or ""
            die(f"building the simulated NVIDIA repository: {error} {detail}".strip())
        log(f"repository built in {time.monotonic() - t0:.1f} s: {len(info['packages'])} packages, signed")
    info = json.loads((lab.gpu_dir / "ready.json").read_text())
    return versions, lab.gpu_dir / "host" / info["headers"]


def ssh_base(lab: Lab, port: int) -> list[str]:
    return [
        "ssh",
        "-i", str(lab.key),
        "-p", str(port),
        "-o", "BatchMode=yes",
        "-o", f"UserKnownHostsFile={lab.known_hosts}",
        "-o", "StrictHostKeyChecking=yes",
        "-o", "ConnectTimeout=5",
        "ansible@127.0.0.1",
    ]  # fmt: skip


def wait_ssh(lab: Lab, host: str, port: int, loop: str) -> None:
    for _ in range(60):
        proc = run(*ssh_base(lab, port), f"sudo -n true && test -b {loop}", check=False)
        if proc.returncode == 0:
            return
        time.sleep(0.5)
    die(f"{host}: no SSH login with sudo on 127.0.0.1:{port}: {proc.stderr.strip()}")


def write_known_hosts(lab: Lab, state: dict) -> None:
    # Host keys read over `docker exec` (a trusted channel), so SSH checks them strictly.
    lines = []
    for h in state["hosts"].values():
        if h.get("host_key") and h.get("port"):
            keytype, key = h["host_key"].split()[:2]
            lines.append(f"[127.0.0.1]:{h['port']} {keytype} {key}")
    lab.known_hosts.write_text("\n".join(lines) + "\n")
    remember(lab, state, "files", lab.known_hosts)


def write_inventory(lab: Lab, state: dict, hosts: list[str]) -> None:
    lines = [
        "---",
        "# Generated by scripts/lab.py (`make lab`); not tracked. Lab-wide settings are in",
        "# group_vars/gpu_hosts.yml.",
        "gpu_hosts:",
        "  hosts:",
    ]
    common = f"-o StrictHostKeyChecking=yes -o UserKnownHostsFile={lab.known_hosts}"
    for host in hosts:
        h = state["hosts"][host]
        lines += [
            f"    {host}:",
            "      ansible_host: 127.0.0.1",
            f"      ansible_port: {h['port']}",
            "      ansible_user: ansible",
            f"      ansible_ssh_private_key_file: {lab.key}",
            f"      ansible_ssh_common_args: {common}",
            f"      lab_volume_device: {h['loop']}",
            f"      lab_seed: {h.get('seed', 'full')}",
            f"      lab_gpu: {h.get('gpu', 'none')}",
        ]
        if h.get("gpu") == "sim":
            # Read by the gpu-sim mapping of group_vars/gpu_hosts.yml.
            lines += [
                f"      nvidia_driver_repo_url: file://{GPU_REPO_MOUNT}",
                f"      lab_gpu_count: {h['gpu_count']}",
                f"      lab_gpu_fail: {'true' if h.get('gpu_fail') else 'false'}",
                f"      lab_gpu_repo_key: {lab.gpu_dir / 'key.asc'}",
                f'      lab_gpu_driver_version: "{h["gpu_driver_version"]}"',
            ]
    lab.inventory_file.parent.mkdir(parents=True, exist_ok=True)
    lab.inventory_file.write_text("\n".join(lines) + "\n")
    remember(lab, state, "files", lab.inventory_file)


# --- commands ---------------------------------------------------------------------------


def up(lab: Lab, engine: bool) -> None:
    """lab.hosts hosts with lab.seed volumes and lab.gpu GPUs, the inventory written."""
    t0 = time.monotonic()
    n, seed, gpu, gpu_count, gpu_fail = lab.hosts, lab.seed, lab.gpu, lab.gpu_count, lab.gpu_fail_hosts()
    hosts = lab.host_names(n)
    unknown = sorted(set(gpu_fail) - set(hosts))
    if unknown:
        die(f"--gpu-fail/LAB_GPU_FAIL names {', '.join(unknown)}, not among the hosts {hosts[0]}..{hosts[-1]}")
    if gpu_fail and gpu != "sim":
        die("--gpu-fail/LAB_GPU_FAIL needs --gpu sim (LAB_GPU=sim)")
    if lab.shared:
        shared_folder(lab, load_state(lab))  # a bad LAB_SHARED is refused before any host changes
    if engine:
        run("make", "--no-print-directory", "-C", ROOT, "engine", capture=False)
    state = load_state(lab)
    save_state(lab, state)
    extra = sorted(set(state["hosts"]) - set(hosts))
    for host in extra:  # LAB_HOSTS went down: remove the hosts beyond N
        remove_host(lab, state, host)
    ensure_controller_tools()
    pubkey = ensure_key(lab, state)
    content = ensure_cache(lab, state)
    versions, headers = ensure_gpu_repo(lab, state) if gpu == "sim" else ([], None)
    for i, host in enumerate(hosts, start=1):
        made = state["hosts"].get(host)
        # Images made before seed modes were recorded hold the cache: "full".
        if made is not None and made.get("seed", "full") != seed:
            was = made.get("seed", "full")
            log(f"{host}: its volume was made {was}, {seed} asked: recreating the volume and the container")
            remove_host(lab, state, host)
        h = state["hosts"].setdefault(host, {})
        loop = ensure_volume(lab, state, host, content, seed)
        h.update(gpu=gpu, gpu_count=gpu_count if gpu == "sim" else 0, gpu_fail=host in gpu_fail)
        if gpu == "sim":
            h["gpu_driver_version"] = versions[0]  # the first converge installs the oldest
        else:
            h.pop("gpu_driver_version", None)
        save_state(lab, state)
        ensure_container(lab, state, host, i, loop, pubkey, gpu, gpu_count)
        # The newest simulated driver fails one GPU on the --gpu-fail hosts (from their next boot).
        setup_host(host, gpu, gpu_count, versions[-1] if host in gpu_fail else "", headers)
    write_known_hosts(lab, state)
    for host in hosts:
        wait_ssh(lab, host, state["hosts"][host]["port"], state["hosts"][host]["loop"])
    write_inventory(lab, state, hosts)
    gpus = f", {gpu_count} simulated GPUs each (drivers {', '.join(versions)})" if gpu == "sim" else ""
    fails = f", one GPU fails under {versions[-1]} on {', '.join(sorted(gpu_fail))}" if gpu_fail else ""
    log(
        f"{n} hosts up ({seed} volumes{gpus}{fails}) in {time.monotonic() - t0:.0f} s; "
        f"inventory: {lab.inventory_file.relative_to(ROOT)}"
    )
    key = lab.key.relative_to(ROOT)
    log(f"reach one: ssh -i {key} -p {lab.base_port + 1} ansible@127.0.0.1 (or: docker exec -it {hosts[0]} bash)")


def remove_host(lab: Lab, state: dict, host: str) -> None:
    h = state["hosts"].get(host, {})
    if h.get("container"):
        info = container_info(h["container"])
        if info is not None and (info["Config"]["Labels"] or {}).get(LABEL) == str(ROOT):
            run("docker", "rm", "-f", "--volumes", h["container"])
            log(f"{host}: container removed")
        forget_facts(lab, host)
        (lab.host_reports_dir / f"{host}.json").unlink(missing_ok=True)
    if h.get("image"):
        image = ROOT / h["image"]
        # Detach only a loop device that is still backed by this very file.
        if image.exists():
            for _ in range(20):
                loop = loop_of(image)
                if not loop:
                    break
                run("losetup", "-d", loop, check=False)
                log(f"{host}: detached {loop}")
                time.sleep(0.2)
            image.unlink()
            log(f"{host}: removed {h['image']}")
        for tmp in (image.with_suffix(".tmp"),):
            tmp.unlink(missing_ok=True)
    state["hosts"].pop(host, None)
    save_state(lab, state)


def down(lab: Lab) -> None:
    if not lab.state_file.exists():
        log("nothing recorded in lab/state.json: nothing to remove")
        return
    state = load_state(lab)
    for host in sorted(state["hosts"]):
        remove_host(lab, state, host)
    if state.get("network"):
        name = state["network"]["name"]
        proc = run("docker", "network", "inspect", "--format", "{{json .Labels}}", name, check=False)
        if proc.returncode == 0 and (json.loads(proc.stdout) or {}).get(LABEL) == str(ROOT):
            run("docker", "network", "rm", name)
            log(f"network {name} removed")
    for rel in state["files"]:
        (ROOT / rel).unlink(missing_ok=True)
    for rel in sorted(state["dirs"], key=len, reverse=True):
        path = ROOT / rel
        if path.is_dir():
            shutil.rmtree(path)
    lab.state_file.unlink()
    if lab.dir.is_dir() and not any(lab.dir.iterdir()):
        lab.dir.rmdir()
    log("lab removed")


def status(lab: Lab) -> None:
    state = load_state(lab)
    for host, h in sorted(state["hosts"].items()):
        info = container_info(h.get("container", host))
        running = bool(info and info["State"]["Running"])
        loop = loop_of(ROOT / h["image"]) if h.get("image") and (ROOT / h["image"]).exists() else None
        gpu = h.get("gpu", "none")
        if gpu == "sim":
            gpu = f"sim x{h.get('gpu_count')}" + (" (one fails under the newest driver)" if h.get("gpu_fail") else "")
        print(
            f"{host}: container {'running' if running else 'absent/stopped'}, port {h.get('port')}, loop {loop}, "
            f"volume made {h.get('seed', 'full')}, GPUs {gpu}"
        )


def main() -> None:
    try:
        lab = Lab.from_env()
    except LabSettingsError as error:
        die(str(error))
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)
    u = sub.add_parser("up", help="create or reuse the lab hosts and write the inventory")
    u.add_argument("--hosts", type=int, default=lab.hosts)
    u.add_argument("--no-engine", action="store_true", help="skip `make engine`")
    u.add_argument(
        "--seed",
        choices=SEED_MODES,
        default=lab.seed,
        help="new volumes hold the cache (full, default) or nothing (empty: for playbooks/seed.yml); "
        "a host whose volume was made otherwise is recreated (LAB_SEED)",
    )
    u.add_argument(
        "--gpu",
        choices=GPU_MODES,
        default=lab.gpu,
        help="none (default): no GPU, the driver role skips the hosts; sim: simulated NVIDIA GPUs and "
        "repository, the driver role installs, reboots and verifies (LAB_GPU)",
    )
    u.add_argument(
        "--gpu-count",
        type=int,
        default=lab.gpu_count,
        help=f"simulated GPUs a host, 1..{GPU_MAX} (LAB_GPU_COUNT, default 2)",
    )
    u.add_argument(
        "--gpu-fail",
        default=lab.gpu_fail,
        metavar="HOST[,HOST]",
        help="hosts where one GPU fails to initialise under the newest simulated driver (LAB_GPU_FAIL)",
    )
    sub.add_parser("down", help="remove everything lab/state.json records")
    sub.add_parser("status", help="show the recorded hosts")
    args = p.parse_args()
    if os.geteuid() != 0:
        die("run as root (docker, losetup, mkfs)")
    if args.cmd == "up":
        if not 1 <= args.hosts <= 50:
            die("--hosts/LAB_HOSTS must be 1..50")
        if args.seed not in SEED_MODES:  # a default from LAB_SEED is not checked by argparse
            die(f"--seed/LAB_SEED must be one of {', '.join(SEED_MODES)}, not {args.seed!r}")
        if args.gpu not in GPU_MODES:
            die(f"--gpu/LAB_GPU must be one of {', '.join(GPU_MODES)}, not {args.gpu!r}")
        if not 1 <= args.gpu_count <= GPU_MAX:
            die(f"--gpu-count/LAB_GPU_COUNT must be 1..{GPU_MAX}")
        options = dict(hosts=args.hosts, seed=args.seed, gpu=args.gpu, gpu_count=args.gpu_count, gpu_fail=args.gpu_fail)
        up(dataclasses.replace(lab, **options), engine=not args.no_engine)
    elif args.cmd == "down":
        down(lab)
    else:
        status(lab)


if __name__ == "__main__":
    main()
