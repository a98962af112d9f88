"""The classic colocalization coefficients of two channels, per frame, exact at any size.

:func:`coefficients` builds a Dask graph around the pure kernels of
:mod:`cccdask.kernels.coefficients`: one small statistics object per chunk, merged in a
tree per frame, then finalised into coefficients. NumPy inputs are computed at once;
Dask (or Dask-backed xarray) inputs give a lazy :class:`xarray.Dataset`.

Where each part lives
---------------------
:mod:`~cccdask.coefficients.arguments`
    Thresholds, presets and Van Steensel shifts from the caller's arguments.
:mod:`~cccdask.coefficients.graph`
    The Dask layer: chunked inputs, the per-frame task layer, the merge tree, finalising.
:mod:`~cccdask.coefficients.compute`
    :func:`coefficients` itself and the attributes of its dataset.
:mod:`~cccdask.coefficients.significance`
    :func:`costes_significance`: Costes' randomisation test.
:mod:`~cccdask.coefficients.cytofluorogram`
    :func:`plot_cytofluorogram`.
"""

from cccdask.coefficients.arguments import PRESETS, Preset, resolve_thresholds
from cccdask.coefficients.compute import coefficients
from cccdask.coefficients.cytofluorogram import plot_cytofluorogram
from cccdask.coefficients.significance import costes_significance

__all__ = ["coefficients", "costes_significance", "plot_cytofluorogram"]
