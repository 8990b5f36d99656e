"""Make a pipeline run folder from two rows of ``experiments/teacher_study.py``, for ``experiments/distill_sweep.py``.

The teacher study trains every teacher recipe at one budget (same UNet, data, steps, batch, lr, EMA, seed) and
samples it with the pipeline's sampler; ``distill_sweep.py --run RUN`` distils a run's Kac teacher and its FM
baseline with the same settings and scores them with the run's evaluation cache. This script lays the study's
files out as such a run (hard links where possible, copies otherwise; nothing is retrained; the two sample
sets are rewritten as pipeline sample sets named ``kac_teacher`` and ``fm_teacher``, with the seed, path and
batch size that make them coupled to the students sampled from the same seeds):

    RUN/config.json                                   teacher TrainConfig + PipelineConfig of --preset
    RUN/teacher/checkpoint.pt                         <study>/rows/<kac_row>/checkpoint.pt
    RUN/sample/kac_teacher_nfe100.samples.pt          <study>/rows/<kac_row>/nfe100.samples.pt
    RUN/baselines/fm/checkpoint.pt                    <study>/rows/<fm_row>/checkpoint.pt
    RUN/baselines/samples/fm_teacher_nfe100.samples.pt <study>/rows/<fm_row>/nfe100.samples.pt
    RUN/eval/                                         <study>/eval (classifier and reference statistics)

    python scripts/study_run.py --study runs/teacher_study --kac-row kac --out runs/study_run
    python experiments/distill_sweep.py --run runs/study_run --out runs/study_controls --teachers kac,fm ...
"""
from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

from kacnum.core import cli
from kacnum.core.checkpoint import load_checkpoint, load_json, save_json
from kacnum.images.pipeline import SampleSet, pipeline_config
from kacnum.images.train import TrainConfig


def _place(src: Path, dst: Path) -> None:
    if not src.is_file():
        raise cli.UsageError(f"{src} is missing: run experiments/teacher_study.py for that row first")
    dst.parent.mkdir(parents=True, exist_ok=True)
    if dst.exists():
        dst.unlink()
    try:
        os.link(src, dst)
    except OSError:
        shutil.copy2(src, dst)


def _place_samples(src: Path, dst: Path, method: str) -> None:
    """A row's sample set written as a pipeline sample set of ``method`` (``kac_teacher``, ``fm_teacher``), its
    meta completed so the pipeline can tell coupled sets (seed, path, batch size: the study samples in
    batches of min(500, n), which older study files did not record)."""
    if not src.is_file():
        raise cli.UsageError(f"{src} is missing: run experiments/teacher_study.py for that row first")
    rec = load_checkpoint(src, resumable=False)  # a file of another run: restore it, do not resume
    n = int(rec["images"].shape[0])
    meta = {**dict(rec.get("meta") or {}), **dict(rec.get("sampling") or {})}
    meta.setdefault("batch_size", min(500, n))
    meta["from_study"] = str(src)
    SampleSet(method, int(rec["nfe"]), int(rec["nfe_model"]), rec["images"], rec.get("labels"),
              meta.get("guidance"), meta).save(dst)


def main(argv=None) -> int:
    p = cli.ArgumentParser(prog="scripts/study_run.py", description=__doc__)
    p.add_argument("--study", type=Path, required=True, help="the teacher study's --out folder")
    p.add_argument("--kac-row", default="kac", help="the row whose teacher is distilled (default kac)")
    p.add_argument("--fm-row", default="fm", help="the FM row (default fm)")
    p.add_argument("--preset", default="cpu", help="pipeline preset whose distillation settings are recorded")
    p.add_argument("--out", type=Path, required=True, help="the run folder to write")
    p.add_argument("--samples-nfe", type=cli.positive_int, default=100,
                   help="which teacher sample sets of the rows to use (default 100, the study's teacher sampler)")
    a = p.parse_args(argv)
    cli.check_out_dir(a.out)
    rows = a.study / "rows"
    conf = load_json(rows / a.kac_row / "config.json")
    train = TrainConfig(**{k: (tuple(v) if isinstance(v, list) else v) for k, v in conf["train"].items()})
    pipe = pipeline_config(a.preset, train).to_dict()
    pipe.pop("train")
    study = load_json(a.study / "config.json")
    pipe["num_samples"] = int(study["args"]["num_samples"])
    pipe["classifier_epochs"] = int(study["args"]["classifier_epochs"])
    save_json(a.out / "config.json", {"experiment": "cifar_distill", "preset": a.preset, "assembled_from": str(a.study),
                                      "kac_row": a.kac_row, "fm_row": a.fm_row, "teacher": train.to_dict(),
                                      "pipeline": pipe})
    _place(rows / a.kac_row / "checkpoint.pt", a.out / "teacher" / "checkpoint.pt")
    n = f"nfe{a.samples_nfe:03d}"
    _place_samples(rows / a.kac_row / f"{n}.samples.pt", a.out / "sample" / "kac_teacher_nfe100.samples.pt",
                   "kac_teacher")
    _place(rows / a.fm_row / "checkpoint.pt", a.out / "baselines" / "fm" / "checkpoint.pt")
    _place_samples(rows / a.fm_row / f"{n}.samples.pt",
                   a.out / "baselines" / "samples" / "fm_teacher_nfe100.samples.pt", "fm_teacher")
    for f in (a.study / "eval").iterdir():
        if f.is_file():
            _place(f, a.out / "eval" / f.name)
    print(f"wrote {a.out} (Kac teacher: row {a.kac_row}, FM: row {a.fm_row})")
    return 0


if __name__ == "__main__":
    sys.exit(cli.run_main(main))
