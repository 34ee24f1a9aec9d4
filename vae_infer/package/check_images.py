"""The check images of a model package: a few validation images stored in the package at calibration time, so
that a self-check (`vae-infer export-c --check`) runs on the model's own kind of data, whatever its image size,
with no data set installed.

    vae-infer calibrate models/m --data photos/          # also stores 50 of its images as check_images.npy
    vae-infer calibrate models/m --data photos/ --no-check-images    # stores none (and drops earlier ones)

Stored as `check_images.npy` (no pickles): (count, features) rows, uint8 as the source gave them (divided by the
manifest's input_scale) or float32 in [0, 1]; the `check_images` section of model.json: {"file", "count",
"dtype", "source", "bytes"}, the file listed with its sha256. The package loader checks the file: its sha256,
shape, dtype, range and finiteness. The images are real data from the calibration set: a package shared outside
the place its data may go should be calibrated with --no-check-images. Like calibration and the latent index they
belong to the weights they were chosen for: exporting new weights over a package refuses to drop them without
--drop-extras."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

from ..errors import ModelPackageError

CHECK_IMAGES_FILE = "check_images.npy"
DEFAULT_CHECK_IMAGES = 50  # images stored: enough for export-c --check (50 by default), a few MB at most
MAX_CHECK_IMAGES = 1000  # the most a package may hold (a bound on what the loader reads and checks)
STORED_DTYPES = ("uint8", "float32")


def choose_check_images(model, images: object, count: int = DEFAULT_CHECK_IMAGES, seed: int = 0) -> NDArray:
    """A seeded random sample of `count` of the images (all when fewer), as validated rows (count, features):
    uint8 kept as uint8, anything else as float32 in [0, 1]."""
    arr = np.asarray(images)
    n = len(arr)
    if not 1 <= count <= MAX_CHECK_IMAGES:
        raise ModelPackageError(f"check images: expected 1..{MAX_CHECK_IMAGES} images, asked for {count}")
    pick = np.sort(np.random.default_rng(seed).choice(n, count, replace=False)) if n > count else np.arange(n)
    rows = model.check_images(arr[pick])
    return rows if rows.dtype == np.uint8 else model.as_images(rows)


def check_images_files(rows: NDArray, source: str | None) -> tuple[dict[str, bytes], dict[str, Any]]:
    """The file and the model.json section that store rows in a package (for update_package)."""
    buf = io.BytesIO()
    np.save(buf, np.ascontiguousarray(rows), allow_pickle=False)
    data = buf.getvalue()
    section = {"file": CHECK_IMAGES_FILE, "count": int(len(rows)), "dtype": str(rows.dtype), "source": source,
               "bytes": len(data)}
    return {CHECK_IMAGES_FILE: data}, section


def save_check_images(package_dir: str | Path, rows: NDArray, source: str | None):
    """Store rows as the package's check images (atomically, with their sha256); returns the new manifest."""
    from .files import update_package

    files, section = check_images_files(rows, source)
    return update_package(package_dir, files, check_images=section)


def drop_check_images(package_dir: str | Path):
    """Remove the package's check images (file and section), atomically; returns the new manifest."""
    from .files import read_manifest, update_package

    section = read_manifest(package_dir).check_images
    if not section:
        return read_manifest(package_dir)
    return update_package(package_dir, {}, drop=(str(section["file"]),), check_images=None)


def read_check_images(package_dir: str | Path) -> NDArray | None:
    """The check images of the package in package_dir (sha256-checked and validated), or None when it has none."""
    from .files import read_manifest, read_verified

    manifest = read_manifest(package_dir)
    section = manifest.check_images
    if not section:
        return None
    name = section.get("file")
    if not isinstance(name, str) or name not in manifest.files:
        raise ModelPackageError(f"{package_dir}: the check_images section names the file {name!r}, which "
                                f"model.json does not list")
    data = read_verified(package_dir, manifest, name)
    return parse_check_images(data, section, manifest.features, str(Path(package_dir) / name))


def parse_check_images(data: bytes, section: dict, features: int, origin: str) -> NDArray:
    """The rows of a (verified) check_images.npy, checked against its section and the model's features per image:
    shape, dtype, finiteness and range. The package loader calls it, so a bad file is refused when it loads."""
    fix = "calibrate again (vae-infer calibrate MODEL --data DATA) or with --no-check-images to drop them"
    count, dtype = section.get("count"), section.get("dtype")
    if not isinstance(count, int) or isinstance(count, bool) or not 1 <= count <= MAX_CHECK_IMAGES \
            or dtype not in STORED_DTYPES:
        raise ModelPackageError(f"{origin}: model.json's check_images section says count={count!r}, "
                                f"dtype={dtype!r}; expected a count in 1..{MAX_CHECK_IMAGES} and a dtype in "
                                f"{STORED_DTYPES}; {fix}")
    try:
        rows = np.load(io.BytesIO(data), allow_pickle=False)
    except Exception as e:  # numpy raises several types for a corrupt or pickled file
        raise ModelPackageError(f"{origin}: expected a numpy .npy of images, cannot read it: {e}; {fix}") from e
    if not isinstance(rows, np.ndarray) or rows.dtype != np.dtype(dtype) or rows.shape != (count, features):
        raise ModelPackageError(f"{origin}: expected {dtype} ({count}, {features}) images, found "
                                f"{getattr(rows, 'dtype', type(rows).__name__)} {getattr(rows, 'shape', '')}; {fix}")
    if rows.dtype == np.float32 and not (np.isfinite(rows).all() and rows.min() >= 0 and rows.max() <= 1):
        raise ModelPackageError(f"{origin}: the float32 images must be finite and within [0, 1], found values "
                                f"from {np.nanmin(rows):.3g} to {np.nanmax(rows):.3g} (NaN or inf: "
                                f"{int((~np.isfinite(rows)).sum())}); {fix}")
    return rows
