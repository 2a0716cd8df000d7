"""What the scenarios' verify tests share: running a playbook against one host of Molecule's
inventory, the platform checks, and the tests every role's scenario runs alike.

The verifier puts this folder on PYTHONPATH (.config/molecule/config.yml). The shared tests
are made by the factories at the end: a scenario's test module assigns what they return to a
name starting with test_, and pytest collects it there, e.g.

    test_every_documented_tag_runs_alone_in_check_mode = every_tag_check_mode_test("hf_env", run_converge, checksums)
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import tempfile
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
import yaml

PROJECT = Path(__file__).resolve().parents[2]
ROLES = PROJECT / "roles"
# callback_plugins/task_record.py: one JSON line per task result, in the file ANSIBLE_TASK_RECORD names.
CALLBACK_PLUGINS = Path(__file__).resolve().parent / "callback_plugins"
ANSI_CODES = re.compile(r"\x1b\[[0-9;]*m")

# run(host, *extra_args) -> (rc, output); snapshot(host) -> what a run must leave as it was.
Run = Callable[..., tuple[int, str]]
Snapshot = Callable[[Any], Any]
# A batch's runs: key -> the extra arguments of its run.
Cases = dict[Any, tuple[str, ...]]


def run_playbook(
    playbook: str | Path, *extra_args: str, limit: str = "", timeout: int = 900, env: dict[str, str] | None = None
) -> tuple[int, str]:
    """ansible-playbook against the scenario's inventory (env: variables added to this process's);
    return (rc, stdout + stderr without colour codes)."""
    command = ["ansible-playbook", "-i", os.environ["MOLECULE_INVENTORY_FILE"], str(playbook), *extra_args]
    if limit:
        command += ["--limit", limit]
    env = dict(os.environ, ANSIBLE_NOCOLOR="1", ANSIBLE_FORCE_COLOR="0", **(env or {}))
    done = subprocess.run(command, capture_output=True, text=True, check=False, timeout=timeout, env=env)
    return done.returncode, ANSI_CODES.sub("", done.stdout + done.stderr)


def host_runner(playbook: str | Path, *fixed_args: str, fold_whitespace: bool = False, timeout: int = 900) -> Run:
    """A function that runs the playbook (with fixed_args) against one host: run(host, *extra_args, env=None)
    -> (rc, output).

    fold_whitespace: the YAML callback folds long messages over lines; with it, the output comes
    with every run of whitespace made one space, so that a message is found whole.
    """

    def run(host, *extra_args: str, env: dict[str, str] | None = None) -> tuple[int, str]:
        rc, output = run_playbook(playbook, *fixed_args, *extra_args, limit=host.backend.host, timeout=timeout, env=env)
        return rc, " ".join(output.split()) if fold_whitespace else output

    return run


def is_trixie(host) -> bool:
    return host.system_info.codename == "trixie"


def on_bookworm(host) -> bool:
    """Where a scenario runs what does not depend on the platform: its bookworm hosts."""
    return not is_trixie(host)


def debian_kernel(host) -> str:
    """The kernel whose headers Debian's archive carries (the nvidia_driver scenarios build for it)."""
    depends = host.check_output("apt-cache depends --important linux-headers-amd64")
    return re.search(r"Depends: linux-headers-(\S+)", depends).group(1)


def file_checksums(host, paths: Iterable[str]) -> dict[str, str]:
    """sha256 of each file (each must exist)."""
    return {path: host.file(path).sha256sum for path in paths}


def role_tags(role: str, roles: Path = ROLES) -> list[str]:
    """The tags a role documents: every tag its tasks/main.yml gives, in order of first use.

    The role's preflight carries all of them (tests/test_role_conventions.py checks it).
    """
    tags: list[str] = []
    for task in yaml.safe_load((roles / role / "tasks" / "main.yml").read_text()) or []:
        include = task.get("ansible.builtin.include_tasks")
        applied = include.get("apply", {}).get("tags", []) if isinstance(include, dict) else []
        for tag in [*as_list(task.get("tags", [])), *as_list(applied)]:
            if tag not in tags:
                tags.append(tag)
    return tags


def as_list(value: str | list[str]) -> list[str]:
    return [value] if isinstance(value, str) else list(value)


def run_recording_tasks(run: Run, host, *extra_args: str) -> tuple[int, str, list[dict[str, Any]]]:
    """run(host, *extra_args) with the task_record callback: (rc, output, one dict per task result:
    host, path ("FILE:LINE"), name, action, include, status: ok, changed, skipped, failed, unreachable)."""
    with tempfile.TemporaryDirectory(prefix="task-record-") as folder:
        record = Path(folder) / "tasks.jsonl"
        env = {"ANSIBLE_CALLBACK_PLUGINS": str(CALLBACK_PLUGINS), "ANSIBLE_TASK_RECORD": str(record)}
        rc, output = run(host, *extra_args, env=env)
        results = [json.loads(line) for line in record.read_text().splitlines()] if record.exists() else []
    return rc, output, results


def shared_task_files(role: str, roles: Path = ROLES) -> set[str]:
    """The task files the role runs with every one of its tags: the files main.yml imports with all
    of role_tags (the preflight; nvidia_driver's detection and report; dataset_volume's probe)."""
    tags = set(role_tags(role, roles))
    files = set()
    for task in yaml.safe_load((roles / role / "tasks" / "main.yml").read_text()) or []:
        imported = task.get("ansible.builtin.import_tasks")
        if isinstance(imported, str) and tags <= set(as_list(task.get("tags", []))):
            files.add(imported)
    return files


def shared_main_lines(role: str, roles: Path = ROLES) -> set[int]:
    """The lines of tasks/main.yml's own tasks that carry every one of role_tags (the include_vars
    that follows the preflight): run with every tag, they are no tag's own work."""
    tags = set(role_tags(role, roles))
    tasks = yaml.compose((roles / role / "tasks" / "main.yml").read_text())
    lines = set()
    for node in tasks.value if tasks is not None else []:
        task = yaml.safe_load(yaml.serialize(node))
        imported = "ansible.builtin.import_tasks" in task  # its tasks are in their own file
        if not imported and tags <= set(as_list(task.get("tags", []))):
            # Ansible names a task by the line of its first key, as the task_record callback records it.
            lines.add(node.start_mark.line + 1)
    return lines


def role_task_file(result: dict[str, Any], role: str, roles: Path = ROLES) -> str | None:
    """The file under roles/ROLE/tasks/ a recorded task result comes from (None: not the role's)."""
    tasks = (roles / role / "tasks").resolve()
    path = Path(result["path"].rpartition(":")[0] or result["path"]).resolve()
    return path.name if path.parent == tasks else None


def tag_work(
    results: list[dict[str, Any]], role: str, tag: str, host: str, roles: Path = ROLES
) -> tuple[list[str], list[str]]:
    """What a run with --tags TAG did on host of the role's own, beyond what every tag runs.

    Returns (ran, decided): "FILE:LINE name" of each task of the role that ran (ok or changed, not
    an include) outside the shared task files, and of each one there that its condition skipped.
    A shared file is the tag's own work when the tag is named after it (ROLE_preflight runs
    preflight.yml, nvidia_driver_detect detect.yml). main.yml's own tasks with every tag
    (shared_main_lines) are no tag's own work."""
    shared = shared_task_files(role, roles) - {f"{tag.removeprefix(role + '_')}.yml"}
    shared_lines = shared_main_lines(role, roles)
    ran: list[str] = []
    decided: list[str] = []
    for result in results:
        file = role_task_file(result, role, roles)
        line = result["path"].rpartition(":")[2]
        if result["host"] != host or file is None or file in shared:
            continue
        if file == "main.yml" and line.isdigit() and int(line) in shared_lines:
            continue
        where = f"{file}:{line} {result['name']}"
        if result["status"] in ("ok", "changed") and not result["include"]:
            ran.append(where)
        elif result["status"] == "skipped":
            decided.append(where)
    return ran, decided


def check_mode_changes_nothing(host, run: Run, snapshot: Snapshot, *extra_args: str) -> str:
    """Run in check mode (with --diff): it must succeed and leave the snapshot as it was. Return the output."""
    before = snapshot(host)
    rc, output = run(host, "--check", "--diff", *extra_args)
    assert rc == 0, output
    assert snapshot(host) == before
    return output


def changes_nothing(host, run: Run, snapshot: Snapshot, *extra_args: str) -> str:
    """Run for real: it must succeed, report no change and leave the snapshot as it was. Return the output."""
    before = snapshot(host)
    rc, output = run(host, *extra_args)
    assert rc == 0, output
    assert "changed=0" in output, output
    assert snapshot(host) == before
    return output


def refused_before_any_change(host, run: Run, snapshot: Snapshot, *extra_args: str) -> str:
    """Run: it must fail, with no change reported and the snapshot as it was. Return the output."""
    before = snapshot(host)
    rc, output = run(host, *extra_args)
    assert rc != 0, output
    assert "changed=0" in output, output
    assert snapshot(host) == before
    return output


# Runs that must change nothing (check mode, refusals before any change) spend most of their
# time waiting on the container and on Ansible's own start: this many go at once on one host.
CONCURRENT_RUNS = 4


class ConcurrentRuns:
    """Runs that must leave a host as it was, started together once per host: the first test of
    the batch that calls batch(host) starts them, the others read what they left. It returns
    (before, after, results): the host's snapshot before and after the whole batch, and for each
    key of cases (a dict, or a function of the host giving one) what run(host, *cases[key])
    returned ((rc, output) for a host_runner). Each test still asserts on its own run, and that the snapshot did
    not move: a run that changed something fails every test of its batch."""

    def __init__(self, run: Run, snapshot: Snapshot, cases: Cases | Callable[[Any], Cases]):
        self.run, self.snapshot, self.cases = run, snapshot, cases
        self.done: dict[str, tuple[Any, Any, dict[Any, Any]]] = {}

    def __call__(self, host) -> tuple[Any, Any, dict[Any, Any]]:
        name = host.backend.host
        if name not in self.done:
            before = self.snapshot(host)
            with ThreadPoolExecutor(max_workers=CONCURRENT_RUNS) as pool:
                cases = self.cases(host) if callable(self.cases) else self.cases
                futures = {key: pool.submit(self.run, host, *args) for key, args in cases.items()}
                results = {key: future.result() for key, future in futures.items()}
            self.done[name] = (before, self.snapshot(host), results)
        return self.done[name]


# --- tests every role's scenario runs alike ------------------------------------------------------


def every_tag_check_mode_test(
    role: str,
    run: Run,
    snapshot: Snapshot,
    *,
    runs_on: Callable[[Any], bool] = on_bookworm,
    nothing_to_do: dict[str, str] | None = None,
):
    """A test, parametrized by each tag of the role (role_tags), that runs the role with that tag
    alone in check mode on the converged hosts: it must succeed, read no undefined variable,
    change nothing, and run a task of the role's own for that tag: one outside the files every
    tag runs (shared_task_files: preflight, detection, report), as tag_work reads them from the
    task_record callback.

    nothing_to_do: tag -> why the tag legitimately has nothing to do on these hosts (nvidia_driver's
    services, reboot and verify steps on a host without a GPU). Such a tag must still reach its own
    decision (a task of its own whose condition skipped it) and must run nothing of its own: once
    it does, the declaration is wrong and the test says so. Tags do not depend on the platform: the
    hosts runs_on accepts run it, the others skip. The tags' runs go together (ConcurrentRuns)."""

    tags = role_tags(role)
    declared = dict(nothing_to_do or {})
    unknown = set(declared) - set(tags)
    if unknown:
        raise ValueError(f"nothing_to_do names tags {role} does not have: {sorted(unknown)}; its tags: {tags}")
    batch = ConcurrentRuns(
        lambda host, *args: run_recording_tasks(run, host, *args),
        snapshot,
        {tag: ("--check", "--tags", tag) for tag in tags},
    )

    @pytest.mark.parametrize("tag", tags)
    def test_every_documented_tag_runs_alone_in_check_mode(host, tag):
        if not runs_on(host):
            pytest.skip("tags do not depend on the platform; one platform runs them")
        before, after, results = batch(host)
        rc, output, recorded = results[tag]
        assert rc == 0, output
        assert "undefined" not in output.lower(), output
        assert recorded, f"the task_record callback recorded nothing (ANSIBLE_CALLBACK_PLUGINS={CALLBACK_PLUGINS})"
        ran, decided = tag_work(recorded, role, tag, host.backend.host)
        if tag in declared:
            assert not ran, (
                f"--tags {tag} ran tasks of its own, though the scenario declares it has nothing to do"
                f" ({declared[tag]}): {ran}; remove it from nothing_to_do"
            )
            assert decided, f"--tags {tag} never reached a decision of its own (a task whose condition skipped it)"
        else:
            assert ran, (
                f"--tags {tag} ran nothing of its own, only what every tag runs: skipped {decided}."
                " Tag the step's tasks, or declare the tag in nothing_to_do with the reason"
            )
        assert after == before

    return test_every_documented_tag_runs_alone_in_check_mode


def bad_variables_test(run: Run, snapshot: Snapshot, cases: list[tuple[str, str]]):
    """A test, parametrized by (extra_vars, named), that runs with -e extra_vars: the run must be
    refused before any change (as refused_before_any_change checks), and its output must name
    `named`. Input checks do not depend on the platform: bookworm hosts run it. The cases' runs
    go together (ConcurrentRuns)."""

    batch = ConcurrentRuns(run, snapshot, {extra_vars: ("-e", extra_vars) for extra_vars, _ in cases})

    @pytest.mark.parametrize(("extra_vars", "named"), cases)
    def test_bad_variables_fail_before_any_change(host, extra_vars, named):
        if not on_bookworm(host):
            pytest.skip("input checks do not depend on the platform; one platform runs them")
        before, after, results = batch(host)
        rc, output = results[extra_vars]
        # refused_before_any_change, for a run of the batch
        assert rc != 0, output
        assert "changed=0" in output, output
        assert after == before
        assert named in output

    return test_bad_variables_fail_before_any_change
