"""How the DistillKac student/teacher FID ratios depend on the distillation budget and recipe.

Takes a finished ``experiments/cifar_distill.py`` run (its ``teacher/checkpoint.pt``, the teacher's
``sample/kac_teacher_nfe100.samples.pt`` and the ``eval/`` cache of the FID feature network and reference
statistics; with ``--teachers kac,fm`` also ``baselines/fm/checkpoint.pt``) and distils the same teacher(s)
again under each named setting, into ``OUT/<name>/``, then scores the students with the run's own FID
protocol (bootstrap intervals on every FID and ratio, :func:`kacnum.images.pipeline.eval_stage`). Settings run in
the order given; one that would not finish within ``--budget`` seconds (judged from the previous settings'
speed) is skipped, and ``OUT/sweep.json`` / ``OUT/sweep.md`` are rewritten after every setting, so a
cut-short run keeps what it finished.

    python experiments/distill_sweep.py --run runs/cpu --out runs/cpu_sweep \\
        --settings preset,s1000_cos,s2000_cos --device cuda --budget 400
    python experiments/distill_sweep.py --run runs/cpu --out runs/curve --curve 600,1000,2000 \\
        --variants cos,cos_traj_roll --teachers kac,fm --oneshot 1

Settings. Fixed names (``SETTINGS``)::

    preset      300 steps, batch 64, lr 2e-4, constant  (the cpu preset's distillation)
    s600_cos    600 steps, batch 128, lr 5e-4, cosine
    s1000       1000 steps, batch 128, lr 2e-4, constant
    s1000_cos   1000 steps, batch 128, lr 5e-4, cosine
    s2000_cos   2000 steps, batch 128, lr 5e-4, cosine
    s1000_roll  s1000_cos with the roll-out source (states from the teacher's own trajectories)
    tiny        3 steps, batch 16 (checks that the sweep runs)

and names built from ``_``-separated parts (:func:`parse_setting`): ``s<N>`` steps per stage (required),
``b<B>`` batch (128), ``lr<X>`` learning rate (5e-4 with ``cos``, else 2e-4), ``cos`` cosine schedule,
``roll`` roll-out source, ``mix<F>`` mixed source with a share ``F`` of roll-out rows (``mix`` = 0.5),
``traj`` trajectory targets (the 100-step teacher's own AB-2 states), ``u<P>`` null-label share; e.g.
``s600_cos_traj_roll``, ``s1000_b64_cos_mix0.25_traj``. ``--curve 600,1000,2000 --variants cos,cos_traj_roll``
is shorthand for the settings ``s600_cos, s1000_cos, s2000_cos, s600_cos_traj_roll, ...``.

Report. Per setting: every student's FID (and 95 % interval), its ratio over its own teacher (DistillKac over
the run's 100-step Kac teacher, DistillFM over the FM teacher's 100-step AB-2 samples, one-shot students over
the same teachers) with intervals, and seconds. The ratio curve: per variant (a setting's name without its
``s<N>`` part), teacher and student step count, the ratio against steps per stage, and where it stops
improving (:func:`plateau`: the smallest steps per stage that no larger budget beats by more than the ratio's
95 % interval half-width: more steps there are not a decided improvement).
"""
from __future__ import annotations

import argparse
import math
import re
import sys
import time
from pathlib import Path
from typing import Optional, Sequence

import torch

from kacnum.core import cli
from kacnum.core.checkpoint import load_json, save_json
from kacnum.images.data import load_dataset
from kacnum.students.distill import DistillConfig
from kacnum.images.pipeline import (collect_sample_sets, distill_stage, eval_stage, feature_extractor_for, oneshot_budget,
                             reference_for, sample_stage)
from kacnum.images.train import load_teacher

#: name -> (steps per stage, batch size, lr, distill overrides)
SETTINGS = {
    "tiny": (3, 16, 2e-4, {"ema_decay": 0.9}),  # a check that the sweep runs, seconds on a CPU
    "preset": (300, 64, 2e-4, {"ema_decay": 0.99}),
    "s600_cos": (600, 128, 5e-4, {"ema_decay": 0.99, "lr_schedule": "cosine"}),
    "s1000": (1000, 128, 2e-4, {"ema_decay": 0.99}),
    "s1000_cos": (1000, 128, 5e-4, {"ema_decay": 0.99, "lr_schedule": "cosine"}),
    "s2000_cos": (2000, 128, 5e-4, {"ema_decay": 0.99, "lr_schedule": "cosine"}),
    "s1000_roll": (1000, 128, 5e-4, {"ema_decay": 0.99, "lr_schedule": "cosine", "source": "rollout"}),
}
TEACHERS = ("kac", "fm")
_PART = re.compile(r"^(s|b|lr|mix|u)([0-9.eE+-]*)$|^(cos|roll|traj)$")


def parse_setting(name: str) -> tuple:
    """``(steps, batch, lr, overrides)`` of a setting: a name of :data:`SETTINGS`, or parts joined by ``_``
    (module docstring): ``s600_cos_traj_roll`` -> ``(600, 128, 5e-4, {"ema_decay": 0.99, "lr_schedule":
    "cosine", "target": "trajectory", "source": "rollout"})``. Raises ``ValueError`` naming the bad part."""
    if name in SETTINGS:
        steps, batch, lr, over = SETTINGS[name]
        return steps, batch, lr, dict(over)
    steps, batch, lr, over = None, 128, None, {"ema_decay": 0.99}
    for part in name.split("_"):
        m = _PART.match(part)
        if not m:
            raise ValueError(f"setting {name!r}: unknown part {part!r}")
        key, val, flag = m.group(1), m.group(2), m.group(3)
        try:
            if key == "s":
                steps = int(val)
            elif key == "b":
                batch = int(val)
            elif key == "lr":
                lr = float(val)
            elif key == "mix":
                over["source"], over["rollout_fraction"] = "mix", float(val) if val else 0.5
            elif key == "u":
                over["p_uncond"] = float(val)
        except ValueError:
            raise ValueError(f"setting {name!r}: part {part!r} needs a number") from None
        if flag == "cos":
            over["lr_schedule"] = "cosine"
        elif flag == "roll":
            over["source"] = "rollout"
        elif flag == "traj":
            over["target"] = "trajectory"
    if steps is None or steps < 1 or batch < 1 or (lr is not None and not lr > 0):
        raise ValueError(f"setting {name!r}: needs s<steps> >= 1 (and b<batch> >= 1, lr<x> > 0)")
    if lr is None:
        lr = 5e-4 if over.get("lr_schedule") == "cosine" else 2e-4
    DistillConfig(stages=(4, 2), steps_per_stage=steps, batch_size=batch, lr=lr, **over)  # checks the values
    return steps, batch, lr, over


def variant_of(name: str) -> str:
    """The setting's name without its steps part (``s600_cos_traj`` -> ``cos_traj``; fixed names: themselves)."""
    if name in SETTINGS and not re.match(r"^s\d+", name):
        return name
    parts = [p for p in name.split("_") if not re.fullmatch(r"s\d+", p)]
    return "_".join(parts) or "constant"


def plateau(points: Sequence[tuple]) -> Optional[int]:
    """Where a ratio curve stops improving. ``points``: ``(steps, ratio, (lo, hi))`` in any order. Returns the
    smallest ``steps`` whose ratio no larger budget beats by more than that ratio's 95 % half-width
    ``(hi - lo) / 2`` (no decided improvement beyond it); None for an empty curve. With a single point, it."""
    pts = sorted((int(s), float(r), iv) for s, r, iv in points if r is not None and math.isfinite(r))
    for i, (s, r, iv) in enumerate(pts):
        half = (iv[1] - iv[0]) / 2 if iv else 0.0
        if all(r2 >= r - half for _, r2, _ in pts[i + 1:]):
            return s
    return None


def _settings_arg(text: str) -> tuple:
    vals = tuple(v.strip() for v in text.split(",") if v.strip())
    for v in vals:
        try:
            parse_setting(v)
        except ValueError as e:
            raise argparse.ArgumentTypeError(
                f"must be a comma-separated subset of {','.join(sorted(SETTINGS))} or names like s600_cos_traj_roll "
                f"(s<N>, b<B>, lr<X>, cos, roll, mix<F>, traj, u<P>); {e}") from None
    if not vals:
        raise argparse.ArgumentTypeError(f"must be a comma-separated subset of {','.join(sorted(SETTINGS))}")
    return vals


def _dirs_arg(text: str) -> tuple:
    vals = tuple(Path(v.strip()) for v in text.split(",") if v.strip())
    if not vals:
        raise argparse.ArgumentTypeError("must be comma-separated sweep folders (each with a sweep.json)")
    return vals


def _variants_arg(text: str) -> tuple:
    vals = tuple(v.strip() for v in text.split(",") if v.strip())
    for v in vals:
        try:
            parse_setting(f"s1_{v}" if v != "constant" else "s1")
        except ValueError as e:
            raise argparse.ArgumentTypeError(f"must be variants such as cos, cos_traj_roll, cos_mix0.5_traj; {e}") \
                from None
    return vals


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    p = cli.ArgumentParser(prog="experiments/distill_sweep.py", description=__doc__.split("\n\n")[0])
    p.add_argument("--run", type=Path, default=None,
                   help="a cifar_distill.py OUT folder (teacher, sample, eval); required unless --merge")
    p.add_argument("--merge", type=_dirs_arg, default=None, metavar="DIR1,DIR2,...",
                   help="distil nothing: merge the sweep.json of these sweep folders (all of the same --run) into "
                        "OUT/sweep.json and sweep.md, with the ratio curve over all their settings, and plot it "
                        "(OUT/curve.png)")
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--settings", type=_settings_arg, default=None,
                   help=f"comma-separated, from {','.join(sorted(SETTINGS))} or built names such as "
                        f"s600_cos_traj_roll (default preset,s1000_cos unless --curve)")
    p.add_argument("--curve", type=cli.int_list(minimum=1), default=None, metavar="N1,N2,...",
                   help="steps per stage of a ratio curve, e.g. 600,1000,2000 (with --variants)")
    p.add_argument("--variants", type=_variants_arg, default=("cos",), metavar="V1,...",
                   help="recipes of the curve: cos (default), cos_traj, cos_traj_roll, cos_mix0.5_traj, constant, ...")
    p.add_argument("--teachers", type=cli.choice_list(TEACHERS), default=("kac",),
                   help="kac (the run's teacher), fm (DistillFM: the run's baselines/fm model), or kac,fm")
    p.add_argument("--oneshot", type=cli.int_list(minimum=1), default=(), metavar="K1,...",
                   help="also distil each teacher directly 100 -> K at the staged budget (e.g. 1)")
    p.add_argument("--reflow", type=cli.choice_list(TEACHERS), default=(), metavar="T1,...",
                   help="also reflow these teachers (of --teachers) on their own 100-step couplings with the staged "
                        "optimiser steps, sampled with Euler at each student step count: fm = 2-rectified flow")
    p.add_argument("--rollout-pool", type=cli.positive_int, default=None,
                   help="roll-outs per pool for roll-out/mixed settings (default 4096)")
    p.add_argument("--rollout-refresh", type=cli.positive_int, default=None, help="steps between pool refreshes")
    p.add_argument("--device", default=None, help="cpu, cuda (default: cuda if present)")
    p.add_argument("--budget", type=cli.positive_float, default=float("inf"), help="seconds for the whole sweep")
    p.add_argument("--num-samples", type=cli.positive_int, default=1000)
    p.add_argument("--n-boot", type=cli.positive_int, default=200, help="bootstrap resamples per FID interval")
    p.add_argument("--threads", type=cli.positive_int, default=None,
                   help="torch threads (default: physical cores, 1 on a busy machine)")
    p.add_argument("--resume", action="store_true",
                   help="continue each setting from its distillation checkpoints and reuse its sample files (a "
                        "finished setting is only re-scored)")
    p.add_argument("--quiet", action="store_true")
    args = p.parse_args(argv)
    if args.run is None and args.merge is None:
        p.error("--run is required (or --merge DIR1,DIR2,...)")
    names = list(args.settings or ())
    if args.curve:
        names += [f"s{n}" + ("" if v == "constant" else f"_{v}") for v in args.variants for n in args.curve]
    args.settings = list(dict.fromkeys(names)) or ["preset", "s1000_cos"]
    return args


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Exit status: 0 ok, 2 bad usage or an incomplete ``--run``, 1 a failed run (one line on stderr;
    ``--debug`` for the traceback)."""
    return cli.run_main(_main, argv)


def _teacher_sets(args, run: Path, models: dict, pipe: dict, device: str) -> dict:
    """The teacher rows: the run's Kac teacher samples; the FM teacher's ``schedule[0]``-step guided AB-2 samples
    (the run's ``baselines/samples/fm_teacher_nfe100`` when present with the same count, else drawn into
    ``OUT/fm_teacher``)."""
    sets = {"kac": run / "sample" / "kac_teacher_nfe100.samples.pt"}
    if "fm" in models:
        steps = int(pipe["schedule"][0])
        old = run / "baselines" / "samples" / f"fm_teacher_nfe{steps:03d}.samples.pt"
        if old.is_file():
            sets["fm"] = old
        else:
            model, path = models["fm"]
            rec = sample_stage(model, path, args.out / "fm_teacher", num_samples=args.num_samples,
                               guidance=pipe["guidance"], steps=steps, method="ab2", batch_size=500,
                               seed=pipe["sample_seed"], device=device, name="fm_teacher", resume=True)
            sets["fm"] = Path(rec["file"])
    return sets


def _main(argv: Optional[Sequence[str]]) -> int:
    args = parse_args(argv)
    if args.merge is not None:
        cli.check_out_dir(args.out, "--out")
        merged = merge_sweeps(args.merge)
        args.out.mkdir(parents=True, exist_ok=True)
        save_json(args.out / "sweep.json", merged)
        _write_md(args.out / "sweep.md", merged)
        plot_curve(merged, args.out / "curve.png")
        print((args.out / "sweep.md").read_text())
        return 0
    cli.check_device(args.device, "--device")
    run = args.run
    conf_file = run / "config.json"
    needed = [run / "teacher" / "checkpoint.pt", run / "sample" / "kac_teacher_nfe100.samples.pt", conf_file]
    if "fm" in args.teachers:
        needed.append(run / "baselines" / "fm" / "checkpoint.pt")
    missing = [str(f) for f in needed if not f.is_file()]
    if missing:
        raise cli.UsageError(f"--run {run} lacks {', '.join(missing)} (run cifar_distill.py --stage teacher,sample "
                             f"first{'; baselines for --teachers fm' if 'fm' in args.teachers else ''})")
    cli.check_out_dir(args.out, "--out")
    torch.set_num_threads(cli.resolve_threads(args.threads))
    conf = load_json(conf_file)
    pipe, teacher_cfg = conf["pipeline"], conf["teacher"]
    if set(args.reflow) - set(args.teachers):
        raise cli.UsageError(f"--reflow {','.join(args.reflow)}: each must be one of --teachers "
                             f"{','.join(args.teachers)}")
    for k in args.oneshot:
        if int(pipe["schedule"][0]) % k:
            raise cli.UsageError(f"--oneshot {k} must divide the teacher's {pipe['schedule'][0]} steps")
    dataset = teacher_cfg["dataset"]
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    models = {"kac": load_teacher(run / "teacher" / "checkpoint.pt", device=device)[:2]}
    if "fm" in args.teachers:
        models["fm"] = load_teacher(run / "baselines" / "fm" / "checkpoint.pt", device=device)[:2]
    images, labels = load_dataset(dataset, data_dir=teacher_cfg.get("data_dir"), split="train")
    ext = feature_extractor_for(dataset, run / "eval", device=device, data_dir=teacher_cfg.get("data_dir"),
                                classifier_epochs=pipe["classifier_epochs"], seed=teacher_cfg["seed"])
    ref = reference_for(dataset, ext, run / "eval", split=pipe["reference_split"], data_dir=teacher_cfg.get("data_dir"))

    args.out.mkdir(parents=True, exist_ok=True)
    t_start = time.perf_counter()
    teacher_sets = _teacher_sets(args, run, models, pipe, device)
    sweep = {"run": str(run), "device": device, "dataset": dataset, "teachers": list(args.teachers),
             "oneshot": list(args.oneshot), "reflow": list(args.reflow), "settings": {}, "skipped": [], "curve": {}}
    old_settings = {}
    if args.resume and (args.out / "sweep.json").is_file():  # add up the distillation time of the calls
        old_settings = load_json(args.out / "sweep.json").get("settings", {})
    rate = None  # seconds per (optimiser step x batch row)
    n_stages = len(pipe["schedule"]) - 1
    for name in args.settings:
        steps, batch, lr, over = parse_setting(name)
        if args.rollout_pool is not None:
            over["rollout_pool"] = args.rollout_pool
        if args.rollout_refresh is not None:
            over["rollout_refresh"] = args.rollout_refresh
        source = over.pop("source", "forward")
        staged = steps * n_stages
        extra = sum(oneshot_budget(DistillConfig(stages=tuple(pipe["schedule"]), steps_per_stage=steps), int(k))
                    for k in args.oneshot)
        n_rows = (staged + extra) * batch * len(args.teachers) + staged * batch * len(args.reflow)
        left = args.budget - (time.perf_counter() - t_start)
        if rate is not None and rate * n_rows + 20 > left:
            sweep["skipped"].append({"name": name, "estimated_seconds": rate * n_rows, "seconds_left": left})
            continue
        t0 = time.perf_counter()
        hist = {}
        for who in args.teachers:
            model, path = models[who]
            res = distill_stage(model, path, images, labels, args.out / name / f"distill_{who}",
                                schedule=pipe["schedule"], guidance=pipe["guidance"], steps_per_stage=steps,
                                batch_size=batch, lr=lr, source=source, seed=teacher_cfg["seed"], device=device,
                                num_samples=args.num_samples, sample_batch=500, sample_seed=pipe["sample_seed"],
                                distill_overrides=over, progress=not args.quiet, resume=args.resume,
                                method="distillkac" if who == "kac" else "distillfm", oneshot=tuple(args.oneshot),
                                reflow=who in args.reflow)
            hist[who] = [h["final_loss"] for h in res["history"]]
        t_distill = time.perf_counter() - t0
        rate = t_distill / n_rows
        files = [teacher_sets[w] for w in args.teachers]
        for who in args.teachers:
            files += collect_sample_sets(args.out / name / f"distill_{who}" / "samples")
        ev = eval_stage(files, ref, ext, args.out / name / "eval", dataset=dataset, n_boot=args.n_boot,
                        interval_curve=False)
        sweep["settings"][name] = _summary(name, steps, batch, lr, source, over, t_distill, ev, hist)
        # resumed: the setting's seconds are the sum over the calls that worked on it (a call that only re-scores
        # adds its few seconds; one that added students, e.g. --oneshot or --reflow later, adds their training)
        old = old_settings.get(name, {})
        calls = list(old.get("distill_seconds_calls") or ([old["distill_seconds"]] if old.get("distill_seconds") else []))
        sweep["settings"][name]["distill_seconds_calls"] = calls + [t_distill]
        sweep["settings"][name]["distill_seconds"] = sum(calls) + t_distill
        sweep["curve"] = _curves(sweep["settings"])
        save_json(args.out / "sweep.json", sweep)
        _write_md(args.out / "sweep.md", sweep)
        s = sweep["settings"][name]
        print(f"{name}: {t_distill:.0f} s, FID " + ", ".join(f"{n}: {f:.3g}" for n, f in sorted(
            s["fid"].items(), key=lambda kv: -int(kv[0]))) + f" (teacher {s['teacher_fid']:.3g})", flush=True)
    sweep["curve"] = _curves(sweep["settings"])
    save_json(args.out / "sweep.json", sweep)
    _write_md(args.out / "sweep.md", sweep)
    print((args.out / "sweep.md").read_text())
    return 0


def _summary(name, steps, batch, lr, source, over, seconds, ev, hist) -> dict:
    """One setting's record. ``fid``/``ratio`` (keys: student steps) are the staged DistillKac students (the
    fields the first version of the sweep had); ``students`` holds every student row (method, steps, FID and
    interval, ratio over its own teacher and interval)."""
    rows = ev["rows"]
    fid = {r["nfe"]: r["fid"] for r in rows if r["method"] == "distillkac"}
    teacher_fid = ev["teacher_fid"]
    students = []
    for key, v in ev["ratios"].items():
        method = v.get("student", "distillkac")
        row = next(r for r in rows if r["method"] == method and r["nfe"] == v["nfe"])
        students.append({"method": method, "steps": v["nfe"], "fid": row["fid"], "fid_interval": row["fid_interval"],
                         "teacher": v.get("teacher_method"), "ratio": v["ours"], "ratio_interval": v["interval"],
                         "paired": bool(v.get("paired"))})
    teachers = {r["method"]: {"fid": r["fid"], "fid_interval": r["fid_interval"]} for r in rows
                if r["method"] in ("kac_teacher", "fm_teacher")}
    return {"steps_per_stage": steps, "batch_size": batch, "lr": lr, "source": source, "overrides": over,
            "variant": variant_of(name), "distill_seconds": seconds, "teacher_fid": teacher_fid, "teachers": teachers,
            "fid": fid, "ratio": {n: f / teacher_fid for n, f in fid.items()} if teacher_fid else {},
            "students": students, "final_loss": hist, "degradation": ev.get("degradation") or {},
            "controls": [c for c in ev.get("comparisons", []) if c["kind"] == "control"]}


def merge_sweeps(folders: Sequence[Path]) -> dict:
    """One sweep record from the ``sweep.json`` of several sweep folders over the same run (a setting in a later
    folder replaces one of the same name), settings ordered by steps per stage, the curve recomputed over all."""
    sweeps = []
    for f in folders:
        j = Path(f) / "sweep.json"
        if not j.is_file():
            raise cli.UsageError(f"--merge: {j} does not exist (run the sweep into {f} first)")
        sweeps.append(load_json(j))
    runs = sorted({s["run"] for s in sweeps})
    if len(runs) > 1:
        raise cli.UsageError(f"--merge: the sweeps distil different runs ({', '.join(runs)}); their ratios divide by "
                             f"different teachers")
    settings: dict = {}
    for s in sweeps:
        settings.update(s["settings"])
    settings = dict(sorted(settings.items(), key=lambda kv: (kv[1]["steps_per_stage"], kv[0])))
    union = lambda key: sorted({v for s in sweeps for v in s.get(key, [])})  # noqa: E731
    return {"run": runs[0], "device": ", ".join(sorted({s["device"] for s in sweeps})), "dataset": sweeps[0]["dataset"],
            "teachers": union("teachers"), "oneshot": union("oneshot"), "reflow": union("reflow"),
            "settings": settings, "skipped": [k for s in sweeps for k in s.get("skipped", [])],
            "curve": _curves(settings), "merged_from": [str(f) for f in folders]}


#: line style per student method of the curve plot
_STYLE = {"distillkac": ("C0", "o", "-"), "distillfm": ("C1", "s", "-"), "distillkac_oneshot": ("C0", "^", ":"),
          "distillfm_oneshot": ("C1", "^", ":"), "reflow_kac": ("C0", "D", "--"), "reflow_fm": ("C1", "D", "--")}


def plot_curve(sweep: dict, file: Path) -> Path:
    """Student/teacher FID ratio (95 % intervals) against optimiser steps per stage, one panel per student step
    count, one line per variant and student method; the paper's CIFAR-10 ratio and the goal where there is one.
    One-shot and reflow students sit at the staged run's steps per stage (they had the same total), drawn 5 %
    left and right of it."""
    import io

    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from kacnum.core.checkpoint import atomic_write
    from kacnum.images.pipeline import PAPER_RATIOS_CIFAR10, TARGETS

    curve = sweep.get("curve") or {}
    counts = sorted({int(n) for ms in curve.values() for by_n in ms.values() for n in by_n}, reverse=True)
    fig, axes = plt.subplots(1, max(1, len(counts)), figsize=(3.4 * max(1, len(counts)), 3.2), squeeze=False)
    for ax, n in zip(axes[0], counts):
        for v, ms in curve.items():
            for m, by_n in ms.items():
                c = by_n.get(str(n))
                if not c:
                    continue
                pts = sorted(c["points"])
                shift = 1.05 if m.startswith("reflow") else (0.95 if m.endswith("oneshot") else 1.0)  # no overlaps
                xs, ys = [p[0] * shift for p in pts], [p[1] for p in pts]
                lo = [p[1] - (p[2][0] if p[2] else p[1]) for p in pts]
                hi = [(p[2][1] if p[2] else p[1]) - p[1] for p in pts]
                color, marker, ls = _STYLE.get(m, ("C2", "x", "-"))
                label = m if len(curve) == 1 else f"{m} ({v})"
                ax.errorbar(xs, ys, yerr=[lo, hi], color=color, marker=marker, ls=ls, capsize=2, ms=4, label=label)
        if n in PAPER_RATIOS_CIFAR10:
            ax.axhline(PAPER_RATIOS_CIFAR10[n], color="k", ls=":", lw=1, label="paper (CIFAR-10)")
        if n in TARGETS:
            ax.axhline(TARGETS[n], color="r", ls="--", lw=1, label="goal")
        ax.set_xscale("log")
        ticks = sorted({p[0] for ms in curve.values() for by_n in ms.values() for p in by_n.get(str(n), {}).get("points", [])})
        ax.set_xticks(ticks, [str(t) for t in ticks])
        ax.minorticks_off()
        ax.set_title(f"{n}-step student")
        ax.set_xlabel("optimiser steps per stage")
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel("student FID / teacher FID")
    handles = {}
    for ax in axes[0]:
        for h, lab in zip(*ax.get_legend_handles_labels()):
            handles.setdefault(lab, h)
    fig.legend(list(handles.values()), list(handles), loc="lower center", ncol=min(4, len(handles)), fontsize=8,
               bbox_to_anchor=(0.5, -0.2))
    fig.suptitle(f"Distillation ratio against budget ({sweep['dataset']}; teacher of {sweep['run']})", fontsize=10,
                 y=1.04)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90, bbox_inches="tight")
    plt.close(fig)
    atomic_write(Path(file), lambda f: f.write(buf.getvalue()))
    return Path(file)


def _curves(settings: dict) -> dict:
    """``{variant: {method: {steps: {"points": [[steps per stage, ratio, [lo, hi]], ...], "plateau": S}}}}``."""
    out: dict = {}
    for s in settings.values():
        for st in s.get("students", []):
            pts = out.setdefault(s["variant"], {}).setdefault(st["method"], {}).setdefault(str(st["steps"]), [])
            pts.append([s["steps_per_stage"], st["ratio"], st["ratio_interval"]])
    return {v: {m: {n: {"points": sorted(p), "plateau": plateau(p)} for n, p in by_n.items()} for m, by_n in ms.items()}
            for v, ms in out.items()}


def _cell(v, iv=None, spec=".3g") -> str:
    if v is None or (isinstance(v, float) and not math.isfinite(v)):
        return "—"
    return format(v, spec) + ("" if not iv else f" [{format(iv[0], spec)}, {format(iv[1], spec)}]")


def _write_md(file: Path, sweep: dict) -> None:
    lines = [f"# Distillation budget sweep ({sweep['dataset']}, {sweep['device']}; teacher and FID protocol of "
             f"{sweep['run']})", "",
             "| setting | steps/stage | batch | lr | source | target | seconds (all its students and calls) | FID 20 | FID 4 | FID 2 | FID 1 | "
             "4-step ratio | 1-step ratio |", "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for name, s in sweep["settings"].items():
        f, r = s["fid"], s["ratio"]
        sched = s["overrides"].get("lr_schedule", "constant")
        get = lambda d, n: d.get(n, d.get(str(n), float("nan")))  # noqa: E731  (keys are str after JSON)
        lines.append(f"| {name} | {s['steps_per_stage']} | {s['batch_size']} | {s['lr']:g} {sched} | {s['source']} | "
                     f"{s['overrides'].get('target', 'restart')} | {s['distill_seconds']:.0f} | "
                     + " | ".join(f"{get(f, n):.3g}" for n in (20, 4, 2, 1))
                     + f" | {get(r, 4):.2f} | {get(r, 1):.2f} |")
    lines += ["", "Every student, its FID and its ratio over its own teacher (95 % bootstrap intervals; a ratio marked "
                  "paired is over a teacher sampled from the same latents and labels, its interval from resampling the "
                  "pairs, kacnum.images.metrics.paired_ratio_interval):", "",
              "| setting | student | steps | FID | teacher | ratio | interval |", "|---|---|---|---|---|---|---|"]
    for name, s in sweep["settings"].items():
        for st in s.get("students", []):
            lines.append(f"| {name} | {st['method']} | {st['steps']} | {_cell(st['fid'], st['fid_interval'])} | "
                         f"{st['teacher']} | {_cell(st['ratio'], st['ratio_interval'])} | "
                         f"{'paired' if st.get('paired') else 'independent'} |")
    deg = [(name, n, d) for name, s in sweep["settings"].items() for n, d in (s.get("degradation") or {}).items()]
    if deg:
        lines += ["", "The thesis test: (Kac student / Kac teacher) over (FM student / FM teacher), both ratios paired; "
                      "below 1, the Kac teacher loses less in distillation (decided: the interval excludes 1):", "",
                  "| setting | steps | Kac ratio | FM ratio | Kac / FM | decided |", "|---|---|---|---|---|---|"]
        for name, n, d in sorted(deg, key=lambda x: (x[0], -int(x[1]))):
            lines.append(f"| {name} | {n} | {_cell(d['kac_ratio'], d['kac_interval'])} | "
                         f"{_cell(d['fm_ratio'], d['fm_interval'])} | {_cell(d['kac_over_fm'], d['interval'])} | "
                         f"{'yes' if d['decided'] else 'no'} |")
    ctl = [(name, c) for name, s in sweep["settings"].items() for c in s.get("controls", [])]
    if ctl:
        lines += ["", "Controls at equal network evaluations (FID of the first over the second; paired when both sets "
                      "share latents and labels; decided: the interval excludes 1):", "",
                  "| setting | student | other | network evals | FID | other FID | ratio | decided |",
                  "|---|---|---|---|---|---|---|---|"]
        for name, c in ctl:
            lines.append(f"| {name} | {c['student']} {c['student_nfe']}-step | {c['other']} {c['other_nfe']}-step | "
                         f"{c['nfe_model'][0]} | {_cell(c['student_fid'])} | {_cell(c['other_fid'])} | "
                         f"{_cell(c['fid_ratio'], c['fid_ratio_interval'])}{' paired' if c.get('paired') else ''} | "
                         f"{'yes' if c['decided'] else 'no'} |")
    curve = sweep.get("curve") or {}
    if curve:
        lines += ["", "Ratio curve (student/teacher FID ratio against optimiser steps per stage; plateau: the smallest "
                      "budget no larger one beats by more than the ratio's 95 % half-width):", "",
                  "| variant | student | steps | ratio by steps per stage | plateau |", "|---|---|---|---|---|"]
        for v, ms in curve.items():
            for m, by_n in ms.items():
                for n, c in sorted(by_n.items(), key=lambda kv: -int(kv[0])):
                    pts = ", ".join(f"{p[0]}: {p[1]:.3f}" for p in c["points"])
                    lines.append(f"| {v} | {m} | {n} | {pts} | {c['plateau'] if c['plateau'] is not None else '—'} |")
    if sweep["skipped"]:
        lines += ["", "Skipped (budget): " + ", ".join(s["name"] for s in sweep["skipped"])]
    file.write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    sys.exit(main())
