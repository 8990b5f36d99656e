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
# # Kinetic energy `E|u_t|²`: Kac versus diffusion (docs/mathematics.md §3, §8)
#
# The exact Kac field has `E|u_t|² <= d (|f'| sup|x0| + c g')²` for all t, while the diffusion field on
# the same data blows up like `d σ²/(4t)` at the data end. Left: the 1D Dirac of docs/mathematics.md §3 (quadrature
# with the atoms, checked by Monte Carlo). Right: the 3×3 grid data, exact marginal fields of the Kac,
# diffusion-limit, Gaussian-FM and VP paths.

# %%
import sys
from pathlib import Path

from IPython.display import Image, display

ROOT = Path.cwd().resolve()
while not (ROOT / "experiments" / "_common.py").is_file() and ROOT != ROOT.parent:
    ROOT = ROOT.parent
sys.path.insert(0, str(ROOT / "experiments"))
import _common  # noqa: E402

import kinetic_energy  # noqa: E402
from kacnum.theory.claims import diffusion_dirac_kinetic_energy, kac_dirac_kinetic_energy  # noqa: E402

OUT, ARGV = _common.notebook_args("kinetic_energy")
res = kinetic_energy.main(ARGV)

# %%
display(Image(filename=str(OUT / "kinetic_energy.png")))

# %% [markdown]
# The docs/mathematics.md §3 numbers (a = 9, c = 3), straight from the library functions the script uses:

# %%
for t in (1e-3, 1e-2, 0.1, 1.0):
    print(f"t = {t:g}: Kac {kac_dirac_kinetic_energy(9.0, 3.0, t):.2f}, diffusion {diffusion_dirac_kinetic_energy(1.0, t):.2f}")
print("worst ratios:", res["worst_ratios"])
print("energy at t = 1e-3:", res["energy_at_t_1e_3"])
