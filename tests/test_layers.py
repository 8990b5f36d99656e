"""The package's layers: each folder imports only from the folders below it, and no module imports
itself through others (no import cycle, function-level imports included).

The order, bottom up: core, processes, flows, students, theory, images. The package root
(``kacnum/__init__.py``, ``kacnum/__main__.py``) stands above them all.
"""
import ast
from pathlib import Path

import pytest

import kacnum

PACKAGE = Path(kacnum.__file__).parent
ORDER = ("core", "processes", "flows", "students", "theory", "images")


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imported_modules(path: Path, name: str) -> set:
    """Every ``kacnum`` module that ``path`` imports, at any depth of its code."""
    package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name.split(".")[0] == "kacnum")
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - (node.level - 1)]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            if target.split(".")[0] != "kacnum":
                continue
            found.add(target)
            # ``from kacnum.core import checks`` imports the module kacnum.core.checks
            found.update(f"{target}.{a.name}" for a in node.names if (PACKAGE.parent / f"{target}.{a.name}".replace(".", "/")).with_suffix(".py").exists()
                         or (PACKAGE.parent / f"{target}.{a.name}".replace(".", "/") / "__init__.py").exists())
    return found


def layer(name: str):
    parts = name.split(".")
    return parts[1] if len(parts) > 1 and parts[1] in ORDER else None


def graph() -> dict:
    modules = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        name = module_name(path)
        modules[name] = imported_modules(path, name)
    return modules


def test_every_module_sits_in_a_layer():
    loose = [n for n in graph() if n not in ("kacnum", "kacnum.__main__") and layer(n) is None]
    assert not loose, f"modules outside the layer folders {ORDER}: {loose}"


def test_no_import_goes_up_a_layer():
    upward = []
    for name, deps in graph().items():
        own = layer(name)
        if own is None:  # the package root may import every layer
            continue
        for dep in deps:
            other = layer(dep)
            if dep == "kacnum" or (other is not None and ORDER.index(other) > ORDER.index(own)):
                upward.append(f"{name} -> {dep}")
    assert not upward, "imports that go up a layer: " + ", ".join(sorted(upward))


def test_no_import_cycle():
    g = graph()
    known = set(g)

    def resolve(dep):  # ``kacnum.flows.paths.X`` style names resolve to the longest known module
        while dep and dep not in known:
            dep = dep.rpartition(".")[0]
        return dep

    edges = {n: {resolve(d) for d in deps} - {n, "", "kacnum"} for n, deps in g.items()}
    # a package __init__ that re-exports its modules is not a cycle with them: only module -> module edges
    edges = {n: {d for d in ds if not (d == n.rpartition(".")[0] and n.startswith(d + "."))} for n, ds in edges.items()}
    cycles = []
    state = {}

    def visit(n, stack):
        state[n] = 1
        stack.append(n)
        for d in sorted(edges.get(n, ())):
            if state.get(d) == 1:
                cycles.append(" -> ".join(stack[stack.index(d):] + [d]))
            elif d not in state:
                visit(d, stack)
        stack.pop()
        state[n] = 2

    for n in sorted(edges):
        if n not in state:
            visit(n, [])
    assert not cycles, "import cycles: " + "; ".join(cycles)


def test_the_checker_sees_an_upward_import(tmp_path):
    """The rule can fail: an import of the image layer from a process module is reported."""
    f = PACKAGE / "processes" / "arguments.py"
    deps = imported_modules(f, "kacnum.processes.arguments")
    assert "kacnum.core.checks" in deps
    fake = tmp_path / "x.py"
    fake.write_text("def f():\n    from kacnum.images.train import Trainer\n")
    found = imported_modules(fake, "kacnum.processes.x")
    assert any(layer(d) == "images" for d in found)


@pytest.mark.parametrize("old,new", [("kacnum.kac", "kacnum.processes.kac"), ("kacnum.paths", "kacnum.flows.paths"),
                                     ("kacnum.models.unet", "kacnum.images.models.unet"),
                                     ("kacnum.checkpoint", "kacnum.core.checkpoint")])
def test_old_module_names_still_import(old, new):
    import importlib
    with pytest.warns(DeprecationWarning, match=new.replace(".", r"\.")):
        import sys
        sys.modules.pop(old, None)
        mod = importlib.import_module(old)
    target = importlib.import_module(new)
    public = [n for n in dir(target) if not n.startswith("_")]
    assert public and all(getattr(mod, n) is getattr(target, n) for n in public)


def test_file_formats_of_0_1_are_kept():
    """Checkpoints, sample files and wrappers name their format with the 0.1 module names: moving the modules
    must not rename them, or files written before the move would be refused."""
    from kacnum.flows.losses import Preconditioned
    from kacnum.images import train
    from kacnum.images.metrics import samples
    from kacnum.images.pipeline import samples as pipeline_samples
    from kacnum.students import distill, progressive, reflow

    assert train.CHECKPOINT_FORMAT == "kacnum.train/1"
    assert distill.CHECKPOINT_FORMAT == "kacnum.distill/1"
    assert progressive.CHECKPOINT_FORMAT == "kacnum.progressive/1"
    assert reflow.CHECKPOINT_FORMAT == "kacnum.reflow/1"
    assert samples.SAMPLE_FILE_FORMAT == "kacnum.samples.npz/1"
    assert pipeline_samples.SAMPLES_FORMAT == "kacnum.pipeline.samples/1"
    assert Preconditioned.FORMAT == "kacnum.losses.Preconditioned/1"
