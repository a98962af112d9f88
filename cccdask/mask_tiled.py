"""Mask generation on frames larger than memory, equal to the whole-frame masks.

The Dask layer of :func:`cccdask.kernels.preprocess.generate_mask` for a frame cut
into chunks, step for step:

1. **blur**: ``dask_image.ndfilters.gaussian_filter`` (each chunk grown by the
   kernel's radius, ``scipy.ndimage.gaussian_filter`` with ``mode="nearest"``,
   ``truncate=4``, as scikit-image's ``filters.gaussian`` calls it): bit for bit the
   whole-frame blur;
2. **threshold**: the frame's min and max (one pass), then the 256-bin histogram
   scikit-image builds, summed over chunks (one pass), given to scikit-image's
   threshold function as ``hist=``: the same threshold. Only the thresholds scikit-image
   computes from a histogram are possible (``otsu``, ``isodata``, ``yen``): ``li``
   iterates over every voxel and ``triangle`` takes no histogram;
3. **hole filling**: :func:`tiled_label` labels the background (face connectivity,
   merged across chunk borders); a background component that touches no face of the
   frame is a hole (``scipy.ndimage.binary_fill_holes``'s definition);
4. **small objects**: :func:`tiled_label` labels the objects across chunk borders;
   their voxel counts are summed over chunks and the objects under ``min_size``
   dropped (scikit-image's ``remove_small_objects``, face connectivity).

``dask_image.ndmeasure.label`` does the labelling correctly, but its graph grows with
the square of the number of chunks (it chains each chunk's label offset through all
chunks before it: 24 chunks gave 6,289 tasks, 96 chunks 85,523 tasks and 42 s to
build, on this package's test machine), so :func:`tiled_label` labels chunk by chunk
and joins the labels touching across chunk faces on the driver: a graph linear in
the chunks.

Each step that needs a number from the whole frame (range, histogram, border labels,
object sizes) computes it with ``compute`` before the next, so the frame is read
several times but never held whole.
"""

from __future__ import annotations

from typing import Callable, Sequence

import dask
import dask.array as da
import numpy as np
from scipy import ndimage
from scipy.sparse import csr_matrix
from scipy.sparse.csgraph import connected_components

from cccdask.kernels.preprocess import (
    THRESHOLD_FUNCTIONS,
    _spacing_array,
    min_size_voxels,
)
from cccdask.tiled_ranks import default_compute, reduce_chunks, sum_arrays

#: Thresholds that scikit-image computes from a histogram (possible on tiles).
HISTOGRAM_THRESHOLDS = ("otsu", "isodata", "yen")
#: Bins of scikit-image's threshold histograms (its default ``nbins``).
THRESHOLD_BINS = 256


def tiled_blur(frame: da.Array, *, spacing: Sequence[float], sigma: float) -> da.Array:
    """:func:`cccdask.kernels.preprocess.blur` chunk by chunk (``dask_image.ndfilters.gaussian_filter``)."""
    from dask_image.ndfilters import gaussian_filter

    sp = _spacing_array(spacing, frame.ndim)
    image = frame.astype(np.float32) if frame.dtype.kind != "f" else frame
    if sigma == 0:
        return image
    return gaussian_filter(image, sigma=tuple(float(s) for s in sigma / sp), mode="nearest", truncate=4.0)


def _histogram_block(block, _, low, high) -> np.ndarray:
    return np.histogram(block, bins=THRESHOLD_BINS, range=(low, high))[0]


def tiled_threshold(smoothed: da.Array, method: str, compute: Callable = default_compute) -> float:
    """:func:`cccdask.kernels.preprocess.threshold_value` from per-chunk histograms (two passes)."""
    if method not in HISTOGRAM_THRESHOLDS:
        raise ValueError(
            f"mask threshold method {method!r} cannot be computed on a frame cut into tiles: choose one of "
            f"{list(HISTOGRAM_THRESHOLDS)} (scikit-image computes them from a histogram; 'li' iterates over "
            f"every voxel and 'triangle' takes no histogram)."
        )
    low, high = compute([smoothed.min(), smoothed.max()])
    low, high = np.asarray(low)[()], np.asarray(high)[()]  # scalars of the frame's dtype, as numpy.histogram
    function = THRESHOLD_FUNCTIONS[method]
    if low == high and method == "otsu":  # scikit-image: a single-valued image is its own threshold
        return float(low)
    counts = compute([reduce_chunks(_histogram_block, smoothed, None, sum_arrays, low, high)])[0]
    edges = np.histogram(np.empty(0, dtype=smoothed.dtype), bins=THRESHOLD_BINS, range=(low, high))[1]
    centers = (edges[:-1] + edges[1:]) / 2.0  # as skimage.exposure.histogram
    return float(function(hist=(np.asarray(counts), centers)))


def _local_label_count(block) -> int:
    return int(ndimage.label(np.asarray(block))[1])


def _offset_labels(block, block_id=None, offsets=None) -> np.ndarray:
    """The block's face-connected objects numbered from ``offsets[block_id] + 1`` (0 outside)."""
    labels = ndimage.label(np.asarray(block))[0].astype(np.int64)
    labels[labels > 0] += offsets[block_id]
    return labels


def _face_pairs(labels_a, labels_b, axis) -> np.ndarray:
    """The label pairs that touch across the face between two neighbouring blocks (``a`` before ``b``)."""
    a = np.take(labels_a, -1, axis=axis).ravel()
    b = np.take(labels_b, 0, axis=axis).ravel()
    both = (a > 0) & (b > 0)
    return np.unique(np.stack([a[both], b[both]], axis=1), axis=0).reshape(-1, 2)


def _frame_face_labels(labels, faces) -> np.ndarray:
    """The labels on the given frame faces (``(axis, end)`` pairs) of a block."""
    return np.unique(np.concatenate([np.take(labels, end, axis=axis).ravel() for axis, end in faces]))


def _lookup_block(labels, lookup) -> np.ndarray:
    return lookup[labels]


def tiled_label(inside: da.Array, compute: Callable = default_compute):
    """Face-connected objects of a chunked boolean frame, objects crossing chunk borders as one.

    ``scipy.ndimage.label`` per chunk (numbered apart by the counts of the chunks
    before), then the label pairs that touch across each chunk face are joined
    (``scipy.sparse.csgraph.connected_components``) on the driver: two passes over
    the frame and a graph linear in the number of chunks.

    Returns
    -------
    labels : dask.array.Array of int64
        Per-chunk labels, globally unique (0 outside).
    components : numpy.ndarray of int64
        ``components[label]``: the object (1..n) of each label, 0 for 0.
    n : int
        The number of objects.
    """
    counts = compute([dask.delayed(_local_label_count, pure=True)(b) for b in inside.to_delayed().ravel()])
    offsets = np.concatenate([[0], np.cumsum(counts)[:-1]]).astype(np.int64).reshape(inside.numblocks)
    labels = inside.map_blocks(_offset_labels, offsets=offsets, dtype=np.int64)
    blocks = labels.to_delayed()
    pairs = [np.zeros((0, 2), dtype=np.int64)]
    requests = []
    for index in np.ndindex(*labels.numblocks):
        for axis in range(labels.ndim):
            if index[axis] + 1 < labels.numblocks[axis]:
                after = index[:axis] + (index[axis] + 1,) + index[axis + 1:]
                requests.append(dask.delayed(_face_pairs, pure=True)(blocks[index], blocks[after], axis))
    if requests:
        pairs += list(compute(requests))
    pairs = np.concatenate(pairs)
    total = int(np.sum(counts)) + 1
    graph = csr_matrix((np.ones(len(pairs)), (pairs[:, 0], pairs[:, 1])), shape=(total, total))
    _, component = connected_components(graph, directed=False)
    # background 0 stays 0; objects numbered 1..n
    _, objects = np.unique(component[1:], return_inverse=True)
    components = np.concatenate([[0], objects + 1]).astype(np.int64)
    return labels, components, int(objects.max() + 1) if objects.size else 0


def tiled_fill_holes(inside: da.Array, compute: Callable = default_compute) -> da.Array:
    """``scipy.ndimage.binary_fill_holes`` across chunks: background components off the frame's faces."""
    labels, components, n = tiled_label(~inside, compute)
    requests = []
    for index in np.ndindex(*labels.numblocks):
        faces = [(axis, end) for axis in range(labels.ndim)
                 for end, edge in ((0, 0), (-1, labels.numblocks[axis] - 1)) if index[axis] == edge]
        if faces:
            requests.append(dask.delayed(_frame_face_labels, pure=True)(labels.blocks[index], faces))
    border = components[np.unique(np.concatenate(compute(requests)))]
    hole = np.ones(n + 1, dtype=bool)
    hole[0] = False
    hole[border] = False
    return inside | labels.map_blocks(_lookup_block, lookup=hole[components], dtype=bool)


def _sizes_block(labels, _, lookup, n) -> np.ndarray:
    return np.bincount(lookup[np.asarray(labels)].ravel(), minlength=n + 1)


def tiled_remove_small_objects(inside: da.Array, min_voxels: int, compute: Callable = default_compute) -> da.Array:
    """Drop face-connected objects of fewer than ``min_voxels`` voxels, objects crossing chunks whole."""
    labels, components, n = tiled_label(inside, compute)
    sizes = np.asarray(compute([reduce_chunks(_sizes_block, labels, None, sum_arrays, components, n)])[0])
    keep = sizes >= min_voxels
    keep[0] = False
    return labels.map_blocks(_lookup_block, lookup=keep[components], dtype=bool)


def tiled_generate_mask(frame: da.Array, *, spacing: Sequence[float], sigma: float, method: str,
                        fill_holes: bool = True, min_size: float = 0.0,
                        compute: Callable = default_compute) -> tuple[da.Array, float]:
    """:func:`cccdask.kernels.preprocess.generate_mask` on a chunked frame: the same mask and threshold.

    Parameters are those of :func:`~cccdask.kernels.preprocess.generate_mask`, plus
    ``compute`` (computes a list of Dask arrays, e.g. on the cluster) for the numbers
    each step needs from the whole frame.

    Returns
    -------
    mask : dask.array.Array of bool
        Lazy, chunked like ``frame``.
    threshold : float
    """
    sp = _spacing_array(spacing, frame.ndim)
    if not (np.isfinite(min_size) and min_size >= 0):
        raise ValueError(f"mask min_size {min_size} must be >= 0 (physical area/volume).")
    smoothed = tiled_blur(frame, spacing=sp, sigma=sigma)
    threshold = tiled_threshold(smoothed, method, compute)
    inside = smoothed > threshold
    if fill_holes:
        inside = tiled_fill_holes(inside, compute)
    min_voxels = min_size_voxels(min_size, sp)
    if min_voxels > 1:
        inside = tiled_remove_small_objects(inside, min_voxels, compute)
    return inside, threshold


__all__ = ["HISTOGRAM_THRESHOLDS", "tiled_blur", "tiled_fill_holes", "tiled_generate_mask", "tiled_label",
           "tiled_remove_small_objects", "tiled_threshold"]
