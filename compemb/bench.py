"""``compemb bench``: run a benchmark script from the repository's ``benchmarks/`` folder.

The benchmarks are plain scripts (each prints a ratio table against a baseline measured in the
same run); this sub-command only finds and runs them, passing the remaining arguments through.
"""
from __future__ import annotations

import runpy
import sys
from pathlib import Path
from typing import List

BENCHMARKS_DIR = Path(__file__).resolve().parent.parent / "benchmarks"


def _available() -> List[str]:
    if not BENCHMARKS_DIR.is_dir():
        return []
    return sorted(p.stem for p in BENCHMARKS_DIR.glob("*.py") if not p.name.startswith("_"))


def main(argv: List[str]) -> int:
    names = _available()
    if not argv or argv[0] in ("-h", "--help"):
        print("usage: compemb bench <name> [benchmark options]\n\nbenchmarks:")
        for name in names:
            print(f"  {name}")
        if not names:
            print(f"  (none: {BENCHMARKS_DIR} is missing; benchmarks ship with the source tree)")
        return 0
    name = argv[0].removesuffix(".py")
    if name not in names:
        print(f"compemb bench: unknown benchmark {name!r}; available: {', '.join(names) or 'none'}",
              file=sys.stderr)
        return 2
    path = BENCHMARKS_DIR / f"{name}.py"
    saved = sys.argv
    sys.argv = [str(path)] + list(argv[1:])
    try:
        runpy.run_path(str(path), run_name="__main__")
    except SystemExit as exc:  # scripts may call sys.exit
        return int(exc.code or 0)
    finally:
        sys.argv = saved
    return 0
