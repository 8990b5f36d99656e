"""Training throughput and the cost of the Kac target, on the current device.

(a) Throughput of ``kacnum.images.train.Trainer.train_step`` (forward, backward, clip, Adam, EMA, the path
    draw; data already in memory) for a model preset: images/s, ms/step, seconds per 1000 steps
    (extrapolated from the timed steps), peak memory (``torch.cuda.max_memory_allocated`` on CUDA,
    the process's ``ru_maxrss`` on the CPU).
(b) The Kac target (``path.sample_time`` + ``KacPath.sample``: exact Kac sampling plus the
    conditional velocity) as a fraction of a full Kac training step, beside the Gaussian
    flow-matching target (``GaussianPath``) and its step, on the same model and batch. Steps of the
    two paths are timed in alternating rounds so that machine load hits both alike.

Data are SYNTHETIC images of the model's shape (``kacnum.images.train.synthetic_dataset``): the timing does
not depend on pixel values.

    python benchmarks/bench_train.py                                  # CPU: mnist_small, batch 64, 2 threads
    python benchmarks/bench_train.py --device cuda                    # cifar10_kacflow, batch 128, bf16
    python benchmarks/bench_train.py --model digits_tiny --batch-size 64 --out runs/bench_smoke.json
"""
from __future__ import annotations

import argparse
import json
import resource
import statistics
import sys
import time
from pathlib import Path

import torch

from kacnum.core.checkpoint import save_json
from kacnum.images.train import TrainConfig, Trainer, resolve_device


def _sync(dev: torch.device) -> None:
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)


#: "wall": time.perf_counter; "process": CPU seconds of this process (time.process_time), which a
#: busy shared machine inflates far less than wall time (use with --threads 1)
CLOCKS = {"wall": time.perf_counter, "process": time.process_time}
_clock = time.perf_counter


def _time_steps(tr: Trainer, n: int) -> float:
    _sync(tr.device)
    t0 = _clock()
    for _ in range(n):
        tr.train_step()
    _sync(tr.device)
    return (_clock() - t0) / n


def _time_target(tr: Trainer, x0: torch.Tensor, n: int) -> float:
    path, gen = tr.path, tr.gen
    _sync(tr.device)
    t0 = _clock()
    for i in range(n):
        gen.manual_seed(i)
        t = path.sample_time(x0.shape[0], gen, dtype=x0.dtype, device=x0.device)
        path.sample(x0, t, gen)
    _sync(tr.device)
    return (_clock() - t0) / n


def run(args: argparse.Namespace) -> dict:
    global _clock
    dev = resolve_device(args.device)
    if dev.type == "cuda" and args.clock != "wall":
        raise ValueError("clock must be 'wall' on CUDA (process time does not see the GPU)")
    _clock = CLOCKS[args.clock]
    if dev.type == "cpu":
        torch.set_num_threads(args.threads)
    model = args.model or ("cifar10_kacflow" if dev.type == "cuda" else "mnist_small")
    batch = args.batch_size or (128 if dev.type == "cuda" else 64)
    bf16 = (dev.type == "cuda") if args.bf16 is None else args.bf16
    if dev.type == "cuda":
        torch.backends.cudnn.benchmark = True
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True

    def trainer(path: str) -> Trainer:
        cfg = TrainConfig(model=model, dataset="synthetic", synthetic_size=max(4 * batch, 512), path=path,
                          a=args.a, c=args.c, batch_size=batch, total_steps=10 ** 9, checkpoint_every=0,
                          sample_every=0, bf16=bf16, compile=args.compile, seed=0)
        return Trainer(cfg, None, device=dev)

    kac = trainer("kac")
    gauss = trainer("gaussian") if not args.skip_target else None
    n_params = sum(p.numel() for p in kac.model.parameters())
    for tr in (kac, gauss):
        if tr is not None:
            _time_steps(tr, args.warmup)  # cudnn autotuning, compile, allocator warm-up
    if dev.type == "cuda":
        torch.cuda.reset_peak_memory_stats(dev)

    rounds = max(1, args.rounds)
    per = max(1, args.steps // rounds)
    kac_step, gauss_step, kac_tgt, gauss_tgt = [], [], [], []
    x0 = kac.batches.get(0, 0)[0].to(dev)
    for _ in range(rounds):
        kac_step.append(_time_steps(kac, per))
        if gauss is not None:
            gauss_step.append(_time_steps(gauss, per))
            kac_tgt.append(_time_target(kac, x0, args.target_reps))
            gauss_tgt.append(_time_target(gauss, x0, args.target_reps))

    step_s = statistics.median(kac_step)
    out = {
        "command": "python " + " ".join([sys.argv[0]] + sys.argv[1:]),
        "device": str(dev),
        "device_name": torch.cuda.get_device_name(dev) if dev.type == "cuda" else "cpu",
        "torch": torch.__version__,
        "threads": torch.get_num_threads() if dev.type == "cpu" else None,
        "model": model,
        "num_parameters": n_params,
        "batch_size": batch,
        "bf16": bool(kac.bf16),
        "compile": bool(args.compile),
        "timed_steps": per * rounds,
        "clock": args.clock,
        "train": {
            "images_per_s": batch / step_s,
            "ms_per_step": 1e3 * step_s,
            "s_per_1000_steps": 1e3 * step_s,
            "ms_per_step_rounds": [1e3 * s for s in kac_step],
        },
    }
    if dev.type == "cuda":
        out["train"]["peak_mem_gib"] = torch.cuda.max_memory_allocated(dev) / 2 ** 30
        out["train"]["peak_reserved_gib"] = torch.cuda.max_memory_reserved(dev) / 2 ** 30
    else:
        out["train"]["maxrss_mib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    if gauss is not None:
        ks, gs = statistics.median(kac_step), statistics.median(gauss_step)
        kt, gt = statistics.median(kac_tgt), statistics.median(gauss_tgt)
        out["target"] = {
            "kac_target_ms": 1e3 * kt,
            "gaussian_target_ms": 1e3 * gt,
            "kac_step_ms": 1e3 * ks,
            "gaussian_step_ms": 1e3 * gs,
            "kac_target_fraction_of_step": kt / ks,
            "gaussian_target_fraction_of_step": gt / gs,
            "kac_extra_cost_fraction": (kt - gt) / ks,
            "step_ratio_kac_over_gaussian": ks / gs,
        }
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--device", default=None, help="cpu or cuda (default: cuda if present)")
    p.add_argument("--model", default=None, help="model preset (default: cifar10_kacflow on CUDA, mnist_small on CPU)")
    p.add_argument("--batch-size", type=int, default=None, help="default 128 on CUDA, 64 on CPU")
    p.add_argument("--steps", type=int, default=30, help="timed steps per path")
    p.add_argument("--warmup", type=int, default=5, help="untimed steps first")
    p.add_argument("--rounds", type=int, default=3, help="alternating timing rounds (kac, gaussian)")
    p.add_argument("--target-reps", type=int, default=20, help="target draws timed per round")
    p.add_argument("--threads", type=int, default=2, help="CPU threads")
    p.add_argument("--bf16", action=argparse.BooleanOptionalAction, default=None, help="default: on for CUDA")
    p.add_argument("--compile", action="store_true")
    p.add_argument("--a", type=float, default=9.0)
    p.add_argument("--c", type=float, default=3.0)
    p.add_argument("--clock", choices=sorted(CLOCKS), default="wall",
                   help="wall time, or this process's CPU time (CPU only; robust on a shared machine)")
    p.add_argument("--skip-target", action="store_true", help="throughput only")
    p.add_argument("--out", type=Path, default=None, help="JSON file to write")
    args = p.parse_args(argv)
    res = run(args)
    tr = res["train"]
    print(f"{res['model']} ({res['num_parameters']:,} parameters), batch {res['batch_size']}, {res['device_name']}, "
          f"bf16={res['bf16']}, compile={res['compile']}, threads={res['threads']}, clock={res['clock']}")
    print(f"{'images/s':>12}{'ms/step':>12}{'s/1000 steps':>14}{'peak mem':>14}")
    mem = f"{tr['peak_mem_gib']:.2f} GiB" if "peak_mem_gib" in tr else f"{tr['maxrss_mib']:.0f} MiB rss"
    print(f"{tr['images_per_s']:>12.1f}{tr['ms_per_step']:>12.2f}{tr['s_per_1000_steps']:>14.1f}{mem:>14}")
    if "target" in res:
        t = res["target"]
        print(f"{'path':<10}{'target ms':>11}{'step ms':>10}{'target/step':>13}")
        print(f"{'kac':<10}{t['kac_target_ms']:>11.3f}{t['kac_step_ms']:>10.2f}{t['kac_target_fraction_of_step']:>13.2%}")
        print(f"{'gaussian':<10}{t['gaussian_target_ms']:>11.3f}{t['gaussian_step_ms']:>10.2f}"
              f"{t['gaussian_target_fraction_of_step']:>13.2%}")
        print(f"Kac target beyond the Gaussian one: {t['kac_extra_cost_fraction']:.2%} of a Kac step")
    if args.out is not None:
        save_json(args.out, res)
    else:
        print(json.dumps(res))
    return 0


if __name__ == "__main__":
    sys.exit(main())
