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
import stat
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from test_cache_states import needs_root_namespaces, tree_state
from test_hostile_caches import run_test
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
    assert code == 10 and "holds no copy of this manifest" in out["error"]["message"]


def test_an_unreachable_upstream_fails_with_exit_9(manifest, tmp_path, capsys):
    (tmp_path / "t").mkdir()
    code, out = pull_cli(
        capsys, manifest, tmp_path / "t", f"{tmp_path}/does-not-exist/", "--attempts", "1"
    )
    assert code == 9, out
    assert out["error"]["kind"] == "transfer"


def wait_for_partial_file(root: Path, proc: subprocess.Popen, timeout: float = 60) -> None:
    """Until rsync has written part of a file (its temp name in the file's folder, at 64 KiB/s
    a 1 MiB file takes 16 s): the stop then lands in the middle of a transfer on any machine,
    however loaded, rather than after a guessed time."""
    staging = root / ".hf-seed" / "staging"
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert proc.poll() is None, proc.communicate()
        if any(p.is_file() and p.stat().st_size > 0 for p in staging.rglob(".blob.bin.*")):
            return
        time.sleep(0.05)
    raise AssertionError(f"rsync wrote nothing under {staging} in {timeout} s")


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
    wait_for_partial_file(target, proc)
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
    # The installed console script itself (the venv's, beside this Python) answers the same.
    done = subprocess.run(
        [str(Path(sys.executable).parent / "hf-cache-seed"), "pull", "--root", "/tmp"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 2 and "--manifest" in done.stderr, (done.stdout, done.stderr)


# ------------------------------------------------------------------ attacks (issue 27)

ATTACKER = 4242  # another account's uid: the training user, say


def modes(*paths: Path) -> dict[str, tuple[int, int, int]]:
    return {
        str(p): (os.lstat(p).st_mode & 0o7777, os.lstat(p).st_uid, os.lstat(p).st_gid)
        for p in paths
    }


@pytest.fixture
def published(both, manifest, tmp_path, capsys) -> Path:
    """A root holding a published copy (pulled from `both`, then published)."""
    target = tmp_path / "target"
    target.mkdir()
    assert pull_cli(capsys, manifest, target, f"{both}/")[0] == 0
    assert seed_cli(capsys, "publish", "--manifest", str(manifest), "--root", str(target))[0] == 0
    return target


@pytest.fixture
def secrets(tmp_path) -> list[Path]:
    """What an attacker wants root to open up: a 0700 folder holding a 0600 key."""
    folder = tmp_path / "elsewhere" / "secret"
    folder.mkdir(parents=True, mode=0o700)
    key = folder / "id_ed25519"
    key.write_text("PRIVATE")
    key.chmod(0o600)
    return [folder, key]


def plant_staging(seed: sd.SeedRoot, doc: dict, secret: Path, owner: int) -> None:
    """An attacker's seeding folder: state.json says verified, and each dataset folder of
    staging is a symlink to the secret folder (the review's attack)."""
    seed.dir.mkdir(exist_ok=True)
    (seed.dir / "state.json").write_text(
        json.dumps(
            {"state": "verified", "manifest_id": sd.manifest_id(doc), "where": ".hf-seed/staging"}
        )
    )
    for top in doc["roots"]:
        link = seed.staging / top
        link.parent.mkdir(parents=True, exist_ok=True)
        link.symlink_to(secret)
    for dirpath, dirs, files in os.walk(seed.dir):
        for name in [*dirs, *files]:
            os.lchown(Path(dirpath, name), owner, owner)
    os.lchown(seed.dir, owner, owner)


@pytest.mark.parametrize("how", ["another_owner", "group_writable", "symlinked_folder"])
def test_planted_seeding_folder_never_steers_publish(
    how, published, manifest, secrets, tmp_path, capsys
):
    """The review's attack: the training account plants R/.hf-seed (state.json `verified`,
    a symlink in staging). publish refuses before touching anything: the secret keeps its
    modes, no symlink is published and the verified copy stays."""
    doc = mf.load_manifest(manifest)
    seed = sd.SeedRoot(published)
    shutil.rmtree(seed.dir)
    if how == "symlinked_folder":  # R/.hf-seed -> a folder of the attacker's
        theirs = sd.SeedRoot(tmp_path / "attacker")
        theirs.root.mkdir()
        plant_staging(theirs, doc, secrets[0], ATTACKER)
        seed.dir.symlink_to(theirs.dir)
    else:
        plant_staging(seed, doc, secrets[0], ATTACKER if how == "another_owner" else 0)
        if how == "group_writable":
            seed.dir.chmod(0o775)
    before = modes(*secrets)
    code, out = seed_cli(capsys, "publish", "--manifest", str(manifest), "--root", str(published))
    assert code == 5, out
    assert out["error"]["kind"] == "unsafe_path" and out["error"]["path"] == str(seed.dir)
    assert "rm -rf" in out["error"]["remedy"]
    assert modes(*secrets) == before
    for top in doc["roots"]:
        assert not (published / top).is_symlink()
    assert mf.verify_manifest(doc, mf.CacheRoots.under(published), deep=True).ok
    # prepare, pull and status --record refuse it the same way
    for args in (["prepare"], ["status", "--record"], ["pull", "--from", f"{published}/"]):
        code, out = seed_cli(
            capsys, args[0], "--manifest", str(manifest), "--root", str(published), *args[1:]
        )
        assert code == 5 and out["error"]["kind"] == "unsafe_path", (args, out)
    assert modes(*secrets) == before


def test_cache_root_of_another_account_is_refused(manifest, tmp_path, capsys):
    root = tmp_path / "theirs"
    root.mkdir()
    os.chown(root, ATTACKER, ATTACKER)
    code, out = seed_cli(capsys, "prepare", "--manifest", str(manifest), "--root", str(root))
    assert code == 5 and out["error"]["path"] == str(root), out
    assert "chown root:root" in out["error"]["remedy"]
    assert not (root / ".hf-seed").exists()


@pytest.mark.parametrize("where", ["dataset_folder", "inside", "linked_subfolder"])
def test_symlinks_in_root_owned_staging_are_neither_followed_nor_published(
    where, both, manifest, secrets, tmp_path, capsys
):
    """Staging as a compromised peer could leave it (root's own folder): a dataset folder
    that is a symlink, a symlink leading out, a linked folder holding a file of the
    manifest. publish refuses without chmod/chown through the link; the published copy
    stays, and the link is gone from staging."""
    doc = mf.load_manifest(manifest)
    target = tmp_path / "target"
    target.mkdir()
    assert pull_cli(capsys, manifest, target, f"{both}/")[0] == 0
    assert seed_cli(capsys, "publish", "--manifest", str(manifest), "--root", str(target))[0] == 0
    assert pull_cli(capsys, manifest, target, f"{both}/")[0] == 0  # staging verified again
    seed = sd.SeedRoot(target)
    hub_top = next(t for t in doc["roots"] if t.startswith("hub/"))
    arrow = next(e for e in doc["entries"] if e["path"].endswith(".arrow"))
    if where == "dataset_folder":
        shutil.rmtree(seed.staging / hub_top)
        (seed.staging / hub_top).symlink_to(secrets[0])
        bad = seed.staging / hub_top
    elif where == "inside":
        bad = seed.staging / hub_top / "evil"
        bad.symlink_to(secrets[0])
    else:  # the arrow file's folder replaced by a link to a folder holding the same file
        folder = (seed.staging / arrow["path"]).parent
        shutil.copy2(folder / Path(arrow["path"]).name, secrets[0] / Path(arrow["path"]).name)
        os.chmod(secrets[0] / Path(arrow["path"]).name, 0o600)
        secrets.append(secrets[0] / Path(arrow["path"]).name)
        shutil.rmtree(folder)
        folder.symlink_to(secrets[0])
        bad = folder
    before = modes(*secrets)
    published_before = copy_of(target, doc)
    code, out = seed_cli(capsys, "publish", "--manifest", str(manifest), "--root", str(target))
    assert code in (5, 10), out
    assert modes(*secrets) == before
    assert copy_of(target, doc) == published_before
    for top in doc["roots"]:
        assert not (target / top).is_symlink()
    assert not os.path.lexists(bad) or not bad.is_symlink()
    assert mf.verify_manifest(doc, mf.CacheRoots.under(target), deep=True).ok


def test_same_size_poisoned_file_from_an_upstream_is_refused(both, manifest, tmp_path, capsys):
    """A compromised peer sends a file of the right size with other bytes: the pull hashes
    what arrived, removes it, names the file and the peer (exit 10); another source then
    completes the copy."""
    doc = mf.load_manifest(manifest)
    poisoned = tmp_path / "poisoned"
    shutil.copytree(both, poisoned, symlinks=True)
    arrow = next(e["path"] for e in doc["entries"] if e["path"].endswith(".arrow"))
    flip_byte(poisoned / arrow)
    target = tmp_path / "target"
    target.mkdir()
    code, out = pull_cli(capsys, manifest, target, f"{poisoned}/", "--attempts", "1")
    assert code == 10, out
    assert arrow in out["error"]["message"] and str(poisoned) in out["error"]["message"]
    assert "sha256" in out["error"]["message"]
    assert not (target / ".hf-seed" / "staging" / arrow).exists()
    assert sd.SeedRoot(target).read_state().state == "failed"
    code, out = seed_cli(capsys, "publish", "--manifest", str(manifest), "--root", str(target))
    assert code == 10 and not (target / arrow).exists()
    code, out = pull_cli(capsys, manifest, target, f"{both}/")
    assert code == 0, out
    assert seed_cli(capsys, "publish", "--manifest", str(manifest), "--root", str(target))[0] == 0
    assert mf.verify_manifest(doc, mf.CacheRoots.under(target), deep=True).ok


def test_publish_hashes_every_file_itself(both, manifest, tmp_path, capsys):
    """A byte flipped in staging after the pull said `verified` (state.json is not
    trusted): publish names it, removes it from staging, publishes nothing; the next pull
    copies that one file again."""
    doc = mf.load_manifest(manifest)
    target = tmp_path / "target"
    target.mkdir()
    assert pull_cli(capsys, manifest, target, f"{both}/")[0] == 0
    assert sd.SeedRoot(target).read_state().state == "verified"
    blob = next(e["path"] for e in doc["entries"] if "/blobs/" in e["path"])
    flip_byte(target / ".hf-seed" / "staging" / blob)
    code, out = seed_cli(capsys, "publish", "--manifest", str(manifest), "--root", str(target))
    assert code == 10 and blob in out["error"]["message"] and "sha256" in out["error"]["message"], (
        out
    )
    assert not any((target / top).exists() for top in doc["roots"])
    assert not (target / ".hf-seed" / "staging" / blob).exists()
    code, out = pull_cli(capsys, manifest, target, f"{both}/")
    assert code == 0 and out["result"]["files_transferred"] == 1, out
    assert seed_cli(capsys, "publish", "--manifest", str(manifest), "--root", str(target))[0] == 0
    assert mf.verify_manifest(doc, mf.CacheRoots.under(target), deep=True).ok


@pytest.mark.parametrize("kind", ["fifo", "device"])
def test_devices_and_fifos_from_an_upstream_are_not_received(
    kind, both, manifest, tmp_path, capsys
):
    """An upstream serving a FIFO or a device node where a file of the manifest belongs: the
    receiver creates neither (rsync --no-devices --no-specials --no-super), the pull fails
    naming the missing file, and nothing special lands in staging."""
    doc = mf.load_manifest(manifest)
    upstream = tmp_path / "upstream"
    shutil.copytree(both, upstream, symlinks=True)
    arrow = next(e["path"] for e in doc["entries"] if e["path"].endswith(".arrow"))
    (upstream / arrow).unlink()
    if kind == "fifo":
        os.mkfifo(upstream / arrow)
    else:
        os.mknod(upstream / arrow, 0o666 | stat.S_IFCHR, os.makedev(1, 3))  # as /dev/null
    target = tmp_path / "target"
    target.mkdir()
    code, out = pull_cli(capsys, manifest, target, f"{upstream}/", "--attempts", "1")
    assert code == 9, out
    kinds = {
        stat.S_IFMT(os.lstat(Path(d, n)).st_mode)
        for d, dirs, files in os.walk(target)
        for n in [*dirs, *files]
    }
    specials = kinds - {stat.S_IFREG, stat.S_IFDIR, stat.S_IFLNK}
    assert specials == set()


CRASH_BETWEEN_RENAMES = """
import os, signal, sys
from hf_loader import seed as sd
from hf_loader.cacheseed import main
sd._exchange_in_one_step = lambda *a: False  # a filesystem without RENAME_EXCHANGE
real_rename, calls = os.rename, []
def rename(*a, **k):
    calls.append(a)
    if len(calls) == 2:  # the dataset folder set aside, the new one not yet in place
        os.kill(os.getpid(), signal.SIGKILL)
    return real_rename(*a, **k)
os.rename = rename
sys.exit(main(sys.argv[1:]))
"""


@pytest.mark.parametrize("then", ["status", "publish"])
def test_crash_between_the_fallbacks_two_renames_loses_no_folder(
    then, both, manifest, tmp_path, capsys
):
    """Publish replacing a dataset folder on a filesystem without renameat2's exchange,
    killed between its two renames: the folder is only set aside; the next status --record
    or publish puts it back, and the publish completes."""
    doc = mf.load_manifest(manifest)
    target = tmp_path / "target"
    target.mkdir()
    assert pull_cli(capsys, manifest, target, f"{both}/")[0] == 0
    assert seed_cli(capsys, "publish", "--manifest", str(manifest), "--root", str(target))[0] == 0
    flip_byte(target / next(e["path"] for e in doc["entries"] if "/blobs/" in e["path"]))
    assert pull_cli(capsys, manifest, target, f"{both}/", "--deep")[0] == 0
    args = ["publish", "--manifest", str(manifest), "--root", str(target), "--json"]
    crashed = subprocess.run(
        [sys.executable, "-c", CRASH_BETWEEN_RENAMES, *args], capture_output=True
    )
    assert crashed.returncode == -signal.SIGKILL, crashed
    hub_top = next(t for t in doc["roots"] if t.startswith("hub/"))  # published first
    assert not (target / hub_top).exists()
    assert (target / f"{hub_top}{sd.ASIDE_SUFFIX}").is_dir()
    if then == "status":
        code, out = seed_cli(
            capsys, "status", "--manifest", str(manifest), "--root", str(target), "--record"
        )
        assert out["recovered"] == [hub_top], out
        assert (target / hub_top).is_dir() and not (target / f"{hub_top}{sd.ASIDE_SUFFIX}").exists()
    code, out = seed_cli(capsys, "publish", "--manifest", str(manifest), "--root", str(target))
    assert code == 0, out
    assert not (target / f"{hub_top}{sd.ASIDE_SUFFIX}").exists()
    assert mf.verify_manifest(doc, mf.CacheRoots.under(target), deep=True).ok


def test_control_characters_in_a_manifest_stop_the_seed(manifest, tmp_path, capsys):
    doc = json.loads(manifest.read_text())
    doc["entries"][0]["path"] += "\nx"
    manifest.write_text(json.dumps(doc))
    (tmp_path / "t").mkdir()
    code, out = seed_cli(
        capsys, "prepare", "--manifest", str(manifest), "--root", str(tmp_path / "t")
    )
    assert code == 8 and "control character" in out["error"]["message"], out
    assert not (tmp_path / "t" / ".hf-seed").exists()


def test_a_wrong_file_from_an_upstream_still_receiving_is_fetched_again(both, manifest, tmp_path):
    """An upstream still receiving may serve a same-size file of its old copy: it is hashed,
    dropped and fetched again once the upstream has the right one, not taken."""
    doc = mf.load_manifest(manifest)
    upstream, downstream = sd.SeedRoot(tmp_path / "up"), sd.SeedRoot(tmp_path / "down")
    upstream.root.mkdir()
    downstream.root.mkdir()
    upstream.prepare(doc)
    for top in doc["roots"]:
        shutil.copytree(both / top, upstream.staging / top, symlinks=True)
    arrow = next(e["path"] for e in doc["entries"] if e["path"].endswith(".arrow"))
    flip_byte(upstream.staging / arrow)
    passes = []

    def upstream_finishes():
        while not passes:
            time.sleep(0.05)
        tmp = upstream.staging / (arrow + ".tmp")
        shutil.copy2(both / arrow, tmp)
        tmp.rename(upstream.staging / arrow)
        assert sd.finish(upstream, doc).ok

    finisher = threading.Thread(target=upstream_finishes)
    finisher.start()
    sd.pull(downstream, doc, sd.Upstream(f"{upstream.root}/"), poll=0.2, log=passes.append)
    finisher.join()
    assert any("still receiving" in line and arrow in line for line in passes), passes
    assert downstream.read_state().state == "verified"
    assert downstream.verify_staging(doc, deep=True).ok


# ------------------------------------------------------------------ unusual roots and names


def seed_child(*args: str, setup: str | None = None) -> tuple[int, dict | None, str]:
    """hf-cache-seed ARGS --json in a child process (setup: shell commands first, in a
    private mount namespace: a read-only bind vanishes with it)."""
    return run_test(
        Path("/nonexistent"), *args, tool="hf_loader.cacheseed", dataset=None, setup=setup
    )


@needs_root_namespaces
def test_a_read_only_cache_root_is_exit_5_for_writers_and_status_still_answers(
    both, manifest, tmp_path
):
    """A root on a read-only mount: pull and publish are exit 5 naming the root and the fix;
    status answers from the copy it finds, and --record records nothing and says why."""
    source = tmp_path / "source"
    shutil.copytree(both, source, symlinks=True)
    ro = f"mount --bind -o ro {both} {both}"
    before = tree_state(both)
    m = ("--manifest", str(manifest), "--root", str(both))
    code, out, text = seed_child("pull", *m, "--from", f"{source}/", setup=ro)
    assert code == 5, text
    assert out["error"]["path"] == str(both) and "read-only mount" in out["error"]["message"]
    code, out, text = seed_child("publish", *m, setup=ro)
    assert code in (5, 10), text  # nothing staged on a root that was never writable
    code, out, text = seed_child("status", *m, setup=ro)
    assert code == 0 and out["ok"], text
    code, out, text = seed_child("status", *m, "--record", setup=ro)
    assert code == 0 and out["ok"] and not out["recorded"], text
    assert "read-only mount" in out["not_recorded"]
    assert tree_state(both) == before


def test_status_of_a_missing_root_is_exit_5(manifest, tmp_path, capsys):
    code, out = seed_cli(
        capsys, "status", "--manifest", str(manifest), "--root", str(tmp_path / "unmounted")
    )
    assert code == 5 and "not a folder" in out["error"]["message"], out
    assert out["error"]["path"] == str(tmp_path / "unmounted")


def one_big_file(doc: dict, source: Path, tmp_path: Path, size: int = 1 << 20) -> Path:
    """A manifest of one file of `size` random bytes under source; its path."""
    big = source / "datasets" / "big___one" / "blob.bin"
    big.parent.mkdir(parents=True)
    big.write_bytes(os.urandom(size))
    entry = {"path": "datasets/big___one/blob.bin", "type": "file", "size": size}
    entry.update(sha256=hashlib.sha256(big.read_bytes()).hexdigest(), sha256_from="content")
    totals = {"entries": 1, "files": 1, "symlinks": 0, "bytes": size, "hashed_files": 1}
    one = {**doc, "entries": [entry], "totals": totals, "roots": ["datasets/big___one"]}
    path = tmp_path / "one.json"
    path.write_text(json.dumps(one))
    return path


@pytest.mark.parametrize(
    ("signum", "group"), [(signal.SIGTERM, False), (signal.SIGINT, True)], ids=["TERM", "Ctrl-C"]
)
def test_a_stopped_pull_prints_its_json_and_keeps_the_partial_file(
    manifest, tmp_path, signum, group
):
    """systemd's SIGTERM (to the process) or Ctrl-C (to the terminal's process group): the
    outcome is still one JSON object, exit 128 + the signal, no traceback; the partial file
    is kept for the rerun, and the state says the copy stopped."""
    source, target = tmp_path / "source", tmp_path / "target"
    target.mkdir()
    one = one_big_file(mf.load_manifest(manifest), source, tmp_path)
    args = ["pull", "--manifest", str(one), "--root", str(target), "--from", f"{source}/"]
    proc = subprocess.Popen(
        [sys.executable, "-m", "hf_loader.cacheseed", *args, "--bwlimit", "64", "--json"],
        start_new_session=True,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    wait_for_partial_file(target, proc)
    (os.killpg if group else os.kill)(proc.pid, signum)
    stdout, stderr = proc.communicate(timeout=90)
    assert proc.returncode == 128 + signum, stderr
    assert "Traceback" not in stderr, stderr
    out = json.loads(stdout)
    assert out["exit_code"] == 128 + signum and out["error"]["kind"] == "stopped"
    assert signal.Signals(signum).name in out["error"]["message"] and out["error"]["remedy"]
    kept = list((target / ".hf-seed" / "staging").rglob(".hf-seed-partial/*"))
    assert len(kept) == 1 and 0 < kept[0].stat().st_size < 1 << 20, kept


def test_bytes_received_counts_the_data_of_a_local_pull(manifest, tmp_path, capsys):
    """From a local folder this process is rsync's sender: the data is what it sent, not the
    few bytes of replies it received."""
    source, target = tmp_path / "source", tmp_path / "target"
    target.mkdir()
    one = one_big_file(mf.load_manifest(manifest), source, tmp_path, size=3 << 20)
    code, out = pull_cli(capsys, one, target, f"{source}/")
    assert code == 0, out
    assert 3 << 20 <= out["result"]["bytes_received"] < (3 << 20) * 1.05, out["result"]


@pytest.mark.parametrize("name", ["#hash.arrow", ";semi.arrow", " lead", "tr ail ", "ü.arrow"])
def test_unusual_but_valid_names_are_seeded(manifest, tmp_path, capsys, name):
    """Names rsync could take for a comment ('#', ';' at the start of a list line), trim, or
    read in the locale's encoding arrive in one pass: the file list is exact."""
    doc = mf.load_manifest(manifest)
    source, target = tmp_path / "source", tmp_path / "target"
    target.mkdir()
    folder = source / "datasets" / "odd___names"
    folder.mkdir(parents=True)
    (folder / name).write_bytes(b"data of " + name.encode())
    (folder / "plain").write_bytes(b"plain")
    entries = []
    for path in sorted(folder.iterdir()):
        data = path.read_bytes()
        entries.append(
            {
                "path": f"datasets/odd___names/{path.name}",
                "type": "file",
                "size": len(data),
                "sha256": hashlib.sha256(data).hexdigest(),
                "sha256_from": "content",
            }
        )
    totals = {"entries": 2, "files": 2, "symlinks": 0, "bytes": sum(e["size"] for e in entries)}
    odd = tmp_path / "odd.json"
    odd.write_text(
        json.dumps({**doc, "entries": entries, "totals": totals, "roots": ["datasets/odd___names"]})
    )
    code, out = pull_cli(capsys, odd, target, f"{source}/", "--attempts", "1")
    assert code == 0, out
    assert out["result"]["files_transferred"] == 2 and out["result"]["passes"] == 1
    staged = target / ".hf-seed" / "staging" / "datasets" / "odd___names"
    assert (staged / name).read_bytes() == b"data of " + name.encode()


@needs_root_namespaces
def test_a_full_cache_root_is_exit_5_naming_it_not_an_internal_error(both, manifest, tmp_path):
    target = tmp_path / "target"
    target.mkdir()
    full = (
        f"mount -t tmpfs -o size=64k,mode=0755 tmpfs {target}\n"
        f"cat /dev/zero > {target}/filler 2>/dev/null || true"
    )
    args = ("pull", "--manifest", str(manifest), "--root", str(target), "--from", f"{both}/")
    code, out, text = seed_child(*args, setup=full)
    assert code in (5, 9), text  # the state file (exit 5) or rsync's own write (exit 9)
    assert "No space left on device" in out["error"]["message"], text
    assert str(target) in out["error"]["message"] + (out["error"]["path"] or "")
    assert "full" in out["error"]["remedy"] or "rerun" in out["error"]["remedy"]
