"""Arrays on disk for the command line: read images and latent codes, write results atomically.

Reading never unpickles (allow_pickle=False). Writing goes through vae_infer.atomic, so an existing file is
never left half-written."""

from __future__ import annotations

import zipfile
import zlib
from collections.abc import Mapping
from pathlib import Path

import numpy as np

from ..atomic import write_atomically
from ..errors import InputError
from ..inputs import expected_shapes
from .sources import split_key

IMAGE_SUFFIXES = (".npy", ".npz", ".png")
ARRAY_SUFFIXES = (".npy", ".npz")
NPY_MAGIC = b"\x93NUMPY"
# The command line reads a whole array into memory: larger ones (or .npz members that unpack larger) are
# refused before reading. `vae-infer batch` reads bigger data by row ranges.
MAX_READ_BYTES = 4 << 30
PICKLED = "it holds Python objects (pickled data), which vae-infer never loads; save numeric arrays instead"


def read_images(path: str | Path, image_shape: tuple[int, ...]) -> np.ndarray:
    """Images from a .npy or .npz file (`file.npz:key` picks one of several arrays), or one .png image.

    Returns the stored array unchanged (the model checks dtype, shape and values), except that a single
    image, shaped (height, width) (or (height, width, 3) for a colour model) or (height*width*channels,),
    becomes a batch of one."""
    file, key = split_key(path)
    suffix = file.suffix.lower()
    if suffix not in IMAGE_SUFFIXES:
        raise InputError(f"{file}: expected images in a {', '.join(IMAGE_SUFFIXES)} file, found suffix {suffix!r}")
    if suffix == ".png":
        if key is not None:
            raise InputError(f"{path}: a key (:{key}) only applies to .npz files")
        _require_file(file, "a .png image")
        from ..viz import read_png

        return read_png(file, image_shape)[None]
    arr = _read_array(file, key, "images")
    shape = tuple(image_shape)  # (h, w) gray or (h, w, c) colour
    h, w = shape[:2]
    features = int(np.prod(shape))
    channels = shape[2] if len(shape) == 3 else 1
    gray = channels == 1
    if arr.shape in (shape, (features,)) or (gray and arr.shape == (h, w)):  # one image
        arr = arr[None]
    elif not ((arr.ndim == 2 and arr.shape[1] == features) or (arr.ndim == 4 and arr.shape[1:] == (h, w, channels))
              or (gray and arr.ndim == 3 and arr.shape[1:] == (h, w))):
        # said here, naming the file, so that no caller counts the rows of something that is not images
        found = " (a 0-d array: a single number)" if arr.ndim == 0 else ""
        one = f"{h} x {w}" if gray else f"{h} x {w} x {shape[2]}"
        hint = f"; one image is {one} or {features} values"
        if gray and arr.ndim == 4 and arr.shape[1:3] == (h, w):
            hint = f"; pass grayscale {h}x{w} images (drop the channel axis, or convert colour to gray)"
        elif not gray and arr.ndim == 3 and arr.shape[1:] == (h, w):
            hint = f"; the model takes RGB images (n, {h}, {w}, 3), channels last"
        raise InputError(f"{path}: expected images shaped {expected_shapes(shape)}, got {arr.shape}{found}{hint}")
    return arr


def read_latents(path: str | Path) -> np.ndarray:
    """Latent codes (n, latent_size) from a .npy or .npz file (`file.npz:key` picks one of several arrays)."""
    file, key = split_key(path)
    if file.suffix.lower() not in ARRAY_SUFFIXES:
        raise InputError(
            f"{file}: expected latent codes in a .npy or .npz file, found suffix {file.suffix.lower()!r}"
        )
    if key is None and file.suffix.lower() == ".npz" and file.is_file():
        try:  # the .npz that `vae-infer encode` writes holds mu and logvar: decode the means
            with np.load(file, allow_pickle=False) as npz:
                key = "mu" if "mu" in npz.files and len(npz.files) > 1 else None
        except (ValueError, OSError, EOFError, zipfile.BadZipFile):
            pass  # _read_array reports the damage
    return _read_array(file, key, "latent codes")


def _read_array(file: Path, key: str | None, what: str) -> np.ndarray:
    if file.suffix.lower() == ".npy" and key is not None:
        raise InputError(f"{file}:{key}: a key only applies to .npz files; a .npy file holds one array")
    _require_file(file, f"a .npy or .npz file of {what}")
    try:
        if file.suffix.lower() == ".npy":
            _check_npy_header(file, what)
            return _plain(np.load(file, allow_pickle=False), file, what)
        _check_npz(file, what)
        with np.load(file, allow_pickle=False) as npz:
            keys = list(npz.files)
            if key is None:
                if len(keys) != 1:
                    found = f"{len(keys)} arrays: {', '.join(keys)}" if keys else "no arrays"
                    raise InputError(
                        f"{file}: expected a single array of {what} or a key (as {file}:KEY), found {found}"
                    )
                key = keys[0]
            elif key not in keys:
                raise InputError(f"{file}: no array named {key!r}; the file holds {', '.join(keys) or 'no arrays'}")
            return _plain(npz[key], file, what)
    except InputError:
        raise
    except (ValueError, OSError, EOFError, zipfile.BadZipFile, KeyError, NotImplementedError, RuntimeError,
            zlib.error) as e:
        # numpy reports object arrays, bad headers and truncated data as ValueError/OSError/EOFError; its words
        # for object arrays suggest loading them unsafely, which vae-infer never does, so they are not repeated
        reason = PICKLED if "pickle" in str(e).lower() else f"{e}".strip() or type(e).__name__
        raise InputError(f"{file}: expected a numpy {file.suffix.lower()} file of {what}, cannot read it "
                         f"(corrupt or truncated?): {reason}") from e


def _require_file(file: Path, expected: str) -> None:
    """A regular file, or an InputError that says what the path is instead."""
    if file.is_file():
        return
    if file.is_dir():
        raise InputError(f"{file} is a folder; expected a file ({expected})")
    if file.exists():
        raise InputError(f"{file} is not a regular file (a device, FIFO or socket); expected {expected}")
    raise InputError(f"{file}: no such file (expected {expected})")


def _check_npy_header(file: Path, what: str) -> None:
    """Refuse what is not a .npy file, holds objects, or is too large, before numpy reads it."""
    with open(file, "rb") as f:
        if f.read(len(NPY_MAGIC)) != NPY_MAGIC:
            raise InputError(f"{file}: expected a numpy .npy file of {what}, cannot read it: it does not start "
                             f"with numpy's magic bytes (not a .npy file, or a damaged one)")
        f.seek(0)
        version = np.lib.format.read_magic(f)
        dtype = _header_dtype(f, version, file)
    if dtype.hasobject:
        raise InputError(f"{file}: expected a numpy .npy file of {what}, cannot read it: {PICKLED}")
    if file.stat().st_size > MAX_READ_BYTES:
        raise InputError(f"{file}: {file.stat().st_size / 2**30:.1f} GiB is more than the command line reads at once "
                         f"({MAX_READ_BYTES >> 30} GiB); split it, or use `vae-infer batch`")


def _header_dtype(f, version: tuple[int, int], file: Path) -> np.dtype:
    if version == (1, 0):
        return np.lib.format.read_array_header_1_0(f)[2]
    if version == (2, 0):
        return np.lib.format.read_array_header_2_0(f)[2]
    raise InputError(f"{file}: .npy format version {version[0]}.{version[1]} is not read here; save it with np.save")


def _check_npz(file: Path, what: str) -> None:
    """Refuse what is not a zip archive, or unpacks to more than MAX_READ_BYTES, before numpy reads it."""
    if not zipfile.is_zipfile(file):
        raise InputError(f"{file}: expected a numpy .npz file of {what}, cannot read it: not a zip archive "
                         f"(corrupt or truncated)")
    with zipfile.ZipFile(file) as zf:
        size = sum(info.file_size for info in zf.infolist())
    if size > MAX_READ_BYTES:
        raise InputError(f"{file}: unpacks to {size / 2**30:.1f} GiB, more than the command line reads at once "
                         f"({MAX_READ_BYTES >> 30} GiB); split it, or use `vae-infer batch`")


def _plain(arr: object, file: Path, what: str) -> np.ndarray:
    if not isinstance(arr, np.ndarray):
        raise InputError(f"{file}: expected an array of {what}, found {type(arr).__name__}")
    if arr.dtype.names is not None:
        raise InputError(f"{file}: expected a plain numeric array of {what}, found a structured dtype {arr.dtype}")
    return arr


def check_output(path: str | Path, suffixes: tuple[str, ...] = ARRAY_SUFFIXES) -> Path:
    """Fail early (before any work) when `path` cannot be written: wrong suffix or no such folder."""
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in suffixes:
        raise InputError(f"{path}: expected an output file ending in {' or '.join(suffixes)}, found {suffix!r}")
    parent = path.parent
    if not parent.is_dir():
        raise InputError(f"{path}: the folder {parent} does not exist")
    if path.is_dir():
        raise InputError(f"{path} is a folder; expected a file name")
    return path


def write_array(path: str | Path, data: np.ndarray | Mapping[str, np.ndarray]) -> Path:
    """Write one array (.npy, or .npz under the key arr_0) or a dict of named arrays (.npz, or a one-entry
    dict to .npy), atomically: the file at `path` is either the old one or the complete new one."""
    path = check_output(path)
    npz = path.suffix.lower() == ".npz"
    arrays: np.ndarray | dict[str, np.ndarray]
    if isinstance(data, Mapping):
        named = {str(k): np.asarray(v) for k, v in data.items()}
        if not named:
            raise InputError(f"{path}: nothing to write (an empty dict of arrays)")
        arrays = named
        if not npz:
            if len(named) != 1:
                raise InputError(f"{path}: a .npy file holds one array, got {len(named)}: {', '.join(named)}; "
                                 f"write a .npz file instead")
            arrays = next(iter(named.values()))
    else:
        arrays = np.asarray(data)
        if npz:
            arrays = {"arr_0": arrays}
    bad = [k for k, v in (arrays.items() if isinstance(arrays, dict) else [("array", arrays)]) if v.dtype == object]
    if bad:
        raise InputError(f"{path}: expected numeric arrays, found object arrays: {', '.join(bad)}")
    write_atomically(path, lambda f: _dump(f, arrays))
    return path


def _dump(f, arrays: np.ndarray | dict[str, np.ndarray]) -> None:
    if isinstance(arrays, dict):
        np.savez(f, allow_pickle=False, **arrays)  # object arrays are refused above
    else:
        np.save(f, arrays, allow_pickle=False)
