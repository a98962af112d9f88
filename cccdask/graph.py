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


def _after(value, _done):
    return value


def read_again_after(arrays: Sequence[da.Array | None], after, seed: str) -> list[da.Array | None]:
    """Copies of ``arrays`` whose every task, reads included, runs again once ``after`` is done.

    For a second pass over a frame that needs a number of the whole frame from the
    first (its mean, a threshold, a fitted kernel): sharing the first pass's chunks
    would make Dask hold every one of them until that number is known, i.e. the whole
    frame in memory. ``dask.graph_manipulation.bind`` is meant for this, but (dask
    2026.8) its copy of a layer holding ``Task`` objects, e.g. a slicing layer, still
    points at the original chunks (dask/dask#12455), so the reads are shared and held
    anyway; here every key of the arrays' (culled) graphs is renamed and every task
    without dependencies waits for ``after``.

    Parameters
    ----------
    arrays : sequence of dask.array.Array or None
        None entries stay None.
    after : dask collection with one key (e.g. ``dask.delayed.Delayed``, a 0-d array)
    seed : str
        Makes the new keys (the same seed gives the same keys).
    """
    from dask._task_spec import DataNode, Task, TaskRef, convert_legacy_graph
    from dask.base import tokenize
    from dask.core import flatten

    given = [a for a in arrays if a is not None]
    (after_key,) = flatten(after.__dask_keys__())
    keys = set()
    for array in given:
        keys.update(flatten(array.__dask_keys__()))
    graph = HighLevelGraph.merge(*[a.__dask_graph__() for a in given]).cull(keys)
    tasks = convert_legacy_graph(dict(graph))
    suffix = tokenize(seed, after_key)

    def renamed(key):
        return (f"{key[0]}-{suffix}", *key[1:]) if isinstance(key, tuple) else f"{key}-{suffix}"

    names = {key: renamed(key) for key in tasks}
    copied = {}
    for key, node in tasks.items():
        node = node.substitute(names, key=names[key])
        if not node.dependencies:
            node = Task(names[key], _after, node if not isinstance(node, DataNode) else node.value,
                        TaskRef(after_key))
        copied[names[key]] = node
    common = f"read-again-{suffix}"
    outputs = {f"{a.name}-{suffix}": {names[k] for k in flatten(a.__dask_keys__())} for a in given}
    own = set().union(*outputs.values())
    after_graph = HighLevelGraph.from_collections(common, {k: v for k, v in copied.items() if k not in own},
                                                  dependencies=[after])
    layers, dependencies = dict(after_graph.layers), dict(after_graph.dependencies)
    for name, output_keys in outputs.items():
        layers[name] = MaterializedLayer({k: copied[k] for k in output_keys})
        dependencies[name] = {common}
    layered = HighLevelGraph(layers, dependencies)
    out = iter(da.Array(layered, f"{a.name}-{suffix}", a.chunks, meta=a._meta) for a in given)
    return [None if a is None else next(out) for a in arrays]
