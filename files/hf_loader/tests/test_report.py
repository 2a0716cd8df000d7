"""The stored report: schema, --report, --require-ready (the training gate), metrics, config."""

from __future__ import annotations

import datetime
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import jsonschema
import pytest
from conftest import DATASET, snapshot_dir

from hf_loader import report
from hf_loader.cachetest import main
from hf_loader.cli.exitcodes import ExitCode

VALIDATOR = jsonschema.Draft202012Validator(
    report.schema(), format_checker=jsonschema.FormatChecker()
)


def write_report(tmp_path, *args) -> tuple[int, dict]:
    path = tmp_path / "report.json"
    code = main([*args, "--report", str(path), "--batches", "1", "--batch-size", "2"])
    return code, json.loads(path.read_text())


def test_schema_is_valid_json_schema():
    jsonschema.Draft202012Validator.check_schema(report.schema())


@pytest.mark.parametrize(
    "layout, dataset, code",
    [
        ("arrow_only", DATASET, 0),
        ("hub_only", DATASET, 0),
        ("home", DATASET, 3),
        ("bad_images", "acme/broken-images", 6),
    ],
)
def test_reports_of_every_outcome_validate(layout, dataset, code, request, tmp_path, capsys):
    request.getfixturevalue(layout)
    got, stored = write_report(tmp_path, dataset, "--workers", "0")
    capsys.readouterr()
    assert got == code == stored["exit_code"]
    VALIDATOR.validate(stored)
    assert stored["ready"] is (code == 0)
    assert stored["command"][0] == "hf-cache-test" and "--report" in stored["command"]
    assert stored["checked_at"].endswith("+00:00")
    assert report.schema_problems(stored) == []


def test_json_output_validates_without_the_stored_keys(arrow_only, capsys):
    main([DATASET, "--json", "--batches", "1", "--batch-size", "2", "--workers", "0"])
    VALIDATOR.validate(json.loads(capsys.readouterr().out))


def test_usage_error_json_validates(capsys):
    assert main(["--json", "--workers", "-2"]) == 2
    VALIDATOR.validate(json.loads(capsys.readouterr().out))


def gate(path, *extra: str, namespace: str | None = None) -> subprocess.CompletedProcess:
    """The training unit's gate in a child process; namespace: shell commands run first in
    private UTS and mount namespaces (another host name, another machine id)."""
    command = [sys.executable, "-m", "hf_loader.cachetest", "--require-ready", str(path), *extra]
    if namespace:
        command = ["unshare", "-m", "-u", "sh", "-ec", f'{namespace}\nexec "$@"', "sh", *command]
    return subprocess.run(command, capture_output=True, text=True, timeout=60)


def test_gate_opens_for_a_ready_report(arrow_only, tmp_path, capsys):
    code, stored = write_report(tmp_path, DATASET, "--workers", "0")
    assert code == 0
    done = gate(tmp_path / "report.json")
    assert done.returncode == 0 and stored["checked_at"] in done.stdout


def test_gate_stays_closed_with_the_reports_own_exit_code(hub_only, tmp_path, capsys):
    (snapshot_dir(hub_only) / "data" / "train-00000-of-00002.parquet").unlink()
    code, stored = write_report(tmp_path, DATASET)
    assert code == 4
    done = gate(tmp_path / "report.json")
    assert done.returncode == 4
    assert "failed" in done.stderr and "train-00000-of-00002" in done.stderr


@pytest.mark.parametrize(
    "content, why",
    [
        (None, "no cache test report"),
        ("{not json", "unreadable"),
        ('{"ready": "true", "exit_code": 0}', "not a valid report"),
        ("[]", "not a valid report"),
    ],
)
def test_gate_stays_closed_without_a_valid_report(tmp_path, content, why):
    path = tmp_path / "report.json"
    if content is not None:
        path.write_text(content)
    done = gate(path)
    assert done.returncode == ExitCode.GATE_CLOSED and why in done.stderr


# ------------------------------------------------------------------ the gate trusts nothing


@pytest.fixture
def ready_report(arrow_only, tmp_path, capsys) -> Path:
    """A real ready report of this host, written by the cache test."""
    code, _ = write_report(tmp_path, DATASET, "--workers", "0")
    capsys.readouterr()
    assert code == 0
    return tmp_path / "report.json"


def rewrite(path: Path, **changes) -> dict:
    doc = json.loads(path.read_text())
    doc.update(changes)
    path.write_text(json.dumps(doc))
    return doc


needs_namespaces = pytest.mark.skipif(
    os.geteuid() != 0 or shutil.which("unshare") is None, reason="needs root and unshare(1)"
)


@needs_namespaces
def test_a_ready_report_of_another_host_keeps_the_gate_closed(ready_report, tmp_path):
    """A report baked into an image, on a clone: another host name, or the same name with
    another machine id. Real UTS and mount namespaces, nothing mocked."""
    stored = json.loads(ready_report.read_text())
    assert gate(ready_report).returncode == 0
    done = gate(ready_report, namespace="hostname clone-of-the-image")
    assert done.returncode == ExitCode.GATE_CLOSED, done.stdout + done.stderr
    assert f"host {stored['host']!r}, this is 'clone-of-the-image'" in done.stderr
    assert "written on another machine" in done.stderr and "rerun the cache test" in done.stderr
    if "machine_id" in stored:
        other = tmp_path / "machine-id"
        other.write_text("0123456789abcdef0123456789abcdef\n")
        done = gate(ready_report, namespace=f"mount --bind {other} {report.MACHINE_ID_FILE}")
        assert done.returncode == ExitCode.GATE_CLOSED, done.stdout + done.stderr
        assert "machine id" in done.stderr and "0123456789abcdef" in done.stderr


def _finding(level: str) -> dict:
    return {"level": level, "stage": "cache", "message": "planted"}


TAMPERED = {
    "exit-256": {"ready": False, "verdict": "not_ready", "exit_code": 256},
    "exit-512-ready": {"exit_code": 512},
    "exit-negative": {"ready": False, "verdict": "not_ready", "exit_code": -4},
    "exit-bool": {"exit_code": False},
    "verdict-says-ready": {"ready": False, "verdict": "ready", "exit_code": 4},
    "verdict-not-ready": {"verdict": "not_ready"},
    "verdict-unknown": {"verdict": "READY"},
    "ready-with-a-failure": {"findings": [_finding("ok"), _finding("fail")]},
    "ready-hiding-a-warning": {"findings": [_finding("warn")], "verdict": "ready"},
    "ready-without-a-copy": {"resolution": None},
    "ready-string": {"ready": "true"},
    "no-host": {"host": None},
    "not-a-date": {"checked_at": "yesterday"},
    "no-offset": {"checked_at": "2026-01-01T00:00:00"},
    "negative-speed": {
        "loading": {
            "split": "train",
            "batches": 1,
            "images": 2,
            "first_batch_s": 0.1,
            "images_per_s": -5.0,
            "workers": 0,
            "decoder": "pil",
        }
    },
    "unknown-finding-key": {"findings": [{**_finding("ok"), "exit": 0}]},
    "schema-2": {"schema_version": 2},
}


@pytest.mark.parametrize("changes", TAMPERED.values(), ids=TAMPERED.keys())
def test_a_report_that_is_not_valid_and_consistent_keeps_the_gate_closed(ready_report, changes):
    doc = rewrite(ready_report, **changes)
    if changes.get("host", "") is None:
        del doc["host"]
        ready_report.write_text(json.dumps(doc))
    done = gate(ready_report)
    assert done.returncode == ExitCode.GATE_CLOSED, done.stdout + done.stderr  # never 0 (256 % 256)
    assert "is not a valid report" in done.stderr


# Not schema matters for jsonschema here: the stored keys are the gate's own rule, and this
# jsonschema has no date-time format checker installed (the host's validator checks it).
SCHEMA_CASES = {
    k: v for k, v in TAMPERED.items() if k not in ("no-host", "not-a-date", "no-offset")
}


@pytest.mark.parametrize("changes", SCHEMA_CASES.values(), ids=SCHEMA_CASES.keys())
def test_the_hosts_validator_agrees_with_jsonschema(ready_report, changes):
    doc = {**json.loads(ready_report.read_text()), **changes}
    assert (report.validate(doc, report.schema()) == []) == VALIDATOR.is_valid(doc)
    assert report.schema_problems(doc) != []  # each is refused: by the schema or as inconsistent


def test_a_valid_not_ready_report_keeps_its_own_exit_code(ready_report):
    rewrite(
        ready_report, ready=False, verdict="not_ready", exit_code=3, findings=[_finding("fail")]
    )
    done = gate(ready_report)
    assert done.returncode == 3 and "failed" in done.stderr


def test_maximum_age(ready_report):
    assert gate(ready_report, "--max-age", "1h").returncode == 0
    two_days_ago = datetime.datetime.now(datetime.timezone.utc) - datetime.timedelta(days=2)
    rewrite(ready_report, checked_at=two_days_ago.isoformat(timespec="seconds"))
    assert gate(ready_report).returncode == 0  # no maximum given
    assert gate(ready_report, "--max-age", "3d").returncode == 0
    done = gate(ready_report, "--max-age", "1d")
    assert done.returncode == ExitCode.GATE_CLOSED
    assert "s old, more than --max-age 86400 s" in done.stderr
    tomorrow = datetime.datetime.now(datetime.timezone.utc) + datetime.timedelta(days=1)
    rewrite(ready_report, checked_at=tomorrow.isoformat(timespec="seconds"))
    done = gate(ready_report)
    assert done.returncode == ExitCode.GATE_CLOSED and "in the future" in done.stderr


@pytest.mark.parametrize("value", ["0", "-1", "5x", "", "1.5h"])
def test_a_bad_maximum_age_is_a_usage_error(value, capsys):
    assert main(["--require-ready", "/nonexistent", "--max-age", value, "--json"]) == 2
    assert "--max-age" in capsys.readouterr().out


def test_maximum_age_without_the_gate_is_a_usage_error(capsys):
    assert main(["--max-age", "1h", "--json"]) == 2
    assert "only to --require-ready" in capsys.readouterr().out


@pytest.mark.parametrize(
    "spoil, why",
    [
        (lambda p: p.chmod(0o666), "lets other accounts write it"),
        (lambda p: os.chown(p, 65534, 65534), "owned by uid 65534"),
        (lambda p: p.parent.chmod(0o777), "lets other accounts replace it"),
    ],
    ids=["world-writable", "foreign-owner", "open-folder"],
)
def test_a_report_other_accounts_could_have_written_keeps_the_gate_closed(ready_report, spoil, why):
    spoil(ready_report)
    try:
        done = gate(ready_report)
    finally:
        ready_report.parent.chmod(0o700)
    assert done.returncode == ExitCode.GATE_CLOSED, done.stdout + done.stderr
    assert "is not trusted" in done.stderr and why in done.stderr


def test_a_huge_or_special_file_is_no_report(tmp_path):
    fifo = tmp_path / "fifo.json"
    os.mkfifo(fifo)
    done = gate(fifo)  # a FIFO with no writer: refused at once, never read
    assert done.returncode == ExitCode.GATE_CLOSED and "FIFO" in done.stderr
    huge = tmp_path / "huge.json"
    with open(huge, "wb") as f:
        f.truncate(report.MAX_REPORT_BYTES + 1)
    done = gate(huge)
    assert done.returncode == ExitCode.GATE_CLOSED and "far more than a report" in done.stderr


def test_metrics_textfile(arrow_only, tmp_path, capsys):
    assert (
        main([DATASET, "--metrics-dir", str(tmp_path), "--batches", "2", "--batch-size", "2"]) == 0
    )
    text = (tmp_path / report.METRICS_FILE).read_text()
    assert not list(tmp_path.glob(".*.tmp"))  # written by rename, nothing left behind
    samples = {}
    for line in text.splitlines():
        if line.startswith("#"):
            assert re.match(r"^# (HELP|TYPE) hf_cache_test_\w+ ", line)
            continue
        m = re.match(
            r'^(hf_cache_test_\w+)\{dataset="([^"]+)",decoder="([\w-]+)",verdict="(\w+)"\} (\S+)$',
            line,
        )
        assert m, line
        assert m.group(2) == DATASET and m.group(3) in ("libjpeg-turbo-crop", "simplejpeg", "pil")
        samples[m.group(1)] = float(m.group(5))
    assert samples["hf_cache_test_ready"] == 1.0 and samples["hf_cache_test_exit_code"] == 0.0
    assert samples["hf_cache_test_images_per_second"] > 0
    assert samples["hf_cache_test_last_run_timestamp_seconds"] > 1.7e9


def test_config_file_supplies_options_and_flags_override(arrow_only, tmp_path, capsys):
    config = tmp_path / "cache-test.yaml"
    config.write_text(
        f"dataset: {DATASET}\nbatches: 1\nbatch_size: 3\nworkers: 0\nsplit: validation\n"
        f"report: {tmp_path / 'r.json'}\n"
    )
    assert main(["--config-file", str(config), "--batch-size", "2", "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["loading"]["split"] == "validation" and doc["loading"]["batch_shape"][0] == 2
    assert json.loads((tmp_path / "r.json").read_text())["ready"] is True


@pytest.mark.parametrize(
    "content, why",
    [
        ("batches: 1\nbogus: 2\n", "unknown config keys: bogus"),
        ("batch_size: 0\n", "'batch_size': 0 is below 1"),
        ("workers: 1.5\n", "'workers'"),
        ("deep: yes please\n", "'deep' must be true or false"),
        ("- a list\n", "config file must hold a mapping"),
    ],
)
def test_bad_config_file_is_a_usage_error(tmp_path, capsys, content, why):
    config = tmp_path / "cache-test.yaml"
    config.write_text(content)
    assert main(["--config-file", str(config), "--json"]) == 2
    doc = json.loads(capsys.readouterr().out)
    assert why in doc["findings"][0]["message"] and doc["findings"][0]["path"] == str(config)


def test_a_report_nested_beyond_reason_keeps_the_gate_closed(tmp_path):
    nested = tmp_path / "nested.json"
    nested.write_text("[" * 200_000 + "]" * 200_000)
    done = gate(nested)
    assert done.returncode == ExitCode.GATE_CLOSED and "unreadable" in done.stderr
