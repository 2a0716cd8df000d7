"""The hf_loader role's decisions: which pins a venv lacks, and whether a host's wheelhouse is in step."""

import os
from pathlib import Path

from ansible_collections.gpu_fleet.common.plugins.filter import hf_loader as logic
from ansible_collections.gpu_fleet.common.plugins.lookup import hf_loader_wheels as wheels_lookup

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
    assert logic.missing_pins(LOCK, held) == []


def test_a_pin_without_a_local_label_is_met_by_a_build_that_has_one():
    # The CPU and CUDA builds of torch report 2.7.0+cpu / 2.7.0+cu126; pip installs neither again.
    held = ["torch==2.7.0+cpu", "ruamel_yaml==0.19.1", "typing_extensions==4.16.0", "cuda-build==1.0+cu128",
            "numpy==2.2.6"]  # fmt: skip
    assert logic.missing_pins(LOCK, held) == []


def test_a_labelled_pin_needs_that_label_and_other_versions_are_missing():
    held = ["torch==2.7.1", "ruamel.yaml==0.19.1", "typing_extensions==4.16.0", "cuda-build==1.0+cpu",
            "numpy==2.2.6"]  # fmt: skip
    assert logic.missing_pins(LOCK, held) == ["Torch==2.7.0", "cuda-build==1.0+cu128"]


def test_an_empty_or_unreadable_venv_lacks_every_pin():
    assert logic.missing_pins(LOCK, []) == [
        "Torch==2.7.0", "ruamel.yaml==0.19.1", "typing-extensions==4.16.0  # a comment after the pin",
        "cuda-build==1.0+cu128", "numpy==2.2.6",
    ]  # fmt: skip


def test_the_project_lock_is_all_exact_pins():
    lock = (ROOT / "requirements" / "loader-prod.txt").read_text()
    lines = [ln for ln in lock.splitlines() if ln.strip() and not ln.startswith("#")]
    assert len(logic.missing_pins(lock, [])) == len(lines)


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
    assert logic.same_wheels(list(reversed(as_find(listing))), listing)


def test_a_rebuilt_missing_or_extra_wheel_puts_the_host_out_of_step(tmp_path):
    listing = make_wheelhouse(tmp_path / "cp311")
    host = as_find(listing)
    # The loader rebuilt at the same version: same name, new size and time.
    rebuilt = [dict(host[0]), dict(host[1], size=21, mtime=host[1]["mtime"] + 60)]
    assert not logic.same_wheels(rebuilt, listing)
    assert not logic.same_wheels(host[:1], listing)
    assert not logic.same_wheels([*host, {"path": "/x/old-0.9-py3-none-any.whl", "size": 5, "mtime": 1}], listing)
    assert not logic.same_wheels([], listing)


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
