"""The collection's filter files are shims of one shape: the logic lives in plugins/module_utils.

A filter file holds a docstring, imports from module_utils and a class FilterModule whose only
method `filters` returns `prefixed(PREFIX, (functions...))`: every filter is then a function that
pytest imports without Ansible, named prefix + its function's name, reporting bad input under that
name. A function or a constant written in a filter file is logic in the wrong place.
"""

from __future__ import annotations

import ast
import importlib
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PLUGINS = ROOT / "collections" / "ansible_collections" / "gpu_fleet" / "common" / "plugins"
FILTER_FILES = sorted((PLUGINS / "filter").glob("*.py"))
MODULE_UTILS = "ansible_collections.gpu_fleet.common.plugins.module_utils"
# Where the project calls its filters: `| gpu_fleet.common.NAME`.
CALLERS = ("roles", "playbooks", "molecule", "site.yml")
FILTER_CALL = re.compile(r"\|\s*gpu_fleet\.common\.(\w+)")


def shape_problems(source: str) -> list[str]:
    """What in a filter file's source is more than a shim ([]: nothing)."""
    body = ast.parse(source).body
    if body and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant):
        body = body[1:]
    problems = []
    classes = []
    for node in body:
        if isinstance(node, ast.ImportFrom) and (node.module == "__future__" or node.module.startswith(MODULE_UTILS)):
            continue
        if isinstance(node, ast.ClassDef) and node.name == "FilterModule":
            classes.append(node)
            continue
        problems.append(f"line {node.lineno}: only imports from module_utils and class FilterModule belong here")
    if len(classes) != 1:
        return [*problems, "one class FilterModule is needed"]
    members = classes[0].body
    if members and isinstance(members[0], ast.Expr) and isinstance(members[0].value, ast.Constant):
        members = members[1:]
    if len(members) != 1 or not isinstance(members[0], ast.FunctionDef) or members[0].name != "filters":
        return [*problems, "FilterModule must have one method, filters"]
    statements = members[0].body
    call = statements[0].value if len(statements) == 1 and isinstance(statements[0], ast.Return) else None
    if not (isinstance(call, ast.Call) and isinstance(call.func, ast.Name) and call.func.id == "prefixed"):
        return [*problems, "filters() must be one `return prefixed(PREFIX, (functions...))`"]
    prefix, functions, *errors = call.args
    if not (isinstance(prefix, ast.Constant) and isinstance(prefix.value, str)):
        problems.append("prefixed's first argument must be the prefix, a string")
    if not (isinstance(functions, ast.Tuple) and all(isinstance(f, ast.Name) for f in functions.elts)):
        problems.append("prefixed's second argument must be a tuple of the imported functions")
    if call.keywords or len(errors) > 1 or any(isinstance(n, ast.Lambda) for n in ast.walk(call)):
        problems.append("prefixed takes the prefix, the functions and at most the exceptions it reports")
    return problems


def filter_module(path: Path):
    return importlib.import_module(f"ansible_collections.gpu_fleet.common.plugins.filter.{path.stem}").FilterModule()


@pytest.mark.parametrize("path", FILTER_FILES, ids=lambda path: path.name)
def test_a_filter_file_is_a_shim(path):
    assert shape_problems(path.read_text()) == []


def test_the_shape_check_refuses_logic_in_a_filter_file():
    inline = '"""Cordon."""\n\nimport re\n\nOWNER = re.compile("x")\n\n\ndef text(c):\n    return c\n\n\n'
    inline += 'class FilterModule:\n    def filters(self):\n        return prefixed("cordon_", (text,))\n'
    assert len(shape_problems(inline)) == 3
    as_dict = "class FilterModule:\n    def filters(self):\n        return {'seed_plan': seed_plan}\n"
    assert shape_problems(as_dict) == ["filters() must be one `return prefixed(PREFIX, (functions...))`"]


@pytest.mark.parametrize("path", FILTER_FILES, ids=lambda path: path.name)
def test_each_filter_is_a_module_utils_function_reporting_under_its_name(path):
    filters = filter_module(path).filters()
    assert filters
    for name, function in filters.items():
        logic = function.__wrapped__
        assert logic.__module__.startswith(MODULE_UTILS + "."), name
        assert name.endswith(logic.__name__), name


def test_no_two_filter_files_export_one_name():
    seen = {}
    for path in FILTER_FILES:
        for name in filter_module(path).filters():
            assert name not in seen, f"{name} is exported by {seen[name]} and {path.name}"
            seen[name] = path.name


def test_every_filter_the_project_calls_is_exported():
    """A filter dropped from a shim, or renamed, fails only on a host at the task that calls it."""
    exported = {name for path in FILTER_FILES for name in filter_module(path).filters()}
    called = {}
    for folder in CALLERS:
        top = ROOT / folder
        for path in [top] if top.is_file() else top.rglob("*"):
            if path.suffix in (".yml", ".yaml", ".j2") and path.is_file():
                for name in FILTER_CALL.findall(path.read_text()):
                    called.setdefault(name, str(path.relative_to(ROOT)))
    assert {
        "cordon_parse",
        "driver_rollout_job_records",
        "seed_plan",
        "paths_to_fix",
        "train_launcher_problems",
    } <= set(called)
    assert {name: where for name, where in called.items() if name not in exported} == {}
