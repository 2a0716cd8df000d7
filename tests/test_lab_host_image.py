"""The rollout labs' host image (scripts/lablib/image.py): baked once per machine for what it is made
of, reused while nothing in its recipe changes, baked again (and the old one removed) when something
does, and a failed bake leaves no image and no container behind.

The real baked_host_image runs; two seams keep it offline: `docker` on PATH is a stand-in that keeps
its images in a file and logs each call, and the controller's ansible-playbook (image.BIN) is a
stand-in that logs its arguments and fails when told to. The real bake runs in the labs of `make test`
(lab-upgrade-short, lab-slurm-short)."""

import json
import os
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "scripts"))

from lablib import image  # noqa: E402

FAKE_DOCKER = """#!{python}
import json, os, sys
from pathlib import Path
args = sys.argv[1:]
state = Path(os.environ["FAKE_DOCKER_STATE"])
images = json.loads(state.read_text()) if state.exists() else {{"local/debian-systemd:bookworm": "sha256:plain"}}
with open(os.environ["FAKE_DOCKER_LOG"], "a") as log:
    log.write(" ".join(args) + "\\n")
if args[:2] == ["image", "inspect"]:
    name = args[-1]
    if name not in images:
        sys.exit(1)
    print(images[name])
elif args[0] == "exec" and args[-1] == "is-system-running":
    print("running")
elif args[0] == "images":
    print("\\n".join(name for name in images if name.startswith(args[1] + ":")))
elif args[0] == "commit":
    images[args[-1]] = "sha256:baked"
elif args[0] == "rmi":
    images.pop(args[1], None)
state.write_text(json.dumps(images))
"""

FAKE_PLAYBOOK = """#!/bin/sh
printf '%s\\n' "$*" >> "$FAKE_PLAYBOOK_LOG"
[ -z "$FAKE_PLAYBOOK_FAIL" ] || {{ echo "fatal: [lab-bake]: FAILED!"; exit 2; }}
"""


def recipe_copy(root: Path) -> None:
    """The recipe's files, small: one file in each of image.RECIPE's entries."""
    for entry in image.RECIPE:
        path = root / entry
        if entry.endswith(".yml"):
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text("---\n")
        else:
            path.mkdir(parents=True, exist_ok=True)
            (path / "main.yml").write_text("---\n")


@pytest.fixture
def machine(tmp_path, monkeypatch):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for name, text in (
        ("docker", FAKE_DOCKER.format(python=sys.executable)),
        ("ansible-playbook", FAKE_PLAYBOOK.format()),
    ):
        (bin_dir / name).write_text(text)
        (bin_dir / name).chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setattr(image, "BIN", bin_dir)
    for name in ("FAKE_DOCKER_STATE", "FAKE_DOCKER_LOG", "FAKE_PLAYBOOK_LOG"):
        monkeypatch.setenv(name, str(tmp_path / name.lower()))
    monkeypatch.delenv("FAKE_PLAYBOOK_FAIL", raising=False)
    monkeypatch.setenv("LIGHT_WHEELHOUSE_DIR", str(tmp_path / "light"))
    monkeypatch.setattr(image, "light_key", lambda: "light-0123456789abcdef")
    root = tmp_path / "checkout"
    recipe_copy(root)
    monkeypatch.setattr(image, "ROOT", root)
    return tmp_path


def calls(tmp_path: Path, name: str) -> list[str]:
    path = tmp_path / name
    return path.read_text().splitlines() if path.exists() else []


def images(tmp_path: Path) -> dict:
    return json.loads((tmp_path / "fake_docker_state").read_text())


def bake(tmp_path: Path) -> str:
    work = tmp_path / "lab"
    return image.baked_host_image(
        work, ["hf_loader_lock_file=/lab/loader-light.txt", "hf_loader_wheelhouse_dir=/lab/wh"]
    )


def test_the_image_is_baked_once_and_reused_while_its_recipe_is_unchanged(machine):
    tag = bake(machine)
    assert tag.startswith(f"{image.BAKED_REPOSITORY}:")
    assert tag in images(machine)
    [playbook] = calls(machine, "fake_playbook_log")
    assert "playbooks/bake-image.yml" in playbook and f"--tags {image.BAKE_TAGS}" in playbook
    assert "-e bake_driver=false" in playbook and "-e hf_loader_lock_file=/lab/loader-light.txt" in playbook
    docker = calls(machine, "fake_docker_log")
    assert docker.index(next(c for c in docker if c.startswith("commit "))) < max(
        i for i, c in enumerate(docker) if c.startswith("rm -f lab-bake-")
    ), "the bake's container was not removed after the commit"

    assert bake(machine) == tag
    assert len(calls(machine, "fake_playbook_log")) == 1, "the second lab baked again"


def test_a_change_in_the_recipe_bakes_a_new_image_and_removes_the_old(machine):
    first = bake(machine)
    (machine / "checkout" / "roles" / "hf_loader" / "main.yml").write_text("--- # changed\n")
    second = bake(machine)
    assert second != first
    assert len(calls(machine, "fake_playbook_log")) == 2
    assert second in images(machine) and first not in images(machine)


def test_a_python_cache_in_the_recipe_changes_nothing(machine):
    first = bake(machine)
    cache = machine / "checkout" / "roles" / "hf_loader" / "__pycache__"
    cache.mkdir()
    (cache / "x.cpython-311.pyc").write_bytes(b"\0")
    assert bake(machine) == first


def test_a_new_plain_image_or_light_build_names_a_new_key():
    base = image.host_image_key("sha256:plain", "light-a")
    assert image.host_image_key("sha256:other", "light-a") != base
    assert image.host_image_key("sha256:plain", "light-b") != base
    assert image.host_image_key("sha256:plain", "light-a") == base


def test_a_failed_bake_names_its_log_and_leaves_no_image_and_no_container(machine, monkeypatch):
    monkeypatch.setenv("FAKE_PLAYBOOK_FAIL", "yes")
    with pytest.raises(image.HostImageError, match=r"bake-image.yml failed .* see .*/logs/bake.log"):
        bake(machine)
    assert not [name for name in images(machine) if name.startswith(image.BAKED_REPOSITORY)]
    docker = calls(machine, "fake_docker_log")
    assert docker[-1].startswith("rm -f lab-bake-")
    assert not any(c.startswith("commit ") for c in docker)


def test_the_recipe_names_files_of_this_checkout():
    for entry in image.RECIPE:
        assert (ROOT / entry).exists(), f"scripts/lablib/image.py's RECIPE names {entry}, which is gone"
    names = {str(p.relative_to(ROOT)) for p in image.recipe_files(ROOT)}
    assert "playbooks/bake-image.yml" in names and "roles/hf_loader/tasks/install.yml" in names
