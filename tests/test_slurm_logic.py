"""Slurm's version rule and the node's slurm.conf and gres.conf lines (gpu_fleet.common's slurm filters),
from facts captured with Ansible's setup module on a Debian 12 VM, a hand-written two-socket HGX host,
the GPU count of nvidia_driver's captured report on an H200 VM, and `apt-cache policy slurmd` captured
on Debian 12. The controller's slurm.conf and gres.conf templates are rendered with them.
"""

from __future__ import annotations

import json
from pathlib import Path

import jinja2
import pytest
import yaml
from ansible_collections.gpu_fleet.common.plugins.filter.slurm import FilterModule
from ansible_collections.gpu_fleet.common.plugins.module_utils.slurm.node_conf import node_conf
from ansible_collections.gpu_fleet.common.plugins.module_utils.slurm.versions import (
    debian_versions,
    version,
    version_problems,
)

ROOT = Path(__file__).resolve().parent.parent
FIXTURES = ROOT / "tests" / "fixtures"
VM_FACTS = json.loads((FIXTURES / "slurm" / "captured_debian12-vm-2cpu_setup-facts.json").read_text())
HGX_FACTS = json.loads((FIXTURES / "slurm" / "handwritten_hgx-h100-2socket_setup-facts.json").read_text())
H200_REPORT = json.loads(
    (FIXTURES / "nvidia" / "captured_h200-vm_580.159.04_preinstalled_nvidia_driver.fact").read_text()
)
CONTROLLER_TEMPLATES = ROOT / "roles" / "slurm_controller" / "templates"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("slurm 22.05.8", (22, 5, 8)),
        ("22.05.8-4+deb12u3", (22, 5, 8)),
        ("24.11.5-1", (24, 11, 5)),
        ("1:23.11.4-2", (23, 11, 4)),
        ("slurm-wlm 24.05.0", (24, 5, 0)),
        ("25.05", (25, 5, 0)),
    ],
)
def test_versions_are_read_as_numbers(text, expected):
    assert version(text) == expected


@pytest.mark.parametrize("text", ["", "slurm", "twenty-two", "22", "v22.05.8"])
def test_a_text_that_is_no_version_is_refused(text):
    with pytest.raises(ValueError, match="not a Slurm version"):
        version(text)


def test_versions_compare_as_numbers_not_strings():
    # As strings "22.05.10" < "22.05.8": a string comparison would let this newer slurmd join.
    assert "22.05.10" < "22.05.8"
    problems = version_problems("22.05.10", "22.05.8")
    assert len(problems) == 1 and "newer than the slurmctld" in problems[0]
    assert version_problems("22.05.8", "22.05.10") == []


@pytest.mark.parametrize(
    ("node", "controller"),
    [
        ("22.05.8", "22.05.8"),
        ("21.08.8", "22.05.8"),
        ("20.11.9", "22.05.8"),
        ("23.11.4", "24.11.5"),  # two releases older: 24.11 takes 24.05 and 23.11
        ("24.05.1", "24.11.5"),
        ("24.05.1", "25.05.0"),
        ("22.05.8-4+deb12u3", "slurm 22.05.8"),
    ],
)
def test_supported_pairs_pass(node, controller):
    assert version_problems(node, controller) == []


@pytest.mark.parametrize(
    ("node", "controller", "words"),
    [
        ("22.05.8", "24.11.5", "4 major releases ahead"),  # Debian 12 nodes, a Debian 13 controller
        ("23.02.7", "24.11.5", "3 major releases ahead"),
        ("20.02.7", "22.05.8", "3 major releases ahead"),
        ("24.05.1", "25.11.0", "3 major releases ahead"),
        ("24.11.5", "22.05.8", "newer than the slurmctld"),  # Debian 13 nodes, a Debian 12 controller
        ("22.05.9", "22.05.8", "newer than the slurmctld"),
    ],
)
def test_unsupported_pairs_are_refused_with_the_remedy(node, controller, words):
    problems = version_problems(node, controller)
    assert len(problems) == 1 and words in problems[0], problems
    assert "one Slurm version" in problems[0] or "Upgrade the controller first" in problems[0]


def test_a_release_slurm_never_made_is_refused():
    problems = version_problems("24.02.1", "24.11.5")
    assert problems and "not a Slurm major release" in problems[0]


def test_debian_versions_from_captured_apt_cache_policy():
    text = (FIXTURES / "slurm" / "captured_debian12_apt-cache-policy_slurmd.txt").read_text()
    found = debian_versions(text)
    assert found["installed"] == "" and version(found["candidate"])[:2] == (22, 5)
    installed = "slurmd:\n  Installed: 22.05.8-4+deb12u2\n  Candidate: 22.05.8-4+deb12u3\n"
    assert debian_versions(installed) == {"installed": "22.05.8-4+deb12u2", "candidate": "22.05.8-4+deb12u3"}
    assert debian_versions("") == {"installed": "", "candidate": ""}


def test_the_vm_node_from_captured_facts_and_the_captured_gpu_count():
    conf = node_conf(VM_FACTS, H200_REPORT["gpu_count"], address="192.0.2.2")
    assert conf["line"] == (
        "NodeName=vm NodeAddr=192.0.2.2 CPUs=2 Sockets=1 CoresPerSocket=2 ThreadsPerCore=1 "
        f"RealMemory={VM_FACTS['memtotal_mb'] - 1024} Gres=gpu:1 Feature=x86_64,debian12,gpu State=UNKNOWN"
    )
    assert conf["gres"] == ["NodeName=vm Name=gpu File=/dev/nvidia0"]


def test_an_eight_gpu_hgx_node():
    conf = node_conf(HGX_FACTS, 8, name="gpu-node-017", address="10.0.4.17", features=["h100", "ib"])
    assert "CPUs=224 Sockets=2 CoresPerSocket=56 ThreadsPerCore=2 RealMemory=2062913 Gres=gpu:8" in conf["line"]
    assert "Feature=x86_64,ubuntu22,gpu,h100,ib" in conf["line"]
    assert conf["gres"] == ["NodeName=gpu-node-017 Name=gpu File=/dev/nvidia[0-7]"]


def test_a_node_without_gpus_has_no_gres():
    conf = node_conf(VM_FACTS, 0)
    assert "Gres=" not in conf["line"] and "gpu" not in conf["features"] and conf["gres"] == []


def test_facts_whose_topology_disagrees_give_the_cpu_count_alone():
    # A VM whose sockets x cores x threads is not its vCPU count: slurmd would register fewer
    # resources than the line says and Slurm would drain the node.
    facts = dict(HGX_FACTS, processor_vcpus=96)
    line = node_conf(facts, 8)["line"]
    assert "CPUs=96 RealMemory" in line and "Sockets=" not in line


@pytest.mark.parametrize(
    ("facts", "kwargs", "words"),
    [
        (dict(VM_FACTS, memtotal_mb=900), {}, "not more than the reserve"),
        ({k: v for k, v in VM_FACTS.items() if k != "processor_vcpus"}, {}, "lack processor_vcpus"),
        (VM_FACTS, {"name": "node 1"}, "cannot be a Slurm NodeName"),
        (VM_FACTS, {"features": ["gpu,ib"]}, "cannot be a Slurm feature"),  # a comma would add a feature
        (VM_FACTS, {"features": ["a=b State=DOWN"]}, "cannot be a Slurm feature"),  # a word more on the line
        # The node's own facts give its address: a host that lies in them must not write the controller's config.
        (VM_FACTS, {"address": "192.0.2.9\nPrologSlurmctld=/tmp/planted"}, "cannot be .* NodeAddr"),
        (VM_FACTS, {"address": "192.0.2.9 Include=/tmp/planted.conf"}, "cannot be .* NodeAddr"),
    ],
)
def test_facts_or_settings_that_cannot_describe_a_node_are_refused(facts, kwargs, words):
    with pytest.raises(ValueError, match=words):
        node_conf(facts, 1, **kwargs)


@pytest.mark.parametrize("address", ["192.0.2.2", "2001:db8::7", "gpu-node-017.cluster.example"])
def test_an_ip_address_or_a_dns_name_is_a_node_address(address):
    assert f"NodeAddr={address} " in node_conf(VM_FACTS, 0, address=address)["line"]


def test_a_negative_gpu_count_is_refused():
    with pytest.raises(ValueError, match="0 or more"):
        node_conf(VM_FACTS, -1)


def render(template: str, nodes: dict[str, dict]) -> str:
    env = jinja2.Environment(undefined=jinja2.StrictUndefined, keep_trailing_newline=True, trim_blocks=True)
    defaults = yaml.safe_load((ROOT / "roles" / "slurm_controller" / "defaults" / "main.yml").read_text())
    values = {
        **defaults,
        "slurm_controller_name": "ctl01",
        "slurm_controller_address": "10.0.0.2",
        "ansible_managed": "managed",
        "groups": {"slurm_nodes": list(nodes)},
        "hostvars": {host: {"slurm_node_conf": conf} for host, conf in nodes.items()},
    }
    return env.from_string((CONTROLLER_TEMPLATES / template).read_text()).render(**values)


def test_the_controller_renders_slurm_conf_and_gres_conf_for_the_group():
    nodes = {
        "vm": node_conf(VM_FACTS, 0, address="192.0.2.2"),
        "hgx": node_conf(HGX_FACTS, 8, address="10.0.4.17"),
    }
    slurm_conf = render("slurm.conf.j2", nodes)
    lines = slurm_conf.splitlines()
    assert "SlurmctldHost=ctl01(10.0.0.2)" in lines and "SlurmctldParameters=enable_configless" in lines
    assert nodes["vm"]["line"] in lines and nodes["hgx"]["line"] in lines
    for wanted in (
        "GresTypes=gpu",
        "HealthCheckProgram=/usr/local/sbin/gpu-fleet-slurm-health",
        "Prolog=/usr/local/sbin/gpu-fleet-slurm-prolog",
        "SchedulerParameters=nohold_on_prolog_fail",
        "AccountingStorageType=accounting_storage/none",
        "PartitionName=gpu Nodes=ALL Default=YES MaxTime=INFINITE State=UP",
    ):
        assert wanted in lines, wanted
    gres_conf = render("gres.conf.j2", nodes)
    assert [line for line in gres_conf.splitlines() if not line.startswith("#")] == nodes["hgx"]["gres"]


def test_the_filters_are_registered_under_their_prefix():
    assert set(FilterModule().filters()) == {"slurm_version_problems", "slurm_debian_versions", "slurm_node_conf"}
