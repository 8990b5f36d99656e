"""How the DistillKac student/teacher FID ratios depend on the distillation budget.

Takes a finished ``experiments/cifar_distill.py`` run (its ``teacher/checkpoint.pt``, the teacher's
``sample/kac_teacher_nfe100.samples.pt`` and the ``eval/`` cache of the FID feature network and reference
statistics) and distils the same teacher again under each named setting, into ``OUT/<name>/``, then
scores the students with the run's own FID protocol. Settings run in the order given; one that would
not finish within ``--budget`` seconds (judged from the previous settings' speed) is skipped, and
``OUT/sweep.json`` / ``OUT/sweep.md`` are rewritten after every setting, so a cut-short run keeps what
it finished.

    python experiments/distill_sweep.py --run runs/cpu --out runs/cpu_sweep \\
        --settings preset,s1000_cos,s2000_cos --device cuda --budget 400

Settings (``SETTINGS``; name -> steps per stage, batch, learning rate, schedule, source)::

    preset      300 steps, batch 64, lr 2e-4, constant  (the cpu preset's distillation)
    s600_cos    600 steps, batch 128, lr 5e-4, cosine
    s1000       1000 steps, batch 128, lr 2e-4, constant
    s1000_cos   1000 steps, batch 128, lr 5e-4, cosine
    s2000_cos   2000 steps, batch 128, lr 5e-4, cosine
    s1000_roll  s1000_cos with the roll-out source (states from the teacher's own trajectories)
    tiny        3 steps, batch 16 (checks that the sweep runs)
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Optional, Sequence

import torch

from kacnum import cli
from kacnum.checkpoint import load_json, save_json
from kacnum.data import load_dataset
from kacnum.pipeline import (collect_sample_sets, distill_stage, eval_stage, feature_extractor_for,
                             reference_for)
from kacnum.train import load_teacher

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


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    p = cli.ArgumentParser(prog="experiments/distill_sweep.py", description=__doc__.split("\n\n")[0])
    p.add_argument("--run", type=Path, required=True, help="a cifar_distill.py OUT folder (teacher, sample, eval)")
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--settings", type=cli.choice_list(sorted(SETTINGS)), default=("preset", "s1000_cos"),
                   help=f"comma-separated, from {','.join(sorted(SETTINGS))} (default preset,s1000_cos)")
    p.add_argument("--device", default=None, help="cpu, cuda (default: cuda if present)")
    p.add_argument("--budget", type=cli.positive_float, default=float("inf"), help="seconds for the whole sweep")
    p.add_argument("--num-samples", type=cli.positive_int, default=1000)
    p.add_argument("--threads", type=cli.positive_int, default=None,
                   help="torch threads (default: physical cores, 1 on a busy machine)")
    p.add_argument("--quiet", action="store_true")
    args = p.parse_args(argv)
    args.settings = list(args.settings)
    return args


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Exit status: 0 ok, 2 bad usage or an incomplete ``--run``, 1 a failed run (one line on stderr;
    ``--debug`` for the traceback)."""
    return cli.run_main(_main, argv)


def _main(argv: Optional[Sequence[str]]) -> int:
    args = parse_args(argv)
    cli.check_device(args.device, "--device")
    run = args.run
    conf_file = run / "config.json"
    needed = [run / "teacher" / "checkpoint.pt", run / "sample" / "kac_teacher_nfe100.samples.pt", conf_file]
    missing = [str(f) for f in needed if not f.is_file()]
    if missing:
        raise cli.UsageError(f"--run {run} lacks {', '.join(missing)} (run cifar_distill.py --stage teacher,sample "
                             f"first)")
    cli.check_out_dir(args.out, "--out")
    torch.set_num_threads(cli.resolve_threads(args.threads))
    conf = load_json(conf_file)
    pipe, teacher_cfg = conf["pipeline"], conf["teacher"]
    dataset = teacher_cfg["dataset"]
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    model, path, _ = load_teacher(run / "teacher" / "checkpoint.pt", device=device)
    images, labels = load_dataset(dataset, data_dir=teacher_cfg.get("data_dir"), split="train")
    ext = feature_extractor_for(dataset, run / "eval", device=device, data_dir=teacher_cfg.get("data_dir"),
                                classifier_epochs=pipe["classifier_epochs"], seed=teacher_cfg["seed"])
    ref = reference_for(dataset, ext, run / "eval", split=pipe["reference_split"], data_dir=teacher_cfg.get("data_dir"))
    teacher_set = run / "sample" / "kac_teacher_nfe100.samples.pt"

    args.out.mkdir(parents=True, exist_ok=True)
    sweep = {"run": str(run), "device": device, "dataset": dataset, "settings": {}, "skipped": []}
    t_start, rate = time.perf_counter(), None  # rate: seconds per (optimiser step x batch row)
    for name in args.settings:
        steps, batch, lr, over = SETTINGS[name]
        n_rows = steps * batch * (len(pipe["schedule"]) - 1)
        left = args.budget - (time.perf_counter() - t_start)
        if rate is not None and rate * n_rows + 20 > left:
            sweep["skipped"].append({"name": name, "estimated_seconds": rate * n_rows, "seconds_left": left})
            continue
        t0 = time.perf_counter()
        over = dict(over)
        source = over.pop("source", "forward")
        res = distill_stage(model, path, images, labels, args.out / name / "distill", schedule=pipe["schedule"],
                            guidance=pipe["guidance"], steps_per_stage=steps, batch_size=batch, lr=lr, source=source,
                            seed=teacher_cfg["seed"], device=device, num_samples=args.num_samples,
                            sample_batch=500, sample_seed=pipe["sample_seed"], distill_overrides=over,
                            progress=not args.quiet)
        t_distill = time.perf_counter() - t0
        rate = t_distill / n_rows
        files = collect_sample_sets(args.out / name / "distill" / "samples") + [teacher_set]
        ev = eval_stage(files, ref, ext, args.out / name / "eval", dataset=dataset)
        fid = {r["nfe"]: r["fid"] for r in ev["rows"] if r["method"] == "distillkac"}
        teacher_fid = ev["teacher_fid"]
        sweep["settings"][name] = {
            "steps_per_stage": steps, "batch_size": batch, "lr": lr, "source": source, "overrides": over,
            "distill_seconds": t_distill, "teacher_fid": teacher_fid, "fid": fid,
            "ratio": {n: f / teacher_fid for n, f in fid.items()},
            "final_loss": [h["final_loss"] for h in res["history"]],
        }
        save_json(args.out / "sweep.json", sweep)
        _write_md(args.out / "sweep.md", sweep)
        print(f"{name}: {t_distill:.0f} s, FID " + ", ".join(f"{n}: {f:.3g}" for n, f in sorted(fid.items(), reverse=True))
              + f" (teacher {teacher_fid:.3g})", flush=True)
    save_json(args.out / "sweep.json", sweep)
    _write_md(args.out / "sweep.md", sweep)
    print((args.out / "sweep.md").read_text())
    return 0


def _write_md(file: Path, sweep: dict) -> None:
    lines = [f"# Distillation budget sweep ({sweep['dataset']}, {sweep['device']}; teacher and FID protocol of "
             f"{sweep['run']})", "",
             "| setting | steps/stage | batch | lr | source | seconds | FID 20 | FID 4 | FID 2 | FID 1 | 4-step ratio | "
             "1-step ratio |", "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for name, s in sweep["settings"].items():
        f, r = s["fid"], s["ratio"]
        sched = s["overrides"].get("lr_schedule", "constant")
        lines.append(f"| {name} | {s['steps_per_stage']} | {s['batch_size']} | {s['lr']:g} {sched} | {s['source']} | "
                     f"{s['distill_seconds']:.0f} | " + " | ".join(f"{f.get(n, float('nan')):.3g}" for n in (20, 4, 2, 1))
                     + f" | {r.get(4, float('nan')):.2f} | {r.get(1, float('nan')):.2f} |")
    if sweep["skipped"]:
        lines += ["", "Skipped (budget): " + ", ".join(s["name"] for s in sweep["skipped"])]
    file.write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    sys.exit(main())
