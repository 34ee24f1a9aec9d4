"""Image data sets on disk, without torch: IDX files (raw or gzip) and where named data sets are looked for.

The one IDX reader of the project: `train` reads its data sets with it too. The runtime never downloads;
`python -m train` does, into the same cache folder."""

from __future__ import annotations

import gzip
import os
import zlib
from pathlib import Path

import numpy as np
from numpy.typing import NDArray

from . import machine
from .errors import DataError

IDX_DTYPES = {0x08: np.uint8, 0x09: np.int8, 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}
GZIP_MAGIC = b"\x1f\x8b"
IMAGE_FILES = {"train": "train-images-idx3-ubyte", "test": "t10k-images-idx3-ubyte"}  # split -> file stem
SYSTEM_DATA = Path("/usr/share/datasets")  # Debian's dataset-* packages install <here>/<name>


def read_idx(path: str | Path) -> np.ndarray:
    """Read one IDX file (gzip-compressed or raw; detected by its first bytes, not its name)."""
    path = Path(path)
    try:
        raw = path.read_bytes()
        if raw[:2] == GZIP_MAGIC:
            raw = gzip.decompress(raw)
    except (OSError, EOFError, zlib.error) as e:  # gzip.BadGzipFile is an OSError
        raise DataError(f"cannot read IDX file {path}: {e}") from e
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0:
        raise DataError(f"{path} is not an IDX file: expected two zero bytes then a type code, got {raw[:4]!r}")
    type_code, ndim = raw[2], raw[3]
    if type_code not in IDX_DTYPES:
        raise DataError(f"{path}: unknown IDX type code 0x{type_code:02x}; expected one of {sorted(IDX_DTYPES)}")
    header_end = 4 + 4 * ndim
    if ndim == 0 or len(raw) < header_end:
        raise DataError(f"{path}: IDX header is truncated ({len(raw)} bytes for {ndim} dimensions)")
    shape = tuple(int.from_bytes(raw[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    dtype = np.dtype(IDX_DTYPES[type_code])
    expected = int(np.prod(shape)) * dtype.itemsize
    if len(raw) - header_end != expected:
        raise DataError(
            f"{path}: header says shape {shape} ({expected} bytes of data) but the file holds "
            f"{len(raw) - header_end}; the file is truncated or corrupt"
        )
    return np.frombuffer(raw, dtype=dtype, offset=header_end).reshape(shape).astype(dtype.newbyteorder("="))


def read_idx_images(path: str | Path) -> NDArray[np.uint8]:
    """Images (n, h, w) uint8 from an IDX file."""
    images = read_idx(path)
    if images.dtype != np.uint8 or images.ndim != 3:
        raise DataError(f"{path}: expected an IDX file of uint8 images (n, height, width), found "
                        f"{images.dtype} {images.shape}")
    return images


def find_split_file(folder: Path, stem: str) -> Path | None:
    """folder/<stem>.gz or folder/<stem>, whichever exists first."""
    for candidate in (folder / f"{stem}.gz", folder / stem):
        if candidate.is_file():
            return candidate
    return None


def cache_dir() -> Path:
    """Where downloaded data sets are kept: the project's cache folder, then datasets/."""
    return machine.cache_dir("datasets")


def dataset_dirs(name: str, data_dir: str | Path | None = None, system_dirs: tuple[str, ...] | None = None
                 ) -> list[Path]:
    """Where a named data set is looked for, in order: data_dir/<name>, data_dir, $VAE_DATA_DIR/<name>,
    $VAE_DATA_DIR, the cache folder, then system_dirs (default /usr/share/datasets/<name>)."""
    dirs = []
    if data_dir is not None:
        dirs += [Path(data_dir) / name, Path(data_dir)]
    if os.environ.get("VAE_DATA_DIR"):
        dirs += [Path(os.environ["VAE_DATA_DIR"]) / name, Path(os.environ["VAE_DATA_DIR"])]
    dirs.append(cache_dir() / name)
    dirs += [Path(d) for d in system_dirs] if system_dirs is not None else [SYSTEM_DATA / name]
    return dirs
