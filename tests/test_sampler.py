"""Tests of KacProcess.sample: the default per-row quantile-table sampler and the Poisson–Beta sampler.

The law is checked two ways:
* without sampling noise: the default sampler is a deterministic map of one uniform ``v`` per coordinate
  (``KacProcess._icdf_rows``); on a fine grid of ``v`` we compare ``F(K(v))`` with ``v`` where ``F`` is
  the exact CDF (``KacProcess._cdf_reference``: ``KacProcess.cdf`` on a grid joined by cubic Hermite
  pieces with the exact density as slope), sup-norm ≤ 1e-6, atoms exactly ``±ct``;
* with draws: KS distances against the exact CDF at the 1% level, for both samplers.
"""
import math

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from kacnum.processes.kac import KacProcess

F64, F32 = torch.float64, torch.float32
KS_SETS = [(9.0, 3.0, 0.3), (9.0, 3.0, 1.0), (25.0, 2.0, 1.0), (900.0, 10.0, 1.0)]
KS_1PCT = 1.628  # sqrt(n) x the 1% critical value of the one-sample KS statistic


def uniform_grid(atom_mass: float, n: int = 20000) -> torch.Tensor:
    """A fine float64 grid in [0, 1) with extra points near 0, 1 and the atom boundaries."""
    v = (torch.arange(n, dtype=F64) + 0.5) / n
    tail = torch.logspace(-12, -0.5, 600, dtype=F64)
    e2 = atom_mass / 2
    extra = torch.cat([tail, 1 - tail, e2 + tail, 1 - e2 - tail, e2 - tail, 1 - e2 + tail])
    v = torch.cat([v, extra[(extra >= 0) & (extra < 1)]])
    return torch.sort(v).values


def quantile_map_error(kp: KacProcess, t: float, dtype, n: int = 20000):
    """(sup over non-atoms |F(K(v)) - v|, worst distance of a misclassified v to an atom boundary)."""
    F = kp._cdf_reference(t, nodes=1001)
    e = math.exp(-kp.a * t)
    v = uniform_grid(e, n).to(dtype)
    v = v[v < 1][None, :]
    k, atoms = kp._icdf_rows(torch.tensor([t], dtype=dtype), v)
    k, atoms, v64 = k[0], atoms[0], v[0].double()
    ct = kp.c * torch.tensor(t, dtype=dtype)
    assert torch.isfinite(k).all()
    assert bool((k[atoms].abs() == ct).all()), "atoms must sit exactly on ±ct (in the sample dtype)"
    assert bool((torch.sign(k[atoms]) == torch.where(v64[atoms] < 0.5, -1.0, 1.0).to(dtype)).all())
    assert bool((k.abs() <= ct).all())
    err = (F(k) - v64).abs()[~atoms]
    sup = float(err.max()) if err.numel() else 0.0
    in_atom_range = (v64 < e / 2) | (v64 >= 1 - e / 2)
    bad = atoms != in_atom_range
    dist = float(torch.minimum((v64[bad] - e / 2).abs(), (v64[bad] - 1 + e / 2).abs()).max()) if bad.any() else 0.0
    return sup, dist


def ks_distance(kp: KacProcess, t: float, x: torch.Tensor, atoms: torch.Tensor) -> float:
    """sup |F_n - F| for a law with atoms (draws flagged as atoms are put at ±ct in float64)."""
    F = kp._cdf_reference(t, nodes=1001)
    ct = kp.c * t
    x = torch.where(atoms.reshape(-1), torch.sign(x.reshape(-1).double()) * ct, x.reshape(-1).double())
    xs = torch.sort(x).values
    n = xs.numel()
    Fx = F(xs)
    jump = torch.where(xs.abs() == ct, torch.full_like(Fx, math.exp(-kp.a * t) / 2), torch.zeros_like(Fx))
    i = torch.arange(1, n + 1, dtype=F64)
    return float(torch.maximum(i / n - Fx, Fx - jump - (i - 1) / n).max())


# ------------------------------------------------------------------------------------------------
# the quantile map, without sampling noise
# ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("dtype", [F32, F64], ids=["f32", "f64"])
@given(log_a=st.floats(-1.0, 3.0), log_t=st.floats(-7.0, 1.0))
def test_quantile_map_cdf_error_below_1e6(dtype, log_a, log_t):
    kp = KacProcess(10.0**log_a, 1.7)
    sup, dist = quantile_map_error(kp, 10.0**log_t, dtype, n=8000)
    assert sup <= 1e-6, sup
    assert dist <= (3e-7 if dtype == F32 else 1e-9), dist


@pytest.mark.parametrize("dtype", [F32, F64], ids=["f32", "f64"])
@pytest.mark.parametrize(
    "a, c, t",
    [(0.1, 1.0, 1e-7), (1000.0, 1.0, 1e-7), (0.1, 3.0, 10.0), (1000.0, 2.0, 10.0), (9.0, 3.0, 1.0), (1.0, 1.0, 3.0)],
)
def test_quantile_map_cdf_error_corners(dtype, a, c, t):
    sup, dist = quantile_map_error(KacProcess(a, c), t, dtype)
    assert sup <= 1e-6 and dist <= (3e-7 if dtype == F32 else 1e-9), (sup, dist)


def test_cdf_error_check_detects_a_coarse_table():
    """The deterministic check can fail: with 8 quantile cells instead of 96 the error is far above 1e-6."""
    kp = KacProcess(9.0, 3.0)
    kp.quantile_cells = 8
    sup, _ = quantile_map_error(kp, 1.0, F64, n=4000)
    assert sup > 1e-5


def test_quantile_map_is_monotone_and_odd():
    kp = KacProcess(9.0, 3.0)
    v = torch.linspace(0, 1, 100001, dtype=F64)[:-1][None, :]
    k, _ = kp._icdf_rows(torch.tensor([0.4], dtype=F64), v)
    assert bool((torch.diff(k[0]) >= 0).all())
    # v and 1 - v map to opposite values (up to the rounding of 1 - v)
    k2, _ = kp._icdf_rows(torch.tensor([0.4], dtype=F64), (1.0 - v[:, 1:]).flip(1))
    assert torch.allclose(k[0, 1:], -k2[0].flip(0), atol=1e-9)


def test_sample_is_the_quantile_map_of_one_uniform_per_coordinate():
    kp = KacProcess(9.0, 3.0)
    t = torch.rand(5, 1, generator=torch.Generator().manual_seed(1))
    k, atoms = kp.sample(t, (5, 300), generator=torch.Generator().manual_seed(7), return_atoms=True)
    v = torch.rand(5, 300, generator=torch.Generator().manual_seed(7))
    k2, atoms2 = kp._icdf_rows(t.reshape(-1), v)
    assert torch.equal(k, k2) and torch.equal(atoms, atoms2)


@pytest.mark.parametrize("piece, block", [(1000, 1000), (1000, 2500), (1000, 3700), (6000, 13000), (1 << 20, 1 << 20)])
def test_pieces_and_blocks_do_not_change_the_draws(piece, block):
    kp, kp2 = KacProcess(9.0, 3.0), KacProcess(9.0, 3.0)
    kp2._piece_elems, kp2._block_elems = piece, block
    t = torch.rand(7, 1, generator=torch.Generator().manual_seed(2))
    for shape, tt in (((7, 2500), t), ((1, 5000), 0.5), ((7, 300), t)):
        a, ma = kp.sample(tt, shape, generator=torch.Generator().manual_seed(3), return_atoms=True)
        b, mb = kp2.sample(tt, shape, generator=torch.Generator().manual_seed(3), return_atoms=True)
        assert torch.equal(a, b) and torch.equal(ma, mb)


# ------------------------------------------------------------------------------------------------
# draws
# ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("a, c, t", KS_SETS)
def test_ks_default_sampler(a, c, t):
    n = 200_000
    kp = KacProcess(a, c)
    g = torch.Generator().manual_seed(11)
    x, atoms = kp.sample(t, (n,), generator=g, return_atoms=True, dtype=F32)
    assert ks_distance(kp, t, x, atoms) < KS_1PCT / math.sqrt(n)
    # the same test rejects a sampler with a 10% wrong switching rate
    x2, atoms2 = KacProcess(1.1 * a, c).sample(t, (n,), generator=g, return_atoms=True, dtype=F32)
    assert ks_distance(kp, t, x2, atoms2) > KS_1PCT / math.sqrt(n)


@pytest.mark.parametrize("a, c, t", KS_SETS)
def test_ks_poisson_beta(a, c, t):
    n = 100_000
    kp = KacProcess(a, c)
    x, atoms = kp.sample(t, (n,), generator=torch.Generator().manual_seed(5), return_atoms=True, method="poisson_beta")
    assert ks_distance(kp, t, x, atoms) < KS_1PCT / math.sqrt(n)


def test_poisson_beta_and_default_agree_in_distribution():
    from scipy.stats import ks_2samp

    kp = KacProcess(9.0, 3.0)
    n = 100_000
    for t in (0.1, 0.7):
        a = kp.sample(t, (n,), generator=torch.Generator().manual_seed(1), dtype=F64)
        b = kp.sample(t, (n,), generator=torch.Generator().manual_seed(2), dtype=F64, method="poisson_beta")
        assert ks_2samp(a.numpy(), b.numpy()).pvalue > 0.01


@pytest.mark.parametrize("method", ["auto", "poisson_beta"])
def test_atoms_exact_with_the_right_mass(method, dtype):
    kp = KacProcess(9.0, 3.0)
    n = 200_000
    for t in (0.02, 0.1, 0.3):
        x, atoms = kp.sample(t, (n,), generator=torch.Generator().manual_seed(4), return_atoms=True, dtype=dtype,
                             method=method)
        e = math.exp(-9.0 * t)
        ct = 3.0 * torch.tensor(t, dtype=dtype)
        frac = float(atoms.double().mean())
        assert abs(frac - e) < 5 * math.sqrt(e * (1 - e) / n), (t, frac, e)
        assert bool((x[atoms].abs() == ct).all()) and bool((x[~atoms].abs() <= ct).all())
        up = float((x[atoms] > 0).double().mean())
        assert abs(up - 0.5) < 5 * math.sqrt(0.25 / max(int(atoms.sum()), 1))


def test_outermost_shell_below_the_cone_is_populated():
    """ct(1 - 1/4096) <= |K| < ct holds its exact mass (a table clamping its top quantile leaves it empty)."""
    kp = KacProcess(9.0, 3.0)
    t, n = 0.05, 400_000
    x, atoms = kp.sample(t, (n,), generator=torch.Generator().manual_seed(9), return_atoms=True)
    ct = 3.0 * torch.tensor(t)
    count = int(((x.abs() >= ct * (1 - 1 / 4096)) & ~atoms).sum())
    inner = float(kp.cdf(t, torch.tensor(3.0 * t * (1 - 1 / 4096), dtype=F64)))
    expected = n * 2 * ((1 - math.exp(-9.0 * t) / 2) - inner)
    assert expected > 20
    assert abs(count - expected) < 5 * math.sqrt(expected), (count, expected)


def test_per_element_t_uses_poisson_beta_with_the_right_law():
    kp = KacProcess(9.0, 3.0)
    B = 40_000
    t = torch.tensor([0.3, 1.0], dtype=F64).repeat(B, 1)  # (B, 2): the time varies within rows
    x, atoms = kp.sample(t, (B, 2), generator=torch.Generator().manual_seed(6), return_atoms=True)
    same = kp.sample(t, (B, 2), generator=torch.Generator().manual_seed(6), method="poisson_beta")
    assert torch.equal(x, same)
    with pytest.raises(ValueError, match="rowwise_icdf"):
        kp.sample(t, (B, 2), method="rowwise_icdf")
    for j, tj in enumerate((0.3, 1.0)):
        assert ks_distance(kp, tj, x[:, j], atoms[:, j]) < KS_1PCT / math.sqrt(B)


def test_coordinates_independent():
    kp = KacProcess(9.0, 3.0)
    B, d = 20_000, 6
    for t in (0.5, torch.full((B, 1), 0.5)):
        x = kp.sample(t, (B, d), generator=torch.Generator().manual_seed(8), dtype=F64).numpy()
        for y in (x, np.abs(x)):
            corr = np.corrcoef(y.T)
            assert np.abs(corr - np.eye(d)).max() < 4.5 / math.sqrt(B)


def test_rows_with_different_times_get_their_own_law():
    kp = KacProcess(9.0, 3.0)
    ts = torch.tensor([[0.05], [0.3], [1.0], [2.0]], dtype=F64)
    x, atoms = kp.sample(ts, (4, 50_000), generator=torch.Generator().manual_seed(10), return_atoms=True)
    for r in range(4):
        assert ks_distance(kp, float(ts[r]), x[r], atoms[r]) < KS_1PCT / math.sqrt(50_000)


# ------------------------------------------------------------------------------------------------
# shapes, dtypes, devices, generators, extremes
# ------------------------------------------------------------------------------------------------
def test_shapes_and_dtypes(device, dtype):
    kp = KacProcess(9.0, 3.0)
    g = torch.Generator(device=device).manual_seed(0)
    B = 3
    cases = [
        (0.4, (B, 200)),
        (torch.rand(B, 1, dtype=dtype, device=device), (B, 200)),
        (torch.rand(B, 1, 1, 1, dtype=dtype, device=device), (B, 3, 8, 8)),
        (torch.tensor(0.4, dtype=dtype, device=device), (B, 3, 8, 8)),
        (0.4, ()),
        (0.4, (0, 5)),
    ]
    for t, shape in cases:
        x, atoms = kp.sample(t, shape, generator=g, return_atoms=True, dtype=dtype, device=device)
        assert x.shape == shape and atoms.shape == shape
        assert x.dtype == dtype and atoms.dtype == torch.bool and x.device.type == device.type
        tt = torch.as_tensor(t, dtype=dtype, device=device)
        assert bool((x.abs() <= 3.0 * tt).all())
    # a tensor t sets the default dtype and device
    x = kp.sample(torch.rand(B, 1, dtype=dtype, device=device), (B, 200), generator=g)
    assert x.dtype == dtype and x.device.type == device.type


def test_generator_reproducible(device):
    kp = KacProcess(9.0, 3.0)
    t = torch.rand(4, 1, device=device)
    for method in ("auto", "poisson_beta"):
        a = kp.sample(t, (4, 500), generator=torch.Generator(device=device).manual_seed(5), method=method)
        b = kp.sample(t, (4, 500), generator=torch.Generator(device=device).manual_seed(5), method=method)
        c = kp.sample(t, (4, 500), generator=torch.Generator(device=device).manual_seed(6), method=method)
        assert torch.equal(a, b) and not torch.equal(a, c)


@pytest.mark.parametrize("method", ["auto", "poisson_beta"])
def test_finite_at_extremes(method, dtype):
    g = torch.Generator().manual_seed(0)
    for a in (0.1, 1.0, 1000.0):
        kp = KacProcess(a, 2.0)
        t = torch.tensor([[0.0], [1e-7], [1e-3], [1.0], [10.0]], dtype=dtype)
        x, atoms = kp.sample(t, (5, 4000), generator=g, return_atoms=True, method=method)
        assert bool(torch.isfinite(x).all())
        ct = 2.0 * t
        assert bool((x.abs() <= ct).all())
        assert bool((x[0] == 0).all()) and bool(atoms[0].all())  # t = 0: every draw is the atom 0
        assert bool((x.abs()[atoms] == ct.expand_as(x)[atoms]).all())


def test_bad_input():
    kp = KacProcess(9.0, 3.0)
    with pytest.raises(ValueError, match=r"^t must lie in \[0"):
        kp.sample(-0.1, (2, 3))
    with pytest.raises(ValueError, match=r"^t must be finite"):
        kp.sample(torch.tensor([[float("nan")], [0.1]]), (2, 3))
    with pytest.raises(ValueError, match=r"^t with shape \(3, 1\) does not broadcast"):
        kp.sample(torch.ones(3, 1), (2, 3))
    with pytest.raises(ValueError, match="more dims"):
        kp.sample(torch.ones(2, 1), (2,))
    with pytest.raises(ValueError, match="shape must hold non-negative"):
        kp.sample(0.5, (2, -1))
    with pytest.raises(ValueError, match="method must be"):
        kp.sample(0.5, (2, 3), method="table")
    with pytest.raises(ValueError, match="dtype must be"):
        kp.sample(0.5, (2, 3), dtype=torch.float16)
    with pytest.raises(ValueError, match="v of shape"):
        kp._icdf_rows(torch.ones(2), torch.rand(3, 4))


@pytest.mark.slow
@pytest.mark.parametrize("a, c, t", KS_SETS)
@pytest.mark.parametrize("method", ["auto", "poisson_beta"])
def test_ks_two_million_draws(a, c, t, method):
    n = 2_000_000
    kp = KacProcess(a, c)
    x, atoms = kp.sample(t, (n,), generator=torch.Generator().manual_seed(21), return_atoms=True, dtype=F32,
                         method=method)
    assert ks_distance(kp, t, x, atoms) < KS_1PCT / math.sqrt(n)
