"""cccdask: Colocalization by Cross Correlation and the classic coefficients, at any scale.

Public names: :func:`ccc`, :func:`coefficients`, :func:`open_image`, :func:`run`.
``ccc`` is imported eagerly; the others on first use.
"""

from importlib import import_module

# Bound eagerly: the functions share their modules' names and must shadow them.
from cccdask.ccc import ccc

__version__ = "0.1.0"

_PUBLIC = {
    "coefficients": "cccdask.coefficients",
    "open_image": "cccdask.io.readers",
    "run": "cccdask.pipeline",
}

__all__ = sorted(["ccc", *_PUBLIC])


def __getattr__(name):
    if name in _PUBLIC:
        return getattr(import_module(_PUBLIC[name]), name)
    raise AttributeError(f"module 'cccdask' has no attribute {name!r}")
