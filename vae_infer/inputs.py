"""Validation at the edge: arrays from users become float32 rows the graphs accept, or a clear InputError."""

from __future__ import annotations

import numbers

import numpy as np
from numpy.typing import NDArray

from .errors import InputError

LATENT_BOUND = 1e6  # |z| allowed per coordinate: a million prior standard deviations; decodes stay finite
MAX_OUTPUT_BYTES = 2 << 30  # one call returns at most 2 GiB of float32 rows; larger jobs go in parts (or batch)
CHECK_ROWS = 65536  # rows per block when checking values, so checks never copy a whole large input


def as_array(data: object, what: str) -> np.ndarray:
    """An ndarray from what a caller passed, or InputError: ragged nested lists, objects, strings."""
    if isinstance(data, np.ndarray):
        arr = data
    else:
        try:
            arr = np.asarray(data)
        except (ValueError, TypeError, OverflowError) as e:  # numpy: "inhomogeneous shape", unconvertible items
            raise InputError(f"expected {what} as a rectangular numeric array; the rows have different lengths or "
                             f"hold non-numbers ({e})") from e
    if arr.dtype == object or arr.dtype.kind not in "uif":
        expected = "uint8 or float images" if what == "images" else f"numeric {what}"
        raise InputError(f"expected {expected}, got dtype {arr.dtype}")
    return arr


def _number(v: np.generic) -> str:
    """The shortest text that shows the value in its own precision (1.000000001 stays visible; 255 not 255.0)."""
    text = str(v)
    return text[:-2] if text.endswith(".0") else text


def _describe_rows(arr: np.ndarray) -> str:
    if arr.ndim == 0:
        return "a 0-d array (a single number)"
    if arr.ndim == 1:
        return f"a 1-D array of {arr.size} values"
    return "x".join(str(s) for s in arr.shape[1:]) + " per row"


def image_dims(image_shape: tuple[int, ...]) -> tuple[int, int, int]:
    """(h, w, c) of an image shape given as (h, w) (gray) or (h, w, c) with c in {1, 3}."""
    if len(image_shape) == 2:
        return int(image_shape[0]), int(image_shape[1]), 1
    if len(image_shape) == 3 and image_shape[2] in (1, 3):
        return int(image_shape[0]), int(image_shape[1]), int(image_shape[2])
    raise InputError(f"an image shape is (height, width) or (height, width, channels) with 1 or 3 channels, "
                     f"got {tuple(image_shape)!r}")


def expected_shapes(image_shape: tuple[int, ...]) -> str:
    """The array shapes check_images accepts for a model, in words: '(n, 3072) or (n, 32, 32, 3)'."""
    h, w, c = image_dims(image_shape)
    if c == 1:  # (n, h, w, 1) is accepted too
        return f"(n, {h * w}) or (n, {h}, {w})"
    return f"(n, {h * w * c}) or (n, {h}, {w}, {c})"


def check_images(images: object, image_shape: tuple[int, ...], scale: float, first_row: int = 0) -> np.ndarray:
    """Validated images as (n, h*w*c) rows, channels-last, in the caller's dtype (uint8, or floats checked to
    lie in [0, 1] before any cast): no copy of a large input is made here. images_to_float32 converts a block.
    image_shape: (h, w) for gray or (h, w, c); accepted arrays: (n, h*w*c), (n, h, w, c) and, for gray,
    (n, h, w). first_row: where these rows start in a larger input read a block at a time, so errors name its rows."""
    h, w, c = image_dims(image_shape)
    features = h * w * c
    arr = as_array(images, "images")
    if (arr.ndim == 4 and arr.shape[1:] == (h, w, c)) or (c == 1 and arr.ndim == 3 and arr.shape[1:] == (h, w)):
        arr = arr.reshape(arr.shape[0], features)
    elif not (arr.ndim == 2 and arr.shape[1] == features):
        hint = ""
        if arr.shape in ((features,), (h, w), (h, w, c)):
            hint = "; for a single image pass images[None]"
        elif arr.ndim == 4 and arr.shape[1:3] == (h, w) and c == 1:
            hint = f"; pass grayscale {h}x{w} images (drop the channel axis, or convert colour to gray)"
        elif c == 3 and arr.ndim in (3, 4) and arr.shape[1:3] == (h, w):
            hint = f"; this model takes RGB {h}x{w} images with 3 channels last (gray: repeat it on 3 channels)"
        elif arr.ndim == 4 and arr.shape[1] == c and arr.shape[2:] == (h, w):
            hint = "; channels go last: pass images.transpose(0, 2, 3, 1)"
        raise InputError(f"expected images shaped {expected_shapes(image_shape)}, got {arr.shape} "
                         f"({_describe_rows(arr)}){hint}")
    if arr.shape[0] == 0:
        raise InputError("expected at least one image, got an empty batch")
    if arr.dtype == np.uint8:
        return arr
    if arr.dtype.kind in "iu":
        raise InputError(f"integer images must be uint8 (0..255), got {arr.dtype}; convert with .astype(np.uint8) "
                         f"or pass floats in [0, 1]")
    for s in range(0, len(arr), CHECK_ROWS):  # in the caller's precision: 1 + 1e-9 (float64) is out of range
        block = arr[s : s + CHECK_ROWS]
        lo, hi = block.min(), block.max()  # both propagate NaN
        if not (lo >= 0 and hi <= 1):
            _require_finite(block, "images", offset=first_row + s)
            raise InputError(f"float images must lie in [0, 1], found values in [{_number(lo)}, {_number(hi)}] "
                             f"from row {first_row + s} on; divide 0..255 pixel values by 255 or pass uint8")
    return arr


def images_to_float32(rows: np.ndarray, scale: float) -> NDArray[np.float32]:
    """Checked rows (check_images) as contiguous float32 in [0, 1], the graphs' input."""
    if rows.dtype == np.uint8:
        return rows.astype(np.float32) / np.float32(scale)
    return np.ascontiguousarray(rows, dtype=np.float32)


def as_images(images: object, image_shape: tuple[int, ...], scale: float) -> NDArray[np.float32]:
    """Images as check_images accepts them, uint8 (divided by `scale`) or floats in [0, 1] -> float32
    (n, h*w*c) rows."""
    return images_to_float32(check_images(images, image_shape, scale), scale)


def as_latents(z: object, latent_size: int) -> NDArray[np.float32]:
    """(n, latent_size) finite numbers with |z| <= LATENT_BOUND -> float32."""
    arr = as_array(z, "latent codes")
    if arr.ndim != 2 or arr.shape[1] != latent_size:
        hint = "; for a single code pass z[None]" if arr.shape == (latent_size,) else ""
        raise InputError(f"expected latent codes shaped (n, {latent_size}), got {arr.shape} "
                         f"({_describe_rows(arr)}){hint}")
    if arr.shape[0] == 0:
        raise InputError("expected at least one latent code, got an empty batch")
    exact = arr.astype(np.float64) if arr.dtype.kind in "iu" else arr  # abs(int64 min) would wrap around
    peak = float(np.abs(exact).max())  # one pass checks both: NaN propagates and fails the comparison below
    if not peak <= LATENT_BOUND:
        _require_finite(arr, "latent codes")
        row = int(np.nonzero(np.abs(exact) > LATENT_BOUND)[0][0])
        raise InputError(f"latent codes must lie within +-{LATENT_BOUND:g} (the prior is N(0, I)), found "
                         f"{peak:g} at row {row}")
    return np.ascontiguousarray(arr, dtype=np.float32)


def check_output_rows(n: int, features: int, what: str) -> None:
    """Refuse, before allocating, a call whose float32 output would exceed MAX_OUTPUT_BYTES."""
    need = int(n) * int(features) * 4
    if need > MAX_OUTPUT_BYTES:
        most = MAX_OUTPUT_BYTES // (int(features) * 4)
        raise InputError(f"{what}: {n} rows of {features} float32 values would take {need / 2**30:.1f} GiB; one call "
                         f"returns at most {most} rows ({MAX_OUTPUT_BYTES >> 30} GiB): ask in parts, or use "
                         f"`vae-infer batch` for large jobs")


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


def _require_finite(x: NDArray, what: str, offset: int = 0) -> None:
    bad = ~np.isfinite(x)
    if bad.any():
        rows = np.unique(np.nonzero(bad)[0])
        raise InputError(
            f"{what} contain NaN or inf in {len(rows)} row(s), first at row {int(rows[0]) + offset}; "
            f"expected finite values"
        )
