"""Conventions every role keeps: specs match defaults, README matches specs."""

import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent
ROLES = sorted(path.name for path in (ROOT / "roles").iterdir() if (path / "tasks").is_dir())
# hf_loader's cache test needs a mounted cache and its environment: the
# whole-site scenario tests it rather than a scenario of its own.
SCENARIO_OF_ROLE = {"hf_loader": "default"}
SPEC_TYPES = {"str", "path", "bool", "int", "float", "list", "dict", "raw"}


def load(path: Path):
    return yaml.safe_load(path.read_text()) or {}


def options(role: str) -> dict:
    return load(ROOT / "roles" / role / "meta" / "argument_specs.yml")["argument_specs"]["main"]["options"]


def defaults(role: str) -> dict:
    return load(ROOT / "roles" / role / "defaults" / "main.yml")


def test_there_are_roles():
    assert "hf_env" in ROLES


@pytest.mark.parametrize("role", ROLES)
def test_every_default_is_specified_and_every_option_has_a_default(role):
    assert set(defaults(role)) == set(options(role))


@pytest.mark.parametrize("role", ROLES)
def test_spec_defaults_equal_role_defaults(role):
    role_defaults = defaults(role)
    for name, option in options(role).items():
        assert option.get("default") == role_defaults[name], f"{role}: {name} default drifted"


@pytest.mark.parametrize("role", ROLES)
def test_every_option_is_typed_and_described(role):
    for name, option in options(role).items():
        assert name.startswith(role + "_"), f"{name} lacks the role prefix"
        assert option.get("type") in SPEC_TYPES, f"{role}: {name} has no valid type"
        assert option.get("description"), f"{role}: {name} has no description"
        if option["type"] == "list":
            assert "elements" in option, f"{role}: {name} lists need elements"


@pytest.mark.parametrize("role", ROLES)
def test_role_has_the_standard_files(role):
    for relative in ["defaults/main.yml", "meta/main.yml", "meta/argument_specs.yml", "tasks/main.yml"]:
        assert (ROOT / "roles" / role / relative).is_file(), relative
    scenario = SCENARIO_OF_ROLE.get(role, role)
    assert (ROOT / "molecule" / scenario / "molecule.yml").is_file(), "each role has a Molecule scenario"


@pytest.mark.parametrize("role", ROLES)
def test_readme_documents_the_role(role):
    assert f"<!-- role-vars:{role} -->" in (ROOT / "README.md").read_text()


def test_readme_variable_tables_match_the_specs():
    done = subprocess.run([sys.executable, str(ROOT / "scripts" / "role_docs.py"), "--check"], check=False)
    assert done.returncode == 0


# Keys whose whole value is a Jinja expression; elsewhere only {{ ... }} and {% ... %} are.
EXPRESSION_KEYS = {"when", "that", "changed_when", "failed_when", "until"}
JINJA = re.compile(r"{{(.*?)}}|{%(.*?)%}", re.S)
QUOTED = re.compile(r"'[^']*'|\"[^\"]*\"")


def expressions(node, key=None):
    """Every Jinja expression in a parsed tasks/vars/handlers file."""
    if isinstance(node, dict):
        for child_key, child in node.items():
            yield from expressions(child, child_key)
    elif isinstance(node, list):
        for child in node:
            yield from expressions(child, key)
    elif isinstance(node, str):
        if key in EXPRESSION_KEYS:
            yield node
        else:
            yield from ("".join(match) for match in JINJA.findall(node))


@pytest.mark.parametrize("role", ROLES)
def test_bool_options_are_read_through_the_bool_filter(role):
    # `-e name=false` arrives as the string "false", which is true in a condition; argument
    # specs check the type but do not convert, so every read of a bool option says `| bool`.
    bools = [name for name, option in options(role).items() if option["type"] == "bool"]
    role_dir = ROOT / "roles" / role
    found = []
    for path in sorted(role_dir.glob("*/*.yml")) + sorted(role_dir.glob("templates/*.j2")):
        if path.parent.name in {"defaults", "meta"}:
            continue
        text = path.read_text()
        exprs = ["".join(m) for m in JINJA.findall(text)] if path.suffix == ".j2" else expressions(yaml.safe_load(text))
        for expr in exprs:
            code = QUOTED.sub("''", expr)  # names inside string literals are text
            for name in bools:
                # A name after "|" is a filter (nvidia_driver_verify), not the variable.
                if re.search(rf"(?<![\w|])(?<!\|\s){name}\b(?!\s*\|\s*bool)", code):
                    found.append(f"{path.relative_to(ROOT)}: {name} in {expr.strip()[:80]!r}")
    assert not found, "\n".join(found)


def task_lists(role: str):
    """Every task file of the role, with the tasks of its blocks flattened in."""
    for path in sorted((ROOT / "roles" / role / "tasks").glob("*.yml")):

        def flat(tasks):
            for task in tasks or []:
                yield task
                for key in ("block", "rescue", "always"):
                    yield from flat(task.get(key))

        yield path, list(flat(load(path)))


@pytest.mark.parametrize("role", ROLES)
def test_included_task_files_keep_their_tags(role):
    # include_tasks (chosen where one decision replaces a skip per task) gives its tags to the
    # include only: `apply` must hand the same tags to the included tasks, or --tags runs the
    # include and then nothing in it. (Handlers run when notified, whatever the tags.)
    found = []
    for path, tasks in task_lists(role):
        for task in tasks:
            include = task.get("ansible.builtin.include_tasks")
            if include is None:
                continue
            applied = include.get("apply", {}).get("tags") if isinstance(include, dict) else None
            if not task.get("tags") or applied != task["tags"]:
                found.append(f"{path.relative_to(ROOT)}: {task.get('name')!r} tags {task.get('tags')} apply {applied}")
    assert not found, "\n".join(found)
