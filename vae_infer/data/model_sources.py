"""Images for a model from any source spec: what the runtime commands (encode, score, detect, ...) read, and the
held-out images calibration re-creates from what model.json records. Image files are read at the model's size
with the preprocessing its package records (vae_infer.data.preprocessing), as gray or RGB as the model's channels
say; the cost of a whole read is
bounded before any row is read."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..errors import DataError, InputError
from .arrays import MAX_READ_BYTES, read_images
from .datasets import NAMED, training_rows, validation_split
from .image_folder import IMAGE_SUFFIXES
from .preprocessing import Preprocessing
from .rows import AnySource
from .sources import ARRAY_SUFFIXES, open_source, parse_split, spec_splits, split_key

CALIBRATION_SPLITS = ("validation", "train", "test")  # calibrate's --split: validation re-creates training's


def preprocessing_of(manifest) -> Preprocessing:
    """The preprocessing a model package records (model.json `preprocessing`), or the defaults: exact size,
    gray, nothing converted that is not exactly gray."""
    body = getattr(manifest, "preprocessing", None)
    return Preprocessing.from_dict(body) if body else Preprocessing()


def open_for_model(spec: str | Path, manifest, split: str = "test", data_dir: str | Path | None = None) -> AnySource:
    """open_source for a model: image files read at its size with its recorded preprocessing, as gray or RGB
    (the model's channels)."""
    return open_source(spec, split=split, data_dir=data_dir, image_shape=tuple(manifest.image_shape),
                       preprocessing=preprocessing_of(manifest), channels=channels_of(manifest))


def channels_of(manifest) -> str:
    """"rgb" for a colour model, "gray" otherwise: how image files are read for it."""
    return "rgb" if getattr(manifest, "channels", 1) == 3 else "gray"


def images_for_model(spec: str | Path, manifest, split: str = "test", data_dir: str | Path | None = None,
                     probe: bool = False) -> tuple[np.ndarray, AnySource | None]:
    """(images, their source) for a command that reads a whole input: every source kind, the default split
    `split` where the source has splits. A plain .npy or a one-array .npz goes through vae_infer.data.arrays (its
    checks and messages); the rest through open_source. The cost is bounded before any row is read.
    probe: only check the spec (its suffix), read nothing and return (an empty array, None)."""
    text, explicit = parse_split(spec)
    file, key = split_key(text)
    suffix = file.suffix.lower()
    known = (*ARRAY_SUFFIXES, ".parquet", *IMAGE_SUFFIXES, ".gz", "")
    if text not in NAMED and not file.is_dir() and suffix not in known and "idx" not in suffix:
        raise DataError(f"{file}: expected images in a .npy, .npz, .parquet, .png or .jpg file, an IDX file, a "
                        f"folder or a data set name ({', '.join(NAMED)}); found suffix {suffix!r}")
    if probe:
        return np.empty((0,)), None
    if suffix == ".npy" or (suffix == ".npz" and not spec_splits(text) and not explicit):
        return read_images(text, tuple(manifest.pixel_shape)), None
    source = open_for_model(spec, manifest, split, data_dir)
    need = len(source) * int(np.prod(source.row_shape, dtype=np.int64)) * source.dtype.itemsize
    if need > MAX_READ_BYTES:
        raise DataError(f"{source.where}: {len(source)} images take {need / 2**30:.1f} GiB, more than a command "
                        f"reads at once ({MAX_READ_BYTES >> 30} GiB); use `vae-infer batch`, or a smaller part")
    if len(source) == 0:
        raise DataError(f"{source.where}: holds no images (0 rows)")
    return source.read_all(), source


# -- calibration data: the validation split training held out ---------------------------------------------


def validation_indices(n: int, training: dict) -> np.ndarray:
    """The indices of the validation split that `python -m train fit` held out of training
    (vae_infer.data.datasets.validation_split with the config recorded in model.json)."""
    config = training.get("config") if isinstance(training, dict) else None
    if not isinstance(config, dict) or "validation_size" not in config or "seed" not in config:
        raise DataError("model.json records no training configuration, so its validation split is unknown; "
                        "use --split test, or pass held-out images as a .npy/.npz file")
    rows = training_rows(n, training)  # a source without splits: what training's held-out test part left
    size, seed, limit = int(config["validation_size"]), int(config["seed"]), int(config.get("train_limit") or 0)
    used = min(len(rows), limit) if limit else len(rows)
    train_n, validation_n = training.get("train_examples"), training.get("validation_examples")
    if train_n is not None and validation_n is not None and train_n + validation_n != used:
        raise DataError(f"the data holds {used} training images but the model was trained on "
                        f"{train_n + validation_n} (train + validation); these are not the model's training data")
    if size < 1:
        raise DataError("the model was trained on all its training images (validation_size 0); use --split test "
                        "or pass held-out images as a .npy/.npz file")
    return rows[validation_split(used, size, seed)[1]]


def _trained_on(spec: str, training: dict) -> bool:
    """Whether spec names the source without splits that training read (and held a test part out of)."""
    if not isinstance(training, dict) or not isinstance(training.get("holdout"), dict):
        return False
    recorded = training.get("data_source")
    return isinstance(recorded, str) and Path(recorded).resolve() == Path(spec).resolve()


def calibration_images(model, data: str, split: str | None, data_dir: Path | None) -> tuple[np.ndarray, str]:
    """(images, a description of them) for --data, any source spec. Where the source has splits (or is the
    source without splits that training read), --split (or DATA:train, DATA:test) picks the validation split
    training held out (the default), the training or the test set; any other source is used whole."""
    base, explicit = parse_split(data)
    if explicit and split and explicit != split:
        raise InputError(f"--split {split} and {data} name different splits; give one")
    split = split or explicit
    training = model.manifest.training
    has_splits = bool(spec_splits(base, data_dir))
    holdout = not has_splits and _trained_on(base, training)
    if not has_splits and not holdout:
        if split is not None:
            raise InputError(f"--split applies to IDX datasets and the other sources with train and test splits "
                             f"(.npz files with x_train and x_test, image folders with train/ and test/); {data} "
                             f"is used whole (drop --split)")
        images, _ = images_for_model(data, model.manifest, data_dir=data_dir)
        return images, f"{data} ({len(images)} images)"
    split = split or "validation"
    read = "test" if split == "test" and not holdout else "train"
    images, source = images_for_model(base, model.manifest, split=read, data_dir=data_dir)
    where = source.where if source is not None else base
    if holdout and split != "validation":
        rows = training_rows(len(images), training)
        if split == "test":
            rows = np.setdiff1d(np.arange(len(images)), rows)
        return images[rows], f"{where} ({split} part held out by training, {len(rows)} images)"
    if split == "validation":
        idx = validation_indices(len(images), training)
        cfg = training["config"]
        return images[idx], (f"{where}: the validation split ({len(idx)} images held out of training, "
                             f"validation_size {cfg['validation_size']}, seed {cfg['seed']})")
    return images, f"{where} ({split} set, {len(images)} images)"
