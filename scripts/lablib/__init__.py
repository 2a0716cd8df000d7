"""The lab library: what every lab script shares (docs/lab.md, "The lab's code").

- `Lab` (settings.py): a lab's settings, read once from the LAB_* environment variables
  (`Lab.from_env()`), or derived for a lab of its own beside the default one (`Lab.beside()`),
  passed to whatever needs them; `Lab.environment()` hands them to scripts/lab.py.
- `Logger` (log.py): the one log function, `log = Logger("slurm-lab")`; `log.die()` for errors.
- stack.py: each lab's inventory folder, the light stack its hosts install, the CPU its
  containers used, running scripts/lab.py for a lab, waiting for a container's systemd.
- image.py: the rollout labs' host image, the light stack's venv baked in once per machine.

The hosts themselves are made by scripts/lab.py. Python 3.11 standard library only.
"""

from __future__ import annotations

from .image import baked_host_image
from .log import Logger
from .settings import ROOT, Lab
from .stack import BIN, container_cpu_seconds, lab_inventory, light_stack, run_lab, wait_systemd

__all__ = [
    "BIN",
    "ROOT",
    "Lab",
    "Logger",
    "baked_host_image",
    "container_cpu_seconds",
    "lab_inventory",
    "light_stack",
    "run_lab",
    "wait_systemd",
]
