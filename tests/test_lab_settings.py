"""The lab library's settings (scripts/lablib): LAB_* variables read once, in one place, and
handed on to scripts/lab.py unchanged; the one log function. No lab is made."""

import re
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "scripts"))

from lablib import Lab, Logger  # noqa: E402
from lablib.settings import ENV_NAMES, LabSettingsError  # noqa: E402


def test_with_no_lab_variable_the_settings_are_the_default_labs():
    lab = Lab.from_env({})
    assert (lab.dir, lab.inventory_file) == (ROOT / "lab", ROOT / "inventory/lab/hosts.yml")
    assert (lab.prefix, lab.base_port, lab.network) == ("lab-gpu-", 2200, "lab-gpu-net")
    assert lab.host_names(2) == ["lab-gpu-01", "lab-gpu-02"]
    assert (lab.hosts, lab.seed, lab.gpu, lab.gpu_count, lab.gpu_fail_hosts()) == (3, "full", "none", 2, ())
    assert lab.fact_caches == [ROOT / ".cache/facts"]
    assert lab.python_path in {ROOT / ".venvs/prod/bin/python", ROOT / ".venvs/loader/bin/python"}


def test_each_variable_sets_its_field():
    environ = {
        "LAB_DIR": "lab/x", "LAB_PREFIX": "x-", "LAB_BASE_PORT": "2990", "LAB_SHARDS": "24",
        "LAB_FACT_CACHE": "a:b:", "LAB_PYTHON": "venv/bin/python", "LAB_GPU_FAIL": " x-02 ,x-01,",
        "LAB_SHARED": "shared:/data/checkpoints", "LAB_GPU_COUNT": "4",
    }  # fmt: skip
    lab = Lab.from_env(environ)
    assert (lab.state_file, lab.key, lab.gpu_dir) == (
        ROOT / "lab/x/state.json", ROOT / "lab/x/ssh/id_ed25519", ROOT / "lab/x/gpu-sim"
    )  # fmt: skip
    assert (lab.base_port, lab.shards, lab.gpu_count, lab.network) == (2990, 24, 4, "x-net")
    assert lab.fact_caches == [ROOT / "a", ROOT / "b"]
    assert lab.python_path == ROOT / "venv/bin/python"
    assert lab.gpu_fail_hosts() == ("x-01", "x-02")
    assert lab.shared == "shared:/data/checkpoints"


def test_make_passes_unset_choices_empty_and_they_keep_their_defaults():
    lab = Lab.from_env({"LAB_SEED": "", "LAB_GPU": "", "LAB_GPU_COUNT": ""})
    assert (lab.seed, lab.gpu, lab.gpu_count) == ("full", "none", 2)


def test_a_number_that_is_not_one_is_refused_by_its_name():
    with pytest.raises(LabSettingsError, match="LAB_BASE_PORT must be a whole number, not 'twenty'"):
        Lab.from_env({"LAB_BASE_PORT": "twenty"})


def test_a_callers_defaults_apply_only_to_variables_not_set():
    assert Lab.from_env({}, hosts=10).hosts == 10
    assert Lab.from_env({"LAB_HOSTS": "4"}, hosts=10).hosts == 4


def test_a_lab_beside_the_default_shares_nothing_with_it_and_keeps_the_users_other_settings():
    user = Lab.from_env({"LAB_IMAGE": "mine", "LAB_SEED": "empty", "LAB_SHARDS": "9", "LAB_GPU_COUNT": "3"})
    lab = user.beside("lab/slurm", "slurm-gpu-", 2700, gpu="sim")
    assert (lab.folder, lab.inventory, lab.fact_cache, lab.host_reports) == (
        "lab/slurm", "lab/slurm/inventory/hosts.yml", "lab/slurm/facts", "lab/slurm/reports/hosts"
    )  # fmt: skip
    assert (lab.prefix, lab.base_port, lab.gpu) == ("slurm-gpu-", 2700, "sim")
    # A rehearsal's lab starts from full volumes of the two-shard cache whatever the shell says.
    assert (lab.seed, lab.shards) == ("full", 2)
    assert (lab.image, lab.gpu_count) == ("mine", 3)


def test_the_environment_handed_to_lab_py_gives_back_the_same_settings():
    lab = Lab.from_env({"LAB_PYTHON": "p"}).beside("lab/j", "j-", 2650, gpu_fail="j-02", shared="s:/d")
    env = lab.environment({"PATH": "/bin", "LAB_DIR": "lab/other"})
    assert env["PATH"] == "/bin" and env["LAB_DIR"] == "lab/j"
    assert Lab.from_env(env) == lab
    # An unset LAB_PYTHON stays unset: lab.py picks the venv itself.
    assert "LAB_PYTHON" not in Lab.from_env({}).environment({})


def test_every_lab_variable_is_read_in_the_settings_alone():
    # scripts/gpu_sim/payload runs on the hosts (LAB_TRAIN_DATA, LAB_GPU_SIM_ROOT): not the lab's settings.
    read = re.compile(r"environ(?:\.get\(|\[)\s*[\"'](LAB_\w+)")
    readers = {
        str(path.relative_to(ROOT)): sorted(set(read.findall(path.read_text())))
        for folder in ("scripts", "bench")
        for path in (ROOT / folder).rglob("*.py")
        if "payload" not in path.parts and path.name != "settings.py"
    }
    assert {path: names for path, names in readers.items() if names} == {}
    assert len(ENV_NAMES) == len(set(ENV_NAMES.values()))


def test_the_one_log_function_tags_each_line(capsys):
    log = Logger("pull-lab")
    log("up")
    with pytest.raises(SystemExit) as exit_:
        log.die("no")
    assert exit_.value.code == 1
    out, err = capsys.readouterr()
    assert (out, err) == ("[pull-lab] up\n", "[pull-lab] ERROR: no\n")
