"""Benchmark: conditional Kac velocity, ours (float32 + atom mask) against the original approach.

Goal: ``KacProcess.velocity`` at least 3× faster than a float64 implementation of the same
formula with an ε-layer atom test, at equal accuracy (max error inside the cone ≤ 1e-6·c).

* reference (the original code's approach): float64, ``v = c y I1(z) / (r I0(z) + ct I1(z))`` with the
  scaled Bessel functions, atoms detected as ``|y| ≥ ct - ε``;
* ours: ``KacProcess(a, c).velocity(t, y, atom_mask)`` in float32, with the sampler's atom mask;
* accuracy: max |v - v_exact| over interior (non-atom) points, v_exact from scipy's ``ive`` in float64
  at the same float32 inputs; also how many interior points the ε-layer turns into atoms;
* ``proposed``: a prototype of a faster formulation (not in kac.py): the same velocity with
  ``z I0(z)/I1(z)`` from a continued fraction (z ≤ 16) and its asymptotic series (z > 16) instead of
  two Cephes Bessel calls (``i0e`` has no fast float32 kernel on CPU); with ``--compile`` also that
  prototype fused by ``torch.compile``.

Data: ``rows × cols`` coordinates (256 × 3072 = a batch of 256 3×32×32 images), a = 9, c = 3, one
time ``t ~ U(0, 1)`` per row, ``y`` drawn by ``KacProcess.sample``. Throughput is the minimum over
``--repeats`` timed calls, measured in the same run with ``torch.set_num_threads(--threads)``.

    python benchmarks/bench_velocity.py [--out benchmarks/results/velocity.json] [--device cpu]
"""
from __future__ import annotations

import argparse
import os
import platform
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import numpy as np  # noqa: E402
import torch  # noqa: E402
from scipy import special  # noqa: E402

from _bench import ImageBatch, min_time, write_json  # noqa: E402
from kacnum.processes.kac import KacProcess  # noqa: E402


@dataclass(frozen=True)
class BenchConfig(ImageBatch):
    eps_layer: float = 1e-6
    repeats: int = 20
    threads: int = 2
    device: str = "cpu"
    seed: int = 0
    profile: bool = True
    compile: bool = False


def reference_velocity_f64(a: float, c: float, t: torch.Tensor, y: torch.Tensor, eps: float) -> torch.Tensor:
    """The original approach: float64, first form of docs/mathematics.md §3, ε-layer atoms ``|y| ≥ ct - eps``.

    ``t: (B, 1)``, ``y: (B, N)`` float64; returns ``(B, N)``.
    """
    ct = c * t
    r = torch.sqrt((ct * ct - y * y).clamp_min(0.0))
    z = (a / c) * r
    i0 = torch.special.i0e(z)
    i1 = torch.special.i1e(z)
    v = c * y * i1 / (r * i0 + ct * i1)
    return torch.where(y.abs() >= ct - eps, c * torch.sign(y), v)


def _proposed_ratio_term(z: torch.Tensor, depth: int = 16, z_switch: float = 16.0) -> torch.Tensor:
    """PROTOTYPE of the suggested fix: ``z I0(z)/I1(z)`` without Bessel calls (float32-accurate).

    Gauss's continued fraction ``2 + z²/(4 + z²/(6 + …))`` truncated at ``depth`` levels for
    ``z ≤ z_switch`` and ``z + 1/2 + 3/(8z) + 3/(8z²) + 63/(128z³) + 27/(32z⁴)`` beyond (relative error
    < 3e-7 in float32 on [0, ∞), checked in ``main`` against scipy).
    """
    u = z * z
    acc = torch.full_like(z, 2.0 * (depth + 1))
    for k in range(depth, 0, -1):
        acc = u / acc + 2.0 * k
    w = 1.0 / z.clamp_min(z_switch)
    asym = z + 0.5 + w * (0.375 + w * (0.375 + w * (63.0 / 128.0 + w * (27.0 / 32.0))))
    return torch.where(z <= z_switch, acc, asym)


def proposed_velocity(a: float, c: float, t: torch.Tensor, y: torch.Tensor, atom_mask: torch.Tensor) -> torch.Tensor:
    """PROTOTYPE: ours with ``bessel_ratio_term`` replaced by ``_proposed_ratio_term`` (no input checks)."""
    ct = c * t
    ay = y.abs()
    z = (a / c) * torch.sqrt(((ct - ay) * (ct + ay)).clamp_min(0.0))
    v = y / (t + _proposed_ratio_term(z) / a)
    return torch.where(atom_mask, c * torch.sign(y), v)


def exact_velocity_np(a: float, c: float, t: np.ndarray, y: np.ndarray) -> np.ndarray:
    """float64 scipy value of the interior velocity at the given (float32-representable) inputs."""
    t, y = np.broadcast_arrays(t, y)
    ct, ay = c * t, np.abs(y)
    r = np.sqrt(np.clip((ct - ay) * (ct + ay), 0.0, None))
    z = a * r / c
    i0, i1 = special.ive(0, z), special.ive(1, z)
    with np.errstate(invalid="ignore", divide="ignore"):
        v = c * y * i1 / (r * i0 + ct * i1)
    return np.where(r > 0, v, y / (t + 2.0 / a))


def top_ops(fn, n: int = 8):
    """Self time per aten op over 3 calls (torch.profiler), largest first: [(name, ms per call)]."""
    with torch.profiler.profile() as prof:
        for _ in range(3):
            fn()
    rows = [e for e in prof.key_averages() if e.key.startswith("aten::")]
    rows = sorted(rows, key=lambda e: e.self_cpu_time_total, reverse=True)
    return [(e.key, e.self_cpu_time_total / 3e3) for e in rows[:n]]


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", default=os.path.join("benchmarks", "results", "velocity.json"))
    for f in BenchConfig.__dataclass_fields__.values():
        if f.type in ("bool", bool):
            p.add_argument(f"--{f.name.replace('_', '-')}", action=argparse.BooleanOptionalAction, default=f.default)
        else:
            cast = {"int": int, "float": float, "str": str}[f.type if isinstance(f.type, str) else f.type.__name__]
            p.add_argument(f"--{f.name.replace('_', '-')}", type=cast, default=f.default)
    args = p.parse_args(argv)
    cfg = BenchConfig(**{k: getattr(args, k) for k in BenchConfig.__dataclass_fields__})
    torch.set_num_threads(cfg.threads)
    dev = torch.device(cfg.device)

    kp = KacProcess(cfg.a, cfg.c)
    g = torch.Generator(device=dev).manual_seed(cfg.seed)
    t32 = torch.rand(cfg.rows, 1, generator=g, device=dev, dtype=torch.float32)
    y32, atoms = kp.sample(t32, (cfg.rows, cfg.cols), generator=g, return_atoms=True)
    t64, y64 = t32.double(), y32.double()
    n = y32.numel()

    runs = {
        "reference_f64_eps_layer": lambda: reference_velocity_f64(cfg.a, cfg.c, t64, y64, cfg.eps_layer),
        "ours_f32_atom_mask": lambda: kp.velocity(t32, y32, atom_mask=atoms),
        "ours_f64_atom_mask": lambda: kp.velocity(t64, y64, atom_mask=atoms),
        "proposed_f32_atom_mask": lambda: proposed_velocity(cfg.a, cfg.c, t32, y32, atoms),
    }
    compile_s = None
    if cfg.compile:  # the prototype fused into one kernel by torch.compile (inductor)
        fused = torch.compile(proposed_velocity, dynamic=False)
        t0 = time.perf_counter()
        fused(cfg.a, cfg.c, t32, y32, atoms)
        compile_s = time.perf_counter() - t0
        runs["proposed_f32_compiled"] = lambda: fused(cfg.a, cfg.c, t32, y32, atoms)
    seconds = {name: min_time(fn, cfg.repeats, dev) for name, fn in runs.items()}

    # accuracy on interior points against scipy float64 at the same float32 inputs
    inside = ~atoms
    exact = exact_velocity_np(cfg.a, cfg.c, t64.cpu().numpy(), y64.cpu().numpy())
    exact_t = torch.as_tensor(exact)
    err = {}
    for name, fn in runs.items():
        v = fn().double().cpu()
        err[name] = float((v - exact_t)[inside.cpu()].abs().max()) / cfg.c
    ct = cfg.c * t32
    layer_hits = int(((y32.abs() >= ct - cfg.eps_layer) & inside).sum())
    # the prototype's ratio over a dense z range (float32 vs scipy float64)
    zz = torch.linspace(0.0, 200.0, 200_001, dtype=torch.float32)
    zz64 = zz.double().numpy()
    ratio_exact = np.where(zz64 > 0, zz64 * special.ive(0, zz64) / np.where(zz64 > 0, special.ive(1, zz64), 1), 2.0)
    proposed_ratio_rel_err = float(np.max(np.abs(_proposed_ratio_term(zz).double().numpy() - ratio_exact) / ratio_exact))

    ref = seconds["reference_f64_eps_layer"]
    results = {
        "config": asdict(cfg),
        "device": str(dev) if dev.type == "cpu" else torch.cuda.get_device_name(dev),
        "cpu": platform.processor() or platform.machine(),
        "torch": torch.__version__,
        "coords": n,
        "atom_fraction": float(atoms.double().mean()),
        "seconds": seconds,
        "mcoords_per_s": {k: n / s / 1e6 for k, s in seconds.items()},
        "speedup_vs_reference": {k: ref / s for k, s in seconds.items()},
        "max_err_inside_over_c": err,
        "interior_points_in_eps_layer": layer_hits,
        "proposed_ratio_max_rel_err_z_0_200": proposed_ratio_rel_err,
        "compile_seconds": compile_s,
        "goal_met": bool(ref / seconds["ours_f32_atom_mask"] >= 3.0 and err["ours_f32_atom_mask"] <= 1e-6),
    }
    if cfg.profile and dev.type == "cpu":
        results["profile_ours_f32_ms"] = top_ops(runs["ours_f32_atom_mask"])
        results["profile_reference_f64_ms"] = top_ops(runs["reference_f64_eps_layer"])

    print(f"velocity on {n} coords ({cfg.rows}x{cfg.cols}), a={cfg.a:g} c={cfg.c:g}, device={results['device']}, "
          f"threads={cfg.threads}, atoms {results['atom_fraction']:.3f}")
    print(f"{'variant':26s} {'ms':>9s} {'Mcoords/s':>10s} {'speedup':>8s} {'max err/c (inside)':>19s}")
    for k in runs:
        print(f"{k:26s} {1e3 * seconds[k]:9.2f} {results['mcoords_per_s'][k]:10.1f} "
              f"{results['speedup_vs_reference'][k]:8.2f} {err[k]:19.2e}")
    print(f"interior points inside the ε-layer (ε={cfg.eps_layer:g}): {layer_hits}")
    print(f"prototype ratio: max rel err on z in [0, 200] = {proposed_ratio_rel_err:.2e}")
    print(f"goal (ours ≥ 3x, err ≤ 1e-6 c): {'met' if results['goal_met'] else 'NOT met'}")
    for key in ("profile_ours_f32_ms", "profile_reference_f64_ms"):
        if key in results:
            print(key + ": " + ", ".join(f"{name} {ms:.2f}" for name, ms in results[key]))

    write_json(args.out, results)
    return results


if __name__ == "__main__":
    main(sys.argv[1:])
