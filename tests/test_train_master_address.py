"""playbooks/train.yml and the job's master address: the real playbook on this machine.

Node rank 0's address comes from its own facts (default_ipv4) unless hf_loader_master_addr is
set, and train.yml writes it into every host's launcher environment, a systemd EnvironmentFile
of the training unit. The attack: rank 0 reports an address with a newline and a variable of its
choosing (LD_PRELOAD would load its library into the training processes of every host). The
facts reach the play the way a real run's do, from the controller's fact cache. train.yml must
refuse the job on every host before anything is written; the same fleet with an honest address
starts, so the test fails if the facts never reached the play.
"""

from __future__ import annotations

import json
from pathlib import Path

from conftest import ansible_playbook, run_playbook
from test_train_save_folder import launched, write_fleet

PLANTED = "192.0.2.1\nLD_PRELOAD=/tmp/planted.so"


# What a host's setup run leaves in the controller's fact cache, left there by a real run:
# the facts are the host's own word, whatever it reports.
CACHE_FACTS = """
- name: Cache each host's default IPv4 address, as its setup run would
  hosts: all
  gather_facts: false
  tasks:
    - name: Cache the address
      ansible.builtin.set_fact:
        ansible_default_ipv4: {address: "{{ addresses[inventory_hostname] }}"}
        cacheable: true
"""


def train_with_facts(tmp_path: Path, addresses: dict[str, str], **variables) -> tuple[int, str]:
    """train.yml over two ready hosts of one job, each host's default IPv4 address read from the
    controller's fact cache (jsonfile, as ansible.cfg keeps it), nothing gathered."""
    inventory = write_fleet(tmp_path, {name: ("arrow", {}, variables) for name in addresses})
    cache_facts = tmp_path / "cache-facts.yml"
    cache_facts.write_text(CACHE_FACTS)
    env = {"ANSIBLE_GATHERING": "explicit"}
    cached = ansible_playbook(inventory, str(cache_facts), "-e", json.dumps({"addresses": addresses}), env=env)
    assert cached.returncode == 0, cached.stdout + cached.stderr
    return run_playbook(inventory, "train.yml", env=env)


def test_a_master_address_with_lines_of_its_own_in_rank_0s_facts_is_refused_before_any_change(tmp_path):
    rc, out = train_with_facts(tmp_path, {"gpu-01": PLANTED, "gpu-02": "192.0.2.2"})
    message = " ".join(out.split())
    assert rc != 0
    for name in ("gpu-01", "gpu-02"):
        assert f"Not starting training job default on {name}: its master address" in message, out[-3000:]
        assert launched(tmp_path, name) is None, f"train.yml wrote {name}'s launcher environment"
    assert "not an IP address or a DNS name. It comes from the default IPv4 address in the facts of gpu-01" in message


def test_an_operator_set_master_address_of_more_than_one_word_is_refused(tmp_path):
    rc, out = train_with_facts(
        tmp_path, {"gpu-01": "192.0.2.1", "gpu-02": "192.0.2.2"}, hf_loader_master_addr="192.0.2.9 PYTHONPATH=/tmp"
    )
    assert rc != 0
    assert "It comes from hf_loader_master_addr" in " ".join(out.split()), out[-3000:]
    assert launched(tmp_path, "gpu-01") is None and launched(tmp_path, "gpu-02") is None


def test_rank_0s_honest_address_from_its_facts_reaches_every_hosts_launcher(tmp_path):
    _, out = train_with_facts(tmp_path, {"gpu-01": "192.0.2.1", "gpu-02": "192.0.2.2"})
    assert "Not starting training job" not in out, out[-3000:]
    for name in ("gpu-01", "gpu-02"):
        assert "MASTER_ADDR=192.0.2.1\n" in (launched(tmp_path, name) or ""), out[-3000:]
        record = json.loads((tmp_path / name / "etc-hf-loader" / "job-default.json").read_text())
        assert record["master_addr"] == "192.0.2.1"
