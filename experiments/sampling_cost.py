"""Sampling cost of a trained Kac-flow teacher: solver x time grid x steps against a fine reference.

Reads a pipeline run folder (``experiments/cifar_distill.py --out RUN``) that holds a trained teacher,
``RUN/teacher/checkpoint.pt`` (its EMA network and path are loaded with ``kacnum.images.train.load_teacher``).
From the same latents (``kacnum.images.pipeline.sample_flow_set``: per-batch seeds ``derive_seed(seed, b)``,
so every configuration starts from identical noise) it samples the guided teacher with every

* solver of ``--solvers`` (default euler, heun, ab2; ``kacnum.flows.solvers``),
* time grid of ``--grids`` (default uniform, power:2, power:3, kac; ``kacnum.flows.solvers.make_time_grid``:
  ``power:RHO`` and ``kac`` put the small steps near the data end t = 0),
* step count of ``--steps`` (default 4, 8, 16, 32, 64, 100),

and measures the coupled RMS per pixel to a reference solution from the same latents
(``--reference rk4:400``: 400 RK4 steps on the uniform grid; ``ab2:400`` is cheaper):
``sqrt(mean over images and pixels of (x - x_ref)^2)``, pixels in [-1, 1]. Cost is counted as network
evaluations per image (``nfe_model``: a guided field call costs 2; Heun calls the field twice per step).

With ``--fid`` every set also gets its FID with a 95 % bootstrap interval (``kacnum.images.metrics.fid_bootstrap``)
through the run's evaluation cache (``RUN/eval``: the feature classifier ``classifier_<dataset>.pt`` or
Inception, and the cached reference statistics; missing ones are computed and cached as the pipeline's
eval stage does). The reference solution's FID is taken as the converged FID, and the table reports, per
(solver, grid), the fewest steps whose FID is within ``--fid-tol`` (3 %) of it. Every set is coupled to
the reference (same latents and labels), so each FID/reference ratio also gets the paired bootstrap
interval (``kacnum.images.metrics.paired_ratio_interval``, resampling pairs: far narrower than two independent
FID intervals), and the summary ``fid_ratio_within`` gives the fewest steps whose ratio is within the
tolerance with 95 % confidence (the whole interval inside 1 +- tol; a few-step FID below the converged one
does not count as converged). ``--from-json FILE`` re-summarises a saved result with other tolerances
without sampling. Without ``--fid`` it
reports the fewest steps whose RMS is at most ``--rms-tol``. ``--teacher`` studies another checkpoint
of the run, e.g. the FM baseline ``RUN/baselines/fm/checkpoint.pt``.

Writes ``OUT/sampling_cost.json`` (every configuration: solver, grid, steps, nfe, nfe_model, rms,
rms_p99 per image, seconds, fid, fid_interval; the reference; the fewest-steps summary) and
``OUT/sampling_cost.png`` (RMS, and FID with ``--fid``, against network evaluations; colour = solver,
line style = grid); prints the table. ``OUT`` defaults to ``RUN/sampling_cost``.

    python experiments/sampling_cost.py --run runs/cpu --num-samples 200 --threads 1
    python experiments/sampling_cost.py --run runs/cpu --fid --num-samples 1000 --reference ab2:400
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Optional, Sequence

sys.path.insert(0, str(Path(__file__).resolve().parent))

import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402

import _common  # noqa: E402
from kacnum.core import cli  # noqa: E402
from kacnum.core.checkpoint import load_json, save_json  # noqa: E402
from kacnum.images.metrics import calc_fid, extract_features, fid_bootstrap, paired_ratio_interval  # noqa: E402
from kacnum.images.pipeline import feature_extractor_for, reference_for, sample_flow_set  # noqa: E402
from kacnum.flows.solvers import METHODS, make_time_grid, parse_time_grid  # noqa: E402
from kacnum.images.train import load_teacher  # noqa: E402

DEFAULT_SOLVERS = ("euler", "heun", "ab2")
DEFAULT_GRIDS = ("uniform", "power:2", "power:3", "kac")
DEFAULT_STEPS = (4, 8, 16, 32, 64, 100)


def _grid_list(text: str) -> tuple:
    out = []
    for part in text.split(","):
        if not part.strip():
            continue
        try:
            parse_time_grid(part)
        except ValueError as e:
            raise argparse.ArgumentTypeError(str(e)) from None
        out.append(part.strip().lower())
    if not out:
        raise argparse.ArgumentTypeError(f"must be a comma-separated list of time grids, got {text!r}")
    return tuple(out)


def _reference(text: str) -> tuple:
    solver, _, steps = text.partition(":")
    if solver not in METHODS or not steps.isdigit() or int(steps) < 1:
        raise argparse.ArgumentTypeError(f"must be SOLVER:STEPS with SOLVER in {','.join(METHODS)}, "
                                             f"e.g. rk4:400; got {text!r}")
    return solver, int(steps)


def parse_args(argv: Optional[Sequence[str]] = None):
    p = cli.ArgumentParser(prog="experiments/sampling_cost.py", description=__doc__)
    p.add_argument("--run", type=Path, required=True, help="pipeline run folder with teacher/checkpoint.pt")
    p.add_argument("--teacher", type=Path, default=None,
                   help="teacher checkpoint to study (default RUN/teacher/checkpoint.pt; e.g. "
                        "RUN/baselines/fm/checkpoint.pt for the FM teacher)")
    p.add_argument("--out", type=Path, default=None, help="output folder (default RUN/sampling_cost)")
    p.add_argument("--solvers", type=cli.choice_list(METHODS), default=DEFAULT_SOLVERS,
                   help=f"solvers (default {','.join(DEFAULT_SOLVERS)})")
    p.add_argument("--grids", type=_grid_list, default=DEFAULT_GRIDS,
                   help=f"time grids (default {','.join(DEFAULT_GRIDS)})")
    p.add_argument("--steps", type=cli.int_list(minimum=1), default=DEFAULT_STEPS,
                   help=f"step counts (default {','.join(map(str, DEFAULT_STEPS))})")
    p.add_argument("--reference", type=_reference, default=("rk4", 400), metavar="SOLVER:STEPS",
                   help="reference solution on the uniform grid (default rk4:400)")
    p.add_argument("--num-samples", type=cli.positive_int, default=200, help="images per set (default 200)")
    p.add_argument("--batch-size", type=cli.positive_int, default=200, help="images per sampling batch")
    p.add_argument("--guidance", type=cli.float_in(0.0, 50.0), default=None,
                   help="guidance scale (default: the teacher's training config)")
    p.add_argument("--seed", type=cli.nonnegative_int, default=1234, help="latent seed (default 1234)")
    p.add_argument("--fid", action="store_true", help="also FID with 95 %% intervals through RUN/eval")
    p.add_argument("--n-boot", type=cli.positive_int, default=200, help="bootstrap resamples per FID interval")
    p.add_argument("--fid-tol", type=cli.positive_float, default=0.03,
                   help="fewest steps with |FID / converged FID - 1| <= this (default 0.03)")
    p.add_argument("--rms-tol", type=cli.positive_float, default=0.01,
                   help="fewest steps with RMS per pixel <= this (default 0.01)")
    p.add_argument("--classifier-epochs", type=cli.positive_int, default=5,
                   help="epochs of the FID classifier if RUN/eval has none (default 5)")
    p.add_argument("--device", default=None, help="cpu, cuda (default: cuda if present)")
    p.add_argument("--threads", type=cli.positive_int, default=None, help="torch and BLAS threads")
    p.add_argument("--quiet", action="store_true", help="no table on stdout")
    p.add_argument("--from-json", type=Path, default=None, metavar="FILE",
                   help="no sampling: re-summarise a saved sampling_cost.json with --fid-tol / --rms-tol, "
                        "rewrite it and its figure (--run is then only the default output folder)")
    args = p.parse_args(argv)
    if args.from_json is not None:
        cli.check_input_file(args.from_json, "--from-json", "a sampling_cost.json written by this script")
        if args.out is None:
            args.out = args.from_json.parent
        cli.check_out_dir(args.out)
        return args
    if args.teacher is None:
        cli.check_input_file(args.run / "teacher" / "checkpoint.pt", "--run", "a pipeline run folder whose teacher "
                             "stage has finished (experiments/cifar_distill.py --stage teacher --out RUN)")
    else:
        cli.check_input_file(args.teacher, "--teacher", "a teacher checkpoint (kacnum.images.train.load_teacher)")
    cli.check_device(args.device)
    if args.out is None:
        args.out = args.run / "sampling_cost"
    cli.check_out_dir(args.out)
    return args


def _rms(x: torch.Tensor, ref: torch.Tensor) -> tuple[float, float]:
    d = (x.double() - ref.double()).flatten(1)
    per_image = d.pow(2).mean(1).sqrt()
    return float(d.pow(2).mean().sqrt()), float(torch.quantile(per_image, 0.99))


def fewest_steps(configs: list, key: str, target: float, tol: float, relative: bool) -> dict:
    """Per (solver, grid): the fewest steps whose ``key`` is within ``tol`` of ``target`` (relative:
    ``|v / target - 1| <= tol``; else ``v <= tol``), with its network evaluations; None if no step count is."""
    out = {}
    for c in configs:
        name = f"{c['solver']}/{c['grid']}"
        v = c.get(key)
        ok = v is not None and (abs(v / target - 1.0) <= tol if relative else v <= tol)
        if ok and (out.get(name) is None or c["steps"] < out[name]["steps"]):
            out[name] = {"steps": c["steps"], "nfe_model": c["nfe_model"], key: v}
        out.setdefault(name, None)
    return out


def summarise(configs: list, ref_fid: Optional[float], fid_tol: float, rms_tol: float) -> dict:
    """The fewest steps per (solver, grid): RMS <= ``rms_tol``; |FID / converged - 1| <= ``fid_tol`` (point);
    and, where the configurations carry paired ratio intervals, the whole interval inside
    ``[1 - fid_tol, 1 + fid_tol]`` (``fid_ratio_dev = max(hi - 1, 1 - lo)`` per configuration: within the
    tolerance with 95 % confidence; a few-step FID *below* the converged one is not "converged")."""
    summary = {"rms": fewest_steps(configs, "rms", 0.0, rms_tol, relative=False)}
    if ref_fid is not None:
        summary["fid"] = fewest_steps(configs, "fid", ref_fid, fid_tol, relative=True)
        for c in configs:
            q = c.get("fid_ratio")
            c.pop("fid_ratio_hi", None)
            c["fid_ratio_dev"] = max(q["interval"][1] - 1.0, 1.0 - q["interval"][0]) if q else None
        summary["fid_ratio_within"] = fewest_steps(configs, "fid_ratio_dev", 0.0, fid_tol, relative=False)
    return summary


def run(args) -> dict:
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    ckpt = args.teacher if args.teacher is not None else args.run / "teacher" / "checkpoint.pt"
    model, path, tcfg = load_teacher(ckpt, device=device)
    guidance = float(tcfg.guidance_scale if args.guidance is None else args.guidance)
    for g in args.grids:  # refuse a kac grid on a non-Kac teacher before any sampling
        make_time_grid(g, 2, path.T, path.t_min_default, path=path)
    common = dict(num_samples=args.num_samples, guidance=guidance, seed=args.seed, batch_size=args.batch_size,
                  device=device)

    def sample(solver, steps, grid):
        t0 = time.perf_counter()
        s = sample_flow_set(model, path, "kac_teacher", steps=steps, solver=solver, time_grid=grid, **common)
        return s, time.perf_counter() - t0

    ext = ref_stats = None
    if args.fid:
        ds = tcfg.dataset
        ext = feature_extractor_for(ds, args.run / "eval", device="cpu", data_dir=tcfg.data_dir,
                                    classifier_epochs=args.classifier_epochs, seed=tcfg.seed)
        ref_stats = reference_for(ds, ext, args.run / "eval", split="train", data_dir=tcfg.data_dir)

    ref_feats = None

    def score(images, seed):
        """FID, its interval, and the FID ratio to the reference with the paired (same latents) interval."""
        if ext is None:
            return None, None, None
        f = extract_features(images.clamp(-1, 1), ext)
        b = fid_bootstrap(f, ref_stats, n_boot=args.n_boot, seed=seed)
        q = None
        if ref_feats is not None:
            q = paired_ratio_interval(f, ref_feats, ref_stats, n_boot=args.n_boot, seed=seed)
            q = {"value": q["value"], "interval": q["interval"], "relative_half_width": q["relative_half_width"]}
        return calc_fid(torch.from_numpy(f), ref_stats, ext).value, [b.lo, b.hi], (f, q)

    r_solver, r_steps = args.reference
    ref_set, ref_sec = sample(r_solver, r_steps, "uniform")
    ref_fid, ref_iv, ref_extra = score(ref_set.images, 0)
    ref_feats = None if ref_extra is None else ref_extra[0]
    reference = {"solver": r_solver, "steps": r_steps, "grid": "uniform", "nfe": ref_set.nfe,
                 "nfe_model": ref_set.nfe_model, "seconds": ref_sec, "fid": ref_fid, "fid_interval": ref_iv}
    configs = []
    k = 0
    for solver in args.solvers:
        for grid in args.grids:
            for steps in args.steps:
                k += 1
                s, sec = sample(solver, steps, grid)
                rms, p99 = _rms(s.images, ref_set.images)
                fid, iv, extra = score(s.images, k)
                configs.append({"solver": solver, "grid": grid, "steps": steps, "nfe": s.nfe,
                                "nfe_model": s.nfe_model, "rms": rms, "rms_p99": p99, "seconds": sec,
                                "fid": fid, "fid_interval": iv,
                                "fid_ratio": None if extra is None else extra[1]})
    summary = summarise(configs, ref_fid, args.fid_tol, args.rms_tol)
    return {"run": str(args.run), "teacher": repr(path), "dataset": tcfg.dataset, "guidance": guidance,
            "num_samples": args.num_samples, "seed": args.seed, "device": device, "reference": reference,
            "configs": configs, "fewest_steps": summary, "fid_tol": args.fid_tol, "rms_tol": args.rms_tol,
            "rms_definition": "sqrt(mean over images and pixels of (x - x_ref)^2), pixels in [-1, 1], same latents",
            "cost": "nfe_model = network evaluations per image (a guided call costs 2)"}


def plot(res: dict, file: Path) -> Path:
    has_fid = res["reference"]["fid"] is not None
    fig, axes = plt.subplots(1, 2 if has_fid else 1, figsize=(11 if has_fid else 6, 4.2), squeeze=False)
    solvers = sorted({c["solver"] for c in res["configs"]})
    grids = list(dict.fromkeys(c["grid"] for c in res["configs"]))
    colors = {s: f"C{i}" for i, s in enumerate(solvers)}
    styles = {g: ls for g, ls in zip(grids, ["-", "--", ":", "-.", (0, (5, 1)), (0, (1, 3))])}
    for s in solvers:
        for g in grids:
            pts = sorted((c["nfe_model"], c["rms"], c["fid"]) for c in res["configs"] if c["solver"] == s and c["grid"] == g)
            if not pts:
                continue
            x = [p[0] for p in pts]
            axes[0][0].loglog(x, [max(p[1], 1e-12) for p in pts], color=colors[s], ls=styles.get(g, "-"),
                              marker="o", ms=3, label=f"{s}, {g}")
            if has_fid:
                axes[0][1].loglog(x, [p[2] for p in pts], color=colors[s], ls=styles.get(g, "-"), marker="o", ms=3)
    r = res["reference"]
    axes[0][0].set(xlabel="network evaluations per image", ylabel="RMS per pixel to the reference",
                   title=f"coupled error vs {r['solver']} x {r['steps']} ({res['num_samples']} images)")
    axes[0][0].legend(fontsize=6, ncol=2)
    if has_fid:
        axes[0][1].axhline(r["fid"], color="k", lw=0.8)
        axes[0][1].axhspan(r["fid"] * (1 - res["fid_tol"]), r["fid"] * (1 + res["fid_tol"]), color="0.85")
        axes[0][1].set(xlabel="network evaluations per image", ylabel="FID",
                       title=f"FID (grey: within {100 * res['fid_tol']:g} % of the reference)")
    fig.tight_layout()
    return _common.write_png(fig, file, dpi=110)


def print_table(res: dict) -> None:
    has_fid = res["reference"]["fid"] is not None
    print(f"{'solver':<7}{'grid':<10}{'steps':>6}{'evals':>7}{'RMS/pixel':>12}{'p99':>10}{'s':>7}"
          + (f"{'FID':>9}{'95% interval':>20}{'FID/ref':>9}{'paired 95%':>18}" if has_fid else ""))
    for c in res["configs"]:
        line = (f"{c['solver']:<7}{c['grid']:<10}{c['steps']:>6}{c['nfe_model']:>7}{c['rms']:>12.4g}"
                f"{c['rms_p99']:>10.3g}{c['seconds']:>7.1f}")
        if has_fid:
            line += f"{c['fid']:>9.4g}{'[%.3g, %.3g]' % tuple(c['fid_interval']):>20}"
            q = c.get("fid_ratio")
            if q:
                line += f"{q['value']:>9.3f}{'[%.3f, %.3f]' % tuple(q['interval']):>18}"
        print(line)
    r = res["reference"]
    print(f"reference: {r['solver']} x {r['steps']} steps ({r['nfe_model']} evals)"
          + (f", FID {r['fid']:.4g} [{r['fid_interval'][0]:.3g}, {r['fid_interval'][1]:.3g}]" if has_fid else ""))
    for key, tol in (("fid", f"within {100 * res['fid_tol']:g} % of the converged FID"),
                     ("fid_ratio_within", f"within {100 * res['fid_tol']:g} % of the converged FID with 95 % "
                                          "confidence (paired interval inside 1 +- tol)"),
                     ("rms", f"RMS <= {res['rms_tol']:g}")):
        if key not in res["fewest_steps"]:
            continue
        print(f"fewest steps {tol}:")
        for name, v in res["fewest_steps"][key].items():
            print(f"  {name:<16} " + ("none of the step counts" if v is None else
                                       f"{v['steps']} steps ({v['nfe_model']} evals)"))


def main(argv: Optional[Sequence[str]] = None) -> dict:
    args = parse_args(argv)
    if args.from_json is not None:  # no sampling: the saved configurations under the given tolerances
        res = load_json(args.from_json)
        res["fid_tol"], res["rms_tol"] = args.fid_tol, args.rms_tol
        res["fewest_steps"] = summarise(res["configs"], res["reference"]["fid"], args.fid_tol, args.rms_tol)
    else:
        threads = cli.resolve_threads(args.threads)
        old = torch.get_num_threads()
        torch.set_num_threads(threads)
        try:
            from threadpoolctl import threadpool_limits

            with threadpool_limits(limits=threads):
                res = run(args)
        finally:
            torch.set_num_threads(old)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    res["png"] = str(plot(res, out / "sampling_cost.png"))
    save_json(out / "sampling_cost.json", res)
    if not args.quiet:
        print_table(res)
        print(f"wrote {out / 'sampling_cost.json'} and {res['png']}")
    return res


if __name__ == "__main__":
    sys.exit(cli.run_main(main))
