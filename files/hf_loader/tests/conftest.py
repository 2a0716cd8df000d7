"""Shared fixtures: small real caches built once per session, copied per test."""

from __future__ import annotations

import os
import shutil
import socket
import tempfile
from pathlib import Path

import pytest

DATASET = "ILSVRC/imagenet-1k"
# test_gpu.py's tests need CUDA. Unless the marker expression (-m) names them they are
# deselected, not skipped: the CPU run (make loader-test) counts them apart and its skip policy
# stays empty. scripts/gpu-host-check.sh runs them with -m gpu on a GPU host; run there without
# CUDA, they fail.
GPU_MARKER = "gpu"

# Offline before anything imports datasets/huggingface_hub in this process.
os.environ["HF_DATASETS_OFFLINE"] = "1"
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ.setdefault("HF_HOME", tempfile.mkdtemp(prefix="hf-loader-empty-home-"))


@pytest.fixture(scope="session")
def built(tmp_path_factory):
    """One hub snapshot + its by-name Arrow cache (sharded) + a corrupt-images snapshot."""
    from hf_loader import fixtures

    root = tmp_path_factory.mktemp("built")
    cache = fixtures.build_cache(
        root, DATASET, n_train=12, n_val=6, classes=3, shards=2, arrow_shard_bytes=5000
    )
    bad = {
        s: ([b"\xff\xd8 not really a jpeg"] * len(imgs), labels)
        for s, (imgs, labels) in cache.splits.items()
    }
    bad_snap = fixtures.make_hub_snapshot(
        root / "badhub", "acme/broken-images", bad, cache.names, shards=1
    )
    return {
        "root": root,
        "snapshot": cache.snapshot,
        "arrow": cache.arrow,
        "bad_snapshot": bad_snap,
        "names": cache.names,
    }


def _copy(src: Path, dst: Path) -> None:
    shutil.copytree(src, dst, symlinks=True)


@pytest.fixture
def home(tmp_path, monkeypatch):
    """An HF_HOME with empty datasets/ and hub/ folders, set in the environment."""
    h = tmp_path / "hf"
    (h / "datasets").mkdir(parents=True)
    (h / "hub").mkdir()
    for var in ("HF_DATASETS_CACHE", "HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("HF_HOME", str(h))
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    return h


def _install(built, home, what):
    if "hub" in what:
        _copy(built["root"] / "hub", home / "hub_tmp")
        shutil.rmtree(home / "hub")
        (home / "hub_tmp").rename(home / "hub")
    if "arrow" in what:
        shutil.rmtree(home / "datasets")
        _copy(built["root"] / "datasets", home / "datasets")
    if "badhub" in what:
        for d in (built["root"] / "badhub").iterdir():
            _copy(d, home / "hub" / d.name)


@pytest.fixture
def hub_only(built, home):
    _install(built, home, {"hub"})
    return home


@pytest.fixture
def arrow_only(built, home):
    _install(built, home, {"arrow"})
    return home


@pytest.fixture
def both(built, home):
    _install(built, home, {"hub", "arrow"})
    return home


@pytest.fixture
def bad_images(built, home):
    _install(built, home, {"badhub"})
    return home


def arrow_dir(home: Path) -> Path:
    (d,) = [
        p
        for p in (home / "datasets" / "ILSVRC___imagenet-1k" / "default" / "0.0.0").iterdir()
        if p.is_dir() and not p.name.endswith(".incomplete")
    ]
    return d


def snapshot_dir(home: Path) -> Path:
    (d,) = (home / "hub" / "datasets--ILSVRC--imagenet-1k" / "snapshots").iterdir()
    return d


class NetworkAttempt(AssertionError):
    pass


@pytest.fixture
def no_network(monkeypatch):
    """Fail on any IP connection or name lookup (Unix sockets stay allowed for workers)."""
    attempts = []
    real_connect = socket.socket.connect
    real_connect_ex = socket.socket.connect_ex

    def guard(self, address, real):
        if self.family in (socket.AF_INET, socket.AF_INET6):
            attempts.append(address)
            raise NetworkAttempt(f"network connection attempted to {address!r}")
        return real(self, address)

    monkeypatch.setattr(socket.socket, "connect", lambda s, a: guard(s, a, real_connect))
    monkeypatch.setattr(socket.socket, "connect_ex", lambda s, a: guard(s, a, real_connect_ex))

    def no_lookup(*a, **k):
        attempts.append(a[:2])
        raise NetworkAttempt(f"name lookup attempted: {a[:2]!r}")

    monkeypatch.setattr(socket, "getaddrinfo", no_lookup)
    monkeypatch.setattr(socket, "gethostbyname", no_lookup)
    return attempts


def pytest_configure(config):
    config.addinivalue_line(
        "markers", f"{GPU_MARKER}: needs CUDA; deselected unless -m names it (gpu-host-check.sh)"
    )


def pytest_collection_modifyitems(config, items):
    if GPU_MARKER in (config.getoption("markexpr") or ""):
        return  # -m gpu, -m "not gpu": the expression decides
    gpu = [item for item in items if item.get_closest_marker(GPU_MARKER)]
    if gpu:
        config.hook.pytest_deselected(items=gpu)
        items[:] = [item for item in items if not item.get_closest_marker(GPU_MARKER)]
