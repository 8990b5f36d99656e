"""Accuracy against wall time for the telegrapher solvers (kacnum.processes.telegrapher).

1D: the kinetic Strang solver against the exact solution (law of K_t convolved with a C³ bump), L1
error and wall time per resolution, and the fitted order. 2D: the central scheme (5-point and
spectral Laplacian) on a Fourier mode with a closed-form damped-oscillator amplitude, max and L1
errors, wall time, order; and the mass the 2D scheme leaks outside the light cone for a radial bump.
Also the L1 distance to the heat equation in the diffusion limit (c²/a fixed, a ↑) and its rate.

    python benchmarks/bench_pde.py [--out benchmarks/results/pde.json]

Writes the JSON (config + results) to --out and a PNG (error against wall time) beside it.
"""
from __future__ import annotations

import argparse
import math
import os
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import List

sys.path.insert(0, str(Path(__file__).resolve().parent))

import torch  # noqa: E402

from _bench import write_json  # noqa: E402
from kacnum.processes.telegrapher import (  # noqa: E402
    bump,
    exact_solution_1d,
    fit_order,
    fourier_mode_solution_2d,
    heat_limit_l1,
    l1_distance,
    mass_outside_cone,
    mass_outside_cone_2d,
    solve_telegrapher_1d,
    solve_telegrapher_2d,
)


@dataclass(frozen=True)
class BenchConfig:
    a: float = 1.0
    c: float = 1.0
    t: float = 1.0
    steps_1d: List[int] = field(default_factory=lambda: [20, 40, 80, 160, 320, 640, 1280])
    cells_2d: List[int] = field(default_factory=lambda: [32, 64, 128, 256])
    mode_2d: List[int] = field(default_factory=lambda: [1, 2])
    a_2d: float = 0.5
    diffusion_a: List[float] = field(default_factory=lambda: [4.0, 16.0, 64.0, 256.0, 1024.0])
    diffusion_sigma2: float = 1.0
    repeats: int = 3
    threads: int = 1


def _best_time(fn, repeats: int):
    best, out = math.inf, None
    for _ in range(repeats):
        t0 = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - t0)
    return best, out


def bench_1d(cfg: BenchConfig) -> dict:
    rows = []
    for n in cfg.steps_1d:
        wall, sol = _best_time(lambda: solve_telegrapher_1d(bump, cfg.a, cfg.c, cfg.t, n, -1.0, 1.0), cfg.repeats)
        ex = exact_solution_1d(bump, cfg.a, cfg.c, cfg.t, sol.x, support=(-1.0, 1.0))
        rows.append(
            dict(
                n_steps=n,
                dt=sol.dt,
                n_nodes=sol.x.numel(),
                l1_error=float(l1_distance(sol.x, sol.u, ex)),
                max_error=float((sol.u - ex).abs().max()),
                mass_error=abs(float(sol.mass()) - float(torch.trapezoid(ex, sol.x))),
                mass_outside_cone=float(mass_outside_cone(sol.x, sol.u, (-1.0, 1.0), cfg.c, cfg.t)),
                min_u=float(sol.u.min()),
                wall_s=wall,
            )
        )
    order = fit_order([r["dt"] for r in rows], [r["l1_error"] for r in rows])
    return dict(rows=rows, order_l1=order)


def bench_2d(cfg: BenchConfig, laplacian: str) -> dict:
    box = (0.0, 2.0 * math.pi)
    mx, my = cfg.mode_2d
    rows = []
    for n in cfg.cells_2d:
        run = lambda: solve_telegrapher_2d(  # noqa: E731
            lambda X, Y: torch.cos(mx * X + my * Y), cfg.a_2d, cfg.c, cfg.t, n, box=box, laplacian=laplacian
        )
        wall, sol = _best_time(run, cfg.repeats)
        ex = fourier_mode_solution_2d((mx, my), cfg.a_2d, cfg.c, cfg.t, sol.x, box=box)
        err = (sol.u - ex).abs()
        # light-cone leak for a radial bump of radius 1 in the box [-4, 4]², same resolution per unit length
        n_leak = max(8, int(round(n * 8.0 / (2.0 * math.pi))))
        leak_sol = solve_telegrapher_2d(
            lambda X, Y: bump(torch.sqrt(X**2 + Y**2)), cfg.a, cfg.c, cfg.t, n_leak, box=(-4.0, 4.0), laplacian=laplacian
        )
        total = float(leak_sol.u.abs().sum()) * leak_sol.dx**2
        leak = float(mass_outside_cone_2d(leak_sol.x, leak_sol.y, leak_sol.u, (0.0, 0.0), 1.0, cfg.c, cfg.t))
        rows.append(
            dict(
                n_cells=n,
                h=sol.dx,
                n_steps=sol.n_steps,
                max_error=float(err.max()),
                l1_error=float(err.sum()) * sol.dx**2,
                wall_s=wall,
                cone_leak_relative=leak / total,
                cone_leak_cells=n_leak,
            )
        )
    order = fit_order([r["h"] for r in rows], [r["max_error"] for r in rows])
    order_fine = fit_order([r["h"] for r in rows[-3:]], [r["max_error"] for r in rows[-3:]])
    return dict(rows=rows, order_max=order, order_max_finest3=order_fine)


def bench_diffusion(cfg: BenchConfig) -> dict:
    rows = []
    for a in cfg.diffusion_a:
        t0 = time.perf_counter()
        d = heat_limit_l1(bump, cfg.diffusion_sigma2, a, cfg.t, (-1.0, 1.0))
        rows.append(dict(a=a, c=math.sqrt(cfg.diffusion_sigma2 * a), l1_to_heat=d, a_times_l1=a * d,
                         wall_s=time.perf_counter() - t0))
    rate = fit_order([1.0 / r["a"] for r in rows], [r["l1_to_heat"] for r in rows])
    return dict(rows=rows, rate_in_1_over_a=rate)


def _plot(path: str, res: dict) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(1, 2, figsize=(10, 4))
    r1 = res["1d"]["rows"]
    ax[0].loglog([r["wall_s"] for r in r1], [r["l1_error"] for r in r1], "o-",
                 label=f"1D kinetic Strang (order {res['1d']['order_l1']:.2f})")
    for lap in ("fd", "spectral"):
        r2 = res[f"2d_{lap}"]["rows"]
        ax[0].loglog([r["wall_s"] for r in r2], [r["max_error"] for r in r2], "s--",
                     label=f"2D {lap}, max error (order {res[f'2d_{lap}']['order_max']:.2f})")
    ax[0].set_xlabel("wall time [s]")
    ax[0].set_ylabel("error")
    ax[0].legend(fontsize=8)
    rd = res["diffusion"]["rows"]
    ax[1].loglog([r["a"] for r in rd], [r["l1_to_heat"] for r in rd], "o-",
                 label=f"L1(telegrapher, heat), rate {res['diffusion']['rate_in_1_over_a']:.2f}")
    ax[1].set_xlabel("a (c²/a fixed)")
    ax[1].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default="benchmarks/results/pde.json", help="JSON output path")
    ap.add_argument("--a", type=float, default=1.0)
    ap.add_argument("--c", type=float, default=1.0)
    ap.add_argument("--t", type=float, default=1.0)
    ap.add_argument("--steps-1d", type=int, nargs="+", default=BenchConfig().steps_1d)
    ap.add_argument("--cells-2d", type=int, nargs="+", default=BenchConfig().cells_2d)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--no-plot", action="store_true")
    args = ap.parse_args(argv)
    cfg = BenchConfig(a=args.a, c=args.c, t=args.t, steps_1d=args.steps_1d, cells_2d=args.cells_2d,
                      repeats=args.repeats, threads=args.threads)
    torch.set_num_threads(cfg.threads)

    res = {"1d": bench_1d(cfg)}
    for lap in ("fd", "spectral"):
        res[f"2d_{lap}"] = bench_2d(cfg, lap)
    res["diffusion"] = bench_diffusion(cfg)

    print(f"1D kinetic Strang solver, a={cfg.a}, c={cfg.c}, t={cfg.t}, u0 = C³ bump on [-1, 1]")
    print(f"{'n_steps':>8} {'nodes':>7} {'L1 error':>11} {'max error':>11} {'outside':>9} {'wall [s]':>9}")
    for r in res["1d"]["rows"]:
        print(f"{r['n_steps']:>8} {r['n_nodes']:>7} {r['l1_error']:>11.3e} {r['max_error']:>11.3e} "
              f"{r['mass_outside_cone']:>9.1e} {r['wall_s']:>9.4f}")
    print(f"order (L1): {res['1d']['order_l1']:.3f}\n")
    for lap in ("fd", "spectral"):
        b = res[f"2d_{lap}"]
        print(f"2D central scheme, laplacian={lap}, mode {tuple(cfg.mode_2d)}, a={cfg.a_2d}, c={cfg.c}, t={cfg.t}")
        print(f"{'N':>6} {'steps':>6} {'max error':>11} {'L1 error':>11} {'wall [s]':>9} {'cone leak':>10}")
        for r in b["rows"]:
            print(f"{r['n_cells']:>6} {r['n_steps']:>6} {r['max_error']:>11.3e} {r['l1_error']:>11.3e} "
                  f"{r['wall_s']:>9.4f} {r['cone_leak_relative']:>10.2e}")
        print(f"order (max): {b['order_max']:.3f} (finest three: {b['order_max_finest3']:.3f})\n")
    print(f"Diffusion limit, σ² = c²/a = {cfg.diffusion_sigma2}, t = {cfg.t}")
    print(f"{'a':>8} {'c':>8} {'L1 to heat':>11} {'a * L1':>9}")
    for r in res["diffusion"]["rows"]:
        print(f"{r['a']:>8g} {r['c']:>8.3f} {r['l1_to_heat']:>11.3e} {r['a_times_l1']:>9.4f}")
    print(f"rate in 1/a: {res['diffusion']['rate_in_1_over_a']:.3f}")

    out = {"config": asdict(cfg), "results": res, "torch": torch.__version__}
    write_json(args.out, out)
    if not args.no_plot:
        _plot(os.path.splitext(args.out)[0] + ".png", res)
    print(f"\nwrote {args.out}")
    return out


if __name__ == "__main__":
    main()
