"""Velocity networks: shapes, conditioning, time resolution, attention placement, input checks."""
import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
import torch
import torch.nn.functional as F

from kacnum.images.models import MLP, PRESETS, UNet, UNetConfig, count_parameters, make_model
from kacnum.images.models.unet import AttentionBlock, timestep_features


def _inputs(model, B=3, dtype=torch.float32, device="cpu", seed=0):
    g = torch.Generator().manual_seed(seed)
    cfg = model.config
    shape = (B, cfg.in_channels, cfg.resolution, cfg.resolution) if isinstance(cfg, UNetConfig) else (B, cfg.dim)
    x = torch.randn(shape, generator=g, dtype=dtype).to(device)
    t = (torch.rand(B, generator=g, dtype=dtype) * model.T).to(device)
    return x, t


def _perturb_(model, std=0.05, seed=1):
    """Add Gaussian noise to every parameter (so zero-initialised layers stop hiding the inputs)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(std * torch.randn(p.shape, generator=g, dtype=p.dtype).to(p.device))


def _randomise_last_(model, seed=2):
    g = torch.Generator().manual_seed(seed)
    last = model.conv_out if isinstance(model, UNet) else model.out
    with torch.no_grad():
        last.weight.copy_(0.1 * torch.randn(last.weight.shape, generator=g, dtype=last.weight.dtype))


SMALL_PRESETS = ["mnist_small", "digits_tiny", "tiny", "mlp_2d"]


@pytest.mark.parametrize("name", SMALL_PRESETS)
def test_preset_shape_dtype_and_zero_init(name):
    torch.manual_seed(0)
    model = make_model(name).eval()
    x, t = _inputs(model, B=2)
    y = torch.tensor([0, model.num_classes - 1]) if model.num_classes else None
    out = model(x, t, y)
    assert out.shape == x.shape and out.dtype == x.dtype
    # zero-initialised final layer: a fresh network is exactly the zero field
    assert torch.count_nonzero(out) == 0
    _randomise_last_(model)
    out = model(x, t, y)
    assert torch.isfinite(out).all() and out.abs().max() > 1e-3


@pytest.fixture(scope="module")
def cifar_model():
    torch.manual_seed(0)
    return make_model("cifar10_kacflow").eval()


def test_cifar_preset_forward(cifar_model):
    model = cifar_model
    cfg = model.config
    assert (cfg.channels, cfg.channel_mult, cfg.num_res_blocks, cfg.attn_resolutions, cfg.dropout,
            cfg.in_channels, cfg.resolution, cfg.num_classes) == (128, (1, 2, 2, 2), 2, (16,), 0.1, 3, 32, 10)
    assert model.num_classes == 10 and model.null_label == 10 and model.T == 1.0
    # DDPM's CIFAR-10 UNet of this shape has 35.7M parameters; ours adds scale-shift and labels
    assert 35e6 < count_parameters(model) < 40e6
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        out = model(x, torch.tensor([0.2, 0.9]), torch.tensor([3, 10]))
    assert out.shape == x.shape and torch.count_nonzero(out) == 0


def _attention_sizes(model, x, t, monkeypatch):
    """Sequence lengths seen by scaled_dot_product_attention during one forward."""
    seen = []
    real = F.scaled_dot_product_attention

    def spy(q, k, v, *args, **kwargs):
        seen.append(q.shape[-2])
        return real(q, k, v, *args, **kwargs)

    monkeypatch.setattr(torch.nn.functional, "scaled_dot_product_attention", spy)
    with torch.no_grad():
        model(x, t)
    return seen


def test_attention_applied_at_16x16(monkeypatch):
    # same layout as cifar10_kacflow at 1/8 of the width
    model = make_model("cifar10_kacflow", channels=16, head_channels=16).eval()
    x = torch.randn(1, 3, 32, 32)
    seen = _attention_sizes(model, x, torch.tensor([0.5]), monkeypatch)
    # 2 blocks down + 3 blocks up at 16x16 (256 positions), one in the middle at 4x4 (16)
    assert sorted(seen) == [16] + [256] * 5
    model = make_model("cifar10_kacflow", channels=16, attn_resolutions=(8,), mid_attention=False).eval()
    assert sorted(_attention_sizes(model, x, torch.tensor([0.5]), monkeypatch)) == [64] * 5


def test_cifar_attention_modules_sit_at_16(cifar_model):
    model = cifar_model
    blocks = [m for m in model.modules() if isinstance(m, AttentionBlock)]
    mid = [m for m in model.mid.modules() if isinstance(m, AttentionBlock)]
    assert len(mid) == 1 and mid[0].resolution == 4
    assert sorted(b.resolution for b in blocks if b is not mid[0]) == [16] * 5
    # 256 channels at 16x16 with 64 channels per head
    assert all(b.num_heads == 4 for b in blocks)


@pytest.mark.parametrize("name", ["tiny", "mlp_2d"])
def test_null_label_equals_none(name):
    torch.manual_seed(0)
    model = make_model(name, num_classes=4).eval()
    _perturb_(model)
    x, t = _inputs(model)
    null = torch.full((x.shape[0],), model.null_label, dtype=torch.long)
    assert model.null_label == model.num_classes == 4
    torch.testing.assert_close(model(x, t, None), model(x, t, null), rtol=0, atol=0)


@pytest.mark.parametrize("name", ["tiny", "mlp_2d"])
def test_class_conditioning_changes_output(name):
    torch.manual_seed(0)
    model = make_model(name, num_classes=3).eval()
    x, t = _inputs(model, B=2)
    y0, y1 = torch.zeros(2, dtype=torch.long), torch.ones(2, dtype=torch.long)
    assert torch.equal(model(x, t, y0), model(x, t, y1))  # both exactly 0 at initialisation
    _perturb_(model)
    a, b, n = model(x, t, y0), model(x, t, y1), model(x, t, None)
    scale = a.abs().mean()
    assert (a - b).abs().mean() > 1e-2 * scale
    assert (a - n).abs().mean() > 1e-2 * scale


def test_unconditional_model_accepts_only_null_label():
    model = make_model("tiny", num_classes=0).eval()
    assert model.null_label == 0
    x, t = _inputs(model, B=2)
    torch.testing.assert_close(model(x, t), model(x, t, torch.zeros(2, dtype=torch.long)))
    with pytest.raises(ValueError, match="y"):
        model(x, t, torch.ones(2, dtype=torch.long))


def test_time_features_resolve_small_steps():
    for T in (1.0, 5.0):
        t = torch.tensor([0.1 * T, (0.1 + 1e-3) * T], dtype=torch.float64)
        f = timestep_features(t, 128, T=T)
        # the fastest sinusoid turns by time_scale * dt / T = 1 rad: an O(1) change of the features
        assert (f[0] - f[1]).abs().max() > 0.4
        # features of t/T only
        torch.testing.assert_close(f, timestep_features(t / T, 128, T=1.0))
    # formula: [cos(1000 t w_k), sin(1000 t w_k)] with w_k = 10000^(-k/half)
    t = torch.tensor([0.37], dtype=torch.float64)
    f = timestep_features(t, 8)
    w = torch.tensor([10000 ** (-k / 4) for k in range(4)], dtype=torch.float64)
    torch.testing.assert_close(f[0], torch.cat([torch.cos(370 * w), torch.sin(370 * w)]))


@pytest.mark.parametrize("name", ["tiny", "mlp_2d"])
def test_time_embedding_distinguishes_close_times(name):
    torch.manual_seed(0)
    model = make_model(name).eval()
    _randomise_last_(model)
    x, _ = _inputs(model, B=1)
    a = model(x, torch.tensor([0.1]))
    b = model(x, torch.tensor([0.1 + 1e-3]))
    assert (a - b).abs().max() > 1e-3 * a.abs().max()


def test_time_scaled_by_T():
    torch.manual_seed(0)
    m1 = make_model("tiny", T=1.0).eval()
    m3 = make_model("tiny", T=3.0).eval()
    m3.load_state_dict(m1.state_dict())
    _randomise_last_(m1)
    _randomise_last_(m3)
    x, _ = _inputs(m1, B=2)
    torch.testing.assert_close(m1(x, torch.tensor([0.2, 0.7])), m3(x, torch.tensor([0.6, 2.1])))
    assert m3.T == 3.0


@pytest.mark.parametrize("name", ["tiny", "mlp_2d"])
def test_gradients_flow(name):
    torch.manual_seed(0)
    model = make_model(name, num_classes=3)
    _perturb_(model)
    x, t = _inputs(model)
    x.requires_grad_(True)
    loss = model(x, t, torch.tensor([0, 1, 3])).pow(2).mean()
    loss.backward()
    assert x.grad is not None and x.grad.abs().sum() > 0
    for pname, p in model.named_parameters():
        if pname == "embed.label_emb.weight":
            assert p.grad[2].abs().sum() == 0 and p.grad[[0, 1, 3]].abs().sum(1).gt(0).all()
        else:
            assert p.grad is not None and torch.isfinite(p.grad).all(), pname
            assert p.grad.abs().sum() > 0, pname


def test_gradient_checkpointing_matches():
    torch.manual_seed(0)
    plain = make_model("tiny")
    ckpt = make_model("tiny", use_checkpoint=True)
    ckpt.load_state_dict(plain.state_dict())
    _perturb_(plain)
    _perturb_(ckpt)
    x, t = _inputs(plain)
    for m in (plain, ckpt):
        m(x, t).pow(2).mean().backward()
    for (n, p), q in zip(plain.named_parameters(), ckpt.parameters()):
        torch.testing.assert_close(p.grad, q.grad, msg=n)


@pytest.mark.parametrize("name", ["tiny", "mlp_2d"])
def test_float64_and_device(name, device, dtype):
    torch.manual_seed(0)
    model = make_model(name).to(device=device, dtype=dtype).eval()
    _perturb_(model)
    x, t = _inputs(model, dtype=dtype, device=device)
    out = model(x, t, torch.tensor([0, 1, 2], device=device) if model.num_classes else None)
    assert out.dtype == dtype and out.device.type == device.type and torch.isfinite(out).all()
    if dtype == torch.float64:
        # float64 agrees with float32 to float32 precision
        # (reference on CPU: CUDA float32 convolutions may use TF32)
        m32 = make_model(name).eval()
        m32.load_state_dict({k: v.float().cpu() for k, v in model.state_dict().items()})
        out32 = m32(x.float().cpu(), t.float().cpu(), torch.tensor([0, 1, 2]) if model.num_classes else None)
        torch.testing.assert_close(out32.double(), out.cpu(), rtol=1e-4, atol=1e-5)


def test_scalar_time_broadcasts():
    torch.manual_seed(0)
    model = make_model("tiny").eval()
    _randomise_last_(model)
    x, _ = _inputs(model)
    torch.testing.assert_close(model(x, 0.3), model(x, torch.full((3,), 0.3)))
    torch.testing.assert_close(model(x, torch.tensor(0.3)), model(x, torch.full((3,), 0.3)))


def test_mlp_matches_formula():
    torch.manual_seed(0)
    model = MLP(dim=3, hidden=16, depth=2, num_classes=2)
    _perturb_(model)
    x = torch.randn(4, 3)
    t = torch.rand(4)
    y = torch.tensor([0, 1, 2, 1])
    e = model.embed(t, y)
    h = model.inp(x)
    for k in range(2):
        h = F.silu(model.layers[k](h) + model.emb_proj[k](e))
    torch.testing.assert_close(model(x, t, y), model.out(h))


def test_bad_inputs_name_the_parameter():
    model = make_model("tiny").eval()
    x, t = _inputs(model, B=2)
    y = torch.tensor([0, 1])
    with pytest.raises(ValueError, match=r"x must have shape \(B, 1, 8, 8\)"):
        model(torch.randn(2, 3, 8, 8), t, y)  # wrong channels
    with pytest.raises(ValueError, match="x must have shape"):
        model(torch.randn(2, 1, 16, 16), t, y)  # wrong spatial size
    with pytest.raises(ValueError, match="x must have shape"):
        model(torch.randn(1, 8, 8), t, y)
    with pytest.raises(ValueError, match=r"y must hold labels in \[0, 3\]"):
        model(x, t, torch.tensor([0, 4]))
    with pytest.raises(ValueError, match="y must hold labels"):
        model(x, t, torch.tensor([-1, 0]))
    with pytest.raises(ValueError, match="y must"):
        model(x, t, torch.tensor([0.0, 1.0]))
    with pytest.raises(ValueError, match=r"t must have shape \(2,\)"):
        model(x, torch.rand(3), y)
    with pytest.raises(ValueError, match=r"t must have shape \(2,\)"):
        model(x, torch.rand(2, 1), y)
    with pytest.raises(ValueError, match=r"t must lie in \[0, T\]"):
        model(x, torch.tensor([0.5, 1.5]), y)
    with pytest.raises(ValueError, match="t must be finite"):
        model(x, torch.tensor([0.5, math.nan]), y)
    with pytest.raises(ValueError, match="x must be a floating-point"):
        model(torch.zeros(2, 1, 8, 8, dtype=torch.long), t, y)
    mlp = make_model("mlp_2d")
    with pytest.raises(ValueError, match=r"x must have shape \(B, 2\)"):
        mlp(torch.randn(2, 3), t)


def test_bad_construction_names_the_parameter():
    with pytest.raises(ValueError, match="name must be one of"):
        make_model("cifar100")
    with pytest.raises(ValueError, match="unknown override"):
        make_model("tiny", width=3)
    with pytest.raises(ValueError, match="resolution must be divisible"):
        make_model("tiny", resolution=10, channel_mult=(1, 2, 2))
    with pytest.raises(ValueError, match="attn_resolutions"):
        make_model("mnist_small", attn_resolutions=(16,))
    with pytest.raises(ValueError, match="dropout"):
        make_model("tiny", dropout=1.5)
    with pytest.raises(ValueError, match="T must"):
        make_model("tiny", T=0.0)
    with pytest.raises(ValueError, match="num_classes"):
        MLP(num_classes=-1)


def test_presets_are_frozen_and_rebuildable():
    cfg = PRESETS["tiny"]
    with pytest.raises(Exception):
        cfg.channels = 3  # frozen dataclass
    model = make_model("tiny", num_classes=5)
    assert model.config.num_classes == 5
    rebuilt = UNet.from_config(model.config)
    assert count_parameters(rebuilt) == count_parameters(model)
    # 28x28 with three levels (28, 14, 7) and a 1-channel output
    m = make_model("mnist_small")
    assert m.config.resolution == 28 and m.config.in_channels == 1


def test_count_parameters():
    m = MLP(dim=2, hidden=4, depth=1, time_channels=2)
    # embed: Linear(2,4)+Linear(4,4)+Embedding(1,4); inp Linear(2,4); layer Linear(4,4); proj Linear(4,4); out Linear(4,2)
    expected = (2 * 4 + 4) + (4 * 4 + 4) + 4 + (2 * 4 + 4) + (4 * 4 + 4) + (4 * 4 + 4) + (4 * 2 + 2)
    assert count_parameters(m) == expected
    m.out.weight.requires_grad_(False)
    assert count_parameters(m) == expected - 8
    assert count_parameters(m, trainable_only=False) == expected


def test_docstring_parameter_counts_are_current(cifar_model):
    import re

    import kacnum.images.models.unet as unet_module

    table = {}
    for line in unet_module.__doc__.splitlines():
        m = re.match(r"^(\w+)\s.*\s([\d,]+)$", line)
        if m and m.group(1) in PRESETS:
            table[m.group(1)] = int(m.group(2).replace(",", ""))
    assert set(table) == set(PRESETS)
    for name, n in table.items():
        model = cifar_model if name == "cifar10_kacflow" else make_model(name)
        assert count_parameters(model) == n, name


@given(T=st.floats(0.1, 10.0), u=st.lists(st.floats(0.0, 1.0), min_size=1, max_size=4),
       dim=st.integers(2, 33))
def test_time_features_property(T, u, dim):
    t = torch.tensor(u, dtype=torch.float64) * T
    f = timestep_features(t, dim, T=T)
    assert f.shape == (len(u), dim) and torch.isfinite(f).all() and f.abs().max() <= 1
    half = dim // 2
    # cos^2 + sin^2 = 1 for every frequency
    torch.testing.assert_close(f[:, :half] ** 2 + f[:, half:2 * half] ** 2, torch.ones(len(u), half, dtype=torch.float64))
    torch.testing.assert_close(f, timestep_features(t / T, dim, T=1.0))


torch.manual_seed(0)
_TINY = make_model("tiny").eval()
_perturb_(_TINY)


@settings(max_examples=15)
@given(B=st.integers(1, 4), u=st.floats(0.0, 1.0), label=st.integers(0, 3))
def test_unet_output_property(B, u, label):
    x = torch.randn(B, 1, 8, 8, generator=torch.Generator().manual_seed(B))
    with torch.no_grad():
        out = _TINY(x, torch.full((B,), u), torch.full((B,), label))
        single = _TINY(x[:1], torch.full((1,), u), torch.full((1,), label))
    assert out.shape == x.shape and torch.isfinite(out).all()
    # samples do not interact: the first row does not depend on the batch size
    torch.testing.assert_close(out[:1], single, rtol=1e-5, atol=1e-6)
