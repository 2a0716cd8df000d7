"""DCGM's diagnostic: `dcgmi diag -r LEVEL`, its table and exit code, where DCGM is installed."""

from __future__ import annotations

import re

from ansible_collections.gpu_fleet.common.plugins.module_utils.health_gate.problems import (
    TIMED_OUT,
    make_problem,
    output_tail,
    ran_past,
)

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
        return [ran_past("dcgm", shown, timeout, "hf_loader_health_gate_dcgmi_timeout")]
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
            problems.append(make_problem("dcgm", gpu, f"{shown}: test '{test['name']}' failed{where}{because}", fix))
    if problems:
        return problems
    if rc != 0:
        output = (stdout or "") + "\n" + (stderr or "")
        said = [line.strip() for line in output.splitlines() if line.strip().startswith("Error")] or [
            output_tail(output)
        ]
        meaning = DCGM_EXIT.get(rc, "")
        connection = re.search(r"host engine|connect", output, re.IGNORECASE)
        return [
            make_problem(
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
            make_problem(
                "dcgm",
                None,
                f"{shown} exited 0 but printed no test results: {output_tail(stdout)}",
                "run it by hand on the host; a DCGM older than 3 prints another table: update DCGM",
            )
        ]
    return []
