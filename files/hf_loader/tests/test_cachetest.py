"""hf-cache-test: exit codes, messages with path and remedy, --json, unprivileged user."""

from __future__ import annotations

import ctypes
import json
import os
import subprocess
import sys
from pathlib import Path

from conftest import DATASET, arrow_dir, snapshot_dir

from hf_loader.cachetest import main

SCRIPTS = Path(sys.executable).parent


def run_json(capsys, *args) -> tuple[int, dict]:
    code = main([*args, "--json", "--batches", "2", "--batch-size", "4", "--workers", "0"])
    out = capsys.readouterr().out
    return code, json.loads(out)


def fails(doc: dict) -> list[dict]:
    return [f for f in doc["findings"] if f["level"] == "fail"]


def test_ready_arrow_json(arrow_only, capsys, no_network):
    code, doc = run_json(capsys, DATASET)
    assert code == 0 and doc["ready"] is True
    assert doc["resolution"]["source"] == "arrow"
    assert doc["loading"]["batch_shape"] == [4, 3, 224, 224]
    assert doc["loading"]["dtype"] == "torch.uint8"
    assert doc["loading"]["images_per_s"] > 0
    assert not no_network


def test_ready_hub_only_with_workers_human(hub_only, capsys, no_network):
    code = main([DATASET, "--batches", "2", "--batch-size", "3", "--workers", "2"])
    out = capsys.readouterr().out
    assert code == 0, out
    assert "READY (exit 0)" in out
    assert "hub copy (streaming)" in out
    assert not no_network


def test_deep_ready(both, capsys):
    code, doc = run_json(capsys, DATASET, "--deep")
    assert code == 0
    assert doc["resolution"]["check"]["splits"]["train"]["rows_found"] == 12


def test_not_cached_exit_3(home, capsys):
    code, doc = run_json(capsys, "ILSVRC/imagenet-21k")
    assert code == 3
    (f,) = fails(doc)
    assert f["stage"] == "cache" and f["remedy"]
    assert len(doc["error"]["looked"]) == 2


def test_wrong_spelling_exit_3_names_near_miss(both, capsys):
    code = main(["imagenet-1k", "--batches", "0"])
    out = capsys.readouterr().out
    assert code == 3
    assert "near misses" in out and "'ILSVRC/imagenet-1k'" in out
    assert "fix:" in out


def test_incomplete_exit_4(hub_only, capsys):
    (snapshot_dir(hub_only) / "data" / "validation-00001-of-00002.parquet").unlink()
    code, doc = run_json(capsys, DATASET)
    assert code == 4
    (f,) = fails(doc)
    assert f["path"] and "restore" in f["remedy"]
    assert any("shard 1 of 2" in p for p in doc["error"]["problems"])


def test_environment_exit_5_missing_cache_var_path(arrow_only, capsys, monkeypatch, tmp_path):
    monkeypatch.setenv("HF_DATASETS_CACHE", str(tmp_path / "not-mounted"))
    code, doc = run_json(capsys, DATASET)
    assert code == 5
    f = fails(doc)[0]
    assert f["stage"] == "environment" and "not-mounted" in f["path"]
    assert "HF_DATASETS_CACHE" in f["remedy"]


def test_environment_exit_5_user_disabled_offline(arrow_only, capsys, monkeypatch):
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "0")
    code, doc = run_json(capsys, DATASET)
    assert code == 5
    f = fails(doc)[0]
    assert "HF_DATASETS_OFFLINE=0" in f["message"] and "HF_DATASETS_OFFLINE=1" in f["remedy"]
    # the loader itself still worked, offline forced on
    assert doc["loading"]["batches"] == 2
    assert os.environ["HF_DATASETS_OFFLINE"] == "1"


def test_loading_failed_exit_6(bad_images, capsys):
    code, doc = run_json(capsys, "acme/broken-images")
    assert code == 6
    f = fails(doc)[0]
    assert f["stage"] == "loading" and f["path"] and f["remedy"]


def test_usage_exit_2(capsys):
    assert main(["--batches", "many"]) == 2


def test_console_script_help_lists_exit_codes():
    p = subprocess.run(
        [str(SCRIPTS / "hf-cache-test"), "--help"], capture_output=True, text=True, timeout=60
    )
    assert p.returncode == 0
    for code in ("0  ready", "3  not cached", "4  incomplete", "5  environment", "6  loading"):
        assert code in p.stdout


def _drop_file_override_caps():
    """In the child before exec: drop CAP_DAC_OVERRIDE and CAP_DAC_READ_SEARCH from the
    bounding set. Root then obeys file modes like any user (tests run as root, and root
    otherwise reads everything), so unreadable files are really unreadable."""
    libc = ctypes.CDLL(None, use_errno=True)
    for cap in (1, 2):  # CAP_DAC_OVERRIDE, CAP_DAC_READ_SEARCH
        if libc.prctl(24, cap, 0, 0, 0) != 0:  # PR_CAPBSET_DROP
            raise OSError(ctypes.get_errno(), "prctl(PR_CAPBSET_DROP)")


def _without_override(home: Path) -> subprocess.CompletedProcess:
    env = dict(os.environ, HF_HOME=str(home), HF_DATASETS_OFFLINE="1", HF_HUB_OFFLINE="1")
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "hf_loader.cachetest",
            DATASET,
            "--json",
            "--batches",
            "1",
            "--batch-size",
            "2",
            "--workers",
            "0",
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        preexec_fn=_drop_file_override_caps if os.geteuid() == 0 else None,
    )


def test_ready_without_override_when_readable(both):
    p = _without_override(both)
    assert p.returncode == 0, p.stdout + p.stderr


def test_unreadable_files_exit_4(both):
    shard = arrow_dir(both) / "imagenet-1k-train-00000-of-00002.arrow"
    shard.chmod(0o000)
    snap_data = snapshot_dir(both) / "data"
    snap_data.chmod(0o644)  # no x bit: the folder cannot be traversed
    try:
        p = _without_override(both)
    finally:
        snap_data.chmod(0o755)
    assert p.returncode == 4, p.stdout + p.stderr
    doc = json.loads(p.stdout)
    problems = "\n".join(doc["error"]["problems"])
    assert str(shard) in problems and "permission denied" in problems
    assert str(snap_data) in problems


def test_unreadable_cache_root_exit_5(both):
    (both / "datasets").chmod(0o000)
    try:
        p = _without_override(both)
    finally:
        (both / "datasets").chmod(0o755)
    assert p.returncode == 5, p.stdout + p.stderr
    f = json.loads(p.stdout)["findings"]
    assert any(x["level"] == "fail" and "read and search" in x.get("remedy", "") for x in f)
