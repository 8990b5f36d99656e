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
# # Wasserstein-Lipschitz continuity (docs/mathematics.md §8)
#
# 1D: `W_p(μ_s, μ_t) <= c|t - s|` for the exact Kac laws (p = 1, 2, 4), sharp as `s, t → 0`; the
# Brownian contrast `σ|√t - √s| ‖Z‖_p` is not Lipschitz. d = 2: `W_p <= |Δf| ‖X0‖_p + c√d |Δg|` with
# schedules, from coupled samples and exact optimal transport.

# %%
import sys
from pathlib import Path

HERE = Path.cwd().resolve()
ROOT = next(p for p in (HERE, *HERE.parents) if (p / "experiments" / "_common.py").is_file())
sys.path.insert(0, str(ROOT / "experiments"))
import _common  # noqa: E402

OUT, res = _common.run_notebook("wasserstein_lipschitz")

# %%
_common.show(OUT, "wasserstein_lipschitz.png")

# %%
for k, v in res["worst_ratios"].items():
    print(f"{k:40s} {v:.4f}")
