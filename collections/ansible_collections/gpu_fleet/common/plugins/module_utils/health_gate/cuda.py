"""The CUDA workload's output: `python -m hf_loader.gpu_check`, its JSON report and exit code."""

from __future__ import annotations

import json

from ansible_collections.gpu_fleet.common.plugins.module_utils.health_gate.problems import (
    NOT_EXECUTABLE,
    NOT_FOUND,
    TIMED_OUT,
    make_problem,
    output_tail,
    ran_past,
)


def cuda_problems(stdout: str, stderr: str, rc: int, command: list, timeout: int) -> list[dict]:
    """The CUDA workload's problems from its JSON report and exit code."""
    shown = " ".join(command)
    if rc == TIMED_OUT:
        return [ran_past("cuda", shown, timeout, "hf_loader_health_gate_cuda_timeout")]
    if rc in (NOT_FOUND, NOT_EXECUTABLE):
        return [
            make_problem(
                "cuda",
                None,
                f"the CUDA workload {shown} cannot run on the host (exit {rc}): {output_tail(stderr, 1)}",
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
                make_problem(
                    "cuda",
                    None,
                    f"{shown} cannot import its module: {output_tail(stderr, 1)}",
                    "the host's loader predates hf_loader.gpu_check: install the current package"
                    " (site.yml --tags loader), then run the gate again",
                )
            ]
        return [
            make_problem(
                "cuda",
                None,
                f"{shown} exited {rc} without its JSON report: {output_tail(stderr)}",
                "run it by hand on the host; it prints one JSON document on stdout (hf_loader.gpu_check)",
            )
        ]
    problems = [
        make_problem("cuda", problem.get("gpu"), problem.get("what", ""), problem.get("fix", ""))
        for problem in doc["problems"]
    ]
    if doc.get("passed") is True and rc == 0 and not problems:
        return []
    if not problems:  # a report that contradicts its exit code: not a pass
        problems.append(
            make_problem(
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
