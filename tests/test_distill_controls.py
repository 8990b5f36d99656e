"""The controls of the DistillKac study through experiments/cifar_distill.py (smoke preset, tiny budget):
DistillFM (the FM baseline distilled the same way, with its own 100-step teacher row), one-shot students at the
staged run's optimiser steps, reflow of both teachers (2-rectified flow of the FM teacher), trajectory targets
with a mixed source, and the eval rows, ratios and comparisons."""
import json

import pytest
import torch

from kacnum.students.distill import DistillConfig
from kacnum.images.pipeline import SampleSet, oneshot_budget

COMMON = ["--preset", "smoke", "--device", "cpu", "--quiet", "--threads", "1"]
TINY = ["--steps", "10", "--checkpoint-every", "0", "--num-samples", "20", "--distill-steps", "2",
        "--classifier-epochs", "1"]


def test_oneshot_budget_is_the_staged_steps_up_to_that_student():
    cfg = DistillConfig(stages=(100, 20, 4, 2, 1), steps_per_stage=(10, 20, 30, 40))
    assert [oneshot_budget(cfg, k) for k in (20, 4, 2, 1)] == [10, 30, 60, 100]
    assert oneshot_budget(cfg, 10) == 100  # not in the schedule: everything
    with pytest.raises(ValueError, match="divide"):
        oneshot_budget(cfg, 3)


def test_controls_end_to_end(cd, tmp_path):
    out = tmp_path / "run"
    run = lambda *extra: cd.main(COMMON + TINY + ["--out", str(out), "--resume"] + list(extra))  # noqa: E731
    assert run("--stage", "teacher") == 0
    assert run("--stage", "sample", "--nfe-list", "4,2,1") == 0
    distill = ["--oneshot", "1,4", "--target", "trajectory", "--source", "mix", "--rollout-fraction", "0.5",
               "--rollout-pool", "24", "--lr-schedule", "cosine", "--distill-lr", "1e-3", "--reflow"]
    assert run("--stage", "distill", *distill) == 0
    cfg = json.loads((out / "distill" / "distill_config.json").read_text())
    assert (cfg["target"], cfg["source"], cfg["rollout_fraction"], cfg["lr_schedule"], cfg["lr"], cfg["p_uncond"]) \
        == ("trajectory", "mix", 0.5, "cosine", 1e-3, 0.0)
    one = json.loads((out / "distill" / "oneshot_001" / "distill_config.json").read_text())
    assert one["stages"] == [100, 1] and one["steps_per_stage"] == [8]  # 4 stages x 2 steps
    four = json.loads((out / "distill" / "oneshot_004" / "distill_config.json").read_text())
    assert four["stages"] == [100, 4] and four["steps_per_stage"] == [4]  # stages 100->20->4: 2 x 2
    s = SampleSet.load(out / "distill" / "samples" / "distillkac_oneshot_nfe001.samples.pt")
    assert (s.method, s.nfe, s.nfe_model, s.num) == ("distillkac_oneshot", 1, 1, 20)
    rf = json.loads((out / "distill" / "reflow" / "distill_config.json").read_text())
    assert (rf["stages"], rf["steps_per_stage"], rf["source"], rf["target"], rf["lr"]) == \
        ([100, 1], [8], "rollout", "trajectory", 1e-3)  # all 8 staged steps, couplings from the teacher's own solve
    for n in (20, 4, 2, 1):  # one reflowed network, sampled at each student step count
        s = SampleSet.load(out / "distill" / "samples" / f"reflow_kac_nfe{n:03d}.samples.pt")
        assert (s.method, s.nfe, s.nfe_model, s.num, s.meta["steps"]) == ("reflow_kac", n, n, 20, n)
    assert (out / "distill" / "reflow_student_001.pt").is_file()

    assert run("--stage", "baselines", "--baseline-kinds", "fm", "--nfe-list", "4,2,1", "--distill-fm", *distill) == 0
    base = out / "baselines"
    assert not (base / "vp").exists()  # --baseline-kinds fm
    t = SampleSet.load(base / "samples" / "fm_teacher_nfe100.samples.pt")
    assert (t.method, t.nfe, t.nfe_model) == ("fm_teacher", 100, 200)  # guided AB-2
    fm_cfg = json.loads((base / "distill_fm" / "distill_config.json").read_text())
    assert fm_cfg["target"] == "trajectory" and fm_cfg["stages"] == [100, 20, 4, 2, 1]
    names = sorted(p.name for p in (base / "distill_fm" / "samples").glob("*.samples.pt"))
    assert names == ["distillfm_nfe001.samples.pt", "distillfm_nfe002.samples.pt", "distillfm_nfe004.samples.pt",
                     "distillfm_nfe020.samples.pt", "distillfm_oneshot_nfe001.samples.pt",
                     "distillfm_oneshot_nfe004.samples.pt", "reflow_fm_nfe001.samples.pt", "reflow_fm_nfe002.samples.pt",
                     "reflow_fm_nfe004.samples.pt", "reflow_fm_nfe020.samples.pt"]

    assert run("--stage", "eval", "--nfe-list", "4,2,1") == 0
    res = json.loads((out / "results.json").read_text())
    methods = {(r["method"], r["nfe"]) for r in res["rows"]}
    assert {("fm_teacher", 100), ("distillfm", 1), ("distillfm_oneshot", 1), ("distillkac_oneshot", 4),
            ("distillkac", 20)} <= methods
    by = {(r["method"], r["nfe"]): r for r in res["rows"]}
    for key in ("distillfm_1/fm_teacher", "distillfm_20/fm_teacher", "distillkac_oneshot_1/teacher",
                "distillfm_oneshot_4/fm_teacher", "reflow_fm_1/fm_teacher", "reflow_kac_4/teacher"):
        v = res["ratios"][key]
        student, n = key.split("/")[0].rsplit("_", 1)
        teacher = ("kac_teacher", 100) if key.endswith("/teacher") else ("fm_teacher", 100)
        assert v["ours"] == pytest.approx(by[(student, int(n))]["fid"] / by[teacher]["fid"])
        assert v["interval"][0] <= v["ours"] * 1.5 and len(v["interval"]) == 2
    comps = {(c["student"], c["other"], c["student_nfe"]) for c in res["comparisons"] if c["kind"] == "control"}
    assert comps == {("distillkac", "distillfm", n) for n in (20, 4, 2, 1)} | \
        {(a, f"{a}_oneshot", n) for a in ("distillkac", "distillfm") for n in (4, 1)} | \
        {(a, b, n) for a, b in (("distillkac", "reflow_fm"), ("distillfm", "reflow_fm"), ("distillkac", "reflow_kac"))
         for n in (20, 4, 2, 1)}
    assert "distillkac beats distillfm at NFE 2" in res["targets"]
    md = (out / "results.md").read_text()
    assert "Controls (Kac students against DistillFM" in md and "| 1 | " in md
    assert "DistillFM ratio" in md and "distillfm_oneshot 1-step" in md and "2-rectified flow" in md


@pytest.mark.parametrize("argv, words", [
    (["--stage", "distill", "--oneshot", "3"], "--oneshot 3"),
    (["--stage", "baselines", "--distill-fm", "--no-baselines"], "--distill-fm"),
    (["--stage", "baselines", "--distill-fm", "--baseline-kinds", "vp"], "--distill-fm"),
    (["--stage", "distill", "--rollout-fraction", "1.5"], "--rollout-fraction"),
    (["--stage", "distill", "--target", "middle"], "--target"),
])
def test_control_flags_are_checked_before_any_stage(cd, tmp_path, capsys, argv, words):
    out = tmp_path / "never"
    assert cd.main(COMMON + ["--out", str(out)] + argv) == 2
    assert words in capsys.readouterr().err
    assert not out.exists()


def test_distill_flags_reach_the_pipeline_config(cd):
    args = cd.parse_args(["--preset", "cpu", "--source", "rollout", "--target", "trajectory", "--rollout-pool", "512",
                          "--rollout-refresh", "1200", "--distill-lr", "5e-4", "--lr-schedule", "cosine",
                          "--distill-p-uncond", "0.1", "--oneshot", "1", "--distill-fm", "--baseline-kinds", "fm",
                          "--reflow"])
    cfg = cd.build_pipeline_config(args, cd.build_train_config(args))
    assert cfg.distill_overrides == {"ema_decay": 0.99, "rollout_pool": 512, "rollout_refresh": 1200,
                                     "target": "trajectory", "lr_schedule": "cosine", "p_uncond": 0.1}
    assert (cfg.source, cfg.distill_lr, cfg.oneshot, cfg.distill_fm, cfg.baseline_kinds) == \
        ("rollout", 5e-4, (1,), True, ("fm",))
    assert cfg.reflow is True
    plain = cd.build_pipeline_config(cd.parse_args(["--preset", "smoke"]), cd.build_train_config(cd.parse_args([])))
    assert plain.distill_overrides == {"ema_decay": 0.9, "rollout_pool": 256} and plain.oneshot == ()
    assert plain.source == "forward" and not plain.distill_fm and plain.reflow is False


def test_cpu_preset_distils_with_the_swept_settings_and_distillfm(cd):
    """The cpu preset's distillation is the sweep's best setting; DistillFM is on unless FM is not trained."""
    cpu = cd.build_pipeline_config(cd.parse_args(["--preset", "cpu"]), cd.build_train_config(cd.parse_args([])))
    assert (cpu.distill_steps, cpu.distill_lr, cpu.source, cpu.distill_fm) == (1000, 5e-4, "rollout", True)
    assert cpu.distill_overrides == {"ema_decay": 0.99, "lr_schedule": "cosine", "target": "trajectory",
                                     "rollout_pool": 512, "rollout_refresh": 800}
    assert cpu.pd.steps_per_round == (300,) * 4  # the PD baseline keeps its own budget unless --distill-steps is given
    for argv in (["--no-distill-fm"], ["--no-baselines"], ["--baseline-kinds", "vp"]):
        args = cd.parse_args(["--preset", "cpu"] + argv)
        assert not cd.build_pipeline_config(args, cd.build_train_config(args)).distill_fm, argv
    args = cd.parse_args(["--preset", "cpu", "--source", "forward"])
    assert cd.build_pipeline_config(args, cd.build_train_config(args)).source == "forward"
