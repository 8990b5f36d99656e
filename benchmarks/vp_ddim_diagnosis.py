"""Why the VP/DDIM baseline scores far below Gaussian FM at the same budget: a measurement on digits.

Trains a VP ε-model and a Gaussian FM model with the same recipe (``digits_tiny``, batch 64, ``--steps`` optimiser
steps, lr 1e-3; about 40 s each on one CPU thread at 450 steps), then measures with the project's digits FID
(classifier features, 400 samples per row, guidance 1.2 unless noted):

1. DDIM against its step count (10 … 400), with and without ``clip_x0``, at guidance 1, on the ``power:2`` grid;
   the probability-flow ODE of the ε-model (Euler 100, Heun 200); FM with Euler / AB-2 for reference;
2. the data-prediction error of both networks against log-SNR on the held-out split (the VP ``x̂ = (z - σ ε̂)/α``,
   the FM ``x̂ = z - t u``) and the ε-error behind it;
3. a hybrid DDIM that takes the FM network's data prediction where log-SNR < -2 or -4 and the VP ε elsewhere;
4. with ``--half``: the same VP recipe at half the steps (is it the budget?).

    python benchmarks/vp_ddim_diagnosis.py --steps 450 --half --out runs/vp_diag --threads 1

Results go to ``OUT/vp_ddim_diagnosis.json`` (also printed).
"""
from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path

import torch

from kacnum.images.data import load_dataset
from kacnum.flows.guidance import GuidedField
from kacnum.images.metrics import calc_fid, extract_features
from kacnum.images.pipeline import feature_extractor_for, reference_for, sample_ddim_set, sample_flow_set
from kacnum.flows.solvers import ddim_sample
from kacnum.images.train import TrainConfig, Trainer, derive_seed, load_teacher


def train(kind: str, steps: int, out: Path) -> tuple:
    cfg = TrainConfig(model="digits_tiny", dataset="digits", batch_size=64, total_steps=steps, lr=1e-3, warmup_steps=50,
                      ema_decay=0.99, checkpoint_every=0, sample_every=0, log_every=100, path=kind, num_samples=10,
                      sample_steps=10)
    t0 = time.perf_counter()
    tr = Trainer(cfg, out, device="cpu")
    tr.fit(resume=True, progress=False)
    tr.close()
    model, path, _ = load_teacher(out / "checkpoint.pt", device="cpu")
    return model, path, time.perf_counter() - t0


def vp_time(path, lam: float) -> float:
    """The VP time with log-SNR ``lam`` (``∫β = β_min t + (β_max - β_min) t²/2``, T = 1)."""
    b = -math.log(math.exp(lam) / (1 + math.exp(lam)))
    a2 = 0.5 * (path.beta_max - path.beta_min)
    return (-path.beta_min + math.sqrt(path.beta_min ** 2 + 4 * a2 * b)) / (2 * a2)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--steps", type=int, default=450)
    p.add_argument("--half", action="store_true", help="also a VP model at half the steps")
    p.add_argument("--num-samples", type=int, default=400)
    p.add_argument("--out", type=Path, default=Path("runs/vp_diag"))
    p.add_argument("--threads", type=int, default=1)
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    n = a.num_samples
    res = {"steps": a.steps, "num_samples": n, "fid": {}, "x0_mse": {}, "hybrid": {}, "seconds": {}}
    vp, vpath, res["seconds"]["train_vp"] = train("vp", a.steps, a.out / "vp")
    fm, fpath, res["seconds"]["train_fm"] = train("gaussian", a.steps, a.out / "fm")
    ext = feature_extractor_for("digits", a.out / "eval", classifier_epochs=10, device="cpu")
    ref = reference_for("digits", ext, a.out / "eval")

    def fid(x):
        return calc_fid(torch.from_numpy(extract_features(x.clamp(-1, 1), ext)), ref, ext).value

    def rec(name, s):
        res["fid"][name] = fid(s.images)
        print(f"{name:34s} FID {res['fid'][name]:.2f}", flush=True)

    for k in (10, 20, 100, 400):
        rec(f"vp ddim clip {k}", sample_ddim_set(vp, vpath, num_samples=n, steps=k, guidance=1.2, batch_size=n))
    for k in (20, 100):
        rec(f"vp ddim noclip {k}", sample_ddim_set(vp, vpath, num_samples=n, steps=k, guidance=1.2, batch_size=n,
                                                  clip_x0=None))
    rec("vp ddim clip 20 guidance 1", sample_ddim_set(vp, vpath, num_samples=n, steps=20, guidance=1.0, batch_size=n))
    rec("vp ddim clip 20 power:2", sample_ddim_set(vp, vpath, num_samples=n, steps=20, guidance=1.2, batch_size=n,
                                                   time_grid="power:2"))
    for solver, k in (("euler", 100), ("heun", 200)):
        rec(f"vp ode {solver} {k}", sample_flow_set(vp, vpath, "vp_ode", num_samples=n, steps=k, solver=solver,
                                                    guidance=1.2, batch_size=n, eps_model=True))
    for solver, k in (("euler", 20), ("euler", 100), ("ab2", 20)):
        rec(f"fm {solver} {k}", sample_flow_set(fm, fpath, "fm", num_samples=n, steps=k, solver=solver, guidance=1.2,
                                                batch_size=n))

    x, y = load_dataset("digits", split="test")
    g = torch.Generator().manual_seed(0)
    print("log-SNR   VP x0-MSE (eps-MSE)   FM x0-MSE   [held-out split, conditional]")
    with torch.no_grad():
        for lam in (6, 4, 2, 0, -2, -4, -6):
            t_vp, t_fm = vp_time(vpath, lam), 1 / (1 + math.exp(lam / 2))
            eps = torch.randn(x.shape, generator=g)
            al, sg = float(vpath.alpha(t_vp)), float(vpath.sigma(t_vp))
            e_hat = vp(al * x + sg * eps, torch.full((x.shape[0],), t_vp), y)
            e_mse = (e_hat - eps).pow(2).mean().item()
            zf = (1 - t_fm) * x + t_fm * eps
            f_mse = (zf - t_fm * fm(zf, torch.full((x.shape[0],), t_fm), y) - x).pow(2).mean().item()
            res["x0_mse"][str(lam)] = {"vp": (sg / al) ** 2 * e_mse, "vp_eps_mse": e_mse, "fm": f_mse,
                                       "t_vp": t_vp, "t_fm": t_fm}
            print(f"{lam:+d}      {(sg / al) ** 2 * e_mse:.4f} ({e_mse:.5f})      {f_mse:.4f}", flush=True)
    res["data_variance"] = x.var(dim=0).mean().item()

    labels = torch.arange(n) % 10
    gv = GuidedField(vp, 1.2, null_label=vp.null_label, num_classes=10).field(labels)
    gf = GuidedField(fm, 1.2, null_label=fm.null_label, num_classes=10).field(labels)
    for thr in (-2.0, -4.0):
        def eps_model(z, t, thr=thr):
            ab = float(vpath.alpha_bar(t[0]))
            lam = math.log(ab / (1 - ab))
            if lam >= thr:
                return gv(z, t)
            al, sg = math.sqrt(ab), math.sqrt(1 - ab)
            tf = 1 / (1 + math.exp(lam / 2))
            zf = (1 - tf) / al * z  # the FM state with the same signal-to-noise ratio
            x0 = zf - tf * gf(zf, torch.full_like(t, tf))
            return (z - al * x0) / sg

        z = torch.randn((n, 1, 8, 8), generator=torch.Generator().manual_seed(derive_seed(1234, 0)))
        xs = ddim_sample(eps_model, z, vpath.alpha_bar, vpath.default_time_grid(20), clip_x0=1.0).x
        res["hybrid"][str(thr)] = fid(xs)
        print(f"hybrid DDIM 20 (FM data prediction where log-SNR < {thr:g}): FID {res['hybrid'][str(thr)]:.2f}",
              flush=True)
    if a.half:
        vp2, p2, res["seconds"]["train_vp_half"] = train("vp", a.steps // 2, a.out / "vp_half")
        res["fid"]["vp half-steps ddim clip 20"] = fid(sample_ddim_set(vp2, p2, num_samples=n, steps=20, guidance=1.2,
                                                                       batch_size=n).images)
        print(f"VP at {a.steps // 2} steps: DDIM 20 FID {res['fid']['vp half-steps ddim clip 20']:.2f}")
    a.out.mkdir(parents=True, exist_ok=True)
    (a.out / "vp_ddim_diagnosis.json").write_text(json.dumps(res, indent=1))


if __name__ == "__main__":
    main()
