"""ARA records a real site.yml run, and a real browser finds every host's tasks in the record.

`make ara-test` runs this file (with .venvs/ara, built by `make ara-venv`, and chromium, by
`make test-tools`): about 20 s, too slow for `make pytest`, which does not collect it (its name
does not start with test_; pytest collects a file named on its command line whatever its name).
tests/test_ara.py checks the wiring within make pytest.

The run: site.yml for real with ARA's callback (its embedded SQLite default, offline client),
in check mode, against two hosts of this machine (local connection, no become). Their
preflights refuse before any change, each at its own point: gpu-a has no dataset volume
source, gpu-b names a label that no device carries, so gpu-b runs tasks that gpu-a never
reaches. What each host ran comes from the same run's own output (the ansible.posix.json
callback), not from ARA. Then a real `ara-manage runserver` serves the database and headless
chromium loads the index, the playbook's page, each host's page and each host's failed result:
each host's page must list every task that ran there, and none that ran only on the other.

Not covered: an ARA API server (ARA_API_CLIENT=http), a database other than SQLite, AWX.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from html.parser import HTMLParser
from pathlib import Path

import pytest
import yaml

from conftest import ansible_playbook, chromium_dom

ROOT = Path(__file__).resolve().parent.parent
ARA_BIN = Path(os.environ.get("ARA_BIN", ROOT / ".venvs" / "ara" / "bin"))
HOSTS = {
    "ara-gpu-a": {},
    "ara-gpu-b": {"dataset_volume_source": "LABEL=ara-record-test-absent"},
}
# The check each host fails at (the roles' preflight; nothing is changed before it).
REFUSED_AT = {
    "ara-gpu-a": "dataset_volume : Check the variables",
    "ara-gpu-b": (
        "dataset_volume : Check the device, the accounts and the mount point, and refuse a device that may not be used"
    ),
}


class _Text(HTMLParser):
    """A page's visible text, one space between words (scripts and styles left out)."""

    def __init__(self) -> None:
        super().__init__()
        self.parts: list[str] = []
        self._skip = 0

    def handle_starttag(self, tag, attrs):
        if tag in ("script", "style"):
            self._skip += 1

    def handle_endtag(self, tag):
        if tag in ("script", "style") and self._skip:
            self._skip -= 1

    def handle_data(self, data):
        if not self._skip:
            self.parts.append(data)


def text(dom: str) -> str:
    parser = _Text()
    parser.feed(dom)
    return " ".join(" ".join(parser.parts).split())


def squeeze(words: str) -> str:
    return " ".join(words.split())


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def wait_for(url: str, server: subprocess.Popen, log: Path, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if server.poll() is not None:
            pytest.fail(f"ara-manage runserver exited {server.returncode}: {log.read_text()[-2000:]}")
        try:
            with urllib.request.urlopen(url, timeout=5) as response:
                if response.status == 200:
                    return
        except (urllib.error.URLError, ConnectionError):
            time.sleep(0.3)
    pytest.fail(f"ara-manage runserver did not answer {url} in {timeout} s: {log.read_text()[-2000:]}")


@pytest.fixture
def browse(tmp_path: Path):
    """The DOM headless chromium renders for a URL (scripts run, as a user's browser would)."""
    chromium = shutil.which("chromium")
    if chromium is None:
        pytest.fail("chromium is not installed: run `make test-tools`")

    def dump(url: str) -> str:
        done = chromium_dom(chromium, url, tmp_path / "chromium")
        assert done.returncode == 0, done.stderr[-2000:]
        assert "</html>" in done.stdout, f"{url}: no page ({done.stderr[-1000:]})"
        return done.stdout

    return dump


def ara_env(records: Path) -> dict[str, str]:
    """The environment that makes ansible-playbook record into `records` (ARA's SQLite default)."""
    if not (ARA_BIN / "ara-manage").exists():
        pytest.fail(f"ARA is not installed in {ARA_BIN.parent}: run `make ara-venv` (make ara-test does)")
    callbacks = subprocess.run(
        [str(ARA_BIN / "python"), "-m", "ara.setup.callback_plugins"], capture_output=True, text=True, check=True
    ).stdout.strip()
    return {
        "ANSIBLE_CALLBACK_PLUGINS": callbacks,
        "ARA_BASE_DIR": str(records),
        "ARA_DATABASE_NAME": str(records / "ansible.sqlite"),
    }


def tasks_by_host(done: subprocess.CompletedProcess) -> tuple[dict[str, list[str]], dict]:
    """What each host has a result of, in order, and the stats, from the run's own output (the
    ansible.posix.json stdout callback), not from ARA."""
    # ARA's offline client applies its migrations at every start and says so on stdout, before
    # the JSON document the stdout callback writes at the end.
    document = re.search(r"^\{$.*", done.stdout, re.M | re.S)
    assert document, done.stdout[-2000:] + done.stderr[-3000:]
    output = json.loads(document[0])
    ran: dict[str, list[str]] = {}
    for play in output["plays"]:
        for task in play["tasks"]:
            for host in task["hosts"]:
                ran.setdefault(host, []).append(task["task"]["name"])
    return ran, output["stats"]


@contextlib.contextmanager
def ara_server(records_env: dict[str, str], log: Path):
    """A real `ara-manage runserver` on the records; yields its base URL."""
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    with log.open("w") as out:
        server = subprocess.Popen(
            [str(ARA_BIN / "ara-manage"), "runserver", "--noreload", f"127.0.0.1:{port}"],
            stdout=out,
            stderr=subprocess.STDOUT,
            env={**os.environ, **records_env},
        )
    try:
        wait_for(f"{base}/", server, log)
        yield base
    finally:
        server.terminate()
        server.wait(timeout=30)


RESULTS_A_PAGE = 10


def host_pages(browse, base: str, playbook_path: Path, hosts) -> dict[str, str]:
    """The one recorded run of `playbook_path`: each named host's pages, all of its results. ARA
    shows a host's results a page at a time (PAGE_SIZE, 100 by default, or `?limit=`); this reads
    them RESULTS_A_PAGE at a time, so that even a short run spans pages and a lost page fails."""
    index = browse(f"{base}/")
    playbooks = sorted(set(re.findall(r'href="/playbooks/(\d+)\.html', index)))
    assert len(playbooks) == 1, f"one recorded run expected, the index links {playbooks}"
    assert str(playbook_path) in text(index)
    playbook = browse(f"{base}/playbooks/{playbooks[0]}.html")
    playbook_text = text(playbook)
    for host in hosts:
        assert host in playbook_text
    pages = {}
    for host_id in sorted(set(re.findall(r'href="/hosts/(\d+)\.html', playbook)), key=int):
        first = browse(f"{base}/hosts/{host_id}.html?limit={RESULTS_A_PAGE}&offset=0")
        found = re.search(r"Host #\d+: (\d+) results on (\S+) for", text(first))
        assert found, f"host page {host_id} names no host"
        count, name = int(found[1]), found[2]
        later = range(RESULTS_A_PAGE, count, RESULTS_A_PAGE)
        pages[name] = "\n".join(
            [first, *(browse(f"{base}/hosts/{host_id}.html?limit={RESULTS_A_PAGE}&offset={o}") for o in later)]
        )
    assert set(hosts) <= set(pages), f"host pages for {sorted(pages)}, {sorted(hosts)} expected"
    return pages


def recorded_site_run(
    inventory: Path, records_env: dict[str, str], *args: str, timeout: float
) -> tuple[subprocess.CompletedProcess, dict[str, list[str]], dict]:
    """site.yml for real with ARA's toolchain and callback: the run, what each host ran, the stats."""
    done = ansible_playbook(
        inventory,
        str(ROOT / "site.yml"),
        *args,
        env={**records_env, "ANSIBLE_STDOUT_CALLBACK": "ansible.posix.json"},
        timeout=timeout,
        binary=ARA_BIN / "ansible-playbook",
    )
    return (done, *tasks_by_host(done))


def text_listing_every_task(pages: dict[str, str], ran: dict[str, list[str]], host: str) -> str:
    """The text of `host`'s pages, checked to list every task that the run's own output says ran there."""
    shown = text(pages[host])
    missing = [task for task in ran[host] if squeeze(task) not in shown]
    assert not missing, f"{host}'s pages lack tasks that ran there: {missing}"
    return shown


def record_site_run(tmp_path: Path, records_env: dict[str, str]) -> dict[str, list[str]]:
    """site.yml for real with ARA's callback; returns, for each host, the tasks it has a result of."""
    inventory = tmp_path / "inventory.yml"
    common = {"ansible_connection": "local", "ansible_become": False, "ansible_python_interpreter": sys.executable}
    inventory.write_text(
        yaml.safe_dump({"gpu_hosts": {"hosts": {name: {**common, **more} for name, more in HOSTS.items()}}})
    )
    done, ran, stats = recorded_site_run(
        inventory,
        records_env,
        "--check",
        "-e",
        f"fleet_report_dir={tmp_path / 'reports'}",
        "-e",
        f"fleet_artifact_dir={tmp_path / 'artifacts'}",
        timeout=300,
    )
    # The run this test means: each host refused by its preflight, at its own check.
    assert done.returncode == 2, done.stderr[-3000:]
    for host, task in REFUSED_AT.items():
        assert stats[host]["failures"] == 1, stats
        assert ran[host][-1] == task, ran[host]
    return ran


def test_a_recorded_site_run_shows_every_hosts_tasks_in_a_browser(tmp_path, browse):
    records = tmp_path / "ara"
    records_env = ara_env(records)
    ran = record_site_run(tmp_path, records_env)
    assert (records / "ansible.sqlite").is_file(), "ARA's callback wrote no database"
    only_b = set(ran["ara-gpu-b"]) - set(ran["ara-gpu-a"])
    assert only_b, "the two hosts ran the same tasks: the test could not tell them apart"

    with ara_server(records_env, tmp_path / "ara-server.log") as base:
        pages = host_pages(browse, base, ROOT / "site.yml", HOSTS)
        assert set(pages) == set(HOSTS)
        for host in HOSTS:
            shown = text_listing_every_task(pages, ran, host)
            if host == "ara-gpu-a":
                wrongly = [task for task in only_b if squeeze(task) in shown]
                assert not wrongly, f"{host}'s page shows tasks that ran only on ara-gpu-b: {wrongly}"
            # The host's failed result, opened from its page: the host, the task and the refusal.
            failed = re.findall(r'href="/results/(\d+)\.html#exception"', pages[host])
            assert failed, f"{host}'s page links no failed result"
            result = text(browse(f"{base}/results/{failed[0]}.html"))
            assert host in result and squeeze(REFUSED_AT[host]) in result
