"""collections/requirements.yml: the collections the project uses, at the versions the lock installs.

Without the `ansible` bundle (an execution environment, AWX), ansible-core from the lock plus
`ansible-galaxy collection install -r collections/requirements.yml` must run every playbook.
These tests find every collection the playbooks, roles, Molecule scenarios, inventories and the
project's own plugins use (by how Ansible refers to them: a task's module, a filter, a test, a
lookup, an inventory, connection or callback plugin, a Python import, Molecule's docker driver)
and fail when one is not pinned, when a pin differs from the bundle the lock installs, or when the
docs that tell how to install without the bundle do not state ansible-core's pin.
"""

from __future__ import annotations

import json
import re
from importlib.metadata import distribution
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent
REQUIREMENTS = ROOT / "collections" / "requirements.yml"
LOCK = ROOT / "requirements" / "controller.txt"
INSTALL = "ansible-galaxy collection install -r collections/requirements.yml"
# What the project brings itself: ansible-core's own plugins and the collection under collections/.
NOT_FROM_GALAXY = {"ansible.builtin", "gpu_fleet.common"}
SCANNED = ["site.yml", "playbooks", "roles", "collections", "molecule", ".config/molecule", "inventory"]

FQCN = r"([a-z][a-z0-9_]*)\.([a-z][a-z0-9_]*)\.[a-z][a-z0-9_]*"
PLUGIN_KEYS = (
    "plugin|connection|ansible_connection|strategy|become_method|stdout_callback|callbacks_enabled|cache_plugin"
)
ANSIBLE_USES = [
    re.compile(rf"^\s*(?:-\s+)?{FQCN}:(?:\s|$)", re.M),  # a task's module or action
    re.compile(rf"\b(?:{PLUGIN_KEYS})\s*[:=]\s*[\"']?{FQCN}"),  # an inventory, connection, callback ... plugin
    re.compile(rf"\|\s*{FQCN}"),  # a filter
    re.compile(rf"\bis\s+(?:not\s+)?{FQCN}"),  # a test
    re.compile(rf"\b(?:lookup|query|q)\(\s*[\"']{FQCN}[\"']"),  # a lookup
]
PYTHON_USE = re.compile(r"\bansible_collections\.([a-z][a-z0-9_]*)\.([a-z][a-z0-9_]*)\b")
# molecule-plugins' docker driver creates the instances with community.docker's modules and
# reaches them through its connection plugin.
DOCKER_DRIVER = re.compile(r"^driver:\s*\n\s+name:\s*docker\s*$", re.M)


def used_collections(root: Path) -> dict[str, set[str]]:
    """Collection (namespace.name) -> the files that use it, outside NOT_FROM_GALAXY."""
    used: dict[str, set[str]] = {}
    for top in SCANNED:
        start = root / top
        paths = [start] if start.is_file() else sorted(start.rglob("*")) if start.is_dir() else []
        for path in paths:
            if not path.is_file() or "__pycache__" in path.parts:
                continue
            name = str(path.relative_to(root))
            if path.suffix == ".py":
                found = {f"{m[1]}.{m[2]}" for m in PYTHON_USE.finditer(path.read_text())}
            elif path.suffix in (".yml", ".yaml", ".j2", ".cfg"):
                text = path.read_text()
                found = {f"{m[1]}.{m[2]}" for pattern in ANSIBLE_USES for m in pattern.finditer(text)}
                if DOCKER_DRIVER.search(text):
                    found.add("community.docker")
            else:
                continue
            for collection in found - NOT_FROM_GALAXY:
                used.setdefault(collection, set()).add(name)
    return used


def pinned() -> dict[str, str]:
    entries = yaml.safe_load(REQUIREMENTS.read_text())["collections"]
    assert all(set(entry) == {"name", "version"} for entry in entries), "each entry: name and version only"
    names = [entry["name"] for entry in entries]
    assert len(names) == len(set(names)), f"a collection is listed twice: {names}"
    return {entry["name"]: str(entry["version"]) for entry in entries}


def lock_pin(package: str) -> str:
    match = re.search(rf"^{re.escape(package)}==(\S+)$", LOCK.read_text(), re.M)
    assert match, f"{LOCK.name} pins no {package}"
    return match[1]


def bundled_manifest(collection: str) -> dict:
    """The collection's MANIFEST.json as the installed ansible bundle carries it."""
    bundle = Path(distribution("ansible").locate_file("ansible_collections"))
    manifest = bundle / collection.replace(".", "/") / "MANIFEST.json"
    assert manifest.is_file(), f"the ansible bundle has no {collection}"
    return json.loads(manifest.read_text())["collection_info"]


def test_every_collection_the_project_uses_is_pinned():
    used = used_collections(ROOT)
    missing = {collection: sorted(files) for collection, files in used.items() if collection not in pinned()}
    assert missing == {}, f"used but not in collections/requirements.yml (add them at the lock's version): {missing}"


def test_a_collection_used_anywhere_but_not_pinned_is_found(tmp_path):
    """The attack: new uses of a collection the file does not list, in each way Ansible refers
    to one. Each must be found; the project's own names and plain dotted words must not."""
    tasks = tmp_path / "roles" / "demo" / "tasks"
    tasks.mkdir(parents=True)
    (tasks / "main.yml").write_text(
        "- name: A module\n"
        "  community.crypto.openssl_privatekey:\n"
        "    path: /x\n"
        "- name: A filter, a test, a lookup\n"
        "  ansible.builtin.debug:\n"
        '    msg: "{{ x | ansible.utils.ipaddr }} {{ y is netbox.netbox.thing }}\n'
        "      {{ lookup('kubernetes.core.k8s') }}\"\n"
        "- name: Plain dotted words\n"
        "  ansible.builtin.debug:\n"
        "    msg: \"{{ molecule_case.vars.format }} environment.conf.j2 {{ 'x' | gpu_fleet.common.cordon_text }}\"\n"
    )
    (tmp_path / "inventory").mkdir()
    (tmp_path / "inventory" / "cloud.yml").write_text("plugin: google.cloud.gcp_compute\n")
    (tmp_path / "molecule" / "demo").mkdir(parents=True)
    (tmp_path / "molecule" / "demo" / "molecule.yml").write_text("driver:\n  name: docker\n")
    plugin = tmp_path / "collections" / "ansible_collections" / "gpu_fleet" / "common" / "plugins" / "filter"
    plugin.mkdir(parents=True)
    (plugin / "x.py").write_text(
        "from ansible_collections.community.dns.plugins.module_utils import names\n"
        "from ansible_collections.gpu_fleet.common.plugins.module_utils import preflight\n"
    )
    assert set(used_collections(tmp_path)) == {
        "community.crypto",
        "ansible.utils",
        "netbox.netbox",
        "kubernetes.core",
        "google.cloud",
        "community.docker",
        "community.dns",
    }


def test_every_pinned_version_is_the_one_the_lock_installs():
    bundle = lock_pin("ansible")
    assert distribution("ansible").version == bundle, (
        f"the installed ansible bundle is not the lock's ({bundle}): run make venv, then these tests again"
    )
    versions = pinned()
    for collection, version in versions.items():
        assert re.fullmatch(r"\d+\.\d+\.\d+", version), f"{collection}: {version!r} is not one exact version"
        info = bundled_manifest(collection)
        assert version == info["version"], (
            f"{collection} {version} in collections/requirements.yml, {info['version']} in ansible {bundle}"
        )
        # An install without Galaxy's index must find every dependency in the file too.
        for dependency in info["dependencies"]:
            assert dependency in versions, f"{collection} needs {dependency}: pin it too"


def test_the_install_without_the_bundle_states_ansible_cores_pin():
    core = f"ansible-core=={lock_pin('ansible-core')}"
    for doc in (ROOT / "README.md", REQUIREMENTS):
        blocks = re.split(r"\n\s*\n", doc.read_text())
        told = [block for block in blocks if INSTALL in block]
        assert told, f"{doc.name} does not say how to install without the bundle ({INSTALL})"
        assert all(core in block for block in told), f"{doc.name}: {core} is not stated beside {INSTALL}"
