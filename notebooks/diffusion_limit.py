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
# # Diffusion limit (docs/mathematics.md §1, §8)
#
# With `c²/a = σ²` fixed the Kac density and velocity converge to the heat kernel and `x/(2t)` as
# `a → ∞`; the fitted rates are the slopes of log error against log a (−1: error ∝ 1/a). The PDE
# version compares the exact telegrapher solution from a bump with the heat solution.

# %%
import sys
from pathlib import Path

HERE = Path.cwd().resolve()
ROOT = next(p for p in (HERE, *HERE.parents) if (p / "experiments" / "_common.py").is_file())
sys.path.insert(0, str(ROOT / "experiments"))
import _common  # noqa: E402

OUT, res = _common.run_notebook("diffusion_limit")

# %%
_common.show(OUT, "diffusion_limit.png")

# %%
print("fitted rates:", {k: round(v, 3) for k, v in res["rates"].items()})
