"""Progress of long loops that works in a terminal and in a log file.

``Progress(total, desc)`` shows a tqdm bar when its stream (stderr by default) is a terminal. When it is
not (output redirected to a file, ``nohup``, a batch job) it writes plain lines instead, the first after
the first step and then every ``every_steps`` steps or ``every_seconds`` seconds, whichever comes first,
and one when the loop ends::

    [train] step 150/3000 (5%)  2.31 step/s  loss 0.1234  img/s 148  elapsed 1m05s  ETA 20m33s

``KACNUM_PROGRESS=bar|log|off`` forces a mode; ``KACNUM_PROGRESS_SECONDS`` sets the default interval
(30 s). ``enabled=False`` (``--quiet``, non-zero DDP ranks) shows nothing.
"""
from __future__ import annotations

import math
import os
import sys
import time
from typing import IO, Iterable, Iterator, Optional

__all__ = ["Progress", "format_seconds"]


def format_seconds(s: float) -> str:
    """``75.2`` -> ``1m15s``; ``4000`` -> ``1h06m``; ``nan`` -> ``?``."""
    if not math.isfinite(s) or s < 0:
        return "?"
    s = int(round(s))
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    return f"{s // 3600}h{(s % 3600) // 60:02d}m"


def _isatty(stream) -> bool:
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):
        return False


def _fmt(v) -> str:
    if isinstance(v, float):
        return f"{v:.4g}"
    return str(v)


class Progress:
    """A progress display for ``total`` steps starting at ``initial`` (module docstring).

    Use ``update(n)`` after each step (or iterate with :meth:`iterate`), ``set_postfix(loss=...)`` for
    the values shown next to the rate, ``close()`` at the end (also a context manager).
    """

    def __init__(self, total: int, desc: str, initial: int = 0, enabled: bool = True, unit: str = "step",
                 stream: Optional[IO] = None, every_steps: Optional[int] = None,
                 every_seconds: Optional[float] = None, mode: Optional[str] = None):
        self.total, self.desc, self.unit = int(total), desc, unit
        self.n = self.initial = int(initial)
        self.stream = sys.stderr if stream is None else stream
        mode = mode or os.environ.get("KACNUM_PROGRESS") or None
        if not enabled:
            mode = "off"
        elif mode not in ("bar", "log", "off"):
            mode = "bar" if _isatty(self.stream) else "log"
        self.mode = mode
        left = max(1, self.total - self.initial)
        self.every_steps = int(every_steps) if every_steps else max(1, left // 10)
        if every_seconds is None:
            every_seconds = float(os.environ.get("KACNUM_PROGRESS_SECONDS", "30"))
        self.every_seconds = float(every_seconds)
        self.postfix: dict = {}
        self._t0 = self._t_last = time.perf_counter()
        self._first = None  # (time, n) at the first update: the rate excludes set-up before the first step
        self._n_last = self.initial
        self._lines = 0
        self._closed = False
        self._bar = None
        if self.mode == "bar":
            from tqdm.auto import tqdm

            self._bar = tqdm(total=self.total, initial=self.initial, desc=desc, leave=False, file=self.stream,
                             unit=unit)

    # -- reporting -----------------------------------------------------------------------------

    def line(self, final: bool = False) -> str:
        """The text of one log line for the current state."""
        now = time.perf_counter()
        elapsed = now - self._t0
        done = self.n - self.initial
        rate = done / elapsed if elapsed > 0 and done > 0 else float("nan")
        if self._first is not None and self.n > self._first[1] and now > self._first[0]:
            # steady rate since the first step: a slow set-up (a roll-out pool, a cache) must not inflate the ETA
            rate = (self.n - self._first[1]) / (now - self._first[0])
        pct = f" ({100.0 * self.n / self.total:.0f}%)" if self.total > 0 else ""
        count = f"{self.n}/{self.total}" if self.total > 0 else f"{self.n}"  # total <= 0: not known
        parts = [f"[{self.desc}] {self.unit} {count}{pct}"]
        parts.append(f"{rate:.3g} {self.unit}/s" if math.isfinite(rate) else f"? {self.unit}/s")
        parts += [f"{k} {_fmt(v)}" for k, v in self.postfix.items()]
        parts.append(f"elapsed {format_seconds(elapsed)}")
        if final:
            parts.append("done")
        elif self.total > 0:
            eta = (self.total - self.n) / rate if math.isfinite(rate) and rate > 0 else float("nan")
            parts.append(f"ETA {format_seconds(eta)}")
        return "  ".join(parts)

    def _emit(self, final: bool = False) -> None:
        print(self.line(final), file=self.stream, flush=True)
        self._lines += 1
        self._t_last, self._n_last = time.perf_counter(), self.n

    def update(self, n: int = 1) -> None:
        self.n += int(n)
        if self._first is None:
            self._first = (time.perf_counter(), self.n)
        if self.mode == "bar":
            self._bar.update(n)
        elif self.mode == "log" and self.n < self.total:
            if (self._lines == 0 or self.n - self._n_last >= self.every_steps
                    or time.perf_counter() - self._t_last >= self.every_seconds):
                self._emit()

    def set_postfix(self, **values) -> None:
        """Values shown after the rate (``loss=0.12``): floats are printed with 4 significant digits."""
        self.postfix.update(values)
        if self.mode == "bar":
            self._bar.set_postfix({k: _fmt(v) for k, v in self.postfix.items()}, refresh=False)

    def iterate(self, iterable: Iterable) -> Iterator:
        """Yield from ``iterable`` and count one step per item after the caller's loop body ran."""
        for item in iterable:
            yield item
            self.update(1)

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        if self.mode == "bar":
            self._bar.close()
        elif self.mode == "log" and self.n > self.initial:
            self._emit(final=True)

    def __enter__(self) -> "Progress":
        return self

    def __exit__(self, *exc) -> bool:
        self.close()
        return False
