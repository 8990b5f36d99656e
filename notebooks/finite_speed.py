# ---
# jupyter:
#   jupytext:
#     formats: py:percent
#     text_representation:
#       extension: .py
#       format_name: percent
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [markdown]
# # Finite speed (docs/mathematics.md §8)
#
# Kac samples `f(t) X0 + K_{g(t)}` stay in the cone `f(t) supp + [-c g, c g]^d`; samples of the
# diffusion limit, Gaussian flow matching and VP diffusion on the same data leave it. The 1D telegrapher
# solver keeps a compact bump inside `[lo - ct, hi + ct]` to round-off while the heat equation has erfc
# tails there; the 2D central scheme leaks a little (numerical dispersion), reported per resolution.
#
# Everything is computed by `experiments/finite_speed.py` → `kacnum.theory.claims`. Set `KACNUM_NB_QUICK=1`
# for the small budget (then `paper_figures/` is left alone).

# %%
import sys
from pathlib import Path

HERE = Path.cwd().resolve()
ROOT = next(p for p in (HERE, *HERE.parents) if (p / "experiments" / "_common.py").is_file())
sys.path.insert(0, str(ROOT / "experiments"))
import _common  # noqa: E402

OUT, res = _common.run_notebook("finite_speed")

# %%
_common.show(OUT, "finite_speed.png")

# %%
print("worst ratios:", res["worst_ratios"])
print("1D telegrapher mass outside the cone (max over t):", res["max_telegrapher_1d_outside"])
print("heat mass outside the cone (min over t):", res["min_heat_outside"])
print("2D scheme leak fraction (max over resolutions):", res["max_leak_fraction_2d"])
