"""Validation at the edge: arrays from users become float32 rows the graphs accept, or a clear InputError."""

from __future__ import annotations

import numbers

import numpy as np
from numpy.typing import NDArray

from .errors import InputError


def as_images(images: object, image_shape: tuple[int, int], scale: float) -> NDArray[np.float32]:
    """(n, h*w) or (n, h, w) images, uint8 (divided by `scale`) or floats in [0, 1] -> float32 (n, h*w)."""
    features = image_shape[0] * image_shape[1]
    h, w = image_shape
    arr = np.asarray(images)
    if arr.dtype == object or arr.dtype.kind not in "uif":
        raise InputError(f"expected uint8 or float images, got dtype {arr.dtype}")
    if arr.ndim == 3 and arr.shape[1:] == (h, w):
        arr = arr.reshape(arr.shape[0], features)
    elif not (arr.ndim == 2 and arr.shape[1] == features):
        hint = ""
        if arr.shape in ((features,), (h, w)):
            hint = "; for a single image pass images[None]"
        elif arr.ndim == 4 and arr.shape[1:3] == (h, w):
            hint = f"; pass grayscale {h}x{w} images (drop the channel axis, or convert colour to gray)"
        found = "x".join(str(s) for s in arr.shape[1:]) if arr.ndim > 1 else f"a 1-D array of {arr.size}"
        raise InputError(
            f"expected images shaped (n, {features}) or (n, {h}, {w}), got {arr.shape} "
            f"({found} per row){hint}"
        )
    if arr.shape[0] == 0:
        raise InputError("expected at least one image, got an empty batch")
    if arr.dtype == np.uint8:
        return arr.astype(np.float32) / np.float32(scale)
    if arr.dtype.kind in "iu":
        raise InputError(
            f"integer images must be uint8 (0..255), got {arr.dtype}; convert with .astype(np.uint8) "
            f"or pass floats in [0, 1]"
        )
    x = arr.astype(np.float32, copy=False)
    # min and max propagate NaN and show inf, so the finite check only runs when the range check fails
    lo, hi = float(x.min()), float(x.max())
    if not (0.0 <= lo and hi <= 1.0):
        _require_finite(x, "images")
        raise InputError(
            f"float images must lie in [0, 1], found values in [{lo:g}, {hi:g}]; "
            f"divide 0..255 pixel values by 255 or pass uint8"
        )
    return np.ascontiguousarray(x)


def as_latents(z: object, latent_size: int) -> NDArray[np.float32]:
    """(n, latent_size) finite numbers -> float32."""
    arr = np.asarray(z)
    if arr.dtype == object or arr.dtype.kind not in "iuf":
        raise InputError(f"expected numeric latent codes, got dtype {arr.dtype}")
    if arr.ndim != 2 or arr.shape[1] != latent_size:
        hint = "; for a single code pass z[None]" if arr.shape == (latent_size,) else ""
        raise InputError(f"expected latent codes shaped (n, {latent_size}), got {arr.shape}{hint}")
    if arr.shape[0] == 0:
        raise InputError("expected at least one latent code, got an empty batch")
    x = np.ascontiguousarray(arr, dtype=np.float32)
    _require_finite(x, "latent codes")
    return x


def as_count(n: object, what: str = "count") -> int:
    if isinstance(n, bool) or not isinstance(n, numbers.Integral) or n < 1:
        raise InputError(f"{what} must be a positive integer, got {n!r}")
    return int(n)


def as_seed(seed: object) -> int | None:
    if seed is None:
        return None
    if isinstance(seed, bool) or not isinstance(seed, numbers.Integral) or seed < 0:
        raise InputError(f"seed must be a non-negative integer or None, got {seed!r}")
    return int(seed)


def _require_finite(x: NDArray, what: str) -> None:
    bad = ~np.isfinite(x)
    if bad.any():
        rows = np.unique(np.nonzero(bad)[0])
        raise InputError(
            f"{what} contain NaN or inf in {len(rows)} row(s), first at row {int(rows[0])}; "
            f"expected finite values"
        )
