"""The `compemb` dispatcher: every sub-command resolves to a callable, unknown ones fail."""
import importlib
import re
import subprocess
import sys
from pathlib import Path

import pytest

from compemb import cli


def test_help_lists_every_command(capsys):
    assert cli.main(["--help"]) == 0
    out = capsys.readouterr().out
    for name in cli.COMMANDS:
        assert name in out


def test_unknown_command_is_an_error(capsys):
    assert cli.main(["no-such-command"]) == 2
    assert "no-such-command" in capsys.readouterr().err


@pytest.mark.parametrize("name", sorted(cli.COMMANDS))
def test_every_command_resolves_to_a_function(name):
    module_name, function_name = cli.COMMANDS[name][0].split(":")
    function = getattr(importlib.import_module(module_name), function_name)
    assert callable(function)


def test_benchmarks_run_from_make_bench_not_the_cli():
    # the benchmarks are scripts of the source tree, not in the wheel: `make bench` runs them
    assert "bench" not in cli.COMMANDS
    root = Path(__file__).resolve().parent.parent
    default = re.search(r"^BENCH \?= (.+)$", (root / "Makefile").read_text(), re.M)
    assert default is not None
    for name in default.group(1).split():
        assert (root / "benchmarks" / f"{name}.py").is_file(), name


def test_console_script_runs():
    done = subprocess.run([sys.executable, "-m", "compemb.cli", "--help"], capture_output=True,
                          text=True, timeout=60)
    assert done.returncode == 0 and "plan" in done.stdout


def test_output_into_a_closed_pipe_ends_quietly():
    # `compemb plan ... | true`: the reader is gone before the first line is written; no traceback
    reader_closes_early = subprocess.run(
        ["bash", "-c", f"{sys.executable} -m compemb plan --criteo-kaggle --method qr --collisions 4 | true"],
        capture_output=True, text=True, timeout=120,
    )
    assert "Traceback" not in reader_closes_early.stderr, reader_closes_early.stderr
    assert "BrokenPipeError" not in reader_closes_early.stderr
