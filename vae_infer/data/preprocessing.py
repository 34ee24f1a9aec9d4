"""How an image file becomes pixels: the one set of rules for PNG and JPEG files, recorded in a model package
(model.json `preprocessing`) so that `vae-infer encode photo.png` sees what training saw.

    prep = Preprocessing(image_size=(28, 28), fit="crop")          # what `python -m train fit` was told
    pixels = read_image_file(path, prep, size=(28, 28), channels="gray")   # uint8 (28, 28); rgb: (28, 28, 3)

The steps, in this order, each recorded: the header is read and its pixel count checked (MAX_FILE_PIXELS, the
image-bomb guard) before any pixel is decoded; the EXIF orientation is applied (or not); the image becomes
8-bit gray or RGB (palette expanded, 16-bit scaled, CMYK converted, alpha composited or refused, colour made
gray only when asked); last, it is resized to image_size (stretched, or centre-cropped to the aspect first).
Without image_size every image must already have the expected size: nothing is resized that was not asked for.
Pillow (the `images` extra) is imported here only, when a file is read."""

from __future__ import annotations

import warnings
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

from ..errors import DataError, MissingExtraError

MAX_FILE_PIXELS = 1 << 26  # 8192 x 8192: a file whose header declares more is refused before decoding
FILTERS = ("nearest", "box", "bilinear", "hamming", "bicubic", "lanczos")
FITS = ("stretch", "crop")
ALPHAS = ("refuse", "black", "white")  # transparent pixels: refused, or composited over black or white
FORMATS = ("PNG", "JPEG", "MPO")  # MPO: the multi-picture JPEG of phone cameras; its first picture is the photo
# The fixed rules, recorded so a package says exactly how its images were made (and a runtime that reads
# them differently refuses the package instead of guessing).
RULES = {
    "order": "orientation, then mode, then resize",
    "gray_from_rgb": "ITU-R 601-2 luma: (19595 R + 38470 G + 7471 B + 32768) >> 16, as Pillow's convert('L')",
    "palette": "expanded to RGB, or RGBA where the palette has transparency",
    "sixteen_bit": "gray: round(v * 255 / 65535); colour: Pillow's 8-bit reading",
    "cmyk": "Pillow's convert('RGB'), without colour profiles",
    "alpha_composite": "(c * a + background * (255 - a) + 127) // 255",
}
_GRAY_MODES = ("1", "L", "LA", "La", "I", "I;16", "I;16B", "I;16L", "I;16N")
_ALPHA_MODES = ("LA", "La", "RGBA", "RGBa", "PA")


@dataclass(frozen=True)
class Preprocessing:
    """How image files become the model's pixels. The defaults change nothing that was not asked for."""

    image_size: tuple[int, int] | None = None  # (height, width) to resize to; None: every file must have the size
    resize_filter: str = "bicubic"  # Pillow's resampling filter (its default for resize)
    fit: str = "stretch"  # stretch to image_size, or crop the centre to its aspect ratio first
    exif_orientation: bool = True  # turn photos upright as their EXIF tag says (as image viewers show them)
    alpha: str = "refuse"  # transparent pixels: refused, or composited over black or white
    to_gray: bool = False  # colour images made gray by luma; without it a gray model refuses colour images

    def __post_init__(self) -> None:
        size = self.image_size
        if size is not None:
            if len(size) != 2 or not all(isinstance(s, (int, np.integer)) and 1 <= s for s in size):
                raise DataError(f"image size must be two positive integers (height, width), got {size!r}")
            if int(size[0]) * int(size[1]) > MAX_FILE_PIXELS:
                raise DataError(f"image size {size[0]}x{size[1]} is more than the {MAX_FILE_PIXELS:,} pixels an "
                                f"image may have")
            object.__setattr__(self, "image_size", (int(size[0]), int(size[1])))
        for name, allowed in (("resize_filter", FILTERS), ("fit", FITS), ("alpha", ALPHAS)):
            if getattr(self, name) not in allowed:
                raise DataError(f"preprocessing {name} must be one of {', '.join(allowed)}, got "
                                f"{getattr(self, name)!r}")
        for name in ("exif_orientation", "to_gray"):
            if not isinstance(getattr(self, name), bool):
                raise DataError(f"preprocessing {name} must be true or false, got {getattr(self, name)!r}")

    def describe(self, image_shape: tuple[int, ...]) -> str:
        """One line for `vae-infer info`: how PNG and JPEG files become this model's pixels. image_shape:
        (h, w) for a gray model, (h, w, 3) for an RGB one (gray files then repeat on three channels)."""
        h, w = image_shape[:2]
        size = (f"resized to {h}x{w} ({self.resize_filter}, {self.fit})" if self.image_size
                else f"must be {h}x{w}")
        colour = "colour made gray (luma)" if self.to_gray else "colour refused"
        if len(image_shape) == 3 and image_shape[2] == 3:
            colour = "read as RGB (gray files on all three channels)"
        alpha = "transparency refused" if self.alpha == "refuse" else f"transparency over {self.alpha}"
        exif = "EXIF orientation applied" if self.exif_orientation else "EXIF orientation ignored"
        return f"{size}; {colour}; {alpha}; {exif}"

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["image_size"] = list(self.image_size) if self.image_size else None
        return {**d, "rules": dict(RULES)}

    @classmethod
    def from_dict(cls, d: object) -> Preprocessing:
        """From model.json: exactly the fields to_dict writes, with the rules this runtime applies."""
        if not isinstance(d, dict):
            raise DataError(f"preprocessing must be an object, found {type(d).__name__}")
        known = {"image_size", "resize_filter", "fit", "exif_orientation", "alpha", "to_gray", "rules"}
        extra = sorted(repr(k) for k in d if k not in known)  # repr: a key's text is shown, never obeyed
        if extra:
            raise DataError(f"preprocessing: unknown fields {', '.join(extra)[:200]}; this vae_infer knows "
                            f"{', '.join(sorted(known))}")
        if d.get("rules", RULES) != RULES:
            raise DataError("preprocessing.rules differ from the rules this vae_infer applies; install the "
                            "vae_infer that made the package")
        size = d.get("image_size")
        if size is not None and not (isinstance(size, list) and len(size) == 2
                                     and all(type(s) is int for s in size)):
            raise DataError(f"preprocessing.image_size must be null or [height, width], found {size!r}"[:300])
        fields = {k: v for k, v in d.items() if k not in ("rules", "image_size")}
        return cls(image_size=tuple(size) if size else None, **fields)


def parse_image_size(text: str | None) -> tuple[int, int] | None:
    """`--image-size H,W` (or HxW, or one number for a square) -> (H, W)."""
    if not text:
        return None
    parts = text.lower().replace("x", ",").split(",")
    try:
        size = tuple(int(p) for p in parts)
    except ValueError:
        size = ()
    if len(size) == 1:
        size = size * 2
    if len(size) != 2 or min(size) < 1:
        raise DataError(f"--image-size: expected H,W (two positive integers, e.g. 32,32), got {text!r}")
    return size


def pillow():
    """PIL.Image with MAX_IMAGE_PIXELS set from this module's bound, or an install hint."""
    try:
        from PIL import Image, ImageOps
    except ImportError as e:
        raise MissingExtraError("reading PNG or JPEG files needs Pillow, which is not installed; install it "
                                "with: pip install 'vae-infer[images]'") from e
    Image.MAX_IMAGE_PIXELS = MAX_FILE_PIXELS  # Pillow's own guard, at the same bound (it errors at twice it)
    return Image, ImageOps


def read_image_file(path: str | Path, prep: Preprocessing, size: tuple[int, int] | None,
                    channels: str | None) -> NDArray[np.uint8]:
    """One PNG or JPEG file as uint8 (h, w) for gray or (h, w, 3) for rgb, made by prep's rules.

    size: the (height, width) every image must have when prep has no image_size (None: any, for the first
    file of a folder). channels: "gray", "rgb", or None to keep what the file holds (gray when its colour
    channels are equal everywhere). Every failure is a DataError naming the file."""
    Image, ImageOps = pillow()
    path = Path(path)
    try:
        with warnings.catch_warnings():  # Pillow warns between its bound and twice it; refused just below
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            im = Image.open(path, formats=FORMATS)
        with im:
            w, h = im.size
            if w * h > MAX_FILE_PIXELS:
                raise DataError(f"{path}: its header declares {w}x{h} = {w * h:,} pixels, more than the "
                                f"{MAX_FILE_PIXELS:,} an image file may have (a guard against image bombs); "
                                f"shrink it first")
            if im.format == "PNG" and getattr(im, "n_frames", 1) > 1:
                raise DataError(f"{path}: an animated PNG ({im.n_frames} frames); expected one still image")
            im.load()
            if prep.exif_orientation:
                im = ImageOps.exif_transpose(im)
            pixels = _to_channels(im, prep, channels, path)
    except DataError:
        raise
    except (OSError, SyntaxError, ValueError, EOFError, Image.DecompressionBombError) as e:
        raise DataError(f"{path}: cannot read it as a PNG or JPEG image: {e}") from e
    return _sized(pixels, prep, size, path, Image, ImageOps)


def _to_channels(im, prep: Preprocessing, channels: str | None, path: Path) -> NDArray[np.uint8]:
    mode = im.mode
    if mode in ("P", "PA"):
        im = im.convert("RGBA" if mode == "PA" or "transparency" in im.info else "RGB")
    elif mode not in _GRAY_MODES and mode not in ("RGB", "RGBA", "RGBa"):
        im = im.convert("RGB")  # CMYK, YCbCr
    mode = im.mode
    if mode == "1":
        arr = np.array(im.convert("L"), dtype=np.uint8)
    elif mode.startswith("I"):
        v = np.asarray(im)
        if v.size and (v.min() < 0 or v.max() > 65535):
            raise DataError(f"{path}: a {mode} image with values outside 0..65535; expected 8- or 16-bit pixels")
        arr = ((v.astype(np.uint32) * 510 + 65535) // 131070).astype(np.uint8)  # round(v * 255 / 65535)
    else:
        arr = np.array(im, dtype=np.uint8)
    if mode in _ALPHA_MODES:
        arr = _composite(arr, prep.alpha, path)
    if arr.ndim == 3:  # (h, w, 3) colour
        gray = bool((arr[..., 0] == arr[..., 1]).all() and (arr[..., 1] == arr[..., 2]).all())
        if channels == "rgb" or (channels is None and not gray):
            return np.ascontiguousarray(arr)
        if gray:
            return np.ascontiguousarray(arr[..., 0])
        if not prep.to_gray:
            raise DataError(f"{path}: a colour image, but the model reads gray images; convert it to gray "
                            f"first, or train with --to-gray (luma, recorded in the model) to have colour "
                            f"images converted")
        r, g, b = (arr[..., i].astype(np.uint32) for i in range(3))
        return ((19595 * r + 38470 * g + 7471 * b + 32768) >> 16).astype(np.uint8)
    if channels == "rgb":
        return np.repeat(arr[..., None], 3, axis=2)
    return arr


def _composite(arr: NDArray[np.uint8], alpha: str, path: Path) -> NDArray[np.uint8]:
    color, a = arr[..., :-1], arr[..., -1:]
    if alpha == "refuse":
        if (a != 255).any():
            raise DataError(f"{path}: has transparent pixels, which the model's preprocessing does not take "
                            f"(alpha: refuse); flatten it first, or train with --alpha black or --alpha white")
        out = color
    else:
        background = 0 if alpha == "black" else 255
        c, a32 = color.astype(np.uint32), a.astype(np.uint32)
        out = ((c * a32 + background * (255 - a32) + 127) // 255).astype(np.uint8)
    return out[..., 0] if out.shape[-1] == 1 else out


def _sized(pixels: NDArray[np.uint8], prep: Preprocessing, size: tuple[int, int] | None, path: Path,
           Image, ImageOps) -> NDArray[np.uint8]:
    h, w = pixels.shape[:2]
    target = prep.image_size
    if target is None:
        if size is not None and (h, w) != tuple(size):
            raise DataError(f"{path}: is {h}x{w} (height x width) but {size[0]}x{size[1]} is expected (the "
                            f"first image's size, or the model's); pass --image-size H,W to resize every image, "
                            f"or resize the file")
        return pixels
    if (h, w) == target:
        return pixels
    resample = getattr(Image.Resampling, prep.resize_filter.upper())
    img = Image.fromarray(pixels)
    if prep.fit == "crop":
        img = ImageOps.fit(img, (target[1], target[0]), method=resample, centering=(0.5, 0.5))
    else:
        img = img.resize((target[1], target[0]), resample=resample)
    return np.asarray(img, dtype=np.uint8)
