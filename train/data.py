"""Images for training: IDX files (raw or gzip), .npy / .npz arrays, folders of PNG or JPEG images, and the
named datasets: the source specs of vae_infer.data.sources (a source without a test split has one held out).

A named dataset is looked up, in order, in: the `data_dir` argument, the VAE_DATA_DIR environment
variable, the cache folder (XDG_CACHE_HOME or ~/.cache, then vae-infer/datasets/<name>), and, for
Fashion-MNIST, /usr/share/datasets/fashion-mnist (Debian's package dataset-fashion-mnist). Failing
those it is downloaded from its official mirrors into the cache, each file checked against its MD5.
"""

from __future__ import annotations

import dataclasses
import hashlib
import http.client
import os
import shutil
import tempfile
import urllib.request
import zipfile
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from vae_infer.data.datasets import (  # noqa: F401
    CLASS_NAMES,
    HOLDOUT_SEED,
    TEST_FRACTION,
    cache_dir,
    dataset_dirs,
    find_split_file,
    holdout_split,
    read_idx,
)
from vae_infer.data.image_folder import ImageSource, folder_splits, is_image_file, open_folder
from vae_infer.data.preprocessing import Preprocessing
from vae_infer.data.sources import parse_split
from vae_infer.errors import DataError
from vae_infer.package.manifest import size_problem

SPLIT_FILES = {
    "train_images": "train-images-idx3-ubyte",
    "train_labels": "train-labels-idx1-ubyte",
    "test_images": "t10k-images-idx3-ubyte",
    "test_labels": "t10k-labels-idx1-ubyte",
}


@dataclass(frozen=True)
class NamedDataset:
    mirrors: tuple[str, ...]  # base URLs tried in order; each holds the four .gz files
    md5: dict[str, str]  # of each published .gz file, as the dataset's authors list them
    system_dirs: tuple[str, ...] = ()  # where an operating-system package puts the files
    system_package: str = ""  # the Debian package that installs them there, if any


NAMED_DATASETS = {
    "fashion-mnist": NamedDataset(
        mirrors=(
            "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",
            "https://raw.githubusercontent.com/zalandoresearch/fashion-mnist/master/data/fashion/",
        ),
        md5={
            "train-images-idx3-ubyte.gz": "8d4fb7e6c68d591d4c3dfef9ec88bf0d",
            "train-labels-idx1-ubyte.gz": "25c81989df183df01b3e8a0aad5dffbe",
            "t10k-images-idx3-ubyte.gz": "bef4ecab320f06d8554ea6380940ec79",
            "t10k-labels-idx1-ubyte.gz": "bb300cfdad3c16e7a12a480ee83cd310",
        },
        system_dirs=("/usr/share/datasets/fashion-mnist",),
        system_package="dataset-fashion-mnist",
    ),
    "mnist": NamedDataset(
        mirrors=(
            "https://ossci-datasets.s3.amazonaws.com/mnist/",
            "https://storage.googleapis.com/cvdf-datasets/mnist/",
        ),
        md5={
            "train-images-idx3-ubyte.gz": "f68b3c2dcbeaaa9fbdd348bbdeb94873",
            "train-labels-idx1-ubyte.gz": "d53e105ee54ea40749a09fcbcd1e9432",
            "t10k-images-idx3-ubyte.gz": "9fb629c4189551a2d022fa330f9573f3",
            "t10k-labels-idx1-ubyte.gz": "ec29112dd5afa0611ce80d1b7f02629c",
        },
    ),
}

@dataclass(frozen=True)
class Dataset:
    """Images as uint8 (n, height, width) gray or (n, height, width, 3) RGB; labels as int64 (n,) or None when
    the source has none."""

    name: str
    train_images: np.ndarray
    train_labels: np.ndarray | None
    test_images: np.ndarray
    test_labels: np.ndarray | None
    source: str  # where the files were found, for the run record
    class_names: tuple[str, ...] | None = None  # an image folder's class folders, in label order
    preprocessing: dict | None = None  # how image files became pixels (vae_infer.data.preprocessing), for the package
    holdout: dict | None = None  # how a source without a test split had one held out (datasets.holdout_split)

    @property
    def image_shape(self) -> tuple[int, ...]:
        """(h, w) for gray, (h, w, 3) for RGB."""
        return tuple(self.train_images.shape[1:])


def as_uint8_images(images: np.ndarray, origin: str) -> np.ndarray:
    """Images as uint8 (n, h, w) gray or (n, h, w, 3) RGB: accepts uint8, or floats in [0, 1]; (n, h, w),
    (n, h, w, 1), (n, h, w, 3) channels-last, or (n, 784) for square 28x28."""
    images = np.asarray(images)
    if images.ndim == 2 and images.shape[1] == 28 * 28:
        images = images.reshape(-1, 28, 28)
    if images.ndim == 4 and images.shape[3] == 1:
        images = images[..., 0]
    if not (images.ndim == 3 or (images.ndim == 4 and images.shape[3] == 3)) or images.shape[0] == 0:
        raise DataError(f"{origin}: expected images shaped (n, height, width) or (n, height, width, 3) (RGB, "
                        f"channels last) with n >= 1, got {images.shape}")
    if images.dtype == np.uint8:
        return images
    if np.issubdtype(images.dtype, np.floating):
        if not np.all(np.isfinite(images)):
            raise DataError(f"{origin}: images contain NaN or inf")
        lo, hi = float(images.min()), float(images.max())
        if lo < 0 or hi > 1:
            raise DataError(f"{origin}: float images must lie in [0, 1], found values in [{lo}, {hi}]")
        return np.round(images * 255).astype(np.uint8)
    raise DataError(f"{origin}: expected uint8 or float images, got dtype {images.dtype}")


def _read_idx_folder(folder: Path, name: str) -> Dataset | None:
    found = {key: find_split_file(folder, stem) for key, stem in SPLIT_FILES.items()}
    if found["train_images"] is None or found["test_images"] is None:
        return None
    arrays = {key: (read_idx(p) if p is not None else None) for key, p in found.items()}
    return _checked_dataset(name, arrays, str(folder))


def _checked_dataset(name: str, arrays: dict, source: str) -> Dataset:
    images = {k: as_uint8_images(arrays[k], f"{source} ({k})") for k in ("train_images", "test_images")}
    if images["train_images"].shape[1:] != images["test_images"].shape[1:]:
        raise DataError(
            f"{source}: train images are {images['train_images'].shape[1:]} but test images are "
            f"{images['test_images'].shape[1:]}"
        )
    labels = {}
    for split in ("train", "test"):
        lab = arrays.get(f"{split}_labels")
        if lab is not None:
            lab = np.asarray(lab).astype(np.int64).reshape(-1)
            if len(lab) != len(images[f"{split}_images"]):
                raise DataError(
                    f"{source}: {len(images[f'{split}_images'])} {split} images but {len(lab)} {split} labels"
                )
        labels[split] = lab
    return Dataset(
        name, images["train_images"], labels["train"], images["test_images"], labels["test"], source
    )


def load_array_file(path: Path, test_fraction: float = 0.1) -> Dataset:
    """A .npz with x_train/x_test (y_train/y_test optional), or a .npy of images of which the last
    `test_fraction` becomes the test set."""
    path = Path(path)
    holdout = None
    try:
        if path.suffix == ".npz":
            z = np.load(path, allow_pickle=False)
            if not isinstance(z, np.lib.npyio.NpzFile):
                raise DataError(f"{path}: expected a .npz archive of named arrays, found a single .npy array")
            with z:
                keys = set(z.files)
                if not {"x_train", "x_test"} <= keys:
                    raise DataError(
                        f"{path}: expected arrays named x_train and x_test (and optionally y_train, y_test), "
                        f"found {sorted(keys)}"
                    )
                arrays = {
                    "train_images": z["x_train"], "test_images": z["x_test"],
                    "train_labels": z["y_train"] if "y_train" in keys else None,
                    "test_labels": z["y_test"] if "y_test" in keys else None,
                }
        else:
            images = np.load(path, allow_pickle=False)
            if not isinstance(images, np.ndarray):
                images.close()
                raise DataError(f"{path}: expected a single .npy array, found a .npz archive (name it .npz)")
            if images.ndim == 0 or len(images) < 2:
                raise DataError(f"{path}: need at least 2 images to hold one out for testing, got shape {images.shape}")
            train_idx, test_idx = holdout_split(len(images), test_fraction, rule="last")
            arrays = {"train_images": images[train_idx], "test_images": images[test_idx]}
            holdout = {"rule": "last", "test_fraction": test_fraction, "rows": len(images)}
    except (OSError, ValueError, EOFError, zipfile.BadZipFile, zlib.error) as e:
        raise DataError(f"cannot read {path}: {e}") from e
    ds = _checked_dataset(path.stem, arrays, str(path))
    return dataclasses.replace(ds, holdout=holdout)


def load_image_folder(root: Path, preprocessing: Preprocessing | None = None) -> Dataset:
    """A folder of PNG or JPEG images (vae_infer.data.image_folder): its train/ and test/ folders, or a seeded
    TEST_FRACTION of its images held out for testing. The first image decides gray or RGB (a colour model when
    it has colour), unless preprocessing.to_gray makes every image gray (luma). The image size is checked
    against what a package holds before the rest is read."""
    prep = preprocessing or Preprocessing()
    root = Path(root)
    if folder_splits(root):
        train = _open_checked(root, "train", prep, prep.image_size)
        test = _open_checked(root, "test", prep, prep.image_size or train.row_shape[:2], train.channels)
        train_images, test_images = train.read_all(), test.read_all()
        train_labels, test_labels, holdout = train.labels(), test.labels(), None
        names = train.class_names or test.class_names
    else:
        source = _open_checked(root, None, prep, prep.image_size)
        images, labels = source.read_all(), source.labels()
        train_idx, test_idx = holdout_split(len(images))
        train_images, test_images = images[train_idx], images[test_idx]
        train_labels, test_labels = (None, None) if labels is None else (labels[train_idx], labels[test_idx])
        holdout = {"rule": "random", "test_fraction": TEST_FRACTION, "seed": HOLDOUT_SEED, "rows": len(images)}
        names = source.class_names
    return Dataset(root.name, train_images, train_labels, test_images, test_labels, str(root), names,
                   prep.to_dict(), holdout)


def _open_checked(root: Path, split: str | None, prep: Preprocessing, size, channels: str | None = None
                  ) -> ImageSource:
    """The folder's images: gray with --to-gray, else as the first file is (or `channels`, the train split's)."""
    channels = "gray" if prep.to_gray else channels
    source = open_folder(str(root), root, split, prep, tuple(size) if size else None, channels)
    shape = source.row_shape
    problem = size_problem(int(np.prod(shape)), None, 1)
    if problem:
        raise DataError(f"{source.where}: {'x'.join(map(str, shape))} images: {problem}")
    return source


def download_named(name: str, dest: Path, timeout: float = 30.0) -> Path:
    """Download a named dataset's four files into `dest`, verifying each MD5; returns `dest`.

    Each file is written to a temporary name and renamed only once verified, so an interrupted
    download never leaves a file that looks complete."""
    spec = NAMED_DATASETS[name]
    try:
        dest.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise DataError(f"cannot create the download folder {dest} for {name}: {e}") from e
    for filename, md5 in spec.md5.items():
        target = dest / filename
        if target.is_file() and _md5(target) == md5:
            continue
        failures = []
        for base in spec.mirrors:
            url = base + filename
            try:
                fd, tmp = tempfile.mkstemp(dir=dest, prefix=f".{filename}.")
            except OSError as e:
                raise DataError(f"cannot write into the download folder {dest} for {name}: {e}") from e
            try:
                with os.fdopen(fd, "wb") as out, urllib.request.urlopen(url, timeout=timeout) as response:
                    shutil.copyfileobj(response, out)
                got = _md5(Path(tmp))
                if got != md5:
                    failures.append(f"{url}: MD5 mismatch, got {got}, expected {md5}")
                    continue
                os.replace(tmp, target)
                break
            # URLError and timeouts are OSErrors; a malformed or cut-off HTTP response is an HTTPException
            except (OSError, http.client.HTTPException) as e:
                failures.append(f"{url}: {type(e).__name__}: {e}")
            finally:
                if os.path.exists(tmp):
                    os.unlink(tmp)
        else:
            raise DataError(f"could not download {filename} for {name}: " + "; ".join(failures))
    return dest


def _md5(path: Path) -> str:
    h = hashlib.md5()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def candidate_dirs(name: str, data_dir: str | Path | None = None) -> list[Path]:
    """Where a named dataset is looked for, in order."""
    return dataset_dirs(name, data_dir, NAMED_DATASETS[name].system_dirs)


def load_dataset(name_or_path: str | Path, data_dir: str | Path | None = None, download: bool = True,
                 preprocessing: Preprocessing | None = None) -> Dataset:
    """Load a named dataset ("fashion-mnist", "mnist"), a folder of IDX files or of PNG / JPEG images, or a
    .npy / .npz file. preprocessing: how image files become pixels (image folders only)."""
    key = str(name_or_path)
    _, split = parse_split(key)
    if split is not None:
        raise DataError(f"{key}: training reads both the train and the test split of a source; drop :{split}")
    if key in NAMED_DATASETS:
        looked = candidate_dirs(key, data_dir)
        for folder in looked:
            if folder.is_dir():
                ds = _read_idx_folder(folder, key)
                if ds is not None:
                    return ds
        failure = "downloading was switched off"
        if download:
            try:
                folder = download_named(key, cache_dir() / key)
                ds = _read_idx_folder(folder, key)
                if ds is not None:
                    return ds
            except DataError as e:
                failure = str(e)
        places = ", ".join(str(p) for p in looked)
        package = NAMED_DATASETS[key].system_package
        debian = f", or on Debian run: apt-get install {package}" if package else ""
        raise DataError(
            f"dataset {key!r} not found; looked in {places}; download failed: {failure}. "
            f"Put the four IDX files (train-images-idx3-ubyte.gz, ...) in one of those folders, "
            f"pass data_dir, or set VAE_DATA_DIR{debian}"
        )
    path = Path(key)
    if path.is_dir():
        ds = _read_idx_folder(path, path.name)
        if ds is None and not any(find_split_file(path, stem) for stem in SPLIT_FILES.values()):
            return load_image_folder(path, preprocessing)
        if ds is None:
            raise DataError(
                f"{path}: expected IDX files named {SPLIT_FILES['train_images']}[.gz] and "
                f"{SPLIT_FILES['test_images']}[.gz] (labels optional)"
            )
        return ds
    if path.suffix in (".npy", ".npz") and path.is_file():
        return load_array_file(path)
    if is_image_file(path) and path.is_file():
        raise DataError(f"{path}: one image; training reads a folder of images (put it in a folder with the others)")
    raise DataError(
        f"unknown dataset {key!r}: expected one of {sorted(NAMED_DATASETS)}, a folder of IDX files or of images, "
        f"or an existing .npy / .npz file"
    )
