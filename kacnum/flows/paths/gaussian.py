"""Gaussian-noise paths ``x_t = α(t) x0 + σ(t) ε``: rectified flow (:class:`GaussianPath`) and VP diffusion
(:class:`VPPath`), the baselines of docs/mathematics.md §9, with their exact finite-data fields (§4, §13).

For data ``x0 ~ Σ_i w_i N(s_i, σ_d² I)`` (``σ_d = 0``: the finite data set ``Σ_i w_i δ_{s_i}``) the posterior
of the data given ``x_t = x`` is closed form (:func:`gaussian_posterior_mean`); both fields are affine in
``E[x0 | x_t = x]``.
"""
from __future__ import annotations

import math
from typing import Optional, Sequence

import torch

from kacnum.core.checks import check_positive
from kacnum.flows.paths.base import (PathSample, ProbabilityPath, TimeLike, _check_data, _check_data_sigma,
                                     _check_noise, _per_row)

__all__ = ["GaussianPath", "VPPath", "gaussian_posterior_mean"]


def gaussian_posterior_mean(x: torch.Tensor, alpha: torch.Tensor, sigma: torch.Tensor, s: torch.Tensor,
                            logw: torch.Tensor, chunk: int, want_mean: bool = True, data_sigma: float = 0.0):
    """For ``x = alpha x0 + sigma ε``, ``x0 ~ Σ w_i N(s_i, data_sigma² I)`` (``data_sigma = 0``: the
    Dirac mixture ``Σ w_i δ_{s_i}``): ``(E[x0 | x] (B, d), log ρ(x) (B,))``.

    Given component ``i``, ``x ~ N(alpha s_i, v I)`` with ``v = alpha² data_sigma² + sigma²`` and
    ``E[x0 | x, i] = s_i + alpha data_sigma² / v · (x - alpha s_i)``. Posterior logits
    ``log w_i - |x - alpha s_i|² / (2 v)`` from direct differences (no ``|x|² - 2x·s + |s|²``
    cancellation), softmax per row. ``alpha, sigma: (B,)``.
    """
    B, d = x.shape
    n = s.shape[0]
    rows = max(1, chunk // max(n * d, 1))
    mean = torch.empty_like(x)
    logrho = torch.empty(B, dtype=x.dtype, device=x.device)
    for b0 in range(0, B, rows):
        b1 = min(B, b0 + rows)
        al = alpha[b0:b1]
        var = sigma[b0:b1] ** 2 + (al * data_sigma) ** 2
        diff = x[b0:b1, None, :] - al[:, None, None] * s[None]
        L = logw[None] - diff.pow(2).sum(dim=-1) / (2.0 * var[:, None])
        lse = torch.logsumexp(L, dim=1)
        logrho[b0:b1] = lse - 0.5 * d * (torch.log(var) + math.log(2.0 * math.pi))
        if want_mean:
            post = torch.softmax(L, dim=1)
            m = post @ s
            if data_sigma > 0:
                m = m + (al * data_sigma ** 2 / var)[:, None] * (post[..., None] * diff).sum(dim=1)
            mean[b0:b1] = m
    return mean, logrho


class _GaussianNoisePath(ProbabilityPath):
    """What the Gaussian-noise paths share: ``x_t = α(t) x0 + σ(t) ε`` with ``ε ~ N(0, I)``, the latent
    ``N(0, I)``, no speed bound, and the closed-form posterior of finite data. Subclasses give
    :meth:`alpha`, :meth:`sigma`, :meth:`conditional_velocity` and :meth:`exact_velocity`."""

    def alpha(self, t: TimeLike):
        raise NotImplementedError

    def sigma(self, t: TimeLike):
        raise NotImplementedError

    def sample(self, x0: torch.Tensor, t: TimeLike, generator: Optional[torch.Generator] = None) -> PathSample:
        """``ε ~ N(0, I)`` (one ``randn`` of ``x0``'s shape from ``generator``), ``x_t = α x0 + σ ε``;
        ``noise = ε`` (the ε-loss target) and ``u_t`` = :meth:`conditional_velocity`. ``t``: ``(B,)`` or a
        float in ``[0, T]`` (``(0, T]`` for VP)."""
        x0 = _check_data("x0", x0)
        t = self._times(t, x0.shape[0], x0)
        eps = torch.randn(x0.shape, generator=generator, dtype=x0.dtype, device=x0.device)
        tb = _per_row(t, x0.dim())
        x_t = self.alpha(tb) * x0 + self.sigma(tb) * eps
        return PathSample(x_t=x_t, u_t=self.conditional_velocity(x0, t, eps), t=t, x0=x0, noise=eps,
                          atom_mask=None)

    def sample_latent(self, shape: Sequence[int], generator: Optional[torch.Generator] = None,
                      dtype: Optional[torch.dtype] = None, device=None) -> torch.Tensor:
        """``N(0, I)`` of the given shape: the law at ``T`` (for VP up to ``sqrt(ᾱ(T)) x0``, 6.6e-3 x0 with
        the defaults)."""
        return torch.randn(tuple(shape), generator=generator, dtype=dtype, device=device)

    def speed_bound(self, t: TimeLike, data_bound: float = 1.0):
        """``inf``: Gaussian noise has unbounded speed."""
        return torch.full_like(t, math.inf) if torch.is_tensor(t) else math.inf

    def _posterior(self, x: torch.Tensor, t: TimeLike, support: torch.Tensor, weights: Optional[torch.Tensor],
                   data_sigma: float, chunk_size: Optional[int], want_mean: bool = True):
        """Checked inputs and the posterior at times in ``(0, T]``: ``(x (B, d) float64, t (B,), α (B,),
        σ (B,), E[x0 | x_t = x] (B, d), log ρ(x) (B,))``."""
        xs, s, logw = self._support_inputs(x, support, weights)
        t = self._times(t, x.shape[0], xs, open_at_zero=True)
        alpha, sigma = self.alpha(t), self.sigma(t)
        mean, logrho = gaussian_posterior_mean(xs, alpha, sigma, s, logw, self._chunk(chunk_size, x.device),
                                               want_mean=want_mean, data_sigma=_check_data_sigma(data_sigma))
        return xs, t, alpha, sigma, mean, logrho

    @torch.no_grad()
    def mixture_log_density(self, x: torch.Tensor, t: TimeLike, support: torch.Tensor,
                            weights: Optional[torch.Tensor] = None, *, data_sigma: float = 0.0,
                            chunk_size: Optional[int] = None) -> torch.Tensor:
        """``log Σ_i w_i N(x; α x^(i), (σ² + α² data_sigma²) I)``, ``t ∈ (0, T]``: ``(B,)`` float64."""
        return self._posterior(x, t, support, weights, data_sigma, chunk_size, want_mean=False)[5]


class GaussianPath(_GaussianNoisePath):
    """Rectified flow / Gaussian flow matching ``x_t = (1 - t/T) x0 + (t/T) ε``, target ``(ε - x0)/T`` (docs/mathematics.md §9).

    Args:
        T: horizon. t_eps: training times ``U[t_eps, T)`` (default 0).

    Latent ``N(0, I)`` exactly at ``T``; :meth:`speed_bound` is ``inf``. The exact field for finite
    data is ``u(t, x) = (x - E[x0 | x_t = x]) / t`` (the posterior over the support is a softmax of
    Gaussian log-likelihoods), defined for ``t > 0``.
    """

    t_min_default = 0.0

    def __init__(self, T: float = 1.0, t_eps: float = 0.0):
        self.T = check_positive("T", T)
        self.t_eps = self._check_t_eps(t_eps)

    def __repr__(self) -> str:
        return f"GaussianPath(T={self.T:g}, t_eps={self.t_eps:g})"

    def alpha(self, t: TimeLike):
        """Data scale ``1 - t/T``."""
        return 1.0 - t / self.T

    def sigma(self, t: TimeLike):
        """Noise scale ``t/T``."""
        return t / self.T

    def conditional_velocity(self, x0: torch.Tensor, t: TimeLike, noise: torch.Tensor,
                             atom_mask: Optional[torch.Tensor] = None) -> torch.Tensor:
        """``u = (ε - x0) / T`` (independent of ``t``)."""
        x0 = _check_data("x0", x0)
        _check_noise(x0, noise)
        return (noise - x0) / self.T

    @torch.no_grad()
    def exact_velocity(self, x: torch.Tensor, t: TimeLike, support: torch.Tensor,
                       weights: Optional[torch.Tensor] = None, *, data_sigma: float = 0.0,
                       chunk_size: Optional[int] = None) -> torch.Tensor:
        """``u(t, x) = (x - E[x0 | x_t = x]) / t`` for the data law ``Σ_i w_i δ_{x^(i)}`` (or, with
        ``data_sigma = σ > 0``, ``Σ_i w_i N(x^(i), σ² I)``: closed form, see :func:`gaussian_posterior_mean`);
        ``t ∈ (0, T]``.

        ``x: (B, *D)``, ``support: (n, *D)``, ``weights: (n,)``; float64 inside, ``x``'s dtype out.
        """
        xs, t, _, _, mean, _ = self._posterior(x, t, support, weights, data_sigma, chunk_size)
        return ((xs - mean) / t[:, None]).to(x.dtype).reshape(x.shape)


class VPPath(_GaussianNoisePath):
    """VP diffusion ``x_t = sqrt(ᾱ(t)) x0 + sqrt(1 - ᾱ(t)) ε`` trained with ε-prediction (docs/mathematics.md §9).

    Noise rate (linear in ``t/T``, so ``ᾱ`` depends on ``t/T`` only; ``T = 1`` is Song et al.'s VP-SDE):

        β(t) = (β_min + (β_max - β_min) t/T) / T,
        ∫_0^t β = β_min (t/T) + (β_max - β_min) (t/T)² / 2,      ᾱ(t) = exp(-∫_0^t β).

    With the defaults ``ᾱ(T) = e^{-10.05} ≈ 4.3e-5``: the latent is taken as ``N(0, I)``.

    Conditional path and targets (``m = sqrt(ᾱ)``, ``σ = sqrt(1 - ᾱ)``, ``m' = -β m/2``,
    ``σ' = β ᾱ/(2σ)``):

    * ``PathSample.noise`` is ``ε``: the target of the ε-loss (:class:`kacnum.flows.losses.EpsilonLoss`);
    * ``PathSample.u_t = m' x0 + σ' ε``, the velocity of the conditional path. Its conditional
      expectation is the probability-flow velocity ``dx/dt = -½ β(t) [x - ε̂(x, t)/σ(t)]``, with
      ``ε̂ = E[ε | x_t = x]`` (:meth:`eps_to_velocity`): since ``m E[x0|x] = x - σ ε̂`` and
      ``σ² + ᾱ = 1``, ``E[u_t | x] = -½β (x - σ ε̂) + βᾱ ε̂/(2σ) = -½β x + ½β ε̂/σ``.
      So an ε-model drives the same ODE solvers (through :meth:`eps_to_velocity`) and
      ``solvers.ddim_sample(eps_model, x, path.alpha_bar, time_grid)``.

    ``σ(0) = 0`` divides: times must lie in ``(0, T]``; training uses ``U[t_eps, T)`` with
    ``t_eps = 1e-5`` and sampling grids end at ``t_min = 1e-3`` by default (Song et al.'s choices).
    """

    t_min_default = 1e-3
    t_open_at_zero = True

    def __init__(self, beta_min: float = 0.1, beta_max: float = 20.0, T: float = 1.0, t_eps: float = 1e-5):
        self.beta_min = check_positive("beta_min", beta_min)
        self.beta_max = check_positive("beta_max", beta_max)
        if self.beta_max < self.beta_min:
            raise ValueError(f"beta_max must be >= beta_min = {self.beta_min:g}, got {beta_max!r}")
        self.T = check_positive("T", T)
        self.t_eps = self._check_t_eps(t_eps, open_at_zero=True)

    def __repr__(self) -> str:
        return f"VPPath(beta_min={self.beta_min:g}, beta_max={self.beta_max:g}, T={self.T:g}, t_eps={self.t_eps:g})"

    # -------------------------------------------------------------------------------- schedule
    def beta(self, t: TimeLike):
        """``β(t) = (β_min + (β_max - β_min) t/T) / T``."""
        return (self.beta_min + (self.beta_max - self.beta_min) * (t / self.T)) / self.T

    def integrated_beta(self, t: TimeLike):
        """``∫_0^t β = β_min (t/T) + (β_max - β_min)(t/T)²/2``."""
        u = t / self.T
        return self.beta_min * u + 0.5 * (self.beta_max - self.beta_min) * u * u

    def alpha_bar(self, t: TimeLike):
        """``ᾱ(t) = exp(-∫_0^t β)``; float in, float out (``solvers.ddim_sample``'s ``alpha_bar_fn``)."""
        b = self.integrated_beta(t)
        return torch.exp(-b) if torch.is_tensor(b) else math.exp(-b)

    def sigma(self, t: TimeLike):
        """``σ(t) = sqrt(1 - ᾱ(t))`` via ``expm1`` (accurate for small ``t``)."""
        b = self.integrated_beta(t)
        return torch.sqrt(-torch.expm1(-b)) if torch.is_tensor(b) else math.sqrt(-math.expm1(-b))

    def alpha(self, t: TimeLike):
        """``m(t) = sqrt(ᾱ(t)) = exp(-½ ∫β)``."""
        b = self.integrated_beta(t)
        return torch.exp(-0.5 * b) if torch.is_tensor(b) else math.exp(-0.5 * b)

    # -------------------------------------------------------------------------------- fields
    def eps_to_velocity(self, x: torch.Tensor, t: TimeLike, eps: torch.Tensor) -> torch.Tensor:
        """Probability-flow velocity of an ε-prediction: ``dx/dt = -½ β(t) [x - eps / σ(t)]``.

        ``x, eps: (B, ...)``, ``t``: float or ``(B,)`` in ``(0, T]``.
        """
        x = _check_data("x", x)
        if not torch.is_tensor(eps) or eps.shape != x.shape:
            raise ValueError(f"eps must be a tensor of x's shape {tuple(x.shape)}")
        t = _per_row(self._times(t, x.shape[0], x), x.dim())
        return -0.5 * self.beta(t) * (x - eps / self.sigma(t))

    def velocity_field(self, eps_model):
        """``field(x, t) = eps_to_velocity(x, t, eps_model(x, t))`` for ``kacnum.flows.solvers.integrate``."""

        def field(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
            return self.eps_to_velocity(x, t, eps_model(x, t))

        field.nfe_per_call = int(getattr(eps_model, "nfe_per_call", 1))
        return field

    def conditional_velocity(self, x0: torch.Tensor, t: TimeLike, noise: torch.Tensor,
                             atom_mask: Optional[torch.Tensor] = None) -> torch.Tensor:
        """``u = m'(t) x0 + σ'(t) ε = -½β m x0 + β ᾱ ε / (2σ)``, ``t ∈ (0, T]``."""
        x0 = _check_data("x0", x0)
        _check_noise(x0, noise)
        t = _per_row(self._times(t, x0.shape[0], x0), x0.dim())
        beta, m, sig = self.beta(t), self.alpha(t), self.sigma(t)
        return -0.5 * beta * m * x0 + 0.5 * beta * m * m / sig * noise

    def _exact_eps(self, x, t, support, weights, data_sigma, chunk_size):
        """``(x (B, d) float64, t (B,), σ (B,), ε̂ (B, d))`` with ``ε̂ = (x - m E[x0 | x]) / σ``."""
        xs, t, m, sig, mean, _ = self._posterior(x, t, support, weights, data_sigma, chunk_size)
        return xs, t, sig, (xs - m[:, None] * mean) / sig[:, None]

    @torch.no_grad()
    def exact_epsilon(self, x: torch.Tensor, t: TimeLike, support: torch.Tensor,
                      weights: Optional[torch.Tensor] = None, *, data_sigma: float = 0.0,
                      chunk_size: Optional[int] = None) -> torch.Tensor:
        """``ε̂(x, t) = E[ε | x_t = x] = (x - m E[x0 | x]) / σ`` for the data law ``Σ_i w_i δ_{x^(i)}``."""
        _, _, _, eps = self._exact_eps(x, t, support, weights, data_sigma, chunk_size)
        return eps.to(x.dtype).reshape(x.shape)

    @torch.no_grad()
    def exact_velocity(self, x: torch.Tensor, t: TimeLike, support: torch.Tensor,
                       weights: Optional[torch.Tensor] = None, *, data_sigma: float = 0.0,
                       chunk_size: Optional[int] = None) -> torch.Tensor:
        """Exact probability-flow velocity ``eps_to_velocity(x, t, exact_epsilon(x, t, ...))`` (float64 inside)."""
        xs, t, sig, eps = self._exact_eps(x, t, support, weights, data_sigma, chunk_size)
        u = -0.5 * self.beta(t)[:, None] * (xs - eps / sig[:, None])
        return u.to(x.dtype).reshape(x.shape)
