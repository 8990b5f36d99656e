"""Exact marginal velocities and log densities of a process path ``X_t = f(t) X0 + N_{g(t)}`` for finite data
(docs/mathematics.md §4), for Gaussian-mixture data (§13) and at sampled points with their atoms (§3–4, §14).

Each function takes the path (a :class:`~kacnum.flows.paths.process.ProcessPath`: its schedules, its noise
process and its per-block kernel, :mod:`kacnum.flows.paths.kernels`) and works on flattened float64 inputs
``x: (B, d)``, ``support: (n, d)``, normalised log weights ``(n,)``. Everything is in log space, chunked over
rows and support points.
"""
from __future__ import annotations

import math
from typing import Optional, Tuple

import torch

from kacnum.flows.paths.kernels import GM_WIDTH

__all__: list = []


def _gm_pass(path, x: torch.Tensor, t: torch.Tensor, mu: torch.Tensor, logw: torch.Tensor,
             sigma: float, velocity: bool, nodes: Optional[int] = None, width: float = GM_WIDTH,
             chunk: int = 2 ** 21) -> Tuple[torch.Tensor, Optional[torch.Tensor]]:
    """Log density ``(B,)`` and exact marginal velocity ``(B, d)`` of ``X_t = f X0 + N_g`` for Gaussian-mixture
    data ``X0 ~ Σ_k w_k N(μ_k, σ² I)`` (docs/mathematics.md §13), ``x: (B, d)`` float64, ``t: (B,)``, ``mu: (K, d)``.

    Per component the law factorises over the process's blocks: block ``b`` is the process's law at ``g``
    convolved with ``N(f μ_kb, s² I)``, ``s = f σ`` (``path._kernel.gm_block``: a 1D quadrature per
    coordinate for Kac, a radial one per pair for the flight; ``nodes`` defaults to the kernel's). Given the
    component and ``x``, the displacement ``y`` has the normalised weights of the quadrature terms, the
    velocity is ``f' X0 + g' u_N(g, y)`` with ``X0 = μ + (z - y)/f`` (``u_N`` the atom velocity on the atoms).
    Component posteriors from the product of block densities, all in log space. Rows with ``f(t) = 0``
    (the latent end) have a data-free law: the process's law at ``g`` and ``E[X0 | x] = Σ w_k μ_k``.
    """
    kern = path._kernel
    nodes = kern.gm_nodes if nodes is None else nodes
    a, c = path.a, path.c
    B, d = x.shape
    K = mu.shape[0]
    f, df, g, dg = path._row_schedules(t)
    lse = torch.empty(B, dtype=x.dtype, device=x.device)
    u = torch.empty_like(x) if velocity else None
    zero_f = f <= 0
    rows = max(1, chunk // max(K * d * (nodes + 2), 1))
    for b0 in range(0, B, rows):
        b1 = min(B, b0 + rows)
        fb = f[b0:b1]
        s = (fb.abs() * sigma).clamp_min(1e-300)[:, None, None]  # (R,1,1)
        cg = (c * g[b0:b1])[:, None, None]
        ag = (a * g[b0:b1])[:, None, None]
        z = x[b0:b1, None, :] - fb[:, None, None] * mu[None]  # (R,K,d)
        logH, Ed, Ev = kern.gm_block(z, s, cg, ag, nodes, width, velocity)
        logq = logH.sum(dim=-1) + logw[None]  # (R,K)
        lse[b0:b1] = torch.logsumexp(logq, dim=1)
        if velocity:
            X0 = mu[None] + sigma * Ed / s  # (R,K,d): E[X0 | x, k] = μ + σ E[ξ], s ξ = z - y
            post = torch.softmax(logq, dim=1)[..., None]  # (R,K,1)
            u[b0:b1] = df[b0:b1, None] * (post * X0).sum(dim=1) + dg[b0:b1, None] * (post * Ev).sum(dim=1)
    if bool(zero_f.any()):  # the latent end: the law does not depend on the data
        idx = zero_f.nonzero().squeeze(1)
        gz = g[idx][:, None]
        lp, v, _ = kern.logp_velocity_faces(x[idx], c * gz, a * gz)
        lse[idx] = lp.sum(dim=1) + (d // kern.block) * kern.log_const
        if velocity:
            mean = (torch.exp(logw)[:, None] * mu).sum(dim=0)
            u[idx] = df[idx, None] * mean[None] + dg[idx, None] * v
    return lse, u


#: the earlier name (Kac paths); the same function
_kac_gm_pass = _gm_pass


def _mixture_pass(path, x: torch.Tensor, t: torch.Tensor, s: torch.Tensor, logw: torch.Tensor,
                  chunk: int, bessel: str, velocity: bool):
    """The finite-data field where ``x`` lies in some open support, by an online log-sum-exp over support
    chunks. Returns ``(lse (B,), u (B, d) or None)`` where ``lse = log Σ_i w_i Π_b p(g, y_ib) - (d/block)
    log_const`` (``y_ib`` block ``b`` of ``x - f s_i``) and ``u`` the interior field (undefined where
    ``lse = -inf``)."""
    kern = path._kernel
    a, c = path.a, path.c
    B, d = x.shape
    n = s.shape[0]
    f, df, g, dg = path._row_schedules(t)
    cols = max(1, min(n, chunk // max(d, 1)))
    rows = max(1, chunk // (cols * d))
    lse = torch.empty(B, dtype=x.dtype, device=x.device)
    u = torch.empty_like(x) if velocity else None
    for b0 in range(0, B, rows):
        b1 = min(B, b0 + rows)
        xb = x[b0:b1, None, :]
        fb = f[b0:b1, None, None]
        cg = (c * g[b0:b1])[:, None, None]
        ag = (a * g[b0:b1])[:, None, None]
        m = torch.full((b1 - b0,), -math.inf, dtype=x.dtype, device=x.device)
        tot = torch.zeros_like(m)
        acc_s = torch.zeros(b1 - b0, d, dtype=x.dtype, device=x.device)
        acc_v = torch.zeros_like(acc_s)
        for n0 in range(0, n, cols):
            sc = s[n0:n0 + cols]
            lw = logw[n0:n0 + cols]
            y = xb - fb * sc[None]  # (R, C, d)
            # a pair (row, support point) counts only if x is inside that support in every block:
            # screen cheaply, then evaluate the densities densely or on the surviving pairs only
            pin = (kern.norm(y) < cg).all(dim=-1)  # (R, C)
            n_in = int(pin.sum())
            if n_in == 0:
                continue
            if n_in > 0.5 * pin.numel():
                lp, v = kern.logp_velocity(y, cg, ag, bessel)
                L = lp.sum(dim=-1) + lw[None]
                ri = ci = None
            else:
                ri, ci = pin.nonzero(as_tuple=True)
                lp, v = kern.logp_velocity(y[ri, ci], cg[ri, 0], ag[ri, 0], bessel)  # (P, d)
                L = torch.full(pin.shape, -math.inf, dtype=x.dtype, device=x.device)
                L[ri, ci] = lp.sum(dim=-1) + lw[ci]
            m_new = torch.maximum(m, L.max(dim=1).values)
            safe = torch.where(torch.isfinite(m_new), m_new, torch.zeros_like(m_new))
            old = torch.exp(m - safe)  # 0 while m = -inf
            e = torch.exp(L - safe[:, None])
            tot = tot * old + e.sum(dim=1)
            if velocity:
                if ri is None:
                    vsum = torch.bmm(e[:, None, :], v).squeeze(1)
                else:
                    vsum = torch.zeros_like(acc_v).index_add_(0, ri, e[ri, ci, None] * v)
                acc_s = acc_s * old[:, None] + e @ sc
                acc_v = acc_v * old[:, None] + vsum
            m = m_new
        ok = tot > 0
        lse[b0:b1] = torch.where(ok, m + torch.log(torch.where(ok, tot, torch.ones_like(tot))),
                                 torch.full_like(m, -math.inf))
        if velocity:
            den = torch.where(ok, tot, torch.ones_like(tot))[:, None]
            u[b0:b1] = df[b0:b1, None] * (acc_s / den) + dg[b0:b1, None] * (acc_v / den)
    return lse, u


def _fallback(path, x: torch.Tensor, t: torch.Tensor, s: torch.Tensor, logw: torch.Tensor,
              chunk: int, bessel: str) -> torch.Tensor:
    """Velocity at points that lie in no open support (see ``ProcessPath.exact_velocity``), ``x: (R, d)``.

    Pass 1 (cheap, all pairs): total excess ``D_i`` and number of face blocks ``k_i``.
    Pass 2 (selected pairs only, usually one per row): interior log densities and velocities.
    """
    kern = path._kernel
    a, c = path.a, path.c
    R, d = x.shape
    n = s.shape[0]
    f, df, g, dg = path._row_schedules(t)
    rows = max(1, min(R, 2 ** 20 // n))
    u = torch.empty_like(x)
    smax = s.abs().max()
    for r0 in range(0, R, rows):
        r1 = min(R, r0 + rows)
        xr, fr, gr = x[r0:r1], f[r0:r1], g[r0:r1]
        cg = (c * gr)[:, None, None]
        D = torch.empty(r1 - r0, n, dtype=x.dtype, device=x.device)
        K = torch.empty(r1 - r0, n, dtype=torch.long, device=x.device)
        cols = max(1, min(n, chunk // ((r1 - r0) * d)))
        for n0 in range(0, n, cols):
            excess = kern.norm(xr[:, None, :] - fr[:, None, None] * s[None, n0:n0 + cols]).sub_(cg)
            K[:, n0:n0 + cols] = (excess >= 0).sum(dim=-1)
            D[:, n0:n0 + cols] = excess.clamp_(min=0.0).sum(dim=-1)
        tol = 1e-12 * d * (c * gr + fr.abs() * smax + xr.abs().amax(dim=1) + 1.0)
        cand = D <= (D.min(dim=1).values + tol)[:, None]
        kmax = torch.where(cand, K, torch.full_like(K, -1)).max(dim=1).values
        ri, ci = (cand & (K == kmax[:, None])).nonzero(as_tuple=True)
        L = torch.full((r1 - r0, n), -math.inf, dtype=x.dtype, device=x.device)
        V = torch.empty(ri.shape[0], d, dtype=x.dtype, device=x.device)
        step = max(1, chunk // d)
        for p0 in range(0, ri.shape[0], step):
            rp, cp = ri[p0:p0 + step], ci[p0:p0 + step]
            y = xr[rp] - fr[rp, None] * s[cp]  # (P, d)
            lp, vp, face = kern.logp_velocity_faces(y, (c * gr[rp])[:, None], (a * gr[rp])[:, None], bessel)
            L[rp, cp] = lp.masked_fill_(face, 0.0).sum(dim=-1) + logw[cp]  # face blocks ride their atom
            V[p0:p0 + step] = vp
        w = torch.softmax(L, dim=1)  # (R', n): every row has >= 1 selected pair
        vsum = torch.zeros(r1 - r0, d, dtype=x.dtype, device=x.device).index_add_(0, ri, w[ri, ci, None] * V)
        u[r0:r1] = df[r0:r1, None] * (w @ s) + dg[r0:r1, None] * vsum
    return u


@torch.no_grad()
def _velocity_with_atoms(path, x: torch.Tensor, t: float, support: torch.Tensor,
                         atom_mask: torch.Tensor, weights: Optional[torch.Tensor] = None,
                         rel_tol: float = 1e-12, chunk: int = 2 ** 18) -> torch.Tensor:
    """Exact marginal velocity of a process path at sampled points, atoms included (docs/mathematics.md §3–4, §14).

    The law of ``X_t`` splits into strata: for a set ``m`` of blocks on their atoms (a face ``|y| = c g``
    for Kac, the circle for the flight), component ``i`` puts mass ``w_i A^{|m|} Π_{b∉m} p(g, y_ib)`` on the
    points with ``norm(y_ib) = c g`` (``b ∈ m``) and ``norm(y_ib) < c g`` (``b ∉ m``), ``y_i = x - f x^(i)``,
    ``A`` the atom density (``e^{-ag}/2`` per face point for Kac, ``e^{-λg}/(2π c g)`` per unit length of
    the circle), the same for every component, so it cancels. On a stratum the velocity is the average of
    the conditional velocities ``f' x^(i)_b + g' (atom velocity if b ∈ m else u_N(g, y_ib))`` with weights
    ``w_i Π_{b∉m} p(g, y_ib)`` over the components that reach ``x`` with the same face set.

    Args:
        path: the path; x: ``(B, d)`` samples at one time ``t`` (float); support: ``(n, d)``.
        atom_mask: ``(B, d)`` the sampler's mask (``PathSample.atom_mask``, equal within blocks): which
            blocks of each sample sit on their atom. A component counts on an atom block when
            ``| norm(y) - cg | <= tol`` (``tol = rel_tol (norm(x) + cg + norm(f x^(i)) + 1)``: other
            components' atoms through the same point, e.g. support points sharing a coordinate) and on the
            others when ``norm(y) < cg - tol``.
        weights: ``(n,)`` data weights (default uniform).

    Returns:
        ``(B, d)`` float64. Raises ``ValueError`` if a sample is reachable by no component (a wrong mask).
    """
    kern = path._kernel
    xs = x.reshape(x.shape[0], -1).to(torch.float64)
    s = support.reshape(support.shape[0], -1).to(dtype=torch.float64, device=x.device)
    if atom_mask is None or atom_mask.shape != x.shape:
        raise ValueError(f"atom_mask must be a bool tensor of x's shape {tuple(x.shape)}")
    path._check_even(xs)
    m_coord = atom_mask.reshape(xs.shape).to(torch.bool)
    m_all = kern.blocks(m_coord)
    if kern.block == 2 and not bool((m_coord[:, 0::2] == m_coord[:, 1::2]).all()):
        raise ValueError("atom_mask must be equal within each pair of coordinates (one flight per pair)")
    n = s.shape[0]
    logw = torch.full((n,), -math.log(n), dtype=torch.float64, device=x.device) if weights is None else \
        torch.log(torch.as_tensor(weights, dtype=torch.float64, device=x.device) / float(torch.as_tensor(weights).sum()))
    t = float(t)
    c = path.c
    f, df, g, dg = path.f(t), path.df(t), path.g(t), path.dg(t)
    cg = c * g
    u = torch.empty_like(xs)
    rows = max(1, chunk // max(1, s.numel()))
    gt = torch.tensor(g, dtype=torch.float64, device=x.device)
    bk = kern.block
    for b in range(0, xs.shape[0], rows):
        xb, m = xs[b:b + rows, None, :], m_all[b:b + rows, None, :]
        y = xb - f * s[None]  # (R, n, d)
        ay = kern.norm(y)
        tol = rel_tol * (kern.norm(xb) + cg + abs(f) * kern.norm(s)[None] + 1.0)
        on_face = (ay - cg).abs() <= tol
        interior = ay < cg - tol
        ok = torch.where(m, on_face, interior).all(dim=-1)  # (R, n)
        yb = y.reshape(y.shape[:-1] + (y.shape[-1] // bk, bk))
        logp = path.process.block_log_density(gt, yb)
        logp = torch.where(m, torch.zeros_like(logp), logp)
        L = torch.where(ok, logp.sum(dim=-1) + logw[None], torch.full_like(ok, -math.inf, dtype=torch.float64))
        if not bool(torch.isfinite(L.max(dim=1).values).all()):
            raise ValueError("a sample lies on no stratum of the law: atom_mask does not match x "
                             "(pass PathSample.atom_mask of the same draw)")
        w = torch.softmax(L, dim=1)
        v = path.process.velocity(gt, y, atom_mask=kern.expand(m).expand_as(y))
        uk = df * s[None] + dg * v
        u[b:b + rows] = (w[..., None] * uk).sum(dim=1)
    return u.reshape(x.shape)


#: the earlier name (Kac paths); the same function
_kac_velocity_with_atoms = _velocity_with_atoms
