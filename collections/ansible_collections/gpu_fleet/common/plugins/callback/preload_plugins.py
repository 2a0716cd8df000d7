"""gpu_fleet.common.preload_plugins: the collection's controller-side plugins imported once, in
Ansible's main process, before it forks a worker for each task of each host.

Why: a worker that templates any gpu_fleet.common filter makes Ansible import every filter file of
the collection (Jinja2Loader.get_with_context walks them all, since one file holds many filters),
and with them their module_utils, which the collection loader compiles from source each time
(_AnsibleCollectionPkgLoaderBase.get_code keeps no bytecode). A worker forked after this import
inherits the modules instead. Measured on a ten-host no-change rerun of site.yml (py-spy over the
workers): a third of the workers' CPU went to that import, and the preload cut the controller's
CPU by a quarter (docs/benchmarks.md).
"""

from __future__ import annotations

import importlib
import pkgutil

from ansible.plugins.callback import CallbackBase
from ansible.utils.display import Display

DOCUMENTATION = r"""
name: preload_plugins
type: aggregate
short_description: Imports this collection's controller-side plugins once, before the workers fork
description:
  - At the start of each playbook, imports every action, filter, lookup and test plugin of
    gpu_fleet.common (and the module_utils they import) in the main process, so that the worker
    processes Ansible forks for each task inherit them instead of importing them again.
  - Changes no result and no output; a plugin that fails to import is left to the worker that
    needs it, which reports the error as it would without this callback.
requirements:
  - enabled in C(callbacks_enabled) (ansible.cfg, Molecule's configuration)
"""

# The plugin kinds a worker runs on the controller. Modules run on the hosts; the inventory plugin
# runs in the main process already.
CONTROLLER_KINDS = ("action", "filter", "lookup", "test")
# ansible_collections.gpu_fleet.common.plugins
PLUGINS_PACKAGE = __name__.rsplit(".", 2)[0]

display = Display()


def preload(package: str = PLUGINS_PACKAGE, kinds: tuple[str, ...] = CONTROLLER_KINDS) -> list[str]:
    """Import every plugin module of these kinds under `package`; return the names imported."""
    imported = []
    for kind in kinds:
        try:
            kind_package = importlib.import_module(f"{package}.{kind}")
        except ImportError:  # the collection has no plugin of this kind
            continue
        for module in pkgutil.iter_modules(kind_package.__path__, prefix=f"{kind_package.__name__}."):
            try:
                importlib.import_module(module.name)
            except Exception as error:  # the worker that loads it reports it
                display.vvv(f"preload_plugins: {module.name} left to the workers: {error}")
                continue
            imported.append(module.name)
    return imported


class CallbackModule(CallbackBase):
    CALLBACK_VERSION = 2.0
    CALLBACK_TYPE = "aggregate"
    CALLBACK_NAME = "gpu_fleet.common.preload_plugins"
    CALLBACK_NEEDS_ENABLED = True

    def v2_playbook_on_start(self, playbook):
        imported = preload()
        display.vvv(
            f"preload_plugins: {len(imported)} plugin modules of {PLUGINS_PACKAGE} imported before the workers fork"
        )
