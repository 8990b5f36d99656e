"""experiments/equal_evals.py refuses bad inputs before it creates anything, and a run that fails on an
unreadable checkpoint leaves no empty output folder behind."""
import importlib.util
import sys
from pathlib import Path

import pytest

from kacnum.core import cli
from kacnum.core.checkpoint import CheckpointError

ROOT = Path(__file__).resolve().parents[1]


def _load():
    spec = importlib.util.spec_from_file_location("equal_evals_script", ROOT / "experiments" / "equal_evals.py")
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod
    spec.loader.exec_module(mod)
    return mod


equal_evals = _load()


def _argv(run: Path, ckpt: Path, out: Path) -> list:
    return ["--run", str(run), "--out", str(out), "--set", f"kac={ckpt}:ab2:4", "--threads", "1", "--quiet"]


def test_empty_checkpoint_is_refused_before_the_output_folder_exists(tmp_path, capsys):
    run = tmp_path / "run"
    run.mkdir()
    ckpt = tmp_path / "empty.pt"
    ckpt.write_bytes(b"")
    out = tmp_path / "out" / "equal_evals"
    with pytest.raises(cli.UsageError, match="--set.*empty"):
        equal_evals.main(_argv(run, ckpt, out))
    assert not (tmp_path / "out").exists()
    # from the command line: one line on stderr, exit status 2, still nothing created
    assert cli.run_main(equal_evals.main, _argv(run, ckpt, out)) == 2
    err = [ln for ln in capsys.readouterr().err.splitlines() if ln.strip()]
    assert len(err) == 1 and "empty (0 bytes)" in err[0], err
    assert not (tmp_path / "out").exists()


def _damaged(tmp_path: Path) -> tuple:
    """A run folder and a checkpoint file that is not a checkpoint."""
    run = tmp_path / "run"
    run.mkdir()
    ckpt = tmp_path / "damaged.pt"
    ckpt.write_bytes(b"not a checkpoint")
    return run, ckpt


def test_unreadable_checkpoint_leaves_no_output_folder(tmp_path):
    run, ckpt = _damaged(tmp_path)
    with pytest.raises(CheckpointError, match="damaged"):
        equal_evals.main(_argv(run, ckpt, tmp_path / "a" / "b"))
    assert not (tmp_path / "a").exists()


def test_an_existing_output_folder_is_kept(tmp_path):
    run, ckpt = _damaged(tmp_path)
    out = tmp_path / "mine"
    out.mkdir()
    with pytest.raises(CheckpointError, match="damaged"):
        equal_evals.main(_argv(run, ckpt, out))
    assert out.is_dir()
