"""kacnum.core.checkpoint: the previous checkpoint is kept, damage is found on load, the previous copy is used.

Each kind of training checkpoint (teacher / baseline ``checkpoint.pt`` of ``kacnum.images.train.Trainer``,
``distill.ckpt`` of ``kacnum.students.distill.Distiller``, ``progressive.ckpt`` of
``kacnum.students.progressive.ProgressiveDistiller``) is truncated, zeroed and emptied here, with and without a
good previous copy beside it.
"""
import os
import warnings

import pytest
import torch

from kacnum.core.checkpoint import (
    CheckpointError,
    CheckpointFallbackWarning,
    load_checkpoint,
    previous_path,
    save_checkpoint,
    verify_checkpoint,
)
from kacnum.images.data import load_dataset
from kacnum.students.distill import DistillConfig, Distiller
from kacnum.images.models.mlp import MLP
from kacnum.flows.paths import KacPath, VPPath
from kacnum.students.progressive import ProgressiveConfig, ProgressiveDistiller
from kacnum.images.train import TrainConfig, Trainer, load_teacher


def truncate(path, keep=0.5):
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])


def zero_block(path):
    """Same length, a block of zeros in the middle (a crashed file system's kind of damage)."""
    data = bytearray(path.read_bytes())
    a, b = len(data) // 3, len(data) // 3 + 512
    data[a:b] = bytes(b - a)
    path.write_bytes(bytes(data))


def empty(path):
    path.write_bytes(b"")


DAMAGE = {"truncated": truncate, "zeroed": zero_block, "empty": empty}


# ---------------------------------------------------------------------------------------------
# the file functions


def test_previous_path_names():
    assert previous_path("a/checkpoint.pt").name == "checkpoint.prev.pt"
    assert previous_path("distill.ckpt").name == "distill.prev.ckpt"
    assert previous_path("x/state").name == "state.prev"


def test_keep_previous_rotates_only_intact_files(tmp_path):
    f = tmp_path / "c.pt"
    save_checkpoint(f, {"step": 1, "w": torch.arange(1000.0)}, keep_previous=True)
    assert not previous_path(f).exists()  # nothing to keep yet
    save_checkpoint(f, {"step": 2, "w": torch.arange(1000.0)}, keep_previous=True)
    assert load_checkpoint(f)["step"] == 2 and load_checkpoint(previous_path(f))["step"] == 1
    # a damaged newest file is not kept as "previous": the good step-2 copy must survive
    save_checkpoint(f, {"step": 3, "w": torch.arange(1000.0)}, keep_previous=True)
    truncate(f)
    save_checkpoint(f, {"step": 4, "w": torch.arange(1000.0)}, keep_previous=True)
    assert load_checkpoint(previous_path(f))["step"] == 2
    assert load_checkpoint(f)["step"] == 4
    # without keep_previous nothing is rotated
    save_checkpoint(f, {"step": 5}, keep_previous=False)
    assert load_checkpoint(previous_path(f))["step"] == 2
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c.prev.pt", "c.pt"]  # no temp files


@pytest.mark.parametrize("damage", sorted(DAMAGE))
def test_verify_finds_each_damage(tmp_path, damage):
    f = tmp_path / "c.pt"
    save_checkpoint(f, {"w": torch.randn(20000, generator=torch.Generator().manual_seed(0))})
    assert verify_checkpoint(f) is None
    DAMAGE[damage](f)
    reason = verify_checkpoint(f)
    assert reason is not None
    assert {"truncated": "truncated", "zeroed": "CRC", "empty": "0 bytes"}[damage] in reason
    # torch.load itself would read the zeroed file without complaint: the CRC check is what catches it
    if damage == "zeroed":
        torch.load(f, weights_only=True)
    assert verify_checkpoint(tmp_path / "missing.pt") == "missing"


@pytest.mark.parametrize("damage", sorted(DAMAGE))
def test_load_falls_back_to_the_previous_copy_with_a_warning(tmp_path, damage):
    f = tmp_path / "c.pt"
    save_checkpoint(f, {"step": 1, "w": torch.ones(5000)}, keep_previous=True)
    save_checkpoint(f, {"step": 2, "w": torch.ones(5000)}, keep_previous=True)
    DAMAGE[damage](f)
    with pytest.warns(CheckpointFallbackWarning) as rec:
        ck = load_checkpoint(f)
    assert ck["step"] == 1
    msg = str(rec[0].message)
    assert str(f) in msg and str(previous_path(f)) in msg
    # fallback=False refuses, naming the file
    with pytest.raises(CheckpointError, match=str(f)):
        load_checkpoint(f, fallback=False)


@pytest.mark.parametrize("damage", sorted(DAMAGE))
def test_load_without_a_good_copy_stops_naming_the_files(tmp_path, damage):
    f = tmp_path / "c.pt"
    save_checkpoint(f, {"step": 1, "w": torch.ones(5000)})
    DAMAGE[damage](f)
    with pytest.raises(CheckpointError) as e:
        load_checkpoint(f)
    msg = str(e.value)
    assert str(f) in msg and "no previous copy" in msg and "\n" not in msg
    # a damaged previous copy too: both named
    save_checkpoint(previous_path(f), {"step": 0, "w": torch.ones(5000)})
    truncate(previous_path(f))
    with pytest.raises(CheckpointError) as e:
        load_checkpoint(f)
    assert str(f) in str(e.value) and str(previous_path(f)) in str(e.value)
    assert "previous copy is damaged too" in str(e.value)


@pytest.mark.parametrize("resumable", [True, False])
def test_the_advice_fits_whose_file_is_damaged(tmp_path, resumable):
    """A run's own checkpoint may be dropped by starting afresh; a file the user named can only be restored."""
    f = tmp_path / "c.pt"
    save_checkpoint(f, {"step": 1, "w": torch.ones(5000)})
    truncate(f)
    with pytest.raises(CheckpointError) as e:
        load_checkpoint(f, resumable=resumable)
    msg = str(e.value)
    assert msg.startswith(f"damaged checkpoint {f}: ") and "no previous copy" in msg
    if resumable:
        assert msg.endswith("restore a good copy, or delete it and run again without --resume to start afresh")
    else:
        assert msg.endswith(f"restore a good copy of {f}") and "--resume" not in msg


def test_missing_newest_uses_previous_and_missing_both_is_file_not_found(tmp_path):
    f = tmp_path / "c.pt"
    with pytest.raises(FileNotFoundError, match="no checkpoint at"):
        load_checkpoint(f)
    save_checkpoint(previous_path(f), {"step": 7})  # a crash between the two renames
    with pytest.warns(CheckpointFallbackWarning, match="missing"):
        assert load_checkpoint(f)["step"] == 7


# ---------------------------------------------------------------------------------------------
# each kind of training checkpoint

TINY = dict(model="tiny", model_overrides={"num_classes": 10}, dataset="digits", batch_size=8, total_steps=4,
            log_every=1, checkpoint_every=2, lr=2e-3, ema_decay=0.9, num_samples=2, sample_steps=2, sample_every=0)


@pytest.fixture(scope="module")
def digits():
    x, y = load_dataset("digits", split="train")
    return x[:256], y[:256]


@pytest.fixture(scope="module")
def trained(digits, tmp_path_factory):
    """4 steps with checkpoints at 2 and 4: checkpoint.pt (step 4) and checkpoint.prev.pt (step 2)."""
    out = tmp_path_factory.mktemp("teacher")
    tr = Trainer(TrainConfig(**TINY), out, device="cpu", data=digits)
    tr.fit(progress=False, max_steps=3)  # checkpoints at 2 (periodic) and 3 (stop)
    tr.fit(progress=False)  # step 4
    return out


def _copy_run(src, dst):
    dst.mkdir()
    for p in src.iterdir():
        if p.is_file():
            (dst / p.name).write_bytes(p.read_bytes())
    return dst


@pytest.mark.parametrize("damage", sorted(DAMAGE))
def test_trainer_resumes_from_the_previous_checkpoint(trained, digits, tmp_path, damage):
    out = _copy_run(trained, tmp_path / "run")
    assert load_checkpoint(out / "checkpoint.pt")["step"] == 4
    assert load_checkpoint(out / "checkpoint.prev.pt")["step"] == 3
    DAMAGE[damage](out / "checkpoint.pt")
    tr = Trainer(TrainConfig(**TINY), out, device="cpu", data=digits)
    with pytest.warns(CheckpointFallbackWarning, match="checkpoint.prev.pt"):
        summary = tr.fit(progress=False, resume=True)
    assert (summary["start_step"], summary["steps"]) == (3, 4)  # step 4 is trained again
    assert load_checkpoint(out / "checkpoint.pt")["step"] == 4  # a good newest file again
    assert verify_checkpoint(out / "checkpoint.prev.pt") is None  # the damaged file was not kept


@pytest.mark.parametrize("damage", sorted(DAMAGE))
def test_trainer_and_load_teacher_stop_when_no_copy_is_good(trained, digits, tmp_path, damage):
    out = _copy_run(trained, tmp_path / "run")
    (out / "checkpoint.prev.pt").unlink()
    DAMAGE[damage](out / "checkpoint.pt")
    tr = Trainer(TrainConfig(**TINY), out, device="cpu", data=digits)
    with pytest.raises(CheckpointError, match=str(out / "checkpoint.pt")) as e:
        tr.fit(progress=False, resume=True)
    assert "without --resume" in str(e.value)  # the run's own checkpoint: starting afresh is a way out
    with pytest.raises(CheckpointError, match=str(out / "checkpoint.pt")) as e:
        load_teacher(out / "checkpoint.pt", device="cpu")
    # a teacher the user named: a fresh run would read it again, so only restoring it helps
    assert str(e.value).endswith(f"restore a good copy of {out / 'checkpoint.pt'}")
    assert "--resume" not in str(e.value)


def test_load_teacher_uses_the_previous_copy(trained, tmp_path):
    out = _copy_run(trained, tmp_path / "run")
    truncate(out / "checkpoint.pt")
    with pytest.warns(CheckpointFallbackWarning):
        model, path, cfg = load_teacher(out / "checkpoint.pt", device="cpu")
    assert cfg.total_steps == 4 and not model.training


def _distiller(out, x, y):
    torch.manual_seed(0)
    teacher = MLP(dim=2, hidden=16, depth=2, num_classes=3)
    cfg = DistillConfig(stages=(4, 2, 1), steps_per_stage=3, batch_size=16, lr=1e-3, ema_decay=0.5,
                        checkpoint_every=2, seed=1)
    return Distiller(teacher, KacPath(9.0, 3.0), x, y, cfg, out_dir=out)


@pytest.mark.parametrize("damage", sorted(DAMAGE))
def test_distiller_checkpoint_damage(tmp_path, damage):
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(128, 2, generator=g), torch.randint(0, 3, (128,), generator=g)
    out = tmp_path / "distill"
    ref = _distiller(out, x, y)
    ref.run(progress=False)
    ck, prev = out / "distill.ckpt", out / "distill.prev.ckpt"
    assert load_checkpoint(ck)["stage"] == 3 and prev.is_file()
    DAMAGE[damage](ck)
    again = _distiller(out, x, y)
    with pytest.warns(CheckpointFallbackWarning, match="distill.prev.ckpt"):
        again.run(resume=True, progress=False)
    assert len(again.students) == 2 and verify_checkpoint(ck) is None
    for a, b in zip(ref.student(2).state_dict().values(), again.student(2).state_dict().values()):
        assert torch.equal(a, b)  # resuming from the previous copy redoes the lost steps exactly
    # no good copy: a clear stop
    DAMAGE[damage](ck)
    prev.unlink()
    with pytest.raises(CheckpointError, match=str(ck)):
        _distiller(out, x, y).run(resume=True, progress=False)


@pytest.mark.parametrize("damage", sorted(DAMAGE))
def test_progressive_checkpoint_damage(tmp_path, damage):
    g = torch.Generator().manual_seed(0)
    data, labels = torch.randn(64, 2, generator=g, dtype=torch.float64), torch.randint(0, 3, (64,), generator=g)
    cfg = ProgressiveConfig(schedule=(4, 2, 1), steps_per_round=4, batch_size=16, lr=1e-3, guidance_scale=1.5,
                            checkpoint_every=2, ema_decay=0.5, seed=3)

    def make():
        torch.manual_seed(5)
        return ProgressiveDistiller(MLP(dim=2, hidden=16, depth=2, num_classes=3).double(), VPPath(), data, labels,
                                    cfg, out_dir=tmp_path / "pd")

    ref = make()
    ref.run(progress=False)
    ck, prev = tmp_path / "pd" / "progressive.ckpt", tmp_path / "pd" / "progressive.prev.ckpt"
    assert prev.is_file()
    DAMAGE[damage](ck)
    again = make()
    with pytest.warns(CheckpointFallbackWarning, match="progressive.prev.ckpt"):
        again.run(resume=True, progress=False)
    assert len(again.students) == 2
    DAMAGE[damage](ck)
    os.remove(prev)
    with pytest.raises(CheckpointError, match=str(ck)):
        make().run(resume=True, progress=False)


def test_intact_checkpoints_load_without_warnings(trained):
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert load_checkpoint(trained / "checkpoint.pt")["step"] == 4
