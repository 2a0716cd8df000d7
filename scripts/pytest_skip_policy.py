"""pytest plugin: a test that CI should run and skips fails the run.

`make pytest` and `make loader-test` load it (`-p pytest_skip_policy`, with scripts/ on
PYTHONPATH). A skip is allowed only when ALLOWED_SKIPS holds a pattern for the test's id and
the skip's reason says what the pattern expects; every other skip (a tool missing on a fresh
machine, a fixture that found nothing) is listed at the end with its reason and the session
fails. The summary line counts the skips in any case, so a run says what it did not test, and
the tests a marker expression deselected (the gpu tests, run on a GPU host with -m gpu): those
never ran here, and are not skips.
"""

from __future__ import annotations

import fnmatch

import pytest

# test id pattern -> the words the skip's reason must contain, and why CI may skip it.
ALLOWED_SKIPS: dict[str, tuple[str, str]] = {
    # None today: every skip in the suites is a tool or a machine CI has (make test-tools).
}


class _SkipPolicy:
    def __init__(self) -> None:
        self.skipped: list[tuple[str, str]] = []
        self.deselected = 0

    @staticmethod
    def _reason(report: pytest.TestReport) -> str:
        longrepr = report.longrepr
        if isinstance(longrepr, tuple) and len(longrepr) == 3:
            return str(longrepr[2]).removeprefix("Skipped: ")
        return str(longrepr)

    @staticmethod
    def allowed(nodeid: str, reason: str) -> bool:
        return any(
            fnmatch.fnmatchcase(nodeid, pattern) and words in reason for pattern, (words, _why) in ALLOWED_SKIPS.items()
        )

    def pytest_deselected(self, items: list[pytest.Item]) -> None:
        self.deselected += len(items)

    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        if report.skipped and not hasattr(report, "wasxfail"):
            self.skipped.append((report.nodeid, self._reason(report)))

    def unexpected(self) -> list[tuple[str, str]]:
        return [(nodeid, why) for nodeid, why in self.skipped if not self.allowed(nodeid, why)]

    def pytest_terminal_summary(self, terminalreporter) -> None:
        bad = self.unexpected()
        terminalreporter.write_line(
            f"skip policy: {len(self.skipped)} skipped, {len(self.skipped) - len(bad)} allowed "
            f"(scripts/pytest_skip_policy.py), {len(bad)} not allowed; {self.deselected} deselected (not run here)"
        )
        for nodeid, why in bad:
            terminalreporter.write_line(f"  NOT ALLOWED: {nodeid}: {why}", red=True)
        if bad:
            terminalreporter.write_line(
                "  fix: install what the test needs (make test-tools) or, when CI may skip it, "
                "add it to ALLOWED_SKIPS with the reason",
                red=True,
            )

    def pytest_sessionfinish(self, session: pytest.Session, exitstatus: int) -> None:
        if self.unexpected() and exitstatus == 0:
            session.exitstatus = pytest.ExitCode.TESTS_FAILED


def pytest_configure(config: pytest.Config) -> None:
    config.pluginmanager.register(_SkipPolicy(), "gpu_fleet_skip_policy")
