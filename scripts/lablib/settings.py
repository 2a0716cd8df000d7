"""A lab's settings: one frozen object, read once from the LAB_* environment variables that
make and users set (docs/lab.md), and passed to whatever needs them.

Every LAB_* variable is read here and nowhere else: `Lab.from_env()` reads them, and
`Lab.environment()` writes them back for scripts/lab.py when another script runs a lab.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from gpu_sim.build import DEFAULT_VERSIONS

ROOT = Path(__file__).resolve().parent.parent.parent

# field -> its environment variable. Paths are relative to the checkout.
ENV_NAMES = {
    "folder": "LAB_DIR",
    "inventory": "LAB_INVENTORY",
    "image": "LAB_IMAGE",
    "prefix": "LAB_PREFIX",
    "base_port": "LAB_BASE_PORT",
    "volume_size": "LAB_VOLUME_SIZE",
    "dataset": "LAB_DATASET",
    "train_images": "LAB_TRAIN_IMAGES",
    "val_images": "LAB_VAL_IMAGES",
    "shards": "LAB_SHARDS",
    "python": "LAB_PYTHON",
    "driver_versions": "LAB_GPU_DRIVER_VERSIONS",
    "shared": "LAB_SHARED",
    "fact_cache": "LAB_FACT_CACHE",
    "host_reports": "LAB_HOST_REPORTS",
    "hosts": "LAB_HOSTS",
    "seed": "LAB_SEED",
    "gpu": "LAB_GPU",
    "gpu_count": "LAB_GPU_COUNT",
    "gpu_fail": "LAB_GPU_FAIL",
}
# Variables whose empty value means their default (make passes them empty when unset).
EMPTY_IS_DEFAULT = {"seed", "gpu", "gpu_count"}
INTEGERS = {"base_port", "train_images", "val_images", "shards", "hosts", "gpu_count"}
# The production venv (make prod-venv) when there is one, else the loader's (make loader-venv).
PYTHONS = (".venvs/prod/bin/python", ".venvs/loader/bin/python")


class LabSettingsError(ValueError):
    """A LAB_* variable that cannot be used; the message names it and what it takes."""


@dataclass(frozen=True)
class Lab:
    """One lab's settings. Another lab beside the default one (a rehearsal's, a benchmark's)
    has its own folder, host names, ports, inventory, fact cache and host reports: `beside()`."""

    folder: str = "lab"  # state.json, the SSH key, the volumes, the cache build (LAB_DIR)
    inventory: str = "inventory/lab/hosts.yml"  # the inventory `up` writes
    image: str = "local/debian-systemd:bookworm"  # the hosts' image (`make engine`)
    prefix: str = "lab-gpu-"  # host names PREFIX01.. and the network PREFIXnet
    base_port: int = 2200  # host i's sshd on 127.0.0.1:BASE_PORT+i
    volume_size: str = "1536M"  # each host's sparse dataset volume
    # The cache on the volumes: a few hundred small JPEGs, ImageNet-shaped, in `shards` parquet
    # shards a split (the seed benchmark wants many files, as the real cache is).
    dataset: str = "ILSVRC/imagenet-1k"
    train_images: int = 384
    val_images: int = 96
    shards: int = 2
    python: str | None = None  # the venv that builds the cache (None: PYTHONS, the first present)
    driver_versions: str = " ".join(DEFAULT_VERSIONS)  # the simulated NVIDIA repository's drivers
    shared: str = ""  # FOLDER:PATH, the lab's folder FOLDER bind-mounted at PATH in every host
    fact_cache: str = ".cache/facts"  # Ansible fact caches to clear for a new host, ':'-separated
    host_reports: str = "reports/hosts"  # the site's readiness summaries, one a host
    # `lab.py up`'s defaults (its options override them).
    hosts: int = 3
    seed: str = "full"
    gpu: str = "none"
    gpu_count: int = 2
    gpu_fail: str = ""  # HOST[,HOST]

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, **defaults) -> Lab:
        """The settings the LAB_* variables give; `defaults` replace the class's own for the
        variables that are not set (a benchmark's 10 hosts)."""
        environ = os.environ if environ is None else environ
        values = dict(defaults)
        for field, name in ENV_NAMES.items():
            value = environ.get(name)
            if value is None or (value == "" and field in EMPTY_IS_DEFAULT):
                continue
            if field in INTEGERS:
                try:
                    values[field] = int(value)
                except ValueError:
                    raise LabSettingsError(f"{name} must be a whole number, not {value!r}") from None
            else:
                values[field] = value
        return cls(**values)

    def beside(self, folder: str, prefix: str, base_port: int, **changes) -> Lab:
        """A lab of its own under `folder` (relative to the checkout), sharing nothing with the
        others: host names, ports, inventory, fact cache and host reports; full volumes of the
        two-shard cache unless `changes` say otherwise (gpu, seed, shared...)."""
        own = dict(
            folder=folder,
            inventory=f"{folder}/inventory/hosts.yml",
            prefix=prefix,
            base_port=base_port,
            fact_cache=f"{folder}/facts",
            host_reports=f"{folder}/reports/hosts",
            seed="full",
            shards=2,
        )
        return dataclasses.replace(self, **{**own, **changes})

    def environment(self, base: Mapping[str, str] | None = None) -> dict[str, str]:
        """The environment (os.environ's, or `base`) with these settings as LAB_* variables: what
        makes scripts/lab.py, run as a command, run this lab."""
        env = dict(os.environ if base is None else base)
        for field, name in ENV_NAMES.items():
            value = getattr(self, field)
            if value is not None:
                env[name] = str(value)
        return env

    # --- paths ------------------------------------------------------------------------

    @property
    def dir(self) -> Path:
        return ROOT / self.folder

    @property
    def state_file(self) -> Path:
        return self.dir / "state.json"

    @property
    def ssh_dir(self) -> Path:
        return self.dir / "ssh"

    @property
    def key(self) -> Path:
        return self.ssh_dir / "id_ed25519"

    @property
    def known_hosts(self) -> Path:
        return self.ssh_dir / "known_hosts"

    @property
    def volumes(self) -> Path:
        return self.dir / "volumes"

    @property
    def cache_build(self) -> Path:
        return self.dir / "cache"

    @property
    def gpu_dir(self) -> Path:
        """The simulated NVIDIA repository (scripts/gpu_sim), built once a lab."""
        return self.dir / "gpu-sim"

    @property
    def inventory_file(self) -> Path:
        return ROOT / self.inventory

    @property
    def python_path(self) -> Path:
        if self.python is not None:
            return ROOT / self.python
        return ROOT / next((p for p in PYTHONS if (ROOT / p).exists()), PYTHONS[-1])

    @property
    def fact_caches(self) -> list[Path]:
        return [ROOT / d for d in self.fact_cache.split(":") if d]

    @property
    def host_reports_dir(self) -> Path:
        return ROOT / self.host_reports

    @property
    def network(self) -> str:
        """The lab's own bridge network."""
        return f"{self.prefix}net"

    def host_names(self, n: int) -> list[str]:
        return [f"{self.prefix}{i:02d}" for i in range(1, n + 1)]

    def gpu_fail_hosts(self) -> tuple[str, ...]:
        return tuple(sorted({name.strip() for name in self.gpu_fail.split(",") if name.strip()}))
