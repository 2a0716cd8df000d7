#!/usr/bin/python3
"""lab-boot: what a lab container's boot needs and a real host's boot does by itself.

Installed by scripts/lab.py into every lab container as /usr/local/sbin/lab-boot and run
early at every boot by lab-boot.service (also once by `lab.py up` on a container it has
just made). A container "reboots" when systemd exits and Docker starts it again (restart
policy unless-stopped): /run is a fresh tmpfs and the mounts made inside are gone.

1. Boot marker: a new random id in /run/lab-boot-id. The kernel's boot id
   (/proc/sys/kernel/random/boot_id) is the machine's and stays the same when a container
   restarts, so the lab's reboots are recognised by this file instead
   (nvidia_driver_reboot_boot_time_command: cat /run/lab-boot-id).
2. Dataset volume: systemd in the container never sees a device unit for the loop device
   (no udev), so the fstab entry the dataset_volume role writes (nofail) gives up at boot
   and the host would come back without its volume. Every fstab entry whose device is a
   loop device, or a UUID (or /dev/disk/by-uuid/ path) that resolves to exactly one loop
   device, and that is not mounted yet, is mounted here, before local-fs.target. Never by
   label: every lab volume is labelled hfcache, and a privileged container sees all the
   machine's loop devices.
3. Simulated GPUs, on hosts made with `lab.py up --gpu sim` (/etc/gpu-sim/gpus-count
   exists): N fake PCI functions of an NVIDIA H200 (vendor 0x10de, device 0x2335, class
   0x030200) in /run/gpu-sim/pci, bind-mounted over /sys/bus/pci/devices beside links to
   the real functions; then the driver is "loaded" when `modinfo -F version nvidia` finds
   a module for the running kernel: a tmpfs on /proc/driver holding nvidia/version in the
   real format, and /run/gpu-sim/gpus (the GPUs that initialised, for nvidia-smi). A
   version installed later counts as loaded only after the next boot. Fault injection:
   when the loaded version is the one in /etc/gpu-sim/fail-version, the last GPU fails to
   initialise: it stays in sysfs, nvidia-smi lists one GPU fewer.
"""

from __future__ import annotations

import hashlib
import json
import re
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path

BOOT_ID = Path("/run/lab-boot-id")
FSTAB = Path("/etc/fstab")
SIM_DIR = Path("/etc/gpu-sim")
RUN_DIR = Path("/run/gpu-sim")
SYS_PCI = Path("/sys/bus/pci/devices")
PROC_DRIVER = Path("/proc/driver")

NVIDIA_VENDOR = "0x10de"
H200_DEVICE = "0x2335"
CLASS_3D = "0x030200"
GPU_NAME = "NVIDIA H200"
GPU_MEMORY_MIB = 143771
# The bus addresses of an HGX H100/H200 board's eight GPUs (tests/fixtures/nvidia, handwritten_h100).
BUS_ADDRESSES = [
    "0000:18:00.0",
    "0000:2a:00.0",
    "0000:3a:00.0",
    "0000:5d:00.0",
    "0000:9a:00.0",
    "0000:ab:00.0",
    "0000:ba:00.0",
    "0000:db:00.0",
]
LOOP = re.compile(r"^/dev/loop[0-9]+$")


def log(message: str) -> None:
    print(f"lab-boot: {message}", flush=True)


# ------------------------------------------------------------------ boot marker


def write_boot_id(path: Path = BOOT_ID) -> str:
    """A new id once a boot (/run is new at each boot): a second run in the same boot keeps it."""
    if path.exists():
        return path.read_text().strip()
    boot_id = str(uuid.uuid4())
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(boot_id + "\n")
    tmp.replace(path)
    return boot_id


# ------------------------------------------------------------------ the volume


def unescape(field: str) -> str:
    """fstab and /proc/self/mounts write blanks as octal escapes (\\040)."""
    return re.sub(r"\\([0-7]{3})", lambda match: chr(int(match.group(1), 8)), field)


def fstab_entries(text: str) -> list[dict]:
    entries = []
    for line in text.splitlines():
        fields = line.split("#", 1)[0].split()
        if len(fields) < 4:
            continue
        spec, target, fstype, options = (unescape(field) for field in fields[:4])
        entries.append({"spec": spec, "target": target, "fstype": fstype, "options": options})
    return entries


def mounted_targets(mounts_text: str) -> set[str]:
    return {unescape(line.split()[1]) for line in mounts_text.splitlines() if len(line.split()) > 1}


def resolve(spec: str, by_uuid) -> tuple[str, str]:
    """(loop device, '') for an fstab device the lab mounts, else ('', why not).

    by_uuid(uuid) lists the devices holding that filesystem UUID (blkid).
    """
    if spec.startswith("LABEL=") or spec.startswith("/dev/disk/by-label/"):
        return "", "by label (every lab volume is labelled hfcache: never mounted by label)"
    if spec.startswith("UUID=") or spec.startswith("/dev/disk/by-uuid/"):
        wanted = spec.split("=", 1)[1] if spec.startswith("UUID=") else spec.rsplit("/", 1)[1]
        devices = sorted(set(by_uuid(wanted)))
        loops = [device for device in devices if LOOP.match(device)]
        if len(devices) != 1 or len(loops) != 1:
            return "", f"UUID {wanted} is on {', '.join(devices) or 'no device'}, not on exactly one loop device"
        return loops[0], ""
    if LOOP.match(spec):
        return spec, ""
    return "", "not a loop device"


def blkid_uuid(wanted: str) -> list[str]:
    done = subprocess.run(
        ["blkid", "-c", "/dev/null", "-t", f"UUID={wanted}", "-o", "device"], capture_output=True, text=True
    )
    return done.stdout.split()


def device_unit(spec: str) -> str:
    """The device unit systemd's fstab generator waits for: dev-disk-by\\x2duuid-<uuid>.device."""
    path = f"/dev/disk/by-uuid/{spec.split('=', 1)[1]}" if spec.startswith("UUID=") else spec
    done = subprocess.run(["systemd-escape", "--path", "--suffix=device", path], capture_output=True, text=True)
    return done.stdout.strip()


def stop_waiting_for(spec: str) -> None:
    """Cancel systemd's wait for the device of a volume mounted here: the unit never appears
    (no udev), and the wait would keep the boot 'starting' for the whole device timeout."""
    if not Path("/run/systemd/system").is_dir():
        return
    unit = device_unit(spec)
    jobs = subprocess.run(["systemctl", "list-jobs", "--plain", "--no-legend"], capture_output=True, text=True)
    for line in jobs.stdout.splitlines():
        fields = line.split()
        if len(fields) >= 2 and fields[1] == unit:
            subprocess.run(["systemctl", "--no-block", "cancel", fields[0]], capture_output=True, text=True)
            log(f"cancelled systemd's wait for {unit} (job {fields[0]}): the volume is mounted")


def mount_volumes() -> list[str]:
    """Mount the fstab entries on loop devices that are not mounted yet; problems, if any."""
    problems = []
    try:
        entries = fstab_entries(FSTAB.read_text())
    except OSError:
        return problems
    mounted = mounted_targets(Path("/proc/self/mounts").read_text())
    for entry in entries:
        options = entry["options"].split(",")
        if entry["target"] in mounted or "noauto" in options or entry["fstype"] in ("swap", "none"):
            continue
        device, why = resolve(entry["spec"], blkid_uuid)
        if not device:
            if entry["spec"].startswith(("UUID=", "LABEL=", "/dev/")):
                log(f"not mounting {entry['target']} ({entry['spec']}): {why}")
            continue
        Path(entry["target"]).mkdir(parents=True, exist_ok=True)
        done = subprocess.run(
            ["mount", "-t", entry["fstype"], "-o", entry["options"], device, entry["target"]],
            capture_output=True,
            text=True,
        )
        if done.returncode == 0:
            log(f"mounted {device} ({entry['spec']}) on {entry['target']}")
            stop_waiting_for(entry["spec"])
        else:
            problems.append(f"mount {device} on {entry['target']}: {done.stderr.strip()}")
    return problems


# ------------------------------------------------------------------ simulated GPUs


def gpu_records(host: str, count: int) -> list[dict]:
    """The host's GPUs, the same at every boot: index, address, name, uuid, memory, serial."""
    gpus = []
    for index, address in enumerate(BUS_ADDRESSES[:count]):
        digest = hashlib.sha256(f"{host}/{address}".encode()).hexdigest()
        gpus.append(
            {
                "index": index,
                "address": address,
                "name": GPU_NAME,
                "uuid": "GPU-" + str(uuid.uuid5(uuid.NAMESPACE_URL, f"lab-gpu-sim://{host}/{address}")),
                "memory_mib": GPU_MEMORY_MIB,
                "serial": str(1654000000000 + int(digest[:12], 16) % 10**9),
            }
        )
    return gpus


def initialised(gpus: list[dict], loaded: str, fail_version: str) -> list[dict]:
    """The GPUs the loaded driver brings up: all, or all but the last at the fault version."""
    if fail_version and loaded == fail_version and gpus:
        return gpus[:-1]
    return gpus


def proc_version_text(version: str, built: float) -> str:
    """/proc/driver/nvidia/version of the open kernel module, in the real format."""
    stamp = time.strftime("%a %b %d %H:%M:%S UTC %Y", time.gmtime(built))
    return (
        f"NVRM version: NVIDIA UNIX Open Kernel Module for x86_64  {version}  Release Build  "
        f"(dvs-builder@lab-gpu-sim)  {stamp}\n"
        "GCC version:  gcc version 12.2.0 (Debian 12.2.0-14+deb12u1) \n"
    )


def module_on_disk() -> tuple[str, float]:
    """Version and mtime of the nvidia module for the running kernel (modinfo), ('', 0) if none."""
    done = subprocess.run(["modinfo", "-F", "version", "nvidia"], capture_output=True, text=True)
    version = done.stdout.strip().splitlines()[0] if done.returncode == 0 and done.stdout.strip() else ""
    if not version:
        return "", 0.0
    path = subprocess.run(["modinfo", "-F", "filename", "nvidia"], capture_output=True, text=True).stdout.strip()
    try:
        return version, Path(path).stat().st_mtime
    except OSError:
        return version, time.time()


def make_pci(gpus: list[dict]) -> None:
    """Fake PCI functions for the GPUs and links to the real ones, over /sys/bus/pci/devices."""
    pci = RUN_DIR / "pci"
    pci.mkdir(parents=True, exist_ok=True)
    for entry in sorted(SYS_PCI.iterdir()) if SYS_PCI.is_dir() else []:
        link = pci / entry.name
        if not link.exists() and not link.is_symlink():
            link.symlink_to(entry.resolve())
    for gpu in gpus:
        device = pci / gpu["address"]
        device.mkdir(exist_ok=True)
        for name, value in (("vendor", NVIDIA_VENDOR), ("device", H200_DEVICE), ("class", CLASS_3D)):
            (device / name).write_text(value + "\n")
        (device / "lab-gpu-sim").write_text("a simulated GPU (scripts/lab.py --gpu sim)\n")
    subprocess.run(["mount", "--bind", str(pci), str(SYS_PCI)], check=True, capture_output=True, text=True)


def load_driver(gpus: list[dict]) -> str:
    """'Load' the module on disk: /proc/driver/nvidia/version and /run/gpu-sim/gpus. The version, or ''."""
    version, built = module_on_disk()
    if not version:
        log("no nvidia module on disk for the running kernel: no driver loaded")
        return ""
    fail_file = SIM_DIR / "fail-version"
    fail_version = fail_file.read_text().strip() if fail_file.exists() else ""
    up = initialised(gpus, version, fail_version)
    subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "mode=0555,size=64k", "lab-gpu-sim", str(PROC_DRIVER)],
        check=True,
        capture_output=True,
        text=True,
    )
    (PROC_DRIVER / "nvidia").mkdir(mode=0o555)
    (PROC_DRIVER / "nvidia" / "version").write_text(proc_version_text(version, built))
    (PROC_DRIVER / "nvidia" / "version").chmod(0o444)
    (RUN_DIR / "gpus").write_text(json.dumps(up, indent=1) + "\n")
    log(f"NVRM: loading NVIDIA UNIX Open Kernel Module for x86_64  {version}  (lab stand-in)")
    for gpu in gpus:
        if gpu not in up:
            log(f"NVRM: GPU {gpu['address']}: RmInitAdapter failed! (lab fault injection: {fail_file} = {version})")
    return version


def simulate_gpus() -> None:
    count_file = SIM_DIR / "gpus-count"
    if not count_file.exists():
        return
    if (RUN_DIR / "gpus-ready").exists():
        log("simulated GPUs already set up in this boot")
        return
    count = int(count_file.read_text().strip())
    gpus = gpu_records(socket.gethostname(), count)
    make_pci(gpus)
    log(f"{count} simulated {GPU_NAME} GPU(s) at {', '.join(gpu['address'] for gpu in gpus)}")
    load_driver(gpus)
    (RUN_DIR / "gpus-ready").write_text("")


def main() -> int:
    problems = []
    log(f"boot id {write_boot_id()}")
    for step in (mount_volumes, simulate_gpus):
        try:
            problems += step() or []
        except (OSError, ValueError, subprocess.CalledProcessError) as error:
            detail = getattr(error, "stderr", "") or ""
            problems.append(f"{step.__name__}: {error} {detail}".strip())
    for problem in problems:
        log(f"FAILED: {problem}")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
