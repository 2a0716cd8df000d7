"""The checks every role's preflight runs (gpu_fleet.common.preflight): the rules, the messages, the action."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from ansible_collections.gpu_fleet.common.plugins.module_utils.preflight import (
    failures,
    path_problem,
    unknown_variables,
    word_problem,
)

ROOT = Path(__file__).resolve().parent.parent
ANSIBLE_PLAYBOOK = Path(sys.executable).parent / "ansible-playbook"


@pytest.mark.parametrize(
    "path",
    [
        "/data/hf",
        "/data/hf/",
        "/",
        "/var/lib/hf-loader/cache-test.json",
        "/dev/disk/by-id",
        "/srv//twice",
        "/a/.hidden",
    ],
)
def test_plain_absolute_paths_pass(path):
    assert path_problem(path) == ""


@pytest.mark.parametrize(
    ("path", "problem"),
    [
        ("relative/cache", "not absolute"),
        ("", "empty"),
        (None, "not a string"),
        (["/data"], "not a string"),
        ("/data/my cache", "holds whitespace"),
        ("/data/tab\there", "holds whitespace"),
        ("/data/a,b", "holds ','"),
        ("/data/#x", "holds '#'"),
        ("/data/$HOME", "holds '$'"),
        ("/data/`id`", "holds '`'"),
        ("/data/it's", 'holds "\'"'),
        ('/data/"q"', "holds '\"'"),
        ("/data/back\\slash", "holds '\\\\'"),
        ("/data/../etc", "has a '..' segment"),
        ("/data/..", "has a '..' segment"),
        ("/data/./hf", "has a '.' segment"),
    ],
)
def test_unsafe_paths_are_refused_with_the_reason(path, problem):
    assert path_problem(path) == problem


def test_relative_paths_follow_the_same_rule_without_the_leading_slash():
    assert path_problem("hub", relative=True) == ""
    assert path_problem("datasets/ns___name", relative=True) == ""
    assert path_problem("/hub", relative=True) == "starts with '/'"
    assert path_problem("../hub", relative=True) == "has a '..' segment"
    assert path_problem("a b", relative=True) == "holds whitespace"


@pytest.mark.parametrize("value", ["1", "0,1", "eth0#1", 8, 1.5, True, "/data/hf"])
def test_single_words_pass(value):
    # Commas and '#' are plain characters in an environment file's value.
    assert word_problem(value) == ""


@pytest.mark.parametrize(
    ("value", "problem"),
    [("a b", "holds whitespace"), ("$HOME", "holds '$'"), ({"a": 1}, "a mapping"), (["a"], "a list")],
)
def test_what_is_not_a_single_word(value, problem):
    assert word_problem(value) == problem


def test_unknown_variables_are_those_with_the_prefix_the_role_does_not_know():
    names = ["hf_env_cache_root", "hf_env_cahce_root", "hf_envelope", "hf_loader_user", "inventory_hostname"]
    assert unknown_variables(names, "hf_env", ["hf_env_cache_root"]) == ["hf_env_cahce_root"]
    assert unknown_variables(["hf_env_zz", "hf_env_aa"], "hf_env", []) == ["hf_env_aa", "hf_env_zz"]


def test_nothing_fails_when_every_check_passes():
    assert (
        failures(
            "hf_env",
            known=["hf_env_cache_root"],
            paths={"hf_env_cache_root": "/data/hf", "hf_env_none": []},
            relative_paths={"dirs": ["hub", "datasets"]},
            words={"hf_env_extra_variables": {"CUDA_VISIBLE_DEVICES": "0,1"}},
            checks=[{"ok": True, "msg": "never said"}],
        )
        == []
    )


def test_every_failure_is_said_unknown_variables_first_then_paths_words_and_checks():
    messages = failures(
        "dataset_volume",
        unknown=["dataset_volume_fstpye"],
        known=["dataset_volume_fstype", "dataset_volume_mount_point"],
        paths={"dataset_volume_mount_point": "data/relative", "dataset_volume_by_id_dir": "/dev/disk/by-id"},
        relative_paths={"dataset_volume_expected_dirs": ["hub", "../up"]},
        words={"hf_env_extra_variables": {"OK": "1", "BAD": "a b"}},
        checks=[{"ok": True, "msg": "passed"}, {"ok": False, "msg": "First failed."}, {"ok": False, "msg": "Second."}],
    )
    assert messages == [
        "Unknown variable(s) dataset_volume_fstpye: dataset_volume knows only dataset_volume_fstype,"
        " dataset_volume_mount_point. Fix the spelling in your inventory or extra vars.",
        'Bad path(s): dataset_volume_mount_point "data/relative" (not absolute). A path must be absolute, without'
        " whitespace, quotes, commas, '#', '$', '`', '\\' or a '.' or '..' segment, for example /data/hf.",
        "Bad relative path(s): dataset_volume_expected_dirs[1] \"../up\" (has a '..' segment). These are relative,"
        " without whitespace, quotes, commas, '#', '$', '`', '\\' or a '.' or '..' segment, for example hub or"
        " datasets/x.",
        'Not single words: hf_env_extra_variables.BAD "a b" (holds whitespace). Each value must be one word'
        " (not a list or mapping) without whitespace, quotes, '$', '`' or '\\'.",
        "First failed.",
        "Second.",
    ]


def test_every_bad_path_is_named_with_its_value_in_one_message():
    [message] = failures(
        "hf_loader", paths={"hf_loader_cache_root": "/a b", "hf_loader_train_writable_paths": ["/ok", "x"]}
    )
    assert 'hf_loader_cache_root "/a b" (holds whitespace)' in message
    assert 'hf_loader_train_writable_paths[1] "x" (not absolute)' in message
    assert "/ok" not in message


# --- the action, run by Ansible on a throwaway role --------------------------------------------


def run_role(tmp_path, tasks, *extra_args, printed=False):
    """Apply a role named demo (options demo_path, demo_flag) with these tasks to localhost.

    Returns the exit status and the last task's result, or with printed what the default callback printed.
    """
    role = tmp_path / "roles" / "demo"
    (role / "meta").mkdir(parents=True)
    (role / "tasks").mkdir()
    options = {"demo_path": {"type": "path", "default": "/data/hf"}, "demo_flag": {"type": "bool", "default": True}}
    specs = {"argument_specs": {"main": {"short_description": "Demo", "options": options}}}
    (role / "meta" / "argument_specs.yml").write_text(yaml.safe_dump(specs, sort_keys=False))
    (role / "defaults").mkdir()
    (role / "defaults" / "main.yml").write_text(yaml.safe_dump({"demo_path": "/data/hf", "demo_flag": True}))
    (role / "tasks" / "main.yml").write_text(yaml.safe_dump(tasks))
    (tmp_path / "site.yml").write_text(
        yaml.safe_dump([{"hosts": "localhost", "gather_facts": False, "roles": ["demo"]}])
    )
    env = {
        **os.environ,
        "ANSIBLE_ROLES_PATH": str(tmp_path / "roles"),
        "ANSIBLE_COLLECTIONS_PATH": str(ROOT / "collections"),
        "ANSIBLE_STDOUT_CALLBACK": "ansible.builtin.default" if printed else "ansible.builtin.json",
        "ANSIBLE_LOCALHOST_WARNING": "false",
        "ANSIBLE_INVENTORY_UNPARSED_WARNING": "false",
    }
    done = subprocess.run(
        [str(ANSIBLE_PLAYBOOK), "-i", "localhost,", "-c", "local", str(tmp_path / "site.yml"), *extra_args],
        capture_output=True,
        text=True,
        env=env,
        cwd=tmp_path,
        check=False,
    )
    if printed:
        return done.returncode, done.stdout
    results = json.loads(done.stdout)["plays"][0]["tasks"]
    return done.returncode, results[-1]["hosts"]["localhost"]


PREFLIGHT = {
    "name": "Check the variables",
    "gpu_fleet.common.preflight": {
        "role": "demo",
        "facts": ["demo_report"],
        "paths": {"demo_path": "{{ demo_path }}"},
        "checks": [{"ok": "{{ demo_flag | bool }}", "msg": "demo_flag must be true."}],
    },
}


def test_the_action_passes_good_variables_in_check_mode_and_accepts_the_role_facts(tmp_path):
    rc, result = run_role(tmp_path, [PREFLIGHT], "--check", "-e", '{"demo_report": {}}')
    assert rc == 0, result
    assert result["changed"] is False
    assert result["msg"] == "The demo variables passed every check."


def test_the_action_fails_with_every_message(tmp_path):
    rc, result = run_role(
        tmp_path, [PREFLIGHT], "-e", '{"demo_pth": "/x", "demo_path": "relative", "demo_flag": false}'
    )
    assert rc != 0
    assert result["failed"] is True
    assert result["msg"].startswith(
        "Unknown variable(s) demo_pth: demo knows only demo_path, demo_flag, demo_report. Fix the spelling"
    )
    assert 'demo_path "relative" (not absolute)' in result["msg"]
    assert result["msg"].endswith("demo_flag must be true.")


def test_a_check_whose_ok_is_not_a_boolean_is_an_error(tmp_path):
    task = {**PREFLIGHT, "gpu_fleet.common.preflight": {"role": "demo", "checks": [{"ok": "maybe", "msg": "m"}]}}
    rc, result = run_role(tmp_path, [task])
    assert rc != 0
    assert "maybe" in result["msg"]


def test_a_longer_role_prefix_belongs_to_that_role():
    # Role fleet's prefix is the start of fleet_pull's and fleet_artifact's: their variables are theirs.
    names = ["fleet_cache_root", "fleet_cahce_root", "fleet_pull_repo_url", "fleet_artifact_dir", "fleet_pullx"]
    roles = ["fleet", "fleet_pull", "fleet_artifact", "hf_env"]
    assert unknown_variables(names, "fleet", ["fleet_cache_root"], roles) == ["fleet_cahce_root", "fleet_pullx"]
    assert unknown_variables(names, "fleet", ["fleet_cache_root"]) == [
        "fleet_artifact_dir",
        "fleet_cahce_root",
        "fleet_pull_repo_url",
        "fleet_pullx",
    ]


def test_the_action_leaves_a_sibling_roles_variables_to_it(tmp_path):
    # A role demo_extra next to demo: -e demo_extra_knob is demo_extra's, not a misspelt demo option.
    for run in ("theirs", "misspelt"):
        (tmp_path / run / "roles" / "demo_extra").mkdir(parents=True)
    rc, result = run_role(tmp_path / "theirs", [PREFLIGHT], "-e", '{"demo_extra_knob": 1, "demo_report": {}}')
    assert rc == 0, result
    rc, result = run_role(tmp_path / "misspelt", [PREFLIGHT], "-e", '{"demo_extraknob": 1}')
    assert rc != 0
    assert result["msg"].startswith("Unknown variable(s) demo_extraknob: demo knows only")


def test_success_msg_is_the_result_when_every_check_passes_and_the_failures_otherwise(tmp_path):
    # A post-check on an observation says what it found, as ansible.builtin.assert's success_msg did.
    check = {
        "name": "Check the observation",
        "gpu_fleet.common.preflight": {
            "role": "demo",
            "checks": [{"ok": "{{ demo_flag | bool }}", "msg": "demo_flag must be true."}],
            "success_msg": "demo_flag is {{ demo_flag }}.",
        },
    }
    for run, flag, expected_rc, expected_msg in (
        ("passes", "true", 0, "demo_flag is True."),
        ("fails", "false", 2, "demo_flag must be true."),
    ):
        rc, result = run_role(tmp_path / run, [check], "-e", f'{{"demo_flag": {flag}}}')
        assert (rc, result["msg"]) == (expected_rc, expected_msg), result
    # Said without -v, as assert's success_msg was; the variables' own check says its message with -v only.
    _, printed = run_role(tmp_path / "printed", [check], printed=True)
    assert "demo_flag is True." in printed
    _, printed = run_role(tmp_path / "quiet", [PREFLIGHT], "-e", '{"demo_report": {}}', printed=True)
    assert "passed every check" not in printed


def test_the_actions_spec_loader_reads_every_role_as_safe_load_does():
    from ansible_collections.gpu_fleet.common.plugins.action.preflight import SPEC_LOADER, role_options

    roles = sorted(path.parent.parent for path in (ROOT / "roles").glob("*/meta/argument_specs.yml"))
    assert roles, "no role has argument specs: this test checks nothing"
    for role in roles:
        specs = yaml.safe_load((role / "meta" / "argument_specs.yml").read_text())
        assert role_options(str(role)) == list(specs["argument_specs"]["main"]["options"]), role.name
    assert yaml.load("a: [1, !!binary aGk=]", Loader=SPEC_LOADER) == {"a": [1, b"hi"]}
    with pytest.raises(yaml.constructor.ConstructorError):
        yaml.load("!!python/object:os.system {}", Loader=SPEC_LOADER)  # still a safe loader
