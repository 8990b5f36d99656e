"""Per-step cost of DistillKac distillation of ``mnist_small`` on the CPU (random weights and images: the cost
does not depend on them), for planning a run: seconds per optimiser step of each kind of stage, and the cost of a
roll-out pool per image-evaluation.

    python benchmarks/bench_distill.py --threads 2 --batch 64 --steps 4

Kinds (guidance 1.2, so a teacher call is 2 network evaluations):
stage-1 forward restart (5 AB-2 sub-steps per target), stage-1 forward trajectory (5 + 1 priming),
later stage forward (5 Euler steps of the previous student, unguided), roll-out step (student forward and
backward only; the pool is paid once per refresh), and the trajectory pool (100 guided AB-2 steps per latent).
"""
import argparse
import json
import time

import torch

from kacnum.students.distill import DistillConfig, Distiller
from kacnum.images.models import make_model
from kacnum.flows.paths import KacPath


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--steps", type=int, default=4, help="timed steps per kind (after one warm-up step)")
    p.add_argument("--pool", type=int, default=64, help="latents of the timed trajectory pool")
    p.add_argument("--model", default="mnist_small")
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    torch.manual_seed(0)
    model = make_model(a.model).eval()
    model.check_inputs = False
    c = model.config
    g = torch.Generator().manual_seed(0)
    data = torch.rand(2048, c.in_channels, c.resolution, c.resolution, generator=g) * 2 - 1
    labels = torch.randint(c.num_classes, (2048,), generator=g)
    res = {"threads": a.threads, "batch": a.batch, "model": a.model, "seconds_per_step": {}}

    def timed(name, stages, steps, **kw):
        cfg = DistillConfig(stages=stages, steps_per_stage=steps, batch_size=a.batch, guidance_scale=1.2, **kw)
        t = [time.perf_counter()]
        Distiller(model, KacPath(), data, labels, cfg).run(progress=False, callback=lambda i: t.append(time.perf_counter()))
        dt = [y - x for x, y in zip(t, t[1:])]
        res["seconds_per_step"][name] = sum(dt[-a.steps:]) / a.steps
        print(f"{name:44s} {res['seconds_per_step'][name]:.3f} s/step", flush=True)
        return dt

    n = a.steps + 1
    timed("stage 1 forward restart", (100, 20), n)
    timed("stage 1 forward trajectory", (100, 20), n, target="trajectory")
    timed("later stage forward (5 student Euler steps)", (100, 20, 4), (1, n))
    dt = timed("roll-out step (pool paid apart)", (100, 20), n + 1, source="rollout", target="trajectory",
               rollout_pool=a.pool, rollout_refresh=10 ** 6)
    pool = dt[0] - res["seconds_per_step"]["roll-out step (pool paid apart)"]
    res["pool_ms_per_image_evaluation"] = 1e3 * pool / (a.pool * 200)
    print(f"trajectory pool: {res['pool_ms_per_image_evaluation']:.2f} ms per image-evaluation "
          f"(a pool of P latents costs P x 200 of them)", flush=True)
    print(json.dumps(res))


if __name__ == "__main__":
    main()
