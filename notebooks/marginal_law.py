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
# # Does a flow carry its path's marginals? (docs/mathematics.md §13)
#
# Runs `experiments/marginal_law.py`: the probability-flow ODE of the Kac, Gaussian and VP paths, solved
# with RK4 on the exact marginal field from exact latents, and the share of its end points at each data
# point against the data law (χ²), plus W2 to exact path samples along the way. On Dirac data the Kac
# flow misses the weights (mass must split where one point's cone face sweeps through another point's
# cone, and a deterministic flow cannot split it); on Gaussian-mixture data it does not.
# With `KACNUM_NB_QUICK=1` the script's `--quick` budget runs.

# %%
import sys
from pathlib import Path

HERE = Path.cwd().resolve()
ROOT = next(p for p in (HERE, *HERE.parents) if (p / "experiments" / "_common.py").is_file())
sys.path.insert(0, str(ROOT / "experiments"))
import _common  # noqa: E402

OUT, res = _common.run_notebook("marginal_law")

# %%
_common.show(OUT, "marginal_law.png")

# %% [markdown]
# The two-point case in numbers, and the bias against the data smoothing σ and the switching rate a:

# %%
print(res["summary"]["one_d_two_points"])
for r in res["summary"]["bias_vs_sigma"]:
    print(f"sigma = {r['sigma']:g}: Kac bias {r['bias']:+.4f} (s.e. {r['se']:.4f}), Gaussian {r['gaussian_bias']:+.4f}")
for r in res["summary"]["bias_vs_a"]:
    print(f"a = {r['a']:g}, c = {r['c']:.3g}: bias {r['bias']:+.4f} (s.e. {r['se']:.4f})")
