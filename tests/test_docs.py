"""The documentation holds together: relative links resolve, named sections exist."""

import fnmatch
import os
import re
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
MARKDOWN = sorted(
    [
        ROOT / "README.md",
        ROOT / "CHANGELOG.md",
        ROOT / "files" / "hf_loader" / "README.md",
        *(ROOT / "docs").glob("*.md"),
        *(ROOT / "roles").glob("*/README.md"),
        *(ROOT / "collections").glob("ansible_collections/*/*/README.md"),
    ]
)
# Where a text file may name a section of the project's Markdown: comments, docstrings, messages.
SOURCES = ["*.yml", "*.yaml", "*.py", "*.sh", "*.mk", "*.j2", "*.cfg", "*.md", "Makefile", "capfilter-runc", "run"]
SKIPPED_DIRS = {".git", ".venvs", ".cache", ".pytest_cache", ".ruff_cache", "lab", "reports", "fixtures", "__pycache__"}

FENCE = re.compile(r"^```.*?^```", re.S | re.M)
INLINE_CODE = re.compile(r"`[^`\n]*`")
LINK = re.compile(r"\]\(([^)\s]+)\)")
HEADING = re.compile(r"^#{1,6} +(.+?) *#*$", re.M)
# A project document followed by a quoted section name: docs/fleet.md "Fleet knobs", README "Layout".
# A README named after owner/repo ("NVIDIA/cuda-repo-management README") is another project's.
SECTION_REFERENCE = re.compile(
    r"(?P<before>\S*\s+)?(?P<doc>(?:[\w.-]+/)*README(?:\.md)?|(?:[\w.-]+/)*[\w-]+\.md),?\s+(?:section\s+)?\"(?P<section>[^\"\n]+)\""
)
OTHER_PROJECT = re.compile(r"^\(?[\w.-]+/[\w.-]+\s+$")


def prose(text: str) -> str:
    """The text without code blocks and inline code, where brackets are not links."""
    return INLINE_CODE.sub("", FENCE.sub("", text))


def slug(heading: str) -> str:
    """GitHub's anchor for a heading."""
    text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", heading).strip().lower()
    return re.sub(r"[^\w\- ]", "", text).replace(" ", "-")


def headings(path: Path) -> list[str]:
    return [match.group(1).replace("`", "") for match in HEADING.finditer(FENCE.sub("", path.read_text()))]


def anchors(path: Path) -> set[str]:
    found: set[str] = set()
    for heading in headings(path):
        anchor, n = slug(heading), 1
        while anchor in found:
            anchor, n = f"{slug(heading)}-{n}", n + 1
        found.add(anchor)
    return found


def test_every_markdown_file_of_the_project_is_checked():
    """The link checks below are parametrized over MARKDOWN: a document its globs miss would
    keep broken links without a word. Git's list of tracked files is the reference."""
    tracked = subprocess.run(
        ["git", "ls-files", "*.md"], cwd=ROOT, capture_output=True, text=True, check=True
    ).stdout.split()
    checked = {path.relative_to(ROOT).as_posix() for path in MARKDOWN}
    assert len(tracked) > 10, tracked
    assert set(tracked) <= checked, f"not checked: {sorted(set(tracked) - checked)}"


@pytest.mark.parametrize("doc", MARKDOWN, ids=lambda path: path.relative_to(ROOT).as_posix())
def test_relative_links_point_to_existing_files_and_headings(doc):
    broken = []
    for target in LINK.findall(prose(doc.read_text())):
        if re.match(r"^[a-z][a-z0-9+.-]*:", target):  # http:, mailto:, ...
            continue
        file_part, _, anchor = target.partition("#")
        path = (doc.parent / file_part).resolve() if file_part else doc
        if not path.exists():
            broken.append(f"{target}: no such file")
        elif anchor and path.suffix == ".md" and anchor not in anchors(path):
            broken.append(f"{target}: no heading with the anchor #{anchor} in {path.relative_to(ROOT)}")
    assert not broken, "\n".join(broken)


def source_files():
    # The skipped folders are never entered: a lab running beside the tests makes and removes
    # files under lab/ while they are read.
    for folder, subfolders, files in os.walk(ROOT):
        subfolders[:] = [name for name in subfolders if name not in SKIPPED_DIRS]
        for name in files:
            if any(fnmatch.fnmatchcase(name, pattern) for pattern in SOURCES):
                yield Path(folder) / name


def test_named_sections_of_the_projects_documents_exist():
    missing = []
    for path in sorted(set(source_files())):
        for line_number, line in enumerate(path.read_text(errors="replace").splitlines(), 1):
            for match in SECTION_REFERENCE.finditer(line):
                if OTHER_PROJECT.match(match.group("before") or ""):
                    continue
                doc = match.group("doc")
                target = ROOT / (doc if doc.endswith(".md") else doc + ".md")
                where = f"{path.relative_to(ROOT)}:{line_number}"
                if not target.is_file():
                    missing.append(f"{where}: {doc} does not exist")
                elif match.group("section").lower() not in [heading.lower() for heading in headings(target)]:
                    missing.append(f"{where}: {doc} has no section {match.group('section')!r}")
    assert not missing, "\n".join(missing)


def test_every_commit_the_changelog_names_is_in_the_history():
    """A bullet names the commits it comes from; a commit rewritten or never landed leaves a name
    that leads nowhere (seen when a session's commits were recovered as new ones)."""
    named = set(re.findall(r"\b[0-9a-f]{7,40}\b", (ROOT / "CHANGELOG.md").read_text()))
    missing = sorted(
        name
        for name in named
        if subprocess.run(["git", "cat-file", "-e", f"{name}^{{commit}}"], cwd=ROOT, capture_output=True).returncode
    )
    assert named and not missing, f"CHANGELOG.md names commits that are not in the history: {missing}"
