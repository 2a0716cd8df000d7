"""The roles' shared collection is imported as Ansible loads it: ansible_collections.gpu_fleet.common....

Fixtures shared by several test files live here too.
"""

import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import jinja2
import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "collections"))

from ansible_collections.gpu_fleet.common.plugins.module_utils.nvidia_driver.packages import apt_pin_version  # noqa: E402

NVIDIA_DRIVER = ROOT / "roles" / "nvidia_driver"
ANSIBLE_PLAYBOOK = Path(sys.executable).parent / "ansible-playbook"


def ansible_playbook(
    inventory: Path,
    name: str,
    *args: str,
    env: dict[str, str] | None = None,
    timeout: float | None = None,
    binary: Path = ANSIBLE_PLAYBOOK,
) -> subprocess.CompletedProcess:
    """playbooks/<name> (or an absolute path: site.yml) run for real on `inventory` with the
    project's ansible.cfg, facts cached beside the inventory (never in the checkout's own cache);
    `env` adds to the environment, `binary` is another toolchain's ansible-playbook."""
    return subprocess.run(
        [str(binary), "-i", str(inventory), str(ROOT / "playbooks" / name), *args],
        capture_output=True,
        text=True,
        env={
            **os.environ,
            "ANSIBLE_CONFIG": str(ROOT / "ansible.cfg"),
            "ANSIBLE_NOCOLOR": "1",
            "ANSIBLE_LOCALHOST_WARNING": "false",
            "ANSIBLE_CACHE_PLUGIN_CONNECTION": str(inventory.parent / "facts"),
            **(env or {}),
        },
        cwd=ROOT,
        check=False,
        timeout=timeout,
    )


def localhost_inventory(folder: Path) -> Path:
    """An inventory of localhost alone, over the local connection with this toolchain's Python."""
    inventory = folder / "localhost.yml"
    host = {"ansible_connection": "local", "ansible_python_interpreter": sys.executable}
    inventory.write_text(yaml.safe_dump({"all": {"hosts": {"localhost": host}}}))
    return inventory


def run_playbook(inventory: Path, name: str, *args: str, env: dict[str, str] | None = None) -> tuple[int, str]:
    """ansible_playbook, with the runbook's summaries beside the inventory too (fleet_artifact_dir;
    an -e in `args` wins): (exit status, stdout and stderr)."""
    artifacts = f"fleet_artifact_dir={inventory.parent / 'artifacts'}"
    done = ansible_playbook(inventory, name, "-e", artifacts, *args, env=env)
    return done.returncode, done.stdout + done.stderr


@pytest.fixture
def private_apt_state(tmp_path: Path) -> Callable[..., dict[str, Path | str]]:
    """Real apt over a stand-in repository, without the machine's own apt configuration.

    The returned function writes `listing` as the Packages index of a flat file repository under
    tmp_path, an empty dpkg status, private lists and cache, and `preferences` (if any) as the only
    preferences file; it returns the apt settings (Dir::..., amd64 only) that point apt at them, for
    `-o KEY=VALUE` options or an APT_CONFIG file. Nothing of the machine's apt is read or written.
    """

    def build(listing: str, preferences: str = "") -> dict[str, Path | str]:
        repo = tmp_path / "repo"
        for folder in ("repo", "parts", "prefs", "lists/partial", "cache/archives/partial"):
            (tmp_path / folder).mkdir(parents=True, exist_ok=True)
        (repo / "Packages").write_text(listing)
        (tmp_path / "sources.list").write_text(f"deb [trusted=yes] file:{repo} ./\n")
        (tmp_path / "status").write_text("")
        if preferences:
            (tmp_path / "prefs" / "nvidia-driver.pref").write_text(preferences)
        return {
            "Dir::Etc::SourceList": tmp_path / "sources.list",
            "Dir::Etc::SourceParts": tmp_path / "parts",
            "Dir::Etc::Preferences": tmp_path / "none.pref",
            "Dir::Etc::PreferencesParts": tmp_path / "prefs",
            "Dir::State::Lists": tmp_path / "lists",
            "Dir::State::status": tmp_path / "status",
            "Dir::Cache": tmp_path / "cache",
            "APT::Sandbox::User": "root",
            "Debug::NoLocking": "true",
            "APT::Architecture": "amd64",
            "APT::Architectures": "amd64",
        }

    return build


def nvidia_driver_preferences(branch: str, pin: str = "") -> str:
    """nvidia_driver's apt preferences file, rendered from the role's own template and pattern list."""
    role_vars = yaml.safe_load((NVIDIA_DRIVER / "vars" / "main.yml").read_text())
    env = jinja2.Environment(undefined=jinja2.StrictUndefined, keep_trailing_newline=True)
    env.filters["gpu_fleet.common.nvidia_driver_apt_pin_version"] = apt_pin_version
    template = env.from_string((NVIDIA_DRIVER / "templates" / "nvidia-driver.pref.j2").read_text())
    return template.render(
        ansible_managed="managed",
        nvidia_driver_branch=branch,
        nvidia_driver_version=pin,
        __nvidia_driver_apt_pinned=role_vars["__nvidia_driver_apt_pinned"],
    )


@pytest.fixture
def rendered_preferences() -> Callable[..., str]:
    """nvidia_driver_preferences as a fixture: (branch, pin="") -> the role's rendered apt pin."""
    return nvidia_driver_preferences


def chromium_dom(chromium: str, url: str, profile: Path) -> subprocess.CompletedProcess:
    """The DOM headless chromium renders for `url` (scripts run, as a user's browser would), with
    its own profile folder and nothing fetched in the background."""
    return subprocess.run(
        [
            chromium,
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            f"--user-data-dir={profile}",
            "--dump-dom",
            url,
        ],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
