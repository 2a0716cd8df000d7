"""The stored report: schema, --report, --require-ready (the training gate), metrics, config."""

from __future__ import annotations

import json
import re
import subprocess
import sys

import jsonschema
import pytest
from conftest import DATASET, snapshot_dir

from hf_loader import report
from hf_loader.cachetest import main
from hf_loader.errors import EXIT_GATE_CLOSED

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


def gate(path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "hf_loader.cachetest", "--require-ready", str(path)],
        capture_output=True,
        text=True,
        timeout=60,
    )


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
    assert done.returncode == EXIT_GATE_CLOSED and why in done.stderr


def test_contradicting_ready_and_exit_code_is_invalid():
    doc = {key: None for key in report.schema()["required"]}
    doc.update(schema_version=1, ready=True, exit_code=4, verdict="ready")
    assert any("contradicts" in p for p in report.schema_problems(doc))


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
