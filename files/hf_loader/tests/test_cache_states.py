"""hf-cache-test on read-only, foreign and odd caches (issue: right verdicts on real states).

Every cache here is written by `datasets`/`huggingface_hub` themselves (conftest). The
read-only cases run on a real read-only bind mount in a private mount namespace, and the
foreign-owner case without the capabilities that let root bypass file permissions.
"""

from __future__ import annotations

import json
import os
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import DATASET, arrow_dir, snapshot_dir
from test_cachetest import _drop_file_override_caps, fails, run_json

from hf_loader.cachetest import main
from hf_loader.errors import IncompleteCacheError
from hf_loader.resolve import resolve

SMALL = ["--batches", "2", "--batch-size", "4"]


def tree_state(root: Path) -> dict:
    """Everything a writer could change: names, types, sizes, times, modes, link targets."""
    state = {}
    for folder, dirs, files in os.walk(root):
        for name in dirs + files:
            path = Path(folder) / name
            st = path.lstat()
            target = os.readlink(path) if stat.S_ISLNK(st.st_mode) else None
            state[str(path.relative_to(root))] = (st.st_mode, st.st_size, st.st_mtime_ns, target)
    st = root.lstat()
    state["."] = (st.st_mode, st.st_mtime_ns)
    return state


def cache_test(home: Path, *args: str, read_only: bool = False, drop_caps: bool = False):
    """hf-cache-test in a child process; read_only: HF_HOME bind-mounted read-only first."""
    env = dict(os.environ, HF_HOME=str(home), HF_DATASETS_OFFLINE="1", HF_HUB_OFFLINE="1")
    command = [sys.executable, "-m", "hf_loader.cachetest", DATASET, "--json", *args]
    if read_only:
        mount = f"mount --bind -o ro {home} {home}"
        command = ["unshare", "-m", "sh", "-c", f'{mount} && exec "$@"', "sh", *command]
    done = subprocess.run(
        command,
        env=env,
        capture_output=True,
        text=True,
        timeout=180,
        preexec_fn=_drop_file_override_caps if drop_caps else None,
    )
    return done.returncode, json.loads(done.stdout), done.stderr


needs_root_namespaces = pytest.mark.skipif(
    os.geteuid() != 0 or shutil.which("unshare") is None,
    reason="a read-only bind mount needs root and unshare(1)",
)


# ------------------------------------------------------------------ 1. read-only caches


@needs_root_namespaces
@pytest.mark.parametrize("layout", ["hub_only", "arrow_only", "both"])
def test_read_only_mount_is_ready_and_unchanged(layout, request):
    home = request.getfixturevalue(layout)
    before = tree_state(home)
    code, doc, err = cache_test(home, *SMALL, "--workers", "2", read_only=True)
    assert code == 0, (doc["findings"], err)
    assert doc["verdict"] == "ready" and doc["loading"]["batches"] == 2
    assert tree_state(home) == before


@needs_root_namespaces
def test_read_only_allow_convert_streams_with_a_note(hub_only):
    before = tree_state(hub_only)
    code, doc, err = cache_test(hub_only, *SMALL, "--allow-convert", read_only=True)
    assert code == 0, (doc["findings"], err)
    assert doc["resolution"]["mode"] == "streaming"
    notes = [f for f in doc["findings"] if f["level"] == "note"]
    assert any("not writable" in f["message"] for f in notes)
    assert tree_state(hub_only) == before


@needs_root_namespaces
def test_training_reads_a_read_only_hub_snapshot(hub_only, tmp_path):
    """hf-train on the same read-only mount: the stream's lock must not go into the cache."""
    before = tree_state(hub_only)
    mount = f"mount --bind -o ro {hub_only} {hub_only}"
    train = [sys.executable, "-m", "hf_loader.train", "--dataset", DATASET, "--device", "cpu"]
    train += ["--batch-size", "2", "--workers", "0", "--eval-split", "", "--warmup", "0ba"]
    train += ["--max-duration", "2ba", "--crop-size", "64", "--log-to-console", "false"]
    env = dict(os.environ, HF_HOME=str(hub_only), HF_DATASETS_OFFLINE="1", HF_HUB_OFFLINE="1")
    done = subprocess.run(
        ["unshare", "-m", "sh", "-c", f'{mount} && exec "$@"', "sh", *train],
        env=env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, (done.stdout + done.stderr)[-3000:]
    assert "a stream of the hub snapshot, 2 batches" in done.stdout
    assert tree_state(hub_only) == before


def test_foreign_owner_without_override_caps_is_ready_and_unchanged(hub_only):
    """A cache owned by another user, readable but not writable, as root without the
    capabilities that bypass permissions: the lock `datasets` takes would be EACCES."""
    nobody = 65534
    for folder, dirs, files in os.walk(hub_only):
        for name in [*dirs, *files, "."]:
            os.lchown(Path(folder) / name, nobody, nobody)
    before = tree_state(hub_only)
    try:
        code, doc, err = cache_test(hub_only, *SMALL, "--workers", "0", drop_caps=True)
    finally:
        shutil.chown(hub_only, 0, 0)  # so tmp_path cleanup can remove it
    assert code == 0, (doc["findings"], err)
    after = tree_state(hub_only)
    after["."] = before["."]  # the chown back above
    assert after == before


def test_writable_cache_left_exactly_as_found(hub_only):
    before = tree_state(hub_only)
    code, doc, _ = cache_test(hub_only, *SMALL, "--workers", "1")
    assert code == 0
    assert tree_state(hub_only) == before


# --------------------------------------------------------- 2. one cache folder missing


@pytest.mark.parametrize("layout, missing", [("hub_only", "datasets"), ("arrow_only", "hub")])
def test_one_folder_missing_beside_complete_copy_is_a_warning(layout, missing, request):
    home = request.getfixturevalue(layout)
    shutil.rmtree(home / missing)
    verdicts = []
    for _ in range(2):  # the second run must see the same cache: nothing created
        code, doc, _ = cache_test(home, *SMALL, "--workers", "0")
        assert code == 0, doc["findings"]
        assert not (home / missing).exists()
        verdicts.append(doc["verdict"])
        (warning,) = [f for f in doc["findings"] if f["level"] == "warn"]
        assert warning["stage"] == "environment" and str(home / missing) in warning["message"]
    assert verdicts == ["ready_with_warnings"] * 2


# ----------------------------------------------------------------- 3. malformed metadata


@pytest.mark.parametrize(
    "info",
    [None, [], {"splits": None}, {"splits": {"train": None}}, {"splits": [1, 2]}, "text"],
    ids=["null", "list", "splits-null", "split-null", "splits-list", "string"],
)
def test_malformed_dataset_info_is_exit_4_naming_the_file(arrow_only, capsys, info):
    info_path = arrow_dir(arrow_only) / "dataset_info.json"
    info_path.write_text(json.dumps(info))
    code, doc = run_json(capsys, DATASET)
    assert code == 4
    assert str(info_path) in "\n".join(doc["error"]["problems"])
    assert "malformed metadata" in "\n".join(doc["error"]["problems"])
    with pytest.raises(IncompleteCacheError):
        resolve(DATASET)


def test_malformed_card_splits_is_exit_4_naming_the_card(hub_only, capsys):
    card = snapshot_dir(hub_only) / "README.md"
    text = card.read_text()
    # the card's file is a link to a blob: replace the link, never the blob
    card.unlink()
    card.write_text(text.replace("  splits:\n", "  splits: 7\n  old_splits:\n", 1))
    code, doc = run_json(capsys, DATASET)
    assert code == 4, doc["findings"]
    assert any(str(card) in p and "malformed" in p for p in doc["error"]["problems"])


# ------------------------------------------------------------------ 4. numeric arguments


@pytest.mark.parametrize(
    "flag, value",
    [("--batch-size", "0"), ("--batch-size", "-3"), ("--workers", "-1"), ("--batches", "-1")],
)
def test_bad_counts_are_usage_errors_in_json(flag, value, capsys):
    code = main([DATASET, "--json", flag, value])
    doc = json.loads(capsys.readouterr().out)
    assert code == 2 and doc["exit_code"] == 2 and doc["ready"] is False
    (f,) = fails(doc)
    assert f["stage"] == "usage" and flag in f["message"]


def test_workers_far_above_cpus_are_capped_with_a_note(arrow_only, capsys):
    code = main([DATASET, "--json", *SMALL, "--workers", "4096"])
    doc = json.loads(capsys.readouterr().out)
    assert code == 0
    cpus = len(os.sched_getaffinity(0))
    assert doc["loading"]["workers"] == cpus
    assert any(f["level"] == "note" and "4096 capped" in f["message"] for f in doc["findings"])


# ------------------------------------------------------------- 5. --deep on plain copies


def _dereference_snapshot(home: Path, keep_blobs: bool) -> Path:
    """The snapshot as `cp -rL` leaves it: plain files instead of links to blobs."""
    snap = snapshot_dir(home)
    plain = snap.with_name(snap.name + ".plain")
    shutil.copytree(snap, plain, symlinks=False)
    shutil.rmtree(snap)
    plain.rename(snap)
    if not keep_blobs:
        shutil.rmtree(snap.parent.parent / "blobs")
    return snap


def test_deep_hashes_plain_copies_against_the_blobs(hub_only, capsys):
    _dereference_snapshot(hub_only, keep_blobs=True)
    code, doc = run_json(capsys, DATASET, "--deep")
    assert code == 0, doc["findings"]
    assert doc["resolution"]["check"]["files_hashed"] == 4
    assert any("4 files hashed" in f["message"] for f in doc["findings"])


def test_deep_finds_a_changed_plain_copy(hub_only, capsys):
    snap = _dereference_snapshot(hub_only, keep_blobs=True)
    shard = snap / "data" / "train-00000-of-00002.parquet"
    data = bytearray(shard.read_bytes())
    data[len(data) // 2] ^= 0xFF  # same size, same end marker: only a hash can tell
    shard.write_bytes(bytes(data))
    code, doc = run_json(capsys, DATASET, "--deep")
    assert code == 4
    assert any(str(shard) in p and "no LFS blob" in p for p in doc["error"]["problems"])


def test_deep_without_blobs_says_what_it_could_not_hash(hub_only, capsys):
    _dereference_snapshot(hub_only, keep_blobs=False)
    code, doc = run_json(capsys, DATASET, "--deep")
    assert code == 0 and doc["verdict"] == "ready_with_warnings"
    assert doc["resolution"]["check"]["files_hashed"] == 0
    assert any("0 files hashed" in f["message"] for f in doc["findings"])
    assert any("no hash to check" in f["message"] for f in doc["findings"])


# --------------------------------------------------------------- 6. --json always answers


def test_internal_error_still_prints_json_with_findings_so_far(arrow_only, capsys, monkeypatch):
    import hf_loader.resolve

    def broken(*args, **kwargs):
        raise RuntimeError("simulated bug")

    monkeypatch.setattr(hf_loader.resolve, "resolve", broken)
    code = main([DATASET, "--json"])
    doc = json.loads(capsys.readouterr().out)
    assert code == 1 and doc["exit_code"] == 1
    assert any(f["stage"] == "environment" and f["level"] == "ok" for f in doc["findings"])
    assert fails(doc)[0]["stage"] == "internal" and "simulated bug" in fails(doc)[0]["message"]


def test_unknown_flag_prints_json(capsys):
    assert main(["--json", "--frobnicate"]) == 2
    doc = json.loads(capsys.readouterr().out)
    assert doc["verdict"] == "not_ready" and "--frobnicate" in fails(doc)[0]["message"]


# ------------------------------------------------------------------- 7. special files


@pytest.mark.parametrize(
    "layout, where",
    [
        ("arrow_only", "imagenet-1k-train-00000-of-00002.arrow"),
        ("arrow_only", "dataset_info.json"),
        ("hub_only", "data/train-00000-of-00002.parquet"),
        ("hub_only", "README.md"),
    ],
)
def test_fifo_in_place_of_a_file_is_exit_4_without_hanging(layout, where, request):
    home = request.getfixturevalue(layout)
    folder = arrow_dir(home) if layout == "arrow_only" else snapshot_dir(home)
    target = folder / where
    target.unlink()
    os.mkfifo(target)
    code, doc, err = cache_test(home, "--batches", "0")  # a hang would hit the timeout
    assert code == 4, (doc["findings"], err)
    assert any(str(target) in p and "FIFO" in p for p in doc["error"]["problems"])


# ------------------------------------------------------------------------ 8. messages


def test_ref_to_a_missing_snapshot_names_ref_and_snapshots(hub_only, capsys):
    repo = snapshot_dir(hub_only).parent.parent
    (repo / "refs" / "main").write_text("0" * 40)
    code, doc = run_json(capsys, DATASET)
    assert code == 4
    problems = "\n".join(doc["error"]["problems"])
    assert "ref 'main' points to snapshot " + "0" * 40 in problems
    assert snapshot_dir(hub_only).name in problems


def test_unreadable_copy_is_fixed_by_permissions_never_by_a_new_copy(arrow_only):
    shard = arrow_dir(arrow_only) / "imagenet-1k-train-00000-of-00002.arrow"
    shard.chmod(0o000)
    code, doc, err = cache_test(arrow_only, "--batches", "0", drop_caps=True)
    assert code == 4, (doc, err)
    (f,) = fails(doc)
    assert "chmod" in f["remedy"] and "restore" not in f["remedy"]
    assert "delete" not in json.dumps(doc).lower()
    assert "permission denied" in "\n".join(doc["error"]["problems"])


def test_permission_only_copy_passed_over_is_not_advised_for_deletion(both):
    shard = arrow_dir(both) / "imagenet-1k-train-00000-of-00002.arrow"
    shard.chmod(0o000)
    code, doc, err = cache_test(both, "--batches", "0", drop_caps=True)
    assert code == 0 and doc["verdict"] == "ready_with_warnings", (doc, err)
    (w,) = [f for f in doc["findings"] if f["level"] == "warn"]
    assert "read access" in w["remedy"] and "move it out" not in w["remedy"]


def test_hf_home_that_is_a_file(tmp_path, capsys, monkeypatch):
    home = tmp_path / "hf"
    home.write_text("not a folder")
    monkeypatch.setenv("HF_HOME", str(home))
    code, doc = run_json(capsys, DATASET)
    assert code == 5
    assert any("is a file, not a folder" in f["message"] for f in fails(doc))


@pytest.mark.parametrize(
    "bad", ["ILSVRC/imagenet 1k", "ILSVRC//imagenet-1k", "/ILSVRC/imagenet-1k"]
)
def test_invalid_id_is_usage_error_with_near_miss(both, capsys, bad):
    code = main([bad, "--json", "--batches", "0"])
    doc = json.loads(capsys.readouterr().out)
    assert code == 2
    (f,) = fails(doc)
    assert f["stage"] == "usage" and "did you mean 'ILSVRC/imagenet-1k'" in f["remedy"]


# ------------------------------------------------------------------------ 9. first batch


def test_first_batch_of_a_small_stream_does_not_wait_for_thread_shutdown(
    hub_only, capsys, monkeypatch, tmp_path
):
    """`datasets` sleeps 5 s (SLEEP_TIME_ON_THREADS_SHUTDOWN) when a stream of parquet files
    ends; a stream that ends while the shuffle buffer fills sleeps before its first row, and
    the sleep is timed as the first batch. The test's buffer leaves rows unread in each
    worker's shards, so every stream hands out rows before it ends or is closed.

    Decided by order, not by a time: each shutdown sleep is recorded (not slept) with the
    rows its process had handed out by then, in the DataLoader's forked workers too."""
    import types

    import datasets.iterable_dataset

    import hf_loader.data

    sleeps = tmp_path / "shutdown-sleeps"
    rows_handed_out: dict[int, int] = {}  # by process: a forked worker inherits its parent's
    image_bytes = hf_loader.data._image_bytes

    def count_row(value):
        rows_handed_out[os.getpid()] = rows_handed_out.get(os.getpid(), 0) + 1
        return image_bytes(value)

    def record_sleep(seconds):
        with sleeps.open("a") as out:
            out.write(
                f"pid {os.getpid()}: {rows_handed_out.get(os.getpid(), 0)} rows before the sleep\n"
            )

    monkeypatch.setattr(hf_loader.data, "_image_bytes", count_row)
    # The module's own name for `time` (its only use is this sleep), not `time.sleep` itself.
    monkeypatch.setattr(
        datasets.iterable_dataset, "time", types.SimpleNamespace(sleep=record_sleep)
    )
    code, doc = run_json(capsys, DATASET)
    code2 = main([DATASET, "--json", "--batches", "2", "--batch-size", "3", "--workers", "2"])
    doc2 = json.loads(capsys.readouterr().out)
    assert code == code2 == 0
    assert doc["loading"]["batches"] == doc2["loading"]["batches"] == 2
    recorded = sleeps.read_text().splitlines()
    assert recorded, "no shutdown sleep was recorded: datasets no longer sleeps there?"
    assert [line for line in recorded if ": 0 rows" in line] == [], recorded


# --------------------------------------------- item 10: the warning names the broken copy


def test_fallback_to_stream_is_ready_with_a_warning_naming_the_broken_copy(both, tmp_path):
    shard = arrow_dir(both) / "imagenet-1k-train-00001-of-00002.arrow"
    shard.write_bytes(shard.read_bytes()[:-100])
    report_file = tmp_path / "report.json"
    code, doc, _ = cache_test(both, *SMALL, "--workers", "0", "--report", str(report_file))
    assert code == 0 and doc["verdict"] == "ready_with_warnings"
    assert doc["resolution"]["mode"] == "streaming"
    stored = json.loads(report_file.read_text())
    assert stored["message"].startswith("ready, with a warning")
    assert str(arrow_dir(both)) in stored["message"]
