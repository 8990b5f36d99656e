"""experiments/distill_sweep.py: the setting grammar, the plateau of a ratio curve, a curve with the
controls (DistillFM, one-shot, reflow of the FM teacher) on a tiny finished run, and merging sweeps."""
import importlib.util
import json
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
COMMON = ["--preset", "smoke", "--device", "cpu", "--quiet", "--threads", "1"]
TINY = ["--steps", "10", "--checkpoint-every", "0", "--num-samples", "20", "--distill-steps", "2",
        "--classifier-epochs", "1"]


def _load(name):
    spec = importlib.util.spec_from_file_location(name, ROOT / "experiments" / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    sys.modules[name] = mod
    spec.loader.exec_module(mod)
    return mod


@pytest.fixture(scope="module")
def sw():
    return _load("distill_sweep")


def test_setting_grammar(sw):
    assert sw.parse_setting("s600_cos_traj_roll") == (600, 128, 5e-4, {"ema_decay": 0.99, "lr_schedule": "cosine",
                                                                        "target": "trajectory", "source": "rollout"})
    assert sw.parse_setting("s1000_b64_lr1e-3_mix0.25_traj_u0.1") == (
        1000, 64, 1e-3, {"ema_decay": 0.99, "source": "mix", "rollout_fraction": 0.25, "target": "trajectory",
                         "p_uncond": 0.1})
    assert sw.parse_setting("s2000") == (2000, 128, 2e-4, {"ema_decay": 0.99})
    assert sw.parse_setting("s50_mix")[3]["rollout_fraction"] == 0.5
    # the fixed names keep their meaning; the grammar agrees with them where it can
    assert sw.parse_setting("preset") == (300, 64, 2e-4, {"ema_decay": 0.99})
    assert sw.parse_setting("s600_cos")[:3] == (600, 128, 5e-4)
    for bad, words in (("foo", "unknown part 'foo'"), ("cos_traj", "needs s<steps>"), ("s600_mix2", "rollout_fraction"),
                       ("s600_b", "needs a number"), ("s600_lr1e", "needs a number"), ("s0_cos", "needs s<steps>")):
        with pytest.raises(ValueError, match=words.replace("<", ".").replace(">", ".")):
            sw.parse_setting(bad)
    assert [sw.variant_of(n) for n in ("s600_cos_traj_roll", "s2000", "preset", "s1000_cos")] == \
        ["cos_traj_roll", "constant", "preset", "cos"]


def test_plateau(sw):
    iv = lambda r, h: (r - h, r + h)  # noqa: E731
    # improves, then a gain inside the interval: the plateau is where the decided gains end
    assert sw.plateau([(2000, 1.95, iv(1.95, 0.1)), (600, 2.5, iv(2.5, 0.2)), (1000, 2.0, iv(2.0, 0.1))]) == 1000
    # decided gains all the way: the largest budget
    assert sw.plateau([(600, 3.0, iv(3.0, 0.05)), (1000, 2.5, iv(2.5, 0.05)), (2000, 2.0, iv(2.0, 0.05))]) == 2000
    # a worse middle point does not hide a later decided gain
    assert sw.plateau([(600, 2.0, iv(2.0, 0.1)), (1000, 2.2, iv(2.2, 0.1)), (2000, 1.85, iv(1.85, 0.1))]) == 2000
    # flat within the noise from the start
    assert sw.plateau([(600, 2.0, iv(2.0, 0.3)), (1000, 1.9, iv(1.9, 0.3)), (2000, 1.95, iv(1.95, 0.3))]) == 600
    assert sw.plateau([]) is None and sw.plateau([(600, 1.5, None)]) == 600


def test_curve_with_controls_on_a_finished_run(sw, tmp_path, capsys):
    cd = _load("cifar_distill")
    out = tmp_path / "run"
    for stage in ("teacher", "sample", "eval"):
        assert cd.main(COMMON + TINY + ["--stage", stage, "--out", str(out), "--resume"]) == 0
    sweep_dir = tmp_path / "sweep"
    argv = ["--run", str(out), "--out", str(sweep_dir), "--curve", "2,3", "--variants", "b16_cos_traj_mix",
            "--teachers", "kac,fm", "--oneshot", "1", "--reflow", "fm", "--device", "cpu", "--num-samples", "20",
            "--rollout-pool", "16", "--n-boot", "20", "--quiet"]
    assert sw.main(argv) == 2  # no FM model in the run yet
    assert "baselines/fm/checkpoint.pt" in capsys.readouterr().err
    assert cd.main(COMMON + TINY + ["--stage", "baselines", "--baseline-kinds", "fm", "--nfe-list", "1",
                                    "--out", str(out), "--resume"]) == 0
    assert sw.main(argv) == 0
    res = json.loads((sweep_dir / "sweep.json").read_text())
    assert list(res["settings"]) == ["s2_b16_cos_traj_mix", "s3_b16_cos_traj_mix"]
    s3 = res["settings"]["s3_b16_cos_traj_mix"]
    assert (s3["steps_per_stage"], s3["source"], s3["overrides"]["target"], s3["overrides"]["rollout_pool"]) == \
        (3, "mix", "trajectory", 16)
    cfg = json.loads((sweep_dir / "s3_b16_cos_traj_mix" / "distill_fm" / "oneshot_001" / "distill_config.json").read_text())
    assert cfg["stages"] == [100, 1] and cfg["steps_per_stage"] == [12] and cfg["target"] == "trajectory"
    got = {(st["method"], st["steps"]) for st in s3["students"]}
    assert got == {(m, n) for m in ("distillkac", "distillfm", "reflow_fm") for n in (20, 4, 2, 1)} | \
        {("distillkac_oneshot", 1), ("distillfm_oneshot", 1)}
    rcfg = json.loads((sweep_dir / "s3_b16_cos_traj_mix" / "distill_fm" / "reflow" / "distill_config.json").read_text())
    assert rcfg["stages"] == [100, 1] and rcfg["steps_per_stage"] == [12] and rcfg["source"] == "rollout"
    assert not (sweep_dir / "s3_b16_cos_traj_mix" / "distill_kac" / "reflow").exists()  # --reflow fm only
    for st in s3["students"]:
        t = s3["teachers"]["fm_teacher" if "fm" in st["method"] else "kac_teacher"]
        assert st["ratio"] == pytest.approx(st["fid"] / t["fid"])
        assert st["teacher"] == ("fm_teacher" if "fm" in st["method"] else "kac_teacher")
    assert (sweep_dir / "fm_teacher" / "fm_teacher_nfe100.samples.pt").is_file()  # drawn once for the FM ratios
    curve = res["curve"]["b16_cos_traj_mix"]
    for m in ("distillkac", "distillfm"):
        c = curve[m]["1"]
        assert [p[0] for p in c["points"]] == [2, 3] and c["plateau"] in (2, 3)
        assert c["plateau"] == sw.plateau([tuple(p) for p in c["points"]])
    md = (sweep_dir / "sweep.md").read_text()
    assert "| b16_cos_traj_mix | distillfm | 1 | 2: " in md and "Ratio curve" in md
    assert {c["other"] for c in s3["controls"]} == {"distillfm", "distillkac_oneshot", "distillfm_oneshot", "reflow_fm"}
    assert "Controls at equal network evaluations" in md and "| distillkac 1-step | reflow_fm 1-step | 1 |" in md
    # DistillFM students and their FM teacher come from the same latents and labels: paired ratio intervals
    assert all(st["paired"] for st in s3["students"] if st["method"] == "distillfm")
    assert "paired" in md
    # --resume re-scores finished settings without distilling again: same students, same FIDs
    sample = sweep_dir / "s3_b16_cos_traj_mix" / "distill_kac" / "samples" / "distillkac_nfe001.samples.pt"
    mtime = sample.stat().st_mtime_ns
    assert sw.main(argv + ["--resume"]) == 0
    again = json.loads((sweep_dir / "sweep.json").read_text())["settings"]["s3_b16_cos_traj_mix"]
    assert sample.stat().st_mtime_ns == mtime  # reused, not drawn again
    assert again["fid"] == s3["fid"]
    calls = again["distill_seconds_calls"]
    assert len(calls) == 2 and calls[0] == s3["distill_seconds"] and again["distill_seconds"] == pytest.approx(sum(calls))
    assert sw.main(["--run", str(out), "--out", str(tmp_path / "x"), "--teachers", "kac", "--reflow", "fm",
                    "--settings", "tiny"]) == 2
    assert "--reflow fm" in capsys.readouterr().err

    # --merge: the settings of two sweep folders in one curve and one plot
    other = tmp_path / "sweep_b"
    other.mkdir()
    extra = json.loads((sweep_dir / "sweep.json").read_text())
    big = dict(extra["settings"]["s3_b16_cos_traj_mix"], steps_per_stage=9)
    extra["settings"] = {"s9_b16_cos_traj_mix": big}
    (other / "sweep.json").write_text(json.dumps(extra))
    merged_dir = tmp_path / "merged"
    assert sw.main(["--merge", f"{sweep_dir},{other}", "--out", str(merged_dir)]) == 0
    merged = json.loads((merged_dir / "sweep.json").read_text())
    assert list(merged["settings"]) == ["s2_b16_cos_traj_mix", "s3_b16_cos_traj_mix", "s9_b16_cos_traj_mix"]
    pts = merged["curve"]["b16_cos_traj_mix"]["distillkac"]["1"]["points"]
    assert [p[0] for p in pts] == [2, 3, 9] and pts[2][1] == pytest.approx(s3["ratio"]["1"])
    png = (merged_dir / "curve.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) < 300_000
    assert "s9_b16_cos_traj_mix" in (merged_dir / "sweep.md").read_text()
    extra["run"] = "runs/elsewhere"
    (other / "sweep.json").write_text(json.dumps(extra))
    assert sw.main(["--merge", f"{sweep_dir},{other}", "--out", str(tmp_path / "m2")]) == 2
    assert "different runs" in capsys.readouterr().err
    assert sw.main(["--merge", f"{sweep_dir},{tmp_path / 'none'}", "--out", str(tmp_path / "m3")]) == 2
    assert "sweep.json does not exist" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        sw.parse_args(["--out", str(tmp_path / "m4")])
    assert "--run is required" in capsys.readouterr().err
