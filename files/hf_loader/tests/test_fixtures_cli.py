"""`python -m hf_loader.fixtures`: the one cache builder the lab and the GPU host check run."""

from __future__ import annotations

import subprocess
import sys

DATASET = "acme/fixture-cli"


def test_the_command_builds_both_caches_in_the_shape_asked(tmp_path):
    root = tmp_path / "cache"
    build = [sys.executable, "-m", "hf_loader.fixtures", str(root), DATASET, "--train", "6"]
    build += ["--val", "3", "--classes", "2", "--size", "40x32", "--shards", "3"]
    proc = subprocess.run(
        [*build, "--arrow-shard-bytes", "parquet"], capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.startswith(f"cache written {root}")
    snapshots = list((root / "hub").glob("datasets--acme--fixture-cli/snapshots/*/data"))
    assert len(snapshots) == 1
    shards = sorted(path.name for path in snapshots[0].iterdir())
    assert len(shards) == 6 and shards[0] == "train-00000-of-00003.parquet"
    # Arrow files cut at about a train parquet shard's size: more than one for train.
    assert len(list((root / "datasets").rglob("fixture-cli-train-*.arrow"))) > 1
    assert not list((root / "datasets").glob("*.lock"))


def test_a_size_that_is_not_width_x_height_is_refused(tmp_path):
    build = [sys.executable, "-m", "hf_loader.fixtures", str(tmp_path), DATASET]
    proc = subprocess.run(
        [*build, "--train", "2", "--val", "1", "--size", "40"], capture_output=True, text=True
    )
    assert proc.returncode == 2 and "WIDTHxHEIGHT" in proc.stderr
