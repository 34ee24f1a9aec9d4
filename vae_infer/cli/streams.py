"""Images through the command line a chunk at a time: inputs read by row ranges through the data layer
(vae_infer.data.sources), validated and converted one chunk at a time, and large outputs written as they are made,
so a command's memory does not grow with its input (only with what it keeps of its output).

A .npy output, and a .npz output of one array, is written header first and then chunk by chunk, inside
vae_infer.atomic.write_atomically: the work runs while the temporary file is written, so a failure at any
chunk leaves the old file (or none), never a half-written one."""

from __future__ import annotations

import sys
import zipfile
from collections.abc import Iterable, Iterator
from pathlib import Path

import click
import numpy as np

from ..atomic import write_atomically
from ..data import arrays
from ..data.model_sources import images_for_model, open_for_model
from ..data.rows import AnySource, RowSource, Source
from ..data.sources import open_source, parse_split, spec_splits, split_key
from ..errors import DataError, InputError
from ..inputs import check_images, expected_shapes
from . import base


def open_images(path: str | Path, model) -> AnySource:
    """The images of any source spec as rows read by range (vae_infer.data.sources): a .npy file, an .npz whose
    arrays are stored uncompressed (np.savez; FILE.npz:KEY picks an array), a folder of PNG/JPEG files (read as
    the model's package says training read them), IDX files, FILE.parquet:COLUMN or a data set name (its test
    split unless SPEC:train). A file holding one image, (height, width) or (height*width,), is a batch of one.
    A compressed .npz (it cannot be read by range) is read whole, as vae_infer.data.arrays.read_images reads it."""
    text, explicit = parse_split(str(path))
    file, _ = split_key(text)
    suffix = file.suffix.lower()
    plain_array = suffix == ".npy" or (suffix == ".npz" and not explicit and not spec_splits(text))
    if plain_array and not (suffix == ".npz" and not _stored_only(file)):
        try:
            source = open_source(path)
        except DataError:
            arrays.read_images(path, model.image_shape)  # says what is wrong in the command line's own words
            raise
        return _image_rows(source, path, model.image_shape)
    if plain_array:  # a compressed or damaged .npz
        return Source(str(path), arrays.read_images(path, model.image_shape), where=str(path))
    images_for_model(path, model.manifest, probe=True)  # the suffix and size checks, before any row is read
    return _image_rows(open_for_model(path, model.manifest), path, model.image_shape)


def _stored_only(file: Path) -> bool:
    if not file.is_file():  # a FIFO would block the reader: read_images says what the path is instead
        return False
    try:
        with zipfile.ZipFile(file) as zf:
            return all(info.compress_type == zipfile.ZIP_STORED for info in zf.infolist())
    except (zipfile.BadZipFile, OSError, EOFError):
        return False  # read_images names the damage


def _image_rows(source: AnySource, path: str | Path, image_shape: tuple[int, ...]) -> AnySource:
    shape = tuple(image_shape)  # (h, w) gray or (h, w, c) colour
    h, w = shape[:2]
    features = int(np.prod(shape))
    one_forms = (shape, (features,)) + (((h, w, 1),) if len(shape) == 2 else ())
    found = (len(source), *source.row_shape)
    if found in one_forms:  # one image
        return Source(str(path), source.read_all().reshape(1, features), where=source.where)
    if source.row_shape not in one_forms:
        one = " x ".join(map(str, shape))
        hint = f"; one image is {one} or {features} values"
        if len(shape) == 2 and len(found) == 4 and found[1:3] == (h, w):
            hint = f"; pass grayscale {h}x{w} images (drop the channel axis, or convert colour to gray)"
        elif len(shape) == 3 and found[1:3] == (h, w):
            hint = f"; the model takes RGB images ({h}, {w}, 3), channels last"
        raise InputError(f"{path}: expected images shaped {expected_shapes(shape)}, got {found}{hint}")
    if len(source) == 0:
        raise InputError(f"{path}: expected at least one image, got an empty batch")
    return source


def chunks(model, source: RowSource, label: str, quiet: bool = False) -> Iterator[tuple[int, np.ndarray]]:
    """(start, rows) for each chunk of model.chunk_size images of `source`: the model's float32 input, each
    chunk validated as it is read (errors name the row in the whole input). The chunks are the ones the model's
    own methods use, so results equal theirs. A progress bar on stderr when a person is watching."""
    n, step = len(source), model.chunk_size
    image_shape, scale = model.image_shape, model.manifest.input_scale

    def rows(start: int) -> np.ndarray:
        block = source.read(start, min(start + step, n))
        return model.to_float32(check_images(block, image_shape, scale, first_row=start))

    yield from progress(((start, rows(start)) for start in range(0, n, step)), n, label, quiet)


def progress(blocks: Iterable, total: int, label: str, quiet: bool = False) -> Iterator:
    """The blocks (arrays of rows, or (start, rows) pairs), unchanged, with a progress bar over `total` rows
    on stderr when a person is watching."""
    if quiet or not base.stderr_is_terminal():
        yield from blocks
        return
    with click.progressbar(length=total, label=label, file=sys.stderr) as bar:
        for block in blocks:
            yield block
            bar.update(len(block[1] if isinstance(block, tuple) else block))


def write_rows(path: Path, key: str, shape: tuple[int, ...], dtype: np.dtype | type,
               blocks: Iterable[np.ndarray]) -> Path:
    """Write an array of `shape` made of `blocks` (consecutive rows) to a .npy file, or to a .npz file under
    `key`, one block at a time and atomically. The blocks are computed while the file is written: if one fails,
    or they do not add up to shape[0] rows, no file is left (an existing one is kept)."""
    dtype = np.dtype(dtype)
    header = {"descr": np.lib.format.dtype_to_descr(dtype), "fortran_order": False, "shape": tuple(shape)}

    def write_npy(f) -> None:
        np.lib.format.write_array_header_1_0(f, header)  # the header of a 1-D or 2-D array is well under 64 kB
        done = 0
        for block in blocks:
            block = np.ascontiguousarray(block, dtype)
            if block.shape[1:] != tuple(shape[1:]) or done + len(block) > shape[0]:
                raise InputError(f"{path}: a block of rows shaped {block.shape} does not fit an array {shape}")
            f.write(block.data.cast("B"))
            done += len(block)
        if done != shape[0]:
            raise InputError(f"{path}: {done} rows were made for an array of {shape[0]}")

    def write_npz(f) -> None:
        with zipfile.ZipFile(f, "w", zipfile.ZIP_STORED, allowZip64=True) as zf, \
                zf.open(f"{key}.npy", "w", force_zip64=True) as member:
            write_npy(member)

    return write_atomically(path, write_npz if path.suffix.lower() == ".npz" else write_npy)


def first_rows(blocks: Iterable[np.ndarray], keep: list[np.ndarray], k: int) -> Iterator[np.ndarray]:
    """The blocks, unchanged, keeping copies of the first k rows in `keep` (for a --png picture)."""
    have = 0
    for block in blocks:
        if have < k:
            keep.append(np.array(block[: k - have]))
            have += len(keep[-1])
        yield block
