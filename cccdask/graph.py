"""Hand-built Dask graph layers: many small tasks gathered into one layer.

Where a computation has several tasks per chunk or per frame, a delayed call or an
array operation per task costs more to build and to schedule than many of the tasks
take to run (about 0.1-0.2 ms each on these machines). :class:`TaskLayer` gathers
plain tasks into one graph layer on top of the input arrays; :func:`output_array`
exposes some of its results as a Dask array.
"""

from __future__ import annotations

from typing import Any, Sequence

import dask.array as da
import numpy as np
from dask.highlevelgraph import HighLevelGraph, MaterializedLayer


def as_dask(array: Any, chunks: Any = "auto") -> da.Array | None:
    """``array`` as a Dask array: a Dask array as it is, None as None, anything else
    wrapped with ``chunks``.

    In-memory arrays get a random name instead of one hashed from their bytes (hashing
    costs about 10 ms per 8 MB): their graphs are computed at once, not shared.
    """
    if array is None or isinstance(array, da.Array):
        return array
    return da.from_array(np.asarray(array), chunks=chunks, name=False)


class TaskLayer:
    """Tasks of one computation, gathered into one graph layer.

    Parameters
    ----------
    prefix : str
        What the layer computes (the start of its name and of every key).
    token : str
        A deterministic token of the inputs and options (``dask.base.tokenize``).
    arrays : sequence of dask.array.Array or None
        The inputs whose chunks the tasks read (None entries are skipped).

    Notes
    -----
    Tasks are Dask's tuples ``(function, *arguments)``; a key (or a list of keys)
    among the arguments is replaced by its result.
    """

    def __init__(self, prefix: str, token: str, arrays: Sequence[da.Array | None]):
        self.name = f"{prefix}-{token}"
        self.tasks: dict = {}
        self.arrays = [a for a in arrays if a is not None]

    def add(self, kind: str, index: tuple, function, *arguments) -> tuple:
        """Add the task ``function(*arguments)`` under the key ``(name-kind, *index)``."""
        key = (f"{self.name}-{kind}", *index)
        self.tasks[key] = (function, *arguments)
        return key

    def graph(self) -> HighLevelGraph:
        return HighLevelGraph.from_collections(self.name, self.tasks, dependencies=self.arrays)


def output_array(graph: HighLevelGraph, layer: str, name: str, tasks: dict[tuple, Any],
                 chunks: tuple[tuple[int, ...], ...], dtype) -> da.Array:
    """A Dask array whose chunks are ``tasks`` (keys ``(name, *chunk index)``) on top of
    ``graph``'s ``layer``."""
    layers = dict(graph.layers)
    layers[name] = MaterializedLayer(tasks)
    dependencies = dict(graph.dependencies)
    dependencies[name] = {layer}
    return da.Array(HighLevelGraph(layers, dependencies), name, chunks, dtype=dtype)
