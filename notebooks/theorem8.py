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
# # Theorem 8 (endpoint → path stability of few-step students)
#
# Runs `experiments/theorem8.py` (owned by the stability experiment; the mathematics is in
# `kacnum/stability.py`): sup-over-path error of M-step Euler students against M, the correlation
# between endpoint and whole-path W2, and sample trajectories. With `KACNUM_NB_QUICK=1` the notebook
# runs a tiny configuration (Kac and Gaussian only, no distillation, M = 1…8) so that it can be executed
# in tests; unset, it runs the script's full default budget (minutes) and writes `paper_figures/`.

# %%
import sys
from pathlib import Path

from IPython.display import Image, display

ROOT = Path.cwd().resolve()
while not (ROOT / "experiments" / "_common.py").is_file() and ROOT != ROOT.parent:
    ROOT = ROOT.parent
sys.path.insert(0, str(ROOT / "experiments"))
import _common  # noqa: E402

import theorem8  # noqa: E402

TINY = ["--paths", "kac", "gaussian", "--distill-paths", "--samples", "64", "--w2-samples", "64",
        "--teacher-steps", "64", "--conv-samples", "32", "--n-tau", "33", "--n-boot", "50", "--ms", "1", "2", "4", "8"]
OUT, ARGV = _common.notebook_args("theorem8", extra_quick=TINY)
res = theorem8.main(ARGV)

# %%
for name in ("theorem8_rate.png", "theorem8_correlation.png", "theorem8_trajectories.png"):
    display(Image(filename=str(OUT / name)))

# %%
print("slopes:", res.get("slope"))
print("correlation (endpoint vs path W2):", res.get("correlation"))
