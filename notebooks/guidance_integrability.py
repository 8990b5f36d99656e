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
# # Guidance: square-integrable and bounded by `(1 + 2|s - 1|) B` (docs/mathematics.md §5, §8)
#
# Exact labelled Kac fields (3 classes on the 3×3 grid), guided with `u_s = u_u + s (u_c - u_u)` for
# s = 1, 1.2, 2, 4 and integrated with AB-2 from the latent to the data. Dotted lines: the bounds built
# from the Kac speed bound `B(t) = |f'| sup|x0| + c g'`.

# %%
import sys
from pathlib import Path

HERE = Path.cwd().resolve()
ROOT = next(p for p in (HERE, *HERE.parents) if (p / "experiments" / "_common.py").is_file())
sys.path.insert(0, str(ROOT / "experiments"))
import _common  # noqa: E402

OUT, res = _common.run_notebook("guidance_integrability")

# %%
_common.show(OUT, "guidance_integrability.png")

# %%
print("worst ratios:", res["worst_ratios"])
