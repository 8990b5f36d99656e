"""experiments/cifar_distill.py: the smoke preset end to end, resume, stage sample, clean errors."""
import importlib.util
import json
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def cd():
    spec = importlib.util.spec_from_file_location("cifar_distill", ROOT / "experiments" / "cifar_distill.py")
    mod = importlib.util.module_from_spec(spec)
    sys.modules["cifar_distill"] = mod  # dataclasses look the module up
    spec.loader.exec_module(mod)
    return mod


COMMON = ["--preset", "smoke", "--device", "cpu", "--quiet"]


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
    assert res["teacher"]["steps"] == 20 and res["teacher"]["final_loss"] > 0
    assert "teacher" in capsys.readouterr().out  # the printed table

    # --resume with a longer budget continues at step 20
    assert cd.main(COMMON + ["--stage", "teacher", "--steps", "25", "--resume", "--out", str(out)]) == 0
    res = json.loads((out / "results.json").read_text())
    assert (res["teacher"]["start_step"], res["teacher"]["steps"]) == (20, 25)
    steps = [json.loads(line)["step"] for line in (teacher / "train_log.jsonl").read_text().splitlines()]
    assert steps == [10, 20, 25]

    assert cd.main(COMMON + ["--stage", "sample", "--num-samples", "12", "--sample-steps", "5",
                             "--guidance", "1.5", "--out", str(out)]) == 0
    s = torch.load(out / "sample" / "samples.pt")
    assert s["images"].shape == (12, 1, 8, 8) and torch.isfinite(s["images"]).all()
    assert s["labels"].tolist() == [i % 10 for i in range(12)]
    assert (s["nfe"], s["nfe_model"], s["guidance_scale"]) == (5, 10, 1.5)  # guided: 2 evaluations a step
    assert (out / "sample" / "samples.png").is_file()


def test_missing_cifar_gives_a_clean_error(cd, tmp_path, capsys):
    missing = tmp_path / "no_cifar_here"
    code = cd.main(["--preset", "gpu", "--stage", "teacher", "--device", "cpu", "--quiet",
                    "--data-dir", str(missing), "--out", str(tmp_path / "o")])
    err = capsys.readouterr().err
    assert code != 0
    assert str(missing) in err and "cifar-10" in err.lower()
    assert "Traceback" not in err


def test_unfinished_stages_and_missing_teacher_fail_cleanly(cd, tmp_path, capsys):
    assert cd.main(COMMON + ["--stage", "sample", "--out", str(tmp_path)]) == 2
    assert "checkpoint" in capsys.readouterr().err
    assert cd.main(COMMON + ["--stage", "distill", "--out", str(tmp_path)]) == 3
    assert "not implemented" in capsys.readouterr().err


def test_dataset_override_picks_a_matching_model(cd):
    args = cd.parse_args(["--preset", "gpu", "--dataset", "mnist5k", "--steps", "7", "--a", "25", "--c", "2"])
    cfg = cd.build_train_config(args)
    assert (cfg.model, cfg.dataset, cfg.total_steps, cfg.a, cfg.c) == ("mnist_small", "mnist5k", 7, 25.0, 2.0)
    assert cfg.bf16 and cfg.batch_size == 128 and cfg.warmup_steps == 0
    syn = cd.build_train_config(cd.parse_args(["--preset", "gpu", "--dataset", "synthetic"]))
    assert (syn.model, syn.dataset) == ("cifar10_kacflow", "synthetic")
