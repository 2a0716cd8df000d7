"""execution-environment.yml stays in step with the locks and collections/requirements.yml.

The image must install exactly what the controller runs: ansible-core and the controller's
libraries at requirements/controller.txt's pins, ansible-runner and the init at
requirements/ee.txt's, and the collections collections/requirements.yml pins. `make ee-lab`
builds it and runs site.yml inside it (slow, not here); these checks take well under a second.
"""

from __future__ import annotations

import copy
import gzip
import hashlib
import io
import json
import re
import tarfile

import pytest
import yaml

import ee_prepare

EE = ee_prepare.load_ee()


def lock_pin(name: str) -> str:
    return ee_prepare.lock_pins()[ee_prepare.canonical(name)][1]


def test_every_python_pin_is_the_locks():
    pins = ee_prepare.checked_pins(EE)
    assert EE["dependencies"]["ansible_core"]["package_pip"] == f"ansible-core=={lock_pin('ansible-core')}"
    assert EE["dependencies"]["ansible_runner"]["package_pip"] == f"ansible-runner=={lock_pin('ansible-runner')}"
    # The builder stage's own installs come from the locks too, since the image's pip has no index.
    names = {ee_prepare.canonical(p.split("==")[0]) for p in pins}
    assert {ee_prepare.canonical(n) for n in ee_prepare.BUILDER_STAGE} <= names


def test_the_controllers_libraries_are_in_the_image_and_its_tools_are_not():
    python = {ee_prepare.canonical(p.split("==")[0]) for p in EE["dependencies"]["python"]}
    # ansible-core's requirements and what scripts/fleet_report.py imports on the controller.
    assert {"jinja2", "pyyaml", "cryptography", "packaging", "resolvelib", "jsonschema"} <= python
    assert not python & {"ansible", "ansible-lint", "molecule", "molecule-plugins", "pytest", "ruff", "yamllint"}


def test_the_collections_are_collections_requirements():
    pinned = {e["name"]: str(e["version"]) for e in yaml.safe_load(ee_prepare.COLLECTIONS.read_text())["collections"]}
    assert ee_prepare.checked_collections(EE) == pinned
    # Their declared Python and system requirements would pull unpinned packages in.
    assert sorted(EE["dependencies"]["exclude"]["all_from_collections"]) == sorted(pinned)


@pytest.mark.parametrize(
    ("path", "value", "refused"),
    [
        (("ansible_core", "package_pip"), "ansible-core==2.19.13", "the lock pins 2.19.14"),
        (("ansible_runner", "package_pip"), "ansible-runner>=2.4", "not an exact pin"),
        (("python",), ["boto3==1.40.0"], "boto3 is in no lock"),
    ],
)
def test_a_pin_out_of_step_is_refused(path, value, refused):
    ee = copy.deepcopy(EE)
    target = ee["dependencies"]
    for key in path[:-1]:
        target = target[key]
    target[path[-1]] = value
    with pytest.raises(ee_prepare.PrepareError, match=refused):
        ee_prepare.checked_pins(ee)


def test_a_collection_out_of_step_is_refused():
    ee = copy.deepcopy(EE)
    ee["dependencies"]["galaxy"]["collections"][0]["name"] = re.sub(
        r"-[0-9][^-]*\.tar\.gz$", "-0.0.1.tar.gz", ee["dependencies"]["galaxy"]["collections"][0]["name"]
    )
    with pytest.raises(ee_prepare.PrepareError, match=r"differ from collections/requirements\.yml"):
        ee_prepare.checked_collections(ee)


def test_the_image_pip_has_no_index_during_the_build():
    steps = EE["additional_build_steps"]
    assert any("no-index = true" in step for step in steps["prepend_base"])
    assert steps["append_final"][-1] == "RUN rm -f /etc/pip.conf"
    assert EE["images"]["base_image"]["name"].startswith("local/")


def test_an_artifact_lists_only_the_files_it_holds(tmp_path):
    folder = tmp_path / "ns" / "name"
    (folder / "plugins" / "modules").mkdir(parents=True)
    (folder / "plugins" / "modules" / "thing.py").write_text("x = 1\n")
    (folder / "__pycache__").mkdir()
    (folder / "__pycache__" / "junk.pyc").write_bytes(b"\0")
    listed = [{"name": ".github/workflow.yml", "ftype": "file"}]  # listed, not installed
    (folder / "FILES.json").write_text(json.dumps({"files": listed, "format": 1}))
    manifest = {"collection_info": {"namespace": "ns", "name": "name", "version": "1.0.0"}}
    manifest["file_manifest_file"] = {"name": "FILES.json", "chksum_sha256": "old"}
    (folder / "MANIFEST.json").write_text(json.dumps(manifest))
    data = ee_prepare.artifact(folder)
    assert data == ee_prepare.artifact(folder)  # same bytes each time: docker's cache holds
    with tarfile.open(fileobj=io.BytesIO(gzip.decompress(data))) as tar:
        names = tar.getnames()
        files_json = tar.extractfile("FILES.json").read()
        manifest_out = json.loads(tar.extractfile("MANIFEST.json").read())
    assert names[:2] == ["MANIFEST.json", "FILES.json"]
    assert not [n for n in names if "__pycache__" in n]
    entries = {e["name"]: e for e in json.loads(files_json)["files"]}
    assert ".github/workflow.yml" not in entries
    assert entries["plugins/modules/thing.py"]["chksum_sha256"] == hashlib.sha256(b"x = 1\n").hexdigest()
    assert manifest_out["file_manifest_file"]["chksum_sha256"] == hashlib.sha256(files_json).hexdigest()
