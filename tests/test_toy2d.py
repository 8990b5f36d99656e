"""experiments/toy2d.py: a tiny end-to-end run writes every file with the promised fields, and the
goal checks read the table correctly."""
import importlib.util
import json
import math
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _load_toy2d():
    spec = importlib.util.spec_from_file_location("toy2d", ROOT / "experiments" / "toy2d.py")
    mod = importlib.util.module_from_spec(spec)
    sys.modules["toy2d"] = mod  # dataclasses look their module up there
    spec.loader.exec_module(mod)
    return mod


toy2d = _load_toy2d()

TINY = ["--quick", "--datasets", "eight_gaussians,grid9", "--nfes", "8,4,2,1", "--n-train", "600",
        "--n-eval", "200", "--train-steps", "40", "--distill-steps", "6", "--hidden", "16", "--depth", "1",
        "--rollout-pool", "64", "--rollout-refresh", "4", "--batch-size", "64", "--distill-batch", "32",
        "--threads", "1"]


def test_tiny_run_writes_files_and_fields(tmp_path):
    out = tmp_path / "toy"
    res = toy2d.main(TINY + ["--out", str(out)])
    for name in ("config.json", "results.json", "results.md", "samples.png",
                 "samples_eight_gaussians.png", "samples_grid9.png"):
        assert (out / name).is_file() and (out / name).stat().st_size > 0, name
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["nfes"] == [8, 4, 2, 1] and cfg["datasets"] == ["eight_gaussians", "grid9"] and cfg["quick"]
    results = json.loads((out / "results.json").read_text())
    rows = results["rows"]
    assert rows == json.loads(json.dumps(res["rows"]))
    methods = {"data", "kac_teacher_ab2", "kac_teacher_euler", "gaussian_fm_euler", "gaussian_fm_ab2",
               "vp_ddim", "distill_staged_rollout", "distill_staged_forward", "distill_oneshot",
               "flight_teacher_ab2", "flight_teacher_euler", "flight_distill_staged_rollout"}
    for ds in ("eight_gaussians", "grid9"):
        mine = [r for r in rows if r["dataset"] == ds]
        assert {r["method"] for r in mine} == methods
        for r in mine:
            assert set(r) >= {"dataset", "method", "nfe", "nfe_model", "w2"}
            assert isinstance(r["w2"], float) and math.isfinite(r["w2"]) and r["w2"] >= 0
        by = {(r["method"], r["nfe"]): r for r in mine}
        for m in ("kac_teacher_ab2", "kac_teacher_euler", "gaussian_fm_euler", "gaussian_fm_ab2", "vp_ddim",
                  "flight_teacher_ab2", "flight_teacher_euler"):
            for n in (8, 4, 2, 1):
                assert by[(m, n)]["nfe_model"] == 2 * n  # guided (scale 1.2): 2 evaluations per step
        for m in ("distill_staged_rollout", "distill_staged_forward", "flight_distill_staged_rollout"):
            assert sorted(r["nfe"] for r in mine if r["method"] == m) == [1, 2, 4]
            assert all(r["nfe_model"] == r["nfe"] for r in mine if r["method"] == m)
        assert [r["nfe"] for r in mine if r["method"] == "distill_oneshot"] == [1]
        # the noise floor is below a 1-step undistilled sample of a barely trained teacher
        assert by[("data", 0)]["w2"] < by[("kac_teacher_ab2", 1)]["w2"]
        c = results["checks"][ds]
        assert set(c) >= {"ratio_1step_to_teacher", "ratio_within_1.5", "beats_baselines", "staged_vs_oneshot",
                          "sources"}
        assert c["ratio_1step_to_teacher"] == pytest.approx(
            by[("distill_staged_rollout", 1)]["w2"] / by[("kac_teacher_ab2", 8)]["w2"])
        assert set(c["beats_baselines"]) == {"4", "2", "1"}
        hist = results["distill"][ds]["distill_staged_rollout"]
        assert [h["student_steps"] for h in hist] == [4, 2, 1] and [h["substeps"] for h in hist] == [2, 2, 2]
        # the isotropic flow's rows, beside the coordinate-wise Kac flow and Gaussian FM at each NFE
        iso = c["isotropic"]
        assert set(iso) == {"8", "4", "2", "1"}
        assert iso["1"]["flight_distilled"] == by[("flight_distill_staged_rollout", 1)]["w2"]
        assert iso["8"]["kac_teacher"] == by[("kac_teacher_ab2", 8)]["w2"] and iso["8"]["flight_distilled"] is None
        assert c["flight_ratio_1step_to_teacher"] == pytest.approx(
            by[("flight_distill_staged_rollout", 1)]["w2"] / by[("flight_teacher_ab2", 8)]["w2"])
    md = (out / "results.md").read_text()
    assert "## eight_gaussians" in md and "| distill_staged_rollout |" in md and "noise floor" in md
    assert "| flight_teacher_ab2 |" in md and "isotropic (flight) 1-step" in md


def _rows(teacher, distilled, fm, ddim):
    rows = [{"dataset": "grid9", "method": "kac_teacher_ab2", "nfe": 100, "w2": teacher}]
    for n in (20, 4, 2, 1):
        rows += [{"dataset": "grid9", "method": "distill_staged_rollout", "nfe": n, "w2": distilled},
                 {"dataset": "grid9", "method": "gaussian_fm_euler", "nfe": n, "w2": fm},
                 {"dataset": "grid9", "method": "gaussian_fm_ab2", "nfe": n, "w2": fm * 2},
                 {"dataset": "grid9", "method": "vp_ddim", "nfe": n, "w2": ddim}]
    return rows


@pytest.mark.parametrize("teacher, distilled, fm, ddim, within, beats", [
    (0.1, 0.14, 0.2, 0.3, True, True),
    (0.1, 0.16, 0.2, 0.3, False, True),
    (0.1, 0.14, 0.13, 0.3, True, False),
    (0.1, 0.14, 0.2, 0.12, True, False),
])
def test_goal_checks(teacher, distilled, fm, ddim, within, beats):
    cfg = toy2d.Toy2DConfig(datasets=("grid9",))
    c = toy2d.goal_checks(_rows(teacher, distilled, fm, ddim), cfg)["grid9"]
    assert c["ratio_1step_to_teacher"] == pytest.approx(distilled / teacher)
    assert c["ratio_within_1.5"] is within
    assert all(b["beats_both"] is beats for b in c["beats_baselines"].values())


def test_cli_overrides_and_validation():
    cfg, out = toy2d.parse_args(["--quick", "--guidance", "1.5", "--source", "forward", "--out", "x"])
    assert cfg.quick and cfg.guidance == 1.5 and cfg.distill_source == "forward" and out == Path("x")
    assert cfg.train_steps == toy2d.QUICK["train_steps"]
    cfg, out = toy2d.parse_args([])
    assert not cfg.quick and out == Path("runs/toy2d") and cfg.nfes == (100, 20, 4, 2, 1) and cfg.flight
    assert not toy2d.parse_args(["--no-flight"])[0].flight
    with pytest.raises(SystemExit):  # argparse's one-line error (tests/test_cli.py checks the line)
        toy2d.parse_args(["--datasets", "spirals"])
    with pytest.raises(ValueError, match="^--nfes: each step count must divide"):
        toy2d.parse_args(["--nfes", "100,30"])
