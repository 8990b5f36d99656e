"""Training losses: conditional flow matching and the ε-prediction baseline (docs/mathematics.md §4, §5, §9), with the
teacher-training options (data smoothing, time densities, loss weighting, preconditioning).

A loss is a small callable class whose hyper-parameters are fixed at construction (the EDM style);
it sees only the path's :class:`~kacnum.flows.paths.PathSample` and the model output::

    loss_fn = FlowMatchingLoss(KacPath(), p_uncond=0.1)
    out = loss_fn(model, x0, y, generator=gen)        # out["loss"].backward()

Random draws, all from the one ``generator`` and in this order, so that one generator state gives one
loss: the times (``path.sample_time`` for the uniform density, one ``torch.rand(B)`` mapped through the
density's quantile otherwise; skipped when ``t`` is given), the data-smoothing noise (one
``torch.randn`` of ``x0``'s shape, only when ``data_sigma > 0``), the path noise (``path.sample``),
then the label dropout (``torch.rand(B)``, only when labels are given and ``p_uncond > 0``). With the
defaults (``data_sigma=0``, ``time_sampling="uniform"``, ``weighting="none"``) the draws and the loss
are bit for bit those of the plain loss.

Teacher-training options (every default leaves the plain loss unchanged)
-----------------------------------------------------------------------
* ``data_sigma = σ``: the path starts from ``x0 + σ ε`` instead of ``x0`` (dequantisation / data
  smoothing). The model then learns the flow of the smoothed data law ``data * N(0, σ² I)``: no atoms
  at ``t > 0`` for σ > 0 and a Lipschitz Kac field (docs/mathematics.md §13); its samples carry that noise.
* ``time_sampling`` (:class:`TimeSampler`): ``t = t_eps + (T - t_eps) τ`` with ``τ ∈ [0, 1)`` from

  ================== ==================================== =============================================
  spec               τ                                    CDF ``P(τ ≤ x)``
  ================== ==================================== =============================================
  ``uniform``        ``U``                                ``x``
  ``logit_normal:m,s`` ``sigmoid(m + s Φ^{-1}(U))``        ``Φ((logit x - m)/s)`` (SD3 uses ``0,1``)
  ``power:k``        ``U^{1/k}``                          ``x^k``; density ``k x^{k-1}``: ``k > 1``
                                                          draws FEWER small t (density → 0 at t = 0),
                                                          ``k < 1`` more, ``k = 1`` is uniform
  ================== ==================================== =============================================

* ``weighting``: per-sample weights ``w(t)`` of the squared error, normalised to mean 1 under the
  training time density (so that the loss scale, gradient clipping and learning rate stay comparable):
  ``none`` (``w = 1``) or ``atom`` (Kac paths only): ``w ∝ 1 - e^{-a g(t)}``, the probability that a
  coordinate has left its atom. Where atoms dominate (small t: 84 % of the coordinates at ``t = 0.02``
  for ``a = 9``) the per-coordinate target is ``f' x0 ± c g'``, a jump across the cone face of size
  ``2 c g'`` that a smooth network cannot follow; that error is mostly irreducible, and being the
  largest part of the loss it dominates the gradient noise. The weight removes it in proportion to the
  atom mass and leaves ``t ≳ 3/a`` untouched.
* :class:`Preconditioned` (EDM-style, a model wrapper): ``u(x, t, y) = c_out(t) F(c_in(t) x, t, y)``
  with ``c_in = 1 / std(x_t)`` (:func:`marginal_std`) and optionally ``c_out = std(u_t)``
  (:func:`target_std`), so that the network sees unit-scale inputs and predicts a unit-scale output
  at every t. Samplers, guidance and distillation see a plain velocity model ``model(x, t, y)``.

VP v-prediction (Salimans & Ho 2022): ``EpsilonLoss(path, prediction="v")`` regresses ``v = α ε - σ x0``
(:func:`vp_v_target`) and :class:`VToEps` turns the trained v-network into the ε-model the VP samplers take
(``ε = σ x_t + α v``).

Held-out evaluation: :func:`binned_loss` (mean squared error against the conditional target per bin of t
on held-out images, fixed seed, and the fraction of Kac coordinates on atoms).
"""
from __future__ import annotations

import math
from typing import Callable, Optional, Sequence, Union

import torch
from torch import nn

from kacnum.core.checks import check_in_range
from kacnum.flows.paths import GaussianPath, KacPath, PathSample, ProbabilityPath, VPPath
from kacnum.flows.paths.base import _check_batch_size, _check_data_sigma
from kacnum.flows.paths.kernels import _gauss_legendre_nodes

__all__ = [
    "FlowMatchingLoss",
    "EpsilonLoss",
    "TimeSampler",
    "TIME_SAMPLINGS",
    "LOSS_WEIGHTINGS",
    "PRECONDITIONINGS",
    "loss_weight",
    "marginal_std",
    "target_std",
    "kac_velocity_second_moment",
    "Preconditioned",
    "VP_PREDICTIONS",
    "vp_v_target",
    "VToEps",
    "path_spec",
    "path_from_spec",
    "DEFAULT_T_BINS",
    "binned_loss",
]

TIME_SAMPLINGS = ("uniform", "logit_normal", "power")
LOSS_WEIGHTINGS = ("none", "atom")
#: ``none``; ``in``: c_in only; ``inout``: c_in and c_out
PRECONDITIONINGS = ("none", "in", "inout")
#: what a VP network predicts: ``eps`` (the noise) or ``v = α ε - σ x0`` (Salimans & Ho 2022)
VP_PREDICTIONS = ("eps", "v")


# ------------------------------------------------------------------------------------------------
# time densities


class TimeSampler:
    """Training-time density on ``[t_eps, T)`` from a spec string (see the module docstring).

    ``t = t_eps + (T - t_eps) τ``, ``τ = quantile(U)``, ``U ~ U[0, 1)`` (one ``torch.rand(B)``).
    ``uniform`` calls ``path.sample_time`` itself (bit for bit the plain loss).

    Args:
        spec: ``"uniform"``, ``"logit_normal:m,s"`` (``s > 0``) or ``"power:k"`` (``k > 0``).
    """

    def __init__(self, spec: str = "uniform"):
        self.kind, self.params = self.parse(spec)
        self.spec = self.canonical()

    @staticmethod
    def parse(spec: str) -> tuple:
        """``spec -> (kind, params)``; ``ValueError`` naming the accepted forms."""
        if not isinstance(spec, str):
            raise ValueError(f"time_sampling must be a string, got {type(spec).__name__}")
        s = spec.strip().lower()
        forms = "'uniform', 'logit_normal:M,S' (S > 0) or 'power:K' (K > 0)"
        name, _, arg = s.partition(":")
        try:
            if name == "uniform" and not arg:
                return "uniform", ()
            if name == "logit_normal":
                m, sd = (float(v) for v in (arg or "0,1").split(","))
                if not (math.isfinite(m) and math.isfinite(sd) and sd > 0):
                    raise ValueError
                return "logit_normal", (m, sd)
            if name == "power" and arg:
                k = float(arg)
                if not (math.isfinite(k) and k > 0):
                    raise ValueError
                return "power", (k,)
        except ValueError:
            pass
        raise ValueError(f"time_sampling must be {forms}, got {spec!r}")

    def canonical(self) -> str:
        if self.kind == "uniform":
            return "uniform"
        if self.kind == "logit_normal":
            return f"logit_normal:{self.params[0]:g},{self.params[1]:g}"
        return f"power:{self.params[0]:g}"

    def __repr__(self) -> str:
        return f"TimeSampler({self.spec!r})"

    def quantile(self, q: torch.Tensor) -> torch.Tensor:
        """``τ`` at probability ``q ∈ [0, 1]`` (elementwise)."""
        if self.kind == "uniform":
            return q.clone()
        if self.kind == "power":
            return q.pow(1.0 / self.params[0])
        m, s = self.params
        return torch.sigmoid(m + s * torch.special.ndtri(q))

    def cdf(self, x: torch.Tensor) -> torch.Tensor:
        """``P(τ ≤ x)`` for ``x ∈ [0, 1]``."""
        x = x.clamp(0.0, 1.0)
        if self.kind == "uniform":
            return x.clone()
        if self.kind == "power":
            return x.pow(self.params[0])
        m, s = self.params
        return torch.special.ndtr((torch.logit(x) - m) / s)

    def sample(self, path: ProbabilityPath, batch: int, generator: Optional[torch.Generator] = None,
               dtype: Optional[torch.dtype] = None, device=None) -> torch.Tensor:
        """``(B,)`` training times for ``path``."""
        if self.kind == "uniform":
            return path.sample_time(batch, generator, dtype=dtype, device=device)
        _check_batch_size(batch)
        u = torch.rand(batch, generator=generator, dtype=dtype or torch.get_default_dtype(), device=device)
        tau = self.quantile(u.double()).to(u.dtype).clamp_(0.0, 1.0)
        t = path.t_eps + (path.T - path.t_eps) * tau
        return t.clamp_(max=path.T)

    def expectation(self, fn: Callable[[torch.Tensor], torch.Tensor], path: ProbabilityPath,
                    nodes: int = 4096) -> float:
        """``E[fn(t)]`` under this density (midpoint rule in the probability ``q``; float64)."""
        q = (torch.arange(nodes, dtype=torch.float64) + 0.5) / nodes
        t = path.t_eps + (path.T - path.t_eps) * self.quantile(q)
        return float(fn(t).mean())


def _atom_weight(path: KacPath, t: torch.Tensor) -> torch.Tensor:
    """``1 - e^{-a g(t)}`` (``-expm1``: accurate at small t)."""
    return -torch.expm1(-path.a * path.g(t))


def loss_weight(path: ProbabilityPath, t: torch.Tensor, weighting: str = "none",
                sampler: Optional[TimeSampler] = None) -> torch.Tensor:
    """Per-sample loss weights ``(B,)`` at times ``t``, normalised to mean 1 under ``sampler``'s density.

    ``none``: ones. ``atom`` (:class:`~kacnum.flows.paths.KacPath` only): ``(1 - e^{-a g(t)}) / Z``,
    ``Z = E_t[1 - e^{-a g(t)}]`` (uniform t, ``g = t``: ``Z = 1 - (1 - e^{-aT})/(aT)``).
    """
    if weighting not in LOSS_WEIGHTINGS:
        raise ValueError(f"weighting must be one of {LOSS_WEIGHTINGS}, got {weighting!r}")
    if weighting == "none":
        return torch.ones_like(t)
    if not isinstance(path, KacPath):
        raise ValueError(f"weighting 'atom' needs a KacPath (it weights by the atom mass), got {type(path).__name__}")
    sampler = sampler or TimeSampler("uniform")
    z = sampler.expectation(lambda s: _atom_weight(path, s), path)
    return (_atom_weight(path, t.double()) / z).to(t.dtype)


# ------------------------------------------------------------------------------------------------
# the losses


class _PathLoss:
    """Shared machinery: time and noise draws, label dropout, per-sample squared error."""

    target_name = "u_t"

    def __init__(self, path: ProbabilityPath, p_uncond: float = 0.1, null_label: Optional[int] = None,
                 reduction: str = "mean", data_sigma: float = 0.0, time_sampling: str = "uniform",
                 weighting: str = "none"):
        if not isinstance(path, ProbabilityPath):
            raise ValueError(f"path must be a kacnum.flows.paths.ProbabilityPath, got {type(path).__name__}")
        self.path = path
        self.p_uncond = check_in_range("p_uncond", p_uncond, 0.0, 1.0)
        if null_label is not None and (isinstance(null_label, bool) or not isinstance(null_label, int)):
            raise ValueError(f"null_label must be an integer or None, got {null_label!r}")
        self.null_label = null_label
        if reduction not in ("mean", "sum"):
            raise ValueError(f"reduction must be 'mean' or 'sum', got {reduction!r}")
        self.reduction = reduction
        self.data_sigma = _check_data_sigma(data_sigma)
        self.time_sampler = TimeSampler(time_sampling)
        if weighting not in LOSS_WEIGHTINGS:
            raise ValueError(f"weighting must be one of {LOSS_WEIGHTINGS}, got {weighting!r}")
        if weighting == "atom" and not isinstance(path, KacPath):
            raise ValueError(f"weighting 'atom' needs a KacPath (it weights by the atom mass), got "
                             f"{type(path).__name__}")
        self.weighting = weighting
        self._wz = None
        if weighting == "atom":
            self._wz = self.time_sampler.expectation(lambda s: _atom_weight(path, s), path)

    @property
    def plain(self) -> bool:
        """True when every teacher-training option is at its default (the plain loss)."""
        return self.data_sigma == 0.0 and self.time_sampler.kind == "uniform" and self.weighting == "none"

    def __repr__(self) -> str:
        extra = "" if self.plain else (f", data_sigma={self.data_sigma:g}, time_sampling={self.time_sampler.spec!r}, "
                                       f"weighting={self.weighting!r}")
        return (f"{type(self).__name__}(path={self.path!r}, p_uncond={self.p_uncond:g}, "
                f"null_label={self.null_label!r}, reduction={self.reduction!r}{extra})")

    def _target(self, sample: PathSample) -> torch.Tensor:
        raise NotImplementedError

    def weight(self, t: torch.Tensor) -> Optional[torch.Tensor]:
        """``(B,)`` loss weights at ``t`` (None for ``weighting="none"``)."""
        if self.weighting == "none":
            return None
        return (_atom_weight(self.path, t.double()) / self._wz).to(t.dtype)

    def _drop_labels(self, model, y, batch: int, generator, device):
        if y is None:
            return None, None
        if not torch.is_tensor(y) or y.shape != (batch,) or y.is_floating_point() or y.dtype == torch.bool:
            raise ValueError(f"y must be a ({batch},) integer tensor of labels or None")
        if self.p_uncond == 0.0:
            return y, torch.zeros(batch, dtype=torch.bool, device=y.device)
        null = self.null_label if self.null_label is not None else getattr(model, "null_label", None)
        if null is None:
            raise ValueError("null_label must be given (or the model must have a .null_label) when labels "
                             "are dropped (p_uncond > 0)")
        drop = torch.rand(batch, generator=generator, device=device) < self.p_uncond
        drop = drop.to(y.device)
        return torch.where(drop, torch.full_like(y, int(null)), y), drop

    def __call__(self, model: Callable, x0: torch.Tensor, y: Optional[torch.Tensor] = None,
                 generator: Optional[torch.Generator] = None, t: Optional[torch.Tensor] = None) -> dict:
        """Loss of ``model(x, t, y)`` on a batch.

        Args:
            model: ``model(x_t, t, y) -> (B, ...)`` with ``x_t: (B, ...)``, ``t: (B,)``, ``y: (B,)`` long
                or ``None`` (unconditional).
            x0: ``(B, ...)`` data. y: ``(B,)`` integer labels or ``None``.
            generator: one ``torch.Generator`` (on ``x0``'s device) for every draw of this call.
            t: ``(B,)`` times to use instead of drawing them (e.g. a fixed grid for evaluation).

        Returns:
            dict with ``"loss"`` (scalar: mean, or sum, over the batch of ``weight · per_sample``),
            ``"per_sample"`` ``(B,)`` = ``mean over coordinates of (pred - target)²``
            (``(1/d) ‖pred - target‖²``, unweighted), ``"weight"`` ``(B,)`` or ``None`` (no weighting),
            ``"t"`` ``(B,)``, ``"y"`` the labels given to the model (``None`` if unconditional),
            ``"dropped"`` ``(B,)`` bool or ``None``, ``"sample"`` the :class:`PathSample` (its ``x0`` is
            the smoothed data when ``data_sigma > 0``), ``"pred"`` the model output.
        """
        if not torch.is_tensor(x0) or x0.dim() < 1 or x0.shape[0] < 1:
            raise ValueError("x0 must be a tensor of shape (B, ...) with B >= 1")
        batch = x0.shape[0]
        if t is None:
            t = self.time_sampler.sample(self.path, batch, generator, dtype=x0.dtype, device=x0.device)
        if self.data_sigma > 0:
            x0 = x0 + self.data_sigma * torch.randn(x0.shape, generator=generator, dtype=x0.dtype, device=x0.device)
        sample = self.path.sample(x0, t, generator)
        y_in, dropped = self._drop_labels(model, y, batch, generator, x0.device)
        pred = model(sample.x_t, sample.t, y_in)
        target = self._target(sample)
        if not torch.is_tensor(pred) or pred.shape != target.shape:
            got = tuple(pred.shape) if torch.is_tensor(pred) else type(pred).__name__
            raise ValueError(f"model output must have x0's shape {tuple(target.shape)}, got {got}")
        per_sample = (pred - target).pow(2).reshape(batch, -1).mean(dim=1)
        w = self.weight(sample.t)
        weighted = per_sample if w is None else per_sample * w.to(per_sample.dtype)
        loss = weighted.mean() if self.reduction == "mean" else weighted.sum()
        return {"loss": loss, "per_sample": per_sample, "weight": w, "t": sample.t, "y": y_in,
                "dropped": dropped, "sample": sample, "pred": pred}


class FlowMatchingLoss(_PathLoss):
    """Conditional flow matching ``E_{t, x0, noise} w(t) (1/d) ‖u_θ(x_t, t, y') - u_t‖²`` (docs/mathematics.md §4).

    Args:
        path: any :class:`~kacnum.flows.paths.ProbabilityPath` (Kac, Gaussian, VP); the target is
            ``PathSample.u_t``.
        p_uncond: probability of replacing a label by ``null_label`` (classifier-free guidance
            training, docs/mathematics.md §5; default 0.1). Ignored for unconditional calls (``y=None``).
        null_label: the label meaning "unconditional"; ``None`` uses ``model.null_label``.
        reduction: ``"mean"`` (default) or ``"sum"`` over the batch.
        data_sigma: data smoothing ``x0 + σ ε`` before the path (default 0: off).
        time_sampling: ``"uniform"`` (default), ``"logit_normal:m,s"`` or ``"power:k"`` (:class:`TimeSampler`).
        weighting: ``"none"`` (default) or ``"atom"`` (Kac paths; :func:`loss_weight`).
    """

    def _target(self, sample: PathSample) -> torch.Tensor:
        return sample.u_t


class EpsilonLoss(_PathLoss):
    """ε-prediction ``E (1/d) ‖ε_θ(x_t, t, y') - ε‖²`` for the VP diffusion baseline (docs/mathematics.md §9), or
    v-prediction ``E (1/d) ‖v_θ(x_t, t, y') - v‖²`` with ``v = α ε - σ x0`` (``prediction="v"``).

    ``prediction="eps"`` (default): the model predicts the Gaussian noise ``PathSample.noise``; sample it
    with ``solvers.ddim_sample(model, x, path.alpha_bar, time_grid)`` or integrate
    ``path.velocity_field(model)``. ``path`` must be a :class:`~kacnum.flows.paths.VPPath` or a
    :class:`~kacnum.flows.paths.GaussianPath` (Gaussian noise).

    ``prediction="v"`` (:class:`~kacnum.flows.paths.VPPath` only; Salimans & Ho 2022): with
    ``x_t = α x0 + σ ε`` (``α = sqrt(ᾱ(t))``, ``σ = sqrt(1 - ᾱ(t))``) the target is
    ``v = α ε - σ x0`` (:func:`vp_v_target`, from the sample's ``noise``, (smoothed) ``x0`` and ``t``);
    then ``ε = σ x_t + α v`` and ``x0 = α x_t - σ v``. Unlike the data prediction of an ε-model,
    ``x̂0 = (x_t - σ ε̂)/α``, neither divides by ``α``, so the network's error is not amplified at low SNR.
    Wrap the trained v-network in :class:`VToEps` to get an ε-model for the samplers.

    Other arguments as :class:`FlowMatchingLoss` (``weighting="atom"`` is refused: no atoms). The
    per-sample error is the mean over coordinates, as for ε.
    """

    target_name = "noise"

    def __init__(self, path: ProbabilityPath, p_uncond: float = 0.1, null_label: Optional[int] = None,
                 reduction: str = "mean", data_sigma: float = 0.0, time_sampling: str = "uniform",
                 weighting: str = "none", prediction: str = "eps"):
        if not isinstance(path, (VPPath, GaussianPath)):
            raise ValueError(f"path must be a VPPath or GaussianPath (Gaussian noise), got {type(path).__name__}")
        if prediction not in VP_PREDICTIONS:
            raise ValueError(f"prediction must be one of {VP_PREDICTIONS}, got {prediction!r}")
        if prediction == "v" and not isinstance(path, VPPath):
            raise ValueError(f"prediction 'v' (v = alpha eps - sigma x0) needs a VPPath, got {type(path).__name__}")
        super().__init__(path, p_uncond, null_label, reduction, data_sigma, time_sampling, weighting)
        self.prediction = prediction
        if prediction == "v":
            self.target_name = "v"

    def __repr__(self) -> str:
        base = super().__repr__()
        return base if self.prediction == "eps" else base[:-1] + f", prediction={self.prediction!r})"

    def _target(self, sample: PathSample) -> torch.Tensor:
        if self.prediction == "v":
            return vp_v_target(self.path, sample.x0, sample.noise, sample.t)
        return sample.noise


# ------------------------------------------------------------------------------------------------
# marginal scales and the preconditioned model


def kac_velocity_second_moment(process, g: Union[float, torch.Tensor], panels: int = 16,
                               nodes: int = 8) -> torch.Tensor:
    """``E[v(g, K_g)²]`` of the 1D Kac process (float64, ``g``'s shape): ``c² e^{-a g}`` from the atoms
    (``v = ±c``) plus ``2 ∫_0^{cg} p(g, y) v(g, y)² dy`` over the open cone by composite Gauss–Legendre
    (``panels`` x ``nodes``) on ``[0, min(cg, 12 std(K_g))]`` (the integrand is smooth there; beyond
    12 standard deviations its mass is below ``e^{-72}``). ``g = 0`` gives ``c²``."""
    from kacnum.processes.kac import kac_density_scaled

    a, c = process.a, process.c
    g = torch.as_tensor(g, dtype=torch.float64)
    shape = g.shape
    gf = g.reshape(-1)
    if bool((gf < 0).any()) or not bool(torch.isfinite(gf).all()):
        raise ValueError("g must be finite and >= 0")
    atoms = c * c * torch.exp(-a * gf)
    sd = torch.sqrt(process.variance(gf))
    upper = torch.minimum(c * gf, 12.0 * sd)
    gl_x, gl_w = _gauss_legendre_nodes(nodes, torch.float64, "cpu")
    h = (upper / panels)[:, None, None]
    left = torch.arange(panels, dtype=torch.float64)[None, :, None] * h
    y = left + h * (gl_x[None, None, :] + 1.0) * 0.5  # (N, P, Q) on [0, upper)
    gb = gf[:, None, None]
    p = kac_density_scaled(a, c, gb, y)
    v = process.velocity(gb.expand_as(y), y, torch.zeros_like(y, dtype=torch.bool))
    inner = 2.0 * (p * v * v * gl_w[None, None, :]).sum(dim=(1, 2)) * h[:, 0, 0] * 0.5
    return (atoms + torch.where(gf > 0, inner, torch.zeros_like(inner))).reshape(shape)


def _check_sigma_data(sigma_data) -> float:
    """``sigma_data``: the pooled standard deviation of the data, finite and ``>= 0``."""
    return float(check_in_range("sigma_data", sigma_data, 0.0, math.inf))


def _times64(t) -> torch.Tensor:
    return torch.as_tensor(t, dtype=torch.float64) if not torch.is_tensor(t) else t.detach().to(torch.float64)


def marginal_std(path: ProbabilityPath, t, sigma_data: float) -> torch.Tensor:
    """Pooled standard deviation of ``x_t`` over coordinates and data (float64, ``t``'s shape) when the
    data have pooled standard deviation ``sigma_data``: ``sqrt(f(t)² σ_data² + Var noise(t))``.

    Kac: ``Var K_{g(t)} = (c²/a)(g - (1 - e^{-2ag})/(2a))``; Gaussian: ``(t/T)²`` with ``f = 1 - t/T``;
    VP: ``1 - ᾱ`` with ``f = sqrt(ᾱ)``. The noise is independent of the data and has mean 0, so the
    pooled variance adds exactly (the data mean only shifts ``x_t``)."""
    s2 = _check_sigma_data(sigma_data) ** 2
    tt = _times64(t)
    if isinstance(path, KacPath):
        return torch.sqrt(path.f(tt) ** 2 * s2 + path.process.variance(path.g(tt)))
    if isinstance(path, (GaussianPath, VPPath)):
        return torch.sqrt(path.alpha(tt) ** 2 * s2 + path.sigma(tt) ** 2)
    raise ValueError(f"marginal_std supports KacPath, GaussianPath and VPPath, got {type(path).__name__}")


def target_std(path: ProbabilityPath, t, sigma_data: float) -> torch.Tensor:
    """Pooled standard deviation of the training target at ``t`` (float64, ``t``'s shape).

    Kac: ``u = f' x0 + g' v(g, K_g)`` with ``v`` odd and ``K`` symmetric and independent of ``x0``, so
    ``Var u = f'² σ_data² + g'² E[v²]`` (:func:`kac_velocity_second_moment`). Gaussian: ``u = (ε - x0)/T``,
    ``sqrt(1 + σ_data²)/T`` at every t. VP (ε-prediction): 1."""
    s2 = _check_sigma_data(sigma_data) ** 2
    tt = _times64(t)
    if isinstance(path, KacPath):
        df, dg = path.df(tt), path.dg(tt)
        return torch.sqrt(df * df * s2 + dg * dg * kac_velocity_second_moment(path.process, path.g(tt)))
    if isinstance(path, GaussianPath):
        return torch.full_like(tt, math.sqrt(1.0 + s2) / path.T)
    if isinstance(path, VPPath):
        return torch.ones_like(tt)
    raise ValueError(f"target_std supports KacPath, GaussianPath and VPPath, got {type(path).__name__}")


def path_spec(path: ProbabilityPath) -> dict:
    """A JSON-able description of ``path`` (:func:`path_from_spec` rebuilds it)."""
    if isinstance(path, KacPath):
        return {"kind": "kac", "a": path.a, "c": path.c, "T": path.T, "f": path.f_name, "g": path.g_name,
                "t_eps": path.t_eps}
    if isinstance(path, GaussianPath):
        return {"kind": "gaussian", "T": path.T, "t_eps": path.t_eps}
    if isinstance(path, VPPath):
        return {"kind": "vp", "beta_min": path.beta_min, "beta_max": path.beta_max, "T": path.T,
                "t_eps": path.t_eps}
    raise ValueError(f"path_spec supports KacPath, GaussianPath and VPPath, got {type(path).__name__}")


def path_from_spec(spec: dict) -> ProbabilityPath:
    """Inverse of :func:`path_spec`."""
    kind = spec.get("kind") if isinstance(spec, dict) else None
    if kind == "kac":
        return KacPath(spec["a"], spec["c"], spec["T"], f=spec["f"], g=spec["g"], t_eps=spec["t_eps"])
    if kind == "gaussian":
        return GaussianPath(T=spec["T"], t_eps=spec["t_eps"])
    if kind == "vp":
        return VPPath(spec["beta_min"], spec["beta_max"], T=spec["T"], t_eps=spec["t_eps"])
    raise ValueError(f"not a path spec (kind kac, gaussian or vp): {spec!r}")


class _ForwardsCheckInputs:
    """Mixin for wrappers of ``self.net``: ``check_inputs`` reads and writes the network's flag (``False``
    and a no-op when the network has none). List it before :class:`torch.nn.Module` in the bases."""

    @property
    def check_inputs(self) -> bool:
        return bool(getattr(self.net, "check_inputs", False))

    @check_inputs.setter
    def check_inputs(self, value: bool) -> None:
        if hasattr(self.net, "check_inputs"):
            self.net.check_inputs = value


class Preconditioned(_ForwardsCheckInputs, nn.Module):
    """EDM-style preconditioning of a velocity network by the path's marginal scales:

        model(x, t, y) = c_out(t) · net(c_in(t) · x, t, y),
        c_in(t)  = 1 / sqrt(f(t)² σ_data² + Var noise(t))          (:func:`marginal_std`)
        c_out(t) = std of the target at t (mode ``"inout"``; 1 for ``"in"``)   (:func:`target_std`)

    so the network sees inputs of unit scale and (``inout``) predicts a unit-scale output at every t;
    the wrapper is a plain velocity model for samplers, guidance and distillation (``config``,
    ``num_classes``, ``null_label``, ``T`` and ``check_inputs`` are the network's). The scales are
    computed in float64 from ``t`` on every call (for Kac ``c_out`` needs a 128-node quadrature per
    distinct row: negligible next to a UNet).

    Saving: ``state_dict()`` holds the network's weights under ``net.`` and this wrapper's settings
    (``mode``, ``sigma_data``, the path's :func:`path_spec`) as its extra state, so a checkpoint restores
    the same wrapper: ``Preconditioned(make_model(...), any_path, 1.0).load_state_dict(sd)`` takes the
    saved path and ``sigma_data``.

    Args:
        net: ``net(x, t, y)``. path: a Kac, Gaussian or VP path. sigma_data: pooled standard deviation of
        the (smoothed) training data. mode: ``"in"`` or ``"inout"``.
    """

    FORMAT = "kacnum.losses.Preconditioned/1"

    def __init__(self, net: nn.Module, path: ProbabilityPath, sigma_data: float, mode: str = "in"):
        super().__init__()
        self.net = net
        self._configure(path_spec(path), sigma_data, mode)

    def _configure(self, spec: dict, sigma_data: float, mode: str) -> None:
        if mode not in ("in", "inout"):
            raise ValueError(f"mode must be 'in' or 'inout', got {mode!r}")
        self.path = path_from_spec(spec)
        self.spec = dict(spec)
        self.sigma_data = _check_sigma_data(sigma_data)
        self.mode = mode

    def extra_repr(self) -> str:
        return f"mode={self.mode!r}, sigma_data={self.sigma_data:.4g}, path={self.path!r}"

    # -- the network's attributes -------------------------------------------------------------
    @property
    def config(self):
        return self.net.config

    @property
    def num_classes(self) -> int:
        return int(getattr(self.net, "num_classes", 0))

    @property
    def null_label(self):
        return getattr(self.net, "null_label", None)

    @property
    def T(self) -> float:
        return getattr(self.net, "T", self.path.T)

    # -- scales ------------------------------------------------------------------------------------
    def c_in(self, t) -> torch.Tensor:
        """``1 / std(x_t)`` (float64)."""
        return 1.0 / marginal_std(self.path, t, self.sigma_data)

    def c_out(self, t) -> torch.Tensor:
        """``std(u_t)`` for ``inout``, else ones (float64)."""
        tt = _times64(t)
        return target_std(self.path, tt, self.sigma_data) if self.mode == "inout" else torch.ones_like(tt)

    def _scale(self, fn, t: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
        # one quadrature per distinct time (sampling calls have one time for the whole batch)
        uniq, inv = torch.unique(t.detach(), return_inverse=True)
        s = fn(uniq.double().cpu()).to(device=like.device, dtype=like.dtype)[inv.to(like.device)]
        return s.reshape((like.shape[0],) + (1,) * (like.dim() - 1))

    def forward(self, x: torch.Tensor, t, y: Optional[torch.Tensor] = None) -> torch.Tensor:
        tt = t if torch.is_tensor(t) else torch.tensor(float(t), device=x.device)
        if tt.dim() == 0:
            tt = tt.expand(x.shape[0])
        out = self.net(x * self._scale(self.c_in, tt, x), t, y)
        if self.mode == "inout":
            out = out * self._scale(self.c_out, tt, out)
        return out

    # -- saving ------------------------------------------------------------------------------------
    def get_extra_state(self) -> dict:
        return {"format": self.FORMAT, "mode": self.mode, "sigma_data": self.sigma_data, "path": dict(self.spec)}

    def set_extra_state(self, state) -> None:
        if not isinstance(state, dict) or state.get("format") != self.FORMAT:
            raise ValueError(f"not the extra state of a {self.FORMAT} wrapper: {state!r}")
        self._configure(state["path"], state["sigma_data"], state["mode"])


# ------------------------------------------------------------------------------------------------
# v-prediction of the VP baseline


def _vp_scales(path: VPPath, t, like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``α(t), σ(t)`` of ``path`` computed in float64, cast to ``like``'s dtype and device, shaped
    ``(B, 1, ..., 1)`` for ``like: (B, ...)``; ``t`` a float, a 0-dim tensor or ``(B,)``."""
    tt = torch.as_tensor(t, dtype=torch.float64, device=like.device) if not torch.is_tensor(t) \
        else t.detach().to(device=like.device, dtype=torch.float64)
    if tt.dim() == 0:
        tt = tt.expand(like.shape[0])
    if tt.shape != (like.shape[0],):
        raise ValueError(f"t must be a number or a ({like.shape[0]},) tensor, got shape {tuple(tt.shape)}")
    shape = (like.shape[0],) + (1,) * (like.dim() - 1)
    a = path.alpha(tt).to(like.dtype).reshape(shape)
    s = path.sigma(tt).to(like.dtype).reshape(shape)
    return a, s


def vp_v_target(path: VPPath, x0: torch.Tensor, noise: torch.Tensor, t) -> torch.Tensor:
    """The v-prediction target ``v = α(t) ε - σ(t) x0`` of ``x_t = α x0 + σ ε`` (``x0, noise: (B, ...)``,
    ``t``: ``(B,)`` or a number in ``(0, T]``)."""
    if not isinstance(path, VPPath):
        raise ValueError(f"the v target needs a VPPath, got {type(path).__name__}")
    if not torch.is_tensor(noise) or noise.shape != x0.shape:
        raise ValueError("noise must be a tensor of x0's shape")
    a, s = _vp_scales(path, t, x0)
    return a * noise - s * x0


class VToEps(_ForwardsCheckInputs, nn.Module):
    """A VP v-prediction network as an ε-model: ``model(x, t, y) = σ(t) x + α(t) net(x, t, y)``.

    With ``x_t = α x0 + σ ε`` and ``v = α ε - σ x0`` (``α² + σ² = 1``): ``σ x_t + α v = ε`` and
    ``α x_t - σ v = x0`` (:meth:`x0`). Exact algebra without division, so it is stable at both ends
    (``t → 0``: ``α → 1, σ → 0``; ``t = T``: ``α ≈ 0.0066``); ``α, σ`` are computed in float64 from ``t``
    and cast to ``x``'s dtype. Guidance in ε-space (``ε_∅ + s (ε_y - ε_∅)``) equals guidance in v-space,
    the map being affine in ``v`` with the same ``x``.

    Everything that samples a VP ε-model takes the wrapper unchanged: DDIM
    (:func:`kacnum.images.pipeline.sample_ddim_set`, :func:`kacnum.flows.solvers.ddim_sample`),
    ``path.velocity_field``, ``kacnum.images.train.sample_images(eps_model=True)``, the progressive
    distillation teacher. Attributes the samplers read (``config``, ``num_classes``, ``null_label``, ``T``,
    ``check_inputs``, ``nfe_per_call``, ...) are the network's. The wrapper has no parameters of its own
    (``state_dict()`` is the network's under ``net.``): save ``wrapper.net``, wrap at use.

    Args:
        net: ``net(x, t, y) -> v``, x's shape. path: the :class:`~kacnum.flows.paths.VPPath` it was trained on.
    """

    prediction = "v"

    def __init__(self, net: nn.Module, path: VPPath):
        super().__init__()
        if not isinstance(path, VPPath):
            raise ValueError(f"VToEps needs a VPPath, got {type(path).__name__}")
        if isinstance(net, VToEps):
            raise ValueError("net is already a VToEps wrapper (wrapping twice would convert twice)")
        self.net = net
        self.path = path

    def extra_repr(self) -> str:
        return f"path={self.path!r}"

    # -- the network's attributes -------------------------------------------------------------
    def __getattr__(self, name: str):
        try:
            return super().__getattr__(name)  # parameters, buffers, submodules (``net``)
        except AttributeError:
            net = self.__dict__.get("_modules", {}).get("net")
            if net is None or name.startswith("__"):
                raise
            return getattr(net, name)

    # -- conversions ---------------------------------------------------------------------------
    def v_to_eps(self, x: torch.Tensor, t, v: torch.Tensor) -> torch.Tensor:
        """``ε = σ(t) x + α(t) v``."""
        a, s = _vp_scales(self.path, t, x)
        return s * x + a * v

    def x0(self, x: torch.Tensor, t, y: Optional[torch.Tensor] = None) -> torch.Tensor:
        """The data prediction ``x̂0 = α(t) x - σ(t) v``."""
        a, s = _vp_scales(self.path, t, x)
        return a * x - s * self.net(x, t, y)

    def forward(self, x: torch.Tensor, t, y: Optional[torch.Tensor] = None) -> torch.Tensor:
        return self.v_to_eps(x, t, self.net(x, t, y))


# ------------------------------------------------------------------------------------------------
# held-out loss per bin of t

#: a fine bin at the data end, then ten equal bins (fractions of ``T``)
DEFAULT_T_BINS = ((0.0, 0.05),) + tuple((k / 10, (k + 1) / 10) for k in range(10))


def _outer_bins(bins: Sequence[tuple]) -> list[int]:
    """Indices of the bins not contained in another (different) bin of the list."""
    keep = []
    for i, (lo, hi) in enumerate(bins):
        if not any(j != i and lo2 <= lo and hi <= hi2 and (lo2, hi2) != (lo, hi) for j, (lo2, hi2) in enumerate(bins)):
            keep.append(i)
    return keep


@torch.no_grad()
def binned_loss(model: Callable, path: ProbabilityPath, images: torch.Tensor, labels: Optional[torch.Tensor] = None,
                *, bins: Sequence[tuple] = DEFAULT_T_BINS, max_images: Optional[int] = None, seed: int = 0,
                batch_size: int = 250, data_sigma: float = 0.0, device=None, prediction: str = "eps") -> dict:
    """Held-out loss per bin of t: the mean squared error ``(1/d) ‖model(x_t, t, y) - target‖²`` against the
    conditional target (``u_t``; for a VP path the noise, or ``v = α ε - σ x0`` with ``prediction="v"``:
    the raw v-network's own target, :class:`EpsilonLoss`) on ``images`` (use the test split).

    Bin ``k = (lo, hi)`` (fractions of ``T``): every image gets ``t = t_eps + (T - t_eps)(lo + (hi - lo) U)``,
    ``U ~ U[0, 1)``, then the path noise (and the data smoothing ``data_sigma``), all from a generator
    seeded with ``(seed, k)`` alone, so every model evaluated on the same path sees the same ``t`` and
    noise (common random numbers: differences between models are not noise of the draw). Labels are
    given as they are (no dropout). ``model`` is switched to eval mode for the call.

    Returns ``{"bins": [{"lo", "hi", "t_mid", "mse", "se" (standard error over images), "target_ms"
    (mean square of the target), "relative" (mse / target_ms), "atom_fraction" (share of coordinates
    on a Kac atom; None for other paths), "n"}], "mean": width-weighted mean mse over the bins not nested
    in another (the deciles by default: the uniform-t loss), "seed", "n_images", "data_sigma", "target"
    (``"u_t"``, ``"noise"`` or ``"v"``)}``.
    """
    if not torch.is_tensor(images) or images.dim() < 2:
        raise ValueError("images must be a (N, ...) tensor")
    n = images.shape[0] if max_images is None else min(int(max_images), images.shape[0])
    if n < 1:
        raise ValueError("need at least one image")
    if not bins:
        raise ValueError("bins must hold at least one (lo, hi) pair")
    for lo, hi in bins:
        if not (0.0 <= lo < hi <= 1.0):
            raise ValueError(f"bins must be (lo, hi) with 0 <= lo < hi <= 1 (fractions of T), got {(lo, hi)}")
    if device is None:
        p = next(model.parameters(), None) if isinstance(model, nn.Module) else None
        device = p.device if p is not None else torch.device("cpu")
    device = torch.device(device)
    if isinstance(path, VPPath):  # validates prediction
        loss_fn = EpsilonLoss(path, p_uncond=0.0, data_sigma=data_sigma, prediction=prediction)
    elif prediction != "eps":
        raise ValueError(f"prediction {prediction!r} is what a VP network predicts: it needs a VPPath, "
                         f"got {type(path).__name__}")
    else:
        loss_fn = FlowMatchingLoss(path, p_uncond=0.0, data_sigma=data_sigma)
    was = model.training if isinstance(model, nn.Module) else None
    if was is not None:
        model.eval()
    rows = []
    try:
        for k, (lo, hi) in enumerate(bins):
            gen = torch.Generator(device=device).manual_seed(int(seed) * 1_000_003 + k)
            errs, tms, atoms = [], [], []
            for s in range(0, n, batch_size):
                e = min(n, s + batch_size)
                x0 = images[s:e].to(device=device, dtype=torch.float32)
                y = None if labels is None else labels[s:e].to(device)
                u = torch.rand(e - s, generator=gen, device=device)
                t = (path.t_eps + (path.T - path.t_eps) * (lo + (hi - lo) * u)).clamp_(max=path.T)
                out = loss_fn(model, x0, y, generator=gen, t=t)
                errs.append(out["per_sample"].double().cpu())
                tgt = loss_fn._target(out["sample"])
                tms.append(tgt.double().pow(2).reshape(e - s, -1).mean(1).cpu())
                if out["sample"].atom_mask is not None:
                    atoms.append(out["sample"].atom_mask.double().reshape(e - s, -1).mean(1).cpu())
            err, tm = torch.cat(errs), torch.cat(tms)
            mse = float(err.mean())
            rows.append({"lo": lo * path.T, "hi": hi * path.T, "t_mid": 0.5 * (lo + hi) * path.T, "mse": mse,
                         "se": float(err.std() / math.sqrt(n)) if n > 1 else float("nan"),
                         "target_ms": float(tm.mean()), "relative": mse / float(tm.mean()) if float(tm.mean()) > 0
                         else float("nan"),
                         "atom_fraction": float(torch.cat(atoms).mean()) if atoms else None, "n": n})
    finally:
        if was is not None:
            model.train(was)
    outer = _outer_bins(list(bins))
    widths = [bins[i][1] - bins[i][0] for i in outer]
    mean = sum(w * rows[i]["mse"] for w, i in zip(widths, outer)) / sum(widths)
    return {"bins": rows, "mean": mean, "seed": int(seed), "n_images": n, "data_sigma": float(data_sigma),
            "target": loss_fn.target_name}
