"""Conventions every role keeps: specs match defaults, README matches specs, one way to check and observe."""

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from ansible.playbook.task import Task

ROOT = Path(__file__).resolve().parent.parent
ROLES = sorted(path.name for path in (ROOT / "roles").iterdir() if (path / "tasks").is_dir())
# hf_loader's cache test needs a mounted cache and its environment: the
# whole-site scenario tests it rather than a scenario of its own.
SCENARIO_OF_ROLE = {"hf_loader": "default"}
# fleet_pull works at boot, from cloud-init's seed, which must be in place before the container
# starts (Molecule's create step cannot give it): the pull lab boots real NoCloud instances and
# runs the role there, its second run (drift) changing nothing (make lab-pull-short, in make test).
# upgrade_driver is a runbook's steps (playbooks/upgrade-driver.yml): the upgrade lab runs it over
# simulated-GPU lab hosts with real reboots, one host failing, then again with nothing to change
# (make lab-upgrade-short, in make test).
REHEARSAL_OF_ROLE = {
    "fleet_pull": ("scripts/pull_lab.py", "lab-pull-short"),
    "upgrade_driver": ("scripts/upgrade_rehearsal.py", "lab-upgrade-short"),
    # The Slurm roles need a controller and nodes that reach each other (munge, slurmctld,
    # slurmd): the Slurm lab runs them on lab hosts, their second run changing nothing.
    "slurm_controller": ("scripts/slurm_lab.py", "lab-slurm-short"),
    "slurm_node": ("scripts/slurm_lab.py", "lab-slurm-short"),
}


def labs_in_make_test() -> list[str]:
    """The labs `make test` runs: those of scripts/rehearsals.sh's queue, when it is a stage."""
    stages = re.search(r"declare -a STAGES=\((.*)\)", (ROOT / "scripts" / "run-tests.sh").read_text())[1]
    if "rehearsals" not in re.split(r"[ +]", stages):
        return []
    return re.search(r'^LABS="(.*)"', (ROOT / "scripts" / "rehearsals.sh").read_text(), re.M)[1].split()


# fleet_artifact touches no host (set_stats and a file on the controller): pytest runs the
# runbooks that apply it on this machine and reads both (tests/test_run_results.py).
# ebs_volumes works on EC2 through amazon.aws, which no container stands in for: pytest runs
# playbooks/ebs-volumes.yml on fake hosts up to the first AWS call, and the role's checks on
# AWS's answers fed the amazon.aws modules' results (tests/test_ebs_volumes.py).
# fleet holds values and checks them on the controller: pytest shows on local hosts that the
# inventory's fleet names reach every role that reads them (tests/test_fleet_values.py).
PYTEST_OF_ROLE = {
    "fleet_artifact": "tests/test_run_results.py",
    "ebs_volumes": "tests/test_ebs_volumes.py",
    "fleet": "tests/test_fleet_values.py",
}
SPEC_TYPES = {"str", "path", "bool", "int", "float", "list", "dict", "raw"}


def load(path: Path):
    return yaml.safe_load(path.read_text()) or {}


def options(role: str) -> dict:
    return load(ROOT / "roles" / role / "meta" / "argument_specs.yml")["argument_specs"]["main"]["options"]


def defaults(role: str) -> dict:
    return load(ROOT / "roles" / role / "defaults" / "main.yml")


def test_every_role_the_playbooks_apply_is_checked_here():
    """The role tests below are parametrized over ROLES: a role the playbooks apply that the
    discovery missed would escape every convention check without a word."""
    applied = set()
    for playbook in [ROOT / "site.yml", *sorted((ROOT / "playbooks").glob("*.yml"))]:
        text = playbook.read_text()
        applied |= set(re.findall(r"^\s*-?\s*role:\s*([a-z_]+)\s*$", text, re.M))
        applied |= set(re.findall(r"include_role:\s*\n\s*name:\s*([a-z_]+)", text))
    assert len(applied) >= 5, applied
    assert applied <= set(ROLES), f"applied but not checked: {sorted(applied - set(ROLES))}"


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
    if role in REHEARSAL_OF_ROLE:
        script, target = REHEARSAL_OF_ROLE[role]
        makefiles = [ROOT / "Makefile", *sorted((ROOT / "mk").glob("*.mk"))]
        assert (ROOT / script).is_file() and target in labs_in_make_test(), (target, labs_in_make_test())
        assert any(f"\n{target}:" in path.read_text() for path in makefiles), f"no make target {target}"
        return
    if role in PYTEST_OF_ROLE:
        assert (ROOT / PYTEST_OF_ROLE[role]).is_file()
        return
    scenario = SCENARIO_OF_ROLE.get(role, role)
    assert (ROOT / "molecule" / scenario / "molecule.yml").is_file(), "each role has a Molecule scenario"


ROLE_DOCS = ROOT / "scripts" / "role_docs.py"


def role_docs(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(ROLE_DOCS), *args], check=False, capture_output=True, text=True)


def hand_written(readme: str) -> str:
    return readme.split("<!-- role-notes -->", 1)[1].split("<!-- /role-notes -->", 1)[0]


@pytest.mark.parametrize("role", ROLES)
def test_each_role_has_a_readme_with_its_hand_written_part_and_every_variable(role):
    readme = (ROOT / "roles" / role / "README.md").read_text()
    notes = hand_written(readme)
    for heading in ("## What it needs", "## What it does"):
        assert heading in notes, f"roles/{role}/README.md: the hand-written part lacks {heading!r}"
    for name in options(role):
        assert f"| `{name}` |" in readme, f"roles/{role}/README.md lacks {name}"
    assert f"[`{role}`](roles/{role}/README.md)" in (ROOT / "README.md").read_text(), "README.md lists every role"


def test_role_readmes_match_the_specs_tags_and_handlers():
    done = role_docs("--check")
    assert done.returncode == 0, done.stderr


def copy_of_the_roles(tmp_path: Path) -> Path:
    """What role_docs.py reads and writes, copied: README.md, site.yml and the roles."""
    for relative in ["README.md", "site.yml"]:
        (tmp_path / relative).write_text((ROOT / relative).read_text())
    shutil.copytree(ROOT / "roles", tmp_path / "roles", ignore=shutil.ignore_patterns("__pycache__"))
    return tmp_path


def test_check_fails_when_a_role_readme_is_out_of_date_and_a_rerun_keeps_the_hand_written_part(tmp_path):
    root = copy_of_the_roles(tmp_path)
    assert role_docs("--check", "--root", str(root)).returncode == 0
    specs = root / "roles" / "hf_env" / "meta" / "argument_specs.yml"
    specs.write_text(specs.read_text().replace("HF_HUB_CACHE, the hub's snapshot cache.", "The hub cache."))
    tasks = root / "roles" / "hf_env" / "tasks" / "main.yml"
    new_step = "\n- name: A new step\n  ansible.builtin.import_tasks: new.yml\n  tags: [hf_env_new]\n"
    tasks.write_text(tasks.read_text() + new_step)
    done = role_docs("--check", "--root", str(root))
    assert done.returncode == 1 and "roles/hf_env/README.md" in done.stderr
    notes = hand_written((root / "roles" / "hf_env" / "README.md").read_text())
    assert role_docs("--root", str(root)).returncode == 0
    readme = (root / "roles" / "hf_env" / "README.md").read_text()
    assert "| `hf_env_hub_cache` | path | `{{ hf_env_cache_root }}/hub` | The hub cache. |" in readme
    assert "`hf_env_new`" in readme and hand_written(readme) == notes
    assert role_docs("--check", "--root", str(root)).returncode == 0
    (root / "roles" / "dataset_volume" / "README.md").unlink()
    assert role_docs("--check", "--root", str(root)).returncode == 1


def test_a_tag_row_names_the_steps_of_a_dispatching_include_not_the_include(tmp_path):
    """nvidia_driver's main.yml includes gpu.yml, whose own tasks carry the step tags: the table
    names each tag's own steps (it once said "Install, configure, reboot into and verify the
    driver" for seven tags)."""
    root = copy_of_the_roles(tmp_path)
    tasks = root / "roles" / "hf_env" / "tasks"
    (tasks / "steps.yml").write_text(
        "---\n- name: The first step\n  ansible.builtin.import_tasks: first.yml\n  tags: [hf_env_first]\n"
        "- name: The second step\n  ansible.builtin.import_tasks: second.yml\n  tags: [hf_env_second]\n"
    )
    dispatch = (
        "\n- name: Both steps\n  ansible.builtin.include_tasks: steps.yml\n  tags: [hf_env_first, hf_env_second]\n"
    )
    (tasks / "main.yml").write_text((tasks / "main.yml").read_text() + dispatch)
    assert role_docs("--root", str(root)).returncode == 0
    readme = (root / "roles" / "hf_env" / "README.md").read_text()
    assert "| `hf_env_first` | The first step |" in readme and "| `hf_env_second` | The second step |" in readme
    assert "Both steps" not in readme
    nvidia = (ROOT / "roles" / "nvidia_driver" / "README.md").read_text()
    assert "| `nvidia_driver_modprobe` | Blacklist nouveau |" in nvidia


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
                if re.search(rf"(?<![\w.|])(?<!\|\s){name}\b(?!\s*\|\s*bool)", code):
                    found.append(f"{path.relative_to(ROOT)}: {name} in {expr.strip()[:80]!r}")
    assert not found, "\n".join(found)


def flat(tasks):
    """Each task, and then the tasks of its block, rescue and always, in order."""
    for task in tasks or []:
        yield task
        for key in ("block", "rescue", "always"):
            yield from flat(task.get(key))


def task_lists(role: str):
    """Every task file of the role, with the tasks of its blocks flattened in."""
    for path in sorted((ROOT / "roles" / role / "tasks").glob("*.yml")):
        yield path, list(flat(load(path)))


def dispatches(path: Path) -> bool:
    steps = ("ansible.builtin.include_tasks", "ansible.builtin.import_tasks")
    return all(
        "ansible.builtin.meta" in task or (task.get("tags") and any(step in task for step in steps))
        for task in load(path)
    )


@pytest.mark.parametrize("role", ROLES)
def test_included_task_files_keep_their_tags(role):
    # include_tasks (chosen where one decision replaces a skip per task) gives its tags to the
    # include only: `apply` must hand the same tags to the included tasks, or --tags runs the
    # include and then nothing in it. (Handlers run when notified, whatever the tags.) A file
    # that only dispatches (every task in it an include or import with tags of its own, or a
    # meta step) is included without `apply`, so that each step keeps its own tags.
    found = []
    for path, tasks in task_lists(role):
        for task in tasks:
            include = task.get("ansible.builtin.include_tasks")
            if include is None:
                continue
            applied = include.get("apply", {}).get("tags") if isinstance(include, dict) else None
            if applied is None and task.get("tags") and isinstance(include, str) and dispatches(path.parent / include):
                continue
            if not task.get("tags") or applied != task["tags"]:
                found.append(f"{path.relative_to(ROOT)}: {task.get('name')!r} tags {task.get('tags')} apply {applied}")
    assert not found, "\n".join(found)


# The steps that only read and that later steps rely on: they run with every tag of the role,
# so that any one tag works alone (Molecule runs each one in check mode). Not `always`: another
# role's tags must not run them.
READ_ONLY_STEPS = {"facts.yml", "preflight.yml", "observe.yml", "detect.yml", "refuse.yml"}


def main_tags(tasks) -> set[str]:
    """Every tag a tasks/main.yml gives: on its tasks and in its includes' apply."""
    found = set()
    for task in tasks:
        include = task.get("ansible.builtin.include_tasks")
        applied = include.get("apply", {}).get("tags", []) if isinstance(include, dict) else []
        for tags in (task.get("tags", []), applied):
            found.update([tags] if isinstance(tags, str) else tags)
    return found


def read_only_step_problems(role: str, tasks: list) -> list[str]:
    every_tag = main_tags(tasks)
    steps = {task.get("ansible.builtin.import_tasks"): task for task in tasks}
    found = []
    for step in sorted(READ_ONLY_STEPS & set(steps)):
        tags = steps[step].get("tags", [])
        missing = every_tag - set([tags] if isinstance(tags, str) else tags)
        if missing:
            found.append(f"{role}: {step} lacks the tags {sorted(missing)}")
    return found


@pytest.mark.parametrize("role", ROLES)
def test_preflight_runs_with_every_tag_of_the_role(role):
    tasks = load(ROOT / "roles" / role / "tasks" / "main.yml")
    steps = {task.get("ansible.builtin.import_tasks"): task for task in tasks}
    assert "preflight.yml" in steps, f"{role}: tasks/main.yml imports no preflight.yml"
    found = read_only_step_problems(role, tasks)
    assert not found, "\n".join(found)


# --- One way to check, one way to observe (docs/contributing.md) -------------------------------

PREFLIGHT_ACTION = "gpu_fleet.common.preflight"
OBSERVERS = {
    "gpu_fleet.common.path_state",
    "gpu_fleet.common.dataset_volume_probe",
    "gpu_fleet.common.nvidia_driver_probe",
}
ASSERTS = {f"{prefix}{name}" for prefix in ("", "ansible.builtin.", "ansible.legacy.") for name in ("assert", "fail")}
# The asserts and fails still in a role's tasks, "ROLE/tasks/FILE:task name" -> why. An entry that
# no longer matches a task fails too: the list only shrinks.
ASSERTS_ALLOWED = {
    "hf_loader/tasks/install.yml:Say which wheel pip refused and why": (
        "the rescue that translates pip's error: it fails with pip's own refusal, there is nothing to check"
    ),
}


def module_of(task: dict) -> str:
    """The module or action a task calls: its one key that is not a task keyword."""
    keys = [key for key in task if key not in Task.fattributes and key not in {"block", "rescue", "always"}]
    return keys[0] if len(keys) == 1 else ""


def preflight_problems(role_dir: Path) -> list[str]:
    path = role_dir / "tasks" / "preflight.yml"
    if not path.is_file():
        return [f"{role_dir.name}: no tasks/preflight.yml"]
    tasks = load(path) or []
    if len(tasks) != 1 or module_of(tasks[0]) != PREFLIGHT_ACTION:
        calls = [module_of(task) or task.get("name") for task in tasks]
        return [f"{role_dir.name}/tasks/preflight.yml must be one task, {PREFLIGHT_ACTION}; it is {calls}"]
    return []


def observe_problems(role_dir: Path) -> list[str]:
    path = role_dir / "tasks" / "observe.yml"
    if not path.is_file():
        return []
    tasks = load(path) or []
    where = f"{role_dir.name}/tasks/observe.yml"
    if len(tasks) != 1:
        return [f"{where} must be one task (one read-only call); it has {len(tasks)}"]
    problems = []
    if module_of(tasks[0]) not in OBSERVERS:
        problems.append(f"{where} calls {module_of(tasks[0]) or 'no single module'}, not one of {sorted(OBSERVERS)}")
    if tasks[0].get("check_mode") is not False:
        problems.append(f"{where} lacks check_mode: false (check mode must decide on what the host holds)")
    return problems


def asserts_in(roles_dir: Path) -> list[str]:
    """ "ROLE/tasks/FILE:task name" of every assert or fail in the roles' tasks, blocks included."""
    found = []
    for role_dir in sorted(path for path in roles_dir.iterdir() if (path / "tasks").is_dir()):
        for path in sorted((role_dir / "tasks").glob("*.yml")):
            for task in flat(load(path)):
                if module_of(task) in ASSERTS:
                    found.append(f"{role_dir.name}/tasks/{path.name}:{task.get('name')}")
    return found


def assert_problems(roles_dir: Path, allowed: dict[str, str]) -> list[str]:
    found = asserts_in(roles_dir)
    problems = [
        f"{where}: a check is the {PREFLIGHT_ACTION} action with checks: (docs/contributing.md)"
        for where in found
        if where not in allowed
    ]
    problems += [
        f"ASSERTS_ALLOWED names {where}, which is no assert or fail now: remove it"
        for where in allowed
        if where not in found
    ]
    return problems


@pytest.mark.parametrize("role", ROLES)
def test_preflight_is_one_task_the_action_and_observe_one_read_only_call(role):
    problems = preflight_problems(ROOT / "roles" / role) + observe_problems(ROOT / "roles" / role)
    assert not problems, "\n".join(problems)


def test_checks_are_the_action_not_assert_or_fail():
    problems = assert_problems(ROOT / "roles", ASSERTS_ALLOWED)
    assert not problems, "\n".join(problems)


# The playbooks hold no assert or fail either: a check outside a role gets a role entry point (the
# action reads its role's specs), as train.yml's launcher check is fleet's tasks_from: launcher.
PLAYBOOKS = [ROOT / "site.yml", *sorted((ROOT / "playbooks").rglob("*.yml"))]
PLAY_TASK_KEYS = ("pre_tasks", "tasks", "post_tasks", "handlers")


def tasks_of(path: Path):
    """(play name, task) for every task of a playbook's plays, or (None, task) for a task file's,
    blocks included. A vars file (playbooks/vars/) is a mapping: no tasks."""
    data = load(path)
    items = data if isinstance(data, list) else []
    plays = [item for item in items if "hosts" in item]
    if not plays:
        yield from ((None, task) for task in flat(items))
    for play in plays:
        for key in PLAY_TASK_KEYS:
            yield from ((play.get("name"), task) for task in flat(play.get(key)))


def asserts_in_playbooks(paths) -> list[str]:
    """ "PLAYBOOK:play name:task name" of every assert or fail in the plays' task lists, blocks included."""
    return [
        f"{path.name}:{play}:{task.get('name')}"
        for path in paths
        for play, task in tasks_of(path)
        if module_of(task) in ASSERTS
    ]


def test_playbooks_check_in_a_roles_entry_point_not_with_assert_or_fail():
    found = asserts_in_playbooks(PLAYBOOKS)
    assert len(PLAYBOOKS) >= 10 and not found, (
        f"{found}: a check is a role's {PREFLIGHT_ACTION} task; import the role's entry point (docs/contributing.md)"
    )


def test_the_playbook_rule_finds_an_assert_or_fail_in_any_task_list_and_block(tmp_path):
    refuse = {"name": "Refuse", "ansible.builtin.fail": {"msg": "no"}}
    check = {"name": "Check", "assert": {"that": ["true"]}}
    block = {"name": "A block", "block": [{"name": "Step", "ansible.builtin.debug": {}}], "rescue": [check]}
    play = {"name": "Play", "hosts": "localhost", "pre_tasks": [refuse], "tasks": [block]}
    book = tmp_path / "bad.yml"
    book.write_text(yaml.safe_dump([play, {"ansible.builtin.import_playbook": "other.yml"}]))
    assert asserts_in_playbooks([book]) == ["bad.yml:Play:Refuse", "bad.yml:Play:Check"]
    play["pre_tasks"], block["rescue"] = [], []
    book.write_text(yaml.safe_dump([play]))
    assert asserts_in_playbooks([book]) == []


# Ansible checks an entry point's argument spec only when tasks_from is the spec's exact name:
# `tasks_from: job.yml` runs tasks/job.yml and silently skips the `job` spec.
INCLUDE_ROLE = {f"{prefix}{name}" for prefix in ("", "ansible.builtin.") for name in ("include_role", "import_role")}


def spec_skipping_includes(task_files, roles_dir: Path) -> list[str]:
    """ "FILE:task name" of each include_role/import_role whose tasks_from names an entry point of
    the role's argument specs with its .yml suffix."""
    found = []
    for path in task_files:
        for _, task in tasks_of(path):
            module = module_of(task)
            args = task.get(module) if module in INCLUDE_ROLE else None
            if not isinstance(args, dict) or not str(args.get("tasks_from", "")).endswith(".yml"):
                continue
            specs = roles_dir / args["name"] / "meta" / "argument_specs.yml"
            entry_points = yaml.safe_load(specs.read_text())["argument_specs"] if specs.exists() else {}
            if args["tasks_from"].removesuffix(".yml") in entry_points:
                found.append(f"{path.name}:{task.get('name')}")
    return found


def test_an_entry_point_with_a_spec_is_included_by_its_bare_name():
    task_files = [*PLAYBOOKS, *sorted((ROOT / "roles").glob("*/tasks/*.yml"))]
    found = spec_skipping_includes(task_files, ROOT / "roles")
    assert not found, f"{found}: write tasks_from without .yml, or Ansible skips the entry point's argument spec"


def test_the_entry_point_rule_finds_a_suffixed_tasks_from_in_a_play_and_a_task_file(tmp_path):
    role = tmp_path / "roles" / "demo"
    (role / "meta").mkdir(parents=True)
    (role / "meta" / "argument_specs.yml").write_text(yaml.safe_dump({"argument_specs": {"main": {}, "job": {}}}))
    include = {"name": "Submit", "ansible.builtin.include_role": {"name": "demo", "tasks_from": "job.yml"}}
    no_spec = {"name": "Other", "ansible.builtin.include_role": {"name": "demo", "tasks_from": "other.yml"}}
    book, tasks = tmp_path / "book.yml", tmp_path / "tasks.yml"
    book.write_text(yaml.safe_dump([{"name": "Play", "hosts": "all", "tasks": [{"block": [include]}, no_spec]}]))
    tasks.write_text(yaml.safe_dump([include, no_spec]))
    assert spec_skipping_includes([book, tasks], tmp_path / "roles") == ["book.yml:Submit", "tasks.yml:Submit"]
    include["ansible.builtin.include_role"]["tasks_from"] = "job"
    book.write_text(yaml.safe_dump([{"name": "Play", "hosts": "all", "tasks": [include]}]))
    assert spec_skipping_includes([book], tmp_path / "roles") == []


def test_the_check_and_observe_rules_refuse_what_they_forbid(tmp_path):
    role = tmp_path / "demo"
    (role / "tasks").mkdir(parents=True)

    def write(name, tasks):
        (role / "tasks" / name).write_text(yaml.safe_dump(tasks))

    preflight = {"name": "Check the variables", PREFLIGHT_ACTION: {"role": "demo"}}
    observe = {"name": "Observe", "gpu_fleet.common.path_state": {"paths": ["/etc"]}, "check_mode": False}
    write("preflight.yml", [preflight])
    write("observe.yml", [observe])
    assert preflight_problems(role) + observe_problems(role) == []
    write("preflight.yml", [{"name": "Gather", "ansible.builtin.setup": {}}, preflight])
    assert "must be one task" in preflight_problems(role)[0]
    write("preflight.yml", [{"name": "Check", "ansible.builtin.assert": {"that": ["true"]}}])
    assert "must be one task" in preflight_problems(role)[0]
    write("observe.yml", [observe, {"name": "Read more", "ansible.builtin.stat": {"path": "/etc"}}])
    assert "must be one task" in observe_problems(role)[0]
    write("observe.yml", [{**observe, "check_mode": None}])
    assert "check_mode: false" in observe_problems(role)[0]
    write("observe.yml", [{"name": "Read", "ansible.builtin.slurp": {"src": "/etc/hosts"}, "check_mode": False}])
    assert "ansible.builtin.slurp" in observe_problems(role)[0]

    write("preflight.yml", [preflight])
    write("step.yml", [{"name": "A block", "block": [{"name": "Refuse", "ansible.builtin.fail": {"msg": "no"}}]}])
    write("check.yml", [{"name": "Check", "assert": {"that": ["true"]}}])
    found = ["demo/tasks/check.yml:Check", "demo/tasks/step.yml:Refuse"]
    assert asserts_in(tmp_path) == found
    assert len(assert_problems(tmp_path, {})) == 2
    assert assert_problems(tmp_path, dict.fromkeys(found, "why")) == []
    stale = assert_problems(tmp_path, dict.fromkeys([*found, "demo/tasks/gone.yml:Old"], "why"))
    assert stale == ["ASSERTS_ALLOWED names demo/tasks/gone.yml:Old, which is no assert or fail now: remove it"]


def test_read_only_steps_run_with_every_tag_and_a_step_without_them_fails(tmp_path):
    tasks = [
        {"name": "Facts", "ansible.builtin.import_tasks": "facts.yml", "tags": ["demo", "demo_step"]},
        {"name": "Check", "ansible.builtin.import_tasks": "preflight.yml", "tags": ["demo", "demo_step"]},
        {"name": "Observe", "ansible.builtin.import_tasks": "observe.yml", "tags": ["demo"]},
        {"name": "Step", "ansible.builtin.import_tasks": "step.yml", "tags": ["demo", "demo_step"]},
    ]
    assert {"facts.yml", "observe.yml"} <= READ_ONLY_STEPS
    assert read_only_step_problems("demo", tasks) == ["demo: observe.yml lacks the tags ['demo_step']"]
    tasks[2]["tags"].append("demo_step")
    assert read_only_step_problems("demo", tasks) == []
