"""The manual's preparation steps as configuration, applied frame by frame.

The Fiji manual has users prepare every image by hand before CCC: correct the
chromatic shift, make a mask, convert to 32-bit, subtract the background. Here the
``preprocess:`` section of a run's YAML is validated by :class:`Preprocessing`, and
:func:`preprocess_frame` applies it to one frame in the manual's order:

1. chromatic shift of channel 2 (voxels shifted in from outside the frame are 0 and
   are removed from the mask);
2. mask generation (if configured);
3. float32 conversion;
4. background subtraction, per channel.

It returns the prepared frame and a record of the values used (backgrounds, shift,
threshold) for the results. The kernels live in :mod:`cccdask.kernels.preprocess`. For a
frame held as Dask arrays (larger than memory), :func:`cccdask.preprocess_lazy` applies
the same settings chunk by chunk with the same results.

Files named in the configuration (bead images, background region masks) are read by
the pipeline, which passes arrays in: :meth:`Preprocessing.with_estimated_shift` and
the ``background_regions=`` argument of :func:`preprocess_frame`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Literal, Sequence

import numpy as np
from pydantic import (
    Field,
    StrictBool,
    StrictFloat,
    field_validator,
    model_validator,
)

from cccdask.config_fields import Section, resolve_path
from cccdask.frames import InvalidFrameError
from cccdask.kernels.preprocess import (
    BackgroundMethod,
    ThresholdMethod,
    apply_shift,
    background_value,
    box_to_slices,
    estimate_shift,
    generate_mask,
    subtract_background,
    valid_region,
)

__all__ = [
    "Background",
    "Backgrounds",
    "ChromaticShift",
    "MaskGeneration",
    "Preprocessing",
    "ShiftReference",
    "generate_shared_mask",
    "preprocess_frame",
]


# Numbers and booleans are strict (YAML ``true`` is not 1.0, ``2.5`` is not a frame
# index); containers and paths stay lax so YAML lists and strings are accepted.
NonNegativeFloat = Annotated[float, Field(ge=0, strict=True)]
NonNegativeInt = Annotated[int, Field(ge=0, strict=True)]
PositiveInt = Annotated[int, Field(gt=0, strict=True)]


class Background(Section):
    """Background of one channel, subtracted after conversion to float32.

    ``method``: ``none`` (0); ``constant`` (``value``, intensity units); ``median``
    (the frame's median, the manual's advice for mostly-background 3D frames);
    ``region_mean`` (the mean inside ``box`` and/or ``region_mask``).
    """

    method: BackgroundMethod = "none"
    value: StrictFloat | None = Field(
        None, description="Background level for method 'constant' (intensity units)."
    )
    box: list[tuple[StrictFloat, StrictFloat]] | None = Field(
        None,
        min_length=2,
        max_length=3,
        description="For 'region_mean': one [start, stop] pair per axis, (z,) y, x order, physical "
        "units from the frame's origin; a voxel is inside when its centre is.",
    )
    region_mask: Path | None = Field(
        None,
        description="For 'region_mean': a mask file (non-zero = background region), one frame "
        "shared by all frames or one per frame.",
    )

    _resolve_region_mask = field_validator("region_mask", mode="after")(resolve_path)

    @model_validator(mode="after")
    def _fields_match_method(self) -> "Background":
        if self.method == "constant" and self.value is None:
            raise ValueError("background method 'constant' needs 'value' (the level to subtract).")
        if self.method != "constant" and self.value is not None:
            raise ValueError(f"'value' is only used by background method 'constant', not {self.method!r}.")
        if self.method == "region_mean" and self.box is None and self.region_mask is None:
            raise ValueError("background method 'region_mean' needs 'box' or 'region_mask'.")
        if self.method != "region_mean" and (self.box is not None or self.region_mask is not None):
            raise ValueError(
                f"'box' and 'region_mask' are only used by background method 'region_mean', "
                f"not {self.method!r}."
            )
        return self


class Backgrounds(Section):
    """One :class:`Background` per channel."""

    image1: Background = Field(default_factory=Background)
    image2: Background = Field(default_factory=Background)


class MaskGeneration(Section):
    """Segment a mask: Gaussian blur, automatic threshold, hole filling, small-object removal.

    ``source``: the channel to segment, ``image1`` or ``image2`` (after the chromatic
    shift), or ``mask`` (the run's mask input read as an intensity image, e.g. a
    DAPI or actin stain). With ``image1``/``image2`` and a mask input also given, the
    generated mask is restricted to the mask input.
    ``from_frame``: unset, one mask per frame; a frame index, one mask generated from
    that frame and used for every frame (:func:`generate_shared_mask`).
    """

    source: Literal["image1", "image2", "mask"] = "image1"
    sigma: NonNegativeFloat = Field(0.0, description="Gaussian blur sigma, physical units (0: no blur).")
    method: ThresholdMethod = Field(
        "otsu", description="scikit-image automatic threshold (no Huang in scikit-image: 'li' is closest)."
    )
    fill_holes: StrictBool = True
    min_size: NonNegativeFloat = Field(
        0.0, description="Drop objects smaller than this area (2D) or volume (3D), physical units."
    )
    from_frame: NonNegativeInt | None = None


class ShiftReference(Section):
    """Where to estimate the chromatic shift: two bead images, or a frame of the data."""

    image1: Path | None = Field(None, description="Reference (beads) image seen in channel 1.")
    image2: Path | None = Field(None, description="The same reference seen in channel 2.")
    frame: NonNegativeInt | None = Field(None, description="Use this frame of the analysed images.")

    _resolve_images = field_validator("image1", "image2", mode="after")(resolve_path)

    @model_validator(mode="after")
    def _one_kind(self) -> "ShiftReference":
        files = self.image1 is not None or self.image2 is not None
        if files and (self.image1 is None or self.image2 is None):
            raise ValueError("chromatic_shift.reference needs both 'image1' and 'image2' bead images.")
        if files == (self.frame is not None):
            raise ValueError(
                "chromatic_shift.reference needs either 'image1' and 'image2' (bead images) or "
                "'frame' (a frame of the data), not both and not neither."
            )
        return self


class ChromaticShift(Section):
    """Translation of channel 2 onto channel 1: known, or estimated once from a reference.

    ``shift`` is the correction applied to channel 2 (physical units, ``(z,) y, x``):
    the corrected channel 2 at ``x`` is the recorded one at ``x - shift``. If channel 2
    appears displaced by ``+d`` relative to channel 1, the shift is ``-d``.
    """

    shift: tuple[StrictFloat, ...] | None = Field(None, min_length=2, max_length=3)
    reference: ShiftReference | None = None
    upsample_factor: PositiveInt = Field(100, description="Estimation precision: 1/upsample_factor pixel.")
    order: int = Field(
        1, ge=0, le=5, strict=True, description="Spline order of the interpolation (1 linear, 3 cubic)."
    )

    @model_validator(mode="after")
    def _one_source(self) -> "ChromaticShift":
        if (self.shift is None) == (self.reference is None):
            raise ValueError(
                "chromatic_shift needs exactly one of 'shift' (known, physical units) or "
                "'reference' (to estimate it from)."
            )
        return self


class Preprocessing(Section):
    """The ``preprocess:`` section: chromatic shift, mask generation, backgrounds."""

    chromatic_shift: ChromaticShift | None = None
    mask: MaskGeneration | None = None
    background: Backgrounds = Field(default_factory=Backgrounds)

    def with_estimated_shift(
        self, reference1: np.ndarray, reference2: np.ndarray, spacing: Sequence[float]
    ) -> "Preprocessing":
        """A copy whose chromatic shift is estimated from the loaded reference images.

        The pipeline calls this once, before the frames, with the two bead images (or
        the reference frame's two channels). The result has ``shift`` set (physical
        units) and no ``reference``.
        """
        chromatic = self.chromatic_shift
        if chromatic is None or chromatic.reference is None:
            raise ValueError("with_estimated_shift needs chromatic_shift.reference in the settings.")
        shift = estimate_shift(
            np.asarray(reference1), np.asarray(reference2), spacing=spacing,
            upsample_factor=chromatic.upsample_factor,
        )
        estimated = chromatic.model_copy(update={"shift": tuple(float(s) for s in shift), "reference": None})
        return self.model_copy(update={"chromatic_shift": estimated})


def _shift_of(settings: Preprocessing, ndim: int) -> np.ndarray | None:
    chromatic = settings.chromatic_shift
    if chromatic is None:
        return None
    if chromatic.shift is None:
        raise ValueError(
            "chromatic_shift.reference has not been estimated yet: call "
            "settings.with_estimated_shift(reference1, reference2, spacing) once before the frames."
        )
    if len(chromatic.shift) != ndim:
        raise ValueError(
            f"chromatic_shift.shift {chromatic.shift} has {len(chromatic.shift)} values but the frames "
            f"are {ndim}D; give one per axis in (z,) y, x order (physical units)."
        )
    return np.asarray(chromatic.shift, dtype=float)


def _align(image1, image2, settings, spacing):
    """Step 1: channel 2 shifted (float32); the voxels with data (None: all); the shift used."""
    image1 = np.asarray(image1)
    image2 = np.asarray(image2)
    if image1.shape != image2.shape:
        raise ValueError(f"image1 {image1.shape} and image2 {image2.shape} differ in shape.")
    shift = _shift_of(settings, image1.ndim)
    if shift is None:
        return image1, image2, None, np.zeros(image1.ndim)
    order = settings.chromatic_shift.order
    shifted = apply_shift(image2, shift, spacing=spacing, order=order)
    return image1, shifted, valid_region(image1.shape, shift, spacing=spacing), shift


def _generate(image1, image2, mask, generation: MaskGeneration, spacing):
    """Step 2: the generated mask (restricted to a given mask) and its threshold."""
    if generation.source == "mask":
        if mask is None:
            raise ValueError("mask.source is 'mask' but no mask input was given to segment.")
        source = np.asarray(mask)
    else:
        source = image1 if generation.source == "image1" else image2
    generated, threshold = generate_mask(
        source, spacing=spacing, sigma=generation.sigma, method=generation.method,
        fill_holes=generation.fill_holes, min_size=generation.min_size,
    )
    if generation.source != "mask" and mask is not None:
        generated &= np.asarray(mask) != 0
    return generated, threshold


def _restrict(mask, valid):
    if valid is None:
        return None if mask is None else np.asarray(mask) != 0
    return valid if mask is None else (np.asarray(mask) != 0) & valid


def generate_shared_mask(
    image1: np.ndarray, image2: np.ndarray, mask: np.ndarray | None, settings: Preprocessing,
    spacing: Sequence[float],
) -> tuple[np.ndarray, float]:
    """The one mask used for all frames (``mask.from_frame`` set), from that frame.

    Parameters are those of :func:`preprocess_frame` for frame ``mask.from_frame``.
    Pass the result as ``mask`` to :func:`preprocess_frame` for every frame.

    Returns
    -------
    mask : numpy.ndarray of bool
    threshold : float
    """
    if settings.mask is None:
        raise ValueError("generate_shared_mask needs a 'mask' section in the preprocessing settings.")
    image1, image2, valid, _ = _align(image1, image2, settings, spacing)
    generated, threshold = _generate(image1, image2, mask, settings.mask, spacing)
    return _restrict(generated, valid), threshold


def preprocess_frame(
    image1: np.ndarray,
    image2: np.ndarray,
    mask: np.ndarray | None,
    settings: Preprocessing,
    spacing: Sequence[float],
    *,
    background_regions: tuple[np.ndarray | None, np.ndarray | None] = (None, None),
) -> tuple[np.ndarray, np.ndarray, np.ndarray | None, dict[str, Any]]:
    """Prepare one frame as the manual asks, in its order.

    Parameters
    ----------
    image1, image2 : numpy.ndarray
        One 2D or 3D frame per channel, any real dtype.
    mask : numpy.ndarray or None
        The mask input for this frame (non-zero = inside), or None. With
        ``mask.from_frame`` set, the shared mask from :func:`generate_shared_mask`.
    settings : Preprocessing
        With any chromatic-shift reference already estimated
        (:meth:`Preprocessing.with_estimated_shift`).
    spacing : sequence of float
        Voxel size per axis, ``(z,) y, x``, physical units.
    background_regions : (array or None, array or None)
        This frame's background region masks for channel 1 and 2, loaded from
        ``background.imageN.region_mask`` (needed exactly when that is set).

    Returns
    -------
    image1, image2 : numpy.ndarray
        float32, background subtracted; image2 shifted (0 where no data).
    mask : numpy.ndarray of bool, or None
        The mask to analyse with (None: every voxel). Voxels of channel 2 without data
        after the shift are outside.
    record : dict
        ``background1``, ``background2`` (float, intensity units), ``shift`` (tuple,
        physical units, zeros when none), ``mask_threshold`` (float; NaN when no mask
        was generated in this call).

    Raises
    ------
    InvalidFrameError
        The mask (given, generated or after the shift) contains no voxel.
    ValueError
        Settings that do not fit the frame (shift length, missing region masks).

    See Also
    --------
    cccdask.preprocess_lazy : the same on a frame held as Dask arrays.
    """
    spacing = tuple(float(s) for s in spacing)
    image1, image2, valid, shift = _align(image1, image2, settings, spacing)

    threshold = float("nan")
    generation = settings.mask
    if generation is not None and generation.from_frame is None:
        mask, threshold = _generate(image1, image2, mask, generation, spacing)
    elif generation is not None and mask is None:
        raise ValueError(
            f"mask.from_frame is {generation.from_frame}: generate the shared mask once with "
            f"generate_shared_mask(...) on that frame and pass it as 'mask' for every frame."
        )
    mask = _restrict(mask, valid)
    if mask is not None and not mask.any():
        detail = f" (threshold {threshold:g})" if np.isfinite(threshold) else ""
        raise InvalidFrameError(f"the mask of this frame contains no voxel{detail}; nothing to analyse.")

    backgrounds = []
    for channel, (image, config, region_mask) in enumerate(
        zip((image1, image2), (settings.background.image1, settings.background.image2), background_regions),
        start=1,
    ):
        box = None if config.box is None else box_to_slices(config.box, spacing, image.shape)
        selection = valid if channel == 2 else None
        if config.region_mask is not None:
            if region_mask is None:
                raise ValueError(
                    f"background.image{channel}.region_mask is set: load {config.region_mask} and pass "
                    f"this frame's region as background_regions[{channel - 1}]."
                )
            region = np.asarray(region_mask) != 0
            selection = region if selection is None else region & selection
        backgrounds.append(
            background_value(image, config.method, value=config.value, region=box, mask=selection)
        )

    record = {
        "background1": backgrounds[0],
        "background2": backgrounds[1],
        "shift": tuple(float(s) for s in shift),
        "mask_threshold": threshold,
    }
    return (
        subtract_background(image1, backgrounds[0]),
        subtract_background(image2, backgrounds[1]),
        mask,
        record,
    )
