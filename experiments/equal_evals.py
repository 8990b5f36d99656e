"""Trained teachers (or any flow models) compared at equal network evaluations, with enough samples to decide.

Each ``--set LABEL=CHECKPOINT:SOLVER:STEPS[:GRID]`` names a checkpoint (``kacnum.images.train.load_teacher``: a Kac,
flight, Gaussian FM or VP teacher; a VP teacher is sampled with DDIM, its solver field is ignored), a solver of
``kacnum.flows.solvers`` (euler, heun, ab2, rk4), a step count and a time grid (``uniform``, ``power:RHO``, ``kac``).
Every set is sampled from the same latent seeds and balanced labels (``kacnum.images.pipeline.sample_flow_set``), saved
as ``OUT/<label>.samples.pt`` plus the ``.npz``/``.json`` that any other metric can read, and scored with the
run's FID protocol (``RUN/eval``: feature classifier and reference statistics, as the pipeline's eval stage):

* FID with its 95 % bootstrap interval, KID x 10^3 (unbiased, std over reference subsets), class accuracy,
  network evaluations per image (a guided call costs 2);
* every pair's FID ratio with its interval: paired (pairs resampled) when the two sets are coupled
  (``kacnum.images.pipeline.coupled_sets``: same path, seed, batches, labels), otherwise from independent bootstraps;
* the FID floor: as many real test images against the same reference.

Writes ``OUT/equal_evals.json`` and ``OUT/equal_evals.md``; a rerun reuses sample files whose settings match.

    python experiments/equal_evals.py --run runs/study_run --out runs/equal_evals --num-samples 4000 \\
        --set kac=runs/study_run/teacher/checkpoint.pt:ab2:20:power:2 \\
        --set fm=runs/study_run/baselines/fm/checkpoint.pt:ab2:20
"""
from __future__ import annotations

import argparse
import shutil
import sys
import time
from pathlib import Path
from typing import Optional, Sequence

import torch

from kacnum.core import cli
from kacnum.core.checkpoint import atomic_write, save_json

NAME = "equal_evals"


def _set_arg(text: str) -> dict:
    from kacnum.flows.solvers import METHODS, parse_time_grid

    label, eq, rest = text.partition("=")
    parts = rest.split(":")
    usage = f"must be LABEL=CHECKPOINT:SOLVER:STEPS[:GRID] (SOLVER in {','.join(METHODS)}), got {text!r}"
    if not eq or not label.strip() or len(parts) < 3:
        raise argparse.ArgumentTypeError(usage)
    ckpt, solver, steps, grid = parts[0], parts[1], parts[2], ":".join(parts[3:]) or "uniform"
    if solver not in METHODS or not steps.isdigit() or int(steps) < 1:
        raise argparse.ArgumentTypeError(usage)
    try:
        parse_time_grid(grid)
    except ValueError as e:
        raise argparse.ArgumentTypeError(f"{text!r}: {e}") from None
    if not label.replace("_", "").replace("-", "").isalnum():
        raise argparse.ArgumentTypeError(f"LABEL must be letters, digits, - or _, got {label!r}")
    return {"label": label, "checkpoint": ckpt, "solver": solver, "steps": int(steps), "grid": grid.lower()}


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    p = cli.ArgumentParser(prog="experiments/equal_evals.py", description=__doc__.split("\n")[0])
    p.add_argument("--run", type=Path, required=True, help="pipeline run folder whose eval/ cache scores the sets")
    p.add_argument("--set", dest="sets", type=_set_arg, action="append", required=True,
                   metavar="LABEL=CHECKPOINT:SOLVER:STEPS[:GRID]", help="a set to sample and score (repeat)")
    p.add_argument("--out", type=Path, default=None, help="output folder (default RUN/equal_evals)")
    p.add_argument("--num-samples", type=cli.positive_int, default=1000, help="images per set (default 1000)")
    p.add_argument("--batch-size", type=cli.positive_int, default=500, help="images per sampling batch")
    p.add_argument("--seed", type=cli.nonnegative_int, default=1234, help="latent seed (default 1234)")
    p.add_argument("--guidance", type=cli.float_in(0.0, 50.0), default=None,
                   help="guidance scale (default: each teacher's own)")
    p.add_argument("--n-boot", type=cli.positive_int, default=200, help="bootstrap resamples per interval")
    p.add_argument("--device", default=None, help="cpu, cuda (default: cuda if present)")
    p.add_argument("--threads", type=cli.positive_int, default=None, help="torch and BLAS threads")
    p.add_argument("--quiet", action="store_true", help="no table on stdout")
    args = p.parse_args(argv)
    labels = [s["label"] for s in args.sets]
    if len(set(labels)) != len(labels):
        raise cli.UsageError(f"--set: labels must differ, got {labels}")
    for s in args.sets:
        ckpt = cli.check_input_file(s["checkpoint"], "--set", f"the checkpoint of set {s['label']!r}")
        if ckpt.stat().st_size == 0:
            raise cli.UsageError(f"--set: the checkpoint of set {s['label']!r}, {s['checkpoint']}, is empty (0 bytes); "
                                 "name a training checkpoint.pt")
    if not args.run.is_dir():
        raise cli.UsageError(f"--run: no folder {args.run}; a pipeline run folder (its eval/ cache scores the sets)")
    cli.check_device(args.device)
    if args.out is None:
        args.out = args.run / NAME
    cli.check_out_dir(args.out)
    return args


def _sample(spec: dict, args, device, log):
    from kacnum.flows.paths import VPPath
    from kacnum.images.pipeline import SampleSet, sample_ddim_set, sample_flow_set
    from kacnum.images.train import load_teacher

    model, path, tcfg = load_teacher(spec["checkpoint"], device=device)
    guidance = float(tcfg.guidance_scale if args.guidance is None else args.guidance)
    vp = isinstance(path, VPPath)
    meta_key = {"checkpoint": str(Path(spec["checkpoint"]).resolve()), "solver": "ddim" if vp else spec["solver"],
                "steps": spec["steps"], "grid": spec["grid"], "num_samples": args.num_samples, "seed": args.seed,
                "batch_size": args.batch_size, "guidance": guidance}
    file = args.out / f"{spec['label']}.samples.pt"
    if file.is_file():
        try:
            old = SampleSet.load(file)
            if old.meta.get("equal_evals") == meta_key:
                log(f"[{NAME}] {spec['label']}: reusing {file}")
                return old, 0.0, tcfg
        except (ValueError, RuntimeError, OSError, KeyError):
            pass
    log(f"[{NAME}] {spec['label']}: {args.num_samples} samples, {spec['steps']} "
        f"{'DDIM' if vp else spec['solver'].upper()} steps ({spec['grid']} grid), guidance {guidance:g}")
    t0 = time.perf_counter()
    common = dict(num_samples=args.num_samples, steps=spec["steps"], guidance=guidance, seed=args.seed,
                  batch_size=args.batch_size, device=device, time_grid=spec["grid"])
    if vp:
        s = sample_ddim_set(model, path, spec["label"], **common)
    else:
        s = sample_flow_set(model, path, spec["label"], solver=spec["solver"], progress=True, **common)
    s.meta["equal_evals"] = meta_key
    s.save(file)
    return s, time.perf_counter() - t0, tcfg


def run(args, log=print) -> dict:
    from kacnum.images.data import load_dataset
    from kacnum.images.metrics import (ClassifierExtractor, KIDReference, calc_fid, classifier_accuracy, extract_features,
                                fid_bootstrap, kid, paired_ratio_interval, ratio_interval, reference_features,
                                save_sample_set)
    from kacnum.images.pipeline import coupled_sets, feature_extractor_for, reference_for

    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    rows, sets, feats, boots = [], [], [], []
    tcfg0 = None
    for i, spec in enumerate(args.sets):
        s, sec, tcfg = _sample(spec, args, device, log)
        tcfg0 = tcfg0 or tcfg
        save_sample_set(args.out / f"{spec['label']}.npz", s.images, s.labels,
                        {"method": spec["label"], "nfe": s.nfe, "nfe_model": s.nfe_model, "guidance": s.guidance,
                         **{k: v for k, v in s.meta.items() if k != "equal_evals"}})
        sets.append(s)
        rows.append({**spec, "nfe": s.nfe, "nfe_model": s.nfe_model, "guidance": s.guidance,
                     "path": s.meta.get("path"), "sample_seconds": sec})
    ds = tcfg0.dataset
    cache = args.run / "eval"
    ext = feature_extractor_for(ds, cache, device="cpu", data_dir=tcfg0.data_dir, seed=tcfg0.seed)
    train_x, _ = load_dataset(ds, data_dir=tcfg0.data_dir, split="train")
    ref = reference_for(ds, ext, cache, split="train", data=train_x)
    kref = KIDReference(reference_features(ds, train_x, ext, cache, split="train", max_images=10_000),
                        subset_size=min(1000, args.num_samples), seed=0)
    for i, (s, row) in enumerate(zip(sets, rows)):
        f = extract_features(s.images.clamp(-1, 1), ext)
        b = fid_bootstrap(f, ref, n_boot=args.n_boot, seed=100 + i)
        row.update({"fid": calc_fid(torch.from_numpy(f), ref, ext).value, "fid_interval": [b.lo, b.hi],
                    "kid": kid(f, kref, n_boot=args.n_boot, seed=100 + i).to_dict(),
                    "accuracy": classifier_accuracy(ext, s.images.clamp(-1, 1), s.labels)
                    if s.labels is not None and isinstance(ext, ClassifierExtractor) else None,
                    "n": int(f.shape[0])})
        feats.append(f)
        boots.append(b)
    pairs = []
    for i in range(len(sets)):
        for j in range(i + 1, len(sets)):
            paired = coupled_sets(sets[i], sets[j])
            q = (paired_ratio_interval(feats[i], feats[j], ref, n_boot=args.n_boot, seed=7) if paired
                 else ratio_interval(boots[i], boots[j]))
            lo, hi = q["interval"]
            pairs.append({"first": rows[i]["label"], "second": rows[j]["label"], "ratio": q["value"],
                          "interval": [lo, hi], "paired": paired, "decided": bool(hi < 1.0 or lo > 1.0),
                          "nfe_model": [rows[i]["nfe_model"], rows[j]["nfe_model"]]})
    test_x, _ = load_dataset(ds, data_dir=tcfg0.data_dir, split="test")
    x = test_x[:args.num_samples].clamp(-1, 1)
    f = extract_features(x, ext)
    b = fid_bootstrap(f, ref, n_boot=args.n_boot, seed=99)
    floor = {"fid": calc_fid(torch.from_numpy(f), ref, ext).value, "fid_interval": [b.lo, b.hi],
             "kid": kid(f, kref, n_boot=args.n_boot, seed=99).to_dict(), "n": int(x.shape[0]), "split": "test"}
    return {"run": str(args.run), "dataset": ds, "num_samples": args.num_samples, "seed": args.seed,
            "device": device, "rows": rows, "pairs": pairs, "floor": floor, "n_boot": args.n_boot,
            "protocol": ext.protocol, "cost": "nfe_model = network evaluations per image (a guided call costs 2)"}


def _f(v, spec=".4g"):
    return "—" if v is None else format(v, spec)


def markdown(res: dict) -> str:
    lines = [f"# Teachers at equal network evaluations ({res['dataset']}, {res['num_samples']} samples per set)", "",
             "FID on the run's feature network against the train split [95 % bootstrap interval]; KID × 10³ ± std "
             "over reference subsets; network evaluations per image (a guided call costs 2).", "",
             "| set | checkpoint | sampler | steps | grid | network evals | FID [95 %] | KID × 10³ | class acc. | "
             "sample s |", "|---|---|---|---|---|---|---|---|---|---|"]
    for r in res["rows"]:
        k = r["kid"]
        lines.append(f"| {r['label']} | {r['checkpoint']} | {r['solver']} | {r['steps']} | {r['grid']} | "
                     f"{r['nfe_model']} | {r['fid']:.4g} [{r['fid_interval'][0]:.3g}, {r['fid_interval'][1]:.3g}] | "
                     f"{1e3 * k['value']:.3g} ± {1e3 * k['std']:.2g} | {_f(r['accuracy'], '.3f')} | "
                     f"{_f(r['sample_seconds'], '.0f')} |")
    fl = res["floor"]
    lines += ["", f"FID floor ({fl['n']} real {fl['split']} images against the same reference): {fl['fid']:.4g} "
                  f"[{fl['fid_interval'][0]:.3g}, {fl['fid_interval'][1]:.3g}], KID × 10³ {1e3 * fl['kid']['value']:.3g}.",
              "", "FID ratios (paired: coupled sets, pairs resampled; decided: the interval excludes 1):", "",
              "| first | second | network evals | FID ratio [95 %] | interval | decided |", "|---|---|---|---|---|---|"]
    for p in res["pairs"]:
        lines.append(f"| {p['first']} | {p['second']} | {p['nfe_model'][0]} / {p['nfe_model'][1]} | {p['ratio']:.3f} "
                     f"[{p['interval'][0]:.3f}, {p['interval'][1]:.3f}] | "
                     f"{'paired' if p['paired'] else 'independent'} | {'yes' if p['decided'] else 'no'} |")
    return "\n".join(lines) + "\n"


def _make_out(out: Path) -> Optional[Path]:
    """Create the output folder; return the topmost folder this call created (None if ``out`` existed)."""
    top = None
    probe = out
    while not probe.exists():
        top, probe = probe, probe.parent
    out.mkdir(parents=True, exist_ok=True)
    return top


def main(argv: Optional[Sequence[str]] = None) -> dict:
    args = parse_args(argv)
    threads = cli.resolve_threads(args.threads)
    torch.set_num_threads(threads)
    created = _make_out(args.out)
    t0 = time.perf_counter()
    try:
        res = run(args, log=(lambda *a, **k: None) if args.quiet else (lambda *a: print(*a, flush=True)))
    except BaseException:
        # a run that fails before writing anything (e.g. an unreadable checkpoint) leaves no empty folder
        # behind; sample files already written stay, a rerun reuses them
        if created is not None and not any(f.is_file() for f in created.rglob("*")):
            shutil.rmtree(created)
        raise
    res["seconds"] = time.perf_counter() - t0
    res["threads"] = threads
    save_json(args.out / "equal_evals.json", res)
    md = markdown(res)
    atomic_write(args.out / "equal_evals.md", lambda f: f.write(md), mode="w")
    if not args.quiet:
        print(md)
    return res


if __name__ == "__main__":
    sys.exit(cli.run_main(main))
