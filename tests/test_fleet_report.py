"""The fleet report: per-host summaries holding the package's reports, validated
against its schema, shown as the rendering run saw the fleet, opened in a real browser."""

import copy
import json
import shutil
import sys
from pathlib import Path

import jsonschema
import pytest

from conftest import chromium_dom

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "scripts"))
import fleet_report  # noqa: E402

SCHEMA = json.loads(fleet_report.SCHEMA.read_text())
ARROW = "/data/hf/datasets/ILSVRC___imagenet-1k/default/0.0.0/cabd59eeec2656160e10c4de5a27ec827a3352e8"
SNAPSHOT = "/data/hf/hub/datasets--ILSVRC--imagenet-1k/snapshots/0123456789abcdef0123456789abcdef01234567"
READY_REPORT = {
    "schema_version": 1,
    "dataset": "ILSVRC/imagenet-1k",
    "ready": True,
    "verdict": "ready",
    "exit_code": 0,
    "message": "ready",
    "host": "gpu-01",
    "checked_at": "2026-11-30T10:00:00+00:00",
    "command": ["/opt/hf-loader/venv/bin/hf-cache-test", "--config-file", "/etc/hf-loader/cache-test.yaml"],
    "paths": {"hf_home": "/data/hf", "datasets_cache": "/data/hf/datasets", "hub_cache": "/data/hf/hub"},
    "findings": [{"level": "ok", "stage": "cache", "message": "complete arrow copy", "path": ARROW}],
    "resolution": {
        "dataset_id": "ILSVRC/imagenet-1k",
        "config": "default",
        "source": "arrow",
        "path": ARROW,
        "mode": "arrow",
        "splits": ["train", "validation"],
    },
    "loading": {
        "split": "train",
        "batches": 3,
        "images": 96,
        "first_batch_s": 0.4,
        "images_per_s": 1234.5,
        "workers": 2,
        "decoder": "simplejpeg",
    },
    "error": None,
}
BROKEN_ARROW = f"missing shard data-00000-of-00001.arrow in the Arrow copy {ARROW}"
# The Arrow copy is broken; the hub snapshot is streamed instead.
WARNING_REPORT = READY_REPORT | {
    "verdict": "ready_with_warnings",
    "message": f"ready, with a warning: skipped {BROKEN_ARROW}; fix: delete or repair it",
    "findings": [
        {"level": "warn", "stage": "cache", "message": f"skipped {BROKEN_ARROW}", "path": ARROW},
        {"level": "ok", "stage": "cache", "message": "complete hub copy (streaming)", "path": SNAPSHOT},
    ],
    "resolution": READY_REPORT["resolution"] | {"source": "hub", "mode": "streaming", "path": SNAPSHOT},
}
NOT_READY_REPORT = READY_REPORT | {
    "ready": False,
    "verdict": "not_ready",
    "exit_code": 4,
    "message": f"{BROKEN_ARROW}; fix: re-copy it",
    "findings": [{"level": "fail", "stage": "cache", "message": BROKEN_ARROW, "remedy": "re-copy it", "exit_code": 4}],
    "resolution": None,
    "loading": None,
    "error": {"kind": "IncompleteCacheError", "exit_code": 4, "message": BROKEN_ARROW},
}
DRIVER = {"driver_version": "580.95.05", "gpu_count": 8, "reboot_required": False}
VOLUME = {"mount_point": "/data/hf", "device": "/dev/nvme1n1", "free_bytes": 53687091200}


def summary(host, report, **extra):
    """What the hf_loader role stores on the controller for a host."""
    report = None if report is None else report | {"host": host}
    last_ready = report["checked_at"] if report and report["ready"] else None
    return {
        "host": host,
        "dataset": "ILSVRC/imagenet-1k",
        "report": report,
        "problem": None,
        "last_ready_at": last_ready,
        "driver": DRIVER,
        "volume": VOLUME,
    } | extra


def write_summaries(tmp_path: Path, *summaries: dict) -> Path:
    (tmp_path / "hosts").mkdir(exist_ok=True)
    for item in summaries:
        (tmp_path / "hosts" / f"{item['host']}.json").write_text(json.dumps(item))
    return tmp_path


def rows_by_host(report_dir, run=None):
    return {row["host"]: row for row in fleet_report.load(report_dir, run)}


@pytest.mark.parametrize("report", [READY_REPORT, WARNING_REPORT, NOT_READY_REPORT])
def test_the_fixtures_are_valid_reports(report):
    jsonschema.validate(report, SCHEMA)
    assert fleet_report.report_problems(report, jsonschema.Draft202012Validator(SCHEMA)) == []


def test_rows_carry_verdict_time_driver_volume_cache_and_speed(tmp_path):
    rows = rows_by_host(write_summaries(tmp_path, summary("gpu-01", READY_REPORT), summary("gpu-02", NOT_READY_REPORT)))
    ready, broken = rows["gpu-01"], rows["gpu-02"]
    assert (ready["verdict"], ready["checked at"], ready["driver"], ready["GPUs"]) == (
        "ready",
        "2026-11-30T10:00:00+00:00",
        "580.95.05",
        "8",
    )
    assert ready["reboot pending"] == "no"
    assert (ready["free"], ready["cache"], ready["images/s"]) == ("50.0 GiB", "arrow (arrow)", "1,234")
    assert (broken["verdict"], broken["cache"], broken["checked at"]) == (
        "NOT READY",
        "incomplete",
        "2026-11-30T10:00:00+00:00",
    )
    assert broken["message"] == NOT_READY_REPORT["message"]
    assert fleet_report.summary_line(list(rows.values())) == "fleet: 1 of 2 hosts ready to train; not ready: gpu-02"


def test_a_host_ready_only_through_a_slower_copy_is_ready_with_a_warning_naming_the_broken_copy(tmp_path):
    rows = rows_by_host(write_summaries(tmp_path, summary("gpu-01", READY_REPORT), summary("gpu-03", WARNING_REPORT)))
    warned = rows["gpu-03"]
    assert warned["verdict"] == "ready, with a warning"
    assert ARROW in warned["message"] and warned["message"].startswith("ready, with a warning: skipped")
    assert warned["cache"] == "hub (streaming)"
    line = fleet_report.summary_line(list(rows.values()))
    assert line == "fleet: 2 of 2 hosts ready to train; with a warning: gpu-03"


def test_a_host_this_run_did_not_reach_is_unreachable_with_its_last_good_check_and_not_ready(tmp_path):
    # Its previous run left a ready summary: the run that renders did not see it.
    report_dir = write_summaries(tmp_path, summary("gpu-01", READY_REPORT), summary("gpu-02", READY_REPORT))
    run = fleet_report.Run(["gpu-01", "gpu-02"], reached={"gpu-01"}, checked={"gpu-01"})
    rows = rows_by_host(report_dir, run)
    gone = rows["gpu-02"]
    assert gone["verdict"] == "unreachable"
    assert "not reached this run" in gone["message"]
    assert "last good check: 2026-11-30T10:00:00+00:00" in gone["message"]
    line = fleet_report.summary_line(list(rows.values()))
    assert line == "fleet: 1 of 2 hosts ready to train; unreachable: gpu-02"
    markdown = fleet_report.render_markdown(list(rows.values()))
    assert "2 of 2" not in markdown and "| gpu-02 | unreachable |" in markdown


def test_an_unreachable_host_whose_last_check_failed_names_its_last_good_one(tmp_path):
    failed_now = summary("gpu-02", NOT_READY_REPORT, last_ready_at="2026-11-29T08:00:00+00:00")
    run = fleet_report.Run(["gpu-02"], reached=set(), checked=set())
    gone = rows_by_host(write_summaries(tmp_path, failed_now), run)["gpu-02"]
    assert gone["verdict"] == "unreachable" and "last good check: 2026-11-29T08:00:00+00:00" in gone["message"]
    never = summary("gpu-03", NOT_READY_REPORT)
    gone = rows_by_host(write_summaries(tmp_path, never), fleet_report.Run(["gpu-03"], set(), set()))["gpu-03"]
    assert "last good check: none on record" in gone["message"]


def test_a_host_reached_but_not_rechecked_shows_its_last_check_the_same_as_when_checked(tmp_path):
    # site.yml with nothing changed runs no cache test: the row must not differ
    # (a no-change run leaves the report unchanged).
    report_dir = write_summaries(tmp_path, summary("gpu-01", READY_REPORT))
    checked = fleet_report.load(report_dir, fleet_report.Run(["gpu-01"], {"gpu-01"}, {"gpu-01"}))
    reached = fleet_report.load(report_dir, fleet_report.Run(["gpu-01"], {"gpu-01"}, set()))
    assert checked == reached
    assert reached[0]["verdict"] == "ready" and reached[0]["checked at"] == "2026-11-30T10:00:00+00:00"


def test_the_inventorys_order_does_not_change_the_report(tmp_path):
    report_dir = write_summaries(tmp_path, *(summary(f"gpu-{index:02d}", READY_REPORT) for index in (1, 2, 3)))
    hosts = ["gpu-01", "gpu-02", "gpu-03"]
    first = fleet_report.load(report_dir, fleet_report.Run(hosts, set(hosts), set()))
    again = fleet_report.load(report_dir, fleet_report.Run(hosts[::-1], set(hosts), set()))
    assert fleet_report.render_markdown(first) == fleet_report.render_markdown(again)


def test_a_host_checked_and_then_failed_shows_its_report(tmp_path):
    report_dir = write_summaries(tmp_path, summary("gpu-02", NOT_READY_REPORT))
    row = rows_by_host(report_dir, fleet_report.Run(["gpu-02"], reached=set(), checked={"gpu-02"}))["gpu-02"]
    assert row["verdict"] == "NOT READY" and row["message"] == NOT_READY_REPORT["message"]


def invalid(report_changes=(), drop=()):
    report = copy.deepcopy(READY_REPORT)
    report.update(dict(report_changes))
    for key in drop:
        del report[key]
    return report


@pytest.mark.parametrize(
    ("report", "words"),
    [
        (invalid({"ready": "true"}), "ready: 'true' is not of type 'boolean'"),
        (invalid({"exit_code": 4}), "ready is True but exit_code is 4"),
        (invalid({"verdict": "not_ready"}), "ready is True but verdict is not_ready"),
        (invalid({"verdict": "fine"}), "verdict: 'fine' is not one of"),
        (invalid(drop=["schema_version"]), "'schema_version' is a required property"),
        (invalid({"schema_version": 2}), "schema_version: 1 was expected"),
        (invalid(drop=["checked_at"]), "checked_at missing"),
        (invalid({"checked_at": "yesterday"}), "checked_at: 'yesterday' is not an ISO 8601 time"),
        (invalid({"findings": [{"level": "info", "stage": "cache", "message": "x"}]}), "findings/0/level"),
        ([READY_REPORT], "is not of type 'object'"),
    ],
)
def test_an_invalid_report_is_shown_as_invalid_and_never_counted_ready(tmp_path, report, words):
    row = rows_by_host(write_summaries(tmp_path, summary("gpu-01", READY_REPORT) | {"report": report}))["gpu-01"]
    assert row["verdict"] == "invalid report"
    assert words in row["message"]
    assert fleet_report.summary_line([row]) == "fleet: 0 of 1 hosts ready to train; invalid report: gpu-01"


def test_a_run_that_left_no_report_is_not_ready_with_the_roles_message(tmp_path):
    problem = "hf-cache-test.service ended with result timeout (status 0) and left no report of this run"
    report_dir = write_summaries(tmp_path, summary("gpu-01", None, problem=problem))
    row = rows_by_host(report_dir)["gpu-01"]
    assert (row["verdict"], row["message"], row["checked at"]) == ("NOT READY", problem, "-")


def test_hosts_outside_the_run_are_listed_apart_and_a_host_never_checked_gets_a_row(tmp_path):
    report_dir = write_summaries(tmp_path, summary("gpu-01", READY_REPORT), summary("old-01", READY_REPORT))
    (tmp_path / "hosts" / "gpu-04.json").write_text("{not json")
    run = fleet_report.Run(["gpu-01", "gpu-05", "gpu-04"], {"gpu-01", "gpu-05", "gpu-04"}, set())
    rows = fleet_report.load(report_dir, run)
    assert [row["host"] for row in rows] == ["gpu-01", "gpu-04", "gpu-05", "old-01"]
    by_host = {row["host"]: row for row in rows}
    assert by_host["old-01"]["verdict"] == "not in this run"
    assert by_host["gpu-05"]["message"] == "never checked: no summary stored"
    assert by_host["gpu-04"]["verdict"] == "NOT READY" and "unreadable summary" in by_host["gpu-04"]["message"]
    assert fleet_report.summary_line(rows) == (
        "fleet: 1 of 3 hosts ready to train; not ready: gpu-04, gpu-05; not in this run: old-01"
    )


def test_command_line_of_the_report_play_and_rewrites_only_on_change(tmp_path, capsys):
    report_dir = write_summaries(tmp_path, summary("gpu-01", READY_REPORT), summary("gpu-02", READY_REPORT))
    args = [str(report_dir), "--run-hosts=gpu-01,gpu-02", "--reached-hosts=gpu-01", "--checked-hosts="]
    assert fleet_report.main(args) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0] == "fleet: 1 of 2 hosts ready to train; unreachable: gpu-02"
    assert out[-1] == "written"
    fleet_report.main(args)
    assert capsys.readouterr().out.splitlines()[-1] == "unchanged"
    assert "| gpu-02 | unreachable |" in (report_dir / "fleet.md").read_text()


def test_markdown_escapes_pipes(tmp_path):
    broken = summary("gpu-02", NOT_READY_REPORT | {"message": "a | b"})
    markdown = fleet_report.render_markdown(fleet_report.load(write_summaries(tmp_path, broken)))
    assert "a \\| b" in markdown


def test_browser_shows_every_hosts_row(tmp_path):
    chromium = shutil.which("chromium")
    if chromium is None:
        pytest.fail("chromium is not installed: run `make browser`")
    hosts = [summary(f"gpu-{index:02d}", READY_REPORT) for index in range(1, 5)]
    hosts += [summary("gpu-05", WARNING_REPORT), summary("gpu-98", READY_REPORT), summary("gpu-99", NOT_READY_REPORT)]
    report_dir = write_summaries(tmp_path, *hosts)
    names = [item["host"] for item in hosts]
    fleet_report.main(
        [
            str(report_dir),
            f"--run-hosts={','.join(names)}",
            f"--reached-hosts={','.join(names[:-2])}",
            "--checked-hosts=",
        ]
    )
    profile = tmp_path / "profile"
    done = chromium_dom(chromium, (report_dir / "fleet.html").as_uri(), profile)
    assert done.returncode == 0, done.stderr[-2000:]
    dom = done.stdout
    for name in names:
        assert f'data-host="{name}"' in dom
    assert dom.count("<tr class=") == len(hosts)
    assert 'class="unreachable" data-host="gpu-98"' in dom
    assert 'class="warning" data-host="gpu-05"' in dom
    assert "5 of 7 hosts ready" in dom
