"""Benchmark: drawing the planar random flight, against torch.rand and the 1D Kac sampler.

One run, float32, ``rows × cols`` coordinates (256 × 3072 = a batch of 256 3×32×32 images read as 1536
pairs per row), one time ``t ~ U(0, 1)`` per row, ``(a, c) = (9, 3)``:

* ``flight``: ``PlanarFlight.sample(t, (rows, cols))`` (two uniforms per pair: a log1p, a sqrt, cos, sin);
* ``flight+atoms``: the same with ``return_atoms=True``;
* ``kac``: ``KacProcess.sample(t, (rows, cols))`` (the default ``rowwise_icdf`` sampler, one uniform per
  coordinate through a per-row quantile table);
* ``rand``: ``torch.rand(rows, cols)`` (the floor: the flight needs the same number of uniforms).

The timed calls are interleaved round-robin over ``--repeats`` rounds; the minimum and the median per
sampler are reported as millions of coordinates per second, with the ratios of the medians (measured in
the same run). With ``--ks N`` it also draws ``N`` pairs for each (λ, c, t) in {(9, 3, 0.3), (9, 3, 1),
(900, 10, 1)} (float64 and float32) and reports ``sqrt(n)·D`` of the continuous radii against the exact
radial CDF (1% critical value 1.63) and the atom share against ``e^{-λt}``.

    python benchmarks/bench_flight.py [--threads 1] [--repeats 30] [--ks 1000000] [--out results/flight.json]
"""
from __future__ import annotations

import argparse
import math
import os
import platform
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from _bench import ImageBatch, write_json  # noqa: E402
from kacnum.processes.flight import PlanarFlight  # noqa: E402
from kacnum.processes.kac import KacProcess  # noqa: E402

KS_SETS = ((9.0, 3.0, 0.3), (9.0, 3.0, 1.0), (900.0, 10.0, 1.0))


def loadavg() -> str:
    try:
        with open("/proc/loadavg") as fh:
            return fh.read().strip()
    except OSError:
        return "n/a"


def time_samplers(rows: int, cols: int, repeats: int, a: float, c: float, seed: int = 0) -> dict:
    g = torch.Generator().manual_seed(seed)
    t = torch.rand(rows, 1, generator=g, dtype=torch.float32)
    flight, kac = PlanarFlight(a, c), KacProcess(a, c)
    calls = {
        "flight": lambda: flight.sample(t, (rows, cols), generator=g),
        "flight+atoms": lambda: flight.sample(t, (rows, cols), generator=g, return_atoms=True),
        "kac": lambda: kac.sample(t, (rows, cols), generator=g),
        "rand": lambda: torch.rand(rows, cols, generator=g, dtype=torch.float32),
    }
    for fn in calls.values():  # warm-up
        fn()
    times = {k: [] for k in calls}
    for _ in range(repeats):
        for name, fn in calls.items():
            t0 = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - t0)
    n = rows * cols
    out = {}
    for name, ts in times.items():
        med, best = statistics.median(ts), min(ts)
        out[name] = {"median_ms": 1e3 * med, "min_ms": 1e3 * best, "Mcoords_per_s_median": n / med / 1e6,
                     "Mcoords_per_s_best": n / best / 1e6}
    ratios = {
        "flight_over_rand_time": out["flight"]["median_ms"] / out["rand"]["median_ms"],
        "flight_over_kac_time": out["flight"]["median_ms"] / out["kac"]["median_ms"],
        "flight_atoms_over_rand_time": out["flight+atoms"]["median_ms"] / out["rand"]["median_ms"],
    }
    return {"samplers": out, "ratios_of_medians": ratios}


def ks_check(n: int, seed: int = 0) -> list:
    res = []
    for dtype in (torch.float64, torch.float32):
        for lam, c, t in KS_SETS:
            g = torch.Generator().manual_seed(seed)
            f = PlanarFlight(lam, c)
            cols = 2000
            x, m = f.sample(t, (n // (cols // 2), cols), generator=g, dtype=dtype, return_atoms=True)
            xp = x.double().reshape(-1, 2)
            rho = torch.hypot(xp[:, 0], xp[:, 1])
            am = m.reshape(-1, 2)[:, 0]
            r = np.sort(rho[~am].numpy())
            cont = -math.expm1(-lam * t)
            # exact conditional CDF of the continuous part, the closed form of docs/mathematics.md §14 written out (float64)
            F = (1.0 - np.exp(-lam * t + (lam / c) * np.sqrt(np.clip(c * c * t * t - r * r, 0, None)))) / cont
            k = r.size
            i = np.arange(1, k + 1)
            d = max(np.max(i / k - F), np.max(F - (i - 1) / k))
            p = math.exp(-lam * t)
            na, ntot = int(am.sum()), am.numel()
            z = (na - ntot * p) / math.sqrt(ntot * p * (1 - p)) if ntot * p > 1e-6 else float(na)
            res.append({"lam": lam, "c": c, "t": t, "dtype": str(dtype).replace("torch.", ""), "pairs": ntot,
                        "sqrt_n_D": math.sqrt(k) * d, "atom_share": na / ntot, "atom_exact": p, "atom_z": z})
    return res


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", type=int, default=ImageBatch.rows)
    ap.add_argument("--cols", type=int, default=ImageBatch.cols)
    ap.add_argument("--repeats", type=int, default=30)
    ap.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's)")
    ap.add_argument("--ks", type=int, default=0, help="pairs per KS check (0: skip)")
    ap.add_argument("--out", default=None, help="write the results as JSON here")
    args = ap.parse_args(argv)
    if args.cols % 2:
        ap.error("--cols must be even (pairs of coordinates)")
    if args.threads:
        torch.set_num_threads(args.threads)
    result = {
        "config": {"rows": args.rows, "cols": args.cols, "a": ImageBatch.a, "c": ImageBatch.c, "dtype": "float32",
                   "t": "one U(0,1) time per row", "repeats": args.repeats, "threads": torch.get_num_threads()},
        "machine": {"platform": platform.platform(), "processor": platform.processor(), "cpus": os.cpu_count(),
                    "torch": torch.__version__, "loadavg_before": loadavg()},
    }
    result.update(time_samplers(args.rows, args.cols, args.repeats, ImageBatch.a, ImageBatch.c))
    result["machine"]["loadavg_after_timing"] = loadavg()
    print(f"float32, {args.rows}x{args.cols} coords, {torch.get_num_threads()} thread(s), "
          f"load before/after: {result['machine']['loadavg_before']} / {result['machine']['loadavg_after_timing']}")
    for name, r in result["samplers"].items():
        print(f"  {name:13s} median {r['median_ms']:7.2f} ms  {r['Mcoords_per_s_median']:8.1f} M coords/s"
              f"   (best {r['Mcoords_per_s_best']:.1f})")
    for name, v in result["ratios_of_medians"].items():
        print(f"  {name:28s} {v:.2f}")
    if args.ks:
        result["ks"] = ks_check(args.ks)
        for r in result["ks"]:
            print(f"  KS lam={r['lam']:g} c={r['c']:g} t={r['t']:g} {r['dtype']}: sqrt(n)D = {r['sqrt_n_D']:.3f}"
                  f"  atoms {r['atom_share']:.5f} (exact {r['atom_exact']:.5f}, z = {r['atom_z']:.2f})")
    if args.out:
        write_json(args.out, result)
    return result


if __name__ == "__main__":
    main()
