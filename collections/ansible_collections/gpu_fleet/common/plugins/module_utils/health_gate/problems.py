"""A problem is {check, gpu, what, fix}: gpu is the GPU's index (or None for the host), `what` names the
GPU and what failed, `fix` says what to do. The verdict names every problem and its fix in one line."""

from __future__ import annotations

TIMED_OUT = 124  # coreutils timeout: the command ran past its limit
NOT_FOUND = 127  # coreutils timeout: the command does not exist
NOT_EXECUTABLE = 126


def make_problem(check: str, gpu, what: str, fix: str) -> dict:
    return {"check": check, "gpu": gpu, "what": what, "fix": fix}


def output_tail(text: str, lines: int = 3) -> str:
    kept = [line.strip() for line in (text or "").splitlines() if line.strip()]
    return " / ".join(kept[-lines:]) or "no output"


def ran_past(check: str, command: str, timeout: int, variable: str) -> dict:
    return make_problem(
        check,
        None,
        f"{command} ran past {timeout} s and was stopped",
        f"run it by hand on the host to see where it hangs (a GPU that does not answer shows in"
        f" `journalctl -k | grep -i xid`); raise {variable} only if it is merely slow",
    )


def verdict(problems: list, skipped: list | None = None) -> dict:
    """{passed, problems, skipped, message}: message names every problem and its fix, one line."""
    problems = [problem for problem in problems or [] if problem]
    if not problems:
        message = "passed" + (f" ({'; '.join(skipped)})" if skipped else "")
    else:
        message = " ".join(
            f"({number}) [{problem['check']}] {problem['what']}. Fix: {problem['fix']}."
            for number, problem in enumerate(problems, start=1)
        )
    return {"passed": not problems, "problems": problems, "skipped": list(skipped or []), "message": message}
