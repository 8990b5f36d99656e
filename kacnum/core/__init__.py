"""The ground floor: what every layer above may use and nothing here knows of Kac flows.

=================  =====================================================================================
module             what it holds
=================  =====================================================================================
``checks``         input checks that raise one clear ``ValueError`` naming the parameter and its range
``checkpoint``     atomic checkpoint and JSON files, verified on load, with a fall-back to the previous copy
``progress``       progress lines for long loops (rate, ETA; a terminal bar or periodic log lines)
``seeds``          ``derive_seed``: independent seeds from integers (run, rank, step, batch)
``cli``            argparse conventions of the scripts: one-line errors, thread defaults, output folders
``legacy``         the module names of the flat layout (``kacnum.kac``, ``kacnum.paths``, ...) as aliases
=================  =====================================================================================
"""
import importlib as _importlib
import pkgutil as _pkgutil


def lazy_submodules(package: str, path) -> tuple:
    """``(__getattr__, __dir__)`` for a package that loads its modules on first attribute access.

    ``kacnum.processes.telegrapher`` then works after ``import kacnum`` alone, as ``kacnum.telegrapher``
    did in the flat layout, without importing every module up front.
    """
    names = sorted(m.name for m in _pkgutil.iter_modules(path) if not m.name.startswith("_"))

    def __getattr__(name):
        if name in names:
            return _importlib.import_module(f"{package}.{name}")
        raise AttributeError(f"module {package!r} has no attribute {name!r}")

    def __dir__():
        return sorted(set(names) | set(_importlib.import_module(package).__dict__))

    return __getattr__, __dir__


__getattr__, __dir__ = lazy_submodules(__name__, __path__)
