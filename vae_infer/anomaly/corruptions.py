"""Corruptions of images, in numpy: noise for denoising and the corrupted sets of the anomaly benchmark.

Every function takes float images in [0, 1] shaped (n, features) (as `VAEModel.as_images` returns them),
returns a new float32 array of the same shape in [0, 1], and draws its randomness from the numpy
Generator it is given, so the same seed gives the same corruption.

A noise spec (the `--noise` option of `python -m train fit`, shared with `train/noise.py`) is one or
more `KIND:LEVEL` items joined by commas, where LEVEL is a number or a range `LO-HI`:

    gaussian:0.2                   additive N(0, 0.2^2) noise, clipped to [0, 1]
    salt-pepper:0.1                each pixel set to 0 or 1 (even odds) with probability 0.1
    gaussian:0-0.3,salt-pepper:0-0.2   each example: one of the kinds at random, its level uniform in the range
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray

from ..errors import InputError

Array = NDArray[np.float32]
NOISE_KINDS = ("gaussian", "salt-pepper")


@dataclass(frozen=True)
class NoiseItem:
    kind: str  # one of NOISE_KINDS
    low: float  # the level (sigma, or the probability of a flipped pixel) is drawn uniformly in [low, high]
    high: float

    def __str__(self) -> str:
        return f"{self.kind}:{_num(self.low)}" + ("" if self.low == self.high else f"-{_num(self.high)}")


def _num(v: float) -> str:
    return f"{v:g}"


def parse_noise(spec: str) -> tuple[NoiseItem, ...]:
    """`"gaussian:0.2"`, `"salt-pepper:0.05-0.2"`, `"gaussian:0-0.3,salt-pepper:0-0.2"` -> NoiseItems.

    Raises InputError naming the bad part and what is expected."""
    if not isinstance(spec, str) or not spec.strip():
        raise InputError(f"expected a noise spec such as 'gaussian:0.2' or 'salt-pepper:0.1', got {spec!r}")
    items = []
    for part in spec.split(","):
        kind, sep, level = part.strip().partition(":")
        if kind not in NOISE_KINDS or not sep:
            raise InputError(
                f"bad noise spec item {part.strip()!r} in {spec!r}: expected KIND:LEVEL or KIND:LO-HI "
                f"with KIND one of {', '.join(NOISE_KINDS)}"
            )
        lo_text, dash, hi_text = level.partition("-")
        try:
            lo = float(lo_text)
            hi = float(hi_text) if dash else lo
        except ValueError:
            raise InputError(f"bad noise level {level!r} in {spec!r}: expected a number or a range LO-HI") from None
        if not (math.isfinite(lo) and math.isfinite(hi) and 0.0 <= lo <= hi <= 1.0):
            raise InputError(f"bad noise level {level!r} for {kind} in {spec!r}: expected 0 <= LO <= HI <= 1")
        items.append(NoiseItem(kind, lo, hi))
    return tuple(items)


def gaussian_noise(x: Array, sigma: float | NDArray, rng: np.random.Generator) -> Array:
    """x + sigma * N(0, 1) per pixel, clipped to [0, 1]. sigma: a number, or one per image (n,)."""
    sigma = np.asarray(sigma, dtype=np.float32).reshape(-1, 1) if np.ndim(sigma) else np.float32(sigma)
    noisy = x + sigma * rng.standard_normal(x.shape, dtype=np.float32)
    return np.clip(noisy, 0.0, 1.0).astype(np.float32)


def salt_pepper(x: Array, p: float | NDArray, rng: np.random.Generator) -> Array:
    """Each pixel, with probability p, replaced by 0 or 1 (even odds). p: a number, or one per image (n,)."""
    p = np.asarray(p, dtype=np.float32).reshape(-1, 1) if np.ndim(p) else np.float32(p)
    hit = rng.random(x.shape, dtype=np.float32) < p
    salt = rng.random(x.shape, dtype=np.float32) < 0.5
    return np.where(hit, salt.astype(np.float32), x).astype(np.float32)


def apply_noise(x: Array, spec: str | tuple[NoiseItem, ...], rng: np.random.Generator) -> Array:
    """The corruption a noise spec describes (see the module docstring), one draw per image."""
    items = parse_noise(spec) if isinstance(spec, str) else spec
    n = len(x)
    which = rng.integers(len(items), size=n) if len(items) > 1 else np.zeros(n, dtype=np.int64)
    out = np.asarray(x, dtype=np.float32).copy()
    for i, item in enumerate(items):
        rows = np.nonzero(which == i)[0]
        if not len(rows):
            continue
        level = rng.uniform(item.low, item.high, size=len(rows)).astype(np.float32)
        fn = gaussian_noise if item.kind == "gaussian" else salt_pepper
        out[rows] = fn(out[rows], level, rng)
    return out


def occlude(x: Array, image_shape: tuple[int, ...], rng: np.random.Generator, side: int | None = None,
            fill: float | None = None) -> Array:
    """A square of `side` pixels (default: half the image's shorter side, a quarter of its area) at a random
    position inside the central region (a margin of a seventh of the image kept free), filled with one gray
    level: `fill`, or uniform in [0, 1] per image (on every channel of a colour image: a gray square)."""
    h, w = image_shape[:2]
    side = side or min(h, w) // 2
    margin_y, margin_x = h // 7, w // 7
    out = np.asarray(x, dtype=np.float32).reshape(-1, *image_shape).copy()
    for img in out:
        top = rng.integers(margin_y, max(margin_y, h - margin_y - side) + 1)
        left = rng.integers(margin_x, max(margin_x, w - margin_x - side) + 1)
        img[top : top + side, left : left + side] = rng.random() if fill is None else fill
    return out.reshape(len(out), -1)


def invert(x: Array) -> Array:
    """1 - x: white background, dark object."""
    return (1.0 - np.asarray(x, dtype=np.float32)).astype(np.float32)


def constant_images(n: int, features: int, rng: np.random.Generator) -> Array:
    """n images of one gray level each, uniform in [0, 1]."""
    return np.repeat(rng.random((n, 1), dtype=np.float32), features, axis=1)


def uniform_images(n: int, features: int, rng: np.random.Generator) -> Array:
    """n images of independent uniform [0, 1] pixels."""
    return rng.random((n, features), dtype=np.float32)


def psnr(clean: NDArray, other: NDArray) -> NDArray[np.float64]:
    """Peak signal-to-noise ratio in dB per image, peak 1: 10 log10(1 / mean((clean - other)^2)).
    Identical images give inf."""
    mse = np.mean((np.asarray(clean, np.float64) - np.asarray(other, np.float64)) ** 2, axis=1)
    with np.errstate(divide="ignore"):
        return 10.0 * np.log10(1.0 / mse)
