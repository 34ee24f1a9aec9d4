"""Pictures for the runtime: tile images into a grid, write it as a PNG, read a PNG back as model input.

`image_grid` is pure numpy. Writing and reading PNGs needs the optional `viz` extra (matplotlib, and the
Pillow it brings): `pip install 'vae-infer[viz]'`. It is imported only inside the functions that use it,
and only its Agg machinery is used (no display, no pyplot state), so importing this module is always cheap.
"""

from __future__ import annotations

import io
import math
import numbers
from pathlib import Path

import numpy as np
from numpy.typing import NDArray

from .atomic import write_atomically
from .errors import InputError, MissingExtraError
from .inputs import as_images

PAD_VALUE = 1.0  # white lines between tiles, and white for the empty cells of a last, partial row
TARGET_SIDE = 512  # save_image_grid upscales so the longer side comes nearest this many pixels...
MAX_UPSCALE = 8  # ...but by at most this integer factor (nearest neighbour, so pixels stay exact)
TITLE_FONT_PT = 12
TITLE_DPI = 100
TITLE_MARGIN_PX = 6
INSTALL_HINT = "pip install 'vae-infer[viz]'"


def _require_matplotlib(what: str):
    """Import matplotlib (and Pillow, which it depends on) or raise MissingExtraError with the install hint."""
    try:
        import matplotlib  # noqa: F401  (the top-level import first: it is what a missing extra breaks)
        import PIL.Image
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError as e:
        raise MissingExtraError(
            f"{what} needs matplotlib, which is not installed ({e}); install the viz extra: {INSTALL_HINT}"
        ) from e
    return PIL.Image, Figure, FigureCanvasAgg


# -- grids (numpy only) ----------------------------------------------------------------------------------
def image_grid(images, image_shape: tuple[int, ...], ncols: int | None = None, pad: int = 1) -> np.ndarray:
    """Tile n images into one float32 array in [0, 1]: 2-D for gray, (height, width, 3) for RGB.

    image_shape: (h, w) for gray or (h, w, c) with c in {1, 3}. images: as the model takes them ((n, h*w*c),
    (n, h, w, c), or (n, h, w) for gray); uint8 (0..255) or floats in [0, 1]. Tiles run left to right, then top
    to bottom, `ncols` to a row (default ceil(sqrt(n))), with `pad` pixels of PAD_VALUE (white) between
    tiles and in the unused cells of a last, partial row; there is no border around the outside. The
    result has shape (rows*h + (rows-1)*pad, ncols*w + (ncols-1)*pad), plus a last axis of 3 for RGB, with
    rows = ceil(n / ncols)."""
    h, w, ch = _as_shape(image_shape)
    tile = (h, w) if ch == 1 else (h, w, ch)
    x = as_images(images, tile, 255.0).reshape(-1, *tile)
    n = len(x)
    ncols = math.ceil(math.sqrt(n)) if ncols is None else _positive_int(ncols, "ncols")
    if isinstance(pad, bool) or not isinstance(pad, numbers.Integral) or pad < 0:
        raise InputError(f"pad must be a non-negative integer, got {pad!r}")
    pad = int(pad)
    rows = math.ceil(n / ncols)
    grid = np.full((rows * h + (rows - 1) * pad, ncols * w + (ncols - 1) * pad, *tile[2:]), PAD_VALUE,
                   dtype=np.float32)
    for i in range(n):
        r, c = divmod(i, ncols)
        top, left = r * (h + pad), c * (w + pad)
        grid[top : top + h, left : left + w] = x[i]
    return grid


def upscale_factor(shape: tuple[int, int]) -> int:
    """The integer factor save_image_grid enlarges a grid of this (height, width) by."""
    return max(1, min(MAX_UPSCALE, round(TARGET_SIDE / max(*shape, 1))))


def to_uint8(grid: np.ndarray) -> NDArray[np.uint8]:
    """[0, 1] floats -> 0..255, rounded (so uint8 images divided by 255 come back exactly)."""
    return np.round(np.clip(grid, 0.0, 1.0) * 255.0).astype(np.uint8)


def save_image_grid(images, image_shape, path, ncols=None, title: str | None = None) -> Path:
    """Write image_grid(images, image_shape, ncols) as an 8-bit PNG (grayscale, or RGB for colour images);
    returns the path.

    The grid is enlarged by an integer factor (nearest neighbour: upscale_factor, e.g. x2 for a 10 x 10
    grid of 28x28 images, x1 from about 770 pixels up) so every model pixel is an exact square of equal
    grey values. A title is drawn black on white in a strip above it. The file is written atomically.
    Needs the viz extra."""
    pil_image, figure, canvas = _require_matplotlib("save_image_grid")
    grid = to_uint8(image_grid(images, image_shape, ncols=ncols))
    k = upscale_factor(grid.shape[:2])
    pixels = grid.repeat(k, axis=0).repeat(k, axis=1) if k > 1 else grid
    if title:
        strip = _render_title(str(title), figure, canvas)
        if pixels.ndim == 3:  # an RGB grid: the black-on-white title on every channel
            strip = np.repeat(strip[..., None], pixels.shape[2], axis=2)
        width = max(pixels.shape[1], strip.shape[1])
        pixels = np.concatenate([_center(strip, width), _center(pixels, width)])
    png = io.BytesIO()
    pil_image.fromarray(np.ascontiguousarray(pixels)).save(png, format="PNG")
    return write_atomically(path, lambda f: f.write(png.getvalue()))


def _render_title(title: str, figure_cls, canvas_cls) -> NDArray[np.uint8]:
    """The title as black-on-white uint8 pixels, just large enough for the text plus a margin."""
    fig = figure_cls(figsize=(1, 1), dpi=TITLE_DPI, facecolor="white")
    canvas = canvas_cls(fig)
    text = fig.text(0.5, 0.5, title, ha="center", va="center", fontsize=TITLE_FONT_PT, color="black")
    box = text.get_window_extent(canvas.get_renderer())
    wpx = math.ceil(box.width) + 2 * TITLE_MARGIN_PX
    hpx = math.ceil(box.height) + 2 * TITLE_MARGIN_PX
    fig.set_size_inches(wpx / TITLE_DPI, hpx / TITLE_DPI)
    canvas.draw()
    rgba = np.asarray(canvas.buffer_rgba())
    return np.ascontiguousarray(rgba[..., 0])  # black text on white: the channels are equal


def _center(pixels: NDArray[np.uint8], width: int) -> NDArray[np.uint8]:
    extra = width - pixels.shape[1]
    if extra <= 0:
        return pixels
    left = extra // 2
    return np.pad(pixels, ((0, 0), (left, extra - left)) + ((0, 0),) * (pixels.ndim - 2), constant_values=255)


# -- reading -------------------------------------------------------------------------------------------
def read_png(path, image_shape) -> np.ndarray:
    """One PNG image as uint8 (h, w) (or (h, w, 3) when image_shape is (h, w, 3)), ready for
    VAEModel.encode(img[None]).

    For RGB: any opaque PNG (gray ones repeat their value on the three channels). For gray: grayscale PNGs
    (8- or 16-bit, with an alpha channel only if fully opaque), and RGB / RGBA / palette PNGs whose red,
    green and blue are equal in every pixel. The size must be exactly image_shape:
    nothing is resized or converted silently. Anything else raises InputError saying how to fix it.
    Needs the viz extra."""
    pil_image, _, _ = _require_matplotlib("read_png")
    h, w, ch = _as_shape(image_shape)
    path = Path(path)
    try:
        with pil_image.open(path) as im:
            if im.format != "PNG":
                raise InputError(
                    f"{path}: expected a PNG file, found {im.format or 'an unknown'} image; save it as PNG "
                    f"(lossless), e.g. with Pillow: Image.open(src).convert('L').save('image.png')"
                )
            if im.size != (w, h):
                raise InputError(
                    f"{path}: expected a {h}x{w} image (height x width), found {im.size[1]}x{im.size[0]}; "
                    f"resize or crop it to {h}x{w} first (read_png does not resize)"
                )
            im.load()
            return _gray_pixels(im, path) if ch == 1 else _rgb_pixels(im, path)
    except InputError:
        raise
    except (OSError, SyntaxError, ValueError, pil_image.DecompressionBombError) as e:
        raise InputError(f"cannot read {path} as a PNG image: {e}") from e


def _gray_pixels(im, path: Path) -> NDArray[np.uint8]:
    mode = im.mode
    if mode == "L":
        return np.array(im, dtype=np.uint8)
    if mode.startswith("I"):  # 16-bit grayscale: 0..65535 -> 0..255
        v = np.asarray(im).astype(np.float64)
        return np.round(np.clip(v, 0, 65535) * (255.0 / 65535.0)).astype(np.uint8)
    if mode == "1":
        return np.array(im.convert("L"), dtype=np.uint8)
    if mode == "LA":
        arr = np.asarray(im)
        _require_opaque(arr[..., 1], path)
        return np.ascontiguousarray(arr[..., 0], dtype=np.uint8)
    arr = np.asarray(im.convert("RGBA"))  # RGB, RGBA, P (palette), ...
    _require_opaque(arr[..., 3], path)
    r, g, b = arr[..., 0], arr[..., 1], arr[..., 2]
    differ = (r != g) | (g != b)
    if differ.any():
        raise InputError(
            f"{path}: expected a grayscale image, but this {mode} image has colour ({int(differ.sum())} of "
            f"{differ.size} pixels have unequal red, green and blue); convert it to grayscale first, e.g. "
            f"with Pillow: Image.open(src).convert('L').save('gray.png'), or ImageMagick: "
            f"magick src.png -colorspace Gray gray.png"
        )
    return np.ascontiguousarray(r, dtype=np.uint8)


def _rgb_pixels(im, path: Path) -> NDArray[np.uint8]:
    if im.mode.startswith("I"):  # 16-bit grayscale: as gray, then on three channels
        return np.repeat(_gray_pixels(im, path)[..., None], 3, axis=2)
    arr = np.asarray(im.convert("RGBA"))
    _require_opaque(arr[..., 3], path)
    return np.ascontiguousarray(arr[..., :3], dtype=np.uint8)


def _require_opaque(alpha: np.ndarray, path: Path) -> None:
    if (alpha != 255).any():
        raise InputError(
            f"{path}: expected an opaque grayscale image, but {int((alpha != 255).sum())} pixels are (partly) "
            f"transparent and their grey value is ambiguous; flatten it onto a background first, e.g. with "
            f"Pillow: Image.alpha_composite(Image.new('RGBA', im.size, 'black'), im.convert('RGBA')).convert('L')"
        )


# -- small checks --------------------------------------------------------------------------------------
def _positive_int(v: object, what: str) -> int:
    if isinstance(v, bool) or not isinstance(v, numbers.Integral) or v < 1:
        raise InputError(f"{what} must be a positive integer, got {v!r}")
    return int(v)


def _as_shape(image_shape) -> tuple[int, int, int]:
    """(h, w, channels) from (h, w) or (h, w, c) with c in {1, 3}."""
    try:
        h, w, *rest = image_shape
        (c,) = rest or (1,)
    except (TypeError, ValueError):
        raise InputError(f"image_shape must be (height, width) or (height, width, channels), got "
                         f"{image_shape!r}") from None
    if c not in (1, 3) or isinstance(c, bool):
        raise InputError(f"image_shape: channels must be 1 (gray) or 3 (RGB), got {c!r}")
    return _positive_int(h, "image height"), _positive_int(w, "image width"), int(c)


__all__ = ["image_grid", "save_image_grid", "read_png", "upscale_factor", "to_uint8"]
