# Installed by roles/fleet_pull (and the user-data of playbooks/pull-user-data.yml) to
# <fleet_pull_config_dir>/plugins/inventory/, outside the checkout: ansible-pull reads the
# inventory before it has fetched the repository, so the plugin cannot live in it.
"""An inventory of one host, the machine itself, built from cloud-init's instance data."""

from __future__ import annotations

DOCUMENTATION = r"""
name: instance_data
short_description: This machine, named and described by cloud-init's instance data
description:
  - One host, named by cloud-init's C(v1.local_hostname) (the machine's hostname, which
    ansible-pull limits its run to), in the groups of O(groups), reached with the local
    connection.
  - Host variables come from O(vars_file) (written at boot from the user-data), then from the
    instance's tags whose key starts with O(tag_prefix) (C(gpu-fleet:dataset_volume_source)),
    which win. Tags are read where cloud-init puts EC2's instance metadata tags,
    C(ds.meta_data.tags.instance) (cloud-init 22.2 and later, with tags in instance metadata
    enabled), or C(ds.meta_data.tags) when that is a flat mapping (the lab's NoCloud meta-data
    uses EC2's shape). The tag C(<prefix>groups) adds groups (comma-separated).
  - The file name must end in C(instance_data.yml) or C(instance_data.yaml).
options:
  plugin:
    description: The name of this plugin.
    required: true
    choices: [instance_data]
  instance_data_file:
    description: cloud-init's instance data (world-readable, sensitive keys redacted).
    type: path
    default: /run/cloud-init/instance-data.json
  vars_file:
    description: A YAML mapping of host variables written at boot; missing is allowed.
    type: path
    default: ""
  tag_prefix:
    description: Tags whose key starts with this become host variables (the rest of the key).
    type: str
    default: "gpu-fleet:"
  groups:
    description: The groups the host is in (the site's plays target gpu_hosts).
    type: list
    elements: str
    default: [gpu_hosts]
  host_vars:
    description: Fixed host variables, e.g. the Python the modules run with.
    type: dict
    default: {}
"""

import json
import re
from dataclasses import dataclass, field

from ansible.errors import AnsibleParserError
from ansible.plugins.inventory import BaseInventoryPlugin

NAME_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
HOSTNAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9.-]{0,252}$")


class InstanceDataError(ValueError):
    """The instance data or the vars file cannot describe this host; the message says how to fix it."""


@dataclass
class Host:
    name: str
    groups: list[str]
    variables: dict = field(default_factory=dict)


def instance_tags(data: dict) -> dict[str, str]:
    """The instance's tags, as cloud-init stores them in instance-data.json."""
    meta = (data.get("ds") or {}).get("meta_data") or {}
    tags = meta.get("tags") if isinstance(meta, dict) else None
    if not isinstance(tags, dict):
        return {}
    if isinstance(tags.get("instance"), dict):
        tags = tags["instance"]
    return {str(key): value for key, value in tags.items() if isinstance(value, str)}


def host_from_instance_data(
    data: dict, file_vars: dict | None, tag_prefix: str, groups: list[str], fixed_vars: dict | None = None
) -> Host:
    """Decide the host's name, groups and variables (pure: tested without cloud-init)."""
    v1 = data.get("v1") or {}
    name = v1.get("local_hostname") or v1.get("local-hostname") or ""
    if not HOSTNAME_RE.match(name):
        raise InstanceDataError(
            f"instance data has no usable v1.local_hostname ({name!r}): give the instance a hostname "
            "(NoCloud: local-hostname in meta-data) so that ansible-pull's run is limited to it"
        )
    variables = dict(fixed_vars or {})
    for key, value in (file_vars or {}).items():
        if not NAME_RE.match(str(key)):
            raise InstanceDataError(f"vars file: {key!r} is not a variable name (letters, digits, _)")
        variables[key] = value
    wanted = list(groups)
    for key, value in sorted(instance_tags(data).items()):
        if not key.startswith(tag_prefix):
            continue
        var = key[len(tag_prefix) :]
        if var == "groups":
            wanted += [g.strip() for g in value.split(",") if g.strip()]
            continue
        if not NAME_RE.match(var):
            raise InstanceDataError(
                f"tag {key!r}: {var!r} is not a variable name; tag keys are {tag_prefix}<variable> "
                "with letters, digits and _"
            )
        variables[var] = value
    for group in wanted:
        if not NAME_RE.match(group):
            raise InstanceDataError(f"group {group!r} (groups or the {tag_prefix}groups tag) is not a group name")
    variables.setdefault("ansible_connection", "local")
    variables.update(
        instance_id=v1.get("instance_id") or v1.get("instance-id") or "",
        instance_cloud=v1.get("cloud_name") or "",
        instance_region=v1.get("region") or "",
        instance_zone=v1.get("availability_zone") or "",
    )
    return Host(name=name, groups=list(dict.fromkeys(wanted)), variables=variables)


class InventoryModule(BaseInventoryPlugin):
    NAME = "instance_data"

    def verify_file(self, path):
        return super().verify_file(path) and path.endswith(("instance_data.yml", "instance_data.yaml"))

    def parse(self, inventory, loader, path, cache=True):
        super().parse(inventory, loader, path, cache)
        self._read_config_data(path)
        source = self.get_option("instance_data_file")
        try:
            with open(source, encoding="utf-8") as handle:
                data = json.load(handle)
        except (OSError, ValueError) as error:
            raise AnsibleParserError(
                f"{source}: {error}; cloud-init writes it at boot (is cloud-init installed and has it run? "
                "`cloud-init status --long`)"
            ) from error
        file_vars = {}
        vars_file = self.get_option("vars_file")
        if vars_file:
            try:
                file_vars = loader.load_from_file(vars_file) or {}
            except Exception as error:  # a missing file is allowed, a broken one is not
                if "Could not find or access" not in str(error):
                    raise AnsibleParserError(f"{vars_file}: {error}") from error
            if not isinstance(file_vars, dict):
                raise AnsibleParserError(f"{vars_file} must hold a YAML mapping of host variables")
        try:
            host = host_from_instance_data(
                data, file_vars, self.get_option("tag_prefix"), self.get_option("groups"), self.get_option("host_vars")
            )
        except InstanceDataError as error:
            raise AnsibleParserError(f"{path}: {error}") from error
        for group in host.groups:
            self.inventory.add_group(group)
            self.inventory.add_host(host.name, group=group)
        self.inventory.add_host(host.name)
        for key, value in host.variables.items():
            self.inventory.set_variable(host.name, key, value)
