"""kacnum.core.cli and the command-line scripts: every bad input gives one line on stderr naming the flag, exit
status 2 for bad usage and 1 for a failed run, before any work starts; --debug shows the traceback.

Most cases call ``cli.run_main(script.main, argv)`` in this process (what ``python experiments/X.py``
runs after importing the script); a few run the real command in a subprocess to check the process's
own exit status and output.
"""
import importlib.util
import os
import subprocess
import sys
import time
import warnings
from pathlib import Path

import pytest
import torch

from kacnum.core import cli
from kacnum.core.checkpoint import CheckpointError, previous_path

ROOT = Path(__file__).resolve().parents[1]
EXP = ROOT / "experiments"
CLAIMS = ("finite_speed", "kinetic_energy", "wasserstein_lipschitz", "diffusion_limit", "guidance_integrability")


def _script(name):
    mod_name = f"_cli_{name}"
    if mod_name in sys.modules:
        return sys.modules[mod_name]
    spec = importlib.util.spec_from_file_location(mod_name, EXP / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    sys.modules[mod_name] = mod  # dataclasses look the module up
    spec.loader.exec_module(mod)
    return mod


def run(name, argv, capsys):
    """``(exit status, stderr lines, stdout)`` of the script's command line, in this process."""
    mod = _script(name)  # imported outside the timing
    capsys.readouterr()
    t0 = time.perf_counter()
    code = cli.run_main(mod.main, argv)
    seconds = time.perf_counter() - t0
    cap = capsys.readouterr()
    return code, [ln for ln in cap.err.splitlines() if ln.strip()], cap.out, seconds


@pytest.fixture(scope="module")
def a_file(tmp_path_factory):
    f = tmp_path_factory.mktemp("f") / "a_file.txt"
    f.write_text("not a folder\n")
    return f


# (script, argv, text the one line must hold); all exit with status 2 before any work
BAD = [
    # toy2d
    ("toy2d", ["--quick", "--train-steps", "-5"], "error: --train-steps must be an integer >= 1, got -5"),
    ("toy2d", ["--quick", "--batch-size", "0"], "error: --batch-size must be an integer >= 1, got 0"),
    ("toy2d", ["--quick", "--distill-batch", "0"], "error: --distill-batch must be an integer >= 1"),
    ("toy2d", ["--quick", "--n-eval", "1"], "error: --n-eval must be an integer >= 2, got 1"),
    ("toy2d", ["--quick", "--threads", "0"], "error: --threads must be an integer >= 1, got 0"),
    ("toy2d", ["--quick", "--guidance", "nan"], "error: --guidance must be a finite number"),
    ("toy2d", ["--quick", "--nfes", "100,30"], "error: --nfes: each step count must divide the previous one"),
    ("toy2d", ["--quick", "--nfes", "4,8"], "error: --nfes must be strictly decreasing"),
    ("toy2d", ["--quick", "--datasets", "spirals"], "error: --datasets must be a comma-separated subset of"),
    ("toy2d", ["--quick", "--train-steps", "abc"], "error: --train-steps must be an integer, got 'abc'"),
    # cifar_distill: the documented flags, by their own names
    ("cifar_distill", ["--steps", "0"], "error: --steps must be an integer >= 1, got 0"),
    ("cifar_distill", ["--preset", "smoke", "--path", "vp"], "error: train.path must be a flow path"),
    ("cifar_distill", ["--guidance", "-5"], "error: --guidance must be a number in [0, 50], got '-5'"),
    ("cifar_distill", ["--guidance", "nan"], "error: --guidance must be a number in [0, 50], got 'nan'"),
    ("cifar_distill", ["--guidance-sweep", "1.0,nan"], "error: --guidance-sweep must hold numbers in [0, 50], got 'nan'"),
    ("cifar_distill", ["--distill-steps", "0"], "error: --distill-steps must hold integers >= 1"),
    ("cifar_distill", ["--distill-steps", "5,5"], "error: --distill-steps must be an int or hold one count per stage (4)"),
    ("cifar_distill", ["--nfe-list", "0,4"], "error: --nfe-list must hold integers >= 1"),
    ("cifar_distill", ["--nfe-list", "4,4"], "error: --nfe-list must not repeat a number"),
    ("cifar_distill", ["--distill-batch", "0"], "error: --distill-batch must be an integer >= 1, got 0"),
    ("cifar_distill", ["--batch-size", "0"], "error: --batch-size must be an integer >= 1, got 0"),
    ("cifar_distill", ["--sample-batch", "0"], "error: --sample-batch must be an integer >= 1, got 0"),
    ("cifar_distill", ["--num-samples", "0"], "error: --num-samples must be an integer >= 1, got 0"),
    ("cifar_distill", ["--schedule", "100,20,40"], "error: --schedule must be strictly decreasing, got 20 -> 40"),
    ("cifar_distill", ["--schedule", "100,30"], "error: --schedule: each step count must divide the previous one"),
    ("cifar_distill", ["--pd-schedule", "16,4"], "error: --pd-schedule must halve the step count every round"),
    ("cifar_distill", ["--lr", "-1"], "error: --lr must be a finite number > 0, got -1.0"),
    ("cifar_distill", ["--threads", "0"], "error: --threads must be an integer >= 1, got 0"),
    ("cifar_distill", ["--stage", "sample", "--data-dir", "/tmp"],
     "error: --data-dir is not used by --dataset digits"),
    ("cifar_distill", ["--dataset", "celeba64"], "error: --dataset: invalid choice: 'celeba64'"),
    ("cifar_distill", ["--device", "tpu:0"], "error: --device"),
    # distill_sweep
    ("distill_sweep", ["--run", "nowhere", "--out", "x", "--settings", "foo"],
     "error: --settings must be a comma-separated subset of"),
    ("distill_sweep", ["--run", "nowhere", "--out", "x", "--num-samples", "0"],
     "error: --num-samples must be an integer >= 1, got 0"),
    ("distill_sweep", ["--run", "nowhere", "--out", "x"], "error: --run nowhere lacks"),
    ("distill_sweep", ["--out", "x"], "error: --run is required (or --merge DIR1,DIR2,...)"),
    # claim scripts
    ("guidance_integrability", ["--quick", "--scales", "1,nan"], "error: --scales must hold finite numbers, got 'nan'"),
    ("kinetic_energy", ["--quick", "--seed", "-1"], "error: --seed must be an integer >= 0, got -1"),
] + [(name, ["--quick", "--threads", "0"], "error: --threads must be an integer >= 1, got 0") for name in CLAIMS]


@pytest.mark.parametrize("name,argv,line", BAD, ids=[f"{b[0]}:{' '.join(b[1])}" for b in BAD])
def test_bad_input_is_one_line_with_status_2(name, argv, line, capsys, tmp_path):
    out = ["--out", str(tmp_path / "o")] if name != "distill_sweep" else []
    code, err, stdout, seconds = run(name, argv + out, capsys)
    assert code == 2
    assert len(err) == 1, err
    assert err[0].startswith(line), err[0]
    assert "Traceback" not in err[0] and stdout == ""  # no table, no header
    assert seconds < 5  # refused before any work
    assert not (tmp_path / "o").exists()  # nothing written


OUT_SCRIPTS = ["toy2d", "cifar_distill"] + list(CLAIMS)


@pytest.mark.parametrize("name", OUT_SCRIPTS)
def test_out_naming_a_file(name, a_file, capsys):
    extra = ["--quick"] if name != "cifar_distill" else []
    code, err, _, _ = run(name, extra + ["--out", str(a_file), "--threads", "1"], capsys)
    assert code == 2 and len(err) == 1
    assert err[0] == f"error: --out {a_file} is a file, not a folder; name a folder (it is created if missing)"
    code, err, _, _ = run(name, extra + ["--out", str(a_file / "sub"), "--threads", "1"], capsys)
    assert code == 2 and err == [f"error: --out {a_file / 'sub'}: {a_file} is a file, not a folder"]


@pytest.mark.parametrize("name", ["toy2d", "cifar_distill", "finite_speed"])
def test_out_that_cannot_be_written(name, capsys):
    extra = ["--quick"] if name != "cifar_distill" else []
    target = "/sys/kacnum_cannot_write_here"  # sysfs refuses new entries even to root
    code, err, _, _ = run(name, extra + ["--out", target, "--threads", "1"], capsys)
    assert code == 2 and len(err) == 1
    assert err[0].startswith(f"error: --out {target} cannot be written (")


@pytest.mark.skipif(os.geteuid() == 0 if hasattr(os, "geteuid") else True, reason="root writes read-only folders")
def test_out_in_a_read_only_folder(tmp_path, capsys):
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o555)
    try:
        code, err, _, _ = run("finite_speed", ["--quick", "--out", str(ro / "x"), "--threads", "1"], capsys)
    finally:
        ro.chmod(0o755)
    assert code == 2 and err[0].startswith(f"error: --out {ro / 'x'} cannot be written (Permission denied)")


@pytest.mark.skipif(torch.cuda.is_available(), reason="CUDA is present")
@pytest.mark.parametrize("name,argv", [("cifar_distill", []), ("distill_sweep", ["--run", "r", "--out", "o"])])
def test_device_cuda_without_cuda(name, argv, capsys, tmp_path):
    code, err, _, _ = run(name, argv + ["--device", "cuda"] + (["--out", str(tmp_path)] if not argv else []), capsys)
    assert code == 2 and len(err) == 1
    assert err[0].startswith("error: --device cuda: CUDA is not available (") and "use --device cpu" in err[0]


# ---------------------------------------------------------------------------------------------
# the real commands


def _cmd(args, env_extra=None, timeout=120):
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONWARNINGS="ignore")
    env.update(env_extra or {})
    return subprocess.run([sys.executable] + args, cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=timeout)


def test_subprocess_exit_status_and_debug(tmp_path):
    p = _cmd(["experiments/toy2d.py", "--quick", "--train-steps", "-5", "--out", str(tmp_path / "t")])
    assert p.returncode == 2 and p.stdout == ""
    assert p.stderr.strip().splitlines() == [
        "error: --train-steps must be an integer >= 1, got -5 (see experiments/toy2d.py --help)"]
    p = _cmd(["experiments/cifar_distill.py", "--schedule", "100,20,40", "--out", str(tmp_path / "c")])
    assert p.returncode == 2 and p.stdout == ""
    assert p.stderr.strip().splitlines() == ["error: --schedule must be strictly decreasing, got 20 -> 40 in (100, 20, 40)"]
    # --debug: the traceback, ending with the same message
    p = _cmd(["experiments/cifar_distill.py", "--schedule", "100,20,40", "--debug", "--out", str(tmp_path / "c")])
    assert p.returncode == 1 and "Traceback (most recent call last)" in p.stderr
    assert p.stderr.strip().splitlines()[-1].endswith("UsageError: --schedule must be strictly decreasing, got 20 -> "
                                                      "40 in (100, 20, 40)")
    assert not (tmp_path / "c").exists() and not (tmp_path / "t").exists()


def test_python_m_kacnum_lists_and_runs(tmp_path):
    p = _cmd(["-m", "kacnum"])
    assert p.returncode == 0
    for name in ("theorem8", "toy2d", "cifar_distill", "finite_speed", "distill_sweep"):
        assert f"\n  {name} " in p.stdout, name
    p = _cmd(["-m", "kacnum", "toy2d", "--train-steps", "0", "--out", str(tmp_path / "x")])
    assert p.returncode == 2 and p.stderr.strip().splitlines() == [
        "error: --train-steps must be an integer >= 1, got 0 (see experiments/toy2d.py --help)"]
    p = _cmd(["-m", "kacnum", "no_such_experiment"])
    assert p.returncode == 2 and p.stderr.strip().splitlines()[0].startswith(
        "error: no experiment 'no_such_experiment'; choose from")


# ---------------------------------------------------------------------------------------------
# failed runs: status 1


def test_run_main_maps_exceptions_to_one_line(capsys):
    def boom(argv):
        raise RuntimeError("the model diverged\nat step 7")

    assert cli.run_main(boom, []) == 1
    assert capsys.readouterr().err.splitlines() == [
        "error: RuntimeError: the model diverged at step 7 (rerun with --debug for the traceback)"]
    with pytest.raises(RuntimeError, match="diverged"):
        cli.run_main(boom, ["--debug"])

    def full_disk(argv):
        raise OSError(28, "No space left on device", "/runs/x/checkpoint.pt")

    assert cli.run_main(full_disk, []) == 1
    assert capsys.readouterr().err.splitlines() == [
        "error: No space left on device: /runs/x/checkpoint.pt (OSError)"]

    def damaged(argv):
        raise CheckpointError("damaged checkpoint /r/c.pt: empty (0 bytes); no previous copy")

    assert cli.run_main(damaged, []) == 1
    assert capsys.readouterr().err.splitlines() == ["error: damaged checkpoint /r/c.pt: empty (0 bytes); no previous copy"]

    def warns_then_returns(argv):
        warnings.warn("first line\nsecond line")
        return {"a": 1}

    assert cli.run_main(warns_then_returns, []) == 0
    assert capsys.readouterr().err.splitlines() == ["warning: first line second line"]
    assert cli.run_main(lambda argv: 3, []) == 3

    def interrupted(argv):
        raise KeyboardInterrupt

    assert cli.run_main(interrupted, []) == 130


def test_library_value_error_gets_the_flag_name():
    assert str(cli.flag_error("--schedule", ValueError("stages must be strictly decreasing"))) == \
        "--schedule must be strictly decreasing"
    assert cli.renamed("total_steps must be an integer >= 1; batch_size too", {"total_steps": "--steps",
                                                                              "batch_size": "--batch-size"}) == \
        "--steps must be an integer >= 1; --batch-size too"
    assert cli.renamed("--batch-size and sample_batch", {"batch_size": "--b"}) == "--batch-size and sample_batch"


@pytest.fixture(scope="module")
def teacher_run(tmp_path_factory):
    """The smoke preset's teacher at 10 steps with a checkpoint every 5: checkpoint.pt and checkpoint.prev.pt."""
    out = tmp_path_factory.mktemp("cd") / "run"
    cd = _script("cifar_distill")
    assert cd.main(["--preset", "smoke", "--device", "cpu", "--quiet", "--threads", "1", "--stage", "teacher",
                    "--steps", "10", "--checkpoint-every", "5", "--out", str(out)]) == 0
    return out


def _copy_tree(src, dst):
    import shutil

    shutil.copytree(src, dst)
    return dst


def test_damaged_teacher_checkpoint_through_the_command(teacher_run, tmp_path, capsys):
    out = _copy_tree(teacher_run, tmp_path / "run")
    ck = out / "teacher" / "checkpoint.pt"
    assert previous_path(ck).is_file()
    ck.write_bytes(ck.read_bytes()[:1000])  # truncated
    base = ["--preset", "smoke", "--device", "cpu", "--quiet", "--threads", "1", "--out", str(out)]
    # resume: the previous checkpoint (step 5) is used, with one warning line, and the run finishes
    code, err, _, _ = run("cifar_distill", base + ["--stage", "teacher", "--steps", "10", "--resume",
                                                   "--checkpoint-every", "5"], capsys)
    assert code == 0 and len(err) == 1
    assert err[0].startswith(f"warning: checkpoint {ck}: truncated") and str(previous_path(ck)) in err[0]
    # no good copy: the sample stage stops with one line naming the file, status 1, no table
    ck.write_bytes(b"")
    previous_path(ck).unlink()
    code, err, stdout, _ = run("cifar_distill", base + ["--stage", "sample", "--num-samples", "4",
                                                        "--sample-steps", "2", "--resume"], capsys)
    assert code == 1 and stdout == ""
    assert err == [f"error: damaged checkpoint {ck}: empty (0 bytes); no previous copy (checkpoint.prev.pt) to fall "
                   f"back to: restore a good copy of {ck}"]  # a teacher is read, not resumed: no --resume advice


# ---------------------------------------------------------------------------------------------
# threads


def test_thread_default_and_busy_warning(monkeypatch, capsys):
    n = cli.physical_cores()
    assert 1 <= n <= (os.cpu_count() or 1)
    monkeypatch.setattr(os, "getloadavg", lambda: (0.0, 0.0, 0.0))
    assert cli.resolve_threads(None) == n and capsys.readouterr().err == ""
    cpus = len(os.sched_getaffinity(0))
    assert cli.resolve_threads(cpus) == cpus and capsys.readouterr().err == ""
    assert cli.resolve_threads(cpus + 1) == cpus + 1
    assert capsys.readouterr().err == f"warning: {cpus + 1} threads on {cpus} CPU(s): more threads than CPUs slows " \
                                      f"torch down\n"
    monkeypatch.setattr(os, "getloadavg", lambda: (cpus + 2.0, 0.0, 0.0))
    assert cli.resolve_threads(None) == 1
    err = capsys.readouterr().err.splitlines()
    if n > 1:
        assert len(err) == 1 and err[0].startswith(f"warning: machine busy: load average {cpus + 2.0:.1f} on {cpus} CPU")
        assert "using 1 thread instead of" in err[0]
    assert cli.resolve_threads(2) == 2  # an explicit count is kept, with a warning
    assert capsys.readouterr().err.startswith("warning: machine busy")
    assert cli.resolve_threads(1) == 1 and capsys.readouterr().err == ""
    with pytest.raises(cli.UsageError, match="--threads must be an integer >= 1"):
        cli.resolve_threads(0)


def test_physical_cores_counts_hyperthreads_once(monkeypatch, tmp_path):
    topo = {0: ("0", "0"), 1: ("0", "0"), 2: ("0", "1"), 3: ("0", "1")}  # 2 cores, 2 threads each
    real_path = Path

    def fake_path(p, *a):
        s = str(p)
        if s.startswith("/sys/devices/system/cpu/cpu"):
            cpu = int(s.split("/cpu/cpu")[1].split("/")[0])
            d = tmp_path / f"cpu{cpu}"
            d.mkdir(exist_ok=True)
            (d / "physical_package_id").write_text(topo[cpu][0])
            (d / "core_id").write_text(topo[cpu][1])
            return real_path(d)
        if s.startswith("/sys/fs/cgroup"):
            return real_path(tmp_path / "no_cgroup")
        return real_path(p, *a)

    monkeypatch.setattr(cli, "Path", fake_path)
    monkeypatch.setattr(cli, "_available_cpus", lambda: [0, 1, 2, 3])
    assert cli.physical_cores() == 2
