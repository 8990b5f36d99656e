"""notebooks/*.py (jupytext percent format) execute headlessly at the small size and write their figures.

Each notebook is converted with jupytext and run with nbclient (kernel ``python3``; if no such kernelspec
is installed, one is created in a temporary folder from ``ipykernel``) with ``KACNUM_NB_QUICK=1``,
``KACNUM_NB_PAPER=0`` and ``KACNUM_NB_OUT`` in a temporary folder, so ``paper_figures/`` is never
touched. The test checks that the notebook ran without error, wrote its PNGs (non-empty, valid PNG
header, < 300 KB) and displayed an image. Two notebooks run in the default test run (about 25 s);
the others are marked slow (``pytest -m slow tests/test_notebooks.py``).
"""
from __future__ import annotations

import os
from pathlib import Path

import pytest

jupytext = pytest.importorskip("jupytext")
nbclient = pytest.importorskip("nbclient")

ROOT = Path(__file__).resolve().parents[1]
NB_DIR = ROOT / "notebooks"

#: notebook -> the PNGs it must write into ``$KACNUM_NB_OUT/<notebook>/``
FIGURES = {
    "finite_speed": ["finite_speed.png"],
    "diffusion_limit": ["diffusion_limit.png"],
    "kinetic_energy": ["kinetic_energy.png"],
    "wasserstein_lipschitz": ["wasserstein_lipschitz.png"],
    "guidance_integrability": ["guidance_integrability.png"],
    "theorem8": ["theorem8_rate.png", "theorem8_local_slopes.png", "theorem8_profiles.png", "theorem8_sigma.png",
                 "theorem8_correlation.png", "theorem8_trajectories.png"],
    "marginal_law": ["marginal_law.png"],
}
FAST = ("finite_speed", "diffusion_limit")


def _kernel_name(tmp_path_factory) -> str:
    """``python3`` if that kernelspec exists; otherwise install ipykernel's into a temporary JUPYTER_PATH."""
    from jupyter_client.kernelspec import KernelSpecManager

    if "python3" in KernelSpecManager().find_kernel_specs():
        return "python3"
    from ipykernel.kernelspec import install

    prefix = tmp_path_factory.mktemp("jupyter")
    install(kernel_name="kacnum-test", prefix=str(prefix))
    os.environ["JUPYTER_PATH"] = str(prefix / "share" / "jupyter") + os.pathsep + os.environ.get("JUPYTER_PATH", "")
    return "kacnum-test"


@pytest.fixture(scope="module")
def kernel_name(tmp_path_factory):
    return _kernel_name(tmp_path_factory)


def test_every_notebook_is_listed():
    """A new notebook must be added to FIGURES (so that it is executed by this test)."""
    assert sorted(p.stem for p in NB_DIR.glob("*.py")) == sorted(FIGURES)


@pytest.mark.parametrize(
    "name", [n if n in FAST else pytest.param(n, marks=pytest.mark.slow) for n in FIGURES]
)
def test_notebook_executes_and_writes_figures(name, tmp_path, monkeypatch, kernel_name):
    monkeypatch.setenv("KACNUM_NB_OUT", str(tmp_path))
    monkeypatch.setenv("KACNUM_NB_QUICK", "1")
    monkeypatch.setenv("KACNUM_NB_PAPER", "0")
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    monkeypatch.setenv("MPLBACKEND", "Agg")
    paper_before = {p.name: p.stat().st_mtime_ns for p in (ROOT / "paper_figures").glob("*.png")}
    nb = jupytext.read(NB_DIR / f"{name}.py")
    client = nbclient.NotebookClient(nb, timeout=240, kernel_name=kernel_name,
                                     resources={"metadata": {"path": str(NB_DIR)}})
    client.execute()  # raises CellExecutionError on any failing cell
    out = tmp_path / name
    for fig in FIGURES[name]:
        path = out / fig
        assert path.is_file(), f"{name} did not write {fig}"
        data = path.read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n" and 1000 < len(data) < 300_000, (fig, len(data))
    assert (out / "results.json").is_file() and (out / "config.json").is_file()
    shown = [o for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", [])
             if "image/png" in o.get("data", {})]
    assert len(shown) >= len(FIGURES[name]), "the notebook did not display its figures"
    paper_after = {p.name: p.stat().st_mtime_ns for p in (ROOT / "paper_figures").glob("*.png")}
    assert paper_after == paper_before, "a quick notebook run must not touch paper_figures/"
