"""The health gate before service (roles/hf_loader/tasks/health_gate.yml, filter health_gate).

Its decisions on the outputs it reads, in NVIDIA's documented formats (tests/fixtures/nvidia,
handwritten_*): `dcgmi diag -r 1`'s table as DCGM 4 (NVIDIA/DCGM dcgmi/Diag.cpp: the test's
result, "GPU<n>: <result>" rows, "Warning: GPU<n>" messages wrapped at 45 characters; exit
226 for DCGM_ST_NVVS_ERROR) and DCGM 3 ("Error" rows, "Fail - GPU: 1") print it, and
`nvidia-smi -q`'s Fabric section (State, Status; NVIDIA's Fabric Manager User Guide checks GPU
fabric registration with `nvidia-smi -q -i 0 | grep -i -A 2 Fabric`). Each failing case is
performed: a GPU whose matmul differs, dcgmi reporting Fail, fabric state In Progress, a
registration that failed, the fabric manager inactive on an NVSwitch host; the gate must fail
naming the GPU. Then the task file runs for real through ansible-playbook on this machine with
the lab's CUDA stand-in: a good host passes, in check mode too; a GPU whose product is wrong,
and this machine's fabric manager (not running), fail it.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from ansible_collections.gpu_fleet.common.plugins.module_utils.health_gate.cuda import cuda_problems, cuda_report
from ansible_collections.gpu_fleet.common.plugins.module_utils.health_gate.dcgm import dcgmi_parse, dcgmi_problems
from ansible_collections.gpu_fleet.common.plugins.module_utils.health_gate.fabric import fabric_parse, fabric_problems
from ansible_collections.gpu_fleet.common.plugins.module_utils.health_gate.problems import verdict
from ansible_collections.gpu_fleet.common.plugins.module_utils.health_gate.settings import (
    fabric_needed,
    settings_errors,
)

ROOT = Path(__file__).resolve().parent.parent
FIXTURES = ROOT / "tests" / "fixtures" / "nvidia"


def output(name: str) -> str:
    """What the command printed: the fixture without the `# ` lines above it that name its source."""
    lines = (FIXTURES / name).read_text().splitlines(keepends=True)
    while lines and lines[0].startswith("# "):
        lines.pop(0)
    return "".join(lines)


DCGM4_PASS = output("handwritten_dcgm-4.6.0_diag-r1_hgx-h100-8gpu_pass.txt")
DCGM4_FAIL = output("handwritten_dcgm-4.6.0_diag-r1_hgx-h100-8gpu_gpu3-persistence-fail.txt")
DCGM3_FAIL = output("handwritten_dcgm-3.3.9_diag-r1_2gpu_gpu1-row-remap-fail.txt")
SMI_Q = output("handwritten_hgx-h100-8gpu_580.95.05_nvidia-smi-q_fabric-completed.txt")
ANSIBLE_PLAYBOOK = Path(sys.executable).parent / "ansible-playbook"
GPU_CHECK = ROOT / "scripts" / "gpu_sim" / "payload" / "gpu_check.py"
sys.path.insert(0, str(ROOT / "scripts" / "gpu_sim" / "payload"))

import lab_boot  # noqa: E402


def with_gpu_fabric(text: str, index: int, state: str, status: str) -> str:
    """The fixture with GPU `index`'s Fabric State and Status replaced (the other GPUs unchanged)."""
    blocks = re.split(r"(?m)^(?=GPU [0-9A-F]{8}:)", text)
    head, gpus = blocks[0], blocks[1:]
    gpus[index] = re.sub(r"(State\s+: )Completed", rf"\g<1>{state}", gpus[index])
    gpus[index] = re.sub(r"(Status\s+: )Success", rf"\g<1>{status}", gpus[index])
    return head + "".join(gpus)


# ---------------------------------------------------------------- dcgmi diag


def test_dcgm4_pass_table_is_read_test_by_test_and_gpu_by_gpu():
    parsed = dcgmi_parse(DCGM4_PASS)
    assert parsed["metadata"]["DCGM Version"] == "4.6.0"
    assert parsed["metadata"]["Driver Version Detected"] == "580.95.05"
    (test,) = parsed["tests"]
    assert test["name"] == "software" and test["result"] == "Pass"
    assert test["entities"] == dict.fromkeys(range(8), "Pass")
    assert dcgmi_problems(DCGM4_PASS, "", 0, 1, 600) == []


def test_dcgm4_fail_names_the_gpu_and_its_unwrapped_warning():
    problems = dcgmi_problems(DCGM4_FAIL, "", 226, 1, 600)
    assert [(p["check"], p["gpu"]) for p in problems] == [("dcgm", 3)]
    assert problems[0]["what"] == (
        "dcgmi diag -r 1: test 'software' failed on GPU 3: Persistence mode for GPU 3 is disabled."
        ' Enable persistence mode by running "nvidia-smi -i <gpuId> -pm 1 " as root.'
    )
    assert "nvidia-smi -pm 1" in problems[0]["fix"]


def test_a_fail_row_fails_the_gate_even_when_dcgmi_exits_0():
    assert [p["gpu"] for p in dcgmi_problems(DCGM4_FAIL, "", 0, 1, 600)] == [3]


def test_dcgm3_deployment_failure_is_tied_to_the_gpu_its_message_names():
    problems = dcgmi_problems(DCGM3_FAIL, "", 226, 1, 600)
    assert [p["gpu"] for p in problems] == [1]
    assert (
        "test 'Page Retirement/Row Remap' failed on GPU 1: GPU 1 had memory errors and row remappings are pending"
        in (problems[0]["what"])
    )


def test_dcgm3_gpu_lists_and_all():
    table = (
        "| Memory                    | Fail - GPUs: 0, 2                              |\n"
        "|                           | Pass - GPU: 1                                  |\n"
        "| Warning                   | GPU 0 hit a DBE                                |\n"
        "| Diagnostic                | Pass - All                                     |\n"
        "| PCIe                      | Warn - All                                     |\n"
    )
    parsed = dcgmi_parse(table)
    assert [(t["name"], t["result"], t["entities"]) for t in parsed["tests"]] == [
        ("Memory", "Fail", {0: "Fail", 2: "Fail", 1: "Pass"}),
        ("Diagnostic", "Pass", {}),
        ("PCIe", "Warn", {}),
    ]
    problems = dcgmi_problems(table, "", 226, 2, 600)
    assert [p["gpu"] for p in problems] == [0, 2]  # a warning is not a failure
    assert problems[0]["what"].endswith("failed on GPU 0: GPU 0 hit a DBE")


def test_an_isolate_error_says_to_isolate_the_gpu():
    (problem,) = dcgmi_problems(DCGM4_FAIL, "", 205, 1, 600)
    assert problem["fix"].startswith("DCGM asks to isolate this GPU")


def test_dcgmi_errors_without_a_table_fail_with_its_message():
    out = (
        "Error: unable to establish a connection to the specified host: localhost\n"
        "Error: Unable to connect to host engine. Host engine connection invalid/disconnected.\n"
    )
    (problem,) = dcgmi_problems(out, "", 250, 1, 600)
    assert "exited 250" in problem["what"] and "Unable to connect to host engine" in problem["what"]
    assert "systemctl start nvidia-dcgm" in problem["fix"]


def test_dcgmi_that_prints_no_results_is_not_a_pass():
    (problem,) = dcgmi_problems("Successfully ran diagnostic for group.\n", "", 0, 1, 600)
    assert "printed no test results" in problem["what"]


def test_dcgmi_past_its_time_limit_fails():
    (problem,) = dcgmi_problems("", "", 124, 3, 900)
    assert problem["what"] == "dcgmi diag -r 3 ran past 900 s and was stopped"


# ---------------------------------------------------------------- nvidia-smi -q, fabric


def test_the_fabric_section_of_every_gpu_is_read():
    gpus = fabric_parse(SMI_Q)
    assert len(gpus) == 8
    assert gpus[1]["bus_id"] == "00000000:2A:00.0" and gpus[1]["name"] == "NVIDIA H100 80GB HBM3"
    assert gpus[1]["uuid"] == "GPU-5a1e0c2d-7b3f-4e21-9c8d-000000000001"
    assert gpus[1]["fabric"]["State"] == "Completed" and gpus[1]["fabric"]["Status"] == "Success"
    assert gpus[1]["fabric"]["Health"]["Bandwidth"] == "Full"
    assert fabric_problems(SMI_Q, 0, "active", "nvidia-fabricmanager", 120) == []


@pytest.mark.parametrize(
    ("state", "status", "wanted", "fix"),
    [
        ("In Progress", "N/A", "fabric state In Progress (status N/A), not Completed", "still training"),
        ("Not Started", "N/A", "fabric state Not Started (status N/A), not Completed", "has not begun"),
        ("Completed", "Failure", "fabric registration completed with status Failure, not Success", "could not"),
        ("Completed", "Unknown Error", "completed with status Unknown Error, not Success", "could not"),
    ],
)
def test_a_gpu_not_registered_in_the_fabric_fails_naming_it(state, status, wanted, fix):
    text = with_gpu_fabric(SMI_Q, 5, state, status)
    (problem,) = fabric_problems(text, 0, "active", "nvidia-fabricmanager", 120)
    assert problem["check"] == "fabric" and problem["gpu"] == 5
    assert problem["what"].startswith("GPU 5 (NVIDIA H100 80GB HBM3, GPU-5a1e0c2d-7b3f-4e21-9c8d-000000000005,")
    assert "00000000:AB:00.0" in problem["what"] and wanted in problem["what"]
    assert fix in problem["fix"]


@pytest.mark.parametrize("state", ["inactive", "failed", "activating"])
def test_the_fabric_manager_not_active_on_an_nvswitch_host_fails(state):
    (problem,) = fabric_problems(SMI_Q, 0, state + "\n", "nvidia-fabricmanager", 120)
    assert problem["gpu"] is None
    assert problem["what"].startswith(f"nvidia-fabricmanager is {state} on this NVSwitch/NVLink 5 host")
    assert "systemctl start nvidia-fabricmanager" in problem["fix"]


def test_a_fabric_manager_state_systemctl_cannot_read_fails_saying_why():
    error = "System has not been booted with systemd as init system (PID 1). Can't operate.\n"
    (problem,) = fabric_problems(SMI_Q, 0, "", "nvidia-fabricmanager", 120, "", error)
    assert problem["what"].startswith(
        "nvidia-fabricmanager has a state systemctl cannot read (System has not been booted with systemd"
    )


def test_gpus_before_hopper_report_no_registration_and_only_the_service_counts():
    a100 = SMI_Q.replace("Completed", "N/A").replace("Success", "N/A")
    assert fabric_problems(a100, 0, "active", "nvidia-fabricmanager", 120) == []
    assert len(fabric_problems(a100, 0, "inactive", "nvidia-fabricmanager", 120)) == 1


def test_no_fabric_section_no_gpu_or_no_driver_fail():
    without = re.sub(r"(?m)^    Fabric\n(?:        .*\n)+", "", SMI_Q)
    problems = fabric_problems(without, 0, "active", "nvidia-fabricmanager", 120)
    assert [p["gpu"] for p in problems] == list(range(8)) and "no Fabric section" in problems[0]["what"]
    (problem,) = fabric_problems("No devices were found\n", 0, "active", "nvidia-fabricmanager", 120)
    assert "lists no GPU" in problem["what"]
    no_driver = "NVIDIA-SMI has failed because it couldn't communicate with the NVIDIA driver.\n"
    (problem,) = fabric_problems(no_driver, 9, "active", "nvidia-fabricmanager", 120)
    assert problem["what"].startswith("nvidia-smi -q exited 9: NVIDIA-SMI has failed")


@pytest.mark.parametrize(
    ("report", "needed"),
    [
        ({"gpu_count": 8, "nvswitch_count": 4, "nvlink5": False}, True),
        ({"gpu_count": "8", "nvswitch_count": "4"}, True),
        ({"gpu_count": 8, "nvswitch_count": 0, "nvlink5": True}, True),
        ({"gpu_count": 8, "nvswitch_count": "0", "nvlink5": "False"}, False),
        ({"gpu_count": 1}, False),
        ({}, False),
    ],
)
def test_the_fabric_is_checked_on_nvswitch_and_nvlink5_hosts_only(report, needed):
    assert fabric_needed(report) is needed


# ---------------------------------------------------------------- cuda


def cuda_doc(**changes) -> str:
    doc = {"check": "cuda", "version": 1, "passed": True, "exit_code": 0, "gpus": [], "problems": []}
    doc.update(changes)
    return json.dumps(doc)


def test_a_gpu_whose_matmul_differs_fails_the_gate_naming_it():
    failed = {
        "gpu": 1,
        "uuid": "GPU-1",
        "bus_id": "00000000:2A:00.0",
        "what": "GPU 1 (NVIDIA H200, GPU-1, 00000000:2A:00.0): matmul differs from the CPU's: relative error 0.01",
        "fix": "keep the host out of service: run `dcgmi diag -r 3`",
    }
    problems = cuda_problems(cuda_doc(passed=False, exit_code=5, problems=[failed]), "", 5, ["gpu-check"], 300)
    assert problems == [{"check": "cuda", "gpu": 1, "what": failed["what"], "fix": failed["fix"]}]


@pytest.mark.parametrize(
    ("stdout", "rc", "wanted"),
    [
        ("", 124, "ran past 300 s"),
        ("", 127, "cannot run on the host (exit 127)"),
        ("Traceback (most recent call last):", 1, "without its JSON report"),
        (json.dumps({"passed": True}), 0, "without its JSON report"),
        (cuda_doc(), 3, "passed=True and names no problem"),
    ],
)
def test_cuda_output_the_gate_cannot_trust_fails(stdout, rc, wanted):
    (problem,) = cuda_problems(stdout, "boom", rc, ["python", "-m", "hf_loader.gpu_check"], 300)
    assert wanted in problem["what"]


def test_a_host_whose_loader_predates_the_module_is_told_to_update_it():
    stderr = "/opt/hf-loader/venv/bin/python: No module named hf_loader.gpu_check\n"
    (problem,) = cuda_problems("", stderr, 1, ["/opt/hf-loader/venv/bin/python", "-m", "hf_loader.gpu_check"], 300)
    assert "cannot import its module: /opt/hf-loader/venv/bin/python: No module named" in problem["what"]
    assert "site.yml --tags loader" in problem["fix"]


def test_a_passing_report_with_exit_0_passes_and_is_kept():
    assert cuda_problems(cuda_doc(), "", 0, ["gpu-check"], 300) == []
    assert cuda_report(cuda_doc())["passed"] is True
    assert cuda_report("not json") is None and cuda_report("[1]") is None


# ---------------------------------------------------------------- settings and verdict

GOOD = {
    "driver_report": {"gpu_count": 8},
    "checks": ["cuda", "dcgm", "fabric"],
    "cuda_command": ["/opt/hf-loader/venv/bin/python", "-m", "hf_loader.gpu_check"],
    "size": 2048,
    "tolerance": 1e-4,
    "alloc_mib": 256,
    "cuda_timeout": 300,
    "dcgmi_command": "dcgmi",
    "dcgmi_level": 1,
    "dcgmi_timeout": 600,
    "fabric_manager_service": "nvidia-fabricmanager",
    "fabric_timeout": 120,
}


@pytest.mark.parametrize(
    ("change", "wanted"),
    [
        ({"driver_report": {}}, "hf_loader_driver_report has no gpu_count"),
        ({"driver_report": {"gpu_count": "eight"}}, "hf_loader_driver_report.gpu_count"),
        ({"checks": ["cuda", "burn"]}, "hf_loader_health_gate_checks"),
        ({"cuda_command": "python -m hf_loader.gpu_check"}, "hf_loader_health_gate_cuda_command"),
        ({"cuda_command": []}, "hf_loader_health_gate_cuda_command"),
        ({"tolerance": 0}, "hf_loader_health_gate_tolerance"),
        ({"tolerance": "lots"}, "hf_loader_health_gate_tolerance"),
        ({"size": 0}, "hf_loader_health_gate_size"),
        ({"cuda_timeout": "5m"}, "hf_loader_health_gate_cuda_timeout"),
        ({"alloc_mib": True}, "hf_loader_health_gate_alloc_mib"),
        ({"dcgmi_level": 5}, "hf_loader_health_gate_dcgmi_level"),
        ({"dcgmi_command": "dcgmi diag"}, "hf_loader_health_gate_dcgmi_command"),
        ({"fabric_manager_service": ""}, "hf_loader_health_gate_fabric_manager_service"),
    ],
)
def test_bad_settings_are_refused_naming_the_variable(change, wanted):
    assert settings_errors(GOOD) == []
    problems = settings_errors({**GOOD, **change})
    assert len(problems) == 1 and problems[0].startswith(wanted), problems


def test_settings_given_on_the_command_line_as_text_are_read_as_numbers():
    assert settings_errors({**GOOD, "size": "512", "tolerance": "1e-3", "dcgmi_level": "2"}) == []


def test_the_verdict_names_every_problem_and_its_fix():
    problems = [
        {"check": "cuda", "gpu": 1, "what": "GPU 1 (x): matmul differs", "fix": "repair it"},
        {"check": "fabric", "gpu": None, "what": "nvidia-fabricmanager is inactive", "fix": "start it"},
    ]
    found = verdict(problems, ["dcgm: dcgmi is not installed"])
    assert not found["passed"]
    assert found["message"] == (
        "(1) [cuda] GPU 1 (x): matmul differs. Fix: repair it."
        " (2) [fabric] nvidia-fabricmanager is inactive. Fix: start it."
    )
    assert verdict([], ["dcgm: dcgmi is not installed"]) == {
        "passed": True,
        "problems": [],
        "skipped": ["dcgm: dcgmi is not installed"],
        "message": "passed (dcgm: dcgmi is not installed)",
    }


# ---------------------------------------------------------------- the task file, for real


def simulated_boot(root: Path, gpus: int, wrong: str = "") -> Path:
    """What lab-boot writes for a boot of a sim host (driver 580.95.05 loaded, its H200s), and the
    stand-in's fault file."""
    (root / "proc" / "driver" / "nvidia").mkdir(parents=True)
    (root / "proc" / "driver" / "nvidia" / "version").write_text(lab_boot.proc_version_text("580.95.05", 0))
    (root / "run" / "gpu-sim").mkdir(parents=True)
    (root / "run" / "gpu-sim" / "gpus").write_text(json.dumps(lab_boot.gpu_records(root.name, gpus)))
    (root / "etc" / "gpu-sim").mkdir(parents=True)
    if wrong:
        (root / "etc" / "gpu-sim" / "gpu-check-fail").write_text(wrong)
    return root


def test_the_task_file_passes_a_good_host_and_fails_bad_ones_in_check_mode(tmp_path):
    """One run (ansible-playbook is the slow part), in check mode, three hosts on this machine,
    the CUDA command pointed at the lab's stand-in:
    - good: 2 GPUs as its report says, no NVSwitch: passes, changes nothing;
    - bad: GPU 1 computes a wrong product, the report counts 3 GPUs and NVSwitches, and this
      machine runs no nvidia-fabricmanager and has no nvidia-smi: fails naming each;
    - misconfigured: a DCGM level of 7 and no driver report: refused before any command runs."""
    common = {
        "ansible_connection": "local",
        "ansible_become": False,
        "ansible_python_interpreter": sys.executable,
        "hf_loader_health_gate_cuda_command": [sys.executable, str(GPU_CHECK)],
        "hf_loader_health_gate_size": 16,
        # No DCGM here: a name that is nowhere on PATH keeps that true on any machine.
        "hf_loader_health_gate_dcgmi_command": "dcgmi-not-installed-here",
    }
    hosts = {
        "good": {"report": {"gpu_count": 2, "nvswitch_count": 0, "nvlink5": False}, "sim": 2, "wrong": ""},
        "bad": {"report": {"gpu_count": 3, "nvswitch_count": 4, "nvlink5": False}, "sim": 2, "wrong": "1\n"},
        "misconfigured": {"report": {}, "sim": 2, "wrong": "", "hf_loader_health_gate_dcgmi_level": 7},
    }
    inventory = {}
    for name, host in hosts.items():
        root = simulated_boot(tmp_path / name, host.pop("sim"), host.pop("wrong"))
        inventory[name] = {**common, **host, "sim_root": str(root)}
    (tmp_path / "inventory.yml").write_text(yaml.safe_dump({"gpu_hosts": {"hosts": inventory}}))
    play = {
        "name": "The health gate",
        "hosts": "gpu_hosts",
        "gather_facts": False,
        "environment": {"LAB_GPU_SIM_ROOT": "{{ sim_root }}"},
        "tasks": [
            {
                "name": "Run the gate",
                "ansible.builtin.include_role": {"name": "hf_loader", "tasks_from": "health_gate.yml"},
                "vars": {"hf_loader_driver_report": "{{ report }}"},
            },
            {
                "name": "Show the outcome",
                "ansible.builtin.debug": {"msg": "GATE={{ hf_loader_health_gate | to_json }}"},
            },
        ],
    }
    (tmp_path / "gate.yml").write_text(yaml.safe_dump([play]))
    env = {
        **os.environ,
        "ANSIBLE_CONFIG": str(ROOT / "ansible.cfg"),
        "ANSIBLE_NOCOLOR": "1",
        "ANSIBLE_LOCALHOST_WARNING": "false",
        "ANSIBLE_CACHE_PLUGIN_CONNECTION": str(tmp_path / "facts"),
        "ANSIBLE_CALLBACK_RESULT_FORMAT": "json",
    }
    done = subprocess.run(
        [str(ANSIBLE_PLAYBOOK), "-i", str(tmp_path / "inventory.yml"), str(tmp_path / "gate.yml"), "--check"],
        capture_output=True,
        text=True,
        env=env,
        cwd=ROOT,
        check=False,
        timeout=300,
    )
    out = done.stdout + done.stderr
    recap = dict(re.findall(r"(?m)^(\w+)\s+:\s+ok=\d+\s+changed=0\s+unreachable=0\s+failed=(\d)", out))
    assert recap == {"good": "0", "bad": "1", "misconfigured": "1"}, out[-4000:]

    shown = re.search(r'"msg": "GATE=(.*)"', out)
    good = json.loads(shown[1].replace('\\"', '"'))
    assert good["passed"] and good["cuda"]["visible_gpus"] == 2 and good["problems"] == []
    assert good["skipped"] == [
        "dcgm: dcgmi-not-installed-here is not installed",
        "fabric: no NVSwitch or NVLink 5 in hf_loader_driver_report",
    ]

    bad = next(line for line in out.splitlines() if "bad failed the health gate before service" in line)
    assert "(1) [cuda] CUDA sees 2 GPU(s), the host has 3 (--expect-gpus)" in bad
    assert "(2) [cuda] GPU 1 (NVIDIA H200, GPU-" in bad and "00000000:2A:00.0): matmul differs from the CPU's" in bad
    assert "(3) [fabric] nvidia-fabricmanager " in bad and " on this NVSwitch/NVLink 5 host" in bad
    assert "(4) [fabric] nvidia-smi cannot run on the host (exit 127)" in bad

    assert "hf_loader_driver_report has no gpu_count" in out
    assert "hf_loader_health_gate_dcgmi_level 7 must be 1, 2, 3 or 4" in out
    cuda_task = out.split("Run the CUDA workload on every GPU", 1)[1].split("TASK [", 1)[0]
    assert "good" in cuda_task and "misconfigured" not in cuda_task
