"""Command-line machinery shared by every script in ``experiments/`` (and ``python -m kacnum``).

What a user sees:

* every error is ONE line on stderr, ``error: <what> ...``, naming the command-line flag (``--steps``,
  not ``total_steps``) and the allowed range; exit status **2** for bad usage (a flag's value, a missing
  input file, data that is not there) and **1** for a run that failed (a damaged checkpoint, a full disk,
  an unexpected exception); ``--debug`` (or ``KACNUM_DEBUG=1``) shows the full traceback instead;
* flags are checked before any work starts and before anything is written: values when argparse reads
  them (the ``type=`` helpers below reuse the library's own checks of :mod:`kacnum.core.checks`), the output
  folder (:func:`check_out_dir`: a file, or a read-only place, is refused), the device
  (:func:`check_device`: ``--device cuda`` without CUDA is refused) and the thread count;
* warnings (a damaged checkpoint replaced by its previous copy, a busy machine) are one line too,
  ``warning: ...``.

Threads (:func:`resolve_threads`): the default is the number of *physical* cores this process may run on
(CPU affinity, cgroup quota; hyper-threads do not count), and a warning when the 1-minute load average
says other jobs already use the cores; then the default drops to 1 thread, because oversubscribed
intra-op threads can be 10-100x slower than one.

Adopting it in a script (``experiments/theorem8.py`` and ``marginal_law.py`` do not yet)::

    from kacnum.core import cli

    parser = cli.ArgumentParser(prog="experiments/NAME.py", description=__doc__)  # adds --debug
    parser.add_argument("--ms", type=cli.int_list(minimum=1), ...)    # value checks: cli.int_at_least(1),
    parser.add_argument("--kac-a", type=cli.positive_float, ...)      # cli.float_in(0, 1), cli.finite_float

    def main(argv=None):
        args = parser.parse_args(argv)           # a bad value: one line, SystemExit(2)
        cli.check_out_dir(args.out)              # before anything is written; cli.check_device(args.device)
        torch.set_num_threads(cli.resolve_threads(args.threads))   # --threads default None
        ...                                      # raise cli.UsageError("--x must ...") for cross-flag checks

    if __name__ == "__main__":
        sys.exit(cli.run_main(main))             # exceptions -> one line, exit 2 or 1; --debug re-raises

Library ``ValueError``s raised while a script builds its configuration name the library's parameter;
:func:`flag_error` (or :func:`renamed`) turns them into the flag's name.
"""
from __future__ import annotations

import argparse
import contextlib
import math
import os
import re
import sys
import tempfile
import warnings
from pathlib import Path
from typing import Callable, Iterable, Mapping, Optional, Sequence

from kacnum.core import checks as _checks

__all__ = [
    "UsageError", "ArgumentParser", "run_main", "one_line", "describe_error",
    "int_at_least", "positive_int", "nonnegative_int", "positive_float", "nonnegative_float", "finite_float",
    "float_in", "int_list", "float_list", "choice_list",
    "check_out_dir", "check_device", "check_input_file", "flag_error", "renamed", "flag_check",
    "physical_cores", "default_threads", "load_warning", "resolve_threads",
]


class UsageError(ValueError):
    """Bad command-line input: shown as one line, exit status 2."""


def one_line(text: str, limit: int = 600) -> str:
    """``text`` with every run of white space (newlines included) made one space, cut at ``limit``."""
    s = " ".join(str(text).split())
    return s if len(s) <= limit else s[: limit - 3] + "..."


# ---------------------------------------------------------------------------------------------
# argparse with one-line errors


class ArgumentParser(argparse.ArgumentParser):
    """``argparse.ArgumentParser`` whose errors are one line (``error: --flag: message``, exit 2, no
    usage block) and which has ``--debug`` (full tracebacks; read by :func:`run_main`)."""

    def __init__(self, *args, debug_flag: bool = True, **kwargs):
        kwargs.setdefault("formatter_class", argparse.RawDescriptionHelpFormatter)
        super().__init__(*args, **kwargs)
        if debug_flag:
            self.add_argument("--debug", action="store_true",
                              help="on an error show the full Python traceback instead of one line")

    def error(self, message: str):  # noqa: D401 - argparse's hook
        m = re.match(r"argument ([^:]+): (.*)", message, flags=re.S)
        if m:
            flags = m.group(1).split("/")
            flag = next((f for f in flags if f.startswith("--")), flags[0])
            rest = m.group(2)
            message = f"{flag} {rest}" if rest.startswith("must ") else f"{flag}: {rest}"
        print(f"error: {one_line(message)} (see {self.prog} --help)", file=sys.stderr, flush=True)
        raise SystemExit(2)


# ---------------------------------------------------------------------------------------------
# value checks for argparse's ``type=`` (they reuse kacnum.core.checks; the flag name is added by argparse)

_NAME = "\x00"  # placeholder parameter name, removed from the library's message


def _lib_check(fn: Callable, *args):
    try:
        return fn(_NAME, *args)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e).replace(_NAME + " ", "").replace(_NAME, "value")) from None


def _parse_int(text) -> int:
    try:
        return int(str(text).strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be an integer, got {text!r}") from None


def _parse_float(text) -> float:
    try:
        return float(str(text).strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a number, got {text!r}") from None


def int_at_least(minimum: int) -> Callable[[str], int]:
    """``type=`` for an integer ``>= minimum`` (message: ``must be an integer >= 1, got 0``)."""

    def parse(text: str) -> int:
        return _lib_check(_checks.check_int, _parse_int(text), minimum)

    parse.__name__ = f"integer >= {minimum}"
    return parse


positive_int = int_at_least(1)
nonnegative_int = int_at_least(0)


def positive_float(text: str) -> float:
    """``type=`` for a finite number > 0."""
    return _lib_check(_checks.check_positive, _parse_float(text))


def nonnegative_float(text: str) -> float:
    """``type=`` for a finite number >= 0."""
    return _lib_check(_checks.check_nonnegative, _parse_float(text))


def finite_float(text: str) -> float:
    """``type=`` for any finite number (no nan, no inf)."""
    return _lib_check(_checks.check_finite_number, _parse_float(text))


def float_in(low: float, high: float, low_open: bool = False, high_open: bool = False) -> Callable[[str], float]:
    """``type=`` for a finite number in ``[low, high]`` (``low_open``/``high_open``: that end excluded)."""
    lo_b, hi_b = "(" if low_open else "[", ")" if high_open else "]"

    def parse(text: str) -> float:
        v = _parse_float(text)
        ok = math.isfinite(v) and (v > low if low_open else v >= low) and (v < high if high_open else v <= high)
        if not ok:
            raise argparse.ArgumentTypeError(f"must be a number in {lo_b}{low:g}, {high:g}{hi_b}, got {text!r}")
        return v

    parse.__name__ = f"number in {lo_b}{low:g}, {high:g}{hi_b}"
    return parse


def _split(text: str) -> list:
    return [v.strip() for v in str(text).split(",") if v.strip()]


def int_list(minimum: int = 1, decreasing: bool = False) -> Callable[[str], tuple]:
    """``type=`` for ``"100,20,4"``: a non-empty tuple of integers ``>= minimum`` (strictly decreasing
    if asked)."""

    def parse(text: str) -> tuple:
        parts = _split(text)
        if not parts:
            raise argparse.ArgumentTypeError(f"must be a comma-separated list of integers, got {text!r}")
        try:
            vals = tuple(int(v) for v in parts)
        except ValueError:
            raise argparse.ArgumentTypeError(f"must be a comma-separated list of integers, got {text!r}") from None
        if any(v < minimum for v in vals):
            raise argparse.ArgumentTypeError(f"must hold integers >= {minimum}, got {text!r}")
        if decreasing and any(b >= a for a, b in zip(vals, vals[1:])):
            raise argparse.ArgumentTypeError(f"must be strictly decreasing, got {text!r}")
        return vals

    parse.__name__ = "list of integers"
    return parse


def float_list(low: float = -math.inf, high: float = math.inf) -> Callable[[str], tuple]:
    """``type=`` for ``"1.0,1.2,1.5"``: a non-empty tuple of finite numbers in ``[low, high]``."""

    def parse(text: str) -> tuple:
        parts = _split(text)
        try:
            vals = tuple(float(v) for v in parts)
        except ValueError:
            raise argparse.ArgumentTypeError(f"must be a comma-separated list of numbers, got {text!r}") from None
        if not vals:
            raise argparse.ArgumentTypeError(f"must be a comma-separated list of numbers, got {text!r}")
        bad = [p for p, v in zip(parts, vals) if not (math.isfinite(v) and low <= v <= high)]
        if bad:
            rng = "finite numbers" if (low, high) == (-math.inf, math.inf) else f"numbers in [{low:g}, {high:g}]"
            raise argparse.ArgumentTypeError(f"must hold {rng}, got {bad[0]!r} in {text!r}")
        return vals

    parse.__name__ = "list of numbers"
    return parse


def choice_list(choices: Sequence[str]) -> Callable[[str], tuple]:
    """``type=`` for ``"a,b"``: a non-empty tuple drawn from ``choices``."""

    def parse(text: str) -> tuple:
        vals = tuple(_split(text))
        bad = [v for v in vals if v not in choices]
        if not vals or bad:
            raise argparse.ArgumentTypeError(f"must be a comma-separated subset of {','.join(choices)}, "
                                             f"got {text!r}")
        return vals

    parse.__name__ = "list of names"
    return parse


# ---------------------------------------------------------------------------------------------
# checks after parsing


def check_out_dir(path, flag: str = "--out") -> Path:
    """Refuse an output folder that cannot be written, without creating anything.

    ``path`` may exist (it must be a folder we can create files in) or not (its nearest existing
    ancestor must be a folder we can create folders in). Raises :class:`UsageError` naming ``flag``:
    ``--out runs/x is a file, not a folder``, ``--out /ro/x cannot be written (Read-only file system)``.
    """
    p = Path(path).expanduser()
    if p.exists() and not p.is_dir():
        raise UsageError(f"{flag} {path} is a file, not a folder; name a folder (it is created if missing)")
    probe = p
    while not probe.exists():
        if probe.parent == probe:
            break
        probe = probe.parent
    if probe.exists() and not probe.is_dir():
        raise UsageError(f"{flag} {path}: {probe} is a file, not a folder")
    try:
        if p.is_dir():
            with tempfile.TemporaryFile(dir=p):
                pass
        else:
            os.rmdir(tempfile.mkdtemp(prefix=".kacnum-probe-", dir=probe))
    except OSError as e:
        raise UsageError(f"{flag} {path} cannot be written ({e.strerror or e}); choose another folder") from None
    return p


def check_input_file(path, flag: str, hint: str = "") -> Path:
    """Refuse a missing input file: ``--run x lacks x/teacher/checkpoint.pt`` style messages."""
    p = Path(path).expanduser()
    if not p.is_file():
        raise UsageError(f"{flag}: no file {path}{'; ' + hint if hint else ''}")
    return p


def check_device(device: Optional[str], flag: str = "--device") -> Optional[str]:
    """``None``/``"auto"``/``"cpu"``, or a CUDA (or MPS) device that this torch can use; else
    :class:`UsageError` naming ``flag`` and what is available."""
    if device is None or device == "auto":
        return device
    import torch

    try:
        d = torch.device(device)
    except (RuntimeError, ValueError, TypeError):
        raise UsageError(f"{flag} {device!r} is not a device name; use cpu, cuda or cuda:N") from None
    if d.type == "cpu":
        return device
    if d.type == "cuda":
        if not torch.cuda.is_available():
            why = ("this torch build has no CUDA support" if torch.version.cuda is None
                   else f"torch (CUDA {torch.version.cuda}) finds no usable GPU")
            raise UsageError(f"{flag} {device}: CUDA is not available ({why}, torch {torch.__version__}); "
                             f"use --device cpu")
        n = torch.cuda.device_count()
        if d.index is not None and d.index >= n:
            raise UsageError(f"{flag} {device}: only {n} CUDA device(s) (cuda:0..cuda:{n - 1})")
        return device
    if d.type == "mps":
        mps = getattr(torch.backends, "mps", None)
        if mps is None or not mps.is_available():
            raise UsageError(f"{flag} {device}: MPS is not available; use --device cpu")
        return device
    raise UsageError(f"{flag} {device}: only cpu and cuda devices are supported")


def renamed(message: str, names: Mapping[str, str]) -> str:
    """Replace library parameter names in ``message`` by flag names (whole words only)."""
    for name, flag in sorted(names.items(), key=lambda kv: -len(kv[0])):
        message = re.sub(rf"(?<![\w-]){re.escape(name)}(?!\w)", flag, message)
    return message


def flag_error(flag: str, err: Exception) -> UsageError:
    """A :class:`UsageError` for ``flag`` from a library ``ValueError`` whose message starts with the
    parameter's name (``stages must be ...`` -> ``--schedule must be ...``)."""
    msg = one_line(str(err))
    m = re.match(r"[A-Za-z_][\w.]*(?=[\s:(])", msg)
    msg = flag + msg[m.end():] if m else f"{flag}: {msg}"
    return UsageError(msg)


def flag_check(flag: str, fn: Callable, *args, **kwargs):
    """``fn(*args, **kwargs)``; a ``ValueError`` it raises becomes :func:`flag_error` of ``flag``."""
    try:
        return fn(*args, **kwargs)
    except UsageError:
        raise
    except ValueError as e:
        raise flag_error(flag, e) from None


# ---------------------------------------------------------------------------------------------
# threads


def _cgroup_cpus() -> Optional[float]:
    """CPUs allowed by a cgroup v2 (``cpu.max``) or v1 (``cfs_quota_us``) quota; None if unlimited."""
    try:
        quota, period = Path("/sys/fs/cgroup/cpu.max").read_text().split()[:2]
        if quota != "max":
            return int(quota) / int(period)
    except (OSError, ValueError):
        pass
    try:
        q = int(Path("/sys/fs/cgroup/cpu/cpu.cfs_quota_us").read_text())
        p = int(Path("/sys/fs/cgroup/cpu/cpu.cfs_period_us").read_text())
        if q > 0 and p > 0:
            return q / p
    except (OSError, ValueError):
        pass
    return None


def _available_cpus() -> list:
    try:
        return sorted(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - macOS, Windows
        return list(range(os.cpu_count() or 1))


def physical_cores() -> int:
    """Physical cores this process may use: logical CPUs of its affinity mask grouped by
    (package, core) from sysfs (hyper-threads of one core count once), capped by a cgroup CPU quota;
    at least 1."""
    cpus = _available_cpus()
    cores = set()
    for c in cpus:
        topo = Path(f"/sys/devices/system/cpu/cpu{c}/topology")
        try:
            cores.add((topo.joinpath("physical_package_id").read_text().strip(),
                       topo.joinpath("core_id").read_text().strip()))
        except OSError:
            cores.add(("cpu", str(c)))
    n = len(cores) or len(cpus) or 1
    quota = _cgroup_cpus()
    if quota is not None:
        n = min(n, max(1, math.ceil(quota)))
    return max(1, n)


def default_threads() -> int:
    """The thread default: :func:`physical_cores`."""
    return physical_cores()


def load_warning(threads: int) -> Optional[str]:
    """A warning text if ``threads`` exceeds the logical CPUs this process may use, or the 1-minute load
    average leaves fewer idle ones than ``threads``; else None."""
    try:
        load = os.getloadavg()[0]
    except (AttributeError, OSError):  # pragma: no cover - no load average on this OS
        return None
    cpus = len(_available_cpus())
    if threads > cpus:
        return f"{threads} threads on {cpus} CPU(s): more threads than CPUs slows torch down"
    if load + threads > cpus + 0.5:
        return (f"machine busy: load average {load:.1f} on {cpus} CPU(s) before this run; "
                f"{threads} thread(s) will compete with other jobs (pass --threads 1 to limit the damage)")
    return None


def resolve_threads(threads: Optional[int], flag: str = "--threads", warn: bool = True) -> int:
    """The thread count to use: ``threads`` if given (an integer >= 1, else :class:`UsageError`), else
    :func:`default_threads`, lowered to 1 (with a one-line warning on stderr) when the load average
    says the cores are taken. An explicit count on a busy machine only warns."""
    if threads is not None:
        if isinstance(threads, bool) or not isinstance(threads, int) or threads < 1:
            raise UsageError(f"{flag} must be an integer >= 1, got {threads!r}")
        msg = load_warning(threads) if warn and threads > 1 else None
        if msg:
            print(f"warning: {msg}", file=sys.stderr, flush=True)
        return threads
    n = default_threads()
    msg = load_warning(n) if warn else None
    if msg and n > 1:
        print(f"warning: {msg.split(';')[0]}; using 1 thread instead of {n} (pass {flag} N to choose)",
              file=sys.stderr, flush=True)
        return 1
    return n


# ---------------------------------------------------------------------------------------------
# running a main function


def describe_error(e: BaseException) -> tuple:
    """``(exit status, one line)`` for an exception that ended a command."""
    from kacnum.core.checkpoint import CheckpointError

    if isinstance(e, UsageError):
        return 2, f"error: {one_line(e)}"
    if isinstance(e, CheckpointError):
        return 1, f"error: {one_line(e)}"
    if isinstance(e, FileNotFoundError) and isinstance(e, ValueError):  # kacnum.images.data.DataNotFoundError
        return 2, f"missing data: {one_line(e)}"
    if isinstance(e, ValueError):
        return 2, f"error: {one_line(e)}"
    if isinstance(e, MemoryError):
        return 1, "error: out of memory (MemoryError); lower the batch size or the number of samples"
    if isinstance(e, OSError):
        what = e.strerror or str(e) or type(e).__name__
        where = f": {e.filename}" if e.filename else ""
        return 1, f"error: {one_line(what)}{where} ({type(e).__name__})"
    text = one_line(e) or "(no message)"
    return 1, f"error: {type(e).__name__}: {text} (rerun with --debug for the traceback)"


@contextlib.contextmanager
def _one_line_warnings():
    def show(message, category, filename, lineno, file=None, line=None):
        print(f"warning: {one_line(message)}", file=sys.stderr if file is None else file, flush=True)

    with warnings.catch_warnings():  # restores the filters and showwarning afterwards
        warnings.simplefilter("default")
        warnings.showwarning = show
        yield


def run_main(main: Callable[[Optional[Sequence[str]]], object], argv: Optional[Iterable[str]] = None) -> int:
    """Call ``main(argv)`` (default ``sys.argv[1:]``) and return an exit status.

    ``main``'s own return value: an ``int`` is the status, anything else (a results dict) means 0; a
    ``SystemExit`` (argparse's ``--help`` or its one-line error) gives its code.
    An exception becomes one line on stderr (:func:`describe_error`): status 2 for :class:`UsageError`,
    other ``ValueError``\\ s (the library's checks) and missing data, 1 for anything else;
    ``KeyboardInterrupt`` gives 130. With ``--debug`` in ``argv`` or ``KACNUM_DEBUG=1`` the exception
    propagates with its traceback. Warnings are printed as one ``warning: ...`` line each.
    """
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in argv or os.environ.get("KACNUM_DEBUG", "") not in ("", "0")
    with _one_line_warnings():
        try:
            status = main(argv)
        except KeyboardInterrupt:
            if debug:
                raise
            print("interrupted", file=sys.stderr, flush=True)
            return 130
        except SystemExit as e:  # argparse (--help: 0, a bad value: 2) or the script's own sys.exit
            if e.code is None or isinstance(e.code, int):
                return int(e.code or 0)
            print(one_line(e.code), file=sys.stderr, flush=True)
            return 1
        except Exception as e:  # noqa: BLE001 - the point of this function
            if debug:
                raise
            code, line = describe_error(e)
            print(line, file=sys.stderr, flush=True)
            return code
    return status if isinstance(status, int) and not isinstance(status, bool) else 0
