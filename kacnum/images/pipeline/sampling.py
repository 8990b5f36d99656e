"""The samplers: guided flow sets of a velocity model (the teacher, the FM baseline) and DDIM sets of a VP model.

Every sampler draws its latents per batch from ``derive_seed(seed, batch)`` and labels ``arange(n) mod K``, so
that two sets of the same seed and batch size start from the same latents
(:func:`~kacnum.images.pipeline.samples.coupled_sets`).
``nfe`` is the paper's count, solver steps (calls of the guided field); ``nfe_model`` counts network
evaluations, twice ``nfe`` for a guided call (docs/mathematics.md §5-6).
"""
from __future__ import annotations

import copy
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator, Optional, Sequence, Union

import torch
from torch import nn

from kacnum.core.checks import check_positive
from kacnum.core.progress import Progress
from kacnum.flows.guidance import GuidedField
from kacnum.flows.paths import ProbabilityPath, VPPath
from kacnum.flows.solvers import NFE_PER_STEP, ddim_sample, make_time_grid, parse_time_grid
from kacnum.images.sampling import UnconditionalField
from kacnum.images.train import resolve_device, sample_images

from .samples import SampleSet, _balanced_labels, _beside, _reuse, _seeded_batches, _store, sample_file_name

__all__ = ["sample_flow_set", "sample_ddim_set", "sample_stage", "guidance_sweep"]


def _num_classes(model) -> int:
    """The model's class count ``K`` (0: unconditional)."""
    return int(getattr(model, "num_classes", 0) or 0)


def _grid_path(path: ProbabilityPath, time_grid: str) -> ProbabilityPath:
    """``path`` itself for the uniform grid; else a shallow copy whose ``default_time_grid`` is
    :func:`kacnum.flows.solvers.make_time_grid` of ``time_grid`` (the samplers call ``default_time_grid``)."""
    name, _ = parse_time_grid(time_grid)
    if name == "uniform":
        return path
    make_time_grid(time_grid, 1, path.T, path.t_min_default, path=path)  # refuses a Kac grid on other paths now
    p = copy.copy(path)

    def default_time_grid(n_steps, t_min=None, dtype=torch.float64, device=None):
        t_min = path.t_min_default if t_min is None else t_min
        return make_time_grid(time_grid, n_steps, path.T, t_min, path=path, dtype=dtype, device=device)

    p.default_time_grid = default_time_grid
    return p


def _grid_meta(time_grid: str, steps: int, path: ProbabilityPath) -> dict:
    """What a sample set records about a non-uniform grid (nothing for the uniform one, so that the
    files of earlier runs are still reused): its kind and its times."""
    name, rho = parse_time_grid(time_grid)
    if name == "uniform":
        return {}
    label = name if rho is None else f"power:{rho:g}"
    return {"time_grid": label,
            "time_grid_values": make_time_grid(time_grid, int(steps), path.T, path.t_min_default, path=path).tolist()}


def _no_value_checks_on_cuda(model) -> None:
    # the networks' input value checks synchronise with the device on every call (as kacnum.images.train does)
    p = next(model.parameters(), None)
    if p is not None and p.is_cuda and hasattr(model, "check_inputs"):
        model.check_inputs = False


def _flow_meta(solver: str, steps: int, seed: int, batch_size: int, path: ProbabilityPath, bf16: bool,
               time_grid: str) -> dict:
    """The settings recorded with a flow sample set (a re-run reuses the file only if they match)."""
    return {"solver": solver, "steps": steps, "seed": seed, "batch_size": batch_size, "path": repr(path),
            "bf16": bool(bf16), **_grid_meta(time_grid, steps, path)}


@contextmanager
def _step_progress(model: nn.Module, num_samples: int, batch_size: int, steps: int, solver: str, desc: str,
                   enabled: bool) -> Iterator[bool]:
    """Progress over the solver steps of every batch (``ceil(num_samples / batch_size) · steps`` in all), counted
    by a forward hook on ``model``: a batch of a large teacher takes minutes, and a log file should still get a
    line every ~30 s (:class:`kacnum.core.progress.Progress`). The hook only counts calls, so the images do not
    change. Yields whether :func:`kacnum.images.train.sample_images` should show its own per-batch progress
    (only when ``model`` takes no hooks)."""
    if not enabled or batch_size < 1 or not hasattr(model, "register_forward_hook"):
        yield enabled
        return
    n_batches = -(-num_samples // batch_size)
    calls_per_step = NFE_PER_STEP.get(solver, 1)  # a guided call is one batched forward (GuidedField)
    bar = Progress(n_batches * steps, desc, enabled=True, unit="step")
    calls = [0]

    def count(module, inputs, output):
        calls[0] += 1
        if calls[0] % calls_per_step == 0:
            done = calls[0] // calls_per_step
            bar.set_postfix(batch=f"{min(n_batches, (done - 1) // steps + 1)}/{n_batches}")
            bar.update(1)

    handle = model.register_forward_hook(count)
    try:
        yield False
    finally:
        handle.remove()
        bar.close()


def sample_flow_set(model: nn.Module, path: ProbabilityPath, method: str, *, num_samples: int, steps: int,
                    solver: str = "ab2", guidance: float = 1.0, labels: Optional[torch.Tensor] = None,
                    seed: int = 0, batch_size: int = 500, device=None, eps_model: bool = False,
                    bf16: bool = False, progress: bool = False, time_grid: str = "uniform") -> SampleSet:
    """``num_samples`` images by integrating the guided velocity of ``model`` with ``steps`` steps of
    ``solver`` from ``T`` to ``path``'s ``t_min`` (:func:`kacnum.images.train.sample_images`; latents from
    ``path.sample_latent`` seeded per batch by ``derive_seed(seed, batch)``). Labels default to
    ``arange(n) mod K`` (balanced classes). ``time_grid``: ``uniform`` (default), ``power:RHO`` or
    ``kac`` (:func:`kacnum.flows.solvers.make_time_grid`; recorded in the set's meta when not uniform).
    ``progress``: one count per solver step of every batch (a bar on a terminal, a line every 10 % or ~30 s
    in a log file)."""
    k = _num_classes(model)
    if labels is None:
        labels = _balanced_labels(num_samples, k)
    _no_value_checks_on_cuda(model)
    with _step_progress(model, num_samples, batch_size, steps, solver, f"sample {method}", progress) as per_batch:
        out = sample_images(model, _grid_path(path, time_grid), num_samples, labels=labels, guidance_scale=guidance,
                            steps=steps, method=solver, seed=seed, batch_size=batch_size, bf16=bf16, device=device,
                            eps_model=eps_model, progress=per_batch)
    meta = _flow_meta(solver, steps, seed, batch_size, path, bf16, time_grid)
    return SampleSet(method, int(out["nfe"]), int(out["nfe_model"]), out["images"], out["labels"],
                     float(guidance) if k > 0 else None, meta)


@torch.no_grad()
def sample_ddim_set(model: nn.Module, path: VPPath, method: str = "vp_ddim", *, num_samples: int, steps: int,
                    guidance: float = 1.0, labels: Optional[torch.Tensor] = None, seed: int = 0,
                    batch_size: int = 500, device=None, eta: float = 0.0, clip_x0: Optional[float] = 1.0,
                    time_grid: str = "uniform") -> SampleSet:
    """DDIM samples of a VP ε-model (:func:`kacnum.flows.solvers.ddim_sample` on ``path.default_time_grid(steps)``),
    guided in ε-space ``ε_∅ + s (ε_y - ε_∅)`` when the model has classes. Latents ``N(0, I)`` seeded per
    batch by ``derive_seed(seed, batch)``. ``clip_x0`` (default 1: images in [-1, 1]) clamps the data
    prediction at every step, as the DDPM/DDIM image samplers and the PD baseline's targets do; None: off."""
    if not isinstance(path, VPPath):
        raise ValueError(f"path must be a VPPath for DDIM, got {type(path).__name__}")
    dev = resolve_device(device) if device is not None else next(model.parameters()).device
    _no_value_checks_on_cuda(model)
    k = _num_classes(model)
    if labels is None:
        labels = _balanced_labels(num_samples, k)
    guided = GuidedField(model, guidance, null_label=model.null_label, num_classes=k) if k > 0 else None
    grid = _grid_path(path, time_grid).default_time_grid(steps, device=dev)
    shape = tuple(_sample_shape(model))
    outs, nfe, nfe_model = [], 0, 0
    for s, e, gen in _seeded_batches(num_samples, batch_size, seed, dev):
        x = path.sample_latent((e - s,) + shape, generator=gen, dtype=torch.float32, device=dev)
        fld = guided.field(labels[s:e].to(dev)) if guided is not None else UnconditionalField(model)
        res = ddim_sample(fld, x, path.alpha_bar, grid, eta=eta, generator=gen, clip_x0=clip_x0)
        outs.append(res.x.float().cpu())
        nfe, nfe_model = res.nfe, res.nfe_model
    meta = _ddim_meta(steps, seed, batch_size, path, eta, clip_x0, time_grid)
    return SampleSet(method, nfe, nfe_model, torch.cat(outs), labels, float(guidance) if k > 0 else None, meta)


def _ddim_meta(steps: int, seed: int, batch_size: int, path: VPPath, eta: float = 0.0,
               clip_x0: Optional[float] = 1.0, time_grid: str = "uniform") -> dict:
    """The settings recorded with a DDIM sample set (a re-run reuses the file only if they match)."""
    return {"solver": "ddim", "eta": eta, "clip_x0": clip_x0, "steps": int(steps), "seed": seed,
            "batch_size": batch_size, "path": repr(path), **_grid_meta(time_grid, steps, path)}


def _sample_shape(model) -> tuple:
    """``(C, H, W)`` of one image of ``model``."""
    c = model.config
    return (c.in_channels, c.resolution, c.resolution)


def sample_stage(model: nn.Module, path: ProbabilityPath, out_dir: Union[str, Path], *, num_samples: int,
                 guidance: float, steps: int = 100, method: str = "ab2", batch_size: int = 500,
                 labels: Optional[torch.Tensor] = None, seed: int = 1234, device=None, eps_model: bool = False,
                 name: str = "kac_teacher", resume: bool = True, progress: bool = False,
                 with_guidance_in_name: bool = False, bf16: bool = False, time_grid: str = "uniform") -> dict:
    """Guided sampling of the (EMA) teacher: ``steps`` steps of ``method`` (DistillKac: 100 AB-2, guidance
    1.2), ``num_samples`` images, balanced labels. Writes ``out_dir/<name>_nfe<steps>.samples.pt`` and
    its PNG grid; returns the record (method, nfe, nfe_model, guidance, num_samples, file, grid, seconds).
    With ``resume`` an existing file with the same settings is reused. ``bf16``: autocast on CUDA.
    ``time_grid``: the sampling grid (:func:`kacnum.flows.solvers.make_time_grid`; default uniform)."""
    out_dir = Path(out_dir)
    check_positive("num_samples", num_samples)
    meta = _flow_meta(method, steps, seed, batch_size, path, bf16, time_grid)
    file = out_dir / sample_file_name(name, steps, guidance, with_guidance_in_name)
    old = _reuse(file, meta, resume)
    if old is not None and old.num == num_samples and old.guidance == (float(guidance) if _num_classes(model) else None):
        return old.record(file, _beside(file, ".png"))
    t0 = time.perf_counter()
    s = sample_flow_set(model, path, name, num_samples=num_samples, steps=steps, solver=method, guidance=guidance,
                        labels=labels, seed=seed, batch_size=batch_size, device=device, eps_model=eps_model,
                        bf16=bf16, progress=progress, time_grid=time_grid)
    return _store(s, out_dir, _num_classes(model), time.perf_counter() - t0, with_guidance_in_name)


def guidance_sweep(model: nn.Module, path: ProbabilityPath, out_dir: Union[str, Path], scales: Sequence[float], *,
                   num_samples: int, steps: int = 100, method: str = "ab2", **kwargs) -> list[dict]:
    """:func:`sample_stage` at every guidance scale in ``scales`` (method ``kac_teacher_sweep``; the
    file names carry the scale)."""
    return [sample_stage(model, path, out_dir, num_samples=num_samples, guidance=float(s), steps=steps,
                         method=method, name="kac_teacher_sweep", with_guidance_in_name=True, **kwargs)
            for s in scales]
