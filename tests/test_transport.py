"""Tests of kacnum.theory.transport: exact/sliced Wasserstein distances and the Lipschitz bound of docs/mathematics.md §8."""
import importlib.util
import math

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from scipy import stats

from kacnum.processes.kac import KacProcess
from kacnum.theory.transport import (
    lipschitz_ratio,
    w_bound_ratio,
    wasserstein_1d,
    wasserstein_1d_cdf,
    wasserstein_1d_quantile,
    wasserstein_empirical,
    wasserstein_empirical_info,
)

finite = st.floats(-1e3, 1e3, allow_nan=False)

# POT is absent on the GPU machines: the d-dimensional (network simplex, sliced) tests need it.
needs_pot = pytest.mark.skipif(importlib.util.find_spec("ot") is None, reason="POT (ot) not installed")


# ------------------------------------------------------------------------------ simple facts
@needs_pot
@pytest.mark.parametrize("d", [1, 2, 3])
@pytest.mark.parametrize("p", [1, 2, 3])
def test_point_masses(d, p):
    rng = np.random.default_rng(d * 10 + p)
    x, y = rng.normal(size=(1, d)), rng.normal(size=(1, d))
    dist = float(np.linalg.norm(x - y))
    assert wasserstein_empirical(x, y, p=p) == pytest.approx(dist, rel=1e-12)
    if d == 1:
        assert wasserstein_1d(x[:, 0], y[:, 0], p) == pytest.approx(dist, rel=1e-12)


@needs_pot
@given(
    n=st.integers(1, 40),
    d=st.integers(1, 3),
    v=st.lists(st.floats(-10, 10), min_size=3, max_size=3),
    p=st.sampled_from([1, 2]),
    seed=st.integers(0, 2**31 - 1),
)
def test_translation(n, d, v, p, seed):
    """W_p(μ, μ + v) = |v| for p = 1, 2 (≤ by the shift coupling, ≥ by the mean / Jensen)."""
    x = np.random.default_rng(seed).normal(size=(n, d)) * 3
    vv = np.asarray(v[:d])
    w = wasserstein_empirical(x, x + vv, p=p)
    assert w == pytest.approx(float(np.linalg.norm(vv)), rel=1e-7, abs=1e-7)


@needs_pot
@given(
    x=st.lists(finite, min_size=1, max_size=30),
    y=st.lists(finite, min_size=1, max_size=30),
    p=st.sampled_from([1, 1.5, 2, 3]),
    weighted=st.booleans(),
    seed=st.integers(0, 2**31 - 1),
)
def test_1d_exact_against_emd_and_pot(x, y, p, weighted, seed):
    """Quantile formula (unequal sizes, weights) equals the network-simplex optimum and POT's 1D routine."""
    x, y = np.asarray(x), np.asarray(y)
    rng = np.random.default_rng(seed)
    wx = rng.random(x.size) + 0.05 if weighted else np.full(x.size, 1.0 / x.size)
    wy = rng.random(y.size) + 0.05 if weighted else np.full(y.size, 1.0 / y.size)
    wx, wy = wx / wx.sum(), wy / wy.sum()
    ours = wasserstein_1d(x, y, p, wx, wy)
    import ot

    cost = np.abs(x[:, None] - y[None, :]) ** p
    emd = float(ot.emd2(wx, wy, cost)) ** (1 / p)
    pot = float(ot.wasserstein_1d(x, y, wx, wy, p=p)) ** (1 / p)
    scale = 1.0 + np.abs(x).max() + np.abs(y).max()
    assert ours == pytest.approx(emd, abs=1e-8 * scale)
    assert ours == pytest.approx(pot, abs=1e-8 * scale)


def test_1d_equal_sizes_is_sorted_matching():
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=500), rng.exponential(size=500)
    for p in (1, 2, 4):
        ref = np.mean(np.abs(np.sort(x) - np.sort(y)) ** p) ** (1 / p)
        assert wasserstein_1d(torch.as_tensor(x), y, p) == pytest.approx(ref, rel=1e-12)


def test_quantile_formula_gaussians():
    """W2(N(0,1), N(m, s²))² = m² + (s - 1)²; W1 of a pure shift is |m|."""
    m, s = 0.7, 1.8
    qa = lambda u: torch.as_tensor(stats.norm.ppf(u.numpy()))  # noqa: E731
    qb = lambda u: torch.as_tensor(m + s * stats.norm.ppf(u.numpy()))  # noqa: E731
    w2 = wasserstein_1d_quantile(qa, qb, p=2, n=2**16)
    assert w2 == pytest.approx(math.sqrt(m * m + (s - 1) ** 2), rel=1e-4)
    qc = lambda u: torch.as_tensor(m + stats.norm.ppf(u.numpy()))  # noqa: E731
    assert wasserstein_1d_quantile(qa, qc, p=1, n=64) == pytest.approx(m, rel=1e-12)


def test_cdf_inversion_with_atoms():
    """Mixture ½δ_0 + ½U(0, 1) against U(0, 1): quantiles 0 on (0, ½), 2u - 1 on (½, 1).

    W_p^p = ∫_0^½ u^p du + ∫_½^1 (1 - u)^p du = 2 (½)^{p+1}/(p+1).
    """
    cdf_a = lambda x: torch.where(x < 0, 0.0, 0.5 + 0.5 * x.clamp(0, 1))  # noqa: E731
    cdf_b = lambda x: x.clamp(0, 1)  # noqa: E731
    for p in (1, 2, 3):
        exact = (2 * 0.5 ** (p + 1) / (p + 1)) ** (1 / p)
        assert wasserstein_1d_cdf(cdf_a, cdf_b, -1.0, 2.0, p=p, n=4096) == pytest.approx(exact, rel=1e-5)


@needs_pot
@given(
    n=st.integers(2, 40),
    m=st.integers(2, 40),
    d=st.integers(1, 3),
    seed=st.integers(0, 2**31 - 1),
)
def test_order_in_p(n, m, d, seed):
    """W_1 ≤ W_2 ≤ W_3 (Jensen on the W_q-optimal plan)."""
    rng = np.random.default_rng(seed)
    x, y = rng.normal(size=(n, d)), rng.normal(size=(m, d)) * 2 + 0.3
    w1, w2, w3 = (wasserstein_empirical(x, y, p=p) for p in (1, 2, 3))
    assert w1 <= w2 * (1 + 1e-9) and w2 <= w3 * (1 + 1e-9)


# ------------------------------------------------------------------------------ exact vs sliced
@needs_pot
@pytest.mark.parametrize("d", [2, 3, 5])
def test_sliced_vs_exact_on_a_dilation(d):
    """y = 2x: the map x → 2x is optimal, so W2 = sqrt(mean|x|²) exactly, and every projection is
    also a dilation, so SW2² = E_θ mean (θ·x)² = mean|x|²/d for isotropic x: SW2 = W2/√d ≤ W2."""
    x = np.random.default_rng(d).normal(size=(400, d))
    w_exact, how = wasserstein_empirical_info(x, 2 * x, p=2)
    assert how == "emd"
    assert w_exact == pytest.approx(float(np.sqrt((x**2).sum(1).mean())), rel=1e-9)
    w_sliced, how = wasserstein_empirical_info(x, 2 * x, p=2, exact_max=100, n_projections=2000)
    assert how == "sliced"
    assert w_sliced <= w_exact
    assert w_sliced == pytest.approx(w_exact / math.sqrt(d), rel=0.08)


@needs_pot
def test_sliced_lower_bound_random_clouds():
    rng = np.random.default_rng(5)
    x, y = rng.normal(size=(300, 2)), rng.normal(size=(300, 2)) * 0.5 + 1.0
    exact = wasserstein_empirical(x, y)
    sliced, how = wasserstein_empirical_info(x, y, exact_max=10)
    assert how == "sliced" and sliced <= exact
    sub, how = wasserstein_empirical_info(x, y, exact_max=299, large="subsample")
    assert how == "subsample" and sub == pytest.approx(exact, rel=0.1)


def test_one_dimensional_route_any_size():
    rng = np.random.default_rng(2)
    x, y = rng.normal(size=(20000, 1)), rng.normal(size=(15000, 1)) + 1
    w, how = wasserstein_empirical_info(x, y, exact_max=10)
    assert how == "exact-1d"
    assert w == pytest.approx(wasserstein_1d(x[:, 0], y[:, 0]), rel=1e-14)


def test_wasserstein_1d_torch_devices(device, dtype):
    g = torch.Generator(device=device).manual_seed(0)
    x = torch.randn(300, generator=g, device=device, dtype=dtype)
    w = wasserstein_1d(x, x + 0.25, p=2)
    assert w == pytest.approx(0.25, rel=1e-5 if dtype == torch.float32 else 1e-12)


# ------------------------------------------------------------------------------ Lipschitz bound
def _coupled_kac(a, c, s, t, n, seed):
    paths = KacProcess(a, c).simulate_paths([s, t], n, generator=torch.Generator().manual_seed(seed))
    return paths.positions[:, 0], paths.positions[:, 1]


@pytest.mark.parametrize("a,c,s,t", [(2.0, 1.5, 0.5, 0.55), (9.0, 3.0, 0.0, 0.2), (0.5, 1.0, 1.0, 3.0)])
def test_lipschitz_ratio_coupled_kac(a, c, s, t):
    """Same paths at s and t: |K_t - K_s| ≤ c|t - s| pathwise, so W_p/(c|t - s|) ≤ 1 for every p."""
    ks, kt = _coupled_kac(a, c, s, t, 20000, seed=1)
    assert float((kt - ks).abs().max()) <= c * abs(t - s) * (1 + 1e-12)
    ratios = [lipschitz_ratio(ks, kt, s, t, c, p=p) for p in (1, 2, 4, 8)]
    assert all(r <= 1.0 + 1e-12 for r in ratios)
    assert all(r0 <= r1 + 1e-12 for r0, r1 in zip(ratios, ratios[1:]))  # W_p grows with p
    assert ratios[0] > 0.2  # the bound is not vacuous


def test_lipschitz_ratio_fails_for_brownian_motion():
    """Brownian motion with the Kac diffusion constant σ² = c²/a breaks the bound near the start:
    W_2(μ_s, μ_t) = σ|√t - √s|, so at s = 0 the ratio is σ/(c√t) = 1/√(a t) > 1 for t < 1/a."""
    g = torch.Generator().manual_seed(3)
    a, c, t = 9.0, 3.0, 0.01
    sigma = c / math.sqrt(a)
    wt = sigma * math.sqrt(t) * torch.randn(20000, generator=g, dtype=torch.float64)
    r = lipschitz_ratio(torch.zeros_like(wt), wt, 0.0, t, c, p=2)
    assert r == pytest.approx(1.0 / math.sqrt(a * t), rel=0.02)
    ks, kt = _coupled_kac(a, c, 0.0, t, 20000, seed=3)  # the Kac path with the same a, c obeys it
    assert lipschitz_ratio(ks, kt, 0.0, t, c, p=2) <= 1.0


@needs_pot
def test_lipschitz_ratio_multidimensional():
    """d independent Kac coordinates: W_2 ≤ c√d |t - s| (ratio computed with speed c√d)."""
    a, c, s, t, d = 4.0, 2.0, 0.3, 0.4, 2
    kp = KacProcess(a, c)
    g = torch.Generator().manual_seed(4)
    pos = [kp.simulate_paths([s, t], 1500, generator=g).positions for _ in range(d)]
    xs = torch.stack([p[:, 0] for p in pos], 1)
    xt = torch.stack([p[:, 1] for p in pos], 1)
    r = lipschitz_ratio(xs, xt, s, t, c * math.sqrt(d), p=2)
    assert 0.2 < r <= 1.0


@pytest.mark.slow
def test_lipschitz_ratio_exact_law_matches_samples():
    """Exact-law W_p between μ_s and μ_t (CDF inversion of kac.py's law) ≤ c|t - s| and close to the sample value."""
    a, c, s, t = 2.0, 1.5, 0.5, 0.55
    kp = KacProcess(a, c)
    f64 = lambda v: torch.tensor(v, dtype=torch.float64)  # noqa: E731
    ks, kt = _coupled_kac(a, c, s, t, 200000, seed=2)
    for p in (1, 2):
        law = wasserstein_1d_cdf(
            lambda x: kp.cdf(f64(s), x), lambda x: kp.cdf(f64(t), x), -c * t - 1e-9, c * t + 1e-9, p=p, n=512, iters=45
        ) / (c * (t - s))
        assert law <= 1.0
        assert lipschitz_ratio(ks, kt, s, t, c, p=p) == pytest.approx(law, abs=0.02)


# ------------------------------------------------------------------------------ bad input
def test_bad_input():
    x = np.zeros(3)
    with pytest.raises(ValueError, match="p"):
        wasserstein_1d(x, x, p=0.5)
    with pytest.raises(ValueError, match="x"):
        wasserstein_1d(np.array([0.0, np.nan]), x)
    with pytest.raises(ValueError, match="weights_x"):
        wasserstein_1d(x, x, 2, weights_x=np.array([1.0, -1.0, 1.0]))
    with pytest.raises(ValueError, match="weights_y"):
        wasserstein_1d(x, x, 2, weights_y=np.ones(2))
    with pytest.raises(ValueError, match="dimension"):
        wasserstein_empirical(np.zeros((3, 2)), np.zeros((3, 3)))
    with pytest.raises(ValueError, match="1D"):
        wasserstein_1d(np.zeros((3, 2)), np.zeros((3, 2)))
    with pytest.raises(ValueError, match="speed"):
        lipschitz_ratio(x, x, 0.0, 1.0, 0.0)
    with pytest.raises(ValueError, match="distinct"):
        lipschitz_ratio(x, x, 1.0, 1.0, 1.0)
    with pytest.raises(ValueError, match="bound"):
        w_bound_ratio(1.0, 0.0)
    with pytest.raises(ValueError, match="large"):
        wasserstein_empirical_info(np.zeros((3, 2)), np.zeros((3, 2)), large="approx")
    assert w_bound_ratio(0.5, 2.0) == 0.25
