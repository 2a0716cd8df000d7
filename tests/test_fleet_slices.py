"""A run made in slices (--limit, AWX job slicing) gives the fleet report of one whole run.

playbooks/report.yml, the play site.yml and cache-test.yml end with, runs for real (as
tests/test_run_results.py runs it) once over the whole fleet and once per slice, each with its own
artifact folder as each AWX slice job has; `fleet_report.py merge` of the slices' gpu_fleet_report
must be the whole run's, every key but `report` (where each slice's fleet.html is, under `slices`
in the merge). Then the slices merge refuses, each naming the file and the fix.
"""

from __future__ import annotations

import json
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from test_fleet_report import NOT_READY_REPORT, READY_REPORT, WARNING_REPORT, summary
from test_run_results import local_hosts, run, stats

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "scripts"))
import fleet_report  # noqa: E402

TARGET = "nvidia_driver_version=580.95.05"


def merge_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "fleet_report.py"), "merge", *args],
        capture_output=True,
        text=True,
        check=False,
    )


def stored(folder: Path, *items: dict) -> Path:
    """A controller's report folder holding these hosts' stored cache-test summaries."""
    (folder / "hosts").mkdir(parents=True)
    for item in items:
        (folder / "hosts" / f"{item['host']}.json").write_text(json.dumps(item))
    return folder


def test_slices_merged_give_the_whole_runs_fleet_report(tmp_path):
    inventory = local_hosts(tmp_path, {name: {} for name in ("gpu-01", "gpu-02", "gpu-03", "gpu-04")})
    # gpu-04 never stored a cache test (not ready); old-01 did once but is in no run (not-in-run).
    everything = [
        summary("gpu-01", READY_REPORT),
        summary("gpu-02", NOT_READY_REPORT),
        summary("gpu-03", WARNING_REPORT),
        summary("old-01", READY_REPORT),
    ]
    # The whole run and slice a on one controller's folder (slice a sees the others' summaries
    # as not in its run); slice b as an AWX slice job, in a container holding only its own
    # hosts'. localhost in each limit, as docs/operator.md says (--limit leaves it out otherwise).
    # A slice with no fleet host is merged in test_a_slice_with_no_host_adds_nothing...: a fourth
    # run here would cost its seconds in make test.
    runs = {
        "whole": (inventory, stored(tmp_path / "whole", *everything), ()),
        "a": (inventory, stored(tmp_path / "a", *everything), ("--limit", "gpu-01:gpu-03:localhost")),
        "b": (inventory, stored(tmp_path / "b", everything[1]), ("--limit", "gpu-02:gpu-04:localhost")),
    }

    def one(name: str) -> dict:
        hosts, reports, limit = runs[name]
        artifacts = tmp_path / "artifacts" / name
        rc, output, stderr = run(
            hosts,
            "report.yml",
            *limit,
            "-e",
            f"fleet_report_dir={reports}",
            "-e",
            f"fleet_artifact_dir={artifacts}",
            "-e",
            TARGET,
        )
        assert rc == 0, stderr
        sent = stats(output)["gpu_fleet_report"]
        assert json.loads((artifacts / "gpu_fleet_report.json").read_text()) == sent
        return sent

    # Side by side, as AWX runs slices: the test takes the time of one run, not three.
    with ThreadPoolExecutor(len(runs)) as pool:
        sent = dict(zip(runs, pool.map(one, runs), strict=True))

    whole = sent["whole"]
    assert whole["hosts"] == {
        "gpu-01": "ready",
        "gpu-02": "not-ready",
        "gpu-03": "warning",
        "gpu-04": "not-ready",
        "old-01": "not-in-run",
    }
    assert whole["run"]["target"]["nvidia_driver_version"] == "580.95.05"
    assert sent["a"]["hosts"]["gpu-02"] == "not-in-run" and "old-01" not in sent["b"]["hosts"]

    files = [tmp_path / "artifacts" / name / "gpu_fleet_report.json" for name in ("a", "b")]
    # What AWX keeps of a slice job: its artifacts, the stats by name.
    awx_b = tmp_path / "job-b-artifacts.json"
    awx_b.write_text(json.dumps({"gpu_fleet_report": sent["b"]}))
    files[1] = awx_b
    output = tmp_path / "merged.json"
    done = merge_cli(*map(str, files), "--output", str(output))
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == [whole["summary"], "written"]
    merged = json.loads(output.read_text())
    slices = merged.pop("slices")
    assert merged == {key: value for key, value in whole.items() if key != "report"}
    assert [item["file"] for item in slices] == list(map(str, files))
    assert [item["hosts_in_run"] for item in slices] == [2, 2]
    # The order of the slices does not matter, and a second merge leaves the file as it was.
    assert merge_cli(*map(str, files[::-1]), "--output", str(output)).stdout.splitlines()[-1] == "written"
    again = json.loads(output.read_text())
    assert {key: value for key, value in again.items() if key != "slices"} == merged
    assert merge_cli(*map(str, files[::-1]), "--output", str(output)).stdout.splitlines()[-1] == "unchanged"


def slice_summary(states: dict[str, str], **run: object) -> dict:
    """A slice's gpu_fleet_report as report.yml sends it."""
    rows = [{"host": host, "state": state} for host, state in states.items()]
    target = {"nvidia_driver_version": "580.95.05"} if any(s != "not-in-run" for s in states.values()) else {}
    info = fleet_report.run_info(target=target) | run
    return fleet_report.summary(rows, info) | {"report": "/controller/reports/fleet.html", "check_mode": False}


@pytest.fixture
def slices(tmp_path):
    def write(*items: dict) -> list[Path]:
        paths = []
        for item in items:
            path = tmp_path / f"slice-{len(list(tmp_path.glob('slice-*.json'))) + 1}.json"
            path.write_text(json.dumps(item))
            paths.append(path)
        return paths

    return write


def refused(paths: list[Path]) -> str:
    with pytest.raises(fleet_report.MergeError) as caught:
        fleet_report.merge(paths)
    return str(caught.value)


def test_a_host_in_the_run_of_two_slices_is_refused_naming_both(slices):
    one, two = slices(slice_summary({"gpu-01": "ready"}), slice_summary({"gpu-01": "ready", "gpu-02": "ready"}))
    message = refused([one, two])
    assert f"gpu-01 is in the run of both {one} and {two}" in message
    assert "limits that split the hosts" in message
    assert refused([one, one]) == f"{one} is given twice: give each slice's summary once"


def test_a_slice_with_no_host_adds_nothing_and_its_empty_target_is_no_conflict(slices):
    paths = slices(slice_summary({"gpu-01": "ready", "gpu-02": "not-ready"}), slice_summary({}))
    merged = fleet_report.merge(paths)
    assert merged["hosts"] == {"gpu-01": "ready", "gpu-02": "not-ready"}
    assert merged["run"]["target"] == {"nvidia_driver_version": "580.95.05"}
    assert fleet_report.merge(paths[::-1])["run"] == merged["run"]
    # Only empty slices: a run of no host.
    assert fleet_report.merge(slices(slice_summary({"old-01": "not-in-run"})))["summary"] == (
        "fleet: 0 of 0 hosts ready to train; not in this run: old-01"
    )


@pytest.mark.parametrize(
    ("change", "words"),
    [
        ({"schema": "sha256:0000000000000000"}, "judged hosts by report schema 'sha256:0000000000000000'"),
        ({"id": "4711"}, "is of run '4711'"),
        ({"target": {"nvidia_driver_version": "570.1"}}, "has the target {'nvidia_driver_version': '570.1'}"),
    ],
)
def test_slices_of_different_runs_are_refused_naming_the_file_and_the_fix(slices, change, words):
    first, other = slices(slice_summary({"gpu-01": "ready"}), slice_summary({"gpu-02": "ready"}, **change))
    message = refused([first, other])
    assert message.startswith(f"{other} {words} but {first}")
    assert "the slices are not of one run" in message and "rerun the slices" in message


def test_a_summary_of_another_format_or_none_at_all_is_refused(slices, tmp_path):
    old = slice_summary({"gpu-01": "ready"})
    del old["run"]
    (path,) = slices(old)
    assert "no 'run' (made before slices could be merged)" in refused([path])
    assert "rerun that slice with this revision" in refused([path])
    (path,) = slices(slice_summary({"gpu-01": "ready"}, format=fleet_report.FORMAT + 1))
    assert f"format {fleet_report.FORMAT + 1}, this script merges format {fleet_report.FORMAT}" in refused([path])
    other = tmp_path / "seed.json"
    other.write_text(json.dumps({"counts": {}}))
    assert f"{other}: not a fleet report summary (no 'hosts')" in refused([other])
    (path,) = slices(slice_summary({"gpu-01": "ready"}) | {"check_mode": True})
    (real,) = slices(slice_summary({"gpu-02": "ready"}))
    assert "a check run and a real run are not one run" in refused([real, path])


def test_the_merge_command_refuses_with_exit_status_2_and_writes_nothing(slices, tmp_path):
    paths = slices(slice_summary({"gpu-01": "ready"}), slice_summary({"gpu-01": "warning"}))
    output = tmp_path / "merged.json"
    done = merge_cli(*map(str, paths), "--output", str(output))
    assert done.returncode == 2
    assert done.stderr.startswith("fleet_report.py merge: refused: gpu-01 is in the run of both")
    assert not output.exists()
    assert merge_cli(str(tmp_path / "nothing.json")).returncode == 2
