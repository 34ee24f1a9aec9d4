"""Noise keyed by row: the standard normal draws of a sampled score come from (job seed, source, row), so a
row gets the same numbers whichever task, worker, engine or batch size computes it.

A counter-based generator (in the spirit of Salmon et al. 2011, "Parallel random numbers: as easy as 1, 2,
3"): each draw is a hash of its coordinates (key, row, draw index) through the splitmix64 finalizer (Steele
et al. 2014), and two 32-bit halves of the hash become a normal by the Box-Muller transform. Vectorized in
numpy, it costs about what a sequential generator does, and needs no state."""

from __future__ import annotations

import hashlib

import numpy as np
from numpy.typing import NDArray

_M1 = np.uint64(0xBF58476D1CE4E5B9)
_M2 = np.uint64(0x94D049BB133111EB)
_GOLDEN = np.uint64(0x9E3779B97F4A7C15)
_TWO_32 = 2.0**32


def source_key(seed: int, source: str) -> int:
    """The 64-bit key of one input of a job: its seed and its name as given (what the `source` column holds)."""
    digest = hashlib.sha256(f"{int(seed)}\0{source}".encode()).digest()
    return int.from_bytes(digest[:8], "little")


def _mix(x: NDArray[np.uint64]) -> NDArray[np.uint64]:
    """The splitmix64 finalizer: a bijection of uint64 whose outputs look independent for nearby inputs."""
    x = (x ^ (x >> np.uint64(30))) * _M1
    x = (x ^ (x >> np.uint64(27))) * _M2
    return x ^ (x >> np.uint64(31))


def row_normals(key: int, rows: NDArray[np.integer], draws: int, size: int) -> NDArray[np.float32]:
    """Standard normals (len(rows), draws, size), float32: entry [i, j, d] depends only on (key, rows[i], j, d)."""
    with np.errstate(over="ignore"):
        base = _mix(np.asarray(rows, np.int64).astype(np.uint64) ^ np.uint64(key))  # (n,)
        base = _mix(base + np.uint64(key))
        counters = (np.arange(1, draws * size + 1, dtype=np.uint64) * _GOLDEN)  # (draws * size,)
        h = _mix(base[:, None] + counters[None, :])  # (n, draws * size)
    u1 = ((h >> np.uint64(32)).astype(np.float64) + 0.5) / _TWO_32  # in (0, 1): log never sees 0
    u2 = (h & np.uint64(0xFFFFFFFF)).astype(np.float64) / _TWO_32
    z = np.sqrt(-2.0 * np.log(u1)) * np.cos(2.0 * np.pi * u2)
    return z.astype(np.float32).reshape(len(base), draws, size)
