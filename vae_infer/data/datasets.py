"""Image data sets, without torch: named data sets and where they are looked for, their class names, the one
validation split, and the IDX reader. Reading images by row ranges is vae_infer.data.sources, built on this.

The one data layer of the project: `train`, calibration, the latent index, batch jobs, benchmarks and tests all
read through it. The runtime never downloads; `python -m train` does, into the same cache folder."""

from __future__ import annotations

import gzip
import os
import zlib
from pathlib import Path

import numpy as np
from numpy.typing import NDArray

from .. import machine
from ..errors import DataError

IDX_DTYPES: dict[int, type[np.generic] | str] = {0x08: np.uint8, 0x09: np.int8, 0x0B: ">i2", 0x0C: ">i4",
                                                0x0D: ">f4", 0x0E: ">f8"}
GZIP_MAGIC = b"\x1f\x8b"
IMAGE_FILES = {"train": "train-images-idx3-ubyte", "test": "t10k-images-idx3-ubyte"}  # split -> file stem
LABEL_FILES = {"train": "train-labels-idx1-ubyte", "test": "t10k-labels-idx1-ubyte"}
SYSTEM_DATA = Path("/usr/share/datasets")  # Debian's dataset-* packages install <here>/<name>
CLASS_NAMES = {
    "fashion-mnist": (
        "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
        "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
    ),
    "mnist": tuple(str(i) for i in range(10)),
}
NAMED = tuple(CLASS_NAMES)  # the data sets known by name
SYSTEM_PACKAGES = {"fashion-mnist": "dataset-fashion-mnist"}  # the Debian package that installs each, if any


def idx_header(head: bytes, path: str | Path) -> tuple[np.dtype, tuple[int, ...], int]:
    """(dtype, shape, data offset) from the first bytes of an IDX file."""
    if len(head) < 4 or head[0] != 0 or head[1] != 0:
        raise DataError(f"{path} is not an IDX file: expected two zero bytes then a type code, got {head[:4]!r}")
    type_code, ndim = head[2], head[3]
    if type_code not in IDX_DTYPES:
        raise DataError(f"{path}: unknown IDX type code 0x{type_code:02x}; expected one of {sorted(IDX_DTYPES)}")
    header_end = 4 + 4 * ndim
    if ndim == 0 or len(head) < header_end:
        raise DataError(f"{path}: IDX header is truncated ({len(head)} bytes for {ndim} dimensions)")
    shape = tuple(int.from_bytes(head[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    return np.dtype(IDX_DTYPES[type_code]), shape, header_end


def read_idx(path: str | Path) -> np.ndarray:
    """Read one IDX file whole (gzip-compressed or raw; detected by its first bytes, not its name)."""
    path = Path(path)
    try:
        raw = path.read_bytes()
        if raw[:2] == GZIP_MAGIC:
            raw = gzip.decompress(raw)
    except (OSError, EOFError, zlib.error) as e:  # gzip.BadGzipFile is an OSError
        raise DataError(f"cannot read IDX file {path}: {e}") from e
    dtype, shape, header_end = idx_header(raw[: 4 + 4 * 255], path)
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


def missing_dataset_error(name: str, looked: list[Path], stem: str) -> DataError:
    package = SYSTEM_PACKAGES.get(name)
    debian = f", or on Debian: apt-get install {package}" if package else ""
    return DataError(
        f"dataset {name!r} not found: looked for {stem}[.gz] in {', '.join(str(p) for p in looked)}. The runtime "
        f"does not download; get it with `python -m train fit --dataset {name} ...` once, set VAE_DATA_DIR{debian}"
    )


def validation_split(n: int, validation_size: int, seed: int) -> tuple[NDArray[np.int64], NDArray[np.int64]]:
    """Indices (train, validation) of the seeded random split of n training examples: the one split that
    training holds out, that calibration re-creates from model.json, and that the tests use."""
    if validation_size < 0:
        raise DataError(f"validation_size must be >= 0, got {validation_size}")
    if validation_size >= n:
        raise DataError(f"validation_size {validation_size} leaves no training data out of {n} examples")
    order = np.random.default_rng(seed).permutation(n)
    return np.sort(order[validation_size:]), np.sort(order[:validation_size])


TEST_FRACTION = 0.1  # of a source without a test split, held out by training for its test figures
HOLDOUT_SEED = 0  # the held-out test images do not move with the training seed


def holdout_split(n: int, test_fraction: float = TEST_FRACTION, rule: str = "random", seed: int = HOLDOUT_SEED
                  ) -> tuple[NDArray[np.int64], NDArray[np.int64]]:
    """Indices (train, test) of a source without splits: a seeded random test_fraction of the rows ("random":
    image folders, whose sorted order is by class), or its last rows ("last": a .npy file)."""
    if n < 2:
        raise DataError(f"need at least 2 images to hold one out for testing, got {n}")
    n_test = min(n - 1, max(1, int(round(n * test_fraction))))
    if rule == "last":
        return np.arange(n - n_test, dtype=np.int64), np.arange(n - n_test, n, dtype=np.int64)
    if rule != "random":
        raise DataError(f"unknown holdout rule {rule!r}; expected random or last")
    order = np.random.default_rng(seed).permutation(n)
    return np.sort(order[n_test:]), np.sort(order[:n_test])


def training_rows(n: int, training: dict) -> NDArray[np.int64]:
    """The rows of a source that training used as its training set (train + validation): all n for a source
    with a train split, else what its recorded holdout left (model.json training.holdout)."""
    holdout = training.get("holdout") if isinstance(training, dict) else None
    if not isinstance(holdout, dict):
        return np.arange(n, dtype=np.int64)
    if holdout.get("rows") != n:
        raise DataError(f"the source holds {n} images but the model was trained on one of {holdout.get('rows')} "
                        f"(with a held-out test part); these are not the model's training data")
    return holdout_split(n, float(holdout.get("test_fraction", TEST_FRACTION)), str(holdout.get("rule", "random")),
                         int(holdout.get("seed", HOLDOUT_SEED)))[0]
