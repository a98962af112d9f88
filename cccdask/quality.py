"""Whether a frame's fit can be trusted: a per-frame quality verdict, and its summary.

A frame whose Gaussian fit converged is ``ok`` in ``frame_status``, but the fit can
still mean little. :func:`frame_quality` gives each frame a bit mask of warnings
(stored as ``frame_quality``, CF ``flag_masks``/``flag_meanings``):

``low_confidence`` (1)
    confidence < 0.1, the Fiji manual's threshold: little correlation at the fitted
    distance compared with the raw (unsubtracted) correlation.
``poor_fit`` (2)
    R squared < 0.05, the plugin's threshold: the Gaussian does not describe the
    subtracted profile.
``flat_profile`` (4)
    the subtracted profile does not fall back towards zero: the magnitude of its
    far-field level (the median over the outer quarter of the distances, beyond
    mean + 3 sigma of the fit where that leaves at least 3 distances) is at least 0.25
    of its peak. The plugin's Gaussian has no baseline, so such a plateau widens sigma
    and moves the mean. On synthetic paired spots without background
    (tests/test_quality.py: sparse and dense spots, PSF 0.1-0.3 um, distances
    0.3-1.2 um, independent channels) the ratio stays within +-0.19; with an
    unsubtracted offset as bright as the spots it is 0.4-0.8 and sigma comes out 1.4x
    to 15x too wide.
``background_dominated`` (8)
    the images the correlation saw have a floor: in either channel the 1st percentile
    under the mask is at least half the mean there (:func:`intensity_floor`). A
    background shared by both channels correlates with itself at every distance; the
    plugin's confidence falls (the raw correlation is mostly the product of the two
    floors) and the subtracted profile carries the background's structure (a gradient,
    haze, the mask's edge against the offset). Subtracting it
    (``preprocess.background``) removes the flag, since the floor is measured after
    preprocessing.

:func:`intensity_floor` is the check ``cccdask validate`` runs on the data before any
analysis, and the task runs on every frame: the 1st percentile of the intensities under
the mask as a fraction of their mean. Spots on a dark background give about 0 (noise around 0); an unsubtracted offset
gives a floor close to the mean (0.67 for an offset of a fifth of the spot amplitude
in the synthetic scenes). At 0.5 or more, half the mean intensity is a level that
nearly every voxel has: background to subtract (``preprocess.background``).
"""

from __future__ import annotations

import numpy as np

LOW_CONFIDENCE = 0.1
LOW_R_SQUARED = 0.05
FAR_FIELD_RATIO = 0.25
FLOOR_FRACTION = 0.5

QUALITY_FLAGS = {"low_confidence": 1, "poor_fit": 2, "flat_profile": 4, "background_dominated": 8}
QUALITY_ATTRS = {
    "long_name": "quality warnings of the frame's fit (bit mask; 0: none)",
    "flag_masks": list(QUALITY_FLAGS.values()),
    "flag_meanings": " ".join(QUALITY_FLAGS),
    "thresholds": f"confidence < {LOW_CONFIDENCE}; R squared < {LOW_R_SQUARED}; |far-field level| of the "
                  f"subtracted profile >= {FAR_FIELD_RATIO} x its peak; 1st percentile under the mask >= "
                  f"{FLOOR_FRACTION} x the mean in either channel",
}
BACKGROUND_HINT = (
    "set preprocess.background (e.g. image1: {method: median} and image2: {method: median}, or 'constant' "
    "with the camera offset) so that the background is subtracted before the correlation"
)


def far_field_ratio(distance: np.ndarray, subtracted: np.ndarray, mean=None, sigma=None) -> np.ndarray:
    """The subtracted profile's far-field level over its peak, per frame.

    Parameters
    ----------
    distance : numpy.ndarray, shape (n_distances,)
        Profile distances (physical units), ascending.
    subtracted : numpy.ndarray, shape (n_distances,) or (n_frames, n_distances)
        Subtracted radial profiles.
    mean, sigma : float or numpy.ndarray, optional
        The Gaussian fit per frame (physical units; NaN for no fit). Distances within
        ``|mean| + 3 sigma`` are left out of the far field when at least 3 remain.

    Returns
    -------
    numpy.ndarray
        ``median(far field) / max(profile)`` per frame (a scalar array for one
        profile); +inf where the profile has no positive value, NaN where it is all NaN.
    """
    distance = np.asarray(distance, dtype=float)
    profiles = np.atleast_2d(np.asarray(subtracted, dtype=float))
    n = profiles.shape[0]
    mean = np.broadcast_to(np.nan if mean is None else np.asarray(mean, dtype=float), (n,))
    sigma = np.broadcast_to(np.nan if sigma is None else np.asarray(sigma, dtype=float), (n,))
    outer = distance >= 0.75 * distance[-1]
    ratio = np.full(n, np.nan)
    for i, profile in enumerate(profiles):
        finite = np.isfinite(profile)
        if not finite.any():
            continue
        far = outer & (distance > abs(mean[i]) + 3 * sigma[i]) if np.isfinite(mean[i] + sigma[i]) else outer
        if np.count_nonzero(far) < 3:
            far = outer
        if finite.all():  # the usual case: no NaN to skip (nanmedian's copies cost more than the rest)
            peak, level = profile.max(), np.median(profile[far])
        else:
            peak, level = np.nanmax(profile), np.nanmedian(profile[far])
        ratio[i] = np.inf if peak <= 0 else level / peak
    return ratio if np.ndim(subtracted) > 1 else ratio[0]


def frame_quality(confidence=None, r_squared=None, far_field=None, floor1=None, floor2=None) -> np.ndarray:
    """The quality bit mask per frame (see :data:`QUALITY_FLAGS`); 0 when nothing is wrong.

    Parameters
    ----------
    confidence, r_squared : numpy.ndarray, optional
        Per frame, from the fit.
    far_field : numpy.ndarray, optional
        From :func:`far_field_ratio`.
    floor1, floor2 : numpy.ndarray, optional
        :func:`intensity_floor` of each channel as correlated.

    NaN (not available) raises no flag; leave out what the mode does not compute.
    """
    tests = (
        (confidence, "low_confidence", lambda v: v < LOW_CONFIDENCE),
        (r_squared, "poor_fit", lambda v: v < LOW_R_SQUARED),
        (far_field, "flat_profile", lambda v: np.abs(v) >= FAR_FIELD_RATIO),
        (floor1, "background_dominated", lambda v: v >= FLOOR_FRACTION),
        (floor2, "background_dominated", lambda v: v >= FLOOR_FRACTION),
    )
    given = [(np.asarray(v, dtype=float), name, test) for v, name, test in tests if v is not None]
    if not given:
        raise ValueError("frame_quality needs at least one of confidence, r_squared, far_field, floor1, floor2.")
    flags = np.zeros(np.broadcast_shapes(*(v.shape for v, _, _ in given)), dtype=np.uint8)
    with np.errstate(invalid="ignore"):
        for values, name, test in given:
            flags |= np.where(test(values), QUALITY_FLAGS[name], 0).astype(np.uint8)
    return flags


def quality_names(flags: int) -> str:
    """The flags of one frame as text: ``"ok"`` or e.g. ``"low_confidence+background_dominated"``."""
    names = [name for name, bit in QUALITY_FLAGS.items() if int(flags) & bit]
    return "+".join(names) if names else "ok"


def quality_counts(flags: np.ndarray, assessed: np.ndarray | None = None) -> dict[str, int]:
    """How many frames carry each flag (among ``assessed`` frames, default all)."""
    flags = np.asarray(flags)
    if assessed is not None:
        flags = flags[np.asarray(assessed, dtype=bool)]
    return {name: int(np.count_nonzero(flags & bit)) for name, bit in QUALITY_FLAGS.items()}


def quality_summary(counts: dict[str, int], n_frames: int, background_subtracted: bool) -> list[str]:
    """Lines for the end of a run: the counts and, where background is the likely cause, what to set.

    Parameters
    ----------
    counts : dict
        From :func:`quality_counts`.
    n_frames : int
        Frames assessed.
    background_subtracted : bool
        Whether the run subtracted a background (``preprocess.background``).
    """
    if not any(counts.values()):
        return [f"Quality: no warnings in {n_frames} frame(s)."]
    parts = [f"{name} {count}" for name, count in counts.items() if count]
    lines = [f"Quality warnings in {n_frames} frame(s): " + ", ".join(parts) + " (see frame_quality, fits.csv)."]
    if counts.get("background_dominated"):
        if background_subtracted:
            lines.append("Background is the likely cause: the images still have a floor after the background "
                         "subtraction; check the preprocess.background settings (a higher level, or "
                         "'median'/'region_mean').")
        else:
            lines.append("Background is the likely cause: no background is subtracted and the images have a "
                         f"floor under the mask; {BACKGROUND_HINT}.")
    elif (counts.get("flat_profile") or counts.get("low_confidence")) and not background_subtracted:
        lines.append(f"If the images have an unsubtracted background, {BACKGROUND_HINT}.")
    return lines


def intensity_floor(image: np.ndarray, mask: np.ndarray | None = None) -> float:
    """The 1st percentile of ``image`` under ``mask`` as a fraction of its mean (see module doc).

    Returns NaN when the mask is empty or the mean is not positive.
    """
    values = np.asarray(image)
    values = values[np.asarray(mask) != 0] if mask is not None else values.ravel()
    total = float(values.sum(dtype=np.float64))
    if values.dtype.kind == "f" and not np.isfinite(total):  # a NaN or inf among the values: drop them
        values = values[np.isfinite(values)]
        total = float(values.sum(dtype=np.float64))
    if values.size == 0:
        return float("nan")
    mean = total / values.size
    if mean <= 0:
        return float("nan")
    # the 1st percentile, linearly interpolated between two neighbouring order statistics
    position = 0.01 * (values.size - 1)
    low = int(np.floor(position))
    value_low, value_high = _order_statistics(values, low, min(low + 1, values.size - 1))
    floor = float(value_low) + (position - low) * (float(value_high) - float(value_low))
    return floor / mean


def _order_statistics(values: np.ndarray, low: int, high: int) -> tuple:
    """The ``low``-th and ``high``-th smallest of ``values`` (0-based; ``high`` is ``low`` or ``low + 1``).

    Exact, in O(n): the ranks sought are small (the 1st percentile), so the values up to a
    threshold drawn from a strided sample (about twice the rank sought) are selected first
    and partitioned alone; when fewer than ``high + 1`` values lie under the threshold
    (an unlucky sample) the whole array is partitioned. The order statistics of the values
    up to any threshold that ``high + 1`` values reach are those of all the values.
    """
    step = 64
    if values.size >= 64 * step:
        sample = values[::step]
        rank = min(sample.size - 1, 2 * (high * sample.size) // values.size + 8)
        threshold = np.partition(sample, rank)[rank]
        candidates = values[values <= threshold]
        if candidates.size > high:
            values = candidates
    part = np.partition(values, low)
    return part[low], (part[low] if high == low else part[low + 1:].min())


def dataset_quality(ds) -> np.ndarray | None:
    """The quality bit mask of every frame of a results Dataset (store or :func:`cccdask.ccc`).

    Uses what the Dataset has: ``confidence``, ``r_squared``, the subtracted profile
    with the fit (``mean``, ``sigma``), and ``intensity_floor1``/``intensity_floor2``
    when the run measured them. Frames whose ``frame_status`` is not ok get 0 (their
    status says what is wrong). None in correlation mode (no fit to judge).
    """
    if "profile_subtracted" not in ds.variables and "confidence" not in ds.variables:
        return None

    def values(name):
        if name not in ds.variables:
            return None
        variable = ds[name]
        if "component" in variable.dims:  # several Gaussians: component 1 (smallest mean) is judged
            variable = variable.isel(component=0)
        return np.asarray(variable.values, dtype=float)

    far = None
    if "far_field_ratio" in ds.variables:  # a pipeline store: measured by each task
        far = values("far_field_ratio")
    elif "profile_subtracted" in ds.variables:
        far = far_field_ratio(ds["distance"].values, ds["profile_subtracted"].values, values("mean"), values("sigma"))
    flags = np.atleast_1d(frame_quality(values("confidence"), values("r_squared"), far,
                                        values("intensity_floor1"), values("intensity_floor2")))
    if "frame_status" in ds.variables:
        flags = np.where(np.asarray(ds["frame_status"].values) == 1, flags, 0).astype(np.uint8)
    return flags


QUALITY_VARIABLE_ATTRS = {
    **{f"intensity_floor{channel}": {
        "description": f"1st percentile / mean of image {channel} under the mask, as correlated (after any "
                       f"preprocessing): >= {FLOOR_FRACTION} flags background_dominated",
        "units": "1",
    } for channel in (1, 2)},
    "far_field_ratio": {
        "description": f"median of the stored subtracted profile's far field (its outer quarter, beyond |mean| + "
                       f"3 sigma where possible) over its peak: >= {FAR_FIELD_RATIO} flags flat_profile",
        "units": "1",
    },
}
