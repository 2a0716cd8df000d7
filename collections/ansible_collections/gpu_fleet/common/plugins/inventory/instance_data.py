# Installed by roles/fleet_pull (and the user-data of playbooks/pull-user-data.yml) to
# <fleet_pull_config_dir>/plugins/inventory/, outside the checkout: ansible-pull reads the
# inventory before it has fetched the repository, so the plugin cannot live in it.
"""An inventory of one host, the machine itself, built from cloud-init's instance data."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field

from ansible.errors import AnsibleParserError
from ansible.plugins.inventory import BaseInventoryPlugin

DOCUMENTATION = r"""
name: instance_data
short_description: This machine, named and described by cloud-init's instance data
description:
  - One host, named by cloud-init's C(v1.local_hostname) (the machine's hostname, which
    ansible-pull limits its run to), in the groups of O(groups), reached with the local
    connection.
  - Host variables come from O(vars_file) (written at launch from the user-data), then from
    the instance's tags whose key starts with O(tag_prefix), then O(host_vars) and
    C(ansible_connection=local), which always win.
  - Tags are not trusted (anyone allowed to tag the instance sets them). A tag may set only a
    variable of O(tag_allowlist), with a value its pattern matches whole; C(<prefix>groups) may
    add only groups of O(tag_groups). Any other tag under the prefix fails the inventory with
    every refused tag named, so that the run fails and the host is held; none is dropped
    silently. Ansible's own variables (C(ansible_*)), pull mode's settings (C(fleet_pull_*)),
    paths, commands, credentials, accounts and the hold are never taken from tags, even when listed.
  - Tags are read where cloud-init puts EC2's instance metadata tags,
    C(ds.meta_data.tags.instance) (cloud-init 22.2 and later, with tags in instance metadata
    enabled), or C(ds.meta_data.tags) when that is a flat mapping (the lab's NoCloud meta-data
    uses EC2's shape).
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
    description: A YAML mapping of host variables written at launch; missing is allowed.
    type: path
    default: ""
  tag_prefix:
    description: Tags whose key starts with this are read as C(<prefix><variable>).
    type: str
    default: "gpu-fleet:"
  tag_allowlist:
    description: The variables a tag may set, each with the pattern its whole value must match.
    type: dict
    default: {}
  tag_groups:
    description: The groups the C(<prefix>groups) tag may add (comma-separated in the tag).
    type: list
    elements: str
    default: []
  groups:
    description: The groups the host is in (the site's plays target gpu_hosts).
    type: list
    elements: str
    default: [gpu_hosts]
  host_vars:
    description: Fixed host variables, e.g. the Python the modules run with; they always win.
    type: dict
    default: {}
"""

NAME_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
HOSTNAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9.-]{0,252}$")
# Never from a tag, even when an allowlist names it: Ansible's own settings (connection,
# become, interpreter), pull mode's (what code runs), and values that are paths, commands,
# credentials or accounts by name (the hold file among them; fleet_cache_root and
# dataset_volume_mount_point are where root mounts and chowns, fleet_training_user whom
# training runs as).
NEVER_FROM_TAGS = re.compile(
    r"^(ansible_|fleet_pull_)|_(file|files|dir|dirs|path|paths|root|point|exe|executable|command|cmd|args"
    r"|interpreter|url|key|token|password|secret|hold|user|group|owner|mode)$"
)
MAGIC_NAMES = frozenset(
    {
        "environment", "group_names", "groups", "hostvars", "inventory_dir", "inventory_file", "inventory_hostname",
        "inventory_hostname_short", "omit", "play_hosts", "playbook_dir", "role_name", "role_path", "vars",
    }
)  # fmt: skip
# EC2 tag values are at most 256 characters.
TAG_VALUE_MAX = 256


class InstanceDataError(ValueError):
    """The instance data or the vars file cannot describe this host; the message says how to fix it."""


class TagsRefused(InstanceDataError):
    """Tags under the prefix that may not set what they name; every one is listed."""


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


def never_from_tags(name: str, fixed_vars: dict) -> str:
    """Why `name` may never come from a tag ("" when it may, if allowlisted)."""
    if name.startswith("ansible_"):
        return "Ansible's own settings are fixed by the image, never taken from tags"
    if name in fixed_vars:
        return "fixed by the image, never taken from tags"
    if name.startswith("fleet_pull_"):
        return "what code runs comes from the launch (user-data or image), never from tags"
    if name in MAGIC_NAMES:
        return "a name Ansible reserves"
    if NEVER_FROM_TAGS.search(name):
        return "paths, commands, credentials, accounts and the hold are never taken from tags"
    return ""


def compile_allowlist(allowlist: dict | None, fixed_vars: dict) -> dict[str, re.Pattern]:
    """The allowlist's patterns; an entry that could hand a tag control is a configuration error."""
    patterns = {}
    for name, pattern in (allowlist or {}).items():
        name = str(name)
        why = never_from_tags(name, fixed_vars) if NAME_RE.match(name) else "not a variable name"
        if why:
            raise InstanceDataError(
                f"fleet_pull_tag_allowlist lists {name!r}: {why}; remove it from the allowlist "
                "(set it in fleet_pull_host_vars at launch instead)"
            )
        try:
            patterns[name] = re.compile(str(pattern))
        except re.error as error:
            raise InstanceDataError(
                f"fleet_pull_tag_allowlist[{name!r}]: {pattern!r} is not a regular expression ({error})"
            ) from error
    return patterns


def shown(text: str, limit: int = 64) -> str:
    """A tag's key or value as the hold shows it: quoted, escaped, cut short (tags are anyone's text)."""
    return repr(text if len(text) <= limit else text[:limit] + "...")


def tag_variables(
    data: dict, tag_prefix: str, allowlist: dict[str, re.Pattern], tag_groups: list[str], fixed_vars: dict
) -> tuple[dict, list[str]]:
    """The variables and groups the tags may set; TagsRefused naming every tag that may not."""
    variables, groups, refused = {}, [], {}
    for key, value in sorted(instance_tags(data).items()):
        if not key.startswith(tag_prefix):
            continue
        name = key[len(tag_prefix) :]
        if name == "groups":
            for group in (g.strip() for g in value.split(",")):
                if group in tag_groups:
                    groups.append(group)
                elif group:
                    why = f"a group fleet_pull_tag_groups does not list ({', '.join(tag_groups) or 'none'})"
                    refused.setdefault(why, []).append(f"{shown(key)}={shown(group)}")
            continue
        why = "not a variable name" if not NAME_RE.match(name) else never_from_tags(name, fixed_vars)
        if not why and name not in allowlist:
            why = "not in fleet_pull_tag_allowlist"
        if why:
            refused.setdefault(why, []).append(shown(key))
        elif len(value) > TAG_VALUE_MAX or not allowlist[name].fullmatch(value):
            refused.setdefault(f"does not match {allowlist[name].pattern!r}", []).append(f"{shown(key)}={shown(value)}")
        else:
            variables[name] = value
    if refused:
        raise TagsRefused(
            "instance tags refused: "
            + "; ".join(f"{', '.join(keys)} ({why})" for why, keys in refused.items())
            + f". Tags may set only {', '.join(sorted(allowlist)) or 'no variable'} (fleet_pull_tag_allowlist) and add "
            "only the groups of fleet_pull_tag_groups. Remove these tags from the instance, or list a data variable "
            "in fleet_pull_tag_allowlist at launch (docs/pull.md, who may change what); the host stays held until then"
        )
    return variables, groups


def host_from_instance_data(
    data: dict,
    file_vars: dict | None,
    tag_prefix: str,
    groups: list[str],
    fixed_vars: dict | None = None,
    tag_allowlist: dict | None = None,
    tag_groups: list[str] | None = None,
) -> Host:
    """Decide the host's name, groups and variables (pure: tested without cloud-init)."""
    fixed = dict(fixed_vars or {})
    v1 = data.get("v1") or {}
    name = v1.get("local_hostname") or v1.get("local-hostname") or ""
    if not isinstance(name, str) or not HOSTNAME_RE.match(name):
        raise InstanceDataError(
            f"instance data has no usable v1.local_hostname ({name!r}): give the instance a hostname "
            "(NoCloud: local-hostname in meta-data) so that ansible-pull's run is limited to it"
        )
    for key in file_vars or {}:
        if not NAME_RE.match(str(key)):
            raise InstanceDataError(f"vars file: {key!r} is not a variable name (letters, digits, _)")
    allowlist = compile_allowlist(tag_allowlist, fixed)
    from_tags, tag_added = tag_variables(data, tag_prefix, allowlist, list(tag_groups or []), fixed)
    wanted = list(groups) + tag_added
    for group in wanted:
        if not NAME_RE.match(group):
            raise InstanceDataError(f"group {group!r} (groups or fleet_pull_tag_groups) is not a group name")
    variables = {**(file_vars or {}), **from_tags, **fixed, "ansible_connection": "local"}
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
        if not isinstance(data, dict):
            raise AnsibleParserError(f"{source} holds no JSON object: cloud-init writes it at boot")
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
                data,
                file_vars,
                self.get_option("tag_prefix"),
                self.get_option("groups"),
                self.get_option("host_vars"),
                self.get_option("tag_allowlist"),
                self.get_option("tag_groups"),
            )
        except InstanceDataError as error:
            raise AnsibleParserError(f"{path}: {error}") from error
        for group in host.groups:
            self.inventory.add_group(group)
            self.inventory.add_host(host.name, group=group)
        self.inventory.add_host(host.name)
        for key, value in host.variables.items():
            self.inventory.set_variable(host.name, key, value)
