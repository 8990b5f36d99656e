"""Benchmark: drawing K_t, the default sampler against an inverse-CDF table, Poisson–Beta, events, rand.

Goal: in one run on this machine, float32, ``rows × cols`` coordinates (256 × 3072 = a batch of
256 3×32×32 images), a = 9, c = 3, one time ``t ~ U(0, 1)`` per row, the default sampler
(``KacProcess.sample``, ``rowwise_icdf``) at least as fast as an inverse-CDF table sampler of the original
Kac-flow code's size (50001 times × 4097 quantile levels, float32, bilinear interpolation), with no
set-up and under 1% of its memory, and an exact law (sup-norm CDF error ≤ 1e-6, atoms exact).

Samplers, side by side (the timed calls are interleaved round-robin; minimum over ``--repeats``):

* ``default``: ``KacProcess.sample(t, (rows, cols))`` (one uniform per coordinate through a per-row
  quantile table built in the call); ``default+atoms`` also returns the atom mask (what training uses);
* ``poisson_beta``: ``method="poisson_beta"`` (``torch.poisson`` + two ``torch._standard_gamma``);
* ``table``: :class:`TableSampler`, written here after the original code: a ``(n_t, 4097)`` float32
  table of the quantiles of the continuous part of ``|K_t|`` at levels ``j/4096`` (built here from our
  exact law), per coordinate a mixture draw (atom with probability ``e^{-at}``), bilinear interpolation
  in ``(t, u)`` with the continuous uniform clamped to ``4095/4096`` (the original's clamp: the top
  1/4096 quantile collapses onto one point), and a random sign: three uniforms per coordinate;
* ``events``: the event-driven simulation (``KacProcess.simulate_paths``, exponential holding times),
  one call per row;
* ``rand``: ``torch.rand`` of the same size (the floor).

Also: the set-up time and memory of the table, the peak extra memory of one call of each sampler
(``ru_maxrss`` growth in a fresh subprocess), the KS distance of ``--ks-draws`` draws to the exact CDF
for (a, c, t) in {(9, 3, 0.3), (9, 3, 1), (25, 2, 1), (900, 10, 1)}, and the population of the
outermost shell below the cone, ``ct(1 - 1/4096) ≤ |K| < ct``, against its exact mass.

    python benchmarks/bench_sampler.py [--out benchmarks/results/sampler.json] [--table-t 5001]
"""
from __future__ import annotations

import argparse
import json
import math
import os
import platform
import resource
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Dict, Optional, Tuple

sys.path.insert(0, str(Path(__file__).resolve().parent))

import torch  # noqa: E402

from _bench import ImageBatch, write_json  # noqa: E402
from kacnum.processes.kac import KacProcess  # noqa: E402

KS_SETS = ((9.0, 3.0, 0.3), (9.0, 3.0, 1.0), (25.0, 2.0, 1.0), (900.0, 10.0, 1.0))
SHELL = 1.0 / 4096.0


@dataclass(frozen=True)
class BenchConfig(ImageBatch):
    t_max: float = 1.0
    table_t: int = 50001
    table_levels: int = 4097
    repeats: int = 7
    threads: int = 2
    seed: int = 0
    ks_draws: int = 1_000_000
    ks_sets: Tuple[Tuple[float, float, float], ...] = field(default=KS_SETS)
    events: bool = True
    memory: bool = True


class TableSampler:
    """Inverse-CDF table sampler of the original Kac-flow code's kind (a baseline, not for use).

    Table ``Q[i, j]``: the quantile at level ``u_j = j / (L - 1)`` of the continuous part of ``|K_t|`` at
    ``t_i = t0 + i dt`` (float32, ``n_t × L``), built from our exact law (per time: the 64-cell CDF table
    of ``KacProcess._abs_table`` inverted by ``_invert_abs_table``, accurate to ~1e-7). A draw: atom
    ``±ct`` with probability ``e^{-at}``, else bilinear interpolation of ``Q`` in ``(t, u)`` with ``u``
    clamped to ``(L - 2)/(L - 1)``, times a random sign.
    """

    def __init__(self, a: float, c: float, t0: float, t_max: float, n_t: int, levels: int, chunk: int = 256):
        self.a, self.c = float(a), float(c)
        self.t0, self.n_t, self.levels = float(t0), int(n_t), int(levels)
        self.dt = (float(t_max) - self.t0) / (self.n_t - 1)
        kp = KacProcess(a, c)
        grid = self.t0 + self.dt * torch.arange(self.n_t, dtype=torch.float64)
        u = torch.linspace(0.0, 1.0, self.levels, dtype=torch.float64)
        self.table = torch.zeros(self.n_t, self.levels, dtype=torch.float32)
        for s in range(0, self.n_t, chunk):
            t = grid[s : s + chunk]
            alive = t * self.a > 1e-12
            if alive.any():
                ta = t[alive]
                h, C, D, D1 = kp._abs_table(ta)
                mass = -torch.expm1(-self.a * ta)[:, None]
                y, _ = kp._invert_abs_table(h, C, D, D1, (mass * u[None, :]).clamp(max=C[:, -1:]))
                self.table[s : s + chunk][alive] = y.float()
        self.t_grid = grid.float()

    @property
    def nbytes(self) -> int:
        return self.table.numel() * self.table.element_size()

    def sample(self, t_rows: torch.Tensor, cols: int, generator: Optional[torch.Generator] = None) -> torch.Tensor:
        """``(rows, cols)`` draws, one time per row (``t_rows: (rows,)``), everything per coordinate."""
        rows = t_rows.shape[0]
        n = rows * cols
        L = self.levels
        t = t_rows.float().repeat_interleave(cols)
        mix_u = torch.rand(n, generator=generator)
        cont_u = torch.rand(n, generator=generator)
        is_atom = mix_u < torch.exp(-self.a * t)
        i = ((t - self.t0) / self.dt).floor().long().clamp_(0, self.n_t - 2)
        alpha = (t - self.t_grid[i]) / self.dt
        pos = cont_u.clamp_(max=(L - 2) / (L - 1)).mul_(L - 1)
        j = pos.floor().long()
        frac = pos - j
        flat = self.table.view(-1)
        base = i * L + j
        q00, q01 = flat[base], flat[base + 1]
        q10, q11 = flat[base + L], flat[base + L + 1]
        lo = q00 + frac * (q01 - q00)
        hi = q10 + frac * (q11 - q10)
        mag = torch.where(is_atom, self.c * t, lo + alpha * (hi - lo))
        sign = torch.where(torch.rand(n, generator=generator) < 0.5, -1.0, 1.0)
        return (sign * mag).view(rows, cols)


def event_sample(kp: KacProcess, t_rows: torch.Tensor, cols: int, generator=None) -> torch.Tensor:
    """Event-driven simulation, one ``simulate_paths`` call (``cols`` paths) per row, float32."""
    out = torch.empty(t_rows.shape[0], cols, dtype=torch.float32)
    for r, t in enumerate(t_rows.tolist()):
        out[r] = kp.simulate_paths([t], cols, generator=generator, dtype=torch.float32).positions[:, 0]
    return out


def ks_distance(F: Callable, ct: float, atom_mass: float, x: torch.Tensor, atoms: torch.Tensor) -> float:
    """``sup_x |F_n(x) - F(x)|`` with atoms at ``±ct``; draws flagged by ``atoms`` are put at ``±ct`` (float64)."""
    x = x.double().reshape(-1)
    x = torch.where(atoms.reshape(-1), torch.sign(x) * ct, x)
    xs = torch.sort(x).values
    n = xs.numel()
    Fx = F(xs)
    jump = torch.where(xs.abs() == ct, torch.full_like(Fx, atom_mass / 2), torch.zeros_like(Fx))
    i = torch.arange(1, n + 1, dtype=torch.float64)
    return float(torch.maximum(i / n - Fx, Fx - jump - (i - 1) / n).max())


def shell_mass(kp: KacProcess, t: torch.Tensor) -> torch.Tensor:
    """Exact mass of ``ct(1 - 1/4096) ≤ |K_t| < ct`` (both sides), float64, ``t: (R,)``."""
    t = t.double()
    inner = kp.cdf(t, kp.c * t * (1.0 - SHELL))
    return 2.0 * ((1.0 - 0.5 * torch.exp(-kp.a * t)) - inner)


def shell_mass_of_map(kp: KacProcess, t: float, cap: int = 4_000_000) -> Optional[float]:
    """Mass the default float32 sampler puts in the shell, without sampling noise.

    ``torch.rand`` draws multiples of ``2^-24``; the positive shell is the image of the top of the
    continuous range of ``v``, so we map every such ``v`` below ``1 - e^{-at}/2`` (down to past the shell)
    and count. The negative side is the mirror image. ``None`` if more than ``cap`` values are needed.
    """
    e = math.exp(-kp.a * t)
    width = 2.0 * float(shell_mass(kp, torch.tensor([t]))[0]) + 1e-5
    count = int(width * 2**24) + 2
    if count > cap:
        return None
    top = math.floor((1.0 - e / 2) * 2**24)
    v = ((top - torch.arange(count, dtype=torch.float64)) / 2**24).float()[None, :]
    k, atoms = kp._icdf_rows(torch.tensor([t], dtype=torch.float32), v)
    ct = kp.c * torch.tensor(t, dtype=torch.float32)
    inside = (k.abs() >= ct * (1.0 - SHELL)) & ~atoms
    assert not bool(inside[0, -1]), "the scan did not reach below the shell"
    return 2.0 * int(inside.sum()) / 2**24


def shell_count(x: torch.Tensor, ct: torch.Tensor, atoms: torch.Tensor) -> int:
    ax = x.abs()
    return int(((ax >= ct * (1.0 - SHELL)) & (ax < ct) & ~atoms).sum())


def timed(fn: Callable) -> Tuple[float, float]:
    w, c = time.perf_counter(), time.process_time()
    fn()
    return time.perf_counter() - w, time.process_time() - c


def maxrss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # Linux: KiB


def probe_memory(name: str, cfg: BenchConfig) -> None:
    """Run in a fresh process: peak RSS growth over three calls of one sampler (printed as JSON)."""
    torch.set_num_threads(cfg.threads)
    kp = KacProcess(cfg.a, cfg.c)
    g = torch.Generator().manual_seed(cfg.seed)

    # a small table built in small chunks, so that the build does not set the high-water mark
    table = TableSampler(cfg.a, cfg.c, 0.0, cfg.t_max, 101, cfg.table_levels, chunk=2) if name == "table" else None

    def call(rows, cols):
        t = torch.rand(rows, 1, generator=g) * cfg.t_max
        shape = (rows, cols)
        if name == "rand":
            return torch.rand(shape, generator=g)
        if name == "table":  # per-call temporaries only; the table itself is counted separately
            return table.sample(t.reshape(-1), cols, generator=g)
        if name == "poisson_beta":
            return kp.sample(t, shape, generator=g, method="poisson_beta")
        return kp.sample(t, shape, generator=g, return_atoms=name == "default+atoms")

    call(2, 256)  # load the code paths (libraries, thread pools) on a tiny problem first
    before = maxrss_mb()
    for _ in range(3):
        out = call(cfg.rows, cfg.cols)
        del out
    print(json.dumps({"name": name, "peak_extra_mb": maxrss_mb() - before}))


def run(cfg: BenchConfig) -> Dict:
    torch.set_num_threads(cfg.threads)
    res: Dict = {"config": asdict(cfg)}
    res["machine"] = {
        "platform": platform.platform(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "cpus": os.cpu_count(),
        "loadavg_start": os.getloadavg(),
    }
    n = cfg.rows * cfg.cols
    out_mb = n * 4 / 2**20

    # ---- memory probes first, each in a fresh process (ru_maxrss is a high-water mark)
    mem: Dict[str, float] = {}
    if cfg.memory:
        for name in ("rand", "default", "default+atoms", "poisson_beta", "table"):
            cmd = [sys.executable, os.path.abspath(__file__), "--probe", name, "--threads", str(cfg.threads),
                   "--rows", str(cfg.rows), "--cols", str(cfg.cols)]
            r = subprocess.run(cmd, capture_output=True, text=True, check=True)
            mem[name] = json.loads(r.stdout.strip().splitlines()[-1])["peak_extra_mb"]

    kp = KacProcess(cfg.a, cfg.c)
    g = torch.Generator().manual_seed(cfg.seed)
    t_rows = torch.rand(cfg.rows, generator=g) * cfg.t_max
    t_col = t_rows[:, None]
    shape = (cfg.rows, cfg.cols)

    # ---- the table: set-up time and memory
    rss0 = maxrss_mb()
    w0 = time.perf_counter()
    table = TableSampler(cfg.a, cfg.c, 0.0, cfg.t_max, cfg.table_t, cfg.table_levels)
    res["table_setup"] = {
        "shape": [cfg.table_t, cfg.table_levels],
        "seconds": time.perf_counter() - w0,
        "table_mb": table.nbytes / 2**20,
        "build_peak_rss_growth_mb": maxrss_mb() - rss0,
    }
    print(f"table {cfg.table_t}×{cfg.table_levels}: set-up {res['table_setup']['seconds']:.1f} s, "
          f"{res['table_setup']['table_mb']:.0f} MB", flush=True)

    # ---- throughput, interleaved round-robin
    samplers = {
        "rand": lambda: torch.rand(shape, generator=g),
        "default": lambda: kp.sample(t_col, shape, generator=g),
        "default+atoms": lambda: kp.sample(t_col, shape, generator=g, return_atoms=True),
        "table": lambda: table.sample(t_rows, cfg.cols, generator=g),
        "poisson_beta": lambda: kp.sample(t_col, shape, generator=g, method="poisson_beta"),
    }
    if cfg.events:
        samplers["events"] = lambda: event_sample(kp, t_rows, cfg.cols, generator=g)
    build = lambda: kp._quantile_table(t_rows, torch.float32)
    for f in list(samplers.values()) + [build]:
        f()  # warm-up
    walls: Dict[str, list] = {k: [] for k in samplers}
    cpus: Dict[str, list] = {k: [] for k in samplers}
    builds = []
    for _ in range(cfg.repeats):
        for k, f in samplers.items():
            if k == "events" and len(walls[k]) >= 2:
                continue  # slow and far behind: two timings are enough
            w, c = timed(f)
            walls[k].append(w)
            cpus[k].append(c)
        builds.append(timed(build)[0])
    thr = {}
    for k in samplers:
        wmin = min(walls[k])
        thr[k] = {
            "Mcoords_per_s": n / wmin / 1e6,
            "wall_ms_min": 1e3 * wmin,
            "wall_ms_median": 1e3 * sorted(walls[k])[len(walls[k]) // 2],
            "cpu_ms_min": 1e3 * min(cpus[k]),
        }
    res["throughput"] = thr
    res["default_row_table_build_ms_min"] = 1e3 * min(builds)
    speed = {k: v["Mcoords_per_s"] for k, v in thr.items()}
    res["ratios"] = {
        "default/table": speed["default"] / speed["table"],
        "default+atoms/table": speed["default+atoms"] / speed["table"],
        "default/rand": speed["default"] / speed["rand"],
        "default/poisson_beta": speed["default"] / speed["poisson_beta"],
        **({"default/events": speed["default"] / speed["events"]} if "events" in speed else {}),
    }
    if cfg.memory:
        mem["table_per_call"] = mem.pop("table")
        mem["table"] = res["table_setup"]["table_mb"] + mem["table_per_call"]  # the table + one call's temporaries
        res["memory_mb"] = {
            "peak_extra_per_call": mem,
            "how": "ru_maxrss growth over three calls in a fresh process (after a tiny warm-up call); "
                   "includes the output and what the allocator keeps; table = its tensor + one call's growth",
            "output_mb": out_mb,
            "persistent": {"default": 0.0, "table": res["table_setup"]["table_mb"]},
            "default_row_tables_mb": cfg.rows * (kp.quantile_cells + 2) * 4 * 4 / 2**20,
            "default_vs_table": mem["default"] / mem["table"],
            "default+atoms_vs_table": mem["default+atoms"] / mem["table"],
        }
    res["loadavg_after_timing"] = os.getloadavg()
    print(f"{'sampler':<15}{'M coords/s':>12}{'wall min ms':>13}{'median':>9}{'cpu ms':>9}")
    for k, v in thr.items():
        print(f"{k:<15}{v['Mcoords_per_s']:>12.1f}{v['wall_ms_min']:>13.2f}{v['wall_ms_median']:>9.2f}{v['cpu_ms_min']:>9.2f}")
    print("ratios: " + ", ".join(f"{k} {v:.2f}" for k, v in res["ratios"].items()))
    print(f"per-call row-table build of the default sampler: {res['default_row_table_build_ms_min']:.2f} ms")
    if cfg.memory:
        print("peak extra memory per call (MB): " + ", ".join(f"{k} {v:.1f}" for k, v in mem.items())
              + f"; default/table {res['memory_mb']['default_vs_table']:.4f}")

    # ---- the outermost shell on the benchmark batch
    x_def, at_def = kp.sample(t_col, shape, generator=g, return_atoms=True)
    x_tab = table.sample(t_rows, cfg.cols, generator=g)
    ct32 = (cfg.c * t_rows.float())[:, None]
    expected = float(shell_mass(kp, t_rows).sum()) * cfg.cols
    res["shell_batch"] = {
        "expected": expected,
        "default": shell_count(x_def, ct32, at_def),
        "table": shell_count(x_tab, ct32, x_tab.abs() >= ct32),
    }
    print(f"shell ct(1-1/4096) <= |K| < ct on the batch: expected {expected:.0f}, default "
          f"{res['shell_batch']['default']}, table {res['shell_batch']['table']}")
    del table

    # ---- KS and shells at fixed (a, c, t)
    ks = []
    m = cfg.ks_draws
    for a, c, t in cfg.ks_sets:
        kp2 = KacProcess(a, c)
        F = kp2._cdf_reference(t)
        e = math.exp(-a * t)
        ct = c * t
        ct32 = c * torch.tensor(t, dtype=torch.float32)
        x1, at1 = kp2.sample(t, (m,), generator=g, return_atoms=True, dtype=torch.float32)
        x2, at2 = kp2.sample(t, (m,), generator=g, return_atoms=True, dtype=torch.float32, method="poisson_beta")
        tab2 = TableSampler(a, c, t, t + cfg.t_max / (cfg.table_t - 1), 2, cfg.table_levels)
        x3 = tab2.sample(torch.tensor([t]), m, generator=g).reshape(-1)
        at3 = x3.abs() >= ct32
        row = {
            "a": a, "c": c, "t": t,
            "ks_default": ks_distance(F, ct, e, x1, at1),
            "ks_poisson_beta": ks_distance(F, ct, e, x2, at2),
            "ks_table": ks_distance(F, ct, e, x3, at3),
            "ks_1pct_critical": 1.628 / math.sqrt(m),
            "atom_fraction_default": float(at1.double().mean()),
            "atom_mass": e,
            "shell_expected": float(shell_mass(kp2, torch.tensor([t]))[0]) * m,
            "shell_default": shell_count(x1, ct32, at1),
            "shell_poisson_beta": shell_count(x2, ct32, at2),
            "shell_table": shell_count(x3, ct32, at3),
            "shell_mass_exact": float(shell_mass(kp2, torch.tensor([t]))[0]),
            "shell_mass_default_map": shell_mass_of_map(kp2, t),
        }
        ks.append(row)
        print(f"(a,c,t)=({a:g},{c:g},{t:g}): KS×sqrt(n) default {row['ks_default']*math.sqrt(m):.2f}, "
              f"poisson_beta {row['ks_poisson_beta']*math.sqrt(m):.2f}, table {row['ks_table']*math.sqrt(m):.2f} "
              f"(1% critical 1.63); shell expected {row['shell_expected']:.1f}: default {row['shell_default']}, "
              f"poisson_beta {row['shell_poisson_beta']}, table {row['shell_table']}; shell mass exact "
              f"{row['shell_mass_exact']:.3e}, default map {row['shell_mass_default_map']}", flush=True)
    res["ks"] = ks
    # the shell where it holds real mass, without sampling noise (the table puts none there by construction)
    res["shell_mass_small_t"] = []
    for t in (0.02, 0.05, 0.1):
        exact = float(shell_mass(kp, torch.tensor([t]))[0])
        res["shell_mass_small_t"].append({"a": cfg.a, "c": cfg.c, "t": t, "exact": exact,
                                          "default_map": shell_mass_of_map(kp, t), "table": 0.0})
        print(f"shell mass at t={t}: exact {exact:.4e}, default sampler's map {res['shell_mass_small_t'][-1]['default_map']:.4e}, table 0")
    res["loadavg_end"] = os.getloadavg()
    return res


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", default="benchmarks/results/sampler.json")
    p.add_argument("--rows", type=int, default=BenchConfig.rows)
    p.add_argument("--cols", type=int, default=BenchConfig.cols)
    p.add_argument("--table-t", type=int, default=BenchConfig.table_t)
    p.add_argument("--repeats", type=int, default=BenchConfig.repeats)
    p.add_argument("--threads", type=int, default=BenchConfig.threads)
    p.add_argument("--ks-draws", type=int, default=BenchConfig.ks_draws)
    p.add_argument("--no-events", action="store_true")
    p.add_argument("--no-memory", action="store_true")
    p.add_argument("--probe", default=None, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    cfg = BenchConfig(
        rows=args.rows, cols=args.cols, table_t=args.table_t, repeats=args.repeats, threads=args.threads,
        ks_draws=args.ks_draws, events=not args.no_events, memory=not args.no_memory,
    )
    if args.probe:
        probe_memory(args.probe, cfg)
        return
    res = run(cfg)
    write_json(args.out, res)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
