"""cccdask: Colocalization by Cross Correlation and the classic coefficients, at any scale.

Public names: :func:`ccc`, :func:`coefficients`, :func:`open_image`,
:func:`preprocess_lazy` (the ``preprocess:`` steps on Dask frames), :func:`run`, each
imported on first use, so that ``import cccdask.cli`` (the command line's ``--help``)
does not load NumPy, Dask and SciPy.
"""

import sys
import types
from importlib import import_module

__version__ = "0.1.0"

_PUBLIC = {
    "ccc": "cccdask.ccc",
    "coefficients": "cccdask.coefficients",
    "open_image": "cccdask.io.readers",
    "preprocess_lazy": "cccdask.preprocess_tiled",
    "run": "cccdask.pipeline",
}
# ``ccc`` and ``coefficients`` are functions named like their modules: importing the
# module must not replace the function on the package (the import system sets
# ``cccdask.ccc = <module>`` when it loads ``cccdask.ccc``).
_SHADOWING = ("ccc", "coefficients")

__all__ = sorted(_PUBLIC)


class _Package(types.ModuleType):
    def __setattr__(self, name, value):
        if name in _SHADOWING and isinstance(value, types.ModuleType):
            return  # the submodule stays in sys.modules; the name stays the function
        super().__setattr__(name, value)

    def __getattr__(self, name):
        if name in _PUBLIC:
            value = getattr(import_module(_PUBLIC[name]), name)
            super().__setattr__(name, value)
            return value
        raise AttributeError(f"module 'cccdask' has no attribute {name!r}")


sys.modules[__name__].__class__ = _Package
