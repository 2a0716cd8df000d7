"""Ansible's linear strategy under mitogen, for Molecule (.config/molecule/config.yml).

ansible_mitogen ships this plugin inside its package, under a folder whose path names the venv's
Python version; this file makes it loadable from the project's own path. Mitogen keeps one Python
per host for the whole run, reached over one `docker exec`, and sends each module to it, so a
task costs no `docker exec`, no new Python on the host and no runc start.

Only the docker connection is handed to mitogen. The driver's create and destroy playbooks run on
the controller with the local connection and wait on async tasks, which under mitogen's local
connection never finish; those, and the ssh of the unreachable-host test, stay Ansible's own.
"""

from __future__ import annotations

import ansible_mitogen.loaders
import ansible_mitogen.strategy

ansible_mitogen.strategy.REDIRECTED_CONNECTION_PLUGINS = ("docker",)
Linear = ansible_mitogen.loaders.strategy_loader.get("linear", class_only=True)


class StrategyModule(ansible_mitogen.strategy.StrategyMixin, Linear):
    pass
