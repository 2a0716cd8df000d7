"""Ansible's linear strategy under mitogen, for Molecule (.config/molecule/config.yml).

ansible_mitogen ships this plugin inside its package, under a folder whose path names the venv's
Python version; this file makes it loadable from the project's own path. Mitogen keeps one Python
per host for the whole run, reached over one `docker exec`, and sends each module to it, so a
task costs no `docker exec`, no new Python on the host and no runc start.

Mitogen takes over the docker connection, and the local one only where a task over docker asks for
it (ansible.posix.synchronize runs rsync on the controller through it). The driver's create
and destroy playbooks, plays of the local connection, wait on async tasks that under mitogen's
local connection never finish: they, and the ssh of the unreachable-host test, stay Ansible's own.
"""

from __future__ import annotations

import ansible.collections.list
import ansible_mitogen.loaders
import ansible_mitogen.planner
import ansible_mitogen.strategy
from ansible.playbook.play_context import PlayContext

TAKEN_OVER = ("docker", "local")


def connection_loader_get_with_context(name, *args, **kwargs):
    play_context = args[0] if args and isinstance(args[0], PlayContext) else None
    if name in TAKEN_OVER and play_context is not None and play_context.connection == "docker":
        name = f"mitogen_{name}"
    return ansible_mitogen.loaders.connection_loader__get_with_context(name, *args, **kwargs)


# Mitogen's planner lists every installed collection (the ansible package holds about a hundred,
# each a folder of metadata to read) for each module of a collection it runs, in each worker Ansible
# forks, and keeps the answer in that worker only: 9 % of a mitogen rerun's samples (py-spy,
# docs/benchmarks.md). The folders do not change during a run: listed once, here, in the main process.
COLLECTION_DIRS = [path.decode("utf-8") for path in ansible.collections.list.list_collection_dirs()]


def load_collections(invocation):
    """ansible_mitogen.planner._load_collections, from the list made once."""
    invocation._extra_sys_paths.update(COLLECTION_DIRS)


ansible_mitogen.planner._load_collections = load_collections

# Read when the strategy installs its wrappers, in place of mitogen's own rule (every play whose
# connection it knows, local included).
ansible_mitogen.strategy.wrap_connection_loader__get_with_context = connection_loader_get_with_context
Linear = ansible_mitogen.loaders.strategy_loader.get("linear", class_only=True)


class StrategyModule(ansible_mitogen.strategy.StrategyMixin, Linear):
    pass
