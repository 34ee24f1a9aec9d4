"""How real the frames of a path look, measured so that a faint or black image cannot game it.

- realism of a frame: the cosine distance 1 - max_j cos(x, r_j) from the frame to its nearest real image r_j
  (e.g. the training set). It ignores intensity: dimming an image does not change it, and a blank image scores
  1, the worst value for images of non-negative pixels. Lower is more realistic.
- realism_l2: the plain Euclidean distance to the nearest real image. It is kept for comparison only and
  misleads: it rewards dim images (an all-black image lies closer to most real garments than a bright decoded
  one does, and a reconstruction dimmed to half scores better than the same reconstruction).
- brightness of a frame: its mean pixel value; a frame's brightness ratio: its brightness divided by the linear
  blend of the first and last frames' brightness at its position i / (n - 1). Below 1 a frame fades (a ghost),
  above 1 it passes through a brighter garment.

Every measure works on whole rows, so a colour model's frames (h*w*3 values, channels-last) are compared value
by value with real colour images: a frame of the right shapes in the wrong colours is far from them, and its
brightness is the mean over all three channels.
"""

from __future__ import annotations

import numpy as np
from numpy.typing import NDArray

REALISM_CHUNK = 8192  # reference images per matrix product
BLANK = 1e-12  # a row whose norm is below this has no direction: its cosine distance is 1


def brightness(images: NDArray) -> NDArray[np.float64]:
    """Mean pixel value of each row, (n,)."""
    return np.asarray(images, dtype=np.float64).mean(axis=1)


def brightness_ratio(images: NDArray) -> NDArray[np.float64]:
    """Each frame's brightness over the linear blend of the endpoints' brightness at its position, (n,); always
    finite.

    Where the blend is darker than one grey level on one pixel (both endpoints blank, or nearly), the frame is
    measured against that faintest visible brightness instead: a blank frame there has ratio 0 against a
    blank reference it equals, so such frames are 1, and a visible frame between blank ends gets a large,
    finite ratio (it is far brighter than its reference), never infinity."""
    x = np.asarray(images)
    b = brightness(x)
    t = np.linspace(0.0, 1.0, len(b))
    blend = (1 - t) * b[0] + t * b[-1]
    faintest = 1.0 / (255.0 * max(x.shape[1], 1))  # mean brightness of one grey level on one pixel
    return np.where((blend <= 0) & (b <= 0), 1.0, b / np.maximum(blend, faintest))


def unit_rows(x: NDArray) -> tuple[NDArray[np.float32], NDArray[np.float64]]:
    """(rows scaled to unit length, their norms); blank rows stay zero."""
    x = np.asarray(x, dtype=np.float32)
    norm = np.sqrt((x * x).sum(1, dtype=np.float64))  # float32 squares, summed in float64
    scale = np.where(norm > BLANK, 1.0 / np.maximum(norm, BLANK), 0.0).astype(np.float32)
    return x * scale[:, None], norm


class Reference:
    """Real images to measure realism against, prepared once (validated rows, unit rows, squared norms)."""

    def __init__(self, model, images: object) -> None:
        from ..errors import InputError

        arr = np.asarray(images)
        if arr.ndim == 0 or len(arr) == 0:
            raise InputError(f"realism needs at least one real image to compare with, got {arr.shape}")
        if len(arr):
            self.images = np.concatenate([model.as_images(arr[s : s + REALISM_CHUNK])
                                          for s in range(0, len(arr), REALISM_CHUNK)])
        else:
            self.images = model.as_images(arr)
        self.unit, norm = unit_rows(self.images)
        self.sq = (norm * norm).astype(np.float32)

    def __len__(self) -> int:
        return len(self.images)

    def nearest(self, x: NDArray) -> dict[str, NDArray[np.float64]]:
        """For each row of x: {"cosine": cosine distance to the nearest reference image (1 for a blank row),
        "l2": Euclidean distance to the nearest reference image, "index": which image is nearest in cosine}.

        Both come from one matrix product per chunk. The Euclidean distance is then recomputed exactly (float64,
        as x - r) for each chunk's best candidate: the expansion |x|^2 + |r|^2 - 2 x.r loses about 1e-5 of |x|^2
        to float32 cancellation, which is 0.003 or more in the distance of an image to itself."""
        x = np.asarray(x, dtype=np.float32)
        ux, xnorm = unit_rows(x)
        xsq = (xnorm * xnorm).astype(np.float32)
        rows = np.arange(len(x))
        best_cos = np.full(len(x), -np.inf)
        best_idx = np.zeros(len(x), dtype=np.int64)
        best_l2 = np.full(len(x), np.inf)
        x64 = x.astype(np.float64)
        for s in range(0, len(self.images), REALISM_CHUNK):
            ref, uref = self.images[s : s + REALISM_CHUNK], self.unit[s : s + REALISM_CHUNK]
            cos = ux @ uref.T
            j = cos.argmax(1)
            better = cos[rows, j] > best_cos
            best_cos = np.where(better, cos[rows, j], best_cos)
            best_idx = np.where(better, j + s, best_idx)
            d2 = xsq[:, None] + self.sq[None, s : s + REALISM_CHUNK] - 2.0 * (x @ ref.T)
            cand = d2.argmin(1)
            exact = np.sqrt(((x64 - ref[cand].astype(np.float64)) ** 2).sum(1))
            best_l2 = np.minimum(best_l2, exact)
        cosine = np.clip(1.0 - best_cos, 0.0, 2.0)
        cosine = np.where(xnorm > BLANK, cosine, 1.0)
        return {"cosine": cosine, "l2": best_l2, "index": best_idx}
