"""hf-cache-test --require-mount: a dataset volume that is not mounted is exit 5, said first.

A host that boots without its volume has the cache root as a plain folder on the root
filesystem; without the option the test says "not cached" (exit 3). Mount points that always
exist ("/", /proc) stand for a mounted volume and a tmp folder for one that is not, so these
run without root; the bind-mount cases (as a sandbox's ReadOnlyPaths= makes them) need root
and a private mount namespace.
"""

from __future__ import annotations

import json
import os
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import jsonschema
import pytest
from conftest import DATASET
from test_cache_states import needs_root_namespaces, tree_state
from test_cachetest import SCRIPTS, fails, run_json

from hf_loader import report
from hf_loader.cachetest import CONFIG_FILE_KEYS, main
from hf_loader.cli.exitcodes import CACHE_TEST
from hf_loader.env import (
    Mount,
    filesystem_of,
    mount_unit_name,
    mounted_at,
    parse_mountinfo,
    read_mounts,
    systemd_escape_path,
)

VALIDATOR = jsonschema.Draft202012Validator(
    report.schema(), format_checker=jsonschema.FormatChecker()
)

# ------------------------------------------------------------------ the mount unit's name

UNIT_NAMES = [
    ("/", "-.mount"),
    ("/data/hf", "data-hf.mount"),
    ("/data/hf/", "data-hf.mount"),
    ("//data//hf", "data-hf.mount"),
    ("/data/./hf", "data-hf.mount"),
    ("/data/my hf", "data-my\\x20hf.mount"),
    ("/data/.hf", "data-.hf.mount"),
    ("/.hidden/x", "\\x2ehidden-x.mount"),
    ("/data/hf-cache", "data-hf\\x2dcache.mount"),
    ("/data/a\\b", "data-a\\x5cb.mount"),
    ("/data/é", "data-\\xc3\\xa9.mount"),
    ("/data/a:b_c.d", "data-a:b_c.d.mount"),
    ("/data/hf~1", "data-hf\\x7e1.mount"),
    ("/data/a+b@c", "data-a\\x2bb\\x40c.mount"),
]


@pytest.mark.parametrize("path, unit", UNIT_NAMES)
def test_mount_unit_name_is_systemd_escape_path(path, unit):
    assert mount_unit_name(path) == unit
    assert systemd_escape_path(path) == unit.removesuffix(".mount")


def test_mount_unit_name_refuses_dot_dot_as_systemd_does():
    with pytest.raises(ValueError, match="not a normalized path"):
        mount_unit_name("/data/../hf")


@pytest.mark.skipif(shutil.which("systemd-escape") is None, reason="no systemd-escape here")
def test_mount_unit_names_agree_with_systemd_escape():
    for path, _ in UNIT_NAMES:
        done = subprocess.run(
            ["systemd-escape", "--path", "--suffix=mount", "--", path],
            capture_output=True,
            text=True,
            check=True,
        )
        assert mount_unit_name(path) == done.stdout.strip(), path


# ------------------------------------------------------------------ mountinfo

BASE = "/no-such-folder-hf-loader-test"


def mountinfo(*lines: str) -> list[Mount]:
    return parse_mountinfo("\n".join(lines) + "\n")


ROOT_FS = "21 1 254:1 / / rw,relatime shared:1 - ext4 /dev/vda1 rw"


def test_parse_mountinfo_fields_optional_fields_and_escapes():
    (root, volume) = mountinfo(
        ROOT_FS,
        "not a mountinfo line",
        f"40 21 259:3 / {BASE}/my\\040data rw,noatime shared:5 master:2 - ext4 /dev/nvme1n1 rw",
    )
    assert (root.mount_id, root.parent_id, root.majmin, root.root) == (21, 1, "254:1", "/")
    assert (root.mount_point, root.fstype, root.source) == ("/", "ext4", "/dev/vda1")
    assert volume.mount_point == f"{BASE}/my data" and volume.fstype == "ext4"
    assert volume.parent_id == 21 and volume.source == "/dev/nvme1n1"


def test_a_volume_mounted_there_is_a_mount_point():
    mounts = mountinfo(ROOT_FS, f"40 21 259:3 / {BASE}/hf rw - ext4 /dev/nvme1n1 rw")
    mounted, entry = mounted_at(f"{BASE}/hf", mounts)
    assert mounted and entry.source == "/dev/nvme1n1"
    assert mounted_at(f"{BASE}/hf/", mounts)[0]
    assert mounted_at(f"{BASE}/hf/datasets", mounts) == (False, None)
    assert filesystem_of(f"{BASE}/hf/datasets", mounts) == f"{BASE}/hf"


def test_a_folder_bind_mounted_onto_itself_is_not():
    # What systemd's ReadOnlyPaths= makes of a plain folder in the unit's namespace.
    mounts = mountinfo(ROOT_FS, f"41 21 254:1 {BASE}/hf {BASE}/hf ro - ext4 /dev/vda1 rw")
    mounted, entry = mounted_at(f"{BASE}/hf", mounts)
    assert not mounted and entry.mount_id == 41
    assert filesystem_of(f"{BASE}/hf", mounts) == "/"


def test_a_self_bind_below_a_mounted_parent_is_not_either():
    mounts = mountinfo(
        ROOT_FS,
        f"40 21 259:3 / {BASE} rw - ext4 /dev/nvme1n1 rw",
        f"41 40 259:3 /hf {BASE}/hf ro - ext4 /dev/nvme1n1 rw",
    )
    assert not mounted_at(f"{BASE}/hf", mounts)[0]
    assert filesystem_of(f"{BASE}/hf", mounts) == BASE


def test_a_bind_mount_of_another_folder_is_one():
    # Same device as its parent (os.path.ismount says no), but another folder: the volume.
    mounts = mountinfo(ROOT_FS, f"42 21 254:1 /srv/hf {BASE}/hf rw - ext4 /dev/vda1 rw")
    assert mounted_at(f"{BASE}/hf", mounts)[0]


def test_the_mount_on_top_decides():
    volume = f"40 21 259:3 / {BASE}/hf rw - ext4 /dev/nvme1n1 rw"
    self_bind = f"41 21 254:1 {BASE}/hf {BASE}/hf ro - ext4 /dev/vda1 rw"
    assert not mounted_at(f"{BASE}/hf", mountinfo(ROOT_FS, volume, self_bind))[0]
    assert mounted_at(f"{BASE}/hf", mountinfo(ROOT_FS, self_bind, volume))[0]


def test_this_hosts_real_mounts(tmp_path):
    assert read_mounts() is not None
    assert mounted_at("/")[0]
    assert mounted_at("/proc")[0] and mounted_at("/proc")[1].fstype == "proc"
    assert mounted_at(str(tmp_path)) == (False, None)
    # Without mountinfo: os.path.ismount.
    assert read_mounts(str(tmp_path / "no-mountinfo")) is None
    assert mounted_at("/proc", []) == (True, None)
    assert mounted_at(str(tmp_path), []) == (False, None)


# ------------------------------------------------------------------ hf-cache-test


def finding_lines(doc: dict) -> list[tuple[str, str]]:
    return [(f["level"], f["stage"]) for f in doc["findings"]]


def test_mounted_volume_is_an_ok_finding_and_ready(arrow_only, capsys):
    code, doc = run_json(capsys, DATASET, "--require-mount", "/")
    assert code == 0 and doc["ready"] is True, doc["findings"]
    first = doc["findings"][0]
    assert (first["level"], first["stage"], first["path"]) == ("ok", "environment", "/")
    assert first["message"].startswith("dataset volume mounted at / (")
    assert doc["loading"]["batches"] == 2
    assert VALIDATOR.is_valid(doc)


def test_cache_root_not_mounted_is_exit_5_before_not_cached(home, capsys, tmp_path):
    # Without the option the empty datasets/ and hub/ on the root filesystem say "not cached".
    code, doc = run_json(capsys, DATASET)
    assert code == 3 and fails(doc)[0]["stage"] == "cache"

    before = tree_state(home)
    path = tmp_path / "report.json"
    code, doc = run_json(capsys, DATASET, "--require-mount", str(home), "--report", str(path))
    assert code == 5 and doc["exit_code"] == 5 and doc["verdict"] == "not_ready"
    first = doc["findings"][0]  # the report leads with the mount
    assert (first["level"], first["stage"], first["exit_code"]) == ("fail", "environment", 5)
    assert first["path"] == str(home)
    where = filesystem_of(str(home))
    on = "the root filesystem" if where == "/" else f"the filesystem mounted at {where}"
    assert first["message"] == (
        f"{home} is not a mount point: the dataset volume is not mounted, so the cache folder "
        f"is a plain folder (holding datasets, hub) on {on}"
    )
    unit = shlex.quote(mount_unit_name(str(home)))  # tmp folders hold '-': data\x2d...
    assert first["remedy"] == (
        f"mount it (mount {home}; see systemctl status {unit} and journalctl -b -u {unit}) "
        "or rerun the dataset_volume role"
    )
    # Not "not cached": the cache and loading stages did not look at the folder beneath.
    assert [f["stage"] for f in fails(doc)] == ["environment"]
    assert doc["error"] is None and doc["resolution"] is None and doc["loading"] is None
    assert ("note", "cache") in finding_lines(doc)
    stored = json.loads(path.read_text())
    assert stored["message"].startswith(f"{home} is not a mount point: ")
    assert f"fix: mount it (mount {home}; " in stored["message"]
    assert VALIDATOR.is_valid(stored) and report.schema_problems(stored) == []
    assert tree_state(home) == before  # the check wrote nothing


def test_empty_unmounted_cache_root_is_said_to_be_empty(tmp_path, capsys, monkeypatch):
    root = tmp_path / "hf"
    root.mkdir()
    monkeypatch.setenv("HF_HOME", str(root))
    code = main(["--require-mount", str(root), "--batches", "0"])
    out = capsys.readouterr().out
    assert code == 5
    first = out.splitlines()[1]
    assert first.startswith(f"[FAIL] environment: {root} is not a mount point: ")
    assert "so the cache folder is an empty folder on " in first
    assert "not cached" not in out and out.rstrip().endswith("NOT READY (exit 5)")


def test_a_complete_copy_on_the_unmounted_folder_is_not_used(arrow_only, capsys):
    code, doc = run_json(capsys, DATASET, "--require-mount", str(arrow_only))
    assert code == 5
    assert doc["resolution"] is None and doc["loading"] is None


def test_parent_of_the_cache_root_not_mounted_names_the_cache_folder(home, capsys):
    code, doc = run_json(capsys, DATASET, "--require-mount", str(home.parent))
    assert code == 5
    (f,) = fails(doc)
    assert f["path"] == str(home.parent)
    assert f["message"].startswith(f"{home.parent} is not a mount point: ")
    assert f"the cache folder {home} is a plain folder (holding datasets, hub)" in f["message"]


def test_missing_mount_point_is_exit_5(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("HF_HOME", str(tmp_path / "data" / "hf"))
    code, doc = run_json(capsys, DATASET, "--require-mount", str(tmp_path / "data"))
    assert code == 5
    f = fails(doc)[0]
    assert f["message"].startswith(f"{tmp_path / 'data'} does not exist, so it is not a mount")
    assert "dataset_volume role" in f["remedy"] and ".mount" in f["remedy"]
    assert not (tmp_path / "data").exists()


def test_a_file_in_place_of_the_mount_point_is_exit_5(tmp_path, capsys, monkeypatch):
    (tmp_path / "data").write_text("")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "data" / "hf"))
    code, doc = run_json(capsys, DATASET, "--require-mount", str(tmp_path / "data"))
    assert code == 5
    assert "is not a folder, so it is not a mount point" in fails(doc)[0]["message"]


def test_a_path_that_does_not_hold_the_cache_root_is_a_usage_error(home, capsys):
    code, doc = run_json(capsys, DATASET, "--require-mount", "/proc")
    assert code == 2
    (f,) = doc["findings"]
    assert f["stage"] == "usage" and f["path"] == "/proc"
    assert "/proc" in f["message"] and str(home) in f["message"]
    assert "neither the cache root" in f["message"] and f["remedy"]
    # a folder below the cache root is no better: its mount would not hold the cache
    code, doc = run_json(capsys, DATASET, "--require-mount", str(home / "hub"))
    assert code == 2 and doc["findings"][0]["stage"] == "usage"


def test_cache_folders_set_apart_from_hf_home_may_share_a_mount(home, capsys, monkeypatch):
    volume = home.parent / "volume"
    (volume / "datasets").mkdir(parents=True)
    (volume / "hub").mkdir()
    monkeypatch.setenv("HF_DATASETS_CACHE", str(volume / "datasets"))
    monkeypatch.setenv("HF_HUB_CACHE", str(volume / "hub"))
    code, doc = run_json(capsys, DATASET, "--require-mount", str(volume))
    assert code == 5
    assert f"the cache folder {volume / 'datasets'} is an empty folder" in fails(doc)[0]["message"]


@pytest.mark.parametrize("value", ["data/hf", ""])
def test_a_relative_or_empty_path_is_a_usage_error(capsys, value):
    code, doc = run_json(capsys, DATASET, "--require-mount", value)
    assert code == 2
    assert "is not an absolute path" in doc["findings"][0]["message"]


def test_trailing_slashes_are_the_same_mount_point(arrow_only, capsys):
    code, doc = run_json(capsys, DATASET, "--require-mount", str(arrow_only) + "//")
    assert code == 5 and fails(doc)[0]["path"] == str(arrow_only)


def test_config_file_key_require_mount(arrow_only, tmp_path, capsys):
    assert "require_mount" in CONFIG_FILE_KEYS
    config = tmp_path / "cache-test.yaml"
    mount = json.dumps(str(arrow_only))
    config.write_text(f"dataset: {DATASET}\nbatches: 0\nrequire_mount: {mount}\n")
    assert main(["--config-file", str(config), "--json"]) == 5
    doc = json.loads(capsys.readouterr().out)
    assert fails(doc)[0]["path"] == str(arrow_only)
    config.write_text(f"dataset: {DATASET}\nbatches: 0\nrequire_mount: /\n")
    assert main(["--config-file", str(config), "--json"]) == 0
    capsys.readouterr()
    # the flag overrides the file; a value that is no path is a usage error naming the file
    assert main(["--config-file", str(config), "--require-mount", str(arrow_only)]) == 5
    capsys.readouterr()
    config.write_text("require_mount: [/data]\n")
    assert main(["--config-file", str(config), "--json"]) == 2
    doc = json.loads(capsys.readouterr().out)
    assert "'require_mount' must be a single value" in doc["findings"][0]["message"]


def test_help_and_exit_codes_name_the_option():
    assert "--require-mount" in CACHE_TEST.epilog()
    done = subprocess.run(
        [str(SCRIPTS / "hf-cache-test"), "--help"], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0
    assert "--require-mount PATH" in done.stdout
    assert "is not a mount point" in done.stdout.split("exit codes:")[1].replace("\n     ", " ")


# ------------------------------------------------------------------ real bind mounts (root)


def cache_test_in_namespace(mount_command: str, home: Path, *args: str):
    env = dict(os.environ, HF_HOME=str(home), HF_DATASETS_OFFLINE="1", HF_HUB_OFFLINE="1")
    command = [sys.executable, "-m", "hf_loader.cachetest", DATASET, "--json", *args]
    command = ["unshare", "-m", "sh", "-c", f'{mount_command} && exec "$@"', "sh", *command]
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=180)
    return done.returncode, json.loads(done.stdout)


@needs_root_namespaces
def test_the_sandboxs_read_only_self_bind_of_a_plain_folder_is_still_not_mounted(home):
    # ReadOnlyPaths= on a folder that is no mount point bind-mounts it onto itself.
    bind = f"mount --bind {home} {home} && mount -o remount,bind,ro {home}"
    code, doc = cache_test_in_namespace(bind, home, "--require-mount", str(home), "--batches", "0")
    assert code == 5, doc["findings"]
    assert fails(doc)[0]["message"].startswith(f"{home} is not a mount point: ")


@needs_root_namespaces
def test_a_volume_bind_mounted_from_the_same_filesystem_is_mounted(arrow_only, tmp_path):
    point = tmp_path / "mnt" / "hf"
    point.mkdir(parents=True)
    args = ("--require-mount", str(point), "--batches", "1", "--batch-size", "2", "--workers", "0")
    code, doc = cache_test_in_namespace(f"mount --bind {arrow_only} {point}", point, *args)
    assert code == 0, doc["findings"]
    assert doc["findings"][0]["message"].startswith(f"dataset volume mounted at {point} (")
    assert doc["loading"]["batches"] == 1
    # and a filesystem of its own (tmpfs) with empty cache folders: mounted, then "not cached"
    tmpfs = f"mount -t tmpfs tmpfs {point} && mkdir {point}/datasets {point}/hub"
    code, doc = cache_test_in_namespace(tmpfs, point, *args)
    assert code == 3, doc["findings"]
    assert doc["findings"][0]["message"] == f"dataset volume mounted at {point} (tmpfs from tmpfs)"
