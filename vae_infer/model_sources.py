"""Images for a model from any source spec: what the runtime commands (encode, score, detect, ...) read. Image
files are read at the model's size with the preprocessing its package records (vae_infer.preprocessing), as
gray; the cost of a whole read is bounded before any row is read."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from .arrays import MAX_READ_BYTES, read_images
from .datasets import NAMED
from .errors import DataError
from .image_folder import IMAGE_SUFFIXES
from .image_source import Source
from .preprocessing import Preprocessing
from .sources import ARRAY_SUFFIXES, open_source, parse_split, spec_splits, split_key


def preprocessing_of(manifest) -> Preprocessing:
    """The preprocessing a model package records (model.json `preprocessing`), or the defaults: exact size,
    gray, nothing converted that is not exactly gray."""
    body = getattr(manifest, "preprocessing", None)
    return Preprocessing.from_dict(body) if body else Preprocessing()


def open_for_model(spec: str | Path, manifest, split: str = "test", data_dir: str | Path | None = None) -> Source:
    """open_source for a model: image files read at its size with its recorded preprocessing, as gray."""
    return open_source(spec, split=split, data_dir=data_dir, image_shape=tuple(manifest.image_shape),
                       preprocessing=preprocessing_of(manifest), channels="gray")


def images_for_model(spec: str | Path, manifest, split: str = "test", data_dir: str | Path | None = None
                     ) -> tuple[np.ndarray, Source | None]:
    """(images, their source) for a command that reads a whole input: every source kind, the default split
    `split` where the source has splits. A plain .npy or a one-array .npz goes through vae_infer.arrays (its
    checks and messages); the rest through open_source. The cost is bounded before any row is read."""
    text, explicit = parse_split(spec)
    file, key = split_key(text)
    suffix = file.suffix.lower()
    known = (*ARRAY_SUFFIXES, ".parquet", *IMAGE_SUFFIXES, ".gz", "")
    if text not in NAMED and not file.is_dir() and suffix not in known and "idx" not in suffix:
        raise DataError(f"{file}: expected images in a .npy, .npz, .parquet, .png or .jpg file, an IDX file, a "
                        f"folder or a data set name ({', '.join(NAMED)}); found suffix {suffix!r}")
    if suffix == ".npy" or (suffix == ".npz" and not spec_splits(text) and not explicit):
        return read_images(text, tuple(manifest.image_shape)), None
    source = open_for_model(spec, manifest, split, data_dir)
    need = len(source) * int(np.prod(source.row_shape, dtype=np.int64)) * source.dtype.itemsize
    if need > MAX_READ_BYTES:
        raise DataError(f"{source.where}: {len(source)} images take {need / 2**30:.1f} GiB, more than a command "
                        f"reads at once ({MAX_READ_BYTES >> 30} GiB); use `vae-infer batch`, or a smaller part")
    if len(source) == 0:
        raise DataError(f"{source.where}: holds no images (0 rows)")
    return source.read_all(), source
