"""Losses (flow matching, ε-prediction): zero for an oracle replaying the generator, the value by hand,
label dropout, shapes, gradients, reproducibility; and the 2D toy data sets they train on."""
import math

import pytest
import torch

from kacnum.flows.losses import EpsilonLoss, FlowMatchingLoss
from kacnum.flows.paths import GaussianPath, KacPath, VPPath
from kacnum.theory.toy_data import TOY_DATASETS, TOY_NUM_CLASSES, grid9, grid9_support, make_toy

F64 = torch.float64
PATHS = {"kac": lambda: KacPath(), "kac25": lambda: KacPath(a=25.0, c=2.0, g="t2"),
         "gaussian": lambda: GaussianPath(), "vp": lambda: VPPath()}


def _gen(seed, device="cpu"):
    return torch.Generator(device=device).manual_seed(seed)


class Oracle:
    """Replays the loss's draws (times, then path noise) from the same seed and returns the target."""

    def __init__(self, path, x0, seed, field="u_t"):
        g = _gen(seed, x0.device)
        t = path.sample_time(x0.shape[0], g, dtype=x0.dtype, device=x0.device)
        self.sample = path.sample(x0, t, g)
        self.field = field
        self.null_label = 7
        self.seen_y = None

    def __call__(self, x, t, y):
        assert torch.equal(x, self.sample.x_t) and torch.equal(t, self.sample.t)
        self.seen_y = y
        return getattr(self.sample, self.field)


@pytest.mark.parametrize("name", list(PATHS))
def test_flow_matching_loss_zero_for_oracle(name, dtype, device):
    path = PATHS[name]()
    x0 = torch.randn(16, 3, 4, 4, generator=_gen(0), dtype=dtype).to(device)
    y = torch.randint(0, 5, (16,), generator=_gen(1)).to(device)
    oracle = Oracle(path, x0, seed=42)
    out = FlowMatchingLoss(path, p_uncond=0.5)(oracle, x0, y, generator=_gen(42, device))
    assert out["loss"].item() == 0.0
    assert out["per_sample"].shape == (16,) and bool((out["per_sample"] == 0).all())
    assert torch.equal(out["t"], oracle.sample.t)
    assert oracle.seen_y is out["y"]


def test_flow_matching_loss_value_by_hand():
    path = KacPath()
    x0 = torch.randn(32, 2, generator=_gen(2), dtype=F64)
    oracle = Oracle(path, x0, seed=3)
    model = lambda x, t, y: 0.5 * x + t[:, None]  # noqa: E731
    out = FlowMatchingLoss(path, p_uncond=0.0)(model, x0, generator=_gen(3))
    s = oracle.sample
    per = ((0.5 * s.x_t + s.t[:, None] - s.u_t) ** 2).mean(dim=1)
    assert torch.allclose(out["per_sample"], per, rtol=1e-14, atol=0)
    assert torch.allclose(out["loss"], per.mean(), rtol=1e-14)
    out_sum = FlowMatchingLoss(path, p_uncond=0.0, reduction="sum")(model, x0, generator=_gen(3))
    assert torch.allclose(out_sum["loss"], per.sum(), rtol=1e-14)
    assert out["y"] is None and out["dropped"] is None
    # given times are used as they are (no time draw: the noise is the first draw)
    t = torch.full((32,), 0.25, dtype=F64)
    out_t = FlowMatchingLoss(path, p_uncond=0.0)(model, x0, generator=_gen(4), t=t)
    ps = path.sample(x0, t, _gen(4))
    assert torch.equal(out_t["sample"].x_t, ps.x_t)


def test_label_dropout_rate_and_null_label():
    path = GaussianPath()
    n, p = 20000, 0.25
    x0 = torch.zeros(n, 2)
    y = torch.randint(0, 5, (n,), generator=_gen(5))
    seen = {}

    def model(x, t, yy):
        seen["y"] = yy
        return torch.zeros_like(x)

    out = FlowMatchingLoss(path, p_uncond=p, null_label=5)(model, x0, y, generator=_gen(6))
    dropped = out["dropped"]
    assert abs(dropped.float().mean().item() - p) < 5 * math.sqrt(p * (1 - p) / n)
    assert bool((seen["y"][dropped] == 5).all()) and torch.equal(seen["y"][~dropped], y[~dropped])
    # reproducible dropout; the model's null label is used when none is given
    out2 = FlowMatchingLoss(path, p_uncond=p)(Oracle(path, x0, 6), x0, y, generator=_gen(6))
    assert torch.equal(out2["dropped"], dropped)
    assert bool((out2["y"][dropped] == 7).all())
    # p_uncond = 0: labels untouched; y = None: the model gets None
    out3 = FlowMatchingLoss(path, p_uncond=0.0)(model, x0, y, generator=_gen(6))
    assert torch.equal(seen["y"], y) and not bool(out3["dropped"].any())
    FlowMatchingLoss(path, p_uncond=0.5)(model, x0, None, generator=_gen(6))
    assert seen["y"] is None


def test_gradient_flows_and_reproducible():
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(3, 16), torch.nn.SiLU(), torch.nn.Linear(16, 2))
    model = lambda x, t, y: net(torch.cat([x, t[:, None]], dim=1))  # noqa: E731
    path = KacPath(a=25.0, c=2.0)
    x0 = torch.randn(64, 2, generator=_gen(7))
    loss_fn = FlowMatchingLoss(path)
    out = loss_fn(model, x0, generator=_gen(8))
    out["loss"].backward()
    for prm in net.parameters():
        assert prm.grad is not None and bool(torch.isfinite(prm.grad).all()) and prm.grad.abs().sum() > 0
    again = loss_fn(model, x0, generator=_gen(8))["loss"]
    other = loss_fn(model, x0, generator=_gen(9))["loss"]
    assert again.item() == out["loss"].item() and other.item() != out["loss"].item()


@pytest.mark.parametrize("name", ["vp", "gaussian"])
def test_epsilon_loss(name, dtype):
    path = PATHS[name]()
    x0 = torch.randn(20, 5, generator=_gen(10), dtype=dtype)
    oracle = Oracle(path, x0, seed=11, field="noise")
    out = EpsilonLoss(path, p_uncond=0.0)(oracle, x0, generator=_gen(11))
    assert out["loss"].item() == 0.0 and out["per_sample"].shape == (20,)
    # the zero model's loss is the mean square of the noise, by hand
    out0 = EpsilonLoss(path, p_uncond=0.0)(lambda x, t, y: torch.zeros_like(x), x0, generator=_gen(11))
    assert torch.allclose(out0["per_sample"], (oracle.sample.noise ** 2).mean(1), rtol=1e-6)
    assert bool((out0["t"] >= path.t_eps).all())


def test_loss_bad_input():
    path = KacPath()
    with pytest.raises(ValueError, match="p_uncond"):
        FlowMatchingLoss(path, p_uncond=1.5)
    with pytest.raises(ValueError, match="reduction"):
        FlowMatchingLoss(path, reduction="none")
    with pytest.raises(ValueError, match="path must be a VPPath or GaussianPath"):
        EpsilonLoss(path)
    with pytest.raises(ValueError, match="path must be"):
        FlowMatchingLoss("kac")
    x0 = torch.zeros(4, 2)
    with pytest.raises(ValueError, match="model output must have x0's shape"):
        FlowMatchingLoss(path)(lambda x, t, y: x[:, :1], x0)
    with pytest.raises(ValueError, match="null_label must be given"):
        FlowMatchingLoss(path, p_uncond=0.1)(lambda x, t, y: x, x0, torch.zeros(4, dtype=torch.long))
    with pytest.raises(ValueError, match="y must be a \\(4,\\) integer tensor"):
        FlowMatchingLoss(path, p_uncond=0.1, null_label=3)(lambda x, t, y: x, x0, torch.zeros(4))


# ------------------------------------------------------------------------------------------------
# toy data


@pytest.mark.parametrize("name", TOY_DATASETS)
def test_toy_datasets(name):
    x, y = make_toy(name, 4000, _gen(20))
    k = TOY_NUM_CLASSES[name]
    assert x.shape == (4000, 2) and y.shape == (4000,) and y.dtype == torch.long
    assert x.dtype == torch.get_default_dtype() and bool(torch.isfinite(x).all())
    assert int(y.min()) == 0 and int(y.max()) == k - 1
    counts = torch.bincount(y, minlength=k).double()
    assert (counts - 4000 / k).abs().max() < 5 * math.sqrt(4000 / k)
    assert x.abs().max() < 3.0 and x.abs().max() > 1.0  # the documented scale
    x2, y2 = make_toy(name, 4000, _gen(20))
    assert torch.equal(x, x2) and torch.equal(y, y2)
    # points of one label cluster together: class means differ
    means = torch.stack([x[y == j].mean(0) for j in range(k)])
    assert torch.cdist(means, means).add(torch.eye(k) * 10).min() > 0.3


def test_toy_layouts():
    x, y = make_toy("eight_gaussians", 2000, _gen(21), dtype=F64)
    ang = y.double() * math.pi / 4
    centres = 2.0 * torch.stack([torch.cos(ang), torch.sin(ang)], 1)
    assert (x - centres).std().item() == pytest.approx(0.1, rel=0.1)
    x, y = make_toy("checkerboard", 2000, _gen(22), dtype=F64)
    cell = torch.floor(x + 2.0)
    assert bool(((cell.sum(1) % 2) == 0).all())  # only the dark squares
    pts, w = grid9_support(dtype=F64)
    assert pts.shape == (9, 2) and torch.allclose(w.sum(), torch.tensor(1.0, dtype=F64))
    x, y = grid9(500, _gen(23), dtype=F64)
    assert (x - pts[y]).abs().max() < 0.06
    x0, _ = grid9(50, _gen(23), std=0.0, dtype=F64)
    assert bool((torch.cdist(x0, pts).min(1).values == 0).all())
    with pytest.raises(ValueError, match="name must be one of"):
        make_toy("swiss_roll", 10)
    with pytest.raises(ValueError, match="n \\(number of points\\)"):
        make_toy("grid9", 0)


def test_loss_options_repr_and_epsilon_loss_options():
    path = VPPath()
    plain = EpsilonLoss(path, p_uncond=0.0)
    assert "data_sigma" not in repr(plain) and plain.plain
    opt = EpsilonLoss(path, p_uncond=0.0, data_sigma=0.1, time_sampling="logit_normal:0,1")
    assert "data_sigma=0.1" in repr(opt) and "logit_normal:0,1" in repr(opt) and not opt.plain
    x0 = torch.zeros(4000, 3, dtype=F64)
    out = opt(lambda x, t, y: torch.zeros_like(x), x0, generator=_gen(50))
    t = out["t"]
    assert bool((t >= path.t_eps).all()) and abs(float(t.median()) - 0.5) < 0.05  # logit-normal(0, 1): median 1/2
    assert out["sample"].x0.std().item() == pytest.approx(0.1, rel=0.05)  # the smoothed data enter the path
    with pytest.raises(ValueError, match="needs a KacPath"):
        EpsilonLoss(path, weighting="atom")
