"""The readiness report: written by `hf-cache-test --report`, read by its gate and monitoring.

One contract, `report.schema.json` beside this module: what `--json` prints, plus `host`,
`machine_id`, `checked_at`, `command` and `message` in the stored report. The training
unit's gate (`--require-ready`) and the fleet report read nothing else. Hosts carry no JSON
Schema library, so `validate` implements the keywords the schema uses (types, const, enum,
required, properties, additionalProperties, items, minimum/maximum, oneOf, date-time); the
tests check it agrees with jsonschema. The gate opens for nothing but a valid, consistent,
ready report written on this host (and, with a maximum age, recently).
"""

from __future__ import annotations

import datetime
import json
import os
import socket
import stat
import tempfile
from importlib import resources
from pathlib import Path

from .check import open_regular
from .cli.exitcodes import ExitCode

SCHEMA_VERSION = 1
METRICS_FILE = "hf_cache_test.prom"
MACHINE_ID_FILE = "/etc/machine-id"
# The keys `stamp` adds: a stored report lacks none of them (a saved --json output is no report).
STORED_KEYS = ("host", "checked_at", "command", "message")
MAX_REPORT_BYTES = 16 << 20  # reports are a few KiB: anything larger is not one
CLOCK_SKEW_S = 300  # a report "checked" further in the future than this: a wrong clock


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
    machine_id = this_machine_id()
    return {
        **doc,
        "host": socket.gethostname(),
        **({"machine_id": machine_id} if machine_id else {}),
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


def this_machine_id() -> str | None:
    """systemd's /etc/machine-id: unlike the host name, a clone of an image gets its own."""
    try:
        with open(MACHINE_ID_FILE, encoding="ascii") as f:
            value = f.read(64).strip()
    except (OSError, ValueError):
        return None
    return value or None


_JSON_TYPES = {
    "object": dict,
    "array": list,
    "string": str,
    "boolean": bool,
    "null": type(None),
}


def _is_type(value, name: str) -> bool:
    if name == "integer":
        return isinstance(value, int) and not isinstance(value, bool)
    if name == "number":
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    return isinstance(value, _JSON_TYPES[name])


def _date_time(value: str) -> datetime.datetime | None:
    """An RFC 3339 date-time with its offset, or None."""
    try:
        when = datetime.datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None
    return when if when.tzinfo is not None and "T" in value.upper() else None


def validate(value, spec: dict, where: str = "report") -> list[str]:
    """What in `value` breaks `spec` ([] when nothing), for the keywords the schema uses."""
    problems: list[str] = []
    if "const" in spec and not (value == spec["const"] and type(value) is type(spec["const"])):
        problems.append(f"{where} is {value!r}, expected {spec['const']!r}")
    if "enum" in spec and value not in spec["enum"]:
        problems.append(f"{where} is {value!r}, not one of {spec['enum']}")
    if "type" in spec:
        names = spec["type"] if isinstance(spec["type"], list) else [spec["type"]]
        if not any(_is_type(value, n) for n in names):
            return problems + [f"{where} is {type(value).__name__}, not {' or '.join(names)}"]
    if "oneOf" in spec:
        matching = [sub for sub in spec["oneOf"] if not validate(value, sub, where)]
        if len(matching) != 1:
            details = [p for sub in spec["oneOf"] for p in validate(value, sub, where)]
            problems.append(f"{where} matches none of its forms ({'; '.join(details[:3])})")
    number = _is_type(value, "number")
    if number and "minimum" in spec and value < spec["minimum"]:
        problems.append(f"{where} is {value}, below {spec['minimum']}")
    if number and "maximum" in spec and value > spec["maximum"]:
        problems.append(f"{where} is {value}, above {spec['maximum']}")
    if spec.get("format") == "date-time" and isinstance(value, str) and not _date_time(value):
        problems.append(f"{where} is {value!r}, not a date and time with its UTC offset")
    if isinstance(value, dict):
        problems += [
            f"{where}.{key} missing" for key in spec.get("required", []) if key not in value
        ]
        props = spec.get("properties", {})
        extra = spec.get("additionalProperties", True)
        for key, item in value.items():
            if key in props:
                problems += validate(item, props[key], f"{where}.{key}")
            elif extra is False:
                problems.append(f"{where}.{key} is not a known key")
            elif isinstance(extra, dict):
                problems += validate(item, extra, f"{where}.{key}")
    if isinstance(value, list) and isinstance(spec.get("items"), dict):
        for i, item in enumerate(value):
            problems += validate(item, spec["items"], f"{where}[{i}]")
    return problems


def consistency_problems(doc: dict) -> list[str]:
    """What contradicts itself in a schema-valid report: ready, exit_code, verdict, findings."""
    problems = []
    levels = {f.get("level") for f in doc["findings"]}
    if doc["ready"] != (doc["exit_code"] == ExitCode.READY):
        problems.append(f"'ready' {doc['ready']} contradicts exit_code {doc['exit_code']}")
    expected = (
        ("ready_with_warnings" if "warn" in levels else "ready") if doc["ready"] else "not_ready"
    )
    if doc["verdict"] != expected:
        problems.append(
            f"verdict {doc['verdict']!r} contradicts ready {doc['ready']} and the findings "
            f"(levels {', '.join(sorted(map(str, levels))) or 'none'}): it would be {expected!r}"
        )
    if doc["ready"] and "fail" in levels:
        problems.append("'ready' true with a failed finding")
    if doc["ready"] and not isinstance(doc.get("resolution"), dict):
        problems.append("'ready' true without the copy it found (resolution)")
    return problems


def schema_problems(doc) -> list[str]:
    """What makes `doc` unusable as a report ([] when nothing): the schema, then consistency."""
    if not isinstance(doc, dict):
        return [f"the report is {type(doc).__name__}, not an object"]
    problems = validate(doc, schema())
    return problems or consistency_problems(doc)


def _read_report(path: Path) -> bytes:
    """The report's bytes, if this user can trust them: a regular file owned by this user or
    root, which no one else may write (nor replace: its folder likewise, or sticky)."""
    uid = os.geteuid()
    fd = open_regular(path)
    with os.fdopen(fd, "rb") as f:
        st = os.fstat(f.fileno())
        if st.st_uid not in (uid, 0):
            raise PermissionError(
                f"it is owned by uid {st.st_uid}, not by this user (uid {uid}) or root, so "
                "another account wrote it"
            )
        if st.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
            raise PermissionError(
                f"its mode {stat.filemode(st.st_mode)} lets other accounts write it"
            )
        folder = os.stat(os.path.dirname(os.path.abspath(path)))
        open_folder = folder.st_mode & (stat.S_IWGRP | stat.S_IWOTH)
        if open_folder and not folder.st_mode & stat.S_ISVTX:
            raise PermissionError(
                f"its folder's mode {stat.filemode(folder.st_mode)} lets other accounts replace it"
            )
        if st.st_size > MAX_REPORT_BYTES:
            raise ValueError(f"it holds {st.st_size} bytes, far more than a report")
        return f.read(MAX_REPORT_BYTES + 1)


def require_ready(path: Path, *, max_age: int | None = None, now=None) -> tuple[int, str]:
    """(exit code, one line) for the training unit's gate: 0 only for a valid, ready report
    of this host (and no older than max_age seconds); a valid not-ready report's own exit
    code (1-6); 7 for anything else."""
    rerun = "rerun the cache test on this host (hf-cache-test --report FILE, or its unit)"
    try:
        doc = json.loads(_read_report(path))
    except FileNotFoundError:
        return ExitCode.GATE_CLOSED, (
            f"no cache test report at {path}: run the cache test first "
            "(hf-cache-test --report FILE, or the unit that runs it)"
        )
    except PermissionError as e:
        return ExitCode.GATE_CLOSED, f"cache test report {path} is not trusted: {e}; {rerun}"
    except (OSError, ValueError, RecursionError) as e:  # RecursionError: nesting far too deep
        return ExitCode.GATE_CLOSED, f"cache test report {path} is unreadable: {e}; {rerun}"
    problems = schema_problems(doc)
    if not problems:
        problems = [
            f"'{key}' missing (not a stored report)" for key in STORED_KEYS if key not in doc
        ]
    if problems:
        shown = "; ".join(problems[:5]) + (
            f"; and {len(problems) - 5} more" if len(problems) > 5 else ""
        )
        return ExitCode.GATE_CLOSED, (
            f"cache test report {path} is not a valid report ({shown}): rerun the cache test "
            "with this version of hf-cache-test"
        )
    host, machine_id = socket.gethostname(), this_machine_id()
    if doc["host"] != host or (
        doc.get("machine_id") and machine_id and doc["machine_id"] != machine_id
    ):
        which = (
            f"host {doc['host']!r}, this is {host!r}"
            if doc["host"] != host
            else f"machine id {doc['machine_id']}, this host's is {machine_id}"
        )
        return ExitCode.GATE_CLOSED, (
            f"cache test report {path} was written on another machine ({which}): a report "
            f"copied or baked into an image says nothing of this host; {rerun}"
        )
    when = _date_time(doc["checked_at"])
    now = now or datetime.datetime.now(datetime.timezone.utc)
    age = (now - when).total_seconds()
    if age < -CLOCK_SKEW_S:
        return ExitCode.GATE_CLOSED, (
            f"cache test report {path} is dated {doc['checked_at']}, {-age:.0f} s in the future: "
            f"this host's clock was wrong then or is now; fix the clock, then {rerun}"
        )
    if max_age is not None and age > max_age:
        return ExitCode.GATE_CLOSED, (
            f"cache test report {path} of {doc['checked_at']} is {age:.0f} s old, more than "
            f"--max-age {max_age} s; {rerun}"
        )
    if doc["ready"]:
        return ExitCode.READY, f"cache test of {doc['checked_at']}: {doc['message']}"
    return doc["exit_code"], f"cache test of {doc['checked_at']} failed: {doc['message']}"


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
