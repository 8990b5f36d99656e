"""experiments/theorem8.py end to end on a budget smaller than --quick, and its measurement helpers.

The script measures Theorem 8's O(1/M) rate where its hypothesis (a Lipschitz teacher field) holds,
Gaussian-mixture data, and where it fails, Dirac data (docs/mathematics.md §13). The end-to-end test checks the
outputs and the rate of the smooth regime; the helpers are checked on fields with known answers.
"""
import importlib.util
import json
import math
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from kacnum.theory.stability import gronwall_constant, lipschitz_profile, local_slopes

ROOT = Path(__file__).resolve().parents[1]


def _load_script():
    spec = importlib.util.spec_from_file_location("theorem8_script", ROOT / "experiments" / "theorem8.py")
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod  # dataclasses look their module up there
    spec.loader.exec_module(mod)
    return mod


TINY = ["--quick", "--threads", "1", "--data-seeds", "0,1", "--samples", "96", "--spread-samples", "48",
        "--teacher-steps", "64", "--conv-samples", "24", "--ms", "4,8,16,32,64", "--fit-min-m", "8", "--n-tau", "33",
        "--w2-samples", "64", "--w2-stride", "8", "--n-boot", "60", "--lip-times", "5", "--lip-samples", "16",
        "--finite-samples", "96", "--finite-teacher-steps", "128", "--transition-samples", "32",
        "--sigmas", "0.25,0.1,0", "--distill-teacher-steps", "8", "--distill-ms", "2,1", "--distill-steps", "15",
        "--distill-pool", "64", "--distill-batch", "32", "--fit-points", "256", "--fit-steps", "15",
        "--bound-sub-points", "4"]


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    out = tmp_path_factory.mktemp("theorem8")
    threads = torch.get_num_threads()
    try:
        res = _load_script().main(TINY + ["--out", str(out)])
    finally:
        torch.set_num_threads(threads)  # main sets it: leave the session as it was
    return out, res


def test_outputs_and_fields(run):
    out, res = run
    figs = ("theorem8_rate.png", "theorem8_local_slopes.png", "theorem8_profiles.png", "theorem8_sigma.png",
            "theorem8_correlation.png", "theorem8_trajectories.png")
    for name in ("config.json", "theorem8.json", "results.json", "theorem8_results.md") + figs:
        assert (out / name).is_file(), name
    for name in figs:
        assert 5_000 < (out / name).stat().st_size < 300_000, name
    data = json.loads((out / "theorem8.json").read_text())
    for key in ("slope", "slope_ci", "slope_fit_ms", "slope_local", "slope_spread", "finite", "transition",
                "profiles", "bound_vs_measured", "correlation", "correlation_detail", "constants", "equal_m", "rows",
                "cases", "verdict", "wall_time_s", "config", "machine"):
        assert key in data, key
    assert data["slope"] == data["cases"]["smooth/kac"]["slope"]["slope"]
    assert data["slope_fit_ms"] == [8, 16, 32, 64]
    assert [r["sigma"] for r in data["transition"]] == [0.25, 0.1, 0.0]
    assert set(data["finite"]["fixed_tau"]) and len(data["finite"]["fixed_tau"]) == 5
    cases = set(data["cases"])
    assert {"smooth/kac", "smooth/gaussian", "smooth/vp", "smooth/kac_seed1", "finite/kac", "finite/gaussian",
            "finite/kac_single_point", "transition/kac_sigma0.25"} <= cases
    kinds = {(r["case"], r["M"]) for r in data["rows"]}
    assert ("smooth/kac_distilled", 1) in kinds and ("smooth/kac_distilled", 2) in kinds
    assert data["slope_spread"]["seeds"] == [0, 1] and len(data["slope_spread"]["slopes"]) == 2


def test_rate_is_one_where_the_field_is_lipschitz(run):
    _, res = run
    s = res["cases"]["smooth/kac"]["slope"]
    assert -1.2 <= s["slope"] <= -0.85, s
    assert s["ci"][0] <= s["slope"] <= s["ci"][1]
    # the local slopes are consecutive ratios of the very errors in the rows
    rows = [r for r in res["rows"] if r["case"] == "smooth/kac"]
    e = [r["coupled_sup"] for r in rows]
    assert s["local"][0]["slope"] == pytest.approx(math.log(e[1] / e[0]) / math.log(2.0))
    assert s["C_measured"] == pytest.approx(max(r["M"] * r["coupled_sup"] for r in rows))
    # a single Dirac point: only the cone-face jumps, the rate stays close to 1
    assert res["cases"]["finite/kac_single_point"]["slope"]["slope"] < -0.8


def test_measures_are_consistent(run):
    _, res = run
    for r in res["rows"]:
        if "endpoint_w2" in r:
            assert r["path_w2_sup"] >= r["endpoint_w2"] - 1e-12
        assert r["coupled_sup"] >= r["coupled_endpoint_rms"] - 1e-12
        assert 0.0 <= r["mode_mismatch"] <= 1.0
    assert -1.0 <= res["correlation"] <= 1.0
    assert res["bound_worst_ratio_chord"]["kac_distilled"] <= 1.0 + 1e-9
    assert 0.0 < res["bound_worst_ratio"]["kac_distilled"] <= 1.0 + 1e-9
    pr = res["profiles"]["smooth/kac"]
    assert pr["bound_constant"]["max"] >= pr["bound_constant"]["median"] > 0
    assert pr["integral_L"]["max"] >= pr["integral_L"]["median"] > 0
    for name, c in res["cases"].items():
        sc = c["teacher"]["self_convergence"]
        assert sc["richardson_error"] <= sc["sup_rms"] + 1e-15, name


def test_bad_arguments_raise():
    mod = _load_script()
    for argv, flag in ((["--t-min", "0"], "--t-min"), (["--kac-a", "-1"], "--kac-a"), (["--ms", "0,4"], "--ms"),
                       (["--samples", "0"], "--samples"), (["--teacher-steps", "90"], "--teacher-steps"),
                       (["--sigma", "0"], "--sigma"), (["--vp-solver", "foo"], "--vp-solver"),
                       (["--distill-ms", "3", "--distill-teacher-steps", "8"], "--distill-ms"),
                       (["--t-min", "nan"], "--t-min"), (["--threads", "0"], "--threads")):
        with pytest.raises(ValueError, match=flag):
            mod.parse_args(argv)


def test_gronwall_constant_matches_the_closed_form():
    t = np.linspace(0.0, 1.0, 2001)
    for L, A in ((0.0, 2.0), (2.0, 3.0), (5.0, 0.5)):
        c = gronwall_constant(t, np.full_like(t, L), np.full_like(t, A), 1.0)
        closed = A / 2.0 if L == 0 else (A / 2.0) * math.expm1(L) / L
        assert c == pytest.approx(closed, rel=1e-5)
    # a time-varying L: exp of its integral up to s
    L = 4.0 * t
    c = gronwall_constant(t, L, np.ones_like(t), 1.0)
    ref = 0.5 * np.trapezoid(np.exp(2.0 * t ** 2), t) if hasattr(np, "trapezoid") else 0.5 * np.trapz(np.exp(2.0 * t ** 2), t)
    assert c == pytest.approx(ref, rel=1e-4)
    with pytest.raises(ValueError):
        gronwall_constant([0, 1], [-1, 1], [1, 1], 1.0)


def test_local_slopes():
    out = local_slopes([4, 8, 16], [1.0, 0.5, 0.125])
    assert [round(v["slope"], 12) for v in out] == [-1.0, -2.0]
    assert math.isnan(local_slopes([1, 2], [1.0, 0.0])[0]["slope"])


def test_lipschitz_profile_finds_the_constant_and_marks_jumps():
    A = torch.tensor([[2.0, 1.0], [0.0, -3.0]], dtype=torch.float64)
    lin = lambda x, t: x @ A.T  # noqa: E731
    jump = lambda x, t: torch.sign(x)  # noqa: E731
    g = torch.Generator().manual_seed(0)
    states = torch.randn(3, 50, 2, generator=g, dtype=torch.float64)
    times = torch.tensor([1.0, 0.5, 0.1], dtype=torch.float64)
    pr = lipschitz_profile(lin, states, times, eps=(1e-3, 1e-5), n_samples=50)
    op = float(torch.linalg.matrix_norm(A, ord=2))
    for rec in pr["eps"].values():
        assert rec["max"] == pytest.approx([op] * 3, rel=1e-8)
    near = torch.full((1, 4, 2), 5e-4, dtype=torch.float64)  # within the coarse step of the jump at 0
    pj = lipschitz_profile(jump, near, times[:1], eps=(1e-3, 1e-5), n_samples=4)
    assert pj["eps"]["0.001"]["max"][0] == pytest.approx(1.0 / 1e-3, rel=1e-9)
    assert pj["eps"]["1e-05"]["max"][0] == 0.0  # the fine step does not straddle the jump here


def test_command_line_errors_are_one_line(tmp_path):
    import subprocess

    f = tmp_path / "file"
    f.write_text("x")
    for argv, flag in ((["--kac-a", "-1"], "--kac-a"), (["--ms", "0"], "--ms"), (["--out", str(f)], "--out"),
                       (["--vp-solver", "foo"], "--vp-solver")):
        p = subprocess.run([sys.executable, str(ROOT / "experiments" / "theorem8.py"), "--quick", *argv],
                           capture_output=True, text=True, timeout=120)
        assert p.returncode == 2, (argv, p.stderr)
        lines = [ln for ln in p.stderr.splitlines() if ln.strip()]
        assert len(lines) == 1 and flag in lines[0] and "Traceback" not in p.stderr, (argv, p.stderr)
        assert not (tmp_path / "runs").exists()
