"""The exit codes: one enum, each CLI's --help and the README tables generated from it."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from hf_loader import cachemanifest, cacheseed, cachetest, errors, gpu_check, train
from hf_loader.cli import exitcodes, reference
from hf_loader.cli.exitcodes import ExitCode

PACKAGE = Path(__file__).resolve().parents[1]
README = PACKAGE / "README.md"
CLI_REFERENCE = PACKAGE.parents[1] / "docs" / "hf-loader-cli.md"


def test_the_generated_reference_is_in_step_with_the_clis():
    assert reference.DEFAULT_FILES == (README, CLI_REFERENCE)
    for path in reference.DEFAULT_FILES:
        text = path.read_text(encoding="utf-8")
        assert reference.render(text) == text, f"{path}: run python -m hf_loader.cli.reference"
    text = CLI_REFERENCE.read_text(encoding="utf-8")
    assert reference.tables_in(text) == [cli.prog for cli in exitcodes.ALL]
    assert [page for page, _python in reference.help_pages_in(text)] == reference.help_pages()


def test_check_fails_on_a_table_edited_by_hand_and_passes_once_written(tmp_path):
    copy = tmp_path / "hf-loader-cli.md"
    original = CLI_REFERENCE.read_text(encoding="utf-8")
    edited = original.replace("| 3 | dataset not cached |", "| 3 | gone |")
    copy.write_text(edited, encoding="utf-8")
    assert copy.read_text(encoding="utf-8") != original
    check = [sys.executable, "-m", "hf_loader.cli.reference", "--check", str(copy)]
    failed = subprocess.run(check, capture_output=True, text=True)
    assert failed.returncode == 1 and "out of step" in failed.stderr
    assert subprocess.run(check[:3] + [str(copy)]).returncode == 0
    assert subprocess.run(check).returncode == 0
    assert copy.read_text(encoding="utf-8") == original


def test_a_help_block_is_rewritten_by_the_python_that_wrote_it_only():
    page = "hf-cache-seed pull"
    mine = reference.HELP_BEGIN.format(page=page, python=reference.THIS_PYTHON)
    other = reference.HELP_BEGIN.format(page=page, python="2.7")
    stale = f"{mine}\nstale\n{reference.HELP_END}\n{other}\nstale\n{reference.HELP_END}\n"
    rendered = reference.render(stale)
    assert rendered.startswith(reference.help_block(page) + "\n" + other + "\nstale\n")
    assert "--stall-timeout" in reference.help_text(page)
    assert reference.help_text(page) == reference.help_text(page)  # no state left behind


def test_a_marker_naming_no_cli_is_refused():
    marker = reference.BEGIN.format(prog="hf-nothing")
    with pytest.raises(reference.UnknownCliError, match="hf-nothing"):
        reference.render(f"{marker}\n{reference.END}\n")


@pytest.mark.parametrize(
    ("build", "table"),
    [
        (cachetest.parser, exitcodes.CACHE_TEST),
        (cachemanifest.parser, exitcodes.CACHE_MANIFEST),
        (cacheseed.parser, exitcodes.CACHE_SEED),
    ],
)
def test_each_cli_help_ends_with_its_exit_codes(build, table):
    assert build().epilog == table.epilog()
    assert table.epilog().startswith("exit codes")


def test_train_and_gpu_check_help_carry_their_exit_codes(capsys):
    assert train.main(["--help"]) == 0
    assert exitcodes.TRAIN.epilog() in capsys.readouterr().out
    with pytest.raises(SystemExit):
        gpu_check.parse(["--help"])
    assert "3 no CUDA, 4 fewer GPUs than" in capsys.readouterr().out


def test_every_error_exit_code_is_one_its_clis_document():
    documented = set().union(*(cli.codes for cli in exitcodes.ALL))
    kinds = [errors.HFLoaderError]
    while kinds:
        kind = kinds.pop()
        kinds.extend(kind.__subclasses__())
        assert int(kind.exit_code) in documented, kind
    stopped = {int(ExitCode.STOPPED_SIGINT), int(ExitCode.STOPPED_SIGTERM)}
    assert stopped <= exitcodes.CACHE_SEED.codes
    assert errors.StoppedError("SIGTERM", 15).exit_code == ExitCode.STOPPED_SIGTERM


def test_an_exit_code_prints_and_serializes_as_its_number():
    code = ExitCode.NOT_CACHED
    assert (str(code), f"{code}", json.dumps({"exit_code": code})) == ("3", "3", '{"exit_code": 3}')
    assert ExitCode.NO_CUDA is ExitCode.NOT_CACHED and ExitCode.PASSED is ExitCode.READY
