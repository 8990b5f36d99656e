"""Throughput of the exact Kac sampler (``KacProcess.sample`` + ``velocity``) and of ``KacPath.sample``.

One time per row (the training case): ``t ~ U(0, 1]`` of shape ``(B, 1)`` for a ``(B, d)`` batch and
``(B, 1, 1, 1)`` for images. Reports ms per call and coordinates per second; float32 by default.

    python scripts/bench_kac_sampler.py --device cuda --out gpu_out/kac_sampler.json
    python scripts/bench_kac_sampler.py --device cpu --shapes 64x784 --reps 5
"""
from __future__ import annotations

import argparse
import math
import sys
import time
from pathlib import Path

import torch

from kacnum.core.checkpoint import save_json
from kacnum.processes.kac import KacProcess
from kacnum.flows.paths import KacPath


def _sync(dev):
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)


def _timed(fn, reps: int, warmup: int, dev) -> float:
    for _ in range(warmup):
        fn()
    _sync(dev)
    t0 = time.perf_counter()
    for _ in range(reps):
        fn()
    _sync(dev)
    return (time.perf_counter() - t0) / reps


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--device", default=None)
    p.add_argument("--dtype", choices=("float32", "float64"), default="float32")
    p.add_argument("--shapes", nargs="+", default=["256x3072", "128x3x32x32"])
    p.add_argument("--a", type=float, default=9.0)
    p.add_argument("--c", type=float, default=3.0)
    p.add_argument("--reps", type=int, default=20)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--out", type=Path, default=None)
    args = p.parse_args(argv)
    dev = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    if dev.type == "cpu":
        torch.set_num_threads(args.threads)
    dtype = getattr(torch, args.dtype)
    proc, path = KacProcess(args.a, args.c), KacPath(args.a, args.c)
    gen = torch.Generator(device=dev).manual_seed(0)
    rows = []
    for s in args.shapes:
        shape = tuple(int(v) for v in s.split("x"))
        tshape = (shape[0],) + (1,) * (len(shape) - 1)
        t = torch.rand(tshape, generator=gen, dtype=dtype, device=dev).clamp_(min=1e-3)
        x0 = torch.zeros(shape, dtype=dtype, device=dev)
        n = math.prod(shape)

        def draw():
            return proc.sample(t, shape, gen, return_atoms=True, dtype=dtype, device=dev)

        def draw_and_velocity():
            k, atoms = draw()
            return proc.velocity(t, k, atoms)

        def path_sample():
            return path.sample(x0, t.reshape(-1), gen)

        for name, fn in (("sample", draw), ("sample+velocity", draw_and_velocity), ("KacPath.sample", path_sample)):
            sec = _timed(fn, args.reps, args.warmup, dev)
            rows.append({"shape": s, "op": name, "ms": 1e3 * sec, "coords_per_s": n / sec, "rows_per_s": shape[0] / sec})
    res = {"command": "python " + " ".join([sys.argv[0]] + sys.argv[1:]), "device": str(dev),
           "device_name": torch.cuda.get_device_name(dev) if dev.type == "cuda" else "cpu",
           "dtype": args.dtype, "a": args.a, "c": args.c, "torch": torch.__version__, "rows": rows}
    print(f"{'shape':<14}{'op':<18}{'ms':>10}{'Mcoords/s':>12}")
    for r in rows:
        print(f"{r['shape']:<14}{r['op']:<18}{r['ms']:>10.3f}{r['coords_per_s'] / 1e6:>12.1f}")
    if args.out is not None:
        save_json(args.out, res)
    return 0


if __name__ == "__main__":
    sys.exit(main())
