#!/usr/bin/env python3
"""Render the fleet readiness report from the per-host summaries.

Reads REPORT_DIR/hosts/*.json (stored by the hf_loader role's cache test)
and writes REPORT_DIR/fleet.html and REPORT_DIR/fleet.md. Files are only
rewritten when their content changes, so a no-change Ansible run stays
unchanged. Prints the fleet summary line, then `written` or `unchanged`.
"""

import argparse
import html
import json
import sys
from pathlib import Path

COLUMNS = ["host", "verdict", "driver", "GPUs", "reboot pending", "volume", "free", "cache", "images/s", "message"]


def human_bytes(value) -> str:
    if value in (None, "", "None"):
        return "-"
    size = float(value)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if size < 1024 or unit == "TiB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return "-"


def text(value, default="-") -> str:
    return default if value in (None, "", "None", {}) else str(value)


def cache_state(summary: dict) -> str:
    resolution = summary.get("resolution") or {}
    if isinstance(resolution, dict) and resolution:
        kind = resolution.get("kind") or resolution.get("source") or resolution.get("layout")
        return text(kind, "found")
    return {3: "not cached", 4: "incomplete", 5: "environment", 6: "loading failed"}.get(
        int(summary.get("exit_code") or 0), "-"
    )


def images_per_second(summary: dict) -> str:
    loading = summary.get("loading") or {}
    if not isinstance(loading, dict):
        return "-"
    for key in ("images_per_s", "images_per_second", "throughput"):
        if loading.get(key) not in (None, ""):
            return f"{float(loading[key]):,.0f}"
    return "-"


def row(summary: dict) -> dict:
    driver = summary.get("driver") or {}
    volume = summary.get("volume") or {}
    ready = str(summary.get("ready")).lower() == "true"
    reboot = driver.get("reboot_required")
    return {
        "host": text(summary.get("host")),
        "verdict": "ready" if ready else "NOT READY",
        "driver": text(driver.get("driver_version") or driver.get("installed_version"), "none"),
        "GPUs": text(driver.get("gpu_count"), "0"),
        "reboot pending": "-" if reboot is None else ("yes" if str(reboot).lower() == "true" else "no"),
        "volume": text(volume.get("mount_point")),
        "free": human_bytes(volume.get("free_bytes")),
        "cache": cache_state(summary),
        "images/s": images_per_second(summary),
        "message": text(summary.get("message")),
        "ready": ready,
    }


def load(report_dir: Path) -> list[dict]:
    rows = []
    for path in sorted((report_dir / "hosts").glob("*.json")):
        try:
            rows.append(row(json.loads(path.read_text(encoding="utf-8"))))
        except (OSError, ValueError) as error:
            rows.append(row({"host": path.stem, "ready": False, "message": f"unreadable summary {path}: {error}"}))
    return rows


def summary_line(rows: list[dict]) -> str:
    ready = sum(row["ready"] for row in rows)
    return f"fleet: {ready} of {len(rows)} hosts ready to train" + (
        "" if ready == len(rows) else f"; not ready: {', '.join(r['host'] for r in rows if not r['ready'])}"
    )


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
        state = "ready" if row["ready"] else "not-ready"
        cells = "".join(f"<td>{html.escape(row[column])}</td>" for column in COLUMNS)
        body.append(f'<tr class="{state}" data-host="{html.escape(row["host"])}">{cells}</tr>')
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>Fleet readiness</title>
<style>
body {{ font-family: sans-serif; margin: 2em; }}
table {{ border-collapse: collapse; }}
th, td {{ border: 1px solid #999; padding: 0.3em 0.6em; text-align: left; vertical-align: top; }}
tr.ready td:nth-child(2) {{ color: #060; font-weight: bold; }}
tr.not-ready td:nth-child(2) {{ color: #b00; font-weight: bold; }}
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
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("report_dir", type=Path, help="folder holding hosts/*.json; the report is written here")
    args = parser.parse_args(argv)
    rows = load(args.report_dir)
    args.report_dir.mkdir(parents=True, exist_ok=True)
    changed = write_if_changed(args.report_dir / "fleet.html", render_html(rows))
    changed |= write_if_changed(args.report_dir / "fleet.md", render_markdown(rows))
    print(summary_line(rows))
    print(f"report: {args.report_dir / 'fleet.html'} and fleet.md")
    print("written" if changed else "unchanged")
    return 0


if __name__ == "__main__":
    sys.exit(main())
