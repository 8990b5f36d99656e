"""The module names of the flat layout, kept as aliases of their new homes.

Until version 0.2 every module sat directly under ``kacnum`` (``kacnum.kac``, ``kacnum.paths``,
``kacnum.distill``, ...). They now live in the layer folders; code written against the old names keeps
working: ``import kacnum.kac`` or ``from kacnum.paths import KacPath`` loads an alias module that forwards
every attribute to the new module, with a ``DeprecationWarning`` that names the new place. New code
should import from the new place (or from the package root, which is unchanged).
"""
from __future__ import annotations

import importlib
import importlib.abc
import importlib.machinery
import sys
import types
import warnings

__all__ = ["MOVED", "install"]

#: old module name (under ``kacnum.``) -> new module name (under ``kacnum.``)
MOVED = {
    "_checks": "core.checks", "checkpoint": "core.checkpoint", "progress": "core.progress", "cli": "core.cli",
    "kac": "processes.kac", "flight": "processes.flight", "telegrapher": "processes.telegrapher",
    "paths": "flows.paths", "solvers": "flows.solvers", "losses": "flows.losses", "guidance": "flows.guidance",
    "distill": "students.distill", "progressive": "students.progressive", "reflow": "students.reflow",
    "transport": "theory.transport", "claims": "theory.claims", "stability": "theory.stability",
    "toy_data": "theory.toy_data",
    "models": "images.models", "train": "images.train", "data": "images.data", "metrics": "images.metrics",
    "pipeline": "images.pipeline",
}


def new_name(fullname: str):
    """``"kacnum.kac"`` -> ``"kacnum.processes.kac"`` (``"kacnum.models.unet"`` -> ``"kacnum.images.models.unet"``);
    ``None`` for a name that did not move."""
    parts = fullname.split(".")
    if len(parts) < 2 or parts[0] != "kacnum" or parts[1] not in MOVED:
        return None
    return ".".join(["kacnum", MOVED[parts[1]], *parts[2:]])


class _Alias(types.ModuleType):
    """A module that forwards attribute reads to its target (``__kacnum_target__``)."""

    def __getattr__(self, name):
        if name.startswith("__") and name.endswith("__"):  # never borrow __path__, __spec__, ... of the target
            raise AttributeError(name)
        target = self.__dict__.get("__kacnum_target__")
        if target is None:
            raise AttributeError(name)
        return getattr(target, name)

    def __dir__(self):
        target = self.__dict__.get("__kacnum_target__")
        return sorted(set(super().__dir__()) | set(dir(target) if target is not None else ()))


class _AliasFinder(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    def find_spec(self, fullname, path=None, target=None):
        if new_name(fullname) is None:
            return None
        return importlib.machinery.ModuleSpec(fullname, self, is_package=False)

    def create_module(self, spec):
        return _Alias(spec.name)

    def exec_module(self, module):
        new = new_name(module.__name__)
        warnings.warn(f"{module.__name__} moved to {new}; the old name is an alias and will go in a later version",
                      DeprecationWarning, stacklevel=2)
        target = importlib.import_module(new)
        module.__kacnum_target__ = target
        if hasattr(target, "__path__"):  # an old package name (kacnum.models): its submodules resolve here too
            module.__path__ = []
        module.__doc__ = f"Alias of :mod:`{new}` (moved)."


def install() -> None:
    """Put the alias finder on ``sys.meta_path`` (once)."""
    if not any(isinstance(f, _AliasFinder) for f in sys.meta_path):
        sys.meta_path.insert(0, _AliasFinder())  # before the path finder, which would load a second copy
