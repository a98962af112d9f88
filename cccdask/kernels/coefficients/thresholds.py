"""Thresholds per channel: background correction ``R' = max(R - T, 0)`` and soft weights."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


@dataclass(frozen=True)
class ChannelThreshold:
    """The threshold rule of one channel.

    Parameters
    ----------
    level : float or None
        Threshold T in image intensity units. ``None``: no threshold (no background
        subtraction; the weight and the object test use T = 0).
    soft_range : float
        Soft-threshold range rho >= 0 in intensity units: the weight rises linearly
        from 0 at ``T - rho/2`` to 1 at ``T + rho/2``. It changes only the weights.
    subtract : bool
        Background-correct values as ``max(v - T, 0)`` (Huygens). False: values are used
        as they are and T only decides what is above threshold (Coloc 2, JACoP, skimage).
    inclusive : bool
        "Above threshold" means ``v >= T and v > 0`` (Coloc 2) instead of ``v > T``.
    """

    level: float | None = None
    soft_range: float = 0.0
    subtract: bool = True
    inclusive: bool = False

    def __post_init__(self):
        if self.level is not None and not np.isfinite(self.level):
            raise ValueError(f"threshold {self.level!r} must be a finite number (or None for no threshold).")
        if not (np.isfinite(self.soft_range) and self.soft_range >= 0):
            raise ValueError(
                f"threshold_range {self.soft_range!r} must be a finite number >= 0 "
                f"(0 for a hard threshold)."
            )

    @property
    def cut(self) -> float:
        """The threshold used by the weight and the object test (0 when none is given)."""
        return 0.0 if self.level is None else float(self.level)

    def corrected(self, values: np.ndarray) -> np.ndarray:
        """Background-corrected values ``max(v - T, 0)`` as float64 (``v`` when T is None)."""
        values = np.asarray(values, dtype=np.float64)
        if self.level is None or not self.subtract:
            return values
        return np.maximum(values - float(self.level), 0.0)

    def weight(self, values: np.ndarray) -> np.ndarray:
        """Weight in [0, 1]: ``v > T`` for a hard threshold, a linear ramp for a soft one."""
        values = np.asarray(values, dtype=np.float64)
        if self.soft_range == 0:
            return self.above(values).astype(np.float64)
        low = self.cut - self.soft_range / 2
        return np.clip((values - low) / self.soft_range, 0.0, 1.0)

    def above(self, values: np.ndarray) -> np.ndarray:
        """Boolean: the voxel belongs to this channel's objects (``v > T``)."""
        values = np.asarray(values)
        if self.inclusive:
            return (values >= self.cut) & (values > 0)
        return values > self.cut


@dataclass(frozen=True)
class Thresholds:
    """The threshold rules of both channels, and the conventions that differ between tools.

    Attributes
    ----------
    channel1, channel2 : ChannelThreshold
    manders : {"all", "own"}
        Denominator of m1 (m2 alike): ``"all"``: sum of R' over the mask (Huygens,
        Coloc 2, scikit-image); ``"own"``: sum of R' over voxels above channel 1's own
        threshold, the numerator then also requiring it (JACoP).
    icq_zero_positive : bool
        ICQ counts zero products as positive (Coloc 2) instead of only positive ones.
    """

    channel1: ChannelThreshold = field(default_factory=ChannelThreshold)
    channel2: ChannelThreshold = field(default_factory=ChannelThreshold)
    manders: str = "all"
    icq_zero_positive: bool = False
