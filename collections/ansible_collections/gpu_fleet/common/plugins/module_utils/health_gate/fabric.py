"""The fabric on NVSwitch and NVLink 5 hosts: `systemctl is-active nvidia-fabricmanager` and the
Fabric section of each GPU in `nvidia-smi -q`."""

from __future__ import annotations

import re

from ansible_collections.gpu_fleet.common.plugins.module_utils.health_gate.problems import (
    NOT_EXECUTABLE,
    NOT_FOUND,
    TIMED_OUT,
    make_problem,
    output_tail,
    ran_past,
)

# `nvidia-smi -q` prints each GPU as "GPU 00000000:18:00.0" and, indented under it, a Fabric
# section whose State is Not Supported (N/A), Not Started, In Progress or Completed and whose
# Status is Success once State is Completed: NVIDIA's Fabric Manager User Guide checks GPU
# fabric registration with `nvidia-smi -q -i 0 | grep -i -A 2 Fabric` (State Completed, Status
# Success), and NVML's nvmlGpuFabricInfo_t says status "must be checked only if state returns
# complete" (NVML_GPU_FABRIC_STATE_NOT_SUPPORTED, _NOT_STARTED, _IN_PROGRESS, _COMPLETED).
SMI_GPU = re.compile(r"^GPU (?P<bus>[0-9A-Fa-f]{4,8}:[0-9A-Fa-f]{2}:[0-9A-Fa-f]{2}\.[0-7])\s*$")
FABRIC_FIX = {
    "Not Started": (
        "the fabric manager has not begun registering this GPU: check that nvidia-fabricmanager is active"
        " and at the driver's exact version (journalctl -u nvidia-fabricmanager), restart it, then run the"
        " gate again"
    ),
    "In Progress": (
        "the fabric manager is still training this GPU's NVLinks: wait a minute and run the gate again;"
        " if it stays In Progress, read journalctl -u nvidia-fabricmanager and `nvidia-smi nvlink -s`"
        " for links that are down, and restart nvidia-fabricmanager or reboot"
    ),
    "failed": (
        "the fabric manager could not register this GPU: read journalctl -u nvidia-fabricmanager and"
        " `nvidia-smi nvlink -s`; restart nvidia-fabricmanager, reset the GPUs or reboot; NVSwitch or"
        " NVLink errors that return need the baseboard repaired"
    ),
}


def fabric_parse(text: str) -> list[dict]:
    """Each GPU of `nvidia-smi -q`: index (its place in the output), bus_id, name, uuid, and its Fabric
    section as a dict (None when the GPU has none), a subsection (Health) as a nested dict."""
    gpus: list[dict] = []
    current = None
    fabric_indent = child_indent = None
    section = None
    for line in (text or "").splitlines():
        match = SMI_GPU.match(line)
        if match:
            current = {"index": len(gpus), "bus_id": match["bus"], "name": "", "uuid": "", "fabric": None}
            gpus.append(current)
            fabric_indent = None
            continue
        if current is None or not line.strip():
            continue
        indent = len(line) - len(line.lstrip(" "))
        key, colon, value = line.strip().partition(":")
        key, value = key.strip(), value.strip()
        if fabric_indent is not None:
            if indent <= fabric_indent:
                fabric_indent = None
            else:
                if child_indent is None:
                    child_indent = indent
                if indent == child_indent:
                    section = None if colon else key
                    if colon:
                        current["fabric"][key] = value
                    else:
                        current["fabric"][key] = {}
                elif section is not None and colon:
                    current["fabric"][section][key] = value
                continue
        if not colon and key == "Fabric":
            current["fabric"] = {}
            fabric_indent, child_indent, section = indent, None, None
        elif colon and key == "Product Name" and not current["name"]:
            current["name"] = value
        elif colon and key == "GPU UUID":
            current["uuid"] = value
    return gpus


def _gpu_text(gpu: dict) -> str:
    parts = [part for part in (gpu.get("name"), gpu.get("uuid"), gpu.get("bus_id")) if part]
    return f"GPU {gpu['index']}" + (f" ({', '.join(parts)})" if parts else "")


def fabric_problems(
    smi_stdout: str,
    smi_rc: int,
    service_state: str,
    service: str,
    timeout: int,
    smi_stderr: str = "",
    service_error: str = "",
) -> list[dict]:
    """Problems of the fabric on an NVSwitch or NVLink 5 host: the fabric manager's service
    (`systemctl is-active`: its stdout, and its stderr when that is empty) and each GPU's
    registration (State Completed, Status Success)."""
    problems = []
    state = (service_state or "").strip()
    if state != "active":
        seen = f"is {state}" if state else f"has a state systemctl cannot read ({output_tail(service_error, 1)})"
        problems.append(
            make_problem(
                "fabric",
                None,
                f"{service} {seen} on this NVSwitch/NVLink 5 host: without it the GPUs cannot join the fabric",
                f"start it (systemctl start {service}) and read journalctl -u {service}; it must be installed at"
                " the driver's exact version (the nvidia_driver role does so with nvidia_driver_fabric_manager: auto)",
            )
        )
    if smi_rc == TIMED_OUT:
        return [*problems, ran_past("fabric", "nvidia-smi -q", timeout, "hf_loader_health_gate_fabric_timeout")]
    if smi_rc in (NOT_FOUND, NOT_EXECUTABLE):
        return [
            *problems,
            make_problem(
                "fabric",
                None,
                f"nvidia-smi cannot run on the host (exit {smi_rc}): {output_tail(smi_stderr, 1)}",
                "install the NVIDIA driver's utilities (the nvidia_driver role), then run the gate again",
            ),
        ]
    if smi_rc != 0:
        return [
            *problems,
            make_problem(
                "fabric",
                None,
                f"nvidia-smi -q exited {smi_rc}: {output_tail((smi_stdout or '') + chr(10) + (smi_stderr or ''), 2)}",
                "the driver does not answer: check that it is loaded (nvidia-smi), reboot into it if the"
                " version does not match, then run the gate again",
            ),
        ]
    gpus = fabric_parse(smi_stdout)
    if not gpus:
        problems.append(
            make_problem(
                "fabric",
                None,
                f"nvidia-smi -q lists no GPU: {output_tail(smi_stdout, 2)}",
                "check that the driver sees the GPUs (nvidia-smi -L)",
            )
        )
    for gpu in gpus:
        fabric = gpu["fabric"]
        if fabric is None:
            problems.append(
                make_problem(
                    "fabric",
                    gpu["index"],
                    f"{_gpu_text(gpu)}: nvidia-smi -q has no Fabric section for it",
                    "the driver is too old to report fabric registration: upgrade it (R535 or newer)",
                )
            )
            continue
        registration = fabric.get("State", "")
        status = fabric.get("Status", "")
        if registration in ("N/A", "Not Supported"):
            continue  # GPUs before Hopper report no registration; the service check stands for them
        if registration != "Completed":
            problems.append(
                make_problem(
                    "fabric",
                    gpu["index"],
                    f"{_gpu_text(gpu)}: fabric state {registration or 'missing'} (status {status or 'missing'}),"
                    " not Completed",
                    FABRIC_FIX.get(registration, FABRIC_FIX["Not Started"]),
                )
            )
        elif status != "Success":
            problems.append(
                make_problem(
                    "fabric",
                    gpu["index"],
                    f"{_gpu_text(gpu)}: fabric registration completed with status {status or 'missing'}, not Success",
                    FABRIC_FIX["failed"],
                )
            )
    return problems
