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

from IPython.display import Image, display

ROOT = Path.cwd().resolve()
while not (ROOT / "experiments" / "_common.py").is_file() and ROOT != ROOT.parent:
    ROOT = ROOT.parent
sys.path.insert(0, str(ROOT / "experiments"))
import _common  # noqa: E402

import wasserstein_lipschitz  # noqa: E402

OUT, ARGV = _common.notebook_args("wasserstein_lipschitz")
res = wasserstein_lipschitz.main(ARGV)

# %%
display(Image(filename=str(OUT / "wasserstein_lipschitz.png")))

# %%
for k, v in res["worst_ratios"].items():
    print(f"{k:40s} {v:.4f}")
