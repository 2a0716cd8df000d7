"""Resolution and completeness checks on real caches written by datasets/huggingface_hub."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
import warnings

import pytest
from conftest import DATASET, arrow_dir, snapshot_dir

from hf_loader import fixtures
from hf_loader.check import arrow_split_files, check_arrow_dir, check_hub_snapshot
from hf_loader.cli.exitcodes import ExitCode
from hf_loader.errors import IncompleteCacheError, NotCachedError
from hf_loader.resolve import ConversionSkippedWarning, load_split, resolve


def test_fixture_layout_is_what_by_name_offline_loading_finds(arrow_only, no_network):
    """The Arrow fixture is the layout plain `datasets` finds by name offline."""
    import datasets

    # cache_dir: datasets read HF_HOME when first imported in this process
    ds = datasets.load_dataset(DATASET, split="train", cache_dir=str(arrow_only / "datasets"))
    assert len(ds) == 12
    assert ds.features["label"].names == ["class_0", "class_1", "class_2"]
    assert not no_network


def test_file_naming_matches_datasets():
    from datasets.naming import filenames_for_dataset_split

    for name in ("imagenet-1k", "ImageNet1K", "cifar10"):
        for lengths in (None, [5], [5, 5, 2]):
            ours = [
                str(p)
                for p in arrow_split_files(__import__("pathlib").Path("/c"), name, "train", lengths)
            ]
            assert ours == filenames_for_dataset_split("/c", name, "train", "arrow", lengths)


def test_arrow_only(arrow_only, no_network):
    res = resolve(DATASET)
    assert (res.source, res.mode, res.config) == ("arrow", "arrow", "default")
    assert res.path == str(arrow_dir(arrow_only))
    assert len(res.report.splits["train"].files) == 2  # sharded by max_shard_size
    ds = load_split(res, "train")
    assert len(ds) == 12
    assert ds.features["label"].names == ["class_0", "class_1", "class_2"]
    assert sorted(ds["label"]) == sorted([i % 3 for i in range(12)])
    assert not no_network


def test_hub_only_streams(hub_only, no_network):
    res = resolve(DATASET)
    assert (res.source, res.mode) == ("hub", "streaming")
    assert res.path == str(snapshot_dir(hub_only))
    rows = list(load_split(res, "validation"))
    assert len(rows) == 6
    assert {r["label"] for r in rows} == {0, 1, 2}
    assert not list((hub_only / "datasets").iterdir()), "streaming must not write an Arrow copy"
    assert not no_network


def test_both_prefers_arrow(both, no_network):
    res = resolve(DATASET)
    assert res.source == "arrow"
    assert res.skipped == []
    assert not no_network


def test_wrong_id_spelling_names_near_miss(both):
    with pytest.raises(NotCachedError) as ei:
        resolve("imagenet-1k")
    err = ei.value
    assert err.exit_code == ExitCode.NOT_CACHED
    assert any("datasets/imagenet-1k" in p for p in err.looked)
    assert any("datasets--imagenet-1k" in p for p in err.looked)
    assert any("'ILSVRC/imagenet-1k'" in m for m in err.near_misses)
    assert "ILSVRC/imagenet-1k" in err.remedy


def test_empty_cache_folder(home):
    with pytest.raises(NotCachedError) as ei:
        resolve(DATASET)
    assert ei.value.near_misses == []
    assert len(ei.value.looked) == 2
    assert "HF_HOME" in ei.value.remedy or "HF_DATASETS_CACHE" in ei.value.remedy


def test_missing_arrow_shard_falls_back_to_hub(both):
    victim = arrow_dir(both) / "imagenet-1k-train-00001-of-00002.arrow"
    victim.unlink()
    res = resolve(DATASET)
    assert res.source == "hub"
    assert any(str(victim) in s.reason for s in res.skipped)


def test_missing_arrow_shard_only_copy(arrow_only):
    victim = arrow_dir(arrow_only) / "imagenet-1k-validation-00000-of-00002.arrow"
    victim.unlink()
    with pytest.raises(IncompleteCacheError) as ei:
        resolve(DATASET)
    assert ei.value.exit_code == ExitCode.INCOMPLETE
    assert any(str(victim) in str(p) and "missing" in str(p) for p in ei.value.problems)


def test_truncated_arrow_shard(arrow_only):
    victim = arrow_dir(arrow_only) / "imagenet-1k-train-00000-of-00002.arrow"
    data = victim.read_bytes()
    victim.write_bytes(data[: len(data) // 2])
    rep = check_arrow_dir(arrow_dir(arrow_only))
    assert any("truncated" in p.message for p in rep.problems)


def test_missing_hub_shard(hub_only):
    victim = snapshot_dir(hub_only) / "data" / "train-00001-of-00002.parquet"
    victim.unlink()
    with pytest.raises(IncompleteCacheError) as ei:
        resolve(DATASET)
    text = str(ei.value)
    assert "shard 1 of 2 of split 'train' missing" in text
    assert "download_size" in text


def test_missing_dataset_info_json(arrow_only):
    (arrow_dir(arrow_only) / "dataset_info.json").unlink()
    with pytest.raises(IncompleteCacheError) as ei:
        resolve(DATASET)
    assert any("dataset_info.json" in str(p) for p in ei.value.problems)


def test_stale_incomplete_beside_complete_copy(built, arrow_only, no_network):
    """A prepare killed mid-way leaves HASH.incomplete (newer); plain datasets picks it."""
    inc = fixtures.interrupted_prepare(
        arrow_only / "datasets", DATASET, built["snapshot"], "f" * 40
    )
    future = time.time() + 60
    os.utime(inc, (future, future))
    # what the loader fixes: the library's by-name fallback takes the newest folder
    code = (
        f"import datasets\nds = datasets.load_dataset({DATASET!r}, split='train')\nprint(len(ds))\n"
    )
    plain = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        env=dict(os.environ),
        timeout=120,
    )
    assert plain.returncode != 0 or plain.stdout.strip() != "12", plain.stdout
    print("plain datasets:", plain.returncode, plain.stderr.strip().splitlines()[-1:])
    res = resolve(DATASET)
    assert res.path == str(arrow_dir(arrow_only))
    assert any(s.path == str(inc) and "incomplete" in s.reason for s in res.skipped)
    assert len(load_split(res, "train")) == 12
    assert not no_network


def test_only_incomplete_copy(built, home):
    fixtures.interrupted_prepare(home / "datasets", DATASET, built["snapshot"], "e" * 40)
    with pytest.raises(IncompleteCacheError) as ei:
        resolve(DATASET)
    assert "incomplete" in str(ei.value)


def test_dangling_blob_symlink(hub_only):
    snap = snapshot_dir(hub_only)
    link = snap / "data" / "validation-00000-of-00002.parquet"
    os.unlink(os.path.join(link.parent, os.readlink(link)))  # the blob goes missing
    with pytest.raises(IncompleteCacheError) as ei:
        resolve(DATASET)
    assert any(str(link) in str(p) and "dangling symlink" in str(p) for p in ei.value.problems)


def test_deep_counts_rows_and_hashes_blobs(both):
    rep = check_arrow_dir(arrow_dir(both), deep=True)
    assert rep.ok and rep.splits["train"].rows_found == 12
    snap = snapshot_dir(both)
    rep = check_hub_snapshot(snap, deep=True)
    assert rep.ok and rep.splits["validation"].rows_found == 6
    # flip one byte inside a blob: sizes and end markers still fine, only the hash catches it
    link = snap / "data" / "train-00000-of-00002.parquet"
    blob = os.path.join(link.parent, os.readlink(link))
    with open(blob, "rb") as f:
        data = bytearray(f.read())
    data[len(data) // 2] ^= 0xFF
    with open(blob, "wb") as f:
        f.write(data)
    assert check_hub_snapshot(snap).ok
    deep = check_hub_snapshot(snap, deep=True)
    assert any("sha256" in p.message for p in deep.problems)


def test_convert_when_allowed_writes_by_name_arrow(hub_only, no_network):
    import datasets

    res = resolve(DATASET, allow_convert=True)
    assert res.mode == "converted" and res.source == "arrow"
    assert len(load_split(res, "train")) == 12
    # plain datasets now finds it by name, offline
    cache = str(hub_only / "datasets")
    assert len(datasets.load_dataset(DATASET, split="validation", cache_dir=cache)) == 6
    assert resolve(DATASET).mode == "arrow"
    assert not no_network


def test_convert_skipped_without_space(hub_only):
    with warnings.catch_warnings(record=True) as w:
        warnings.simplefilter("always")
        res = resolve(DATASET, allow_convert=True, convert_headroom=1e15)
    assert res.mode == "streaming"
    assert any(issubclass(x.category, ConversionSkippedWarning) for x in w)
    assert not list((hub_only / "datasets").iterdir())


def test_revision_selects_snapshot(hub_only):
    sha = snapshot_dir(hub_only).name
    assert resolve(DATASET, revision=sha).path.endswith(sha)
    with pytest.raises(NotCachedError):
        resolve(DATASET, revision="0" * 40)


def test_user_offline_0_is_forced_on_in_a_fresh_process(hub_only):
    """HF_DATASETS_OFFLINE=0 in the user's env: warned, forced on, loads with no network.

    Every connection and name lookup is refused, as on a host without a network, and
    counted: the count, not the time the load took, says whether the network was tried."""
    code = r"""
import socket, warnings
attempts = []
def refuse(*a, **k):
    attempts.append(a[1:2] or a[:1])
    raise OSError(101, "Network is unreachable")
socket.socket.connect = refuse
socket.getaddrinfo = refuse
warnings.simplefilter("always")
with warnings.catch_warnings(record=True) as w:
    from hf_loader.resolve import resolve, load_split
    res = resolve("ILSVRC/imagenet-1k")
import datasets, huggingface_hub.constants as hc
assert datasets.config.HF_DATASETS_OFFLINE and hc.HF_HUB_OFFLINE
n = sum(1 for _ in load_split(res, "train"))
print("warned", any(x.category.__name__ == "OfflineForcedWarning" for x in w), "rows", n,
      "network attempts", attempts)
"""
    env = dict(os.environ, HF_DATASETS_OFFLINE="0", HF_HUB_OFFLINE="0")
    p = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120
    )
    assert p.returncode == 0, p.stderr[-3000:]
    assert p.stdout.strip() == "warned True rows 12 network attempts []"


def test_stale_incomplete_only_copy_is_not_reported_as_not_cached_elsewhere(built, home):
    # an empty id folder (nothing complete, nothing incomplete) is "not cached"
    (home / "datasets" / "ILSVRC___imagenet-1k").mkdir()
    with pytest.raises(NotCachedError):
        resolve(DATASET)
    shutil.rmtree(home / "datasets" / "ILSVRC___imagenet-1k")


def test_unknown_config_lists_what_is_cached(both):
    with pytest.raises(NotCachedError) as ei:
        resolve(DATASET, config="full-size")
    assert any("has configs default, not 'full-size'" in p for p in ei.value.looked)
    assert resolve(DATASET, config="default").source == "arrow"


def test_snapshot_without_an_unused_split_streams_the_others(hub_only, no_network):
    """A snapshot fetched with allow_patterns (no validation files): plain `datasets`
    refuses the folder; the loader streams train from the checked files, card features."""
    import datasets

    snap = snapshot_dir(hub_only)
    for f in (snap / "data").glob("validation-*"):
        f.unlink()
    with pytest.raises(ValueError):
        datasets.load_dataset(str(snap), split="train", streaming=True)
    res = resolve(DATASET)
    assert res.report.missing_splits == ["validation"] and res.report.ok
    assert any("not downloaded" in n for n in res.notes)
    train = load_split(res, "train")
    assert train.features["label"].names == ["class_0", "class_1", "class_2"]
    assert len(list(train)) == 12
    with pytest.raises(NotCachedError, match="not in the snapshot"):
        load_split(res, "validation")
    assert not no_network
