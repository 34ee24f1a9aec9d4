"""The statistics behind the anomaly scores of vae_infer.anomaly.scores, in numpy: the pixel entropy, the PNG code
length L(x), the density-of-states statistics T(x) and the Gaussian kernel density score over them."""

from __future__ import annotations

import math
import zlib

import numpy as np
from numpy.typing import NDArray

from ..errors import InputError

KDE_BLOCK = 1024  # rows per block of the kernel density sums: a (block, reference) float64 matrix

Scores = NDArray[np.float64]


def _sigmoid(logits: NDArray) -> NDArray[np.float64]:
    return 0.5 * (1.0 + np.tanh(0.5 * logits.astype(np.float64)))  # never overflows


def pixel_entropy(x: NDArray) -> Scores:
    """sum_i H(x_i), H(p) = -p log p - (1 - p) log(1 - p) in nats (H(0) = H(1) = 0): the least BCE any
    decoder can reach on x."""
    p = x.astype(np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        h = -(p * np.log(p) + (1.0 - p) * np.log1p(-p))
    return np.nan_to_num(h, nan=0.0).sum(axis=1)


def png_bits(x: NDArray, image_shape: tuple[int, ...]) -> Scores:
    """L(x): bits of each image's PNG image data, the 8-bit pixels round(255 x), each row Paeth-filtered
    (PNG filter type 4) and the whole zlib-compressed at level 9. A PNG file adds a constant ~57 bytes of
    headers, left out. Deterministic; a constant image gives ~100 bits, uniform noise ~8 bits a value.
    image_shape (h, w) or (h, w, c): a colour image is compressed as an 8-bit RGB PNG, its rows holding
    the pixels' red, green, blue bytes interleaved and Paeth predicting each byte from the same channel of
    the pixels left, above and above-left (PNG's bytes-per-pixel rule), so L(x) counts all three channels."""
    h, w = image_shape[:2]
    ch = image_shape[2] if len(image_shape) == 3 else 1
    u8 = np.rint(np.asarray(x, np.float64) * 255.0).astype(np.int16).reshape(-1, h, w, ch)
    a = np.zeros_like(u8)
    a[:, :, 1:] = u8[:, :, :-1]  # left (the same channel of the previous pixel)
    b = np.zeros_like(u8)
    b[:, 1:, :] = u8[:, :-1, :]  # up
    c = np.zeros_like(u8)
    c[:, 1:, 1:] = u8[:, :-1, :-1]  # up-left
    p = a + b - c
    pa, pb, pc = np.abs(p - a), np.abs(p - b), np.abs(p - c)
    pred = np.where((pa <= pb) & (pa <= pc), a, np.where(pb <= pc, b, c))
    filtered = ((u8 - pred) % 256).astype(np.uint8).reshape(-1, h, w * ch)
    rows = np.concatenate([np.full((len(u8), h, 1), 4, np.uint8), filtered], axis=2)  # filter byte per row
    return np.array([8.0 * len(zlib.compress(r.tobytes(), 9)) for r in rows])


def dose_statistics(recon: Scores, kl: Scores, bits: Scores, excess: Scores) -> NDArray[np.float64]:
    """T(x), (n, 3): log(1 + recon + KL), log(1 + L(x)), log(1 + excess), in DOSE_STATISTICS order."""
    return np.stack([np.log1p(recon + kl), np.log1p(bits), np.log1p(np.maximum(excess, 0.0))], axis=1)


def kde_score(features: NDArray, reference: dict, exclude_self: bool = False) -> Scores:
    """-log p_hat(T): a Gaussian kernel density over the standardized reference statistics, with bandwidth h:
    p_hat(u) = (1/n) sum_j N(u; u_j, h^2 I). exclude_self: features are the reference itself, each row's
    own kernel left out (leave-one-out), so calibration scores are not biased low."""
    mean, std, h = reference["mean"], reference["std"], reference["bandwidth"]
    ref = (reference["statistics"] - mean) / std
    u = (np.asarray(features, np.float64) - mean) / std
    n, d = ref.shape
    if exclude_self and len(u) != n:
        raise InputError("exclude_self needs the reference statistics themselves")
    ref_sq = np.sum(ref**2, axis=1)
    log_norm = math.log(n - 1 if exclude_self else n) + 0.5 * d * math.log(2 * math.pi * h * h)
    out = np.empty(len(u))
    for s in range(0, len(u), KDE_BLOCK):
        ub = u[s : s + KDE_BLOCK]
        sq = np.maximum(np.sum(ub**2, axis=1)[:, None] + ref_sq[None, :] - 2.0 * ub @ ref.T, 0.0)
        expo = -sq / (2 * h * h)
        if exclude_self:
            rows = np.arange(len(ub))
            expo[rows, s + rows] = -np.inf
        m = expo.max(axis=1, keepdims=True)
        lse = m[:, 0] + np.log(np.exp(expo - m).sum(axis=1))
        out[s : s + KDE_BLOCK] = log_norm - lse
    return out
