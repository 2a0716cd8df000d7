"""Observe once, act on what differs: gpu_fleet.common.path_state, paths_to_fix, and hf_env built on them."""

import grp
import hashlib
import json
import os
import pwd
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from ansible_collections.gpu_fleet.common.plugins.module_utils.paths import paths_to_fix, wanted_paths
from ansible_collections.gpu_fleet.common.plugins.modules.path_state import describe, text

ROOT = Path(__file__).resolve().parent.parent
ANSIBLE_PLAYBOOK = Path(sys.executable).parent / "ansible-playbook"
USER = pwd.getpwuid(os.getuid()).pw_name
GROUP = grp.getgrgid(os.getgid()).gr_name


def test_describe_reports_kind_owner_mode_and_content_hash(tmp_path):
    folder, text, link = tmp_path / "dir", tmp_path / "file", tmp_path / "link"
    folder.mkdir(mode=0o750)
    folder.chmod(0o750)
    text.write_bytes(b"HF_HOME=/data/hf\n")
    text.chmod(0o644)
    link.symlink_to(text)
    assert describe(str(folder)) == {
        "exists": True,
        "kind": "directory",
        "owner": USER,
        "group": GROUP,
        "mode": "0750",
        "sha1": "",
        "target": "",
    }
    assert describe(str(text))["sha1"] == hashlib.sha1(b"HF_HOME=/data/hf\n").hexdigest()
    assert describe(str(text))["mode"] == "0644"
    # A link is described, not followed: writing through it is the file module's decision.
    assert describe(str(link))["kind"] == "link"
    assert describe(str(link))["target"] == str(text)
    assert describe(str(tmp_path / "missing")) == {
        "exists": False,
        "kind": "absent",
        "owner": "",
        "group": "",
        "mode": "",
        "sha1": "",
        "target": "",
    }


OBSERVED = {
    "/etc/hf-cache": {
        "exists": True,
        "kind": "directory",
        "owner": "root",
        "group": "root",
        "mode": "0755",
        "sha1": "",
    },
    "/etc/hf-cache/hf.env": {
        "exists": True,
        "kind": "file",
        "owner": "root",
        "group": "root",
        "mode": "0644",
        "sha1": "aa",
    },
    "/etc/hf-cache/token": {"exists": False, "kind": "absent", "owner": "", "group": "", "mode": "", "sha1": ""},
    "/etc/hf-cache/link": {
        "exists": True,
        "kind": "link",
        "owner": "root",
        "group": "root",
        "mode": "0777",
        "sha1": "",
        "target": "/opt/hf-loader/venv/bin/hf-train",
    },
}


def test_nothing_to_fix_when_every_attribute_matches():
    wanted = wanted_paths(["/etc/hf-cache"], "directory", owner="root", group="root", mode="0755")
    wanted += wanted_paths([["/etc/hf-cache/hf.env", "aa"]], "file", owner="root", group="root", mode="644")
    wanted += wanted_paths(["/etc/hf-cache/token"], "absent")
    wanted += wanted_paths([["/etc/hf-cache/link", "/opt/hf-loader/venv/bin/hf-train"]], "link")
    assert paths_to_fix(OBSERVED, wanted) == []


@pytest.mark.parametrize(
    ("wanted", "why"),
    [
        ({"path": "/etc/hf-cache/hf.env", "sha1": "bb"}, "other content"),
        ({"path": "/etc/hf-cache/hf.env", "mode": "0600"}, "other mode"),
        ({"path": "/etc/hf-cache/hf.env", "mode": "u=rw,go=r"}, "a symbolic mode is left to the file module"),
        ({"path": "/etc/hf-cache/hf.env", "owner": "trainer"}, "other owner"),
        ({"path": "/etc/hf-cache/hf.env", "group": "trainer"}, "other group"),
        ({"path": "/etc/hf-cache/hf.env", "state": "directory"}, "a file where a folder is wanted"),
        ({"path": "/etc/hf-cache", "state": "file"}, "a folder where a file is wanted"),
        ({"path": "/etc/hf-cache/token", "sha1": "cc"}, "missing"),
        ({"path": "/etc/hf-cache/link", "sha1": "cc"}, "a link where a file is wanted"),
        ({"path": "/etc/hf-cache/link", "state": "link", "src": "/usr/bin/true"}, "a link to elsewhere"),
        ({"path": "/etc/hf-cache/hf.env", "state": "link", "src": "/usr/bin/true"}, "a file where a link is wanted"),
        ({"path": "/etc/hf-cache/hf.env", "state": "absent"}, "present where absent is wanted"),
        ({"path": "/etc/not-observed", "state": "absent"}, "not observed"),
    ],
)
def test_a_difference_in_any_given_attribute_is_to_fix(wanted, why):
    assert paths_to_fix(OBSERVED, [wanted]) == [wanted["path"]], why


def test_what_is_not_given_is_not_compared():
    assert paths_to_fix(OBSERVED, [{"path": "/etc/hf-cache/hf.env"}]) == []


def play_on_localhost(tmp_path, name, play, *extra_args, **env_extra):
    """Write `play` to tmp_path/name and run it on localhost with the project's collections."""
    (tmp_path / name).write_text(yaml.safe_dump(play))
    env = {
        **os.environ,
        "ANSIBLE_COLLECTIONS_PATH": str(ROOT / "collections"),
        "ANSIBLE_STDOUT_CALLBACK": "ansible.builtin.json",
        "ANSIBLE_LOCALHOST_WARNING": "false",
        "ANSIBLE_INVENTORY_UNPARSED_WARNING": "false",
        **env_extra,
    }
    argv = [
        str(ANSIBLE_PLAYBOOK),
        "-i",
        "localhost,",
        "-c",
        "local",
        "-e",
        f"ansible_python_interpreter={sys.executable}",
    ]
    return subprocess.run(
        [*argv, str(tmp_path / name), *extra_args],
        capture_output=True,
        text=True,
        env=env,
        cwd=tmp_path,
        check=False,
        timeout=300,
    )


def run_hf_env(tmp_path, *extra_args, token="", modules_run=False):
    """Apply the real hf_env role to localhost, every path under tmp_path.

    Returns the JSON callback's tasks, or with modules_run the modules the run executed on the
    host in order (from -vvv's EXEC lines: no_log hides whether a task ran, not this).
    """
    root = tmp_path / "host"
    role_vars = {
        "hf_env_cache_root": f"{root}/data/hf",
        "hf_env_config_dir": f"{root}/etc/hf-cache",
        "hf_env_profile_file": f"{root}/etc/profile.d/hf-cache.sh",
        "hf_env_environment_d_file": f"{root}/etc/environment.d/60-hf-cache.conf",
        "hf_env_owner": USER,
        "hf_env_group": GROUP,
        "hf_env_token": token,
    }
    play = [{"hosts": "localhost", "gather_facts": False, "roles": [{"role": "hf_env", **role_vars}]}]
    done = play_on_localhost(
        tmp_path,
        "site.yml",
        play,
        *(["-vvv"] if modules_run else []),
        *extra_args,
        ANSIBLE_ROLES_PATH=str(ROOT / "roles"),
        ANSIBLE_STDOUT_CALLBACK="ansible.builtin.default" if modules_run else "ansible.builtin.json",
        ANSIBLE_PIPELINING="false",
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    if modules_run:
        return root, re.findall(r"EXEC /bin/sh -c '\S+ \S+/AnsiballZ_(\w+)\.py", done.stdout)
    return root, {
        task["task"]["name"]: task["hosts"]["localhost"] for task in json.loads(done.stdout)["plays"][0]["tasks"]
    }


WRITERS = (
    "Create the cache folders",
    "Create the folders of the environment files",
    "Write the environment for login shells, systemd user managers and services",
    "Write the token file",
    "Remove a token file that is no longer configured",
)


def acted_on(tasks):
    """Path to task name, for every item a writer task ran for (changed or not)."""
    acted = {}
    for name in WRITERS:
        result = tasks[f"hf_env : {name}"]
        for item in result.get("results", []):
            looped = item["item"]
            acted[looped if isinstance(looped, str) else looped["dest"]] = name
        if "results" not in result and not result.get("skipped"):
            acted[result.get("path") or result.get("dest") or name] = name  # no_log hides the path
    return acted


def test_hf_env_acts_only_on_what_differs_and_check_mode_stays_exact(tmp_path):
    root, first = run_hf_env(tmp_path, token="hf_unitTestToken0123456789")
    assert len(acted_on(first)) == 10  # 3 cache folders, 3 folders of the files, 3 files, the token
    environment = root / "etc/hf-cache/hf.env"
    assert "HF_DATASETS_OFFLINE=1" in environment.read_text()

    _, second = run_hf_env(tmp_path, token="hf_unitTestToken0123456789")
    assert not any(result.get("changed") for result in second.values())
    _, modules = run_hf_env(tmp_path, token="hf_unitTestToken0123456789", modules_run=True)
    assert modules == ["path_state"], "a run that changes nothing makes one call to the host"

    (root / "etc/profile.d/hf-cache.sh").chmod(0o600)  # the mode alone differs
    environment.write_text("HF_DATASETS_OFFLINE=0\n")
    _, check = run_hf_env(tmp_path, "--check", "--diff", token="hf_unitTestToken0123456789")
    writes = check["hf_env : Write the environment for login shells, systemd user managers and services"]["results"]
    profile = root / "etc/profile.d/hf-cache.sh"
    assert sorted(item["item"]["dest"] for item in writes) == [str(environment), str(profile)]
    assert all(item["changed"] for item in writes)
    assert "HF_DATASETS_OFFLINE=1" in json.dumps([item.get("diff") for item in writes])
    assert environment.read_text() == "HF_DATASETS_OFFLINE=0\n", "check mode wrote"

    _, fix = run_hf_env(tmp_path, token="hf_unitTestToken0123456789")
    assert sorted(acted_on(fix)) == sorted([str(environment), str(root / "etc/profile.d/hf-cache.sh")])
    assert "HF_DATASETS_OFFLINE=1" in environment.read_text()
    assert f"{(root / 'etc/profile.d/hf-cache.sh').stat().st_mode & 0o777:o}" == "644"

    _, untokened = run_hf_env(tmp_path)
    # Without a token the environment stops naming HF_TOKEN_PATH: the three files change too.
    assert acted_on(untokened)[str(root / "etc/hf-cache/token")] == "Remove a token file that is no longer configured"
    assert len(acted_on(untokened)) == 4
    assert not (root / "etc/hf-cache/token").exists()
    assert "HF_TOKEN_PATH" not in environment.read_text()


def test_mode_set_asks_only_for_its_bits():
    observed = {
        "/srv/metrics": {"exists": True, "kind": "directory", "owner": "root", "group": "trainer", "mode": "2775"}
    }
    wanted = {"path": "/srv/metrics", "state": "directory", "group": "trainer", "mode_set": "0070"}
    assert paths_to_fix(observed, [wanted]) == []
    observed["/srv/metrics"]["mode"] = "0755"  # the group may not write
    assert paths_to_fix(observed, [wanted]) == ["/srv/metrics"]


class FakeModule:
    """What run_read_only needs of AnsibleModule: run_command, as the real one runs it."""

    def run_command(self, argv, environ_update=None):
        done = subprocess.run(argv, capture_output=True, text=True, env={**os.environ, **(environ_update or {})})
        return done.returncode, done.stdout, done.stderr


def test_listings_commands_and_accounts_are_observed_in_the_same_call(tmp_path):
    from ansible_collections.gpu_fleet.common.plugins.modules.path_state import account, listing, run_read_only

    (tmp_path / "b-1.0-py3-none-any.whl").write_bytes(b"wheel")
    (tmp_path / "a.txt").write_text("x")
    (tmp_path / "folder").mkdir()
    (tmp_path / "link.whl").symlink_to(tmp_path / "a.txt")
    files = listing(str(tmp_path))
    # Regular files only, as ansible.builtin.find lists them by default.
    assert [Path(f["path"]).name for f in files] == ["a.txt", "b-1.0-py3-none-any.whl"]
    assert files[1]["size"] == 5 and files[1]["mtime"] == (tmp_path / "b-1.0-py3-none-any.whl").stat().st_mtime
    assert listing(str(tmp_path / "missing")) == []

    printed = run_read_only(FakeModule(), [sys.executable, "-c", "print('python3-venv installed')"])
    assert printed == {"rc": 0, "stdout_lines": ["python3-venv installed"]}
    assert run_read_only(FakeModule(), [sys.executable, "-c", "raise SystemExit(1)"])["rc"] == 1
    # A venv not made yet is an observation, not a failure of the whole call.
    assert run_read_only(FakeModule(), [str(tmp_path / "venv/bin/python"), "-c", "pass"]) == {
        "rc": 127,
        "stdout_lines": [],
    }

    me = pwd.getpwuid(os.getuid())
    assert account(USER) == {"exists": True, "home": me.pw_dir, "shell": me.pw_shell, "group": GROUP}
    assert account("no-such-account-here") == {"exists": False, "home": "", "shell": "", "group": ""}


def observe(tmp_path, options, *extra_args):
    """Run gpu_fleet.common.path_state once on localhost with these options: (rc, the task's result)."""
    task = {"name": "Observe", "gpu_fleet.common.path_state": options, "check_mode": False}
    play = [{"hosts": "localhost", "gather_facts": False, "tasks": [task]}]
    done = play_on_localhost(tmp_path, "observe.yml", play, *extra_args)
    return done.returncode, json.loads(done.stdout)["plays"][0]["tasks"][0]["hosts"]["localhost"]


def test_contents_reads_a_files_text_and_a_missing_path_as_null_also_in_check_mode(tmp_path):
    env_file, latin = tmp_path / "hf.env", tmp_path / "latin1.txt"
    env_file.write_text("HF_HOME=/data/hf\n")
    latin.write_bytes(b"caf\xe9\n")  # not UTF-8: replaced, not a failure
    rc, result = observe(tmp_path, {"contents": [str(env_file), str(tmp_path / "missing"), str(latin)]}, "--check")
    assert rc == 0, result
    assert result["changed"] is False
    assert result["contents"] == {
        str(env_file): "HF_HOME=/data/hf\n",
        str(tmp_path / "missing"): None,
        str(latin): "caf\ufffd\n",
    }


def test_a_file_over_contents_max_bytes_fails_naming_the_path_and_the_option(tmp_path):
    big = tmp_path / "big.txt"
    big.write_text("x" * 11)
    rc, result = observe(tmp_path, {"contents": [str(big)], "contents_max_bytes": 10})
    assert rc != 0
    assert result["failed"] is True
    assert str(big) in result["msg"]
    assert "contents_max_bytes (10)" in result["msg"]
    rc, result = observe(tmp_path, {"contents": [str(big)], "contents_max_bytes": 11})
    assert rc == 0, result
    assert result["contents"][str(big)] == "x" * 11


def test_a_listing_with_contents_gives_each_file_its_text_under_the_same_cap(tmp_path):
    folder = tmp_path / "profiles"
    folder.mkdir()
    (folder / "a.conf").write_text("A=1\n")
    (folder / "b.conf").write_text("B=2\n")
    (folder / "sub").mkdir()  # not a regular file: not listed, not read
    rc, result = observe(tmp_path, {"listings": [str(folder)], "listing_contents": True})
    assert rc == 0, result
    listed = result["listings"][str(folder)]
    assert [(Path(entry["path"]).name, entry["text"]) for entry in listed] == [("a.conf", "A=1\n"), ("b.conf", "B=2\n")]
    rc, result = observe(tmp_path, {"listings": [str(folder)]})
    assert rc == 0, result
    assert "text" not in result["listings"][str(folder)][0], "text only when asked for"
    assert result["contents"] == {}
    rc, result = observe(tmp_path, {"listings": [str(folder)], "listing_contents": True, "contents_max_bytes": 3})
    assert rc != 0
    assert str(folder / "a.conf") in result["msg"]
    assert "contents_max_bytes" in result["msg"]


def test_contents_of_a_folder_fails_with_the_reason(tmp_path):
    rc, result = observe(tmp_path, {"contents": [str(tmp_path)]})
    assert rc != 0
    assert result["msg"].startswith(f"path_state cannot read {tmp_path}: ")


def test_listing_match_lists_and_reads_only_the_names_it_matches(tmp_path):
    folder = tmp_path / "config"
    folder.mkdir()
    (folder / "job-a.json").write_text("{}\n")
    (folder / ".job-b.json.tmp").write_text("partial")
    (folder / "big.lock").write_text("x" * 100)  # over the cap, but not asked for: no failure
    rc, result = observe(
        tmp_path,
        {
            "listings": [str(folder)],
            "listing_contents": True,
            "listing_match": r"job-.*\.json",
            "contents_max_bytes": 10,
        },
    )
    assert rc == 0, result
    assert [(Path(entry["path"]).name, entry["text"]) for entry in result["listings"][str(folder)]] == [
        ("job-a.json", "{}\n")
    ]
    rc, result = observe(tmp_path, {"listings": [str(folder)], "listing_match": "job-("})
    assert rc != 0
    assert "listing_match is not a regular expression" in result["msg"]


def test_a_listed_file_swapped_for_a_link_is_not_followed(tmp_path):
    # The race a listing with contents must survive: the file was regular when listed and is a link
    # to a root-only file when read. Reading it through the link would hand that file to the caller.
    secret, swapped = tmp_path / "secret", tmp_path / "cordon"
    secret.write_text("root only\n")
    swapped.symlink_to(secret)
    with pytest.raises(OSError) as refused:
        text(swapped, 100)
    assert refused.value.filename == str(swapped)


def test_contents_never_reads_through_a_link_or_waits_on_a_fifo(tmp_path):
    # The attack: the training user owns the folder of the cache test's report (hf_loader_report_file)
    # and puts a link to a root-only file, or a FIFO, where root's observation reads the report.
    secret = tmp_path / "shadow"
    secret.write_text("root:secret-hash\n")
    report = tmp_path / "cache-test.json"
    report.symlink_to(secret)
    rc, result = observe(tmp_path, {"contents": [str(report)]})
    assert rc != 0
    assert result["msg"] == f"path_state cannot read {report}: a symbolic link, which is not followed"
    assert "secret-hash" not in json.dumps(result)
    report.unlink()
    os.mkfifo(report)
    rc, result = observe(tmp_path, {"contents": [str(report)]})  # a blocking open would hit the timeout
    assert rc != 0
    assert result["msg"] == f"path_state cannot read {report}: not a regular file"
