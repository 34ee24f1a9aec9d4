"""Image sources read by row ranges: the one source spec, and the one way every part of the project reads
images from disk.

    source = open_source("fashion-mnist", split="test")     # or a file, a folder, FILE.npz:KEY, FILE.parquet:COL
    len(source), source.row_shape, source.dtype             # 10000, (28, 28), uint8
    block = source.read(0, 4096)                            # (4096, 28, 28), the stored dtype, not validated

The spec (what --dataset, --data, INPUT and batch inputs accept): a named set (fashion-mnist, mnist), a folder
of IDX files, an IDX file, a .npy file, FILE.npz (one array, FILE.npz:KEY, or x_train/x_test with optional
y_train/y_test labels), FILE.parquet:COLUMN, a PNG or JPEG file, or a folder of them (vae_infer.data.image_folder:
class subfolders are labels, train/ and test/ are splits). Where a source has splits (named sets, IDX folders,
.npz files with x_train and x_test, image folders with train/ and test/), the command picks the default (training
and the latent index: train; calibration: the validation part of train; everything else: test) and
SOURCE:train or SOURCE:test overrides it. A source without splits is read whole.

A source is a reader, not an array: `.npy` files, raw IDX files and the uncompressed members of `.npz`
files are memory-mapped, so a file larger than memory is read one range at a time (batch jobs split one big
file into many ranges). Gzip-compressed IDX files and compressed `.npz` members cannot be read by range and
are decompressed whole, once. What `read` returns is the stored data; the model validates it (dtype, shape,
range) when it encodes it. Every failure is a DataError naming the file and what was expected."""

from __future__ import annotations

import zipfile
from pathlib import Path

import numpy as np

from ..errors import DataError
from .datasets import (
    IMAGE_FILES,
    LABEL_FILES,
    NAMED,
    dataset_dirs,
    find_split_file,
    idx_header,
    missing_dataset_error,
    read_idx,
)
from .image_folder import ImageSource, folder_splits, is_image_file, open_folder
from .preprocessing import Preprocessing
from .rows import AnySource, Source

ARRAY_SUFFIXES = (".npy", ".npz")
SPLITS = tuple(IMAGE_FILES)


# -- opening a source by what the user typed ------------------------------------------------------------------


def split_key(spec: str | Path) -> tuple[Path, str | None]:
    """`file.npz:key` -> (Path("file.npz"), "key"); `file.parquet:column` likewise; anything else -> (path, None)."""
    text = str(spec)
    if not Path(text).exists():
        head, sep, key = text.rpartition(":")
        if sep and key and head.lower().endswith((".npz", ".parquet")):
            return Path(head), key
    return Path(text), None


def parse_split(spec: str | Path) -> tuple[str, str | None]:
    """`SOURCE:train` / `SOURCE:test` -> (SOURCE, split); anything else (a path that exists as typed, a
    FILE.parquet:COLUMN) -> (spec, None)."""
    text = str(spec)
    head, sep, tail = text.rpartition(":")
    if sep and head and tail in SPLITS and not Path(text).exists() and not head.lower().endswith(".parquet"):
        return head, tail
    return text, None


def spec_splits(spec: str | Path, data_dir: str | Path | None = None) -> tuple[str, ...]:
    """The splits a source has: ("train", "test") for named sets, IDX folders, .npz files with x_train and
    x_test, and image folders with train/ and test/; () for every other source (it is read whole)."""
    text, _ = parse_split(spec)
    if text in NAMED:
        return SPLITS
    file, key = split_key(text)
    if file.is_dir():
        if any(find_split_file(file, stem) for stem in IMAGE_FILES.values()):
            return SPLITS
        return folder_splits(file)
    if key is None and file.suffix.lower() == ".npz" and file.is_file():
        try:
            members = _npz_members(file)
        except DataError:
            return ()  # a damaged archive: its reader says what is wrong with it
        return SPLITS if all(f"x_{s}" in members for s in SPLITS) else ()
    return ()


def open_source(spec: str | Path, split: str = "test", data_dir: str | Path | None = None,
                image_shape: tuple[int, ...] | None = None, preprocessing: Preprocessing | None = None,
                channels: str | None = None) -> AnySource:
    """A source of images from what a user typed (the spec: see the module's docstring).

    split: the command's default split ("train" or "test") for sources that have splits; `SOURCE:split` in the
    spec overrides it, and is refused for a source without splits. image_shape, preprocessing, channels: how
    image files are read (a model's size, its recorded preprocessing, "gray" or "rgb"; None: as the first
    file is)."""
    if split not in SPLITS:
        raise DataError(f"split must be one of {', '.join(SPLITS)}, got {split!r}")
    text, explicit = parse_split(spec)
    split = explicit or split
    if text in NAMED:
        looked = dataset_dirs(text, data_dir)
        for folder in looked:
            source = _idx_folder(folder, split, name=text)
            if source is not None:
                return source
        raise missing_dataset_error(text, looked, IMAGE_FILES[split])
    file, key = split_key(text)
    if file.is_dir():
        source = _idx_folder(file, split, name=text)
        if source is not None:
            return source
        if any(find_split_file(file, stem) for stem in IMAGE_FILES.values()):
            raise DataError(f"{file}: holds IDX files but no {IMAGE_FILES[split]}[.gz] for the {split} split")
        size = preprocessing.image_size if preprocessing and preprocessing.image_size else _hw(image_shape)
        return open_folder(text, file, explicit if explicit else _default_split(file, split), preprocessing, size,
                           channels)
    if not file.exists():
        raise DataError(f"{file}: no such file or folder; expected a data set name ({', '.join(NAMED)}), a folder "
                        f"of IDX files or of images, an IDX file, a .npy, .npz or .parquet file, or a PNG or JPEG "
                        f"image")
    if not file.is_file():
        raise DataError(f"{file}: not a regular file (a device, FIFO or socket cannot be read as images)")
    suffix = file.suffix.lower()
    if suffix == ".parquet":
        from .parquet import open_parquet  # pyarrow: the `parquet` extra

        return open_parquet(text, file, key)
    if key is not None and suffix != ".npz":
        raise DataError(f"{text}: a :KEY applies to .npz (or .parquet) files only")
    if suffix == ".npz":
        return _npz_source(text, file, key, split, explicit)
    if explicit:
        raise DataError(f"{file}: one array or image, without train and test splits; drop :{explicit}")
    if suffix == ".npy":
        return Source(text, _memmap_npy(file), where=str(file))
    if is_image_file(file):
        size = preprocessing.image_size if preprocessing and preprocessing.image_size else _hw(image_shape)
        return ImageSource(text, [file], None, None, preprocessing, size, channels)
    return Source(text, _memmap_idx(file), where=str(file))  # an IDX file, whatever its name


def _default_split(folder: Path, split: str) -> str | None:
    return split if folder_splits(folder) else None


def _npz_members(file: Path) -> dict[str, zipfile.ZipInfo]:
    try:
        with zipfile.ZipFile(file) as zf:
            return {n[:-4]: zf.getinfo(n) for n in zf.namelist() if n.endswith(".npy")}
    except (zipfile.BadZipFile, OSError, EOFError) as e:
        raise DataError(f"{file}: not a readable .npz archive (corrupt or truncated): {e}") from e


def _idx_folder(folder: Path, split: str, name: str) -> Source | None:
    path = find_split_file(folder, IMAGE_FILES[split]) if folder.is_dir() else None
    if path is None:
        return None
    images = _memmap_idx(path)
    if images.ndim != 3:
        raise DataError(f"{path}: expected IDX images (n, height, width), found shape {images.shape}")
    label_path = find_split_file(folder, LABEL_FILES[split])
    labels = None
    if label_path is not None:
        labels = read_idx(label_path).astype(np.int64).reshape(-1)
        if len(labels) != len(images):
            raise DataError(f"{label_path}: {len(labels)} labels for {len(images)} images in {path}")
    return Source(name, images, labels, where=str(path))


def _memmap_idx(path: Path) -> np.ndarray:
    """A raw IDX file memory-mapped; a gzip-compressed one decompressed whole (gzip cannot seek)."""
    with open(path, "rb") as f:
        head = f.read(4 + 4 * 255)
    if head[:2] == b"\x1f\x8b":
        return read_idx(path)
    dtype, shape, offset = idx_header(head, path)
    expected = offset + int(np.prod(shape)) * dtype.itemsize
    size = path.stat().st_size
    if size != expected:
        raise DataError(f"{path}: header says shape {shape} ({expected} bytes with the header) but the file holds "
                        f"{size} bytes; the file is truncated or corrupt")
    if np.prod(shape) == 0:
        return np.zeros(shape, dtype)
    return np.memmap(path, dtype=dtype, mode="r", offset=offset, shape=shape)


def _memmap_npy(file: Path) -> np.ndarray:
    with open(file, "rb") as f:
        if f.read(6) != b"\x93NUMPY":  # else numpy would call any garbage "pickled data"
            raise DataError(f"{file}: not a .npy file (it does not start with numpy's magic bytes); expected a "
                            f"numeric array as np.save writes")
    try:
        arr = np.load(file, mmap_mode="r", allow_pickle=False)
    except ValueError as e:
        if "pickle" in str(e).lower() or "object" in str(e).lower():
            raise DataError(f"{file}: expected a numeric .npy array of images; the file holds Python objects "
                            f"(pickled data), which are never loaded") from e
        raise DataError(f"{file}: not a readable .npy file (bad header or truncated data): {e}") from e
    except (OSError, EOFError) as e:
        raise DataError(f"{file}: cannot read it as a .npy file: {e}") from e
    if not isinstance(arr, np.ndarray):
        raise DataError(f"{file}: expected a single .npy array, found an archive (name it .npz)")
    return arr


def _npz_source(text: str, file: Path, key: str | None, split: str, explicit: str | None = None) -> Source:
    members = _npz_members(file)
    if key is None:
        if f"x_{split}" in members:
            key = f"x_{split}"
        elif explicit and explicit in members:
            key = explicit  # FILE.npz:train names an array called "train" when there is no x_train
        elif explicit:
            raise DataError(f"{file}: no x_{explicit} array for the {explicit} split; it holds "
                            f"{', '.join(members) or 'no arrays'}")
        elif len(members) == 1:
            key = next(iter(members))
        else:
            found = ", ".join(members) or "no arrays"
            raise DataError(f"{file}: expected one array, or x_{split}, or a key as {file}:KEY; it holds {found}")
    if key not in members:
        raise DataError(f"{file}: no array named {key!r}; it holds {', '.join(members) or 'no arrays'}")
    data = _npz_member(file, members[key])
    labels = None
    for label_key in (f"y_{split}" if key.startswith("x_") else None, "labels"):
        if label_key and label_key in members:
            lab = _npz_member(file, members[label_key])
            if lab.ndim == 1 and len(lab) == len(data) and np.issubdtype(lab.dtype, np.integer):
                labels = np.asarray(lab, np.int64)
            break
    return Source(text, data, labels, where=f"{file}:{key}")


def _npz_member(file: Path, info: zipfile.ZipInfo) -> np.ndarray:
    """One array of an .npz: memory-mapped when the member is stored uncompressed (np.savez), else read."""
    try:
        with open(file, "rb") as f:
            if info.compress_type == zipfile.ZIP_STORED:
                f.seek(info.header_offset)
                local = f.read(30)
                if local[:4] != b"PK\x03\x04":
                    raise DataError(f"{file}: corrupt .npz archive (bad local header for {info.filename})")
                name_len, extra_len = int.from_bytes(local[26:28], "little"), int.from_bytes(local[28:30], "little")
                start = info.header_offset + 30 + name_len + extra_len
                f.seek(start)
                version = np.lib.format.read_magic(f)
                if version not in ((1, 0), (2, 0)):
                    return _read_member(file, info)
                read_header = (np.lib.format.read_array_header_1_0 if version == (1, 0)
                               else np.lib.format.read_array_header_2_0)
                shape, fortran, dtype = read_header(f)
                if dtype.hasobject:
                    raise DataError(f"{file}:{info.filename[:-4]} holds Python objects (pickled data), which are "
                                    f"never loaded; expected numeric images")
                offset = f.tell()
                if offset - start + int(np.prod(shape)) * dtype.itemsize > info.file_size:
                    raise DataError(f"{file}:{info.filename[:-4]}: the array is truncated")
                if int(np.prod(shape)) == 0:
                    return np.zeros(shape, dtype)
                return np.memmap(file, dtype=dtype, mode="r", offset=offset, shape=shape,
                                 order="F" if fortran else "C")
        return _read_member(file, info)
    except DataError:
        raise
    except (ValueError, OSError, EOFError, zipfile.BadZipFile) as e:
        # numpy's own words for object arrays urge unsafe loading: not repeated
        reason = "it holds Python objects" if "pickle" in str(e).lower() else str(e)
        raise DataError(f"{file}:{info.filename[:-4]}: cannot read the array (corrupt or truncated, or it holds "
                        f"pickled objects, which are never loaded): {reason}") from e


def _read_member(file: Path, info: zipfile.ZipInfo) -> np.ndarray:
    with zipfile.ZipFile(file) as zf, zf.open(info) as member:
        return np.lib.format.read_array(member, allow_pickle=False)


def load_images(spec: str | Path, split: str = "test", data_dir: str | Path | None = None
                ) -> tuple[np.ndarray, str]:
    """(images, where they came from) for a whole, small set: open_source read whole.
    Images keep their stored dtype and shape; the model validates them."""
    source = open_source(spec, split=split, data_dir=data_dir)
    return source.read_all(), source.where


# -- labels -----------------------------------------------------------------------------------------------------


def class_names(source: AnySource | None, spec: str | Path) -> tuple[str, ...] | None:
    """The class names of a source's labels: an image folder's class folders, a named set's classes."""
    from .datasets import CLASS_NAMES

    names = getattr(source, "class_names", None)
    return tuple(names) if names else CLASS_NAMES.get(parse_split(spec)[0])


SPEC_HELP = ("fashion-mnist or mnist (IDX files found in $VAE_DATA_DIR, ~/.cache/vae-infer/datasets/NAME or "
             "/usr/share/datasets/NAME; nothing is downloaded), a folder of IDX files or of PNG/JPEG images (class "
             "subfolders are labels, train/ and test/ are splits), an IDX, .npy, PNG or JPEG file, FILE.npz (one "
             "array, FILE.npz:KEY, or x_train/x_test) or FILE.parquet:COLUMN; SOURCE:train or SOURCE:test picks "
             "a split")


def _hw(image_shape: tuple[int, ...] | None) -> tuple[int, int] | None:
    """(height, width) of an image shape, (h, w) or (h, w, c): the size image files are read at."""
    return None if image_shape is None else (int(image_shape[0]), int(image_shape[1]))
