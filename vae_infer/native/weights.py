"""Weight formats of the C path: int8 quantization (per output row and input column), fp16 with subnormals
flushed, the int8 activation quantization the generated code performs, and the blocked layout the kernels
read (blocks of outputs, each stored input-major).

Everything here is numpy and mirrors the generated C step by step, so that the numpy reference
(vae_infer.native.reference) computes exactly what the C code computes for every format."""

from __future__ import annotations

import numpy as np

from .graph import UnsupportedModelError

WEIGHT_FORMATS = ("fp32", "fp16", "int8")
DEFAULT_BLOCK = 64


def quantize_int8(weight: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Symmetric int8 with one scale per output row, after equalizing the input columns:
    weight ~= q * scale[:, None] * columns[None, :], q in [-127, 127].

    columns[i] is the root mean square of input column i, so that a few inputs with large weights (hidden
    units the next layer leans on) do not set every row's step; the generated code multiplies the input by
    it (one multiply per input and row). On the course model this cuts the test -ELBO change of int8 from
    +2.5 to about +0.4 nats per image."""
    w = weight.astype(np.float64)
    columns = np.sqrt((w**2).mean(axis=0))
    columns = np.where(columns > 0, columns, 1.0)
    w = w / columns[None, :]
    peak = np.abs(w).max(axis=1)
    scale = np.where(peak > 0, peak / 127.0, 1.0)
    q = np.clip(np.rint(w / scale[:, None]), -127, 127).astype(np.int8)
    return q, scale.astype(np.float32), columns.astype(np.float32)


HALF_TINY = 2.0**-14  # the smallest normal half; smaller halves are stored as zero


def to_fp16(weight: np.ndarray, where: str = "weight") -> np.ndarray:
    """IEEE half weights, with subnormal halves (|w| < 2^-14 = 6.1e-5) flushed to zero: converting them
    would multiply denormal floats, which x86 CPUs do about 100 times slower."""
    h = weight.astype(np.float16)
    if not np.all(np.isfinite(h)):
        raise UnsupportedModelError(f"{where}: a weight is beyond the float16 range (|w| > 65504); use fp32 or int8")
    h[np.abs(h) < HALF_TINY] = 0
    return h


def effective_weight(weight: np.ndarray, weights: str) -> np.ndarray:
    """The fp32 weights the generated code really multiplies by, for a weight format (for reference checks)."""
    if weights == "fp32":
        return weight.astype(np.float32)
    if weights == "fp16":
        return to_fp16(weight).astype(np.float32)
    q, scale, columns = quantize_int8(weight)
    return (q.astype(np.float64) * scale[:, None] * columns[None, :]).astype(np.float32)


INT8_DOT_MIN_INPUTS = 32  # int8 layers with at least this many inputs use integer dot products (w8a8)
INT8_DOT_MAX_INPUTS = 66_000  # 255 * 127 * K must fit an int32 accumulator


INT8_DOT_MIN_OUTPUTS = 16  # narrower layers (the latent heads) multiply int8 weights in float: quantizing their
# input row would cost more than their few dot products


def uses_int8_dot(weights: str, k: int, n: int) -> bool:
    """Whether an int8 layer of k inputs and n outputs uses integer dot products (inputs quantized to uint8)."""
    return weights == "int8" and INT8_DOT_MIN_INPUTS <= k <= INT8_DOT_MAX_INPUTS and n >= INT8_DOT_MIN_OUTPUTS


def quantize_activations(x: np.ndarray, columns: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """What the generated int8 code does to a layer's input rows, in the same float32 steps:
    x' = x * columns; per row lo = min(0, min x'), hi = max(0, max x'), step = (hi - lo) / 255;
    a = (uint8)((x' - lo) / step + 0.5), so that x' ~= step * a + lo. Returns (a, step, lo)."""
    v = x.astype(np.float32) * columns.astype(np.float32)[None, :]
    lo = np.minimum(v.min(axis=1), np.float32(0)).astype(np.float32)
    hi = np.maximum(v.max(axis=1), np.float32(0)).astype(np.float32)
    step = ((hi - lo) / np.float32(255)).astype(np.float32)
    with np.errstate(divide="ignore"):
        inv = np.where(step > 0, np.float32(1) / step, np.float32(0)).astype(np.float32)
    q = ((v - lo[:, None]) * inv[:, None]).astype(np.float32) + np.float32(0.5)
    a = np.clip(q, 0, 255).astype(np.uint8)
    return a, step, lo


def int8_dot_dense(x: np.ndarray, weight: np.ndarray, bias: np.ndarray) -> np.ndarray:
    """The int8 layer with quantized inputs (w8a8), as the generated code computes it, in float64."""
    q, scale, columns = quantize_int8(weight)
    a, step, lo = quantize_activations(x, columns)
    acc = a.astype(np.int64) @ q.T.astype(np.int64)
    rowsum = q.astype(np.int64).sum(axis=1)
    return scale.astype(np.float64) * (step[:, None].astype(np.float64) * acc + lo[:, None].astype(np.float64)
                                       * rowsum) + bias.astype(np.float64)


def block_layout(n: int, block: int) -> list[tuple[int, int, int]]:
    """(first output, outputs stored, outputs computed) of each block of a layer with n outputs.

    Full blocks of `block` outputs, then the rest. A rest of 1 to 4 outputs is computed as it is; a wider
    rest is padded with zero weights up to a width compilers vectorize well (24, 32, 48, 64, ... at most
    `block`): widths of 5 to 16 unroll completely and then vectorize across rows very badly (measured 20 to
    60 times slower with GCC 12)."""
    width = min(block, n)
    blocks = [(b * width, width, width) for b in range(n // width)]
    rest = n % width
    if rest:
        padded = rest if rest <= 4 or block < 24 else min(block, next(w for w in (24, 32, 48) + tuple(
            range(64, block + 16, 16)) if w >= rest))
        blocks.append((n - rest, rest, padded))
    return blocks


NARROW_OUTPUTS = 4  # layers with at most this many outputs (the latent heads) and
NARROW_MIN_INPUTS = 64  # at least this many inputs are computed as dot products over the inputs


def is_narrow(n: int, k: int) -> bool:
    """A layer of n outputs and k inputs computed output by output, each a dot product over k inputs in
    vector lanes: a register block over its few outputs would be one long chain of dependent adds."""
    return n <= NARROW_OUTPUTS and k >= NARROW_MIN_INPUTS


def pack(matrix: np.ndarray, block: int) -> np.ndarray:
    """(out, in) -> blocks of outputs, each stored input-major: block b is matrix[b0:b0+w, :].T, flattened,
    with zero columns for a padded last block. A narrow layer (is_narrow) is stored as it is, output-major."""
    if is_narrow(*matrix.shape):
        return np.ascontiguousarray(matrix).reshape(-1)
    parts = []
    for b0, stored, width in block_layout(matrix.shape[0], block):
        part = np.zeros((matrix.shape[1], width), matrix.dtype)
        part[:, :stored] = matrix[b0 : b0 + stored, :].T
        parts.append(part.reshape(-1))
    return np.concatenate(parts)
