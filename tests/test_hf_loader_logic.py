"""The hf_loader role's decisions: which pins a venv lacks, and whether a host's wheelhouse is in step."""

import os
from pathlib import Path

import pytest
import yaml
from ansible_collections.gpu_fleet.common.plugins.lookup import hf_loader_wheels as wheels_lookup
from ansible_collections.gpu_fleet.common.plugins.module_utils.hf_loader.checkpoints import (
    checkpoint_dir,
    checkpoint_problems,
)
from ansible_collections.gpu_fleet.common.plugins.module_utils.hf_loader.interpreter import python
from ansible_collections.gpu_fleet.common.plugins.module_utils.hf_loader.pins import missing_pins
from ansible_collections.gpu_fleet.common.plugins.module_utils.hf_loader.wheelhouse import same_wheels

ROOT = Path(__file__).resolve().parent.parent

LOCK = """# Production lock
# torch 2.7.0 from PyPI

Torch==2.7.0
ruamel.yaml==0.19.1
typing-extensions==4.16.0  # a comment after the pin
cuda-build==1.0+cu128
numpy==2.2.6
"""


def test_a_venv_holding_the_whole_lock_lacks_nothing():
    held = ["torch==2.7.0", "ruamel.yaml==0.19.1", "typing_extensions==4.16.0", "cuda-build==1.0+cu128",
            "numpy==2.2.6", "pip==23.0.1"]  # fmt: skip
    assert missing_pins(LOCK, held) == []


def test_a_pin_without_a_local_label_is_met_by_a_build_that_has_one():
    # The CPU and CUDA builds of torch report 2.7.0+cpu / 2.7.0+cu126; pip installs neither again.
    held = ["torch==2.7.0+cpu", "ruamel_yaml==0.19.1", "typing_extensions==4.16.0", "cuda-build==1.0+cu128",
            "numpy==2.2.6"]  # fmt: skip
    assert missing_pins(LOCK, held) == []


def test_a_labelled_pin_needs_that_label_and_other_versions_are_missing():
    held = ["torch==2.7.1", "ruamel.yaml==0.19.1", "typing_extensions==4.16.0", "cuda-build==1.0+cpu",
            "numpy==2.2.6"]  # fmt: skip
    assert missing_pins(LOCK, held) == ["Torch==2.7.0", "cuda-build==1.0+cu128"]


def test_an_empty_or_unreadable_venv_lacks_every_pin():
    assert missing_pins(LOCK, []) == [
        "Torch==2.7.0", "ruamel.yaml==0.19.1", "typing-extensions==4.16.0  # a comment after the pin",
        "cuda-build==1.0+cu128", "numpy==2.2.6",
    ]  # fmt: skip


def test_the_project_lock_is_all_exact_pins():
    lock = (ROOT / "requirements" / "loader-prod.txt").read_text()
    lines = [ln for ln in lock.splitlines() if ln.strip() and not ln.startswith("#")]
    assert len(missing_pins(lock, [])) == len(lines)


def make_wheelhouse(folder: Path) -> list[dict]:
    folder.mkdir()
    (folder / "a-1.0-py3-none-any.whl").write_bytes(b"a" * 10)
    (folder / "hf_loader-0.1.0-py3-none-any.whl").write_bytes(b"b" * 20)
    (folder / ".lock-0123").write_bytes(b"")  # the wheelhouse build's lock, never synced
    os.utime(folder / "a-1.0-py3-none-any.whl", (1_700_000_000.7, 1_700_000_000.7))
    return wheels_lookup.wheels(str(folder))


def as_find(listing: list[dict], prefix: str = "/opt/hf-loader/wheelhouse") -> list[dict]:
    """The same wheels as the find module reports them from the host (float times, full paths)."""
    return [{"path": f"{prefix}/{w['name']}", "size": w["size"], "mtime": w["mtime"] + 0.25} for w in listing]


def test_the_lookup_lists_wheels_with_size_and_whole_second_time(tmp_path):
    listing = make_wheelhouse(tmp_path / "cp311")
    assert [w["name"] for w in listing] == ["a-1.0-py3-none-any.whl", "hf_loader-0.1.0-py3-none-any.whl"]
    assert listing[0] == {"name": "a-1.0-py3-none-any.whl", "size": 10, "mtime": 1_700_000_000}
    assert wheels_lookup.wheels(str(tmp_path / "missing")) == []


def test_a_host_with_the_same_wheels_is_in_step(tmp_path):
    listing = make_wheelhouse(tmp_path / "cp311")
    assert same_wheels(list(reversed(as_find(listing))), listing)


def test_a_rebuilt_missing_or_extra_wheel_puts_the_host_out_of_step(tmp_path):
    listing = make_wheelhouse(tmp_path / "cp311")
    host = as_find(listing)
    # The loader rebuilt at the same version: same name, new size and time.
    rebuilt = [dict(host[0]), dict(host[1], size=21, mtime=host[1]["mtime"] + 60)]
    assert not same_wheels(rebuilt, listing)
    assert not same_wheels(host[:1], listing)
    assert not same_wheels([*host, {"path": "/x/old-0.9-py3-none-any.whl", "size": 5, "mtime": 1}], listing)
    assert not same_wheels([], listing)


def render_cache_test_settings(**overrides) -> dict:
    """templates/cache-test.yaml.j2 as the role renders it (to_json is json.dumps for these values)."""
    import ast
    import json

    import jinja2
    import yaml

    defaults = yaml.safe_load((ROOT / "roles" / "hf_loader" / "defaults" / "main.yml").read_text())
    values = {
        **{name: value for name, value in defaults.items() if not str(value).startswith("{{")},
        "hf_loader_report_file": "/var/lib/hf-loader/cache-test.json",
        "ansible_managed": "Ansible managed",
        **overrides,
    }
    env = jinja2.Environment(undefined=jinja2.StrictUndefined, trim_blocks=True)
    env.filters["to_json"] = json.dumps
    text = env.from_string((ROOT / "roles" / "hf_loader" / "templates" / "cache-test.yaml.j2").read_text())
    settings = yaml.safe_load(text.render(**values))
    # Every key is one hf-cache-test --config-file accepts (its CONFIG_FILE_KEYS, read from the source).
    source = (ROOT / "files" / "hf_loader" / "src" / "hf_loader" / "cachetest.py").read_text()
    (keys,) = [
        ast.literal_eval(node.value)
        for node in ast.parse(source).body
        if isinstance(node, ast.Assign) and [t.id for t in node.targets] == ["CONFIG_FILE_KEYS"]
    ]
    assert set(settings) <= set(keys), set(settings) - set(keys)
    return settings


def test_the_cache_test_checks_no_mount_by_default():
    assert render_cache_test_settings()["dataset"] == "ILSVRC/imagenet-1k"
    assert "require_mount" not in render_cache_test_settings()


def test_the_cache_mount_point_reaches_the_cache_test_as_require_mount():
    settings = render_cache_test_settings(hf_loader_cache_mount_point="/data/my hf")
    assert settings["require_mount"] == "/data/my hf"


# ---- checkpoints: the folder the training unit must write, and the save_folders refused ----

CACHE = "/data/hf"
ROLE_FOLDERS = {"hf_loader_prefix": "/opt/hf-loader", "hf_loader_config_dir": "/etc/hf-loader"}


def test_the_checkpoint_folder_is_save_folder_up_to_its_first_placeholder():
    assert checkpoint_dir({"save_folder": "/data/checkpoints"}) == "/data/checkpoints"
    assert checkpoint_dir({"save_folder": "/data/checkpoints/{run_name}"}) == "/data/checkpoints"
    assert checkpoint_dir({"save_folder": "/data/ck/{run_name}/r{rank}/"}) == "/data/ck"
    assert checkpoint_dir({"save_folder": "/data/checkpoints/"}) == "/data/checkpoints"
    assert checkpoint_dir({}) == "" and checkpoint_dir({"save_folder": None}) == ""


def test_the_example_inventorys_checkpoints_are_accepted_and_made_writable():
    example = yaml.safe_load((ROOT / "inventory" / "example" / "group_vars" / "gpu_hosts.yml").read_text())
    config = example["hf_loader_train_config"]
    assert config["autoresume"] is True and config["run_name"]
    assert checkpoint_problems(config, CACHE, ROLE_FOLDERS) == []
    assert checkpoint_dir(config) == "/data/checkpoints"


@pytest.mark.parametrize(
    ("save_folder", "named"),
    [
        ("checkpoints", "is relative"),
        ("./ck", "is relative"),
        ("s3://bucket/ck", "is a URI"),
        ("/data/hf", "lies in /data/hf, the dataset cache"),
        ("/data/hf/checkpoints/{run_name}", "lies in /data/hf, the dataset cache"),
        # The training user would own the folder that holds the cache's mount point.
        ("/data", "a folder above the dataset cache /data/hf"),
        ("/data/{run_name}", "a folder above the dataset cache /data/hf"),
        ("/proc/self/ck", "lies in /proc"),
        ("/sys/ck", "lies in /sys"),
        ("/tmp/ck", "lies in /tmp, private to the unit"),
        ("/var/tmp/ck", "lies in /var/tmp"),
        ("/home/trainer/ck", "hidden from the unit"),
        ("/run/ck", "lies in /run"),
        ("/etc/hf-loader/ck", "lies in /etc"),
        ("/usr/local/ck", "lies in /usr"),
        ("/opt/hf-loader/ck", "the folder of hf_loader_prefix"),
        ("/{run_name}", "whole file system writable"),
        ("/", "whole file system writable"),
        (["/a"], "must be a string"),
    ],
)
def test_a_save_folder_the_unit_cannot_write_is_refused_naming_the_variable_and_the_fix(save_folder, named):
    (problem,) = checkpoint_problems({"save_folder": save_folder}, CACHE, ROLE_FOLDERS)
    assert named in problem and problem.startswith("hf_loader_train_config.save_folder")
    assert "such as /data/checkpoints" in problem


@pytest.mark.parametrize("save_folder", ["/data/checkpoints", "/var/lib/hf-loader/ck", "/srv/ck/{run_name}"])
def test_a_save_folder_beside_the_cache_is_accepted(save_folder):
    assert checkpoint_problems({"save_folder": save_folder}, CACHE, ROLE_FOLDERS) == []


def test_autoresume_needs_save_folder_and_run_name():
    both = checkpoint_problems({"autoresume": True}, CACHE, ROLE_FOLDERS)
    assert len(both) == 2
    assert "autoresume is true but save_folder is not set" in both[0] and "Set save_folder" in both[0]
    assert "run_name is not set" in both[1] and "Set run_name" in both[1]
    assert checkpoint_problems({"autoresume": False}, CACHE, ROLE_FOLDERS) == []
    assert checkpoint_problems({}, CACHE, ROLE_FOLDERS) == []


# Which Python the venv is made with (gpu_fleet.common.hf_loader_python).
def facts(family, distribution, version, python=(3, 11)):
    return {
        "os_family": family,
        "distribution": distribution,
        "distribution_version": version,
        "distribution_major_version": version.split(".")[0],
        "python": {"version": {"major": python[0], "minor": python[1], "micro": 2}},
    }


@pytest.mark.parametrize(
    ("host", "version"),
    [
        (facts("Debian", "Debian", "12.8", (3, 11)), "3.11"),
        (facts("Debian", "Debian", "13.1", (3, 13)), "3.13"),
        (facts("Debian", "Ubuntu", "22.04", (3, 10)), "3.10"),
        (facts("Debian", "Ubuntu", "24.04", (3, 12)), "3.12"),
    ],
)
def test_debian_and_ubuntu_keep_the_system_python3_and_its_packages(host, version):
    # As before the choice existed: python3 -m venv, the wheelhouse folder of the Python Ansible
    # runs, and no package besides vars/Debian.yml's.
    choice = python(host, "")
    assert choice == {"command": "python3", "version": version, "tag": "cp" + version.replace(".", ""),
                      "packages": [], "problem": ""}  # fmt: skip


@pytest.mark.parametrize(
    ("distribution", "version"),
    [("RedHat", "8.8"), ("RedHat", "8.10"), ("Rocky", "8.9"), ("RedHat", "9.2"), ("AlmaLinux", "9.6"), ("CentOS", "9")],
)
def test_el_8_and_9_use_appstreams_python3_11_whatever_python_ansible_runs(distribution, version):
    # Ansible may run on /usr/bin/python3 (3.9 on EL 9) or on python3.11 itself: the venv's Python is
    # the distribution's, not Ansible's. CentOS Stream reports its major release alone.
    for ansible_python in [(3, 9), (3, 11), (3, 12)]:
        choice = python(facts("RedHat", distribution, version, ansible_python), "")
        assert choice["command"] == "python3.11" and choice["tag"] == "cp311" and choice["problem"] == ""
        assert choice["packages"] == ["python3.11", "python3.11-setuptools"]


@pytest.mark.parametrize(("version", "since"), [("8.7", "8.8"), ("8.1", "8.8"), ("9.0", "9.2"), ("9.1", "9.2")])
def test_an_el_minor_release_without_python3_11_is_refused_with_the_release_that_has_it(version, since):
    choice = python(facts("RedHat", "RedHat", version, (3, 9)), "")
    assert f"RedHat {version}'s python3 is" in choice["problem"]
    assert f"only from {since}" in choice["problem"] and "dnf upgrade" in choice["problem"]


def test_el_releases_are_compared_as_versions_not_as_strings():
    # As strings "8.10" < "8.8" and "9.10" < "9.2": both releases carry python3.11.
    assert python(facts("RedHat", "RedHat", "8.10"), "")["problem"] == ""
    assert python(facts("RedHat", "RedHat", "9.10"), "")["problem"] == ""
    assert python(facts("RedHat", "RedHat", "8.7"), "")["problem"] != ""


def test_el_7_has_no_python3_11_and_is_refused():
    problem = python(facts("RedHat", "CentOS", "7.9", (3, 6)), "")["problem"]
    assert "python3 is 3.6" in problem and "no python3.11" in problem and "hf_loader_python" in problem


def test_a_redhat_family_release_with_a_new_python3_keeps_it():
    # EL 10 (python3 3.12) and Fedora: the system python3, installed as before.
    for host in [facts("RedHat", "RedHat", "10.0", (3, 12)), facts("RedHat", "Fedora", "42", (3, 13))]:
        choice = python(host, "")
        assert choice["command"] == "python3" and choice["packages"] == ["python3"] and choice["problem"] == ""


def test_an_explicit_interpreter_is_taken_with_its_packages_and_version():
    choice = python(facts("RedHat", "RedHat", "9.4", (3, 9)), "python3.12")
    assert choice == {"command": "python3.12", "version": "3.12", "tag": "cp312",
                      "packages": ["python3.12", "python3.12-setuptools"], "problem": ""}  # fmt: skip
    choice = python(facts("Debian", "Ubuntu", "22.04", (3, 10)), "python3.11")
    assert choice["packages"] == ["python3.11", "python3.11-venv"] and choice["tag"] == "cp311"


@pytest.mark.parametrize("requested", ["python3.9", "python2.7", "/usr/bin/python3.11", "py3"])
def test_an_explicit_interpreter_too_old_or_not_a_versioned_command_is_refused(requested):
    problem = python(facts("RedHat", "RedHat", "9.4", (3, 9)), requested)["problem"]
    assert problem.startswith("hf_loader_python") and requested in problem
    assert "python3.11" in problem


def test_python3_requested_where_it_is_too_old_is_refused_naming_its_version():
    problem = python(facts("RedHat", "RedHat", "9.4", (3, 9)), "python3")["problem"]
    assert "python3, which is Python 3.9 on RedHat 9.4" in problem
    assert python(facts("Debian", "Debian", "12.8", (3, 11)), "python3")["problem"] == ""


def test_no_python_facts_is_refused_rather_than_guessed():
    host = facts("Debian", "Debian", "12.8")
    del host["python"]
    assert "gather facts" in python(host, "")["problem"]


def test_the_role_makes_the_venv_with_the_chosen_python_and_refuses_in_preflight():
    # The choice is wired in: the venv's interpreter, the wheelhouse folder and the packages come
    # from gpu_fleet.common.hf_loader_python, not from a hard-coded python3 or Ansible's own Python.
    role = ROOT / "roles" / "hf_loader"
    install = (role / "tasks" / "install.yml").read_text()
    assert 'virtualenv_command: "{{ __hf_loader_python.command }} -m venv"' in install
    role_vars = yaml.safe_load((role / "vars" / "main.yml").read_text())
    assert "gpu_fleet.common.hf_loader_python(hf_loader_python)" in role_vars["__hf_loader_python"]
    assert role_vars["__hf_loader_python_tag"] == "{{ __hf_loader_python.tag }}"
    assert "__hf_loader_python.packages" in role_vars["__hf_loader_packages"]
    preflight = yaml.safe_load((role / "tasks" / "preflight.yml").read_text())
    checks = next(task for task in preflight if "gpu_fleet.common.preflight" in task)["gpu_fleet.common.preflight"]
    assert any("__hf_loader_python.problem | length == 0" in check["ok"] for check in checks["checks"])
    assert "ansible_facts['python']" not in (role / "vars" / "main.yml").read_text()


def test_debian_and_ubuntu_install_the_same_packages_as_before():
    os_packages = yaml.safe_load((ROOT / "roles" / "hf_loader" / "vars" / "Debian.yml").read_text())
    choice = python(facts("Debian", "Debian", "12.8"), "")
    assert choice["packages"] + os_packages["__hf_loader_os_packages"] == ["python3-venv", "python3-packaging", "rsync"]
    redhat = yaml.safe_load((ROOT / "roles" / "hf_loader" / "vars" / "RedHat.yml").read_text())
    el9 = python(facts("RedHat", "RedHat", "9.4", (3, 9)), "")
    assert el9["packages"] + redhat["__hf_loader_os_packages"] == [
        "python3.11", "python3.11-setuptools", "python3-packaging", "rsync"
    ]  # fmt: skip
