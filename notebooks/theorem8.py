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
# Runs `experiments/theorem8.py` (the measurements are in `kacnum/theory/stability.py`) in its three regimes:
# **smooth** (Gaussian-mixture data: the teacher field is Lipschitz, the theorem's hypothesis holds),
# **finite** (the same points as Dirac data: the hypothesis fails) and the **transition** in the data
# smoothing σ. Figures: the path error against M in both regimes, the local slopes, the Lipschitz
# constant and acceleration along the teacher, the σ transition, endpoint against whole-path W2, and
# trajectories. With `KACNUM_NB_QUICK=1` a tiny configuration runs (seconds); unset, the script's full
# default budget runs (a few minutes) and writes `paper_figures/`.

# %%
import sys
from pathlib import Path

HERE = Path.cwd().resolve()
ROOT = next(p for p in (HERE, *HERE.parents) if (p / "experiments" / "_common.py").is_file())
sys.path.insert(0, str(ROOT / "experiments"))
import _common  # noqa: E402

TINY = ["--data-seeds", "0", "--samples", "64", "--spread-samples", "32", "--teacher-steps", "64",
        "--conv-samples", "16", "--ms", "4,8,16,32", "--fit-min-m", "8", "--n-tau", "33", "--w2-samples", "64",
        "--n-boot", "50", "--lip-times", "5", "--lip-samples", "16", "--finite-samples", "64",
        "--finite-teacher-steps", "128", "--sigmas", "0.25,0.1,0", "--transition-samples", "32", "--no-distill"]
OUT, res = _common.run_notebook("theorem8", extra_quick=TINY)

# %%
_common.show(OUT, "theorem8_rate.png", "theorem8_local_slopes.png", "theorem8_profiles.png", "theorem8_sigma.png",
             "theorem8_correlation.png", "theorem8_trajectories.png")

# %%
for regime, text in res["verdict"].items():
    print(f"{regime}: {text}")
