"""The `compemb` dispatcher: every sub-command resolves to a callable, unknown ones fail."""
import importlib
import subprocess
import sys

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


def test_bench_lists_benchmarks(capsys):
    assert cli.main(["bench", "--help"]) == 0
    out = capsys.readouterr().out
    assert "bench_encode" in out


def test_console_script_runs():
    done = subprocess.run([sys.executable, "-m", "compemb.cli", "--help"], capture_output=True,
                          text=True, timeout=60)
    assert done.returncode == 0 and "plan" in done.stdout
