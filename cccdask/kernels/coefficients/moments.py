"""Moments (count, means, co-moments) and the pairwise merge of Chan, Golub & LeVeque (1979)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from numba import njit

REASSOCIATE = {"reassoc", "contract"}  # numba fastmath: sums may be reordered, so vectorised


@njit(nogil=True, cache=True, inline="always")
def _entry(values, codes, i):
    """``values[i]``, or ``values[codes[i]]`` when ``codes`` is given."""
    if codes is None:
        return values[i]
    return values[codes[i]]


@njit(nogil=True, cache=True, fastmath=REASSOCIATE)
def _weighted_comoments(x, y, weights, x_codes, y_codes):
    """``(n, mean_x, mean_y, m2_x, m2_y, c_xy)`` of values occurring ``weights`` times
    (two-pass); entry ``i`` is ``x[i]``, or ``x[x_codes[i]]`` (``y`` alike)."""
    n = mean_x = mean_y = 0.0
    for i in range(weights.size):
        n += weights[i]
        mean_x += weights[i] * _entry(x, x_codes, i)
        mean_y += weights[i] * _entry(y, y_codes, i)
    if n == 0:
        return 0.0, 0.0, 0.0, 0.0, 0.0, 0.0
    mean_x /= n
    mean_y /= n
    m2_x = m2_y = c_xy = 0.0
    for i in range(weights.size):
        dx = _entry(x, x_codes, i) - mean_x
        dy = _entry(y, y_codes, i) - mean_y
        m2_x += weights[i] * dx * dx
        m2_y += weights[i] * dy * dy
        c_xy += weights[i] * dx * dy
    return n, mean_x, mean_y, m2_x, m2_y, c_xy


@dataclass(frozen=True)
class Moments:
    """Count, means and centred second moments of value pairs ``(x, y)``.

    All fields are float64 arrays of one shape (scalar, or one entry per shift).
    ``m2_x = sum (x - mean_x)^2``, ``c_xy = sum (x - mean_x)(y - mean_y)``.
    """

    n: np.ndarray
    mean_x: np.ndarray
    mean_y: np.ndarray
    m2_x: np.ndarray
    m2_y: np.ndarray
    c_xy: np.ndarray

    @classmethod
    def empty(cls, shape: tuple[int, ...] = ()) -> "Moments":
        zero = np.zeros(shape, dtype=np.float64)
        return cls(zero, zero, zero, zero, zero, zero)

    @classmethod
    def from_weighted(cls, x: np.ndarray, y: np.ndarray, weights: np.ndarray,
                      x_codes: np.ndarray | None = None, y_codes: np.ndarray | None = None) -> "Moments":
        """Moments of values ``x, y`` each occurring ``weights`` times (two-pass, centred);
        with codes, entry ``i`` is ``x[x_codes[i]]`` (``y`` alike)."""
        x, y = (np.asarray(v, dtype=np.float64) for v in (x, y))
        return cls(*(np.float64(v) for v in _weighted_comoments(x, y, np.asarray(weights), x_codes, y_codes)))

    def merge(self, other: "Moments") -> "Moments":
        """Moments of the union of two disjoint sets (Chan, Golub & LeVeque pairwise update)."""
        n = self.n + other.n
        with np.errstate(invalid="ignore", divide="ignore"):
            fraction = np.where(n > 0, other.n / np.where(n > 0, n, 1.0), 0.0)
        delta_x = other.mean_x - self.mean_x
        delta_y = other.mean_y - self.mean_y
        cross = self.n * fraction  # n_a n_b / n
        return Moments(
            n,
            self.mean_x + delta_x * fraction,
            self.mean_y + delta_y * fraction,
            self.m2_x + other.m2_x + delta_x * delta_x * cross,
            self.m2_y + other.m2_y + delta_y * delta_y * cross,
            self.c_xy + other.c_xy + delta_x * delta_y * cross,
        )

    def pearson(self) -> tuple[np.ndarray, np.ndarray]:
        """Pearson r and, where r is undefined, the reason (``""`` where defined).

        A variance within rounding of zero (``m2 <= 16 n (eps mean)^2``: what rounding the
        mean of a constant leaves) counts as zero, so r of constant data is NaN however
        the data were chunked.
        """
        eps = np.finfo(np.float64).eps
        spurious_x = 16 * self.n * (eps * self.mean_x) ** 2
        spurious_y = 16 * self.n * (eps * self.mean_y) ** 2
        real_variance = (self.m2_x > spurious_x) & (self.m2_y > spurious_y)
        denominator = np.where(real_variance, np.sqrt(self.m2_x * self.m2_y), 0.0)
        with np.errstate(invalid="ignore", divide="ignore"):
            r = np.where(denominator > 0, self.c_xy / np.where(denominator > 0, denominator, 1.0), np.nan)
        r = np.clip(r, -1.0, 1.0)
        reason = np.where(
            self.n == 0,
            "no voxels",
            np.where(denominator > 0, "", "zero variance in a channel"),
        )
        return r, reason
