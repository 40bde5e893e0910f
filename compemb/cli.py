"""The ``compemb`` console entry point.

Each sub-command lives in its own module and parses its own arguments; this dispatcher imports
it only when asked, so ``compemb plan`` needs neither dlrm nor optuna. The benchmarks are scripts
of the source tree, run by ``make bench`` (they are not part of the installed package).
"""
from __future__ import annotations

import importlib
import os
import sys
from typing import Dict, List, Optional, Tuple

# sub-command -> (module:function, one-line help). The function takes the remaining argv.
COMMANDS: Dict[str, Tuple[str, str]] = {
    "plan": ("compemb.plan:main", "table sizes, parameters and compression of a partition plan"),
    "train": ("dlrm.cli:train_main", "train a DLRM (DLRM-style flags)"),
    "data": ("dlrm.cli:data_main", "fetch or prepare data sets (movielens-100k, criteo, synthetic)"),
    "sweep": ("sweeps.cli:main", "Optuna sweeps of parameter count against accuracy"),
    "figures": ("paper_figures.cli:main", "regenerate the paper's figures from a study"),
    "demo": ("paper_figures.demo:main", "the main job: a small sweep on MovieLens-100k, then the figures"),
}


def _usage() -> str:
    lines = ["usage: compemb [--version] <command> [options]", "", "commands:"]
    width = max(len(name) for name in COMMANDS)
    for name, (_, text) in COMMANDS.items():
        lines.append(f"  {name:<{width}}  {text}")
    lines.append("")
    lines.append("`compemb <command> --help` shows a command's options.")
    return "\n".join(lines)


def main(argv: Optional[List[str]] = None) -> int:
    """Dispatch ``compemb <command> [options]``; returns the exit status."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(_usage())
        return 0
    if argv[0] in ("-V", "--version"):
        from compemb import __version__

        print(f"compemb {__version__}")
        return 0
    name, rest = argv[0], argv[1:]
    if name not in COMMANDS:
        print(f"compemb: unknown command {name!r}\n\n{_usage()}", file=sys.stderr)
        return 2
    target, _ = COMMANDS[name]
    module_name, function_name = target.split(":")
    function = getattr(importlib.import_module(module_name), function_name)
    try:
        result = function(rest)
    except BrokenPipeError:
        # the reader went away (`compemb plan ... | head`): stop quietly, as Unix tools do, and
        # keep the interpreter's final flush of stdout from raising again
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141
    return int(result or 0)


if __name__ == "__main__":
    sys.exit(main())
