"""Van Steensel's cross-correlation: the moments of shifted pairs, per chunk.

For each shift, the moments of the shifted pairs whose channel-2 voxel lies in the
chunk (:func:`shifted_moments`), merged like any moments. One compiled pass per chunk:
a row wholly inside the mask costs one vectorised dot product per shift, any other row
six fused sums per shift.
"""

from __future__ import annotations

import numpy as np
from numba import njit

from cccdask.kernels.coefficients.joint_table import value_range
from cccdask.kernels.coefficients.moments import REASSOCIATE, Moments
from cccdask.kernels.coefficients.thresholds import ChannelThreshold, Thresholds


STRIP_VOXELS = 1 << 20  # voxels per strip of a float chunk converted at once


@njit(nogil=True, cache=True, fastmath=REASSOCIATE)
def _dot(x, y):
    """Dot product of two equally long 1-D arrays."""
    total = 0.0
    for i in range(x.size):  # a range from 0: no negative-index wrap-around to check
        total += x[i] * y[i]
    return total


@njit(nogil=True, cache=True, fastmath=REASSOCIATE)
def _dot8(x0, x1, x2, x3, x4, x5, x6, x7, y):
    """Eight dot products with one ``y``: ``y`` is loaded once for eight multiply-adds."""
    s0 = s1 = s2 = s3 = s4 = s5 = s6 = s7 = 0.0
    for i in range(y.size):
        value = y[i]
        s0 += x0[i] * value
        s1 += x1[i] * value
        s2 += x2[i] * value
        s3 += x3[i] * value
        s4 += x4[i] * value
        s5 += x5[i] * value
        s6 += x6[i] * value
        s7 += x7[i] * value
    return s0, s1, s2, s3, s4, s5, s6, s7


@njit(nogil=True, cache=True, fastmath=REASSOCIATE)
def _masked_pair_sums(left, left_squared, left_weight, right, right_squared, right_weight, out):
    """``out += (sum lw rw, sum l rw, sum l^2 rw, sum lw r, sum lw r^2, sum l r)`` over
    equally long segments: the six sums of the pairs whose two voxels both count."""
    n = sum_l = sum_ll = sum_r = sum_rr = sum_lr = 0.0
    for i in range(right.size):
        n += left_weight[i] * right_weight[i]
        sum_l += left[i] * right_weight[i]
        sum_ll += left_squared[i] * right_weight[i]
        sum_r += left_weight[i] * right[i]
        sum_rr += left_weight[i] * right_squared[i]
        sum_lr += left[i] * right[i]
    out[0] += n
    out[1] += sum_l
    out[2] += sum_ll
    out[3] += sum_r
    out[4] += sum_rr
    out[5] += sum_lr


@njit(nogil=True, cache=True)
def _add_lagged_row(left, right, shifts, core_start, core_stop, out):
    """``out[s] += sum over x in the core of left[x - dx] * right[x]`` for one row.

    Shifts go eight at a time over the ``x`` all eight can pair (:func:`_dot8`); the few
    ``x`` at the ends that only some of them reach, and the shifts left over, are added
    one shift at a time.
    """
    width = left.size
    s = 0
    while s < shifts.size:
        block = min(8, shifts.size - s)
        highest = lowest = shifts[s]
        for k in range(s, s + block):
            highest, lowest = max(highest, shifts[k]), min(lowest, shifts[k])
        common_lo, common_hi = max(core_start, highest), min(core_stop, width + lowest)
        if block < 8 or common_hi <= common_lo:
            common_lo = common_hi = core_stop  # no common part: every shift on its own below
        else:
            lo, hi = common_lo, common_hi
            sums = _dot8(left[lo - shifts[s]:hi - shifts[s]], left[lo - shifts[s + 1]:hi - shifts[s + 1]],
                         left[lo - shifts[s + 2]:hi - shifts[s + 2]], left[lo - shifts[s + 3]:hi - shifts[s + 3]],
                         left[lo - shifts[s + 4]:hi - shifts[s + 4]], left[lo - shifts[s + 5]:hi - shifts[s + 5]],
                         left[lo - shifts[s + 6]:hi - shifts[s + 6]], left[lo - shifts[s + 7]:hi - shifts[s + 7]],
                         right[lo:hi])
            for k in range(8):
                out[s + k] += sums[k]
        for k in range(s, s + block):
            dx = shifts[k]
            lo, hi = max(core_start, dx), min(core_stop, width + dx)
            if hi <= lo:
                continue
            if common_hi <= common_lo:
                out[k] += _dot(left[lo - dx:hi - dx], right[lo:hi])
                continue
            if lo < common_lo:
                out[k] += _dot(left[lo - dx:common_lo - dx], right[lo:common_lo])
            if common_hi < hi:
                out[k] += _dot(left[common_hi - dx:hi - dx], right[common_hi:hi])
        s += block


@njit(nogil=True, cache=True)
def _prepare_row(values1, values2, mask, lookup1, low1, offset1, lookup2, low2, offset2, finite,
                 left, right, weight):
    """Fill ``left``, ``right`` (0 where a voxel does not count) and ``weight`` (1 where it
    does) from one row; returns how many voxels count (see :func:`_shifted_sums`)."""
    if finite and mask is None:  # every voxel counts
        for x in range(values1.size):
            left[x] = _converted(values1[x], lookup1, low1, offset1)
            right[x] = _converted(values2[x], lookup2, low2, offset2)
        return values1.size
    counted = 0
    for x in range(values1.size):
        l = _converted(values1[x], lookup1, low1, offset1)
        r = _converted(values2[x], lookup2, low2, offset2)
        inside = (l - l + r - r) == 0.0  # both finite (inf - inf and NaN give NaN)
        if mask is not None:
            inside &= mask[x] != 0
        weight[x] = inside
        left[x] = l if inside else 0.0
        right[x] = r if inside else 0.0
        counted += inside
    return counted


@njit(nogil=True, cache=True, inline="always")
def _converted(value, lookup, low, offset):
    """``value - offset`` (``lookup`` None), or ``lookup[value - low]``."""
    if lookup is None:
        return value - offset
    return lookup[value - low]


@njit(nogil=True, cache=True, fastmath=REASSOCIATE)
def _add_row_totals(left, right, totals):
    """``totals += (sum l, sum l^2, sum r, sum r^2)`` over one row."""
    sum_l = sum_ll = sum_r = sum_rr = 0.0
    for x in range(left.size):
        sum_l += left[x]
        sum_ll += left[x] * left[x]
        sum_r += right[x]
        sum_rr += right[x] * right[x]
    totals[0] += sum_l
    totals[1] += sum_ll
    totals[2] += sum_r
    totals[3] += sum_rr


@njit(nogil=True, cache=True)
def _add_column(left, right, x, columns):
    columns[0, x] += left[x]
    columns[1, x] += left[x] * left[x]
    columns[2, x] += right[x]
    columns[3, x] += right[x] * right[x]


@njit(nogil=True, cache=True)
def _shifted_sums(image1, image2, mask, lookup1, low1, offset1, lookup2, low2, offset2, finite,
                  shifts, core_start, core_stop, sums, columns, totals, edge_stop, edge_start):
    """Sums of the shifted pairs ``(l, r) = (R'(x - dx) - c1, G'(x) - c2)`` of a chunk's rows.

    Parameters
    ----------
    image1, image2 : numpy.ndarray
        2-D ``(rows, W)``, turned into ``l = R' - c1`` (``r = G' - c2``) one row at a time:
        ``v - offset1`` when ``lookup1`` is None, else ``lookup1[v - low1]``.
    mask : numpy.ndarray or None
        2-D, non-zero inside. A voxel counts when inside and finite in both channels; a
        pair counts when both its voxels do.
    finite : bool
        Every converted value is finite (integer images): no test per voxel.
    shifts : numpy.ndarray
        int64 shifts ``dx``; pairs are summed over ``x`` in ``[core_start, core_stop)``.
    sums : numpy.ndarray
        ``(6, len(shifts))``, added to: per shift ``n, sum l, sum l^2, sum r, sum r^2``
        over the pairs of rows with a voxel that does not count, and ``sum l r`` over all.
    columns, totals : numpy.ndarray
        ``(4, W)`` and ``(4,)``, added to: over the rows where every voxel counts, the
        sums of ``l, l^2, r, r^2`` per column for the columns ``[0, edge_stop)`` and
        ``[edge_start, W)``, and in all (their marginal sums follow: the total less the
        columns outside a shift's range, which lie at the ends).

    Returns
    -------
    int
        The number of rows where every voxel counts.

    Notes
    -----
    A row where every voxel counts needs one dot product per shift (:func:`_add_lagged_row`);
    any other row six fused sums per shift (:func:`_masked_pair_sums`).
    """
    rows, width = image1.shape
    left = np.empty(width)
    right = np.empty(width)
    weight = np.empty(width)
    left_squared = np.empty(width)
    right_squared = np.empty(width)
    full_rows = 0
    for row in range(rows):
        counted = _prepare_row(image1[row], image2[row], None if mask is None else mask[row],
                               lookup1, low1, offset1, lookup2, low2, offset2, finite, left, right, weight)
        if counted == width:
            _add_lagged_row(left, right, shifts, core_start, core_stop, sums[5])
            _add_row_totals(left, right, totals)
            for x in range(edge_stop):
                _add_column(left, right, x, columns)
            for x in range(max(edge_stop, edge_start), width):
                _add_column(left, right, x, columns)
            full_rows += 1
        elif counted:
            for x in range(width):
                left_squared[x] = left[x] * left[x]
                right_squared[x] = right[x] * right[x]
            for s in range(shifts.size):
                dx = shifts[s]
                lo, hi = max(core_start, dx), min(core_stop, width + dx)
                if hi > lo:
                    _masked_pair_sums(left[lo - dx:hi - dx], left_squared[lo - dx:hi - dx],
                                      weight[lo - dx:hi - dx], right[lo:hi], right_squared[lo:hi],
                                      weight[lo:hi], sums[:, s])
    return full_rows


def _row_conversion(threshold: ChannelThreshold, values: np.ndarray, centre: float
                    ) -> tuple[np.ndarray | None, int, float] | None:
    """How :func:`_shifted_sums` turns integer values ``v`` into ``corrected(v) - centre``:
    ``(None, 0, centre)`` where the correction leaves them as they are, else a lookup
    ``(lookup, low, 0.0)`` with ``lookup[v - low]``; None for non-integer values or a span
    over 2^20 (converted beforehand)."""
    if values.dtype.kind not in "iu" or values.size == 0:
        return None
    if threshold.level is None or not threshold.subtract:  # values as they are
        return None, 0, centre
    low, high = (int(v) for v in value_range(values))
    if high - low >= 1 << 20:
        return None
    candidates = np.arange(low, high + 1)
    corrected = threshold.corrected(candidates)
    if np.array_equal(corrected, candidates):
        return None, 0, centre
    return corrected - centre, low, 0.0


def shifted_moments(
    image1: np.ndarray,
    image2: np.ndarray,
    mask: np.ndarray | None,
    thresholds: Thresholds,
    shifts: np.ndarray,
    core: tuple[int, int],
    axis: int = -1,
) -> Moments:
    """Moments of ``(R'(x - dx), G'(x))`` for every shift ``dx``, for one chunk.

    Parameters
    ----------
    image1, image2, mask : numpy.ndarray
        A chunk extended along ``axis`` by up to ``max|dx|`` voxels of its neighbours on
        each side (less at the image border: no wrap-around). ``mask`` may be None.
    thresholds : Thresholds
    shifts : numpy.ndarray
        Integer shifts in voxels.
    core : (int, int)
        The chunk's own voxels along ``axis``, as ``[start, stop)`` in the extended chunk;
        pairs are attributed to the chunk that holds their channel-2 voxel.
    axis : int
        The shift axis.

    Returns
    -------
    Moments
        Arrays of ``len(shifts)`` entries. A pair counts when both voxels are inside the
        mask and finite.
    """
    shifts = np.asarray(shifts, dtype=np.int64)
    r_all = np.moveaxis(np.asarray(image1), axis, -1)
    width = r_all.shape[-1]
    r_all = r_all.reshape(-1, width)
    g_all = np.moveaxis(np.asarray(image2), axis, -1).reshape(-1, width)
    m_all = None if mask is None else np.moveaxis(np.asarray(mask), axis, -1).reshape(-1, width)
    if m_all is not None and m_all.dtype == bool:
        m_all = m_all.view(np.uint8)
    n_rows = r_all.shape[0]
    th1, th2 = thresholds.channel1, thresholds.channel2

    # centres near the means keep the one-pass sums below from cancelling
    sample = slice(None, None, max(1, n_rows // 16))
    r_sample, g_sample = th1.corrected(r_all[sample]), th2.corrected(g_all[sample])
    usable = np.isfinite(r_sample) & np.isfinite(g_sample)
    if m_all is not None:
        usable &= m_all[sample] != 0
    centre_r = float(r_sample[usable].mean()) if usable.any() else 0.0
    centre_g = float(g_sample[usable].mean()) if usable.any() else 0.0

    # the column ranges each shift sums over, on the right (channel 2) and left side
    ranges = [(s, max(core[0], dx), min(core[1], width + dx), dx) for s, dx in enumerate(shifts.tolist())]
    ranges = [(s, lo, hi, dx) for s, lo, hi, dx in ranges if hi > lo]
    edge_stop = max([max(lo, lo - dx) for _, lo, _, dx in ranges], default=0)
    edge_start = min([min(hi, hi - dx) for _, _, hi, dx in ranges], default=width)
    sums = np.zeros((6, len(shifts)))
    columns = np.zeros((4, width))
    totals = np.zeros(4)
    conversion_r = _row_conversion(th1, r_all, centre_r)
    conversion_g = _row_conversion(th2, g_all, centre_g)
    if conversion_r is not None and conversion_g is not None:  # integers: converted row by row
        full_rows = _shifted_sums(r_all, g_all, m_all, *conversion_r, *conversion_g, True, shifts,
                                  core[0], core[1], sums, columns, totals, edge_stop, edge_start)
    else:
        full_rows = 0
        as_is = (None, 0, 0.0)
        step = max(1, STRIP_VOXELS // max(width, 1))
        for row0 in range(0, n_rows, step):
            rows = slice(row0, min(row0 + step, n_rows))
            full_rows += _shifted_sums(
                th1.corrected(r_all[rows]) - centre_r, th2.corrected(g_all[rows]) - centre_g,
                None if m_all is None else m_all[rows], *as_is, *as_is, False,
                shifts, core[0], core[1], sums, columns, totals, edge_stop, edge_start)
    cumulative = np.concatenate([np.zeros((4, 1)), np.cumsum(columns, axis=1)], axis=1)
    middle = totals - cumulative[:, -1]  # the columns not summed one by one
    for s, lo, hi, dx in ranges:
        # the rows where every voxel counts: n from the pair count; a range's sums are the
        # middle plus its end columns, over the shifted columns on the left side
        sums[0, s] += full_rows * (hi - lo)
        sums[1:3, s] += middle[0:2] + cumulative[0:2, hi - dx] - cumulative[0:2, lo - dx]
        sums[3:5, s] += middle[2:4] + cumulative[2:4, hi] - cumulative[2:4, lo]

    n, s_r, s_rr, s_g, s_gg, s_rg = sums
    with np.errstate(invalid="ignore", divide="ignore"):
        safe_n = np.where(n > 0, n, 1.0)
        mean_r = np.where(n > 0, s_r / safe_n, 0.0)
        mean_g = np.where(n > 0, s_g / safe_n, 0.0)
    m2_r = s_rr - mean_r * s_r
    m2_g = s_gg - mean_g * s_g
    moments = Moments(
        n,
        np.where(n > 0, mean_r + centre_r, 0.0),
        np.where(n > 0, mean_g + centre_g, 0.0),
        m2_r,
        m2_g,
        s_rg - mean_r * s_g,
    )
    # The one-pass moments lose the digits their centre is off by: where a shift's pairs
    # vary little around a mean far from the centre, recompute them in two passes.
    ill_conditioned = (n > 0) & ((m2_r <= 1e-6 * s_rr) | (m2_g <= 1e-6 * s_gg))
    if ill_conditioned.any():
        moments = _with_direct_shifts(moments, np.flatnonzero(ill_conditioned), r_all, g_all, m_all,
                                      thresholds, shifts, core)
    return moments


def _with_direct_shifts(moments: Moments, indices: np.ndarray, r_all: np.ndarray, g_all: np.ndarray,
                        m_all: np.ndarray | None, thresholds: Thresholds, shifts: np.ndarray,
                        core: tuple[int, int]) -> Moments:
    """``moments`` with the shifts at ``indices`` recomputed from their pairs (two-pass)."""
    fields = {name: np.array(getattr(moments, name), dtype=np.float64) for name in
              ("n", "mean_x", "mean_y", "m2_x", "m2_y", "c_xy")}
    width = r_all.shape[-1]
    r_all = thresholds.channel1.corrected(r_all)
    g_all = thresholds.channel2.corrected(g_all)
    counts = np.isfinite(r_all) & np.isfinite(g_all)  # as in _shifted_sums
    if m_all is not None:
        counts &= m_all != 0
    for k in indices:
        dx = int(shifts[k])
        lo, hi = max(core[0], dx), min(core[1], width + dx)
        inside = counts[:, lo - dx:hi - dx] & counts[:, lo:hi]
        r, g = r_all[:, lo - dx:hi - dx][inside], g_all[:, lo:hi][inside]
        direct = Moments.from_weighted(r, g, np.ones(r.size))
        for name in fields:
            fields[name][k] = getattr(direct, name)
    return Moments(**fields)
