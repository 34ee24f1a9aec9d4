"""Folders of PNG and JPEG images as sources: torchvision's ImageFolder layout, read one file per row.

    photos/                         photos/                      photos/
      a.png  b.png ...                cat/ 001.png ...             train/ cat/ ...  dog/ ...
      (no labels)                     dog/ x/ 002.jpg ...          test/  cat/ ...  dog/ ...
                                      (labels: sorted class names) (splits: SOURCE:train, SOURCE:test)

Files are found recursively under each class folder and taken in sorted order (classes by name, then paths);
names starting with "." are skipped (.DS_Store, .ipynb_checkpoints). Anything else is refused, naming it:
other files, links to folders, an empty class folder, images beside class folders, a class name that is not
valid Unicode or is longer than MAX_CLASS_NAME characters. A folder is never read whole to learn its shape:
the first image decides it, and each image is checked against it when it is read (vae_infer.data.preprocessing)."""

from __future__ import annotations

import functools
import hashlib
import os
from pathlib import Path

import numpy as np
from numpy.typing import NDArray

from ..errors import DataError
from .preprocessing import Preprocessing, read_image_file
from .rows import Source

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")
SPLIT_FOLDERS = ("train", "test")
MAX_FILES = 1 << 24  # files listed in one folder tree: bounds the listing before any image is read
MAX_CLASS_NAME = 256  # characters of a class name (the package name rule: valid Unicode, at most 256 characters)
PIN_BLOCK = 1 << 20


def is_image_file(path: Path) -> bool:
    return path.suffix.lower() in IMAGE_SUFFIXES


def folder_splits(root: Path) -> tuple[str, ...]:
    """("train", "test") when root holds exactly the folders train/ and test/ (and no images), else ()."""
    names = {e.name for e in _entries(root)}
    if not set(SPLIT_FOLDERS) <= names:
        return ()
    extra = sorted(names - set(SPLIT_FOLDERS))
    if extra:
        raise DataError(f"{root}: holds train/ and test/ and also {', '.join(extra[:4])}; expected only the two "
                        f"split folders (move the rest out, or name one split folder as the source)")
    return SPLIT_FOLDERS


def _entries(folder: Path) -> list[os.DirEntry]:
    try:
        with os.scandir(folder) as it:
            return sorted((e for e in it if not e.name.startswith(".")), key=lambda e: e.name)
    except OSError as e:
        raise DataError(f"{folder}: cannot list the folder: {e.strerror or e}") from e


def check_class_name(name: str, folder: Path) -> str:
    """A class name from a folder name: valid Unicode (a name that is not UTF-8 is refused, not mangled), at most
    MAX_CLASS_NAME characters."""
    try:
        name.encode("utf-8")
    except UnicodeEncodeError:
        raise DataError(f"{folder}: the class folder name {name!r} is not valid UTF-8; rename it") from None
    if len(name) > MAX_CLASS_NAME:
        raise DataError(f"{folder}: the class folder name has {len(name)} characters; class names have at most "
                        f"{MAX_CLASS_NAME}: rename it")
    return name


def class_folders(root: Path) -> list[str]:
    """The class names under root (its folders), sorted; [] when root holds its images directly."""
    entries = _entries(root)
    dirs = [e for e in entries if e.is_dir(follow_symlinks=False)]
    links = [e for e in entries if e.is_symlink() and e.is_dir()]
    if links:
        raise DataError(f"{links[0].path}: a link to a folder, which is not followed; expected class folders")
    files = [e for e in entries if not e.is_dir()]
    if dirs and files:
        raise DataError(f"{root}: holds both files ({files[0].name}) and class folders ({dirs[0].name}/); put "
                        f"every image in a class folder, or use a folder of images only")
    return [check_class_name(e.name, root / e.name) for e in dirs]


def list_images(root: Path, classes: list[str] | None = None) -> tuple[list[Path], NDArray[np.int64] | None]:
    """(sorted image files, labels or None) of one folder. classes: the class names labels index (the sorted
    union over both split folders, so train and test share them); None: the folder's own."""
    found = class_folders(root)
    if not found:
        files = _walk_files(root, flat=True)
        if not files:
            raise DataError(f"{root}: no PNG or JPEG images ({', '.join(IMAGE_SUFFIXES)}) found; expected a folder "
                            f"of images, or of class folders holding them")
        return files, None
    classes = classes or found
    files, labels = [], []
    for name in found:
        class_files = _walk_files(root / name, flat=False)
        if not class_files:
            raise DataError(f"{root / name}: an empty class folder (no PNG or JPEG images); add images or remove "
                            f"the folder")
        files += class_files
        labels += [classes.index(name)] * len(class_files)
        if len(files) > MAX_FILES:
            raise DataError(f"{root}: more than {MAX_FILES:,} files; split the data into several sources")
    return files, np.asarray(labels, np.int64)


def _walk_files(folder: Path, flat: bool) -> list[Path]:
    out: list[Path] = []
    for dirpath, dirnames, filenames in os.walk(folder, onerror=_walk_error):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        for d in dirnames:
            if os.path.islink(os.path.join(dirpath, d)):
                raise DataError(f"{os.path.join(dirpath, d)}: a link to a folder, which is not followed; move the "
                                f"images into the folder")
        for name in filenames:
            if name.startswith("."):
                continue
            path = Path(dirpath) / name
            if not is_image_file(path):
                raise DataError(f"{path}: not a PNG or JPEG file ({', '.join(IMAGE_SUFFIXES)}); an image folder "
                                f"holds images only: move it out (names starting with '.' are skipped)")
            if not path.is_file():  # a FIFO would block the reader; a device never ends
                raise DataError(f"{path}: not a regular file (a FIFO, device or broken link); expected an image")
            out.append(path)
            if len(out) > MAX_FILES:
                raise DataError(f"{folder}: more than {MAX_FILES:,} files; split the data into several sources")
        if flat:
            break
    return sorted(out, key=lambda p: p.relative_to(folder).as_posix())


def _walk_error(e: OSError) -> None:
    raise DataError(f"{e.filename}: cannot list the folder: {e.strerror or e}") from e


def open_folder(name: str, root: Path, split: str | None, prep: Preprocessing | None,
                size: tuple[int, int] | None, channels: str | None) -> ImageSource:
    """The images of root (or of root/split when it has split folders) as a source."""
    splits = folder_splits(root)
    if splits and split is None:
        raise DataError(f"{root}: has train/ and test/ folders; name one as {name}:train or {name}:test")
    if split is not None and not splits:
        raise DataError(f"{root}: has no train/ and test/ folders, so no {split} split; drop :{split}")
    folder = root / split if split else root
    classes = None
    if splits:
        classes = sorted(set(class_folders(root / "train")) | set(class_folders(root / "test"))) or None
    files, labels = list_images(folder, classes)
    names = tuple(classes or class_folders(folder)) or None
    return ImageSource(name, files, labels, names, prep, size, channels, where=str(folder))


class ImageSource(Source):
    """Image files, one row per file, read when asked for: uint8 rows (h, w) or (h, w, 3). The first file sets
    the size (unless the preprocessing resizes) and, without a model to say, the channels."""

    def __init__(self, name: str, files: list[Path], labels: NDArray[np.int64] | None,
                 class_names: tuple[str, ...] | None, prep: Preprocessing | None, size: tuple[int, int] | None,
                 channels: str | None, where: str | None = None) -> None:
        self.name, self.where = name, where or str(files[0])
        self._files, self._labels, self.class_names = list(files), labels, class_names
        self.preprocessing = prep or Preprocessing()
        first = read_image_file(self._files[0], self.preprocessing, size, channels)
        self._size = first.shape[:2]
        self.channels = channels or ("rgb" if first.ndim == 3 else "gray")
        self._row_shape = tuple(first.shape)  # (h, w) gray or (h, w, 3) rgb

    @property
    def files(self) -> list[Path]:
        return list(self._files)

    def __len__(self) -> int:
        return len(self._files)

    @property
    def row_shape(self) -> tuple[int, ...]:
        return self._row_shape

    @property
    def dtype(self) -> np.dtype:
        return np.dtype(np.uint8)

    def read(self, start: int, stop: int) -> np.ndarray:
        if not (isinstance(start, (int, np.integer)) and isinstance(stop, (int, np.integer))
                and 0 <= start <= stop <= len(self)):
            raise DataError(f"{self.where}: rows [{start}, {stop}) are outside the folder's {len(self)} images")
        out = np.empty((stop - start, *self._row_shape), np.uint8)
        for i, file in enumerate(self._files[start:stop]):
            out[i] = read_image_file(file, self.preprocessing, self._size, self.channels)
        return out

    def read_rows(self, rows: NDArray[np.int64]) -> np.ndarray:
        """The images at the given row indices, in that order."""
        out = np.empty((len(rows), *self._row_shape), np.uint8)
        for i, r in enumerate(rows):
            out[i] = read_image_file(self._files[int(r)], self.preprocessing, self._size, self.channels)
        return out

    def pin(self) -> dict:
        """The sorted file list with each file's size and sha256, and one sha256 over that list: what a job
        records to prove later that it read the same bytes."""
        return pin_files(self._files, Path(self.where))


def pin_files(files: list[Path], root: Path) -> dict:
    entries, total = [], hashlib.sha256()
    for file in files:
        h = hashlib.sha256()
        size = 0
        try:
            with open(file, "rb") as f:
                for block in iter(functools.partial(f.read, PIN_BLOCK), b""):
                    h.update(block)
                    size += len(block)
        except OSError as e:
            raise DataError(f"{file}: cannot read it to pin the input: {e.strerror or e}") from e
        rel = file.relative_to(root).as_posix() if file.is_relative_to(root) else str(file)
        entries.append({"file": rel, "bytes": size, "sha256": h.hexdigest()})
        total.update(f"{rel}\0{size}\0{h.hexdigest()}\n".encode("utf-8", "surrogateescape"))
    return {"root": str(root), "files": entries, "sha256": total.hexdigest()}


def pin_folder(root: str | Path, split: str | None = None) -> dict:
    """pin_files for the images a folder source reads (sorted list plus digests), without decoding any."""
    root = Path(root)
    folder = root / split if split else root
    classes = None
    if split:
        classes = sorted(set(class_folders(root / "train")) | set(class_folders(root / "test"))) or None
    files, _ = list_images(folder, classes)
    return pin_files(files, folder)
