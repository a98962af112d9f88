"""cccdask: Colocalization by Cross Correlation and the classic coefficients, at any scale.

Public names: :func:`ccc`, :func:`coefficients`, :func:`open_image`, :func:`run`.
They are imported on first use, so ``import cccdask`` stays light.
"""

from importlib import import_module

__version__ = "0.1.0"

_PUBLIC = {
    "ccc": "cccdask.ccc",
    "coefficients": "cccdask.coefficients",
    "open_image": "cccdask.io.readers",
    "run": "cccdask.pipeline",
}

__all__ = sorted(_PUBLIC)


def __getattr__(name):
    if name in _PUBLIC:
        return getattr(import_module(_PUBLIC[name]), name)
    raise AttributeError(f"module 'cccdask' has no attribute {name!r}")
