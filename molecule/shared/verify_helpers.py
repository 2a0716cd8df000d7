"""What the scenarios' verify tests share: running a playbook against one host of Molecule's
inventory, the platform checks, and the tests every role's scenario runs alike.

The verifier puts this folder on PYTHONPATH (.config/molecule/config.yml). The shared tests
are made by the factories at the end: a scenario's test module assigns what they return to a
name starting with test_, and pytest collects it there, e.g.

    test_every_documented_tag_runs_alone_in_check_mode = every_tag_check_mode_test("hf_env", run_converge, checksums)
"""

from __future__ import annotations

import os
import re
import subprocess
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
import yaml

PROJECT = Path(__file__).resolve().parents[2]
ANSI_CODES = re.compile(r"\x1b\[[0-9;]*m")

# run(host, *extra_args) -> (rc, output); snapshot(host) -> what a run must leave as it was.
Run = Callable[..., tuple[int, str]]
Snapshot = Callable[[Any], Any]
# A batch's runs: key -> the extra arguments of its run.
Cases = dict[Any, tuple[str, ...]]


def run_playbook(playbook: str | Path, *extra_args: str, limit: str = "", timeout: int = 300) -> tuple[int, str]:
    """ansible-playbook against the scenario's inventory; return (rc, stdout + stderr without colour codes)."""
    command = ["ansible-playbook", "-i", os.environ["MOLECULE_INVENTORY_FILE"], str(playbook), *extra_args]
    if limit:
        command += ["--limit", limit]
    env = dict(os.environ, ANSIBLE_NOCOLOR="1", ANSIBLE_FORCE_COLOR="0")
    done = subprocess.run(command, capture_output=True, text=True, check=False, timeout=timeout, env=env)
    return done.returncode, ANSI_CODES.sub("", done.stdout + done.stderr)


def host_runner(playbook: str | Path, *fixed_args: str, fold_whitespace: bool = False, timeout: int = 300) -> Run:
    """A function that runs the playbook (with fixed_args) against one host: run(host, *extra_args) -> (rc, output).

    fold_whitespace: the YAML callback folds long messages over lines; with it, the output comes
    with every run of whitespace made one space, so that a message is found whole.
    """

    def run(host, *extra_args: str) -> tuple[int, str]:
        rc, output = run_playbook(playbook, *fixed_args, *extra_args, limit=host.backend.host, timeout=timeout)
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


def role_tags(role: str) -> list[str]:
    """The tags a role documents: every tag its tasks/main.yml gives, in order of first use.

    The role's preflight carries all of them (tests/test_role_conventions.py checks it).
    """
    tags: list[str] = []
    for task in yaml.safe_load((PROJECT / "roles" / role / "tasks" / "main.yml").read_text()) or []:
        include = task.get("ansible.builtin.include_tasks")
        applied = include.get("apply", {}).get("tags", []) if isinstance(include, dict) else []
        for tag in [*as_list(task.get("tags", [])), *as_list(applied)]:
            if tag not in tags:
                tags.append(tag)
    return tags


def as_list(value: str | list[str]) -> list[str]:
    return [value] if isinstance(value, str) else list(value)


def ran_role_tasks(output: str, role: str) -> bool:
    """Whether a run's output shows a task of the role beyond the argument check (which runs with any tag).

    The output may come with its whitespace folded (host_runner's fold_whitespace)."""
    return re.search(rf"(?:^|\s)TASK \[{re.escape(role)} : (?!Validating arguments)", output) is not None


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
    key of cases (a dict, or a function of the host giving one) the (rc, output) of
    run(host, *cases[key]). Each test still asserts on its own run, and that the snapshot did
    not move: a run that changed something fails every test of its batch."""

    def __init__(self, run: Run, snapshot: Snapshot, cases: Cases | Callable[[Any], Cases]):
        self.run, self.snapshot, self.cases = run, snapshot, cases
        self.done: dict[str, tuple[Any, Any, dict[Any, tuple[int, str]]]] = {}

    def __call__(self, host) -> tuple[Any, Any, dict[Any, tuple[int, str]]]:
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


def every_tag_check_mode_test(role: str, run: Run, snapshot: Snapshot, *, runs_on: Callable[[Any], bool] = on_bookworm):
    """A test, parametrized by each tag of the role (role_tags), that runs the role with that tag
    alone in check mode on the converged hosts: it must succeed, read no undefined variable,
    run tasks of the role, and change nothing. Tags do not depend on the platform: the hosts
    runs_on accepts run it, the others skip. The tags' runs go together (ConcurrentRuns)."""

    tags = role_tags(role)
    batch = ConcurrentRuns(run, snapshot, {tag: ("--check", "--tags", tag) for tag in tags})

    @pytest.mark.parametrize("tag", tags)
    def test_every_documented_tag_runs_alone_in_check_mode(host, tag):
        if not runs_on(host):
            pytest.skip("tags do not depend on the platform; one platform runs them")
        before, after, results = batch(host)
        rc, output = results[tag]
        assert rc == 0, output
        assert "undefined" not in output.lower(), output
        assert ran_role_tasks(output, role), output
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
