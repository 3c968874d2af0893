"""Checks on a raw image value that both decoding (`data`) and colour conversion (`preprocessing`) need.

A leaf module so that `data` may use `preprocessing` without an import circle.
"""

from __future__ import annotations

from typing import Any


class CorruptImageError(ValueError):
    """A value that is no usable image for a reason hf_sfm checks itself (missing, non-finite, too large)."""


def check_finite_pixels(value: Any) -> None:
    """Raise `CorruptImageError` if an array-like image holds NaN or ±inf: such a pixel has no colour to show.

    A float image is scaled to 8 bits by its range, so one non-finite value would turn the whole image black (or
    leave it unscaled) instead of failing. Values that are not float arrays pass unchecked.
    """
    import numpy as np
    import PIL.Image

    if isinstance(value, PIL.Image.Image):
        if value.mode != "F":
            return
        value = np.asarray(value)
    elif hasattr(value, "detach") and hasattr(value, "is_floating_point"):  # a torch tensor
        if not value.is_floating_point():
            return
        value = value.detach().cpu().float().numpy()
    elif isinstance(value, list | tuple):
        try:
            value = np.asarray(value)
        except ValueError:  # ragged: not an image array
            return
    if not isinstance(value, np.ndarray) or value.dtype.kind not in "fc":
        return
    finite = np.isfinite(value)
    if not finite.all():
        raise CorruptImageError(
            f"{int(finite.size - finite.sum())} of its {finite.size} pixel values are NaN or infinite; a float "
            "image with non-finite values cannot be scaled to colours"
        )
