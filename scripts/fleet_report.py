#!/usr/bin/env python3
"""Render the fleet readiness report from the per-host summaries.

Reads REPORT_DIR/hosts/*.json (stored by the hf_loader role after each cache
test: the host's report, as the package wrote it, plus driver and volume facts)
and writes REPORT_DIR/fleet.html, REPORT_DIR/fleet.md and REPORT_DIR/fleet.json (the
summary for scripts and the run's results: each host's state and the counts). Each report is
validated against the package's JSON Schema; an invalid one is shown as such
and never counted as ready.

The run that renders the report says what it saw (playbooks/report.yml):
--run-hosts, the hosts it was for; --reached-hosts, those neither unreachable
nor failed before the report; --checked-hosts, those whose cache test ran in
it. A host of the run that was not reached and not checked is unreachable:
shown with the time of its last good check, never counted as ready. Without
these options every stored summary is shown as it is.

fleet.json also says which run it is (`run`: the summary's format, a digest of the report
schema the hosts were judged by, the run's id and its target), so that the summaries of one
run made in slices (--limit, AWX job slicing) can be merged into that run's summary:
`fleet_report.py merge SLICE.json... [--output FILE]` (see merge_main).

Files are only rewritten when their content changes, so a no-change Ansible
run stays unchanged. Prints the fleet summary line, then `written` or
`unchanged`.
"""

from __future__ import annotations

import argparse
import datetime
import hashlib
import html
import json
import sys
from dataclasses import dataclass
from pathlib import Path

import jsonschema

ROOT = Path(__file__).resolve().parent.parent
SCHEMA = ROOT / "files" / "hf_loader" / "src" / "hf_loader" / "report.schema.json"

COLUMNS = [
    "host",
    "verdict",
    "checked at",
    "driver",
    "GPUs",
    "reboot pending",
    "volume",
    "free",
    "cache",
    "images/s",
    "message",
]
# State of a row -> its verdict text; only the first two count as ready.
VERDICTS = {
    "ready": "ready",
    "warning": "ready, with a warning",
    "not-ready": "NOT READY",
    "invalid": "invalid report",
    "unreachable": "unreachable",
    "not-in-run": "not in this run",
}
READY_STATES = {"ready", "warning"}
# The format of fleet.json's keys: raised when they change, so that a merge never mixes summaries
# that mean different things.
FORMAT = 1


@dataclass
class Run:
    """What the rendering run saw; None: nothing known (every summary shown as stored)."""

    hosts: list[str] | None = None
    reached: set[str] | None = None
    checked: set[str] | None = None

    @classmethod
    def from_args(cls, run_hosts, reached_hosts, checked_hosts) -> Run:
        if run_hosts is None:
            return cls()
        return cls(split(run_hosts), set(split(reached_hosts or "")), set(split(checked_hosts or "")))


def split(names: str) -> list[str]:
    return [name for name in names.split(",") if name]


def human_bytes(value) -> str:
    if value in (None, ""):
        return "-"
    size = float(value)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if size < 1024 or unit == "TiB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return "-"


def text(value, default="-") -> str:
    return default if value in (None, "", {}) else str(value)


def report_problems(report, validator) -> list[str]:
    """Why `report` is not a valid report ([] when it is): the schema, then what it cannot say."""
    problems = []
    for error in sorted(validator.iter_errors(report), key=lambda e: list(e.absolute_path)):
        where = "/".join(str(part) for part in error.absolute_path) or "(top)"
        problems.append(f"{where}: {error.message}")
    if problems:
        return problems
    if report["ready"] != (report["exit_code"] == 0):
        problems.append(f"ready is {report['ready']} but exit_code is {report['exit_code']}")
    if report["ready"] != (report["verdict"] in ("ready", "ready_with_warnings")):
        problems.append(f"ready is {report['ready']} but verdict is {report['verdict']}")
    for key in ("checked_at", "message"):
        if key not in report:
            problems.append(f"{key} missing: not a stored report (hf-cache-test --report)")
    if "checked_at" in report:
        # jsonschema checks the date-time format only with an optional library.
        try:
            stamped = datetime.datetime.fromisoformat(report["checked_at"].replace("Z", "+00:00"))
        except ValueError:
            stamped = None
        if stamped is None or stamped.tzinfo is None:
            problems.append(f"checked_at: {report['checked_at']!r} is not an ISO 8601 time with its zone")
    return problems


def cache_state(report: dict) -> str:
    resolution = report.get("resolution")
    if resolution:
        return f"{resolution['source']} ({resolution['mode']})"
    return {3: "not cached", 4: "incomplete", 5: "environment", 6: "loading failed"}.get(report.get("exit_code"), "-")


def images_per_second(report: dict) -> str:
    loading = report.get("loading")
    return f"{loading['images_per_s']:,.0f}" if loading else "-"


def row(summary: dict, validator, run: Run) -> dict:
    host = str(summary.get("host"))
    driver = summary.get("driver") or {}
    volume = summary.get("volume") or {}
    report = summary.get("report")
    reboot = driver.get("reboot_required")
    cells = {
        "host": host,
        "checked at": "-",
        "driver": text(driver.get("driver_version") or driver.get("installed_version"), "none"),
        "GPUs": text(driver.get("gpu_count"), "0"),
        "reboot pending": "-" if reboot is None else ("yes" if reboot is True else "no"),
        "volume": text(volume.get("mount_point")),
        "free": human_bytes(volume.get("free_bytes")),
        "cache": "-",
        "images/s": "-",
    }
    problems = report_problems(report, validator) if report is not None else []
    if report is not None and not problems:
        cells.update(
            {
                "checked at": report["checked_at"],
                "cache": cache_state(report),
                "images/s": images_per_second(report),
            }
        )
    last_good = summary.get("last_ready_at") or "none on record"

    if run.hosts is not None and host not in run.hosts:
        state, message = "not-in-run", f"not part of this run; last good check: {last_good}"
    elif run.hosts is not None and host not in run.checked and host not in run.reached:
        state = "unreachable"
        message = f"not reached this run (unreachable, or failed before its check); last good check: {last_good}"
    elif report is None:
        state, message = "not-ready", text(summary.get("problem"), "no report stored")
    elif problems:
        state, message = "invalid", "report does not match the schema: " + "; ".join(problems[:3])
    else:
        state = {"ready": "ready", "ready_with_warnings": "warning"}.get(report["verdict"], "not-ready")
        message = report["message"]
    return cells | {"verdict": VERDICTS[state], "message": message, "state": state}


def unreadable(host: str, error: str) -> dict:
    """The row of a summary that is not even JSON."""
    return {"host": host, "report": None, "problem": f"unreadable summary: {error}"}


def load(report_dir: Path, run: Run | None = None, schema_file: Path = SCHEMA) -> list[dict]:
    run = run or Run()
    schema = json.loads(schema_file.read_text(encoding="utf-8"))
    validator_class = jsonschema.validators.validator_for(schema)
    validator = validator_class(schema, format_checker=validator_class.FORMAT_CHECKER)
    summaries = {}
    for path in sorted((report_dir / "hosts").glob("*.json")):
        try:
            summary = json.loads(path.read_text(encoding="utf-8"))
            if not isinstance(summary, dict):
                raise ValueError(f"a {type(summary).__name__}, not an object")
        except (OSError, ValueError) as error:
            summary = unreadable(path.stem, f"{path}: {error}")
        summaries[path.stem] = summary | {"host": path.stem}
    # A host of this run that never stored a summary (never checked) still gets a row.
    for host in run.hosts or []:
        summaries.setdefault(host, {"host": host, "report": None, "problem": "never checked: no summary stored"})
    # By name (the inventory's order can change between runs), hosts outside the run last.
    in_run = set(run.hosts or summaries)
    hosts = sorted(summaries, key=lambda host: (host not in in_run, host))
    return [row(summaries[host], validator, run) for host in hosts]


def summary_line(rows: list[dict]) -> str:
    in_run = [row for row in rows if row["state"] != "not-in-run"]
    ready = sum(row["state"] in READY_STATES for row in in_run)
    line = f"fleet: {ready} of {len(in_run)} hosts ready to train"
    for state, label in (
        ("warning", "with a warning"),
        ("not-ready", "not ready"),
        ("invalid", "invalid report"),
        ("unreachable", "unreachable"),
        ("not-in-run", "not in this run"),
    ):
        hosts = [row["host"] for row in rows if row["state"] == state]
        if hosts:
            line += f"; {label}: {', '.join(hosts)}"
    return line


def schema_digest(schema_file: Path = SCHEMA) -> str:
    """Which report schema the hosts were judged by: two project revisions with different schemas
    can judge the same report differently."""
    return "sha256:" + hashlib.sha256(schema_file.read_bytes()).hexdigest()[:16]


def run_info(schema_file: Path = SCHEMA, run_id: str = "", target: dict | None = None) -> dict:
    return {"format": FORMAT, "schema": schema_digest(schema_file), "id": run_id, "target": target or {}}


def summary(rows: list[dict], run: dict | None = None) -> dict:
    """The fleet's state in a few stable keys (no times): what playbooks/report.yml hands on as
    the run's result (set_stats and the artifact file) and what scripts read. `run` (run_info)
    says which run it is, for merge."""
    in_run = [row for row in rows if row["state"] != "not-in-run"]
    counts = {state: sum(row["state"] == state for row in rows) for state in VERDICTS}
    return {
        "summary": summary_line(rows),
        "ready": sum(row["state"] in READY_STATES for row in in_run),
        "hosts_in_run": len(in_run),
        "counts": {state: count for state, count in counts.items() if count},
        "hosts": {row["host"]: row["state"] for row in rows},
    } | ({"run": run} if run is not None else {})


class MergeError(Exception):
    """Slices that cannot make one run's summary; the message names the file and the fix."""


# What the merged summary has in place of the whole run's `report` (where fleet.html is): each
# slice's own. Everything else is the whole run's, key for key.
SLICES_KEY = "slices"


def read_slice(path: Path) -> dict:
    """One slice's gpu_fleet_report: the artifact file, or an AWX job's artifacts holding it."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as error:
        raise MergeError(f"{path}: cannot read it as JSON ({error})") from error
    if isinstance(data, dict) and isinstance(data.get("gpu_fleet_report"), dict):
        data = data["gpu_fleet_report"]
    if not isinstance(data, dict) or not isinstance(data.get("hosts"), dict):
        raise MergeError(
            f"{path}: not a fleet report summary (no 'hosts'): give each slice's gpu_fleet_report.json, "
            "or its AWX job's artifacts (the job's 'artifacts' field)"
        )
    run = data.get("run")
    if not isinstance(run, dict) or run.get("format") != FORMAT:
        made = (
            f"format {run.get('format')!r}"
            if isinstance(run, dict)
            else "no 'run' (made before slices could be merged)"
        )
        raise MergeError(
            f"{path}: summary {made}, this script merges format {FORMAT}: rerun that slice with this "
            "revision of the project, or merge with the revision that made it"
        )
    bad = sorted(host for host, state in data["hosts"].items() if state not in VERDICTS)
    if bad:
        raise MergeError(f"{path}: unknown state for {', '.join(bad)}: not a fleet report summary of this revision")
    return data


def merge(paths: list[Path]) -> dict:
    """The summary one run over every slice's hosts would have written: each host's state from
    the slice whose run it was in; a host no slice ran is not in the run. Refuses slices of
    different runs and a host in the run of two slices (MergeError)."""
    seen = set()
    for path in paths:
        if path.resolve() in seen:
            raise MergeError(f"{path} is given twice: give each slice's summary once")
        seen.add(path.resolve())
    slices = [(path, read_slice(path)) for path in paths]
    first_path, first = slices[0]
    with_hosts = [(path, data) for path, data in slices if data.get("hosts_in_run", 0) > 0]
    checks = [
        ("schema", "judged hosts by report schema", slices),
        ("id", "is of run", slices),
        # A slice with no host says nothing about a target (read on the run's first host).
        ("target", "has the target", with_hosts),
    ]
    for key, what, among in checks:
        if not among:
            continue
        base_path, base = among[0]
        for path, data in among[1:]:
            if data["run"].get(key) != base["run"].get(key):
                raise MergeError(
                    f"{path} {what} {data['run'].get(key)!r} but {base_path} {base['run'].get(key)!r}: "
                    "the slices are not of one run (another run, revision or target); merge the "
                    "gpu_fleet_report of every slice of one run, or rerun the slices"
                )
    for path, data in slices[1:]:
        if data.get("check_mode") != first.get("check_mode"):
            raise MergeError(
                f"{path} has check_mode {data.get('check_mode')!r} but {first_path} {first.get('check_mode')!r}: "
                "a check run and a real run are not one run; merge the slices of one of them"
            )
    states: dict[str, str] = {}
    ran_in: dict[str, Path] = {}
    for path, data in slices:
        for host, state in data["hosts"].items():
            if state == "not-in-run":
                states.setdefault(host, state)
                continue
            if host in ran_in:
                raise MergeError(
                    f"{host} is in the run of both {ran_in[host]} and {path}: slices overlap (their "
                    "--limit patterns share a host, or one is another run's); give each slice once, "
                    "with limits that split the hosts"
                )
            ran_in[host] = path
            states[host] = state
    rows = [{"host": host, "state": state} for host, state in states.items()]
    rows.sort(key=lambda row: (row["state"] == "not-in-run", row["host"]))
    run = dict(first["run"])
    if with_hosts:
        run["target"] = with_hosts[0][1]["run"].get("target", {})
    merged = summary(rows, run)
    if "check_mode" in first:
        merged["check_mode"] = first["check_mode"]
    merged[SLICES_KEY] = [
        {"file": str(path), "hosts_in_run": data.get("hosts_in_run", 0), "report": data.get("report")}
        for path, data in slices
    ]
    return merged


def merge_main(argv: list[str]) -> int:
    """fleet_report.py merge: one run's summary from its slices' gpu_fleet_report summaries."""
    parser = argparse.ArgumentParser(
        prog="fleet_report.py merge",
        description="Merge the gpu_fleet_report of each slice of one run (--limit, AWX job slicing) into "
        "the summary the whole run would have written.",
    )
    parser.add_argument("slices", type=Path, nargs="+", help="each slice's gpu_fleet_report.json or job artifacts")
    parser.add_argument("--output", type=Path, help="write the merged summary here (default: print it)")
    args = parser.parse_args(argv)
    try:
        merged = merge(args.slices)
    except MergeError as error:
        print(f"fleet_report.py merge: refused: {error}", file=sys.stderr)
        return 2
    content = json.dumps(merged, indent=2) + "\n"
    if args.output is None:
        sys.stdout.write(content)
        return 0
    args.output.parent.mkdir(parents=True, exist_ok=True)
    changed = write_if_changed(args.output, content)
    print(merged["summary"])
    print("written" if changed else "unchanged")
    return 0


def render_markdown(rows: list[dict]) -> str:
    lines = ["# Fleet readiness", "", summary_line(rows), "", "| " + " | ".join(COLUMNS) + " |"]
    lines.append("|" + " --- |" * len(COLUMNS))
    for row in rows:
        lines.append("| " + " | ".join(row[column].replace("|", "\\|") for column in COLUMNS) + " |")
    return "\n".join(lines) + "\n"


def render_html(rows: list[dict]) -> str:
    head = "".join(f"<th>{html.escape(column)}</th>" for column in COLUMNS)
    body = []
    for row in rows:
        cells = "".join(f"<td>{html.escape(row[column])}</td>" for column in COLUMNS)
        body.append(f'<tr class="{row["state"]}" data-host="{html.escape(row["host"])}">{cells}</tr>')
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>Fleet readiness</title>
<style>
body {{ font-family: sans-serif; margin: 2em; }}
table {{ border-collapse: collapse; }}
th, td {{ border: 1px solid #999; padding: 0.3em 0.6em; text-align: left; vertical-align: top; }}
tr td:nth-child(2) {{ font-weight: bold; }}
tr.ready td:nth-child(2) {{ color: #060; }}
tr.warning td:nth-child(2) {{ color: #a60; }}
tr.not-ready td:nth-child(2), tr.invalid td:nth-child(2), tr.unreachable td:nth-child(2) {{ color: #b00; }}
tr.not-in-run td {{ color: #777; }}
</style></head>
<body><h1>Fleet readiness</h1>
<p id="summary">{html.escape(summary_line(rows))}</p>
<table id="hosts"><thead><tr>{head}</tr></thead>
<tbody>
{chr(10).join(body)}
</tbody></table></body></html>
"""


def write_if_changed(path: Path, content: str) -> bool:
    if path.exists() and path.read_text(encoding="utf-8") == content:
        return False
    path.write_text(content, encoding="utf-8")
    return True


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] == ["merge"]:
        return merge_main(argv[1:])
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("report_dir", type=Path, help="folder holding hosts/*.json; the report is written here")
    parser.add_argument("--schema", type=Path, default=SCHEMA, help="the report's JSON Schema (default: %(default)s)")
    parser.add_argument("--run-hosts", help="comma-separated hosts this run was for")
    parser.add_argument("--reached-hosts", help="comma-separated hosts of the run not unreachable nor failed")
    parser.add_argument("--checked-hosts", help="comma-separated hosts whose cache test ran in this run")
    parser.add_argument("--run-id", default="", help="the run's id (AWX: its slices' workflow job); merge compares it")
    parser.add_argument("--target", type=json.loads, default={}, help="the run's target as a JSON object")
    args = parser.parse_args(argv)
    rows = load(args.report_dir, Run.from_args(args.run_hosts, args.reached_hosts, args.checked_hosts), args.schema)
    args.report_dir.mkdir(parents=True, exist_ok=True)
    changed = write_if_changed(args.report_dir / "fleet.html", render_html(rows))
    changed |= write_if_changed(args.report_dir / "fleet.md", render_markdown(rows))
    changed |= write_if_changed(
        args.report_dir / "fleet.json",
        json.dumps(summary(rows, run_info(args.schema, args.run_id, args.target)), indent=2) + "\n",
    )
    print(summary_line(rows))
    print(f"report: {args.report_dir / 'fleet.html'}, fleet.md and fleet.json")
    print("written" if changed else "unchanged")
    return 0


if __name__ == "__main__":
    sys.exit(main())
