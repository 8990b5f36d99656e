"""``python -m kacnum`` (or the ``kacnum`` console command): list the experiments, or run one.

    python -m kacnum                       # the experiments, one line each, and where they are
    python -m kacnum theorem8 --quick      # = python experiments/theorem8.py --quick
    python -m kacnum toy2d --help

The scripts are looked up in ``$KACNUM_EXPERIMENTS``, then in the source checkout this package was
imported from (``<repo>/experiments``, an editable install), then in the copy that ``pip install`` puts
under ``<prefix>/share/kacnum/experiments`` (a regular install). Outputs go to ``runs/<name>`` under the
current folder unless ``--out`` says otherwise. Exit status: the script's (0 ok, 2 bad usage, 1 a failed
run); 2 for an unknown name.
"""
from __future__ import annotations

import ast
import os
import runpy
import sys
from pathlib import Path
from typing import Optional, Sequence

#: the order of the listing: theory checks first, then the image pipeline
ORDER = ("theorem8", "marginal_law", "finite_speed", "kinetic_energy", "wasserstein_lipschitz", "diffusion_limit",
         "guidance_integrability", "toy2d", "cifar_distill", "distill_sweep")


def experiments_dirs() -> list:
    """Candidate folders holding the experiment scripts, in the order they are searched."""
    dirs = []
    env = os.environ.get("KACNUM_EXPERIMENTS")
    if env:
        dirs.append(Path(env).expanduser())
    dirs.append(Path(__file__).resolve().parents[1] / "experiments")
    for prefix in dict.fromkeys((sys.prefix, sys.base_prefix, getattr(sys, "exec_prefix", sys.prefix))):
        dirs.append(Path(prefix) / "share" / "kacnum" / "experiments")
    return dirs


def find_experiments() -> tuple[Optional[Path], dict]:
    """``(folder, {name: script path})`` of the first candidate folder that holds scripts."""
    for d in experiments_dirs():
        if d.is_dir():
            found = {p.stem: p for p in sorted(d.glob("*.py")) if not p.stem.startswith("_")}
            if found:
                return d, found
    return None, {}


def summary(path: Path) -> str:
    """The first line of a script's module docstring (read without importing it)."""
    try:
        doc = ast.get_docstring(ast.parse(path.read_text(encoding="utf-8")))
    except (OSError, SyntaxError, ValueError):
        doc = None
    return (doc or "").strip().splitlines()[0] if doc else ""


def listing(folder: Path, scripts: dict) -> str:
    names = sorted(scripts, key=lambda n: (ORDER.index(n) if n in ORDER else len(ORDER), n))
    width = max(len(n) for n in names)
    lines = [f"kacnum experiments (scripts in {folder}):", ""]
    lines += [f"  {n:<{width}}  {summary(scripts[n])}" for n in names]
    lines += ["", "run one:  python -m kacnum NAME [options]   (NAME --help for its options; --quick: a small run)",
              "errors are one line (exit 2: bad usage, 1: failed run); --debug shows the traceback"]
    return "\n".join(lines)


def main(argv: Optional[Sequence[str]] = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    folder, scripts = find_experiments()
    if folder is None:
        searched = ", ".join(str(d) for d in experiments_dirs())
        print(f"error: the experiment scripts are not installed here (searched {searched}); they live in the "
              f"source repository's experiments/ folder: install with `pip install -e .` from a checkout, or set "
              f"KACNUM_EXPERIMENTS=/path/to/experiments", file=sys.stderr)
        return 2
    if not argv or argv[0] in ("-h", "--help", "list"):
        try:
            print(listing(folder, scripts), flush=True)
        except BrokenPipeError:  # `python -m kacnum | head`
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    name, rest = argv[0], argv[1:]
    name = name[:-3] if name.endswith(".py") else name
    if name not in scripts:
        print(f"error: no experiment {name!r}; choose from {', '.join(sorted(scripts))} (python -m kacnum lists "
              f"them)", file=sys.stderr)
        return 2
    script = scripts[name]
    old_argv, old_path = sys.argv, list(sys.path)
    sys.argv = [str(script)] + rest
    sys.path.insert(0, str(script.parent))
    try:
        runpy.run_path(str(script), run_name="__main__")
    except SystemExit as e:
        if e.code is None or isinstance(e.code, int):
            return int(e.code or 0)
        print(e.code, file=sys.stderr)
        return 1
    finally:
        sys.argv, sys.path[:] = old_argv, old_path
    return 0


if __name__ == "__main__":
    sys.exit(main())
