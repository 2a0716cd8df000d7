"""hf-cache-seed with real rsync on real caches written by `datasets`.

The upstream is a local folder (what an NFS export or a host's cache root looks like to
rsync); over SSH only the rsync source prefix differs, which the lab's seed runs check.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from test_manifest import flip_byte

from hf_loader import manifest as mf
from hf_loader import seed as sd
from hf_loader.cachemanifest import main as manifest_main
from hf_loader.cacheseed import main

pytestmark = pytest.mark.skipif(shutil.which("rsync") is None, reason="needs rsync")


@pytest.fixture
def manifest(both, tmp_path, capsys) -> Path:
    out = tmp_path / "manifests" / "imagenet.json"
    out.parent.mkdir()
    assert manifest_main(["write", "ILSVRC/imagenet-1k", "-o", str(out), "--all-copies"]) == 0
    capsys.readouterr()
    return out


def seed_cli(capsys, *args: str) -> tuple[int, dict]:
    code = main([*args, "--json"])
    return code, json.loads(capsys.readouterr().out)


def pull_cli(capsys, manifest: Path, root: Path, upstream: str, *extra: str) -> tuple[int, dict]:
    """hf-cache-seed pull --manifest MANIFEST --root ROOT --from UPSTREAM EXTRA... --json"""
    return seed_cli(
        capsys, "pull", "--manifest", str(manifest), "--root", str(root), "--from", upstream, *extra
    )


def copy_of(root: Path, doc: dict) -> dict[str, bytes | str]:
    """The manifest's files' bytes and symlinks' targets under root (what a copy is)."""
    out: dict[str, bytes | str] = {}
    for entry in doc["entries"]:
        p = root / entry["path"]
        out[entry["path"]] = os.readlink(p) if entry["type"] == "symlink" else p.read_bytes()
    return out


def test_pull_from_a_complete_source_then_publish_read_only(both, manifest, tmp_path, capsys):
    doc = mf.load_manifest(manifest)
    target = tmp_path / "target"
    (target / "datasets").mkdir(parents=True)
    code, out = seed_cli(capsys, "status", "--manifest", str(manifest), "--root", str(target))
    assert code == 4 and not out["ok"]
    assert {m["kind"] for m in out["verify"]["mismatches"]} == {"missing"}

    code, out = pull_cli(capsys, manifest, target, f"{both}/")
    assert code == 0, out
    assert out["result"]["files_transferred"] == doc["totals"]["files"]
    assert sd.SeedRoot(target).read_state().state == "verified"
    # Nothing published yet: the root still has no copy.
    assert not (target / doc["roots"][0]).exists()

    code, out = seed_cli(capsys, "publish", "--manifest", str(manifest), "--root", str(target))
    assert code == 0 and sorted(out["published"]) == sorted(doc["roots"])
    assert copy_of(target, doc) == copy_of(both, doc)
    for top in doc["roots"]:
        for dirpath, dirs, files in os.walk(target / top):
            for name in dirs:
                assert os.lstat(Path(dirpath, name)).st_mode & 0o777 == 0o755
            for name in files:
                p = Path(dirpath, name)
                if not p.is_symlink():
                    assert p.stat().st_mode & 0o777 == 0o644, p
    assert not (target / ".hf-seed" / "staging").exists()
    code, out = seed_cli(
        capsys, "status", "--manifest", str(manifest), "--root", str(target), "--record"
    )
    assert code == 0 and out["ok"] and not out["recorded"]  # publish recorded it already
    assert out["state"]["state"] == "published" and out["state"]["where"] == "."


def test_status_records_a_copy_that_was_already_there(both, manifest, capsys):
    args = ("status", "--manifest", str(manifest), "--root", str(both), "--record")
    code, out = seed_cli(capsys, *args)
    assert code == 0 and out["recorded"]
    code, out = seed_cli(capsys, *args)
    assert code == 0 and not out["recorded"]  # a rerun changes nothing


def test_downstream_pulls_from_an_upstream_that_is_still_receiving(both, manifest, tmp_path):
    """Pipelined fan-out: files the upstream completed are copied on while it receives."""
    doc = mf.load_manifest(manifest)
    upstream, downstream = sd.SeedRoot(tmp_path / "up"), sd.SeedRoot(tmp_path / "down")
    upstream.root.mkdir()
    downstream.root.mkdir()
    upstream.prepare(doc)
    files = [e["path"] for e in doc["entries"]]
    half = len(files) // 2

    def copy(paths):
        for rel in paths:
            dst = upstream.staging / rel
            dst.parent.mkdir(parents=True, exist_ok=True)
            src = both / rel
            if src.is_symlink():
                os.symlink(os.readlink(src), dst)
            else:
                tmp = dst.with_name("." + dst.name + ".tmp")
                shutil.copy2(src, tmp)
                tmp.rename(dst)  # complete files only, as rsync leaves them

    copy(files[:half])
    seen_passes = []

    def upstream_finishes():
        while not seen_passes:
            time.sleep(0.05)
        copy(files[half:])
        assert sd.finish(upstream, doc).ok

    finisher = threading.Thread(target=upstream_finishes)
    finisher.start()
    result = sd.pull(
        downstream,
        doc,
        sd.Upstream(f"{upstream.root}/"),
        poll=0.2,
        log=seen_passes.append,
    )
    finisher.join()
    assert result.passes >= 2
    assert downstream.read_state().state == "verified"
    assert downstream.verify_staging(doc, deep=True).ok


def test_flipped_byte_is_named_and_only_that_file_is_copied_again(both, manifest, tmp_path, capsys):
    doc = mf.load_manifest(manifest)
    source = tmp_path / "source"
    shutil.copytree(both, source, symlinks=True)
    arrow = next(e["path"] for e in doc["entries"] if e["path"].endswith(".arrow"))
    flip_byte(both / arrow)
    bad_inode = (both / arrow).stat().st_ino

    code, out = seed_cli(capsys, "status", "--manifest", str(manifest), "--root", str(both))
    assert code == 0  # sizes match: only --deep reads the bytes
    code, out = seed_cli(
        capsys, "status", "--manifest", str(manifest), "--root", str(both), "--deep"
    )
    assert code == 4
    assert [(m["path"], m["kind"]) for m in out["verify"]["mismatches"]] == [(arrow, "sha256")]

    code, out = pull_cli(capsys, manifest, both, f"{source}/", "--deep")
    assert code == 0, out
    assert out["result"]["files_transferred"] == 1
    assert (both / arrow).stat().st_ino == bad_inode  # the published file was never written
    code, out = seed_cli(capsys, "publish", "--manifest", str(manifest), "--root", str(both))
    assert code == 0
    assert mf.verify_manifest(doc, mf.CacheRoots.under(both), deep=True).ok


def test_publish_keeps_what_else_the_dataset_folder_held(both, manifest, tmp_path, capsys):
    """Replacing a folder hard-links it into staging first: another config stays, and only
    the file that differs is transferred."""
    doc = mf.load_manifest(manifest)
    source = tmp_path / "source"
    shutil.copytree(both, source, symlinks=True)
    arrow_top = next(t for t in doc["roots"] if t.startswith("datasets/"))
    other = both / arrow_top / "other-config" / "0.0.0" / "x" / "data.arrow"
    other.parent.mkdir(parents=True)
    other.write_bytes(b"another config's table")
    truncated = next(e for e in doc["entries"] if e["path"].endswith(".arrow"))
    with open(both / truncated["path"], "r+b") as f:
        f.truncate(truncated["size"] // 2)

    code, out = pull_cli(capsys, manifest, both, f"{source}/")
    assert code == 0, out
    assert out["result"]["files_transferred"] == 1
    assert seed_cli(capsys, "publish", "--manifest", str(manifest), "--root", str(both))[0] == 0
    assert other.read_bytes() == b"another config's table"
    assert mf.verify_manifest(doc, mf.CacheRoots.under(both), deep=True).ok


def test_an_upstream_that_failed_or_holds_another_copy_is_refused(both, manifest, tmp_path, capsys):
    doc = mf.load_manifest(manifest)
    upstream = sd.SeedRoot(tmp_path / "up")
    upstream.root.mkdir()
    target = tmp_path / "target"
    target.mkdir()
    upstream.write_state("failed", sd.manifest_id(doc), "disk full")
    code, out = pull_cli(capsys, manifest, target, f"{upstream.root}/")
    assert code == 10 and "disk full" in out["error"]["message"]
    upstream.write_state("verified", "0123456789abcdef")
    code, out = pull_cli(capsys, manifest, target, f"{upstream.root}/")
    assert code == 10 and "another copy" in out["error"]["message"]
    assert sd.SeedRoot(target).read_state().state == "failed"


def test_publish_without_a_verified_copy_is_refused(manifest, tmp_path, capsys):
    code, out = seed_cli(capsys, "publish", "--manifest", str(manifest), "--root", str(tmp_path))
    assert code == 10 and "no verified copy" in out["error"]["message"]


def test_an_unreachable_upstream_fails_with_exit_9(manifest, tmp_path, capsys):
    (tmp_path / "t").mkdir()
    code, out = pull_cli(
        capsys, manifest, tmp_path / "t", f"{tmp_path}/does-not-exist/", "--attempts", "1"
    )
    assert code == 9, out
    assert out["error"]["kind"] == "transfer"


def test_killed_mid_file_resumes_and_verifies(manifest, tmp_path, capsys):
    """SIGINT to the pull in the middle of a file: the partial file is kept outside staging;
    the rerun resumes from it and the copy verifies byte for byte."""
    doc = mf.load_manifest(manifest)
    source, target = tmp_path / "source", tmp_path / "target"
    target.mkdir()
    big = source / "datasets" / "big___one" / "blob.bin"
    big.parent.mkdir(parents=True)
    big.write_bytes(os.urandom(1 << 20))
    entry = {"path": "datasets/big___one/blob.bin", "type": "file", "size": 1 << 20}
    entry.update(sha256=hashlib.sha256(big.read_bytes()).hexdigest(), sha256_from="content")
    totals = {"entries": 1, "files": 1, "symlinks": 0, "bytes": 1 << 20, "hashed_files": 1}
    one = {**doc, "entries": [entry], "totals": totals, "roots": ["datasets/big___one"]}
    one_file = tmp_path / "one.json"
    one_file.write_text(json.dumps(one))
    args = ["pull", "--manifest", str(one_file), "--root", str(target), "--from", f"{source}/"]
    proc = subprocess.Popen(
        [sys.executable, "-m", "hf_loader.cacheseed", *args, "--bwlimit", "64"],
        start_new_session=True,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    time.sleep(3)  # about 192 KiB of the 1 MiB sent
    assert proc.poll() is None, proc.communicate()
    os.killpg(proc.pid, signal.SIGINT)  # as Ctrl-C: rsync keeps the partial file
    proc.communicate(timeout=30)
    staging = target / ".hf-seed" / "staging"
    kept = list(staging.rglob(".hf-seed-partial/*"))
    assert len(kept) == 1 and 0 < kept[0].stat().st_size < 1 << 20, kept
    assert not (staging / entry["path"]).exists()  # a downstream never sees half a file

    code, out = seed_cli(capsys, *args)
    assert code == 0, out
    assert mf.verify_manifest(one, mf.CacheRoots.under(staging), deep=True).ok
    assert not list(staging.rglob(".hf-seed-partial"))  # removed once the file is complete


def test_console_script_is_declared_and_usage_is_exit_2(capsys):
    pyproject = (Path(__file__).resolve().parents[1] / "pyproject.toml").read_text()
    scripts = pyproject.split("[project.scripts]")[1].split("\n[")[0]
    assert 'hf-cache-seed = "hf_loader.cacheseed:main"' in scripts
    assert main(["pull", "--root", "/tmp"]) == 2  # --manifest and --from are required
    assert "--manifest" in capsys.readouterr().err
