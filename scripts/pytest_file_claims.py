"""pytest plugin: pytest processes side by side share one run of a suite, file by file.

`make pytest` and `make loader-test` each start two pytest processes over the same tests
(scripts/pytest-shared.sh) with `-p pytest_file_claims` and PYTEST_FILE_CLAIMS naming one empty
folder. Each process collects every test, then goes through the files in order and runs a file
only if it claims it first (creates its name in the folder, which only one process can). So the
processes share the work as it goes, with no recorded durations to keep up to date, and a file's
tests (its module fixtures with them) run in one process, in their order. Without
PYTEST_FILE_CLAIMS pytest runs as usual.

Each process reports only the tests it ran; its progress percentages count every test collected.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

CLAIMS = "PYTEST_FILE_CLAIMS"


def claim(folder: Path, test_file: str) -> bool:
    """True for the one process that names test_file in folder first."""
    try:
        os.close(os.open(folder / test_file.replace("/", "%"), os.O_CREAT | os.O_EXCL | os.O_WRONLY))
    except FileExistsError:
        return False
    return True


def by_file(items: list[pytest.Item]) -> list[tuple[str, list[pytest.Item]]]:
    files: dict[str, list[pytest.Item]] = {}
    for item in items:
        files.setdefault(item.nodeid.split("::", 1)[0], []).append(item)
    return list(files.items())


@pytest.hookimpl(tryfirst=True)
def pytest_runtestloop(session: pytest.Session) -> bool | None:
    folder = os.environ.get(CLAIMS)
    if not folder:
        return None  # pytest's own loop
    if session.testsfailed and not session.config.option.continue_on_collection_errors:
        raise session.Interrupted(f"{session.testsfailed} error(s) during collection")
    if session.config.option.collectonly:
        return True
    files = iter(by_file(session.items))

    def next_claimed() -> list[pytest.Item]:
        return next((items for name, items in files if claim(Path(folder), name)), [])

    current = next_claimed()
    while current:
        following: list[pytest.Item] = []
        for index, item in enumerate(current):
            # The next file is claimed just before this file's last test: pytest's teardown needs
            # the test that comes next (module fixtures end, session fixtures stay).
            if index + 1 < len(current):
                nextitem = current[index + 1]
            else:
                following = next_claimed()
                nextitem = following[0] if following else None
            item.config.hook.pytest_runtest_protocol(item=item, nextitem=nextitem)
            if session.shouldfail:
                raise session.Failed(session.shouldfail)
            if session.shouldstop:
                raise session.Interrupted(session.shouldstop)
        current = following
    return True
