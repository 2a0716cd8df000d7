#!/usr/bin/python3
"""Lab stand-in for NVIDIA's nvidia-smi: /usr/bin/nvidia-smi of the simulated nvidia-smi package.

Built into the package by scripts/gpu_sim/build.py, which sets LIBRARY_VERSION to the
package's version (the real tool's NVML library comes with the same driver version).
It answers what the nvidia_driver role and people ask:

    nvidia-smi --query-gpu=FIELDS --format=csv[,noheader][,nounits]
    nvidia-smi -L
    nvidia-smi -q                   (each GPU's identity and its Fabric section)
    nvidia-smi                      (a short table)

from what the lab's boot script (lab-boot) wrote for this boot: the loaded driver's
version in /proc/driver/nvidia/version and the GPUs that initialised in /run/gpu-sim/gpus
(JSON). Persistence mode is Enabled while nvidia-persistenced.service is active. The
shapes are the real tool's: 'NVIDIA H200', bus id '00000000:18:00.0', 'GPU-<uuid>',
memory in MiB, 'Enabled'/'Disabled', values joined by ', '; the messages and exit codes
for "no driver" (9) and "driver/library version mismatch" (18) are the real ones.

`-q` prints the Fabric section the health gate reads (roles/hf_loader/tasks/health_gate.yml):
State N/A and Status N/A, as a GPU outside an NVSwitch fabric reports, unless
/etc/gpu-sim/fabric-state says otherwise (fault injection): its first line is every GPU's State
(Not Started, In Progress, Completed), its second the Status (default: Success when Completed,
else N/A).
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import time
from pathlib import Path

LIBRARY_VERSION = ""  # set by scripts/gpu_sim/build.py for each package version
PROC_VERSION = Path("/proc/driver/nvidia/version")
GPUS = Path("/run/gpu-sim/gpus")
FABRIC_STATE = Path("/etc/gpu-sim/fabric-state")

NO_DRIVER = (
    "NVIDIA-SMI has failed because it couldn't communicate with the NVIDIA driver. "
    "Make sure that the latest NVIDIA driver is installed and running."
)
EXIT_NO_DRIVER = 9
EXIT_MISMATCH = 18
EXIT_USAGE = 2

# Query fields: name (and the real tool's aliases) -> (key in the GPU record, unit in the header).
FIELDS = {
    "index": ("index", ""),
    "pci.bus_id": ("bus_id", ""),
    "gpu_bus_id": ("bus_id", ""),
    "name": ("name", ""),
    "gpu_name": ("name", ""),
    "uuid": ("uuid", ""),
    "gpu_uuid": ("uuid", ""),
    "driver_version": ("driver_version", ""),
    "persistence_mode": ("persistence_mode", ""),
    "memory.total": ("memory_total", "MiB"),
    "serial": ("serial", ""),
    "gpu_serial": ("serial", ""),
    "count": ("count", ""),
}


def loaded_version(text: str) -> str:
    """The version on the 'NVRM version:' line of /proc/driver/nvidia/version ('' if none)."""
    for line in text.splitlines():
        if line.startswith("NVRM version:"):
            match = re.search(r"\s(\d+\.\d+(?:\.\d+)?)\s", line + " ")
            if match:
                return match.group(1)
    return ""


def bus_id(address: str) -> str:
    """sysfs '0000:18:00.0' -> nvidia-smi's '00000000:18:00.0' (eight-digit domain)."""
    domain, _, rest = address.partition(":")
    return f"{int(domain, 16):08X}:{rest.upper()}" if rest else address


def records(gpus: list[dict], driver_version: str, persistence: bool) -> list[dict]:
    """What nvidia-smi reports of each GPU, from the boot's GPU list."""
    return [
        {
            "index": str(gpu["index"]),
            "bus_id": bus_id(gpu["address"]),
            "name": gpu["name"],
            "uuid": gpu["uuid"],
            "driver_version": driver_version,
            "persistence_mode": "Enabled" if persistence else "Disabled",
            "memory_total": str(gpu["memory_mib"]),
            "serial": gpu["serial"],
            "count": str(len(gpus)),
        }
        for gpu in gpus
    ]


def query(rows: list[dict], fields: list[str], header: bool = False, units: bool = True) -> list[str]:
    """Lines of `--query-gpu=FIELDS --format=csv[,noheader][,nounits]`."""
    lines = []
    if header:
        lines.append(", ".join(f"{f} [{FIELDS[f][1]}]" if FIELDS[f][1] else f for f in fields))
    for row in rows:
        values = []
        for field in fields:
            key, unit = FIELDS[field]
            values.append(f"{row[key]} {unit}" if unit and units else row[key])
        lines.append(", ".join(values))
    return lines


def listing(rows: list[dict]) -> list[str]:
    """Lines of `nvidia-smi -L`."""
    return [f"GPU {row['index']}: {row['name']} (UUID: {row['uuid']})" for row in rows]


def table(rows: list[dict], driver_version: str) -> list[str]:
    """A short form of the plain `nvidia-smi` table."""
    rule = "+" + "-" * 89 + "+"
    lines = [
        time.strftime("%a %b %d %H:%M:%S %Y"),
        rule,
        f"| NVIDIA-SMI {driver_version:<22} Driver Version: {driver_version:<16} CUDA Version: 13.0     |",
        "| lab gpu-sim stand-in (scripts/gpu_sim): no utilisation, memory use or processes        |",
        rule,
        "| GPU  Name                 Persistence-M | Bus-Id          Disp.A |   Memory-Total       |",
        rule,
    ]
    for row in rows:
        persistence = "On" if row["persistence_mode"] == "Enabled" else "Off"
        lines.append(
            f"| {row['index']:>3}  {row['name']:<20} {persistence:>13} | {row['bus_id']:>16} Off "
            f"| {row['memory_total']:>12}MiB       |"
        )
    lines.append(rule)
    return lines


def fabric_state(text: str) -> tuple[str, str]:
    """(State, Status) of every GPU's Fabric section from /etc/gpu-sim/fabric-state's text ('' : none)."""
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    if not lines:
        return "N/A", "N/A"
    state = lines[0]
    return state, lines[1] if len(lines) > 1 else ("Success" if state == "Completed" else "N/A")


def full_query(rows: list[dict], driver_version: str, fabric: tuple[str, str]) -> list[str]:
    """Lines of `nvidia-smi -q`: the log header and, per GPU, its identity and Fabric section."""

    def attribute(name: str, value: str, depth: int = 1) -> str:
        return f"{' ' * 4 * depth}{name:<{50 - 4 * depth}} : {value}"

    lines = [
        "",
        "==============NVSMI LOG==============",
        "",
        f"{'Timestamp':<54} : {time.strftime('%a %b %d %H:%M:%S %Y')}",
        f"{'Driver Version':<54} : {driver_version}",
        f"{'CUDA Version':<54} : 13.0",
        "",
        f"{'Attached GPUs':<54} : {len(rows)}",
    ]
    for row in rows:
        lines += [
            f"GPU {row['bus_id']}",
            attribute("Product Name", row["name"]),
            attribute("Persistence Mode", row["persistence_mode"]),
            attribute("Serial Number", row["serial"]),
            attribute("GPU UUID", row["uuid"]),
            attribute("Minor Number", row["index"]),
            "    Fabric",
            attribute("State", fabric[0], 2),
            attribute("Status", fabric[1], 2),
            attribute("Processes", "None"),
            "",
        ]
    return lines


def persistence_active() -> bool:
    try:
        done = subprocess.run(["systemctl", "is-active", "--quiet", "nvidia-persistenced"], check=False)
    except OSError:
        return False
    return done.returncode == 0


def parse_args(argv: list[str]) -> dict:
    """What was asked: mode (table, list, query, help), fields, header, units; error text if unusable."""
    asked = {"mode": "table", "fields": [], "header": True, "units": True, "error": ""}
    for arg in argv:
        if arg in ("-h", "--help"):
            asked["mode"] = "help"
        elif arg in ("-L", "--list-gpus"):
            asked["mode"] = "list"
        elif arg in ("-q", "--query"):
            asked["mode"] = "full"
        elif arg.startswith("--query-gpu="):
            asked["mode"] = "query"
            asked["fields"] = [field.strip() for field in arg.split("=", 1)[1].split(",") if field.strip()]
        elif arg.startswith("--format="):
            options = arg.split("=", 1)[1].split(",")
            if options[0] != "csv":
                asked["error"] = f'"{options[0]}" is not a valid format.'
            asked["header"] = "noheader" not in options
            asked["units"] = "nounits" not in options
        else:
            asked["error"] = "Invalid combination of input arguments. Please run 'nvidia-smi -h' for help."
    if asked["mode"] == "query":
        for field in asked["fields"]:
            if field not in FIELDS:
                asked["error"] = f'Field "{field}" is not a valid field to query.'
                break
        if not asked["fields"]:
            asked["error"] = "Invalid combination of input arguments. Please run 'nvidia-smi -h' for help."
    return asked


def main(argv: list[str]) -> int:
    asked = parse_args(argv)
    if asked["error"]:
        print(asked["error"])
        return EXIT_USAGE
    if asked["mode"] == "help":
        print("NVIDIA System Management Interface -- lab gpu-sim stand-in (scripts/gpu_sim)")
        print("    -L, --list-gpus   -q, --query   --query-gpu=FIELDS --format=csv[,noheader][,nounits]")
        print("    fields: " + ", ".join(sorted(FIELDS)))
        return 0
    try:
        version = loaded_version(PROC_VERSION.read_text())
    except OSError:
        version = ""
    if not version:
        print(NO_DRIVER)
        return EXIT_NO_DRIVER
    if LIBRARY_VERSION and version != LIBRARY_VERSION:
        # A newer driver installed, the old module still loaded: the real tool's answer until the reboot.
        print("Failed to initialize NVML: Driver/library version mismatch")
        print(f"NVML library version: {'.'.join(LIBRARY_VERSION.split('.')[:2])}")
        return EXIT_MISMATCH
    try:
        gpus = json.loads(GPUS.read_text())
    except (OSError, ValueError):
        gpus = []
    if not gpus:
        print("No devices were found")
        return 6
    rows = records(gpus, version, persistence_active())
    if asked["mode"] == "query":
        lines = query(rows, asked["fields"], asked["header"], asked["units"])
    elif asked["mode"] == "list":
        lines = listing(rows)
    elif asked["mode"] == "full":
        try:
            fabric = fabric_state(FABRIC_STATE.read_text())
        except OSError:
            fabric = fabric_state("")
        lines = full_query(rows, version, fabric)
    else:
        lines = table(rows, version)
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
