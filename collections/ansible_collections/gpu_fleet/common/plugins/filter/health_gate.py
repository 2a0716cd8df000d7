"""The health gate before service (roles/hf_loader/tasks/health_gate.yml): what each check's
output means, and the verdict.

Three checks, each reading what a command printed on the host:
- cuda: `python -m hf_loader.gpu_check` (files/hf_loader/src/hf_loader/gpu_check.py), its JSON
  report and exit code (the lab's stand-in, scripts/gpu_sim/payload/gpu_check.py, prints the same);
- dcgm: `dcgmi diag -r LEVEL` where DCGM is installed, its table and exit code;
- fabric: on NVSwitch and NVLink 5 hosts, `systemctl is-active nvidia-fabricmanager` and the
  Fabric section of each GPU in `nvidia-smi -q`.

A problem is {check, gpu, what, fix}: gpu is the GPU's index (or None for the host), `what` names
the GPU and what failed, `fix` says what to do. Output that cannot be read is a problem too: the
gate never passes on something it did not understand.
"""

from __future__ import annotations

import json
import re

from ansible_collections.gpu_fleet.common.plugins.module_utils.filter_errors import INPUT_ERRORS, prefixed

CHECKS = ("cuda", "dcgm", "fabric")
TIMED_OUT = 124  # coreutils timeout: the command ran past its limit
NOT_FOUND = 127  # coreutils timeout: the command does not exist
NOT_EXECUTABLE = 126

# ---------------------------------------------------------------- input


def _number(value, kind):
    """value as int or float (`-e name=5` gives the text '5'); None when it is not one."""
    if isinstance(value, bool):
        return None
    try:
        number = kind(value)
    except (TypeError, ValueError):
        return None
    return number if kind is float or str(number) == str(value).strip() else None


def settings_errors(settings: dict) -> list[str]:
    """What is wrong with the gate's variables (empty: nothing). Checked before any command runs."""
    problems = []
    report = settings.get("driver_report")
    if not isinstance(report, dict) or "gpu_count" not in report:
        problems.append(
            "hf_loader_driver_report has no gpu_count: pass the nvidia_driver role's report"
            ' (hf_loader_driver_report: "{{ nvidia_driver_report }}"), as site.yml does for the cache test.'
        )
    else:
        try:
            int(report["gpu_count"])
        except (TypeError, ValueError):
            problems.append(f"hf_loader_driver_report.gpu_count {report['gpu_count']!r} is not a number.")
    checks = settings.get("checks")
    if not isinstance(checks, list) or any(check not in CHECKS for check in checks):
        problems.append(f"hf_loader_health_gate_checks {checks!r} must be a list drawn from {list(CHECKS)}.")
    command = settings.get("cuda_command")
    if not isinstance(command, list) or not command or not all(isinstance(word, str) and word for word in command):
        problems.append(
            f"hf_loader_health_gate_cuda_command {command!r} must be a command as a list of words, such as"
            " ['/opt/hf-loader/venv/bin/python', '-m', 'hf_loader.gpu_check']."
        )
    tolerance = _number(settings.get("tolerance"), float)
    if tolerance is None or not 0 < tolerance < 1:
        problems.append(
            f"hf_loader_health_gate_tolerance {settings.get('tolerance')!r} must be a number between 0 and 1,"
            " such as 1e-4."
        )
    for name in ("size", "alloc_mib", "cuda_timeout", "dcgmi_timeout", "fabric_timeout"):
        value = _number(settings.get(name), int)
        if value is None or value < 1:
            problems.append(
                f"hf_loader_health_gate_{name} {settings.get(name)!r} must be a whole number of at least 1."
            )
    level = settings.get("dcgmi_level")
    if _number(level, int) not in (1, 2, 3, 4):
        problems.append(
            f"hf_loader_health_gate_dcgmi_level {level!r} must be 1, 2, 3 or 4 (dcgmi diag -r: 1 takes seconds,"
            " 3 about 15 minutes); leave dcgm out of hf_loader_health_gate_checks to run none."
        )
    for name in ("dcgmi_command", "fabric_manager_service"):
        value = settings.get(name)
        if not isinstance(value, str) or not value.strip() or any(char.isspace() for char in value):
            problems.append(f"hf_loader_health_gate_{name} {value!r} must be one word (a command or a unit name).")
    return problems


def fabric_needed(driver_report: dict) -> bool:
    """NVSwitch (NVLink 4 and older) or NVLink 5 on this host, as the nvidia_driver role found in sysfs."""
    report = driver_report or {}
    try:
        switches = int(report.get("nvswitch_count") or 0)
    except (TypeError, ValueError):
        switches = 0
    nvlink5 = report.get("nvlink5")
    if isinstance(nvlink5, str):
        nvlink5 = nvlink5.strip().lower() in ("true", "yes", "1")
    return switches > 0 or bool(nvlink5)


def _problem(check: str, gpu, what: str, fix: str) -> dict:
    return {"check": check, "gpu": gpu, "what": what, "fix": fix}


def _tail(text: str, lines: int = 3) -> str:
    kept = [line.strip() for line in (text or "").splitlines() if line.strip()]
    return " / ".join(kept[-lines:]) or "no output"


def _ran_past(check: str, command: str, timeout: int, variable: str) -> dict:
    return _problem(
        check,
        None,
        f"{command} ran past {timeout} s and was stopped",
        f"run it by hand on the host to see where it hangs (a GPU that does not answer shows in"
        f" `journalctl -k | grep -i xid`); raise {variable} only if it is merely slow",
    )


# ---------------------------------------------------------------- cuda


def cuda_problems(stdout: str, stderr: str, rc: int, command: list, timeout: int) -> list[dict]:
    """The CUDA workload's problems from its JSON report and exit code."""
    shown = " ".join(command)
    if rc == TIMED_OUT:
        return [_ran_past("cuda", shown, timeout, "hf_loader_health_gate_cuda_timeout")]
    if rc in (NOT_FOUND, NOT_EXECUTABLE):
        return [
            _problem(
                "cuda",
                None,
                f"the CUDA workload {shown} cannot run on the host (exit {rc}): {_tail(stderr, 1)}",
                "install the loader (the hf_loader role's tag loader) or point hf_loader_health_gate_cuda_command"
                " at a python that has hf_loader and a CUDA build of torch",
            )
        ]
    try:
        doc = json.loads(stdout)
    except ValueError:
        doc = None
    if not isinstance(doc, dict) or doc.get("check") != "cuda" or not isinstance(doc.get("problems"), list):
        if "No module named" in (stderr or ""):
            return [
                _problem(
                    "cuda",
                    None,
                    f"{shown} cannot import its module: {_tail(stderr, 1)}",
                    "the host's loader predates hf_loader.gpu_check: install the current package"
                    " (site.yml --tags loader), then run the gate again",
                )
            ]
        return [
            _problem(
                "cuda",
                None,
                f"{shown} exited {rc} without its JSON report: {_tail(stderr)}",
                "run it by hand on the host; it prints one JSON document on stdout (hf_loader.gpu_check)",
            )
        ]
    problems = [
        _problem("cuda", problem.get("gpu"), problem.get("what", ""), problem.get("fix", ""))
        for problem in doc["problems"]
    ]
    if doc.get("passed") is True and rc == 0 and not problems:
        return []
    if not problems:  # a report that contradicts its exit code: not a pass
        problems.append(
            _problem(
                "cuda",
                None,
                f"{shown} exited {rc} with a report that says passed={doc.get('passed')!r} and names no problem",
                "run it by hand on the host and read its stderr",
            )
        )
    return problems


def cuda_report(stdout: str):
    """The CUDA workload's JSON report as a dict, None when stdout holds none (kept in the fact)."""
    try:
        doc = json.loads(stdout or "")
    except ValueError:
        return None
    return doc if isinstance(doc, dict) else None


# ---------------------------------------------------------------- dcgm

# dcgmi's table (NVIDIA/DCGM, dcgmi/Diag.cpp: DIAG_DATA, "| <name> | <info> |", info wrapped
# at 45 characters). DCGM 4 prints a test's result, then "GPU<n>: <result>" rows and
# "Warning: GPU<n>" messages; DCGM 3 prints "Pass - All", "Fail - GPU: 1", "Fail - GPUs: 0, 2"
# and "Warning" / "Error" messages. dcgmi's exit status is its dcgmReturn_t as a byte:
# DCGM_ST_NVVS_ERROR (-30) is 226, DCGM_ST_NVVS_ISOLATE_ERROR (-51) is 205 (dcgm_structs.h).
DCGM_RESULTS = ("Pass", "Fail", "Warn", "Skip", "Not Run")
DCGM_WRAP = 45
DCGM_ROW = re.compile(r"^\|\s(?P<name>[^|]*?)\s*\|\s?(?P<info>.*?)\s*\|\s*$")
DCGM_ENTITY = re.compile(r"^(?P<group>[A-Za-z_]+?)\s?(?P<id>\d+):\s*(?P<result>Pass|Fail|Warn|Skip|Not Run)$")
DCGM_LISTED = re.compile(r"^(?P<result>Pass|Fail|Warn|Skip)\s+-\s+(?:All|GPUs?:\s*(?P<ids>[\d,\s]+))$")
DCGM_EXIT = {
    226: "the diagnostic found an error (DCGM_ST_NVVS_ERROR)",
    205: "the diagnostic found an error that asks to isolate the GPU (DCGM_ST_NVVS_ISOLATE_ERROR)",
}
DCGM_FIX = (
    "read the warning; run `dcgmi diag -r 1 -v` on the host for the details and DCGM's diagnostic errors"
    " guide for the DCGM_FR code; deployment failures (persistence mode, pending page retirement or"
    " row remapping, inforom) are fixed with nvidia-smi -pm 1, a GPU reset (nvidia-smi -r -i INDEX) or"
    " a reboot; a GPU that fails again goes for repair"
)
DCGM_ISOLATE_FIX = "DCGM asks to isolate this GPU: keep the host cordoned and send the GPU for repair"


def dcgmi_parse(text: str) -> dict:
    """dcgmi diag's table as {metadata: {...}, tests: [{name, result, entities, messages}]}.

    entities: {gpu index: result}; messages: [{gpu (or None), kind (Warning, Error), text}].
    """
    metadata: dict = {}
    tests: list[dict] = []
    message = None  # the message being continued on the next rows
    for line in (text or "").splitlines():
        row = DCGM_ROW.match(line.rstrip())
        if not row or line.startswith("+") or line.startswith("|-----"):
            message = None if not row else message
            continue
        name, info = row["name"], row["info"]
        if name in ("Diagnostic",) and info == "Result":
            continue
        head = name.split(":", 1)[0].strip()
        if head in ("Warning", "Error", "Info"):
            entity = re.search(r"GPU\s?(\d+)", name)
            message = {"gpu": int(entity[1]) if entity else None, "kind": head, "text": info, "chunk": info}
            if tests and head != "Info":
                tests[-1]["messages"].append(message)
            continue
        if name:
            message = None
            listed = DCGM_LISTED.match(info)
            result = info if info in DCGM_RESULTS else (listed["result"] if listed else "")
            if not result:
                metadata[name] = info
                continue
            test = {"name": name, "result": result, "entities": {}, "messages": []}
            tests.append(test)
            if listed and listed["ids"]:
                for gpu in re.findall(r"\d+", listed["ids"]):
                    test["entities"][int(gpu)] = listed["result"]
            continue
        entity = DCGM_ENTITY.match(info)
        listed = DCGM_LISTED.match(info)
        if tests and entity and entity["group"].upper() == "GPU":
            tests[-1]["entities"][int(entity["id"])] = entity["result"]
            message = None
        elif tests and listed and listed["ids"]:
            for gpu in re.findall(r"\d+", listed["ids"]):
                tests[-1]["entities"][int(gpu)] = listed["result"]
            message = None
        elif message is not None:
            # A chunk shorter than the wrap width lost its trailing blank to the table's padding.
            message["text"] += ("" if len(message["chunk"]) >= DCGM_WRAP else " ") + info
            message["chunk"] = info
    for test in tests:
        for message in test["messages"]:
            del message["chunk"]
            message["text"] = re.sub(r"\s+", " ", message["text"]).strip()
    return {"metadata": metadata, "tests": tests}


def _names(message: dict, gpu: int) -> bool:
    """A message not tied to a GPU that names this one in its text (DCGM 3)."""
    return message["gpu"] is None and re.search(rf"\bGPU\s?{gpu}\b", message["text"]) is not None


def dcgmi_problems(stdout: str, stderr: str, rc: int, level: int, timeout: int) -> list[dict]:
    """Problems of `dcgmi diag -r LEVEL`: every failed test on every failed GPU, with its warning."""
    shown = f"dcgmi diag -r {level}"
    if rc == TIMED_OUT:
        return [_ran_past("dcgm", shown, timeout, "hf_loader_health_gate_dcgmi_timeout")]
    parsed = dcgmi_parse(stdout)
    fix = DCGM_ISOLATE_FIX + "; " + DCGM_FIX if rc == 205 else DCGM_FIX
    problems = []
    for test in parsed["tests"]:
        failed = sorted(gpu for gpu, result in test["entities"].items() if result == "Fail")
        if test["result"] != "Fail" and not failed:
            continue
        if not failed:  # DCGM 3's deployment tests name the GPU in the message only
            failed = sorted({int(n) for m in test["messages"] for n in re.findall(r"\bGPU\s?(\d+)\b", m["text"])})
        for gpu in failed or [None]:
            said = [m["text"] for m in test["messages"] if gpu is None or m["gpu"] == gpu or _names(m, gpu)]
            said = said or [m["text"] for m in test["messages"] if m["gpu"] is None]
            where = f" on GPU {gpu}" if gpu is not None else ""
            because = f": {'; '.join(said)}" if said else ""
            problems.append(_problem("dcgm", gpu, f"{shown}: test '{test['name']}' failed{where}{because}", fix))
    if problems:
        return problems
    if rc != 0:
        output = (stdout or "") + "\n" + (stderr or "")
        said = [line.strip() for line in output.splitlines() if line.strip().startswith("Error")] or [_tail(output)]
        meaning = DCGM_EXIT.get(rc, "")
        connection = re.search(r"host engine|connect", output, re.IGNORECASE)
        return [
            _problem(
                "dcgm",
                None,
                f"{shown} exited {rc}{f' ({meaning})' if meaning else ''}: {' / '.join(said)}",
                "start DCGM's host engine (systemctl start nvidia-dcgm) and run the gate again"
                if connection
                else DCGM_FIX,
            )
        ]
    if not parsed["tests"]:
        return [
            _problem(
                "dcgm",
                None,
                f"{shown} exited 0 but printed no test results: {_tail(stdout)}",
                "run it by hand on the host; a DCGM older than 3 prints another table: update DCGM",
            )
        ]
    return []


# ---------------------------------------------------------------- fabric

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
        seen = f"is {state}" if state else f"has a state systemctl cannot read ({_tail(service_error, 1)})"
        problems.append(
            _problem(
                "fabric",
                None,
                f"{service} {seen} on this NVSwitch/NVLink 5 host: without it the GPUs cannot join the fabric",
                f"start it (systemctl start {service}) and read journalctl -u {service}; it must be installed at"
                " the driver's exact version (the nvidia_driver role does so with nvidia_driver_fabric_manager: auto)",
            )
        )
    if smi_rc == TIMED_OUT:
        return [*problems, _ran_past("fabric", "nvidia-smi -q", timeout, "hf_loader_health_gate_fabric_timeout")]
    if smi_rc in (NOT_FOUND, NOT_EXECUTABLE):
        return [
            *problems,
            _problem(
                "fabric",
                None,
                f"nvidia-smi cannot run on the host (exit {smi_rc}): {_tail(smi_stderr, 1)}",
                "install the NVIDIA driver's utilities (the nvidia_driver role), then run the gate again",
            ),
        ]
    if smi_rc != 0:
        return [
            *problems,
            _problem(
                "fabric",
                None,
                f"nvidia-smi -q exited {smi_rc}: {_tail((smi_stdout or '') + chr(10) + (smi_stderr or ''), 2)}",
                "the driver does not answer: check that it is loaded (nvidia-smi), reboot into it if the"
                " version does not match, then run the gate again",
            ),
        ]
    gpus = fabric_parse(smi_stdout)
    if not gpus:
        problems.append(
            _problem(
                "fabric",
                None,
                f"nvidia-smi -q lists no GPU: {_tail(smi_stdout, 2)}",
                "check that the driver sees the GPUs (nvidia-smi -L)",
            )
        )
    for gpu in gpus:
        fabric = gpu["fabric"]
        if fabric is None:
            problems.append(
                _problem(
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
                _problem(
                    "fabric",
                    gpu["index"],
                    f"{_gpu_text(gpu)}: fabric state {registration or 'missing'} (status {status or 'missing'}),"
                    " not Completed",
                    FABRIC_FIX.get(registration, FABRIC_FIX["Not Started"]),
                )
            )
        elif status != "Success":
            problems.append(
                _problem(
                    "fabric",
                    gpu["index"],
                    f"{_gpu_text(gpu)}: fabric registration completed with status {status or 'missing'}, not Success",
                    FABRIC_FIX["failed"],
                )
            )
    return problems


# ---------------------------------------------------------------- verdict


def verdict(problems: list, skipped: list | None = None) -> dict:
    """{passed, problems, skipped, message}: message names every problem and its fix, one line."""
    problems = [problem for problem in problems or [] if problem]
    if not problems:
        message = "passed" + (f" ({'; '.join(skipped)})" if skipped else "")
    else:
        message = " ".join(
            f"({number}) [{problem['check']}] {problem['what']}. Fix: {problem['fix']}."
            for number, problem in enumerate(problems, start=1)
        )
    return {"passed": not problems, "problems": problems, "skipped": list(skipped or []), "message": message}


class FilterModule:
    """Filters for the health gate (prefix health_gate_)."""

    def filters(self):
        functions = (
            settings_errors,
            fabric_needed,
            cuda_problems,
            cuda_report,
            dcgmi_parse,
            dcgmi_problems,
            fabric_parse,
            fabric_problems,
            verdict,
        )
        return prefixed("health_gate_", functions, (*INPUT_ERRORS, AttributeError))
