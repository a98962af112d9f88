"""cccdask: Colocalization by Cross Correlation and the classic coefficients, at any scale.

Public names: :func:`ccc`, :func:`coefficients`, :func:`open_image`, :func:`run`.
``ccc`` and ``coefficients`` are imported eagerly (they shadow their modules' names); the others on first use.
"""

from importlib import import_module

# Bound eagerly: the functions share their modules' names and must shadow them.
from cccdask.ccc import ccc
from cccdask.coefficients import coefficients

__version__ = "0.1.0"

_PUBLIC = {
    "open_image": "cccdask.io.readers",
    "run": "cccdask.pipeline",
}

__all__ = sorted(["ccc", "coefficients", *_PUBLIC])


def __getattr__(name):
    if name in _PUBLIC:
        return getattr(import_module(_PUBLIC[name]), name)
    raise AttributeError(f"module 'cccdask' has no attribute {name!r}")
