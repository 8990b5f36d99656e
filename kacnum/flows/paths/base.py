"""What every probability path shares: :class:`PathSample`, the :class:`ProbabilityPath` interface, and the
checks and chunking of the finite-data exact fields (docs/mathematics.md §4).

Time runs from the data at ``t = 0`` to the latent at ``t = T``; samplers integrate ``dx/dt`` from
``T`` down to ``t_min``.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional, Sequence, Tuple, Union

import torch

from kacnum.core.checks import check_finite, check_in_range
from kacnum.flows.grids import uniform_grid

__all__ = ["PathSample", "ProbabilityPath", "TimeLike"]

TimeLike = Union[float, int, torch.Tensor]

#: elements (rows x support points x dims) handled per chunk by the exact fields
_CPU_CHUNK = 2 ** 16
_CUDA_CHUNK = 2 ** 24


@dataclass(frozen=True)
class PathSample:
    """One draw from a probability path.

    Attributes:
        x_t: ``(B, ...)`` point on the path at time ``t``.
        u_t: ``(B, ...)`` conditional target velocity ``dx/dt`` at ``(x_t, t | x0)``.
        t: ``(B,)`` times, in ``x0``'s dtype and device.
        x0: ``(B, ...)`` the data.
        noise: ``(B, ...)`` the noise draw: ``K_{g(t)}`` for Kac, ``ε`` for Gaussian/VP (the ε-loss target).
        atom_mask: ``(B, ...)`` bool, Kac only: True where the Kac coordinate has not switched
            (``noise = ±c g(t)``); ``None`` for the Gaussian paths.
    """

    x_t: torch.Tensor
    u_t: torch.Tensor
    t: torch.Tensor
    x0: torch.Tensor
    noise: torch.Tensor
    atom_mask: Optional[torch.Tensor] = None


# ------------------------------------------------------------------------------------------------
# input handling shared by the paths


def _per_row(v: torch.Tensor, ndim: int) -> torch.Tensor:
    """``(B,)`` -> ``(B, 1, ..., 1)`` with ``ndim`` dims in all."""
    return v.reshape((v.shape[0],) + (1,) * (ndim - 1))


def _check_data(name: str, x: torch.Tensor) -> torch.Tensor:
    if not torch.is_tensor(x):
        raise ValueError(f"{name} must be a torch.Tensor of shape (B, ...), got {type(x).__name__}")
    if x.dim() < 1 or x.shape[0] < 1:
        raise ValueError(f"{name} must have shape (B, ...) with B >= 1, got {tuple(x.shape)}")
    if not x.is_floating_point():
        raise ValueError(f"{name} must be a floating tensor, got dtype {x.dtype}")
    return check_finite(name, x)


def _check_noise(x0: torch.Tensor, noise: torch.Tensor) -> None:
    """A noise draw must be a tensor of the data's shape."""
    if not torch.is_tensor(noise) or noise.shape != x0.shape:
        raise ValueError(f"noise must be a tensor of x0's shape {tuple(x0.shape)}")


def _check_batch_size(batch_size) -> int:
    """A batch size: an integer ``>= 1`` (not a bool)."""
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be an integer >= 1, got {batch_size!r}")
    return batch_size


def _check_data_sigma(data_sigma) -> float:
    """``data_sigma``: the standard deviation of the Gaussian around each data point, finite and ``>= 0``."""
    return check_in_range("data_sigma", data_sigma, 0.0, math.inf)


class ProbabilityPath:
    """Base class: data at ``t = 0``, latent at ``t = T``; samplers integrate from ``T`` to ``t_min``.

    Subclasses implement :meth:`sample`, :meth:`conditional_velocity`, :meth:`sample_latent`,
    :meth:`speed_bound`, :meth:`exact_velocity` and :meth:`mixture_log_density`.

    Attributes:
        T: time horizon (latent time).
        t_eps: training times are drawn from ``U[t_eps, T)`` by :meth:`sample_time`.
        t_min_default: end of :meth:`default_time_grid` when ``t_min`` is not given.
        t_open_at_zero: True when ``t = 0`` is not allowed (VP: ``1 - ᾱ(0) = 0`` divides).
    """

    T: float = 1.0
    t_eps: float = 0.0
    t_min_default: float = 0.0
    t_open_at_zero: bool = False

    # -------------------------------------------------------------------------------- time
    def _times(self, t: TimeLike, batch: int, like: torch.Tensor, name: str = "t",
               open_at_zero: Optional[bool] = None) -> torch.Tensor:
        """``t`` (float, 0-dim or ``(B,)``) -> ``(B,)`` in ``like``'s dtype/device, checked in ``[0, T]``."""
        tt = torch.as_tensor(t, dtype=like.dtype, device=like.device) if not torch.is_tensor(t) \
            else t.to(dtype=like.dtype, device=like.device)
        if tt.dim() == 0:
            tt = tt.expand(batch)
        if tt.shape != (batch,):
            raise ValueError(f"{name} must be a float or a tensor of shape ({batch},), got {tuple(tt.shape)}")
        check_finite(name, tt)
        open0 = self.t_open_at_zero if open_at_zero is None else open_at_zero
        if tt.numel() and (bool((tt > self.T).any()) or bool((tt < 0).any()) or (open0 and bool((tt <= 0).any()))):
            lo = "(0" if open0 else "[0"
            raise ValueError(f"{name} must lie in {lo}, {self.T:g}] (T); got values in "
                             f"[{float(tt.min()):.6g}, {float(tt.max()):.6g}]")
        return tt

    def _check_t_eps(self, t_eps, open_at_zero: bool = False) -> float:
        """``t_eps`` in ``[0, T)`` (``(0, T)`` when ``open_at_zero``); ``self.T`` must be set."""
        value = check_in_range("t_eps", t_eps, 0.0, self.T)
        if open_at_zero and not 0.0 < value < self.T:
            raise ValueError(f"t_eps must lie in (0, T = {self.T:g}) (sigma(0) = 0), got {t_eps!r}")
        if value >= self.T:
            raise ValueError(f"t_eps must be < T = {self.T:g}, got {t_eps!r}")
        return value

    def sample_time(self, batch_size: int, generator: Optional[torch.Generator] = None,
                    dtype: Optional[torch.dtype] = None, device=None) -> torch.Tensor:
        """Training times ``t ~ U[t_eps, T)``: ``t = t_eps + (T - t_eps) U``, ``U ~ U[0, 1)``, shape ``(B,)``."""
        _check_batch_size(batch_size)
        u = torch.rand(batch_size, generator=generator, dtype=dtype or torch.get_default_dtype(),
                       device=device)
        return self.t_eps + (self.T - self.t_eps) * u

    def default_time_grid(self, n_steps: int, t_min: Optional[float] = None, dtype=torch.float64,
                          device=None) -> torch.Tensor:
        """Uniform decreasing grid ``T = t_0 > ... > t_N = t_min``, shape ``(n_steps + 1,)``.

        ``t_min`` defaults to ``t_min_default`` (0 for Kac and Gaussian, 1e-3 for VP).
        """
        t_min = self.t_min_default if t_min is None else t_min
        t_min = check_in_range("t_min", t_min, 0.0, self.T)
        if t_min >= self.T:
            raise ValueError(f"t_min must be < T = {self.T:g}, got {t_min!r}")
        if self.t_open_at_zero and t_min <= 0:
            raise ValueError(f"t_min must be > 0 for {type(self).__name__} (alpha_bar(0) = 1), got {t_min!r}")
        return uniform_grid(self.T, t_min, n_steps, dtype=dtype, device=device)

    # -------------------------------------------------------------------------------- finite data
    @staticmethod
    def _support_inputs(x: torch.Tensor, support: torch.Tensor, weights: Optional[torch.Tensor],
                        dtype=torch.float64) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Check and flatten: ``x (B, *D)``, ``support (n, *D)``, ``weights (n,)`` ->
        ``x (B, d)``, ``support (n', d)``, ``log w (n',)`` (normalised, zero weights dropped)."""
        _check_data("x", x)
        _check_data("support", support)
        if tuple(support.shape[1:]) != tuple(x.shape[1:]):
            raise ValueError(f"support must have shape (n, {', '.join(map(str, x.shape[1:]))}) to match "
                             f"x {tuple(x.shape)}, got {tuple(support.shape)}")
        xs = x.reshape(x.shape[0], -1).to(dtype)
        ss = support.reshape(support.shape[0], -1).to(dtype=dtype, device=x.device)
        if weights is None:
            logw = torch.full((ss.shape[0],), -math.log(ss.shape[0]), dtype=dtype, device=x.device)
            return xs, ss, logw
        if not torch.is_tensor(weights):
            weights = torch.as_tensor(weights)
        w = weights.to(dtype=dtype, device=x.device)
        if w.shape != (ss.shape[0],):
            raise ValueError(f"weights must have shape ({ss.shape[0]},) (one per support point), got {tuple(w.shape)}")
        check_finite("weights", w)
        if bool((w < 0).any()) or not float(w.sum()) > 0:
            raise ValueError("weights must be >= 0 with a positive sum")
        keep = w > 0
        w = w[keep] / w[keep].sum()
        return xs, ss[keep], torch.log(w)

    @staticmethod
    def _chunk(chunk_size: Optional[int], device) -> int:
        if chunk_size is None:
            return _CUDA_CHUNK if torch.device(device).type == "cuda" else _CPU_CHUNK
        if isinstance(chunk_size, bool) or not isinstance(chunk_size, int) or chunk_size < 1:
            raise ValueError(f"chunk_size must be an integer >= 1, got {chunk_size!r}")
        return chunk_size

    # -------------------------------------------------------------------------------- interface
    def sample(self, x0: torch.Tensor, t: TimeLike, generator: Optional[torch.Generator] = None) -> PathSample:
        """``x0: (B, ...)``, ``t: (B,)`` (or a float) -> :class:`PathSample` (``x_t``, ``u_t``, ``noise``, ...)."""
        raise NotImplementedError

    def conditional_velocity(self, x0: torch.Tensor, t: TimeLike, noise: torch.Tensor,
                             atom_mask: Optional[torch.Tensor] = None) -> torch.Tensor:
        """The target ``u_t`` from the data and the noise draw (what :meth:`sample` returns as ``u_t``)."""
        raise NotImplementedError

    def sample_latent(self, shape: Sequence[int], generator: Optional[torch.Generator] = None,
                      dtype: Optional[torch.dtype] = None, device=None) -> torch.Tensor:
        """A draw from the law at ``t = T`` (where it does not depend on the data)."""
        raise NotImplementedError

    def speed_bound(self, t: TimeLike, data_bound: float = 1.0):
        """Per-coordinate bound on ``|u_t|`` when ``|x0| <= data_bound`` (``inf`` if none)."""
        raise NotImplementedError

    def exact_velocity(self, x: torch.Tensor, t: TimeLike, support: torch.Tensor,
                       weights: Optional[torch.Tensor] = None, *, data_sigma: float = 0.0) -> torch.Tensor:
        """Exact marginal velocity ``E[u_t | x_t = x]`` for the data law ``Σ_i w_i δ_{support_i}``
        (``data_sigma = 0``) or the Gaussian mixture ``Σ_i w_i N(support_i, data_sigma² I)``:
        ``x: (B, *D)``, ``t``: float or ``(B,)``, ``support: (n, *D)``, ``weights: (n,)`` -> ``(B, *D)``."""
        raise NotImplementedError

    def mixture_log_density(self, x: torch.Tensor, t: TimeLike, support: torch.Tensor,
                            weights: Optional[torch.Tensor] = None, *, data_sigma: float = 0.0) -> torch.Tensor:
        """``log`` of the (continuous part of the) density of ``x_t`` for finite data: ``(B,)`` float64."""
        raise NotImplementedError
