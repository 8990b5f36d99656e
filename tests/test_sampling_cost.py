"""experiments/sampling_cost.py on a tiny run built here (digits_tiny teacher, a few training steps)."""
import json
import math
import sys
from pathlib import Path

import pytest
import torch

from kacnum.images.data import digits
from kacnum.images.metrics import save_classifier, train_classifier
from kacnum.images.train import TrainConfig, Trainer

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "experiments"))
import equal_evals  # noqa: E402
import sampling_cost  # noqa: E402


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    run = tmp_path_factory.mktemp("run")
    images, labels = digits("train")
    cfg = TrainConfig(model="digits_tiny", dataset="digits", batch_size=32, total_steps=30, lr=2e-3,
                      warmup_steps=2, ema_decay=0.5, log_every=10, checkpoint_every=0, sample_every=0,
                      num_samples=4, sample_steps=2)
    trainer = Trainer(cfg, run / "teacher", data=(images, labels))
    try:
        trainer.fit(resume=False, progress=False)
    finally:
        trainer.close()
    # the run's evaluation cache: a (weak, 1-epoch) feature classifier
    model, _ = train_classifier(images, labels, 1, data_name="digits/train", progress=False)
    save_classifier(model, run / "eval" / "classifier_digits.pt")
    return run


def test_sampling_cost_on_a_tiny_run(tiny_run, tmp_path):
    out = tmp_path / "cost"
    res = sampling_cost.main(["--run", str(tiny_run), "--out", str(out), "--solvers", "euler,heun,ab2,rk4",
                              "--grids", "uniform,power:2,power:3,kac", "--steps", "2,16",
                              "--reference", "rk4:16", "--num-samples", "12", "--batch-size", "6",
                              "--fid", "--n-boot", "50", "--threads", "1", "--quiet"])
    assert (out / "sampling_cost.json").is_file() and (out / "sampling_cost.png").is_file()
    saved = json.loads((out / "sampling_cost.json").read_text())
    assert len(saved["configs"]) == 4 * 4 * 2
    by = {(c["solver"], c["grid"], c["steps"]): c for c in res["configs"]}
    # the reference configuration itself, from the same latents, has zero coupled error
    assert by[("rk4", "uniform", 16)]["rms"] == 0.0
    assert by[("rk4", "uniform", 16)]["fid"] == pytest.approx(res["reference"]["fid"], rel=1e-12)
    # network evaluations: guided (2 per call), Heun 2 calls per step
    assert by[("euler", "kac", 2)]["nfe_model"] == 4 and by[("heun", "uniform", 2)]["nfe_model"] == 8
    assert by[("ab2", "power:2", 16)]["nfe_model"] == 32 and res["reference"]["nfe_model"] == 128
    # the grids differ (different samples) and the error falls with the steps for each (solver, grid)
    assert by[("euler", "uniform", 2)]["rms"] != by[("euler", "power:2", 2)]["rms"]
    for s in ("euler", "heun", "ab2"):
        for g in ("uniform", "power:2", "power:3", "kac"):
            assert by[(s, g, 16)]["rms"] < by[(s, g, 2)]["rms"], (s, g)
    # second-order solvers beat Euler at 16 steps on the uniform grid
    assert by[("heun", "uniform", 16)]["rms"] < by[("euler", "uniform", 16)]["rms"]
    for c in res["configs"]:
        lo, hi = c["fid_interval"]
        assert lo <= c["fid"] <= hi and math.isfinite(c["rms"])
    # the reference configuration's paired FID ratio is exactly 1 (same latents, same images); others carry one
    q = by[("rk4", "uniform", 16)]["fid_ratio"]
    assert q["value"] == pytest.approx(1.0, abs=1e-12) and q["interval"] == pytest.approx([1.0, 1.0], abs=1e-12)
    for c in res["configs"]:
        assert c["fid_ratio"]["value"] == pytest.approx(c["fid"] / res["reference"]["fid"], rel=1e-9)
        lo, hi = c["fid_ratio"]["interval"]
        assert c["fid_ratio_dev"] == pytest.approx(max(hi - 1, 1 - lo))
    assert res["fewest_steps"]["fid_ratio_within"]["rk4/uniform"]["steps"] <= 16
    for name, v in res["fewest_steps"]["fid_ratio_within"].items():
        solver, grid = name.split("/")
        good = [k for k in (2, 16) if by[(solver, grid, k)]["fid_ratio_dev"] <= 0.03]
        assert (v is None) == (not good) and (v is None or v["steps"] == min(good)), (name, v)
    # --from-json: the same summary again without sampling, and a wider tolerance admits more
    again = sampling_cost.main(["--run", str(tiny_run), "--from-json", str(out / "sampling_cost.json"), "--quiet",
                                "--fid-tol", "0.03"])
    assert again["fewest_steps"] == json.loads(json.dumps(res["fewest_steps"]))
    wide = sampling_cost.main(["--run", str(tiny_run), "--from-json", str(out / "sampling_cost.json"), "--quiet",
                               "--fid-tol", "100", "--out", str(tmp_path / "wide")])
    assert all(v is not None and v["steps"] == 2 for v in wide["fewest_steps"]["fid_ratio_within"].values())
    f_ref = res["reference"]["fid"]
    assert res["fewest_steps"]["fid"]["rk4/uniform"]["steps"] <= 16  # 16 RK4 steps are the reference
    for key, ok in (("fid", lambda v: abs(v / f_ref - 1) <= 0.03), ("rms", lambda v: v <= 0.01)):
        assert len(res["fewest_steps"][key]) == 16
        for name, v in res["fewest_steps"][key].items():
            solver, grid = name.split("/")
            good = [k for k in (2, 16) if ok(by[(solver, grid, k)][key])]
            assert (v is None) == (not good) and (v is None or v["steps"] == min(good)), (key, name, v)


def test_sampling_cost_refuses_bad_input(tiny_run, tmp_path):
    with pytest.raises(SystemExit):
        sampling_cost.main(["--run", str(tiny_run), "--grids", "power:-1"])
    with pytest.raises(SystemExit):
        sampling_cost.main(["--run", str(tiny_run), "--reference", "rk5:10"])
    with pytest.raises(ValueError, match="run"):
        sampling_cost.main(["--run", str(tmp_path / "nothing")])
    with pytest.raises(ValueError, match="--teacher"):
        sampling_cost.main(["--run", str(tiny_run), "--teacher", str(tmp_path / "none.pt")])


def test_fewest_steps():
    cfgs = [{"solver": "ab2", "grid": "uniform", "steps": k, "nfe_model": 2 * k, "fid": f}
            for k, f in ((4, 12.0), (8, 10.4), (16, 10.1), (32, 10.0))]
    got = sampling_cost.fewest_steps(cfgs, "fid", 10.0, 0.03, relative=True)
    assert got == {"ab2/uniform": {"steps": 16, "nfe_model": 32, "fid": 10.1}}
    got = sampling_cost.fewest_steps(cfgs, "fid", 10.0, 0.001, relative=True)
    assert got["ab2/uniform"]["steps"] == 32
    assert sampling_cost.fewest_steps(cfgs, "fid", 1.0, 0.03, relative=True) == {"ab2/uniform": None}


def test_equal_evals_on_a_tiny_run(tiny_run, tmp_path):
    ck = str(tiny_run / "teacher" / "checkpoint.pt")
    out = tmp_path / "ee"
    argv = ["--run", str(tiny_run), "--out", str(out), "--num-samples", "16", "--batch-size", "8", "--n-boot", "30",
            "--threads", "1", "--quiet", "--set", f"a={ck}:ab2:2", "--set", f"b={ck}:euler:8:power:2"]
    res = equal_evals.main(argv)
    a, b = res["rows"]
    assert (a["nfe_model"], b["nfe_model"]) == (4, 16) and b["grid"] == "power:2"
    for r in res["rows"]:
        assert r["fid_interval"][0] < r["fid"] < r["fid_interval"][1] and r["n"] == 16
        assert (out / f"{r['label']}.samples.pt").is_file() and (out / f"{r['label']}.npz").is_file()
    (p,) = res["pairs"]
    assert p["paired"]  # same path, seed, batches and labels: coupled
    assert p["ratio"] == pytest.approx(a["fid"] / b["fid"], rel=1e-9)
    assert res["floor"]["n"] == 16 and (out / "equal_evals.md").is_file()
    again = equal_evals.main(argv)  # the sample files are reused
    assert [r["sample_seconds"] for r in again["rows"]] == [0.0, 0.0]
    assert again["rows"][0]["fid"] == a["fid"]


def test_equal_evals_refuses_bad_sets(tiny_run, tmp_path):
    ck = str(tiny_run / "teacher" / "checkpoint.pt")
    for bad in ("a", f"a={ck}", f"a={ck}:rk5:4", f"a={ck}:ab2:0", f"a={ck}:ab2:4:power:-1", f"a b={ck}:ab2:4"):
        with pytest.raises(SystemExit):
            equal_evals.main(["--run", str(tiny_run), "--set", bad])
    with pytest.raises(ValueError, match="labels must differ"):
        equal_evals.main(["--run", str(tiny_run), "--set", f"a={ck}:ab2:4", "--set", f"a={ck}:ab2:8"])
    with pytest.raises(ValueError, match="--set"):
        equal_evals.main(["--run", str(tiny_run), "--set", f"a={tmp_path / 'none.pt'}:ab2:4"])
