"""gpu_fleet.common.template renders what ansible.builtin.template's lookup renders, with its
options and template variables, changes none of the task's variables, fails as it fails, and is
the one template lookup the roles use. Each case is a real playbook run with the project's
ansible.cfg; the builtin lookup's output is the expected value."""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path

from conftest import ROOT, ansible_playbook, localhost_inventory

TEMPLATES = {
    # ansible_managed and the template_* variables the builtin lookup adds.
    "managed.j2": "# {{ ansible_managed }}\n{{ template_path | basename }} {{ template_host | length > 0 }}\n",
    # The task's variables, a fact among them, and a nested structure.
    "vars.j2": "{{ who }} {{ nested.list | join(',') }} {{ a_fact }} {{ ansible_facts.get('nothing', 'none') }}\n",
    # A template that tries to change the task's variables.
    "mutates.j2": "{% set _ = nested.list.append(9) %}{% set _ = nested.update({'added': 1}) %}"
    "{{ nested | to_json }}\n",
    # Jinja options of the lookup.
    "markers.j2": "[% who %] {{ not_templated }}\n",
    # An include, found on the lookup's search path.
    "includes.j2": "{% include 'managed.j2' %}",
}

PLAYBOOK = """
- name: Both lookups, one after the other
  hosts: localhost
  gather_facts: false
  vars:
    who: world
    nested: {list: [1, 2]}
  tasks:
    - name: A fact
      ansible.builtin.set_fact:
        a_fact: fact-value
    - name: Render
      ansible.builtin.set_fact:
        rendered: >-
          {{ {LOOKUP: {
                'managed': lookup(LOOKUP, 'managed.j2'),
                'vars': lookup(LOOKUP, 'vars.j2'),
                'mutates': [lookup(LOOKUP, 'mutates.j2'), lookup(LOOKUP, 'mutates.j2')],
                'after': nested,
                'markers': lookup(LOOKUP, 'markers.j2', variable_start_string='[%', variable_end_string='%]'),
                'template_vars': lookup(LOOKUP, 'vars.j2', template_vars={'who': 'given'}),
                'includes': lookup(LOOKUP, 'includes.j2'),
                'two': lookup(LOOKUP, 'managed.j2', 'vars.j2'),
             }} }}
    - name: Write what each rendered
      ansible.builtin.copy:
        content: "{{ rendered | to_json }}"
        dest: "{{ out }}"
        mode: "0600"
"""


def run(tmp_path: Path, playbook: str, *args: str) -> subprocess.CompletedProcess:
    (tmp_path / "templates").mkdir(exist_ok=True)
    for name, text in TEMPLATES.items():
        (tmp_path / "templates" / name).write_text(text)
    path = tmp_path / "play.yml"
    path.write_text(playbook)
    return ansible_playbook(localhost_inventory(tmp_path), str(path), *args, env={"HOME": str(tmp_path)})


def rendered(tmp_path: Path, lookup: str) -> dict:
    out = tmp_path / f"{lookup}.json"
    done = run(tmp_path, PLAYBOOK.replace("LOOKUP", repr(lookup)), "-e", f"out={out}")
    assert done.returncode == 0, done.stdout + done.stderr
    return json.loads(out.read_text())[lookup]


def test_it_renders_what_the_builtin_lookup_renders(tmp_path: Path):
    ours = rendered(tmp_path, "gpu_fleet.common.template")
    builtin = rendered(tmp_path, "ansible.builtin.template")
    assert ours == builtin
    # The cases rendered what they test: the comparison is not of two empty results.
    assert ours["managed"] == "# Ansible managed\nmanaged.j2 True\n"
    assert ours["vars"] == "world 1,2 fact-value none\n"
    assert ours["template_vars"] == "given 1,2 fact-value none\n"
    assert ours["markers"] == "world {{ not_templated }}\n"
    assert ours["includes"] == "# Ansible managed\nincludes.j2 True"  # the including template's path
    assert ours["two"] == f"{ours['managed']},{ours['vars']}"


def test_a_template_changes_none_of_the_tasks_variables(tmp_path: Path):
    ours = rendered(tmp_path, "gpu_fleet.common.template")
    # Each render saw the variables as they were; the task's variables are unchanged after both.
    first, second = ours["mutates"]
    assert first == second == '{"list": [1, 2, 9], "added": 1}\n'
    assert ours["after"] == {"list": [1, 2]}


def test_a_missing_template_fails_as_with_the_builtin_lookup(tmp_path: Path):
    outputs = []
    for lookup in ("gpu_fleet.common.template", "ansible.builtin.template"):
        done = run(
            tmp_path,
            "- hosts: localhost\n  gather_facts: false\n  tasks:\n"
            f"    - ansible.builtin.debug: {{msg: \"{{{{ lookup('{lookup}', 'absent.j2') }}}}\"}}\n",
        )
        assert done.returncode != 0
        outputs.append(re.search(r"the template file absent\.j2 could not be found[^\n']*", done.stdout).group(0))
    assert outputs[0] == outputs[1]


def test_the_roles_render_with_it_only():
    builtin = re.compile(r"lookup\(\s*['\"](?:ansible\.builtin\.)?template['\"]")
    found = [
        f"{path.relative_to(ROOT)}:{number}"
        for top in ("roles", "playbooks")
        for path in sorted((ROOT / top).rglob("*"))
        if path.suffix in (".yml", ".j2") and path.is_file()
        for number, line in enumerate(path.read_text().splitlines(), 1)
        if builtin.search(line)
    ]
    assert found == [], (
        f"ansible.builtin.template's lookup copies every variable: use gpu_fleet.common.template in {found}"
    )
