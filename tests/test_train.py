"""kacnum.images.train: exact resumption, atomic checkpoints, EMA, LR warm-up, two-process DDP (gloo), outputs."""
import json
import math
import os
import socket
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch
from PIL import Image

import kacnum.core.checkpoint as ckpt_mod
from kacnum.images.data import load_dataset
from kacnum.images.train import (
    TrainConfig,
    Trainer,
    derive_seed,
    load_teacher,
    lr_factor,
    save_image_grid,
    synthetic_dataset,
)

TINY = dict(model="tiny", model_overrides={"num_classes": 10}, dataset="digits", batch_size=16,
            total_steps=6, log_every=1, checkpoint_every=2, lr=2e-3, warmup_steps=2, ema_decay=0.9,
            num_samples=6, sample_steps=4, guidance_scale=1.5)


@pytest.fixture(scope="module")
def digits():
    return load_dataset("digits", split="train")


@pytest.fixture(scope="module")
def straight_run(digits, tmp_path_factory):
    """6 uninterrupted steps on the tiny UNet / digits."""
    out = tmp_path_factory.mktemp("straight")
    tr = Trainer(TrainConfig(**TINY), out, device="cpu", data=digits)
    summary = tr.fit(progress=False)
    return tr, out, summary


def _states_equal(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_resume_repeats_the_uninterrupted_run_bit_for_bit(straight_run, digits, tmp_path):
    ref, _, _ = straight_run
    cfg = TrainConfig(**TINY)
    first = Trainer(cfg, tmp_path, device="cpu", data=digits)
    first.fit(progress=False, max_steps=3)
    assert first.step == 3 and (tmp_path / "checkpoint.pt").is_file()
    second = Trainer(cfg, tmp_path, device="cpu", data=digits)  # fresh weights, resumed from disk
    assert not _states_equal(second.model.state_dict(), first.model.state_dict())
    summary = second.fit(progress=False, resume=True)
    assert summary["start_step"] == 3 and second.step == 6

    losses_ref = [r["loss"] for r in ref.history]
    losses = [r["loss"] for r in first.history] + [r["loss"] for r in second.history]
    assert len(losses_ref) == 6 and losses == losses_ref  # exact float equality
    assert len(set(losses_ref)) == 6  # the losses do change from step to step
    assert _states_equal(second.model.state_dict(), ref.model.state_dict())
    assert _states_equal(second.ema.model.state_dict(), ref.ema.model.state_dict())
    # the log on disk holds each step once, in order
    steps = [json.loads(line)["step"] for line in (tmp_path / "train_log.jsonl").read_text().splitlines()]
    assert steps == [1, 2, 3, 4, 5, 6]


def test_resume_after_a_later_crash_truncates_the_log_and_repeats_steps(digits, tmp_path):
    cfg = TrainConfig(**{**TINY, "total_steps": 5, "checkpoint_every": 2})
    a = Trainer(cfg, tmp_path, device="cpu", data=digits)
    a.fit(progress=False, max_steps=3)  # checkpoint at 2 (periodic) and 3 (stop)
    # emulate a crash after step 3 that left only the step-2 checkpoint: rewind it by hand
    b = Trainer(cfg, None, device="cpu", data=digits)
    b.fit(progress=False, max_steps=2)
    b.save_checkpoint(tmp_path / "checkpoint.pt")
    c = Trainer(cfg, tmp_path, device="cpu", data=digits)
    c.fit(progress=False, resume=True)
    steps = [json.loads(line)["step"] for line in (tmp_path / "train_log.jsonl").read_text().splitlines()]
    assert steps == [1, 2, 3, 4, 5]
    assert c.history[0]["loss"] == a.history[2]["loss"]  # step 3 computed twice, identically


def test_resume_refuses_a_changed_config(straight_run, digits):
    _, out, _ = straight_run
    tr = Trainer(TrainConfig(**{**TINY, "a": 25.0, "c": 2.0}), out, device="cpu", data=digits)
    with pytest.raises(ValueError, match=r"\['a', 'c'\]"):
        tr.fit(progress=False, resume=True)


def test_failed_checkpoint_write_leaves_previous_checkpoint_loadable(digits, tmp_path, monkeypatch):
    cfg = TrainConfig(**{**TINY, "checkpoint_every": 0})
    tr = Trainer(cfg, tmp_path, device="cpu", data=digits)
    tr.fit(progress=False, max_steps=3)  # checkpoint.pt at step 3
    good = {k: v.clone() for k, v in tr.model.state_dict().items()}
    tr.train_step()  # step 4: the weights move on
    assert not _states_equal(good, tr.model.state_dict())

    def crash_mid_write(obj, f, *a, **k):
        f.write(b"PK\x03\x04 half a checkpoint")
        raise KeyboardInterrupt  # the worst moment: bytes on disk, no rename yet

    with monkeypatch.context() as m:
        m.setattr(torch, "save", crash_mid_write)
        with pytest.raises(KeyboardInterrupt):
            tr.save_checkpoint()

    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".")) == []  # no temp file left
    assert ckpt_mod.load_checkpoint(tmp_path / "checkpoint.pt")["step"] == 3
    fresh = Trainer(cfg, tmp_path, device="cpu", data=digits)
    assert fresh.load_checkpoint() and fresh.step == 3
    assert _states_equal(fresh.model.state_dict(), good)


def test_ema_follows_the_warmed_up_average(digits):
    decay = 0.9
    cfg = TrainConfig(**{**TINY, "ema_decay": decay, "checkpoint_every": 0})
    tr = Trainer(cfg, None, device="cpu", data=digits)
    params = [[p.detach().clone() for p in tr.model.parameters()]]
    tr.fit(progress=False, max_steps=3,
           callback=lambda info: params.append([p.detach().clone() for p in tr.model.parameters()]))
    ema = [p.clone().double() for p in params[0]]
    for n in (1, 2, 3):
        d = min(decay, (1 + n) / (10 + n))  # kacnum.students.distill.EMA's warm-up
        ema = [d * e + (1 - d) * p.double() for e, p in zip(ema, params[n])]
    got = list(tr.ema.model.parameters())
    assert max(float((g.double() - e).abs().max()) for g, e in zip(got, ema)) < 1e-6
    # and it is not simply the current weights
    assert max(float((g - p).abs().max()) for g, p in zip(got, params[-1])) > 1e-4


def test_lr_warmup_and_cosine_schedule(digits):
    assert [lr_factor(n, 4, 100) for n in range(6)] == [0.25, 0.5, 0.75, 1.0, 1.0, 1.0]
    assert lr_factor(0, 0, 10) == 1.0
    assert lr_factor(10, 0, 10, "cosine") == pytest.approx(0.0, abs=1e-12)
    assert lr_factor(7, 4, 10, "cosine") == pytest.approx(0.5 * (1 + math.cos(math.pi * 3 / 6)))
    with pytest.raises(ValueError, match="schedule"):
        lr_factor(0, 0, 10, "linear")
    cfg = TrainConfig(**{**TINY, "warmup_steps": 3, "checkpoint_every": 0})
    tr = Trainer(cfg, None, device="cpu", data=digits)
    lrs = []
    tr.fit(progress=False, max_steps=4, callback=lambda info: lrs.append(info["lr"]))
    assert lrs == pytest.approx([cfg.lr / 3, 2 * cfg.lr / 3, cfg.lr, cfg.lr], rel=1e-12)


def test_config_json_log_and_sample_grid_written(straight_run):
    tr, out, summary = straight_run
    conf = json.loads((out / "config.json").read_text())
    assert conf["train"]["model"] == "tiny" and conf["train"]["batch_size"] == 16
    assert conf["resolved"]["world_size"] == 1 and conf["resolved"]["local_batch"] == 16
    assert conf["resolved"]["num_parameters"] == sum(p.numel() for p in tr.model.parameters())
    rows = [json.loads(line) for line in (out / "train_log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == list(range(1, 7))
    assert all(r["images_per_s"] > 0 and math.isfinite(r["loss"]) for r in rows)
    grid = out / "samples_000006.png"
    assert summary["grids"] == [str(grid)]
    with Image.open(grid) as im:
        # 6 samples, 10 classes -> one row of 6 tiles of 8 px scaled x8, 1 px padding (scaled)
        assert im.mode == "L" and im.size == ((6 * 9 + 1) * 8, (9 + 1) * 8)
    model, path, cfg = load_teacher(out / "checkpoint.pt", device="cpu")
    assert cfg == TrainConfig(**TINY)
    assert _states_equal(model.state_dict(), tr.ema.model.state_dict())


def test_save_image_grid_pixels(tmp_path):
    x = torch.tensor([-1.0, 0.0, 1.0, 2.0]).reshape(1, 1, 2, 2).repeat(3, 1, 1, 1)
    f = save_image_grid(x, tmp_path / "g.png", nrow=2, padding=1)
    with Image.open(f) as im:
        a = torch.from_numpy(np.array(im)).long()
    assert a.shape == (2 * 3 + 1, 2 * 3 + 1)
    assert a[1:3, 1:3].tolist() == [[0, 128], [255, 255]]  # round(127.5) = 128 (half to even: 128)
    assert int(a[0, 0]) == 255 and a[4:6, 4:6].tolist() == [[255, 255], [255, 255]]  # empty 4th slot


@pytest.mark.parametrize("channels", [1, 3])
def test_save_image_grid_row_labels(tmp_path, channels):
    x = torch.full((6, channels, 4, 4), -1.0)  # black images
    plain = np.array(Image.open(save_image_grid(x, tmp_path / "p.png", nrow=3, scale=4)))
    f = save_image_grid(x, tmp_path / "l.png", nrow=3, scale=4, row_labels=["kac_teacher", "vp_ddim"])
    a = np.array(Image.open(f))
    margin = a.shape[1] - plain.shape[1]
    assert a.shape[0] == plain.shape[0] and margin > 20  # a margin wide enough for the longer label
    assert (a[:, margin:] == plain).all()  # the images themselves are untouched
    left = a[:, :margin].reshape(a.shape[0], margin, -1).min(axis=2)
    row_h = 5 * 4
    inked = [(left[r * row_h + 4:(r + 1) * row_h + 4] < 128).sum() for r in range(2)]
    assert all(n > 10 for n in inked)  # dark text beside each row
    assert inked[0] > inked[1]  # "kac_teacher" has more letters than "vp_ddim"
    with pytest.raises(ValueError, match="one label per row"):
        save_image_grid(x, tmp_path / "bad.png", nrow=3, row_labels=["only one"])


def test_synthetic_dataset_is_deterministic_and_class_structured():
    x1, y1 = synthetic_dataset(200, 3, 16, 10, seed=3)
    x2, y2 = synthetic_dataset(200, 3, 16, 10, seed=3)
    assert torch.equal(x1, x2) and torch.equal(y1, y2)
    assert x1.shape == (200, 3, 16, 16) and x1.abs().max() <= 1.0
    assert torch.equal(torch.bincount(y1), torch.full((10,), 20))
    m = torch.stack([x1[y1 == k].mean(0) for k in range(10)])
    within = torch.stack([(x1[y1 == k] - m[k]).pow(2).mean() for k in range(10)]).mean()
    between = (m[:, None] - m[None]).pow(2).mean()
    assert between > 3 * within
    assert not torch.equal(synthetic_dataset(20, 3, 16, 10, seed=4)[0], x1[:20])


def test_config_validation_names_the_field():
    with pytest.raises(ValueError, match="lr"):
        TrainConfig(lr=-1.0)
    with pytest.raises(ValueError, match="path"):
        TrainConfig(path="edm")
    with pytest.raises(ValueError, match="batch_size"):
        TrainConfig(batch_size=0)
    with pytest.raises(ValueError, match="model"):
        TrainConfig(model="resnet")
    assert derive_seed(1, 2, 3) != derive_seed(1, 3, 2) and 0 <= derive_seed(7) < 2 ** 63


def test_model_and_data_shapes_must_match(digits):
    with pytest.raises(ValueError, match=r"\(1, 8, 8\)"):
        Trainer(TrainConfig(**{**TINY, "model": "mnist_small", "model_overrides": {}}), None, device="cpu",
                data=digits)


_WORKER = textwrap.dedent("""
    import sys, torch
    torch.set_num_threads(1)
    from kacnum.images.train import TrainConfig, Trainer
    out = sys.argv[1]
    cfg = TrainConfig(model="tiny", model_overrides={"num_classes": 10}, dataset="synthetic",
                      synthetic_size=128, batch_size=16, total_steps=3, log_every=1, checkpoint_every=0,
                      lr=2e-3, num_samples=4, sample_steps=2)
    tr = Trainer(cfg, out + "/run", device="cpu")
    init = {k: v.clone() for k, v in tr.model.state_dict().items()}
    seen = []
    get = tr.batches.get

    def recording_get(epoch, position):
        x, y = get(epoch, position)
        seen.append(x.clone())
        return x, y

    tr.batches.get = recording_get
    tr.fit(progress=False)
    torch.save({"init": init, "final": tr.model.state_dict(), "losses": [r["loss"] for r in tr.history],
                "rank": tr.dist.rank, "world": tr.dist.world_size, "local_batch": tr.local_batch,
                "batches": torch.stack(seen)}, f"{out}/rank{tr.dist.rank}.pt")
    tr.close()
""")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_ddp_two_gloo_processes_hold_identical_weights(tmp_path):
    port = _free_port()
    procs = []
    for rank in range(2):
        env = dict(os.environ, RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE="2", LOCAL_WORLD_SIZE="2",
                   MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), OMP_NUM_THREADS="1",
                   CUDA_VISIBLE_DEVICES="")
        procs.append(subprocess.Popen([sys.executable, "-c", _WORKER, str(tmp_path)], env=env,
                                      stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True))
    outs = []
    for p in procs:
        try:
            outs.append(p.communicate(timeout=180)[0])
        except subprocess.TimeoutExpired:
            for q in procs:
                q.kill()
            raise
    for p, o in zip(procs, outs):
        assert p.returncode == 0, o
    r0, r1 = (torch.load(tmp_path / f"rank{r}.pt") for r in range(2))
    assert (r0["rank"], r1["rank"], r0["world"], r0["local_batch"]) == (0, 1, 2, 8)
    assert _states_equal(r0["init"], r1["init"])
    assert _states_equal(r0["final"], r1["final"])
    assert not _states_equal(r0["init"], r0["final"])
    assert r0["losses"] == r1["losses"] and len(r0["losses"]) == 3  # the logged loss is the global mean
    assert not torch.equal(r0["batches"], r1["batches"])  # each rank trains on its own share
    assert (tmp_path / "run" / "checkpoint.pt").is_file() and (tmp_path / "run" / "samples_000003.png").is_file()
