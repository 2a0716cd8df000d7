"""The readiness report: written by `hf-cache-test --report`, read by its gate and monitoring.

One contract, `report.schema.json` beside this module: what `--json` prints, plus `host`,
`checked_at`, `command` and `message` in the stored report. The training unit's gate
(`--require-ready`) and the fleet report read nothing else. Hosts carry no JSON Schema
library, so `schema_problems` checks what the gate relies on (required keys, types of the
verdict fields) from the schema file itself; the tests validate in full with jsonschema.
"""

from __future__ import annotations

import datetime
import json
import os
import socket
import tempfile
from importlib import resources
from pathlib import Path

from .check import read_regular
from .errors import EXIT_GATE_CLOSED, EXIT_READY

SCHEMA_VERSION = 1
METRICS_FILE = "hf_cache_test.prom"


def schema() -> dict:
    return json.loads(resources.files(__package__).joinpath("report.schema.json").read_text())


def _one_line(finding: dict) -> str:
    text = finding.get("message", "")
    if finding.get("path") and finding["path"] not in text:
        text += f" (path: {finding['path']})"
    if finding.get("remedy"):
        text += f"; fix: {finding['remedy']}"
    return text


def summary_message(doc: dict) -> str:
    """'ready', or the first failure (not ready), or the first warning (ready with warnings)."""
    for level in ("fail", "warn"):
        for finding in doc.get("findings", []):
            if finding.get("level") == level:
                prefix = "" if level == "fail" else "ready, with a warning: "
                problems = (doc.get("error") or {}).get("problems") or []
                first = f" (first problem: {problems[0]})" if level == "fail" and problems else ""
                return prefix + _one_line(finding) + first
    return "ready" if doc.get("ready") else f"not ready (exit {doc.get('exit_code')})"


def stamp(doc: dict, argv: list[str]) -> dict:
    """The stored report: the --json object plus where, when and how it was checked."""
    return {
        **doc,
        "host": socket.gethostname(),
        "checked_at": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "command": list(argv),
        "message": summary_message(doc),
    }


def write_atomic(path: Path, text: str, mode: int = 0o644, durable: bool = False) -> None:
    """Readers see the old file or the new one, never half of one (rename in the folder).

    durable: fsync the file before the rename, so a crash cannot leave an empty one.
    """
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(text)
            if durable:
                handle.flush()
                os.fsync(handle.fileno())
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def schema_problems(doc) -> list[str]:
    """What makes `doc` unusable as a report ([] when nothing): required keys, key types."""
    if not isinstance(doc, dict):
        return [f"the report is {type(doc).__name__}, not an object"]
    spec = schema()
    problems = [f"'{key}' missing" for key in spec["required"] if key not in doc]
    props = spec["properties"]
    if "schema_version" in doc and doc["schema_version"] != props["schema_version"]["const"]:
        problems.append(f"schema_version {doc['schema_version']!r}, expected {SCHEMA_VERSION}")
    if "ready" in doc and not isinstance(doc["ready"], bool):
        problems.append(f"'ready' is {doc['ready']!r}, not true or false")
    if "exit_code" in doc and (
        not isinstance(doc["exit_code"], int) or isinstance(doc["exit_code"], bool)
    ):
        problems.append(f"'exit_code' is {doc['exit_code']!r}, not an integer")
    if "verdict" in doc and doc["verdict"] not in props["verdict"]["enum"]:
        problems.append(f"'verdict' is {doc['verdict']!r}")
    if not problems and doc["ready"] != (doc["exit_code"] == EXIT_READY):
        problems.append(f"'ready' {doc['ready']} contradicts exit_code {doc['exit_code']}")
    return problems


def require_ready(path: Path) -> tuple[int, str]:
    """(exit code, one line) for the training unit's gate: 0 only for a valid, ready report."""
    try:
        doc = json.loads(read_regular(path))
    except FileNotFoundError:
        return EXIT_GATE_CLOSED, (
            f"no cache test report at {path}: run the cache test first "
            "(hf-cache-test --report FILE, or the unit that runs it)"
        )
    except (OSError, ValueError) as e:
        return EXIT_GATE_CLOSED, f"cache test report {path} is unreadable: {e}"
    problems = schema_problems(doc)
    if problems:
        return EXIT_GATE_CLOSED, (
            f"cache test report {path} is not a valid report ({'; '.join(problems)}): "
            "rerun the cache test with this version of hf-cache-test"
        )
    when = doc.get("checked_at", "at an unknown time")
    if doc["ready"]:
        return EXIT_READY, f"cache test of {when}: {doc.get('message', 'ready')}"
    return doc["exit_code"], f"cache test of {when} failed: {doc.get('message', '')}"


def _label(value) -> str:
    return str(value).replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def metrics_text(report: dict) -> str:
    """node_exporter textfile collector format: one gauge per figure, labelled."""
    loading = report.get("loading") or {}
    labels = {
        "dataset": report.get("dataset", ""),
        "decoder": loading.get("decoder", ""),
        "verdict": report.get("verdict", ""),
    }
    shown = ",".join(f'{k}="{_label(v)}"' for k, v in labels.items())
    checked = report.get("checked_at")
    when = datetime.datetime.fromisoformat(checked).timestamp() if checked else 0.0
    gauges = [
        ("ready", "1 when the last cache test found this host ready to train", report["ready"]),
        ("exit_code", "exit code of the last cache test", report["exit_code"]),
        ("last_run_timestamp_seconds", "when the last cache test ended (Unix time)", when),
        ("images_per_second", "images/s in the last cache test", loading.get("images_per_s", 0)),
        ("first_batch_seconds", "first batch wait, last test", loading.get("first_batch_s", 0)),
    ]
    lines = []
    for name, help_text, value in gauges:
        lines += [
            f"# HELP hf_cache_test_{name} {help_text}",
            f"# TYPE hf_cache_test_{name} gauge",
            f"hf_cache_test_{name}{{{shown}}} {float(value)!r}",
        ]
    return "\n".join(lines) + "\n"
