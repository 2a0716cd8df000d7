#!/usr/bin/env python3
"""The lab: N simulated GPU hosts on one machine, reached over SSH like a real fleet.

Each host is a privileged systemd container (the run settings Molecule uses) running
sshd, published on 127.0.0.1:<2200+i>, with a user `ansible` (key the lab generates,
passwordless sudo) and a loop-backed ext4 dataset volume (label `hfcache`) that holds a
small ImageNet-shaped Hugging Face cache made by the real `datasets` library, or with
LAB_SEED=empty (--seed empty) a blank one of the same size and label, for playbooks/seed.yml
to fill from the controller's copy of that cache (lab/cache/content, built either way).

    lab.py up [--hosts N] [--seed full|empty]
                            create or reuse the hosts, write inventory/lab/hosts.yml
    lab.py down             remove everything recorded in lab/state.json
    lab.py status           what state.json records and whether it is still there

Everything created is recorded in lab/state.json as soon as it exists, so that `down`
removes exactly that (containers, loop devices, image files, files) and nothing else. Each
host's seed mode is recorded with its volume image: `up` with another mode recreates that
host's image and container (a seeded "empty" host stays as it is on an `up` that asks empty
again).
Python 3.11 standard library only; run as root (losetup, docker).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
# Another lab beside the default one (the fleet benchmark's) sets LAB_DIR, LAB_INVENTORY,
# LAB_PREFIX and LAB_BASE_PORT.
LAB = ROOT / os.environ.get("LAB_DIR", "lab")
STATE = LAB / "state.json"
SSH_DIR = LAB / "ssh"
KEY = SSH_DIR / "id_ed25519"
KNOWN_HOSTS = SSH_DIR / "known_hosts"
VOLUMES = LAB / "volumes"
CACHE_BUILD = LAB / "cache"
INVENTORY = ROOT / os.environ.get("LAB_INVENTORY", "inventory/lab/hosts.yml")

IMAGE = os.environ.get("LAB_IMAGE", "local/debian-systemd:bookworm")
PREFIX = os.environ.get("LAB_PREFIX", "lab-gpu-")
BASE_PORT = int(os.environ.get("LAB_BASE_PORT", "2200"))
VOLUME_SIZE = os.environ.get("LAB_VOLUME_SIZE", "1536M")
VOLUME_LABEL = "hfcache"
# What a new volume holds: "full" (the cache below) or "empty" (a blank ext4, to be seeded).
SEED_MODES = ("full", "empty")
# The volume's root is the cache root: <volume>/{datasets,hub} (HF_DATASETS_CACHE and
# HF_HUB_CACHE); mounted at /data/hf, the default hf_env_cache_root.
DATASET = os.environ.get("LAB_DATASET", "ILSVRC/imagenet-1k")
# A few hundred small JPEGs, ImageNet-shaped: train + validation, ClassLabel names.
N_TRAIN = int(os.environ.get("LAB_TRAIN_IMAGES", "384"))
N_VAL = int(os.environ.get("LAB_VAL_IMAGES", "96"))
N_CLASSES = 10
# Parquet shards per split, and about as many Arrow files: the real ImageNet-1k cache is
# hundreds of files of about 0.5 GB each (the Hub's parquet shards, and `datasets`' Arrow
# files cut at its 500 MB default max_shard_size); the seed benchmark wants that shape.
N_SHARDS = int(os.environ.get("LAB_SHARDS", "2"))
# A venv with the production pins and hf_loader (`make loader-venv`; mk/lab.mk passes it).
PROD_PYTHON = ROOT / os.environ.get(
    "LAB_PYTHON",
    next(
        (p for p in (".venvs/prod/bin/python", ".venvs/loader/bin/python") if (ROOT / p).exists()),
        ".venvs/loader/bin/python",
    ),
)
LABEL = "project.lab"
# Ansible's jsonfile fact cache (ansible.cfg): a new container must not inherit the facts of
# an earlier one of the same name (smart gathering would skip it for hours).
FACT_CACHES = [ROOT / d for d in os.environ.get("LAB_FACT_CACHE", ".cache/facts").split(":") if d]
# Where the site stores each host's readiness summary for the fleet report: a removed host's
# summary goes with it (else the next report still lists it).
HOST_REPORTS = ROOT / os.environ.get("LAB_HOST_REPORTS", "reports/hosts")

# Builds the cache with the production libraries (run by .venvs/prod/bin/python).
BUILD_CACHE = r"""
import sys
from pathlib import Path
from hf_loader import fixtures
root, dataset = Path(sys.argv[1]), sys.argv[2]
n_train, n_val, classes, shards = map(int, sys.argv[3:7])
splits, names = fixtures.tiny_splits(n_train=n_train, n_val=n_val, classes=classes, size=(96, 80))
snap = fixtures.make_hub_snapshot(root / "hub", dataset, splits, names, shards=shards)
# Arrow files about as large as the train split's parquet shards (None: datasets' default).
shard_bytes = sum(map(len, splits["train"][0])) // shards if shards > 2 else None
fixtures.make_arrow_cache(root / "datasets", dataset, snap, max_shard_size=shard_bytes)
"""

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


def log(msg: str) -> None:
    print(f"[lab] {msg}", flush=True)


def die(msg: str) -> None:
    print(f"[lab] ERROR: {msg}", file=sys.stderr, flush=True)
    sys.exit(1)


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


def load_state() -> dict:
    if STATE.exists():
        return json.loads(STATE.read_text())
    return {"hosts": {}, "files": [], "dirs": []}


def save_state(state: dict) -> None:
    LAB.mkdir(exist_ok=True)
    tmp = STATE.with_suffix(".tmp")
    tmp.write_text(json.dumps(state, indent=2, sort_keys=True) + "\n")
    tmp.replace(STATE)


def remember(state: dict, kind: str, path: Path) -> None:
    rel = str(path.relative_to(ROOT))
    if rel not in state[kind]:
        state[kind].append(rel)
        save_state(state)


# --- pieces -----------------------------------------------------------------------------


def ensure_key(state: dict) -> str:
    if not KEY.exists():
        SSH_DIR.mkdir(parents=True, exist_ok=True, mode=0o700)
        remember(state, "dirs", SSH_DIR)
        run("ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "ansible@lab", "-f", KEY)
        log(f"generated {KEY.relative_to(ROOT)}")
    remember(state, "files", KEY)
    remember(state, "files", KEY.with_name(KEY.name + ".pub"))
    return KEY.with_name(KEY.name + ".pub").read_text().strip()


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


def ensure_cache(state: dict) -> Path:
    """The volume's content, built once: <lab/cache>/content/{datasets,hub}, checked ready."""
    content = root = CACHE_BUILD / "content"
    stamp = CACHE_BUILD / "ready.json"
    if stamp.exists():
        return content
    if not PROD_PYTHON.exists():
        die(f"{PROD_PYTHON} is missing: run `make loader-venv` (production venv) first")
    if CACHE_BUILD.exists():
        shutil.rmtree(CACHE_BUILD)
    CACHE_BUILD.mkdir(parents=True)
    remember(state, "dirs", CACHE_BUILD)
    log(f"building the {DATASET} cache ({N_TRAIN}+{N_VAL} JPEGs) with the production libraries")
    t0 = time.monotonic()
    run(PROD_PYTHON, "-c", BUILD_CACHE, root, DATASET, N_TRAIN, N_VAL, N_CLASSES, N_SHARDS, env=hf_env(root))
    # The readiness test the hosts run: environment, cache completeness, real batches.
    proc = run(
        PROD_PYTHON,
        "-m",
        "hf_loader.cachetest",
        DATASET,
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


def ensure_volume(state: dict, host: str, content: Path, seed: str) -> str:
    h = state["hosts"][host]
    image = VOLUMES / f"{host}.img"
    VOLUMES.mkdir(parents=True, exist_ok=True)
    remember(state, "dirs", VOLUMES)
    if not image.exists():
        h["image"] = str(image.relative_to(ROOT))
        h["seed"] = seed
        save_state(state)
        tmp = image.with_suffix(".tmp")
        run("truncate", "-s", VOLUME_SIZE, tmp)  # sparse: only the cache takes blocks
        fill = ["-d", content] if seed == "full" else []
        run("mkfs.ext4", "-q", "-F", "-L", VOLUME_LABEL, "-E", "root_owner=0:0", *fill, tmp)
        tmp.replace(image)
        what = "the cache" if seed == "full" else "empty, to be seeded"
        log(f"{host}: volume {image.relative_to(ROOT)} ({VOLUME_SIZE} sparse, ext4 label {VOLUME_LABEL}, {what})")
    h["image"] = str(image.relative_to(ROOT))
    h.setdefault("seed", seed)  # an image from before seed modes were recorded (up() checked it)
    loop = loop_of(image)
    if not loop:
        loop = run("losetup", "--find", "--show", image).stdout.strip()
        log(f"{host}: attached {loop}")
    h["loop"] = loop
    save_state(state)
    return loop


def container_info(name: str) -> dict | None:
    proc = run("docker", "inspect", "--type", "container", name, check=False)
    if proc.returncode != 0:
        return None
    return json.loads(proc.stdout)[0]


def wait_systemd(name: str) -> None:
    for _ in range(120):
        out = run("docker", "exec", name, "systemctl", "is-system-running", check=False).stdout.strip()
        if out in ("running", "degraded"):
            return
        time.sleep(0.5)
    die(f"{name}: systemd did not finish booting (is-system-running: {out})")


def forget_facts(host: str) -> None:
    for cache in FACT_CACHES:
        for path in cache.glob(f"*{host}"):  # ansible-core 2.19 prefixes the host name (s1_)
            if path.name == host or path.name.endswith(f"_{host}"):
                path.unlink(missing_ok=True)


def ensure_container(state: dict, host: str, index: int, loop: str, pubkey: str) -> int:
    h = state["hosts"][host]
    port = BASE_PORT + index
    info = container_info(host)
    if info is not None:
        labels = info["Config"]["Labels"] or {}
        ours = labels.get(LABEL) == str(ROOT)
        if not ours:
            die(f"a container named {host} exists that the lab did not make; remove or rename it")
        if labels.get("lab.loop") != loop or labels.get("lab.port") != str(port):
            # The loop device changed (e.g. after a reboot): a privileged container only
            # sees the device nodes present when it was created.
            log(f"{host}: loop device or port changed, recreating the container")
            run("docker", "rm", "-f", host)
            info = None
        elif not info["State"]["Running"]:
            run("docker", "start", host)
        elif h.get("host_key") and h.get("port") == port:
            return port  # running as the lab left it: nothing to do
    if info is None:
        h["container"] = host
        save_state(state)
        forget_facts(host)
        run(
            "docker", "run", "--detach",
            "--name", host,
            "--hostname", host,
            "--label", f"{LABEL}={ROOT}",
            "--label", f"lab.loop={loop}",
            "--label", f"lab.port={port}",
            "--privileged",
            "--cgroupns", "host",
            "--volume", "/sys/fs/cgroup:/sys/fs/cgroup:rw",
            "--tmpfs", "/run",
            "--tmpfs", "/run/lock",
            "--publish", f"127.0.0.1:{port}:22",
            "--stop-signal", "SIGRTMIN+3",
            IMAGE,
            "/lib/systemd/systemd",
        )  # fmt: skip
        log(f"{host}: container started, ssh on 127.0.0.1:{port}, volume {loop}")
    h["container"] = host
    h["port"] = port
    save_state(state)
    wait_systemd(host)
    hostkey = run("docker", "exec", "-e", f"LAB_PUBKEY={pubkey}", host, "sh", "-c", BOOTSTRAP).stdout
    h["host_key"] = hostkey.strip().splitlines()[-1]
    save_state(state)
    return port


def ssh_base(port: int) -> list[str]:
    return [
        "ssh",
        "-i", str(KEY),
        "-p", str(port),
        "-o", "BatchMode=yes",
        "-o", f"UserKnownHostsFile={KNOWN_HOSTS}",
        "-o", "StrictHostKeyChecking=yes",
        "-o", "ConnectTimeout=5",
        "ansible@127.0.0.1",
    ]  # fmt: skip


def wait_ssh(host: str, port: int, loop: str) -> None:
    for _ in range(60):
        proc = run(*ssh_base(port), f"sudo -n true && test -b {loop}", check=False)
        if proc.returncode == 0:
            return
        time.sleep(0.5)
    die(f"{host}: no SSH login with sudo on 127.0.0.1:{port}: {proc.stderr.strip()}")


def write_known_hosts(state: dict) -> None:
    # Host keys read over `docker exec` (a trusted channel), so SSH checks them strictly.
    lines = []
    for h in state["hosts"].values():
        if h.get("host_key") and h.get("port"):
            keytype, key = h["host_key"].split()[:2]
            lines.append(f"[127.0.0.1]:{h['port']} {keytype} {key}")
    KNOWN_HOSTS.write_text("\n".join(lines) + "\n")
    remember(state, "files", KNOWN_HOSTS)


def write_inventory(state: dict, hosts: list[str]) -> None:
    lines = [
        "---",
        "# Generated by scripts/lab.py (`make lab`); not tracked. Lab-wide settings are in",
        "# group_vars/gpu_hosts.yml.",
        "gpu_hosts:",
        "  hosts:",
    ]
    common = f"-o StrictHostKeyChecking=yes -o UserKnownHostsFile={KNOWN_HOSTS}"
    for host in hosts:
        h = state["hosts"][host]
        lines += [
            f"    {host}:",
            "      ansible_host: 127.0.0.1",
            f"      ansible_port: {h['port']}",
            "      ansible_user: ansible",
            f"      ansible_ssh_private_key_file: {KEY}",
            f"      ansible_ssh_common_args: {common}",
            f"      lab_volume_device: {h['loop']}",
            f"      lab_seed: {h.get('seed', 'full')}",
        ]
    INVENTORY.parent.mkdir(parents=True, exist_ok=True)
    INVENTORY.write_text("\n".join(lines) + "\n")
    remember(state, "files", INVENTORY)


# --- commands ---------------------------------------------------------------------------


def up(n: int, engine: bool, seed: str) -> None:
    t0 = time.monotonic()
    if engine:
        run("make", "--no-print-directory", "-C", ROOT, "engine", capture=False)
    state = load_state()
    save_state(state)
    extra = sorted(set(state["hosts"]) - {f"{PREFIX}{i:02d}" for i in range(1, n + 1)})
    for host in extra:  # LAB_HOSTS went down: remove the hosts beyond N
        remove_host(state, host)
    ensure_controller_tools()
    pubkey = ensure_key(state)
    content = ensure_cache(state)
    hosts = [f"{PREFIX}{i:02d}" for i in range(1, n + 1)]
    for i, host in enumerate(hosts, start=1):
        made = state["hosts"].get(host)
        # Images made before seed modes were recorded hold the cache: "full".
        if made is not None and made.get("seed", "full") != seed:
            was = made.get("seed", "full")
            log(f"{host}: its volume was made {was}, {seed} asked: recreating the volume and the container")
            remove_host(state, host)
        state["hosts"].setdefault(host, {})
        loop = ensure_volume(state, host, content, seed)
        ensure_container(state, host, i, loop, pubkey)
    write_known_hosts(state)
    for host in hosts:
        wait_ssh(host, state["hosts"][host]["port"], state["hosts"][host]["loop"])
    write_inventory(state, hosts)
    log(f"{n} hosts up ({seed} volumes) in {time.monotonic() - t0:.0f} s; inventory: {INVENTORY.relative_to(ROOT)}")
    key = KEY.relative_to(ROOT)
    log(f"reach one: ssh -i {key} -p {BASE_PORT + 1} ansible@127.0.0.1 (or: docker exec -it {hosts[0]} bash)")


def remove_host(state: dict, host: str) -> None:
    h = state["hosts"].get(host, {})
    if h.get("container"):
        info = container_info(h["container"])
        if info is not None and (info["Config"]["Labels"] or {}).get(LABEL) == str(ROOT):
            run("docker", "rm", "-f", "--volumes", h["container"])
            log(f"{host}: container removed")
        forget_facts(host)
        (HOST_REPORTS / f"{host}.json").unlink(missing_ok=True)
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
    save_state(state)


def down() -> None:
    if not STATE.exists():
        log("nothing recorded in lab/state.json: nothing to remove")
        return
    state = load_state()
    for host in sorted(state["hosts"]):
        remove_host(state, host)
    for rel in state["files"]:
        (ROOT / rel).unlink(missing_ok=True)
    for rel in sorted(state["dirs"], key=len, reverse=True):
        path = ROOT / rel
        if path.is_dir():
            shutil.rmtree(path)
    STATE.unlink()
    if LAB.is_dir() and not any(LAB.iterdir()):
        LAB.rmdir()
    log("lab removed")


def status() -> None:
    state = load_state()
    for host, h in sorted(state["hosts"].items()):
        info = container_info(h.get("container", host))
        running = bool(info and info["State"]["Running"])
        loop = loop_of(ROOT / h["image"]) if h.get("image") and (ROOT / h["image"]).exists() else None
        print(
            f"{host}: container {'running' if running else 'absent/stopped'}, port {h.get('port')}, loop {loop}, "
            f"volume made {h.get('seed', 'full')}"
        )


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)
    u = sub.add_parser("up", help="create or reuse the lab hosts and write the inventory")
    u.add_argument("--hosts", type=int, default=int(os.environ.get("LAB_HOSTS", "3")))
    u.add_argument("--no-engine", action="store_true", help="skip `make engine`")
    u.add_argument(
        "--seed",
        choices=SEED_MODES,
        default=os.environ.get("LAB_SEED") or "full",
        help="new volumes hold the cache (full, default) or nothing (empty: for playbooks/seed.yml); "
        "a host whose volume was made otherwise is recreated (LAB_SEED)",
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
        up(args.hosts, engine=not args.no_engine, seed=args.seed)
    elif args.cmd == "down":
        down()
    else:
        status()


if __name__ == "__main__":
    main()
