"""The roles' shared collection is imported as Ansible loads it: ansible_collections.gpu_fleet.common...."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "collections"))
