"""hf-cache-manifest: manifests of real caches written by `datasets`, and verifying copies.

Each test copies the small caches of conftest (an Arrow cache written by the parquet
builder's own `download_and_prepare`, a hub snapshot with blobs, symlinks and refs), writes
a manifest, changes the copy the way a bad transfer would, and checks what is reported.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import DATASET, arrow_dir, snapshot_dir
from test_cache_states import needs_root_namespaces, tree_state

from hf_loader import manifest as mf
from hf_loader.cachemanifest import main
from hf_loader.cacheseed import main as seed_main
from hf_loader.cachetest import main as cache_test_main
from hf_loader.errors import IncompleteCacheError

PACKAGE = Path(__file__).resolve().parents[1]


def cli(capsys, *args: str) -> tuple[int, dict]:
    code = main([*args, "--json"])
    return code, json.loads(capsys.readouterr().out)


def write(capsys, out: Path, *extra: str) -> tuple[int, dict]:
    return cli(capsys, "write", DATASET, "-o", str(out), *extra)


def verify(capsys, manifest: Path, *extra: str) -> tuple[int, dict]:
    return cli(capsys, "verify", str(manifest), *extra)


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def rel(home: Path, path: Path) -> str:
    return path.relative_to(home).as_posix()


def fails(doc: dict) -> list[dict]:
    return [f for f in doc["findings"] if f["level"] == "fail"]


def mismatched(doc: dict) -> list[tuple[str, str]]:
    return [(m["path"], m["kind"]) for m in doc["verify"]["mismatches"]]


@pytest.fixture
def out(tmp_path) -> Path:
    folder = tmp_path / "manifests"
    folder.mkdir()
    return folder / "imagenet.json"


def staged(home: Path, tmp_path: Path) -> Path:
    """A copy of the whole cache root, as the seed runbook stages one before publishing."""
    root = tmp_path / "staging"
    shutil.copytree(home, root, symlinks=True)
    return root


def flip_byte(path: Path) -> None:
    size = path.stat().st_size
    with open(path, "r+b") as f:
        f.seek(size // 2)
        byte = f.read(1)
        f.seek(size // 2)
        f.write(bytes([byte[0] ^ 0xFF]))
    assert path.stat().st_size == size


# ------------------------------------------------------------------ writing


def test_manifest_of_an_arrow_copy(arrow_only, out, capsys):
    before = tree_state(arrow_only)
    code, doc = write(capsys, out)
    assert code == 0, doc["findings"]
    assert doc["manifest"]["path"] == str(out)
    m = json.loads(out.read_text())
    hash_dir = arrow_dir(arrow_only)
    assert m["manifest_version"] == mf.MANIFEST_VERSION
    assert (m["dataset"], m["config"], m["revision"]) == (DATASET, "default", hash_dir.name)
    copy = {"kind": "arrow", "path": rel(arrow_only, hash_dir), "revision": hash_dir.name}
    assert m["copies"] == [copy]
    assert m["roots"] == ["datasets/ILSVRC___imagenet-1k"]
    paths = [e["path"] for e in m["entries"]]
    assert paths == sorted(paths)
    on_disk = sorted(p for p in hash_dir.iterdir())
    assert paths == [rel(arrow_only, p) for p in on_disk]  # every file, nothing else
    assert f"{rel(arrow_only, hash_dir)}/dataset_info.json" in paths
    assert sum(p.endswith(".arrow") for p in paths) == 4
    for e in m["entries"]:
        f = arrow_only / e["path"]
        assert e["type"] == "file" and e["sha256_from"] == "content"
        assert (e["size"], e["sha256"]) == (f.stat().st_size, sha256(f))
    assert m["totals"] == {
        "entries": 5,
        "files": 5,
        "symlinks": 0,
        "bytes": sum(p.stat().st_size for p in on_disk),
        "hashed_files": 5,
    }
    assert m["created_at"] and m["created_on"] and m["source"]["datasets"]
    assert os.listdir(out.parent) == [out.name]  # atomic: no temporary file left
    assert tree_state(arrow_only) == before


def test_manifest_of_a_hub_snapshot(hub_only, out, capsys):
    before = tree_state(hub_only)
    code, doc = write(capsys, out, "--deep")
    assert code == 0, doc["findings"]
    m = json.loads(out.read_text())
    snap = snapshot_dir(hub_only)
    repo = snap.parent.parent
    assert m["revision"] == snap.name
    assert m["copies"] == [{"kind": "hub", "path": rel(hub_only, snap), "revision": snap.name}]
    assert m["roots"] == [rel(hub_only, repo)]
    entries = {e["path"]: e for e in m["entries"]}
    links = [p for p in snap.rglob("*") if p.is_symlink()]
    assert len(links) == 5
    for link in links:  # symlinks recorded as such, with their target, never hashed
        assert entries[rel(hub_only, link)] == {
            "path": rel(hub_only, link),
            "type": "symlink",
            "target": os.readlink(link),
        }
    blobs = sorted((repo / "blobs").iterdir())
    for blob in blobs:
        e = entries[rel(hub_only, blob)]
        assert e["sha256"] == sha256(blob) and e["size"] == blob.stat().st_size
        assert e["sha256_from"] == "content"  # hashed, the blob's name only checked
        if len(blob.name) == 64:
            assert e["sha256"] == blob.name
    ref = entries[f"{rel(hub_only, repo)}/refs/main"]
    assert ref["sha256"] == sha256(repo / "refs" / "main")
    assert set(entries) == {rel(hub_only, p) for p in [*links, *blobs, repo / "refs" / "main"]}
    assert m["totals"]["files"] == 6 and m["totals"]["symlinks"] == 5
    assert m["totals"]["hashed_files"] == 6  # every file, blobs included
    assert tree_state(hub_only) == before


def test_all_copies_takes_the_arrow_copy_and_the_hub_snapshot(both, out, capsys):
    code, doc = write(capsys, out)
    assert code == 0
    assert [c["kind"] for c in doc["manifest"]["copies"]] == ["arrow"]
    code, doc = write(capsys, out, "--all-copies")
    assert code == 0, doc["findings"]
    assert [c["kind"] for c in doc["manifest"]["copies"]] == ["arrow", "hub"]
    assert doc["manifest"]["roots"] == [
        "datasets/ILSVRC___imagenet-1k",
        "hub/datasets--ILSVRC--imagenet-1k",
    ]
    assert verify(capsys, out, "--deep")[0] == 0


def test_all_copies_refuses_a_broken_hub_snapshot_beside_the_arrow_copy(both, out, capsys):
    (snapshot_dir(both) / "data" / "train-00000-of-00002.parquet").unlink()
    code, doc = write(capsys, out, "--all-copies")
    assert code == 4
    assert "train-00000-of-00002" in json.dumps(doc["error"]["problems"])
    assert not out.exists()


# ------------------------------------------------------------------ verifying


@pytest.mark.parametrize("layout", ["arrow_only", "hub_only"])
def test_verify_in_place_and_under_a_staging_root(layout, request, out, tmp_path, capsys):
    home = request.getfixturevalue(layout)
    assert write(capsys, out)[0] == 0
    code, doc = verify(capsys, out)
    assert code == 0 and doc["verify"]["mismatches"] == [] and doc["verify"]["extras"] == []
    assert doc["verify"]["root"]["datasets"] == str(home / "datasets")
    root = staged(home, tmp_path)
    code, doc = verify(capsys, out, "--root", str(root), "--deep")
    assert code == 0, doc["findings"]
    checked = doc["verify"]["checked"]
    assert checked["files_hashed"] == checked["files"] > 0
    main(["verify", str(out), "--root", str(root)])
    text = capsys.readouterr().out
    assert "MATCHES THE MANIFEST (exit 0)" in text


@pytest.mark.parametrize("layout", ["arrow_only", "hub_only"])
def test_flipped_byte_passes_sizes_but_deep_names_exactly_that_file(
    layout, request, out, tmp_path, capsys
):
    home = request.getfixturevalue(layout)
    assert write(capsys, out)[0] == 0
    root = staged(home, tmp_path)
    if layout == "arrow_only":
        victim = arrow_dir(root) / "imagenet-1k-train-00001-of-00002.arrow"
    else:  # an LFS blob, manifested by its name: --deep must hash it anyway
        link = snapshot_dir(root) / "data" / "train-00001-of-00002.parquet"
        victim = link.parent / os.readlink(link)
    flip_byte(victim)
    assert verify(capsys, out, "--root", str(root))[0] == 0  # same size: not seen
    code, doc = verify(capsys, out, "--root", str(root), "--deep")
    assert code == 4
    assert mismatched(doc) == [(rel(root, victim.resolve()), "sha256")]
    (m,) = doc["verify"]["mismatches"]
    assert m["found"] == sha256(victim) and m["location"] == str(victim.resolve())


def test_truncated_file_is_named_without_reading_contents(arrow_only, out, tmp_path, capsys):
    assert write(capsys, out)[0] == 0
    root = staged(arrow_only, tmp_path)
    victim = arrow_dir(root) / "imagenet-1k-validation-00000-of-00002.arrow"
    size = victim.stat().st_size
    os.truncate(victim, size - 100)
    code, doc = verify(capsys, out, "--root", str(root))
    assert code == 4
    assert mismatched(doc) == [(rel(root, victim), "size")]
    assert doc["verify"]["checked"]["files_hashed"] == 0
    (m,) = doc["verify"]["mismatches"]
    assert (m["expected"], m["found"]) == (size, size - 100)
    # the API: the same report, raised as the typed error with its remedy
    report = mf.verify_manifest(mf.load_manifest(out), mf.CacheRoots.under(root))
    with pytest.raises(IncompleteCacheError) as err:
        report.raise_for_mismatches()
    assert err.value.exit_code == 4 and rel(root, victim) in str(err.value)
    assert "copy the files named again" in err.value.remedy


def test_removed_files_are_named(hub_only, out, tmp_path, capsys):
    assert write(capsys, out)[0] == 0
    root = staged(hub_only, tmp_path)
    link = snapshot_dir(root) / "data" / "validation-00000-of-00002.parquet"
    blob = (link.parent / os.readlink(link)).resolve()
    blob.unlink()
    ref = snapshot_dir(root).parent.parent / "refs" / "main"
    ref.unlink()
    code, doc = verify(capsys, out, "--root", str(root))
    assert code == 4
    assert mismatched(doc) == sorted([(rel(root, blob), "missing"), (rel(root, ref), "missing")])
    main(["verify", str(out), "--root", str(root)])
    text = capsys.readouterr().out
    assert f"missing: {rel(root, blob)}" in text
    assert "2 of 11 entries" in text and "DOES NOT MATCH (exit 4)" in text


def test_wrong_symlink_target_and_wrong_type_are_named(hub_only, out, tmp_path, capsys):
    assert write(capsys, out)[0] == 0
    root = staged(hub_only, tmp_path)
    snap = snapshot_dir(root)
    moved = snap / "data" / "train-00000-of-00002.parquet"
    other = os.readlink(snap / "data" / "train-00001-of-00002.parquet")
    moved.unlink()
    moved.symlink_to(other)  # points at the wrong blob
    card = snap / "README.md"
    data = card.read_bytes()
    card.unlink()
    card.write_bytes(data)  # a plain copy where the manifest has a link
    code, doc = verify(capsys, out, "--root", str(root))
    assert code == 4
    assert mismatched(doc) == sorted(
        [(rel(root, moved), "symlink_target"), (rel(root, card), "type")]
    )
    target = next(m for m in doc["verify"]["mismatches"] if m["kind"] == "symlink_target")
    assert target["found"] == other


def test_extra_files_are_warnings_and_failures_with_strict(both, out, tmp_path, capsys):
    assert write(capsys, out, "--all-copies")[0] == 0
    root = staged(both, tmp_path)
    stale = arrow_dir(root).with_name(arrow_dir(root).name + "0.incomplete")
    shutil.copytree(arrow_dir(root), stale)  # a stale copy: one line, not one per file
    (snapshot_dir(root) / "notes.txt").write_text("not in the manifest\n")
    (arrow_dir(root).parent / "other_builder.lock").touch()  # library bookkeeping: ignored
    code, doc = verify(capsys, out, "--root", str(root))
    assert code == 0
    extras = {m["path"]: m["message"] for m in doc["verify"]["extras"]}
    assert extras == {
        rel(root, snapshot_dir(root) / "notes.txt"): "a file of 20 bytes not in the manifest",
        rel(root, stale): "a folder of 5 files not in the manifest",
    }
    assert {f["level"] for f in doc["findings"] if "extra" in f["message"]} == {"warn", "ok"}
    code, doc = verify(capsys, out, "--root", str(root), "--strict")
    assert code == 4
    assert len([f for f in fails(doc) if f["message"].startswith("extra: ")]) == 2


# ------------------------------------------------------------------ refusals


def test_incomplete_copy_is_refused_with_the_cache_tests_own_message(arrow_only, out, capsys):
    (arrow_dir(arrow_only) / "imagenet-1k-train-00000-of-00002.arrow").unlink()
    cache_code = cache_test_main([DATASET, "--batches", "0"])
    cache_lines = capsys.readouterr().out.splitlines()
    code = main(["write", DATASET, "-o", str(out)])
    lines = capsys.readouterr().out.splitlines()
    assert code == cache_code == 4
    assert lines[1:-1] == cache_lines[1:-1]  # the same findings, problems and fix
    assert lines[-1] == "REFUSED: no manifest written (exit 4)"
    assert not out.exists()
    code, doc = write(capsys, out)
    cache_code, cache_doc = cache_test_json(capsys)
    assert code == 4 and fails(doc) == fails(cache_doc) and doc["error"] == cache_doc["error"]
    assert "train-00000-of-00002" in json.dumps(doc["error"]["problems"])
    assert doc["manifest"] is None and not out.exists()


def cache_test_json(capsys) -> tuple[int, dict]:
    code = cache_test_main([DATASET, "--batches", "0", "--json"])
    return code, json.loads(capsys.readouterr().out)


@pytest.mark.parametrize("where", ["datasets", "hub", ".", "link"])
def test_manifest_inside_the_cache_is_refused(arrow_only, where, tmp_path, capsys):
    before = tree_state(arrow_only)
    if where == "link":  # a folder outside that is a symlink into the cache
        (tmp_path / "sneaky").symlink_to(arrow_only / "datasets")
        target = tmp_path / "sneaky" / "m.json"
    else:
        target = arrow_only / where / "m.json"
    code, doc = cli(capsys, "write", DATASET, "-o", str(target))
    assert code == 2
    (f,) = fails(doc)
    assert "inside the cache folder" in f["message"] and "outside the cache" in f["remedy"]
    assert not target.exists()
    assert tree_state(arrow_only) == before


def test_symlink_leading_out_of_the_copy_is_refused(hub_only, out, tmp_path, capsys):
    outside = tmp_path / "elsewhere.txt"
    outside.write_text("x")
    (snapshot_dir(hub_only) / "LICENSE").symlink_to(outside)  # absolute, out of the copy
    code, doc = write(capsys, out)
    assert code == 4
    (f,) = fails(doc)
    # The cache test refuses it first now (issue 33: it and write agree), else write does.
    assert f["stage"] in ("cache", "manifest")
    assert any("LICENSE" in p for p in doc["error"]["problems"]), doc["error"]
    assert not out.exists()


# ------------------------------------------------------------------ exit codes


def test_exit_codes(arrow_only, out, tmp_path, capsys):
    assert main(["--help"]) == 0
    capsys.readouterr()
    code, doc = cli(capsys)  # no command
    assert code == 2 and doc["command"] is None and fails(doc)[0]["stage"] == "usage"
    code, doc = cli(capsys, "verify", str(out), "--workers", "0")
    assert code == 2
    code, doc = cli(capsys, "write", "acme/not-here", "-o", str(out))
    assert code == 3 and not out.exists()
    code, doc = cli(capsys, "write", DATASET, "-o", str(tmp_path / "no" / "m.json"))
    assert code == 8 and "does not exist" in fails(doc)[0]["message"]

    code, doc = verify(capsys, out)  # no manifest yet
    assert code == 8 and fails(doc)[0]["message"].startswith("no manifest at")
    assert write(capsys, out)[0] == 0
    code, doc = verify(capsys, out, "--root", str(tmp_path / "not-a-folder"))
    assert code == 5

    m = json.loads(out.read_text())
    broken = tmp_path / "broken.json"
    for change, words in (
        (lambda d: d.update(manifest_version=mf.MANIFEST_VERSION + 1), "newer"),
        (lambda d: d["entries"].pop(), "cut short"),
        (lambda d: d["entries"][0].update(path="datasets/../../etc/passwd"), "safe relative"),
        (lambda d: d["entries"][0].update(sha256="abc"), "sha256"),
    ):
        d = json.loads(json.dumps(m))
        change(d)
        broken.write_text(json.dumps(d))
        code, doc = verify(capsys, broken)
        assert code == 8 and words in fails(doc)[0]["message"], fails(doc)
    broken.write_text("{not json")
    assert verify(capsys, broken)[0] == 8


def test_console_script_is_declared():
    pyproject = (PACKAGE / "pyproject.toml").read_text()
    scripts = pyproject.split("[project.scripts]")[1].split("\n[")[0]
    assert 'hf-cache-manifest = "hf_loader.cachemanifest:main"' in scripts
    # The installed console script itself runs (the venv's, beside this Python).
    done = subprocess.run(
        [str(Path(sys.executable).parent / "hf-cache-manifest"), "--help"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0 and "exit codes" in done.stdout, done.stderr


def test_hashing_streams_in_chunks(tmp_path, monkeypatch):
    data = os.urandom(10_000)
    (tmp_path / "f").write_bytes(data)
    monkeypatch.setattr(mf, "HASH_BUFFER", 1024)
    reads = []
    real = os.fdopen

    def spy(*a, **k):
        handle = real(*a, **k)
        original = handle.readinto
        handle.readinto = lambda b: reads.append(len(b)) or original(b)
        return handle

    monkeypatch.setattr(mf.os, "fdopen", spy)
    assert mf.sha256_file(tmp_path / "f") == (hashlib.sha256(data).hexdigest(), 10_000)
    assert reads and max(reads) == 1024  # never the whole file at once


# ------------------------------------------------------------------ read-only


@needs_root_namespaces
@pytest.mark.parametrize("layout", ["arrow_only", "both"])
def test_read_only_cache_is_manifested_and_verified_unchanged(layout, request, out):
    home = request.getfixturevalue(layout)
    before = tree_state(home)
    env = dict(os.environ, HF_HOME=str(home), HF_DATASETS_OFFLINE="1", HF_HUB_OFFLINE="1")
    script = (
        f"mount --bind -o ro {home} {home} && "
        f'"$0" -m hf_loader.cachemanifest write {DATASET} -o {out} --all-copies --json && '
        f'"$0" -m hf_loader.cachemanifest verify {out} --deep --strict --json'
    )
    done = subprocess.run(
        ["unshare", "-m", "sh", "-c", script, sys.executable],
        env=env,
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert done.returncode == 0, (done.stdout + done.stderr)[-3000:]
    assert json.loads(out.read_text())["totals"]["files"] > 0
    assert '"files_hashed"' in done.stdout
    assert tree_state(home) == before


def test_blob_whose_content_does_not_match_its_name_is_refused(hub_only, out, capsys):
    """A manifest's hashes come from content: a same-size blob with other bytes under an LFS
    blob's name (sha256) is refused at write, never recorded under the name."""
    blob = next(
        p for p in (snapshot_dir(hub_only).parent.parent / "blobs").iterdir() if len(p.name) == 64
    )
    flip_byte(blob)
    code, doc = write(capsys, out)
    assert code == 4, doc
    (problem,) = doc["error"]["problems"]
    assert blob.name in problem and "not the" in problem and "it is named by" in problem
    assert not out.exists()


def test_control_characters_in_names_are_refused_at_write(arrow_only, out, capsys):
    hash_dir = next(p.parent for p in (arrow_only / "datasets").rglob("dataset_info.json"))
    (hash_dir / "evil\nname.arrow").write_bytes(b"x")
    code, doc = write(capsys, out)
    assert code == 4, doc
    assert any("control character" in p for p in doc["error"]["problems"])
    assert not out.exists()


def test_a_name_that_is_not_utf8_is_refused_at_write(arrow_only, out, capsys):
    """A Latin-1 file name cannot travel as JSON text or in rsync's file list: refused at
    write (exit 4), naming it, rather than manifested and then failing every seed."""
    hash_dir = next(p.parent for p in (arrow_only / "datasets").rglob("dataset_info.json"))
    (hash_dir / os.fsdecode(b"caf\xe9.arrow")).write_bytes(b"x")
    code, doc = write(capsys, out)
    assert code == 4, doc
    assert any("not UTF-8" in p and "caf" in p for p in doc["error"]["problems"]), doc
    assert not out.exists()


@pytest.mark.parametrize("where", ["path", "target"])
@pytest.mark.parametrize("char", ["\n", "\x1b", "\x7f", "\x9b", "\udce9"])
def test_control_characters_in_a_manifest_are_refused(hub_only, out, where, char, capsys):
    """A hand-edited (or hostile) manifest with a control character in a path or a link
    target is invalid (exit 8) before anything is read or copied."""
    assert write(capsys, out)[0] == 0
    doc = json.loads(out.read_text())
    entry = next(e for e in doc["entries"] if e["type"] == "symlink")
    if where == "path":
        entry["path"] += f"{char}x"
    else:
        entry["target"] += f"{char}x"
    out.write_text(json.dumps(doc))
    code, answer = verify(capsys, out)
    assert code == 8, answer
    assert "control character" in answer["error"]["message"]
    with pytest.raises(mf.ManifestError, match="control character"):
        mf.load_manifest(out)


@pytest.mark.parametrize(
    ("target", "why"),
    [
        ("/etc/shadow", "its target is absolute"),
        ("../../../../../../etc/shadow", "its target leaves hub/datasets--"),
        ("../../../../datasets--other-ns--other-set/blobs/x", "its target leaves hub/datasets--"),
        ("../../../../../datasets/x", "its target leaves hub/datasets--"),
    ],
)
def test_a_symlink_entry_leading_out_of_its_repository_is_an_invalid_manifest(
    hub_only, out, target, why, capsys
):
    """Seeding publishes a manifest's symlinks as they are: one whose target is absolute or
    leaves the dataset's own folder (into another dataset, another cache folder, /etc) would
    be a root-made path to another place. Such a manifest is invalid (exit 8), for verify and
    for the seed, and nothing is read or written."""
    assert write(capsys, out)[0] == 0
    doc = json.loads(out.read_text())
    entry = next(e for e in doc["entries"] if e["type"] == "symlink")
    entry["target"] = target
    out.write_text(json.dumps(doc))
    code, answer = verify(capsys, out)
    assert code == 8, answer
    assert why in answer["error"]["message"] and entry["path"] in answer["error"]["message"]
    root = out.parent / "seed-root"
    root.mkdir()
    assert seed_main(["prepare", "--manifest", str(out), "--root", str(root)]) == 8
    assert list(root.iterdir()) == []
