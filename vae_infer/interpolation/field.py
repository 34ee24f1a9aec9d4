"""The realism field of a 2-D latent space: for points on a grid, how far the decoded image lies from the
nearest real image whose code is nearby (cosine distance, which a faint image cannot game) and how bright it is
next to that real image; and bilinear reading of such a grid (with its gradient, for refinement).
"""

from __future__ import annotations

import numpy as np
from numpy.typing import NDArray


def realism_field(model, codes: NDArray[np.float32], images: NDArray, lo: NDArray, cell: float, radius: int,
                  block: int = 6, hi: NDArray | None = None
                  ) -> tuple[NDArray[np.float32], NDArray[np.float32], NDArray[np.float32]]:
    """For the decoded image of each grid cell centre: the cosine distance to the nearest real image (in
    cosine) among those whose codes lie within `radius` cells, and the decoded image's brightness divided by
    that real image's. Cells with no such image get inf and nan. Returns (cosine (ny, nx), brightness ratio
    (ny, nx), origin (2,)).

    images: the real images as validated float32 rows (model.as_images), one per code. lo (and hi, default
    the codes' largest): the corners of the latent box the grid must cover."""
    from .realism import unit_rows

    origin = (lo - (radius + 1) * cell).astype(np.float32)
    q = np.floor((codes - origin) / cell).astype(np.int64)
    top = q.max(0) if hi is None else np.maximum(q.max(0), np.floor((np.asarray(hi) - origin) / cell).astype(np.int64))
    shape = (int(top[1]) + radius + 2, int(top[0]) + radius + 2)  # (ny, nx)
    best = np.full(shape, -np.inf, dtype=np.float32)  # largest cosine similarity so far
    near_bright = np.full(shape, np.nan, dtype=np.float32)  # brightness of that real image
    # Work in blocks of block x block cells: the images in a block against the decoded centres of the block
    # and its margin, one matrix product each.
    bq = q // block
    order = np.lexsort((bq[:, 0], bq[:, 1]))
    keys = bq[order, 1] * (shape[1] // block + 2) + bq[order, 0]
    starts = np.flatnonzero(np.r_[True, keys[1:] != keys[:-1]])
    ends = np.r_[starts[1:], len(order)]
    span = block + 2 * radius
    # decode every centre that some block needs, once
    need = np.zeros(shape, dtype=bool)
    for s in starts:
        by, bx = bq[order[s], 1] * block - radius, bq[order[s], 0] * block - radius
        need[max(by, 0) : by + span, max(bx, 0) : bx + span] = True
    ys, xs = np.nonzero(need)
    centres = np.stack([origin[0] + (xs + 0.5) * cell, origin[1] + (ys + 0.5) * cell], 1).astype(np.float32)
    decoded = model.decode(centres)
    unit_dec, _ = unit_rows(decoded)
    dec_bright = decoded.mean(1)
    slot = np.full(shape, -1, dtype=np.int64)
    slot[ys, xs] = np.arange(len(ys))
    for s, e in zip(starts, ends, strict=True):
        rows = order[s:e]
        x = images[rows]
        ux, _ = unit_rows(x)
        by, bx = bq[rows[0], 1] * block - radius, bq[rows[0], 0] * block - radius
        y0, x0 = max(by, 0), max(bx, 0)
        win = slot[y0 : by + span, x0 : bx + span]
        cy, cx = np.nonzero(win >= 0)
        ids = win[cy, cx]
        sim = ux @ unit_dec[ids].T  # (images, centres)
        # an image counts for a centre only when its cell lies within `radius` cells of the centre's cell
        iq = q[rows]
        near = (np.abs(iq[:, 1, None] - (cy + y0)[None]) <= radius) & (
            np.abs(iq[:, 0, None] - (cx + x0)[None]) <= radius)
        sim = np.where(near, sim, -np.inf)
        j = sim.argmax(0)
        top = sim[j, np.arange(len(ids))]
        gy, gx = cy + y0, cx + x0
        better = top > best[gy, gx]
        best[gy[better], gx[better]] = top[better]
        near_bright[gy[better], gx[better]] = x[j[better]].mean(1)
    cosine = np.where(np.isfinite(best), 1.0 - best, np.inf).astype(np.float32)
    dec_grid = np.full(shape, np.nan, dtype=np.float32)
    dec_grid[ys, xs] = dec_bright
    with np.errstate(divide="ignore", invalid="ignore"):
        ratio = (dec_grid / near_bright).astype(np.float32)
    return cosine, ratio, origin


def occupancy_field(codes: NDArray[np.float32], lo: NDArray, cell: float, radius: int):
    """Codes only: 1 within `radius` cells of some code, inf elsewhere."""
    origin = (lo - (radius + 1) * cell).astype(np.float32)
    q = np.floor((codes - origin) / cell).astype(np.int64)
    shape = (int(q[:, 1].max()) + radius + 2, int(q[:, 0].max()) + radius + 2)
    occ = np.zeros(shape, dtype=bool)
    occ[q[:, 1], q[:, 0]] = True
    near = occ.copy()
    for dy in range(-radius, radius + 1):
        for dx in range(-radius, radius + 1):
            near |= np.roll(np.roll(occ, dy, 0), dx, 1)
    return np.where(near, 1.0, np.inf).astype(np.float32), origin


def bilinear(field_: NDArray[np.float32], origin: NDArray, cell: float, z: NDArray, grad: bool = False):
    """The grid field at latent points z (n, 2), bilinear between cell centres and held constant beyond the
    grid; with grad=True also its gradient (n, 2)."""
    ny, nx_ = field_.shape
    z = np.asarray(z, dtype=np.float64)  # float32 would round the clip bound below up to the last cell
    fx = np.clip((z[:, 0] - origin[0]) / cell - 0.5, 0.0, nx_ - 1.000001)
    fy = np.clip((z[:, 1] - origin[1]) / cell - 0.5, 0.0, ny - 1.000001)
    ix, iy = fx.astype(np.int64), fy.astype(np.int64)
    tx, ty = fx - ix, fy - iy
    f00, f10 = field_[iy, ix], field_[iy, ix + 1]
    f01, f11 = field_[iy + 1, ix], field_[iy + 1, ix + 1]
    value = f00 * (1 - tx) * (1 - ty) + f10 * tx * (1 - ty) + f01 * (1 - tx) * ty + f11 * tx * ty
    if not grad:
        return value
    inside_x = (fx > 0) & (fx < nx_ - 1.000001)
    inside_y = (fy > 0) & (fy < ny - 1.000001)
    gx = ((f10 - f00) * (1 - ty) + (f11 - f01) * ty) / cell * inside_x
    gy = ((f01 - f00) * (1 - tx) + (f11 - f10) * tx) / cell * inside_y
    return value, np.stack([gx, gy], 1)
