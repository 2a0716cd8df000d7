"""hf-cache-test on hostile and unlucky caches: each case is built with the real libraries and
real files, run in a child process as the operator would, and must give the right exit code
and words while nothing under the cache changes (names, sizes, modes, times, links).

Foreign owners are real other uids with the capabilities that let root bypass file modes
dropped; read-only and full folders are real bind mounts and a real full tmpfs in a private
mount namespace; "no home folder" is a real uid without a passwd entry (a user namespace).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import DATASET, arrow_dir, snapshot_dir
from test_cache_states import needs_root_namespaces, tree_state
from test_cachetest import _drop_file_override_caps

from hf_loader import fixtures
from hf_loader.errors import IncompleteCacheError, InvalidRevisionError
from hf_loader.resolve import resolve

NOBODY = 65534
OTHER_ID = "other-ns/other-set"
OTHER_REPO = "datasets--other-ns--other-set"


def run_test(
    home: Path,
    *args: str,
    tool: str = "hf_loader.cachetest",
    dataset: str | None = DATASET,
    setup: str | None = None,
    drop_caps: bool = False,
    env: dict | None = None,
    cwd: Path | None = None,
    timeout: int = 120,
) -> tuple[int, dict | None, str]:
    """The CLI in a child process, with --json; setup: shell commands run first in a private
    mount namespace (mounts there vanish with it)."""
    environ = dict(os.environ, HF_HOME=str(home), HF_DATASETS_OFFLINE="1", HF_HUB_OFFLINE="1")
    environ.update(env or {})
    environ = {k: v for k, v in environ.items() if v is not None}
    command = [sys.executable, "-m", tool, *([dataset] if dataset else []), *args, "--json"]
    if setup:
        command = ["unshare", "-m", "sh", "-ec", f'{setup}\nexec "$@"', "sh", *command]
    done = subprocess.run(
        command,
        env=environ,
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=timeout,
        preexec_fn=_drop_file_override_caps if drop_caps else None,
    )
    try:
        doc = json.loads(done.stdout)
    except ValueError:
        doc = None
    return done.returncode, doc, done.stdout + done.stderr


def fail_texts(doc: dict) -> str:
    parts = [
        " ".join(str(f.get(k, "")) for k in ("message", "path", "remedy"))
        for f in doc["findings"]
        if f["level"] == "fail"
    ]
    parts += (doc.get("error") or {}).get("problems") or []
    return "\n".join(parts)


@pytest.fixture(scope="session")
def other_dataset(tmp_path_factory):
    """Another dataset's hub repository, written by the real libraries."""
    root = tmp_path_factory.mktemp("other")
    splits, names = fixtures.tiny_splits(n_train=8, n_val=4, classes=2, seed=7)
    fixtures.make_hub_snapshot(root, OTHER_ID, splits, names, shards=1)
    return root / OTHER_REPO


@pytest.fixture
def hub_and_other(hub_only, other_dataset):
    shutil.copytree(other_dataset, hub_only / "hub" / OTHER_REPO, symlinks=True)
    return hub_only


def other_snapshot(home: Path) -> Path:
    (snap,) = (home / "hub" / OTHER_REPO / "snapshots").iterdir()
    return snap


def ref_main(home: Path) -> Path:
    return home / "hub" / "datasets--ILSVRC--imagenet-1k" / "refs" / "main"


# ------------------------------------------------------------------ 1. refs are not paths

LIST_GUARD = """
import os

_log = os.environ["HF_TEST_LISTED"]


def _guard(function):
    def listed(path=".", *args, **kwargs):
        if not isinstance(path, int):
            with open(_log, "a") as out:
                out.write(os.path.realpath(os.fsdecode(path)) + "\\n")
        return function(path, *args, **kwargs)

    return listed


os.listdir = _guard(os.listdir)
os.scandir = _guard(os.scandir)
"""


def list_guard(tmp_path: Path) -> dict:
    """Environment for run_test: every folder the child lists (os.listdir, os.scandir: what
    pathlib, glob and os.walk use) is written to a file, by a sitecustomize found first."""
    guard = tmp_path / "list-guard"
    guard.mkdir()
    (guard / "sitecustomize.py").write_text(LIST_GUARD)
    path = os.pathsep.join(filter(None, [str(guard), os.environ.get("PYTHONPATH")]))
    return {"PYTHONPATH": path, "HF_TEST_LISTED": str(tmp_path / "listed.txt")}


def listed_outside(tmp_path: Path, home: Path) -> list[str]:
    """Folders the child listed that are the cache root's parents ("/" among them)."""
    listed = (tmp_path / "listed.txt").read_text().splitlines()
    assert listed, "the guard recorded nothing: was sitecustomize loaded?"
    above = {str(parent) for parent in Path(os.path.realpath(home)).parents}
    return sorted(set(listed) & above)


@pytest.mark.parametrize(
    "content",
    [
        "../../{other}/snapshots/{sha}",  # another dataset, loaded under this id
        "/",  # the whole filesystem
        "{own}\n{own}\n",  # two commits
        " {own}",  # padding
        "{OWN}",  # upper case: not how the hub writes a commit
        "",
    ],
    ids=["other-dataset", "root", "two-lines", "padded", "upper", "empty"],
)
def test_a_ref_that_is_not_one_commit_is_exit_4_naming_the_ref(hub_and_other, content, tmp_path):
    own = snapshot_dir(hub_and_other).name
    text = content.format(
        other=OTHER_REPO, sha=other_snapshot(hub_and_other).name, own=own, OWN=own.upper()
    )
    ref = ref_main(hub_and_other)
    ref.write_text(text)
    before = tree_state(hub_and_other)
    code, doc, out = run_test(
        hub_and_other, "--batches", "1", "--batch-size", "2", env=list_guard(tmp_path)
    )
    assert code == 4, out
    # "/" (or any folder above the cache) is never listed: decided by what the child listed,
    # not by how long it took.
    assert listed_outside(tmp_path, hub_and_other) == []
    problems = "\n".join(doc["error"]["problems"])
    assert str(ref) in problems and "not one 40-hex commit" in problems
    assert f"snapshots there: {own}" in problems
    assert doc["resolution"] is None and doc["loading"] is None
    assert tree_state(hub_and_other) == before
    with pytest.raises(IncompleteCacheError, match="not one 40-hex commit"):
        resolve(DATASET)  # the loader's own resolution, as training calls it


def test_a_ref_with_a_trailing_newline_is_one_commit(hub_only):
    ref = ref_main(hub_only)
    ref.write_text(ref.read_text() + "\n")
    code, doc, out = run_test(hub_only, "--batches", "1", "--batch-size", "2", "--workers", "0")
    assert code == 0, out
    assert doc["resolution"]["path"] == str(snapshot_dir(hub_only))


def test_a_snapshot_linked_to_another_datasets_snapshot_is_exit_4(hub_and_other):
    own = snapshot_dir(hub_and_other)
    shutil.rmtree(own)
    own.symlink_to(Path("..", "..", OTHER_REPO, "snapshots", other_snapshot(hub_and_other).name))
    before = tree_state(hub_and_other)
    code, doc, out = run_test(hub_and_other, "--batches", "1", "--batch-size", "2")
    assert code == 4, out
    assert "outside this repository's" in fail_texts(doc) and str(own) in fail_texts(doc)
    assert tree_state(hub_and_other) == before


def test_a_repository_folder_linked_to_another_datasets_is_exit_4(home, other_dataset):
    shutil.copytree(other_dataset, home / "hub" / OTHER_REPO, symlinks=True)
    (home / "hub" / "datasets--ILSVRC--imagenet-1k").symlink_to(OTHER_REPO)
    code, doc, out = run_test(home, "--batches", "0")
    assert code == 4, out
    assert "the repository of another dataset" in fail_texts(doc)


@pytest.mark.parametrize("revision", ["../../" + OTHER_REPO, "/etc", "main/../..", "a\nb"])
def test_a_revision_that_is_no_ref_name_is_a_usage_error(hub_and_other, revision):
    code, doc, out = run_test(hub_and_other, "--revision", revision, "--batches", "0")
    assert code == 2, out
    assert "cannot name a ref" in fail_texts(doc)
    with pytest.raises(InvalidRevisionError):
        resolve(DATASET, revision=revision)


# ------------------------------------------------------------------ 3. unreadable, not "not cached"


def _hand_to_nobody(folder: Path) -> None:
    for parent, dirs, files in os.walk(folder):
        for name in [*dirs, *files, "."]:
            os.lchown(Path(parent) / name, NOBODY, NOBODY)
    folder.chmod(0o700)


@pytest.mark.parametrize(
    "layout, locked",
    [
        ("both", ["datasets/ILSVRC___imagenet-1k", "hub/datasets--ILSVRC--imagenet-1k"]),
        ("hub_only", ["hub/datasets--ILSVRC--imagenet-1k/refs"]),
        ("arrow_only", ["datasets/ILSVRC___imagenet-1k/default"]),
    ],
    ids=["both-copies", "hub-refs", "arrow-config"],
)
def test_a_copy_owned_by_another_user_is_a_permission_finding(layout, locked, request):
    home = request.getfixturevalue(layout)
    for rel in locked:
        _hand_to_nobody(home / rel)
    before = tree_state(home)
    code, doc, out = run_test(home, "--batches", "1", "--batch-size", "2", drop_caps=True)
    assert code == 4, out  # not 3 ("not cached"), which would send the operator to copy again
    text = fail_texts(doc)
    assert "permission denied" in text and "may not read it" in text
    for rel in locked:
        assert str(home / rel) in text
    remedy = doc["error"]["remedy"]
    assert "chmod -R a+rX" in remedy and "chown" in remedy
    assert "restore" not in remedy and "copy the dataset" not in remedy
    assert tree_state(home) == before


def test_an_unreadable_arrow_copy_beside_a_readable_snapshot_is_a_warning(both):
    _hand_to_nobody(both / "datasets" / "ILSVRC___imagenet-1k")
    code, doc, out = run_test(
        both, "--batches", "1", "--batch-size", "2", "--workers", "0", drop_caps=True
    )
    assert code == 0 and doc["verdict"] == "ready_with_warnings", out
    (warn,) = [f for f in doc["findings"] if f["level"] == "warn"]
    assert "permission denied" in warn["message"] and "chmod -R a+rX" in warn["remedy"]


# ------------------------------------------------------------------ 4. --deep hashes or counts


def _outside_copy_with_a_flipped_byte(home: Path, tmp_path: Path, rel: str) -> Path:
    link = snapshot_dir(home) / rel
    data = bytearray(link.read_bytes())
    data[len(data) // 2] ^= 0xFF  # inside a page of the parquet data: the footer still reads
    outside = tmp_path / "elsewhere" / Path(rel).name
    outside.parent.mkdir()
    outside.write_bytes(bytes(data))
    return outside


@pytest.mark.parametrize("deep", [True, False], ids=["deep", "shallow"])
def test_a_data_link_out_of_the_cache_is_refused_as_manifest_write_refuses_it(
    hub_only, tmp_path, deep
):
    rel = "data/train-00000-of-00002.parquet"
    outside = _outside_copy_with_a_flipped_byte(hub_only, tmp_path, rel)
    link = snapshot_dir(hub_only) / rel
    link.unlink()
    link.symlink_to(outside)
    before = tree_state(hub_only)
    flags = ["--deep"] if deep else []
    code, doc, out = run_test(hub_only, *flags, "--batches", "1", "--batch-size", "2")
    assert code == 4, out
    assert f"{link}: symlink with an absolute target {outside}" in fail_texts(doc)
    manifest = tmp_path / "manifest.json"
    m_code, m_doc, m_out = run_test(
        hub_only,
        "write",
        DATASET,
        "-o",
        str(manifest),
        *flags,
        tool="hf_loader.cachemanifest",
        dataset=None,
    )
    assert m_code == code, m_out  # the cache test and the manifest agree
    assert not manifest.exists()
    assert tree_state(hub_only) == before
    # a relative link out of the repository: the same
    link.unlink()
    link.symlink_to(os.path.relpath(outside, link.parent))
    before = tree_state(hub_only)
    code, doc, out = run_test(hub_only, *flags, "--batches", "0")
    assert code == 4 and "outside the copy" in fail_texts(doc), out
    assert tree_state(hub_only) == before


def test_a_blob_that_is_a_link_out_of_the_cache_is_refused(hub_only, tmp_path):
    rel = "data/validation-00001-of-00002.parquet"
    outside = _outside_copy_with_a_flipped_byte(hub_only, tmp_path, rel)
    blob = (snapshot_dir(hub_only) / rel).resolve()
    blob.unlink()
    blob.symlink_to(outside)
    before = tree_state(hub_only)
    code, doc, out = run_test(hub_only, "--deep", "--batches", "0")
    assert code == 4, out
    assert f"{blob}: blob is a symlink" in fail_texts(doc)
    assert tree_state(hub_only) == before


def test_deep_hashes_every_data_file_or_counts_it(hub_only):
    """Each data link to a blob is hashed (the card too, by git's object name): the count in
    the line is every file, and a changed blob is named."""
    code, doc, out = run_test(hub_only, "--deep", "--batches", "0")
    assert code == 0, out
    check = doc["resolution"]["check"]
    data_files = sum(s["files"] for s in check["splits"].values())
    assert check["files_hashed"] == data_files + 1 and check["unverified"] == []
    assert any(f"{data_files + 1} files hashed" in f["message"] for f in doc["findings"])
    card_blob = (snapshot_dir(hub_only) / "README.md").resolve()
    card_blob.chmod(0o644)
    card_blob.write_bytes(card_blob.read_bytes() + b"\n")
    code, doc, out = run_test(hub_only, "--deep", "--batches", "0")
    assert code == 4 and "does not match its blob name" in fail_texts(doc), out


# --------------------------------------------------------- 5. a folder where a file belongs


@pytest.mark.parametrize(
    "layout, rels, split",
    [
        ("hub_only", ["data/train-00000-of-00002.parquet"], "train"),
        (
            "hub_only",
            ["data/validation-00000-of-00002.parquet", "data/validation-00001-of-00002.parquet"],
            "validation",
        ),
        ("arrow_only", ["imagenet-1k-train-00001-of-00002.arrow"], "train"),
    ],
    ids=["one-shard", "whole-split", "arrow-shard"],
)
def test_a_folder_where_a_shard_belongs_is_exit_4_naming_it(layout, rels, split, request):
    home = request.getfixturevalue(layout)
    folder = arrow_dir(home) if layout == "arrow_only" else snapshot_dir(home)
    for rel in rels:
        (folder / rel).unlink()
        (folder / rel).mkdir()
        (folder / rel / "part-0").write_bytes(b"PAR1")
    before = tree_state(home)
    code, doc, out = run_test(home, "--split", split, "--batches", "1", "--batch-size", "2")
    assert code == 4, out
    for rel in rels:
        assert f"{folder / rel}: is a folder, not a regular file" in fail_texts(doc)
    assert "not downloaded" not in out
    assert tree_state(home) == before


# ------------------------------------------------------------------ 6. no scratch space


FILL = (
    "mount -t tmpfs -o size=256k,nr_inodes=64 tmpfs {full}\n"
    "dd if=/dev/zero of={full}/fill bs=4k 2>/dev/null || true\n"
)


@needs_root_namespaces
@pytest.mark.parametrize("where", ["TMPDIR", "/tmp"])
def test_full_scratch_is_exit_5_and_the_working_folder_stays_untouched(arrow_only, tmp_path, where):
    """The cache as the working folder and TMPDIR full, or (TMPDIR unset) /tmp and /var/tmp
    full: Python's tempfile would fall back to the working folder, inside HF_HOME."""
    full = tmp_path / "full"
    full.mkdir()
    if where == "TMPDIR":
        setup, env, cwd = FILL.format(full=full), {"TMPDIR": str(full)}, arrow_only
    else:  # the cache is seen at /tmp/cache, bound into the full tmpfs before it fills
        setup = (
            f"mount -t tmpfs -o size=256k,nr_inodes=64 tmpfs {full}\n"
            f"mkdir {full}/cache\nmount --bind {arrow_only} {full}/cache\n"
            f"dd if=/dev/zero of={full}/fill bs=4k 2>/dev/null || true\n"
            f"mount --rbind {full} /var/tmp\nmount --rbind {full} /tmp\ncd /tmp/cache\n"
        )
        env, cwd = {"TMPDIR": None, "HF_HOME": "/tmp/cache"}, None
    before = tree_state(arrow_only)
    code, doc, out = run_test(
        arrow_only, "--batches", "1", "--batch-size", "2", setup=setup, env=env, cwd=cwd
    )
    assert code == 5, out
    text = fail_texts(doc)
    assert "no usable scratch space" in text and "No space left on device" in text
    assert ("(TMPDIR)" if where == "TMPDIR" else "/var/tmp (default)") in text
    assert "TMPDIR" in doc["findings"][-1]["remedy"]
    assert tree_state(arrow_only) == before


# ------------------------------------------------------------------ 9. exit 1 is for bugs


@pytest.mark.parametrize(
    "flag, where, why",
    [
        ("--report", "missing/report.json", "does not exist"),
        ("--metrics-dir", "missing", "does not exist"),
        ("--report", "a-file/report.json", "is not a folder"),
        ("--report", "in-cache", "lies in the cache folder"),
        ("--report", "read-only/report.json", "is not writable by this user"),
    ],
)
def test_output_folders_are_checked_before_the_test(arrow_only, tmp_path, flag, where, why):
    (tmp_path / "a-file").write_text("")
    (tmp_path / "read-only").mkdir()
    target = arrow_only / "datasets" / "report.json" if where == "in-cache" else tmp_path / where
    setup = f"mount --bind -o ro {tmp_path / 'read-only'} {tmp_path / 'read-only'}"
    before = tree_state(arrow_only)
    code, doc, out = run_test(
        arrow_only, flag, str(target), setup=setup if "read-only" in where else None
    )
    assert code == 2, out
    assert why in fail_texts(doc) and flag in fail_texts(doc)
    assert doc["resolution"] is None  # no test was run
    assert not target.exists()
    assert tree_state(arrow_only) == before


@needs_root_namespaces
def test_a_report_that_cannot_be_written_after_the_test_is_exit_5(arrow_only, tmp_path):
    full = tmp_path / "full"
    full.mkdir()
    code, doc, out = run_test(
        arrow_only,
        "--batches",
        "0",
        "--report",
        str(full / "report.json"),
        setup=FILL.format(full=full),
    )
    assert code == 5, out
    assert "cannot write the report" in fail_texts(doc) and "No space left" in fail_texts(doc)


def test_no_home_folder_to_find_the_cache_in_is_exit_5(tmp_path):
    """A uid with no passwd entry and no HOME, HF_HOME unset: no default cache to expand."""
    if shutil.which("unshare") is None:
        pytest.skip("needs unshare(1)")
    env = dict(os.environ, HF_DATASETS_OFFLINE="1", HF_HUB_OFFLINE="1")
    for var in ("HOME", "HF_HOME", "XDG_CACHE_HOME", "HF_DATASETS_CACHE", "HF_HUB_CACHE"):
        env.pop(var, None)
    done = subprocess.run(
        [
            "unshare",
            "--map-user=54321",
            "--map-group=54321",
            sys.executable,
            "-m",
            "hf_loader.cachetest",
            DATASET,
            "--json",
            "--batches",
            "0",
        ],
        env=env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 5, done.stdout + done.stderr
    text = fail_texts(json.loads(done.stdout))
    assert "uid 54321" in text and "no home folder" in text and "set HF_HOME" in text


def test_cache_root_behind_a_folder_this_user_may_not_search_is_exit_5(arrow_only, tmp_path):
    locked = tmp_path / "locked"
    locked.mkdir()
    home = locked / "hf"
    shutil.move(arrow_only, home)
    os.chown(locked, NOBODY, NOBODY)
    locked.chmod(0o700)
    try:
        code, doc, out = run_test(home, "--batches", "0", drop_caps=True)
    finally:
        locked.chmod(0o755)
    assert code == 5, out
    assert "read and search" in fail_texts(doc) and "internal" not in out


def test_a_cache_folder_that_links_to_itself_is_exit_5(home):
    shutil.rmtree(home / "datasets")
    (home / "datasets").symlink_to("datasets")
    code, doc, out = run_test(home, "--batches", "0")
    assert code == 5, out
    assert "cannot be listed" in fail_texts(doc)


def test_an_image_kept_by_path_that_is_a_fifo_fails_at_once(tmp_path):
    """An Arrow copy whose image column holds paths (an imagefolder build): a FIFO planted
    at one must fail that row, never block a DataLoader worker forever."""
    import datasets

    from hf_loader.check import NotRegularFileError
    from hf_loader.data import HFImageDataset

    fifo = tmp_path / "image.jpg"
    os.mkfifo(fifo)
    features = datasets.Features(
        {"image": datasets.Image(), "label": datasets.ClassLabel(names=["a"])}
    )
    ds = datasets.Dataset.from_dict(
        {"image": [{"bytes": None, "path": str(fifo)}], "label": [0]}, features=features
    )

    def blocked(*_):
        raise AssertionError("reading the image blocked on the FIFO")

    previous = signal.signal(signal.SIGALRM, blocked)
    signal.alarm(30)  # a blocking open() is interrupted: the test fails instead of hanging
    try:
        with pytest.raises(NotRegularFileError, match="a FIFO"):
            HFImageDataset(ds, transform=lambda data: data)[0]
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)


# ------------------------------------------------------------------ more of a bad week


@pytest.mark.parametrize(
    "configs",
    [
        [{"config_name": "default", "data_files": [{"split": ["train"], "path": "data/t*"}]}],
        [{"config_name": 7, "data_files": "data/*"}],
        [{"config_name": "default", "data_files": [{"split": "train", "path": {"a": 1}}]}],
        {"config_name": "default", "data_files": 3},
    ],
    ids=["split-a-list", "name-a-number", "path-a-mapping", "data-files-a-number"],
)
def test_a_card_of_the_wrong_shape_is_exit_4_naming_it_not_a_crash(hub_only, configs):
    import yaml

    card = snapshot_dir(hub_only) / "README.md"
    text = card.read_text()
    header = yaml.safe_load(text.split("---")[1])
    header["configs"] = configs
    card.unlink()
    card.write_text("---\n" + yaml.safe_dump(header) + "---\n")
    before = tree_state(hub_only)
    code, doc, out = run_test(hub_only, "--batches", "0")
    assert code == 4, out
    assert f"{card}: malformed metadata" in fail_texts(doc)
    assert tree_state(hub_only) == before


@pytest.mark.parametrize("kind", ["fifo", "latin-1"])
def test_a_config_file_that_cannot_be_read_is_a_usage_error(arrow_only, tmp_path, kind):
    config = tmp_path / "cache-test.yaml"
    if kind == "fifo":
        os.mkfifo(config)  # no writer: reading it would block forever
    else:
        config.write_bytes("dataset: caf\xe9\n".encode("latin-1"))
    code, doc, out = run_test(arrow_only, "--config-file", str(config), timeout=60)
    assert code == 2, out
    assert "cannot read config file" in fail_texts(doc)
