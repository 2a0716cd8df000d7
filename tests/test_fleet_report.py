"""The fleet report: rendered from per-host summaries, opened in a real browser."""

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "scripts"))
import fleet_report  # noqa: E402

READY = {
    "host": "gpu-01",
    "ready": True,
    "message": "ready",
    "exit_code": 0,
    "resolution": {"source": "arrow"},
    "loading": {"batches": 3, "images_per_s": 1234.5},
    "driver": {"driver_version": "580.95.05", "gpu_count": 8, "reboot_required": False},
    "volume": {"mount_point": "/data/hf", "free_bytes": 53687091200},
}
BROKEN = {
    "host": "gpu-02",
    "ready": False,
    "exit_code": 4,
    "message": "missing shard imagenet-1k-train-00001-of-00002.arrow (path: /data/hf/datasets/x); fix: re-copy it",
    "driver": {},
    "volume": {},
}


def write_summaries(tmp_path: Path, *summaries: dict) -> Path:
    (tmp_path / "hosts").mkdir()
    for summary in summaries:
        (tmp_path / "hosts" / f"{summary['host']}.json").write_text(json.dumps(summary))
    return tmp_path


def test_rows_carry_verdict_driver_volume_cache_and_speed(tmp_path):
    rows = fleet_report.load(write_summaries(tmp_path, READY, BROKEN))
    ready, broken = rows
    assert (ready["verdict"], ready["driver"], ready["GPUs"]) == ("ready", "580.95.05", "8")
    assert ready["reboot pending"] == "no"
    assert (ready["free"], ready["cache"], ready["images/s"]) == ("50.0 GiB", "arrow", "1,234")
    assert (broken["verdict"], broken["cache"], broken["driver"]) == ("NOT READY", "incomplete", "none")
    assert fleet_report.summary_line(rows) == "fleet: 1 of 2 hosts ready to train; not ready: gpu-02"


def test_rewrites_only_on_change(tmp_path, capsys):
    report_dir = write_summaries(tmp_path, READY)
    fleet_report.main([str(report_dir)])
    assert capsys.readouterr().out.splitlines()[-1] == "written"
    fleet_report.main([str(report_dir)])
    assert capsys.readouterr().out.splitlines()[-1] == "unchanged"


def test_markdown_escapes_pipes(tmp_path):
    broken = dict(BROKEN, message="a | b")
    markdown = fleet_report.render_markdown(fleet_report.load(write_summaries(tmp_path, broken)))
    assert "a \\| b" in markdown


def test_browser_shows_every_hosts_row(tmp_path):
    chromium = shutil.which("chromium")
    if chromium is None:
        pytest.fail("chromium is not installed: run `make browser`")
    hosts = [dict(READY, host=f"gpu-{index:02d}") for index in range(1, 6)] + [BROKEN | {"host": "gpu-99"}]
    report_dir = write_summaries(tmp_path, *hosts)
    fleet_report.main([str(report_dir)])
    profile = tmp_path / "profile"
    done = subprocess.run(
        [
            chromium,
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            f"--user-data-dir={profile}",
            "--dump-dom",
            (report_dir / "fleet.html").as_uri(),
        ],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    dom = done.stdout
    for host in hosts:
        assert f'data-host="{host["host"]}"' in dom
    assert dom.count("<tr class=") == len(hosts)
    assert "5 of 6 hosts ready" in dom
