"""The 2D laws of the Kac-flow noises side by side: coordinate-wise Kac, the planar flight, the Gaussian.

Columns: the coordinate-wise Kac law ``K_g`` (two independent 1D Kac coordinates: the square
``[-cg, cg]²``, atoms on its edges and corners), the planar random flight ``F_g`` (docs/mathematics.md §14: the disc
``|y| ≤ cg`` with a circle atom of mass ``e^{-a g}``) and the Gaussian with the same diffusion limit
``N(0, (c²/a) g I)`` (unbounded). Rows: ``a g = 1`` (atoms carry 37 % of the mass per block: 1D Kac
coordinate / flight pair) and ``a g = 9`` (``g = T = 1`` with the default ``a = 9``, ``c = 3``: the latent of
the Kac paths; atoms ``1.2e-4``). The continuous part is a 2D histogram (log colour scale, the same scale in
a row); atoms are drawn as points (orange: one coordinate on a face / the circle; red: corner atoms);
the black line is the support's boundary. Numbers printed: atom masses and the largest radius.

    python experiments/latent_laws.py --paper-figures   # writes paper_figures/latent_laws.png (< 300 KB)
    python experiments/latent_laws.py --quick           # fewer samples (tests)
"""
from __future__ import annotations

import math
import sys
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
from matplotlib.colors import LogNorm  # noqa: E402

import _common  # noqa: E402
from kacnum.core import cli  # noqa: E402
from kacnum.flows.paths import FlightPath, KacPath  # noqa: E402

NAME = "latent_laws"


@dataclass(frozen=True)
class LatentLawsConfig:
    a: float = 9.0
    c: float = 3.0
    ag_values: tuple = (1.0, 9.0)
    n_samples: int = 400_000
    bins: int = 120
    atom_points: int = 3000


QUICK = dict(n_samples=20_000, bins=40, atom_points=500)


def draw(cfg: LatentLawsConfig, g: float, gen: torch.Generator) -> dict:
    """Samples of the three laws at noise time ``g`` and their atom masks."""
    n = cfg.n_samples
    kac, flight = KacPath(cfg.a, cfg.c), FlightPath(cfg.a, cfg.c)
    k, ka = kac.sample_noise(g, (n, 2), gen, return_atoms=True, dtype=torch.float64)
    f, fa = flight.sample_noise(g, (n, 2), gen, return_atoms=True, dtype=torch.float64)
    z = math.sqrt(cfg.c ** 2 / cfg.a * g) * torch.randn(n, 2, generator=gen, dtype=torch.float64)
    return dict(kac=(k, ka), flight=(f, fa), gaussian=(z, torch.zeros_like(z, dtype=torch.bool)))


def run(cfg: LatentLawsConfig, gen: torch.Generator) -> tuple:
    rows, draws = [], {}
    for ag in cfg.ag_values:
        g = ag / cfg.a
        d = draw(cfg, g, gen)
        draws[ag] = d
        k, ka = d["kac"]
        f, fa = d["flight"]
        rows.append(dict(a_g=ag, g=g, cg=cfg.c * g,
                         kac_one_face=float((ka.sum(1) == 1).double().mean()),
                         kac_corner=float(ka.all(1).double().mean()),
                         kac_corner_exact=math.exp(-2 * ag),
                         flight_circle=float(fa[:, 0].double().mean()), flight_circle_exact=math.exp(-ag),
                         kac_max_radius=float(k.norm(dim=1).max()), flight_max_radius=float(f.norm(dim=1).max()),
                         gaussian_max_radius=float(d["gaussian"][0].norm(dim=1).max())))
    return rows, draws


def figure(cfg: LatentLawsConfig, draws: dict):
    n_rows = len(cfg.ag_values)
    fig, axes = plt.subplots(n_rows, 3, figsize=(10.2, 3.45 * n_rows), squeeze=False)
    titles = {"kac": "coordinate-wise Kac $K_g$", "flight": "planar flight $F_g$ (isotropic)",
              "gaussian": "Gaussian $N(0, (c^2/a)\\,g\\,I)$"}
    for i, ag in enumerate(cfg.ag_values):
        g = ag / cfg.a
        cg = cfg.c * g
        lim = 1.25 * cg
        edges = np.linspace(-lim, lim, cfg.bins + 1)
        hists = {}
        for key, (x, atoms) in draws[ag].items():
            cont = ~atoms.any(dim=1)
            xc = x[cont].numpy()
            h, _, _ = np.histogram2d(xc[:, 0], xc[:, 1], bins=[edges, edges])
            hists[key] = h / (x.shape[0] * (edges[1] - edges[0]) ** 2)
        vmax = max(float(h.max()) for h in hists.values())
        vmin = vmax * 1e-4
        for j, key in enumerate(("kac", "flight", "gaussian")):
            ax = axes[i, j]
            h = np.where(hists[key] > 0, hists[key], np.nan)
            im = ax.imshow(h.T, origin="lower", extent=(-lim, lim, -lim, lim), norm=LogNorm(vmin=vmin, vmax=vmax),
                           cmap="viridis", interpolation="nearest")
            if key == "kac":
                ax.plot([-cg, cg, cg, -cg, -cg], [-cg, -cg, cg, cg, -cg], color="k", lw=0.5)
            elif key == "flight":
                th = np.linspace(0, 2 * math.pi, 256)
                ax.plot(cg * np.cos(th), cg * np.sin(th), color="k", lw=0.5)
            else:
                th = np.linspace(0, 2 * math.pi, 256)
                ax.plot(cg * np.cos(th), cg * np.sin(th), color="k", lw=0.6, ls=":")
            x, atoms = draws[ag][key]
            if bool(atoms.any()):
                one = atoms.any(dim=1) & ~atoms.all(dim=1)
                both = atoms.all(dim=1) if key == "kac" else torch.zeros_like(one)
                if key == "flight":
                    one = atoms[:, 0]
                pts = x[one][: cfg.atom_points].numpy()
                ax.scatter(pts[:, 0], pts[:, 1], s=4, color="tab:orange", lw=0,
                           label="atoms" if key == "flight" else "one coordinate on a face")
                if bool(both.any()):
                    pc = x[both][: cfg.atom_points].numpy()
                    ax.scatter(pc[:, 0], pc[:, 1], s=12, color="tab:red", lw=0, label="corner atoms")
            ax.set_xlim(-lim, lim)
            ax.set_ylim(-lim, lim)
            ax.set_aspect("equal")
            ax.tick_params(labelsize=7)
            extra = {"flight": f"circle atom {math.exp(-ag):.2g}",
                     "kac": f"face {2 * math.exp(-ag) * (1 - math.exp(-ag)):.2g}, corners {math.exp(-2 * ag):.2g}",
                     "gaussian": "no atoms, unbounded"}[key]
            ax.set_title(f"{titles[key]}, a g = {ag:g}\n{extra}", fontsize=8)
            if j < 2 and bool(atoms.any()):
                ax.legend(fontsize=6, loc="upper right", markerscale=4)
        fig.colorbar(im, ax=list(axes[i]), shrink=0.85, label="density of the continuous part")
    fig.suptitle(f"noise laws in 2D (a = {cfg.a:g}, c = {cfg.c:g}; black: support boundary c g)", fontsize=9)
    return fig


def main(argv=None) -> dict:
    args, cfg, gen = _common.start(NAME, __doc__, LatentLawsConfig(), QUICK, argv)
    with _common.Stopwatch() as sw:
        rows, draws = run(cfg, gen)
        fig = figure(cfg, draws)
    _common.print_table(rows, ["a_g", "g", "cg", "kac_one_face", "kac_corner", "kac_corner_exact", "flight_circle",
                               "flight_circle_exact", "kac_max_radius", "flight_max_radius", "gaussian_max_radius"],
                        "atom shares (sampled vs exact) and the largest radius: Kac reaches sqrt(2) c g (corners), the "
                        "flight c g, the Gaussian any radius", floatfmt=".4g")
    return _common.finish(NAME, args, cfg, {"rows": rows}, sw.seconds, fig, dpi=90)


if __name__ == "__main__":
    sys.exit(cli.run_main(main))
