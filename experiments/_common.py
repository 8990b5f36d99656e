"""Shared command line and output helpers of the claim scripts (``experiments/*.py``).

Every claim script has ``main(argv=None) -> dict`` and the same options:

    --out DIR          output folder (default ``runs/<name>``): config.json, results.json, <name>.png
    --quick            the small budget (< 30 s on 2 cores): what the tests and notebooks run
    --paper-figures    also write the PNG into ``paper_figures/`` (the figures of the README there)
    --seed N           seed of the one ``torch.Generator`` the script draws from
    --threads N        ``torch.set_num_threads`` (default: the physical cores, 1 when the load average
                       says the machine is busy; ``kacnum.core.cli.resolve_threads``)
    --debug            full tracebacks instead of one-line errors

Errors (``kacnum.core.cli``): a bad value, an output folder that is a file or cannot be written, is reported
as one line on stderr naming the flag, before any work starts, with exit status 2; a failed run exits
with status 1. Every script ends with ``sys.exit(cli.run_main(main))``; ``main(argv)`` itself raises
(``cli.UsageError`` and the library's ``ValueError``) so that tests and notebooks see the exception.

JSON files are written atomically (``kacnum.core.checkpoint.save_json``: temporary file in the same folder,
then ``os.replace``); so are the PNGs. ``results.json`` has ``worst_ratios`` (name -> worst measured /
bound ratio) at its top level.

A claim script's ``main`` is three steps around its own measurement::

    args, cfg, gen = _common.start(NAME, __doc__, MyConfig(), QUICK, argv)   # parse, budget, seed, threads
    with _common.Stopwatch() as sw:
        res = run(cfg, gen)
    ...                                                                    # its own tables
    return _common.finish(NAME, args, cfg, res, sw.seconds, figure(res, cfg))  # PNG, config/results.json

A notebook (``notebooks/*.py``) finds the repository root, puts ``experiments/`` on ``sys.path`` and calls
:func:`run_notebook`, which runs the script's ``main`` with the budget the environment asks for
(:func:`notebook_args`); :func:`show` displays the PNGs it wrote.

The writers serve the larger scripts too (``theorem8.py``, ``sampling_cost.py``, ``teacher_study.py``):
:func:`write_png`, :func:`write_text` and :func:`shown_command` (the command line a results file quotes).
"""
from __future__ import annotations

import argparse
import dataclasses
import io
import math
import sys
import time
from pathlib import Path
from typing import Callable, List, Optional, Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402

from kacnum.core import cli  # noqa: E402
from kacnum.core.checkpoint import atomic_write, save_json  # noqa: E402

REPO_ROOT = Path(__file__).resolve().parents[1]
PAPER_FIGURES = REPO_ROOT / "paper_figures"
#: PNGs for paper_figures/ must stay below this size
MAX_PNG_BYTES = 300_000


@dataclasses.dataclass(frozen=True)
class GridSetting:
    """The setting the grid-data claim scripts share (their configurations extend it): the Kac path with
    switching rate ``a`` and speed ``c``, and the 3×3 grid data of the given spacing
    (``kacnum.theory.claims.labelled_grid_support``)."""

    a: float = 9.0
    c: float = 3.0
    spacing: float = 1.5


def make_parser(name: str, description: str) -> argparse.ArgumentParser:
    """An ``ArgumentParser`` with the options shared by every claim script (module docstring)."""
    p = cli.ArgumentParser(prog=f"experiments/{name}.py", description=description)
    p.add_argument("--out", type=Path, default=Path("runs") / name, help=f"output folder (default runs/{name})")
    p.add_argument("--quick", action="store_true", help="small budget (< 30 s): for tests and notebooks")
    p.add_argument("--paper-figures", action="store_true", help="also write the PNG into paper_figures/")
    p.add_argument("--seed", type=cli.nonnegative_int, default=0, help="seed of the torch.Generator (default 0)")
    p.add_argument("--threads", type=cli.positive_int, default=None,
                   help="torch threads (default: physical cores, 1 on a busy machine)")
    return p


def check(args: argparse.Namespace) -> None:
    """The checks of the shared options that need no work: the output folder can be written (nothing
    is created yet) and the thread count; ``args.threads`` becomes the resolved count."""
    if getattr(args, "_checked", False):
        return
    cli.check_out_dir(args.out, "--out")
    args.threads = cli.resolve_threads(args.threads)
    args._checked = True


def setup(args: argparse.Namespace) -> torch.Generator:
    """:func:`check`, then create the output folder and set the thread count; return the seeded
    generator."""
    check(args)
    torch.set_num_threads(args.threads)
    Path(args.out).mkdir(parents=True, exist_ok=True)
    return torch.Generator().manual_seed(args.seed)


def start(name: str, description: str, config, quick: dict, argv: Optional[Sequence[str]] = None,
          options: Optional[Callable[[argparse.ArgumentParser], None]] = None) -> tuple:
    """Parse ``argv`` with the shared options (and those ``options(parser)`` adds), take the ``--quick``
    budget (``dataclasses.replace(config, **quick)``), then :func:`setup`.

    Returns ``(args, cfg, generator)``; the generator is seeded with ``--seed``.
    """
    parser = make_parser(name, description)
    if options is not None:
        options(parser)
    args = parser.parse_args(argv)
    cfg = dataclasses.replace(config, **quick) if args.quick else config
    return args, cfg, setup(args)


def finish(name: str, args: argparse.Namespace, cfg, results: dict, seconds: float, fig, dpi: int = 100) -> dict:
    """The end of every claim script: record ``runtime_s``, save ``fig`` as ``<name>.png`` (:func:`save_figure`,
    its paths under ``figures``), write ``config.json`` and ``results.json`` and say so. Returns ``results``."""
    results["runtime_s"] = seconds
    results["figures"] = save_figure(fig, args.out, f"{name}.png", args.paper_figures, dpi=dpi)
    write_results(args.out, config_dict(cfg, args), results)
    print(f"wrote {args.out}/config.json, results.json, {name}.png ({seconds:.1f} s)")
    return results


def config_dict(cfg, args: argparse.Namespace) -> dict:
    """The resolved configuration: the dataclass ``cfg`` plus the command-line switches."""
    out = dataclasses.asdict(cfg) if dataclasses.is_dataclass(cfg) else dict(cfg)
    out.update(quick=bool(args.quick), seed=int(args.seed), threads=int(args.threads), out=str(args.out),
               paper_figures=bool(args.paper_figures), torch_version=torch.__version__)
    return out


def write_results(out: Path, config: dict, results: dict) -> None:
    """``config.json`` and ``results.json`` in ``out``, atomically."""
    save_json(Path(out) / "config.json", config)
    save_json(Path(out) / "results.json", results)


def write_png(fig, path: Path, dpi: int = 100) -> Path:
    """Save ``fig`` as a PNG at ``path`` atomically (rendered in memory first, so a failed render leaves no
    partial file) and close it. Returns ``path``."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi)
    plt.close(fig)
    return atomic_write(path, lambda f: f.write(buf.getvalue()))


def save_figure(fig, out: Path, filename: str, paper_figures: bool = False, dpi: int = 100) -> List[str]:
    """Save ``fig`` as PNG into ``out`` (and into ``paper_figures/`` if asked), atomically; close it.

    Raises ``ValueError`` if the PNG is larger than ``MAX_PNG_BYTES`` (paper figures must stay small).
    Returns the written paths.
    """
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi, bbox_inches="tight")
    plt.close(fig)
    data = buf.getvalue()
    if len(data) > MAX_PNG_BYTES:
        raise ValueError(f"{filename} is {len(data)} bytes, above the {MAX_PNG_BYTES}-byte limit: lower dpi/points")
    targets = [Path(out) / filename] + ([PAPER_FIGURES / filename] if paper_figures else [])
    for path in targets:
        atomic_write(path, lambda f: f.write(data))
    return [str(p) for p in targets]


def shown_command(name: str, argv: Optional[Sequence[str]]) -> str:
    """The run's command line as a reader would retype it: ``python experiments/<name>.py`` and the
    arguments (``sys.argv[1:]`` when ``argv`` is None) without ``--out DIR``, which names the writer's folder."""
    words = list(sys.argv[1:] if argv is None else argv)
    kept = [w for i, w in enumerate(words) if w != "--out" and not (i > 0 and words[i - 1] == "--out")]
    return " ".join([f"python experiments/{name}.py"] + kept)


def write_text(filename: str, text: str, out: Path, paper_dir: Optional[Path] = None) -> None:
    """Write ``text`` (UTF-8) atomically as ``out/filename`` and, if given, ``paper_dir/filename``."""
    for folder in [out] + ([paper_dir] if paper_dir is not None else []):
        atomic_write(Path(folder) / filename, lambda f: f.write(text.encode()))


def _fmt(v, floatfmt: str) -> str:
    if isinstance(v, bool) or v is None:
        return str(v)
    if isinstance(v, float):
        if not math.isfinite(v):
            return str(v)
        return format(v, floatfmt)
    return str(v)


def format_table(rows: Sequence[dict], columns: Sequence[str], title: Optional[str] = None,
                 floatfmt: str = ".4g") -> str:
    """A fixed-width text table of ``rows`` (dicts) restricted to ``columns``."""
    cells = [[_fmt(r.get(c), floatfmt) for c in columns] for r in rows]
    widths = [max([len(c)] + [len(row[i]) for row in cells]) for i, c in enumerate(columns)]
    lines = [] if title is None else [title]
    lines.append("  ".join(c.rjust(w) for c, w in zip(columns, widths)))
    lines.append("  ".join("-" * w for w in widths))
    lines += ["  ".join(v.rjust(w) for v, w in zip(row, widths)) for row in cells]
    return "\n".join(lines)


def print_table(rows: Sequence[dict], columns: Sequence[str], title: Optional[str] = None,
                floatfmt: str = ".4g") -> str:
    """Print :func:`format_table` (followed by a blank line) and return it."""
    text = format_table(rows, columns, title, floatfmt)
    print(text + "\n", flush=True)
    return text


def print_worst_ratios(worst: dict, title: str = "worst ratios") -> str:
    """Print the ``worst_ratios`` dict (name -> worst measured / bound) as a two-column table."""
    return print_table([dict(bound=k, worst_ratio=v) for k, v in worst.items()], ["bound", "worst_ratio"], title)


class Stopwatch:
    """``with Stopwatch() as sw: ...``; ``sw.seconds`` afterwards (wall clock)."""

    def __enter__(self):
        self._t0 = time.perf_counter()
        self.seconds = float("nan")
        return self

    def __exit__(self, *exc):
        self.seconds = time.perf_counter() - self._t0
        return False


def parse_floats(text: str, name: str) -> tuple:
    """``"1,2.5,4"`` -> ``(1.0, 2.5, 4.0)``; ``ValueError`` naming the option otherwise."""
    try:
        vals = tuple(float(v) for v in str(text).split(",") if v.strip())
    except ValueError:
        raise ValueError(f"{name} must be a comma-separated list of numbers, got {text!r}") from None
    if not vals:
        raise ValueError(f"{name} must hold at least one number, got {text!r}")
    return vals


def notebook_args(name: str, extra_quick: Sequence[str] = ()) -> tuple:
    """Output folder and argv for a notebook that runs ``experiments/<name>.py``'s ``main``.

    Environment (set by ``tests/test_notebooks.py``; unset when a person runs the notebook):

    * ``KACNUM_NB_OUT``: base folder (default ``runs/notebooks``); the run writes to ``<base>/<name>``;
    * ``KACNUM_NB_QUICK=1``: the ``--quick`` budget plus ``extra_quick`` (default: the full budget);
    * ``KACNUM_NB_PAPER``: ``1`` writes the PNGs into ``paper_figures/`` too (default: ``1`` for the full
      budget, ``0`` with ``KACNUM_NB_QUICK=1``, so small runs never replace the paper figures).

    Returns ``(out: Path, argv: list)``.
    """
    import os

    base = Path(os.environ.get("KACNUM_NB_OUT", REPO_ROOT / "runs" / "notebooks"))
    quick = os.environ.get("KACNUM_NB_QUICK", "0") == "1"
    paper = os.environ.get("KACNUM_NB_PAPER", "0" if quick else "1") == "1"
    out = base / name
    argv = ["--out", str(out)] + (["--quick", *extra_quick] if quick else []) + (["--paper-figures"] if paper else [])
    return out, argv


def run_notebook(name: str, extra_quick: Sequence[str] = ()) -> tuple:
    """Run ``experiments/<name>.py``'s ``main`` for a notebook, with :func:`notebook_args`' folder and budget.

    Returns ``(out: Path, results: dict)``.
    """
    import importlib

    out, argv = notebook_args(name, extra_quick)
    return out, importlib.import_module(name).main(argv)


def show(out: Path, *filenames: str) -> None:
    """Display the PNGs ``out/<filename>`` in the notebook (IPython)."""
    from IPython.display import Image, display

    for filename in filenames:
        display(Image(filename=str(Path(out) / filename)))
