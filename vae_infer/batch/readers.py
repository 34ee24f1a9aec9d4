"""The inputs of a batch job, read by row ranges in bounded memory, without memory maps.

Memory maps are not used: a mapped file that shrinks kills the process with SIGBUS, which Python cannot catch.
Uncompressed rows (.npy, raw IDX, stored .npz members) are read with os.preadv at their offset; a short read
is an InputChanged error naming the file. Compressed rows (.gz IDX, deflated .npz members) are decompressed as
a stream, forward only, STREAM_PIECE bytes at a time (a range before the current position reopens the stream),
so memory is one range whatever the compression ratio; a .npz member stops at its declared size (zipfile), and
a declared size that is not what the npy header's shape needs is refused before decompressing. Parquet
columns go through vae_infer.data.parquet (a reader process under a memory limit). Named data sets and IDX
folders resolve to their image file; PNG folders are read one file per row (vae_infer.data.rows)."""

from __future__ import annotations

import gzip
import io
import os
import zipfile
import zlib
from collections.abc import Callable
from pathlib import Path
from typing import IO, cast

import numpy as np

from ..data.datasets import IMAGE_FILES, NAMED, dataset_dirs, find_split_file, idx_header, missing_dataset_error
from ..data.rows import RowSource
from ..data.sources import split_key
from ..errors import DataError

STREAM_PIECE = 1 << 20  # bytes decompressed at a time when skipping forward in a compressed stream
NPY_MAGIC = b"\x93NUMPY"
ZIP_LOCAL_HEADER = 30  # bytes of a zip local file header before the name and the extra field
SPLIT = "train"  # the split of a named data set or an IDX folder (as vae_infer.data.sources.open_source)


class InputChanged(DataError):
    """An input changed or shrank while the job ran: the job stops (even with skip_bad), nothing is mixed."""


class RowReader:
    """Rows of one input: len(), row_shape, dtype, read(start, stop) -> (stop - start, *row_shape)."""

    def __init__(self, name: str, where: str, rows: int, row_shape: tuple[int, ...], dtype: np.dtype) -> None:
        if dtype.hasobject or dtype.names is not None:
            raise DataError(f"{where}: expected a plain numeric array of images, found dtype {dtype}")
        self.name, self.where = name, where
        self._rows, self._row_shape, self._dtype = int(rows), tuple(int(d) for d in row_shape), np.dtype(dtype)
        self.row_bytes = int(np.prod(self._row_shape, dtype=np.int64)) * self._dtype.itemsize

    def __len__(self) -> int:
        return self._rows

    @property
    def row_shape(self) -> tuple[int, ...]:
        return self._row_shape

    @property
    def dtype(self) -> np.dtype:
        return self._dtype

    def labels(self) -> None:
        return None

    def read(self, start: int, stop: int) -> np.ndarray:
        """Rows [start, stop), (stop - start, *row_shape); each subclass reads its storage."""
        raise NotImplementedError

    def _check_range(self, start: int, stop: int) -> None:
        if not (isinstance(start, (int, np.integer)) and isinstance(stop, (int, np.integer))
                and 0 <= start <= stop <= self._rows):
            raise DataError(f"{self.where}: rows [{start}, {stop}) are outside the input's {self._rows} rows")

    def _empty(self, n: int) -> np.ndarray:
        return np.empty((n, *self._row_shape), self._dtype)

    def close(self) -> None:
        pass


class FileRows(RowReader):
    """Rows stored uncompressed at a byte offset of a file, read with os.preadv (never memory-mapped)."""

    def __init__(self, name: str, file: Path, where: str, offset: int, rows: int, row_shape, dtype) -> None:
        super().__init__(name, where, rows, row_shape, dtype)
        self.file, self.offset = Path(file), int(offset)
        self._fd: int | None = None

    def read(self, start: int, stop: int) -> np.ndarray:
        self._check_range(start, stop)
        out = self._empty(stop - start)
        view = out.data.cast("B")
        if self._fd is None:
            try:
                self._fd = os.open(self.file, os.O_RDONLY)
            except OSError as e:
                raise InputChanged(f"{self.where}: cannot open it any more ({e.strerror}); it was removed or "
                                   f"replaced while the job ran") from e
        first = self.offset + start * self.row_bytes
        done = 0
        while done < len(view):
            try:
                got = os.preadv(self._fd, [view[done:]], first + done)
            except OSError as e:
                raise DataError(f"{self.where}: cannot read rows [{start}, {stop}): {e.strerror}") from e
            if got == 0:
                raise InputChanged(f"{self.where}: the file ends before rows [{start}, {stop}) (byte {first + done} "
                                   f"of the {first + len(view)} they need): it was truncated or rewritten while "
                                   f"the job ran")
            done += got
        return out

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    def __del__(self) -> None:
        self.close()


class StreamRows(RowReader):
    """Rows of a compressed stream (opened by `opener`, positioned at the first row), decompressed forward
    only, STREAM_PIECE bytes at a time: memory is one range whatever the compression ratio."""

    def __init__(self, name: str, where: str, opener: Callable[[], io.BufferedIOBase], rows: int, row_shape,
                 dtype) -> None:
        super().__init__(name, where, rows, row_shape, dtype)
        self._opener = opener
        self._f: io.BufferedIOBase | None = None
        self._pos = 0

    def read(self, start: int, stop: int) -> np.ndarray:
        self._check_range(start, stop)
        try:
            if self._f is None or start < self._pos:
                self.close()
                self._f, self._pos = self._opener(), 0
            skip = (start - self._pos) * self.row_bytes
            while skip:
                piece = self._f.read(min(skip, STREAM_PIECE))
                if not piece:
                    raise self._short(start, stop)
                skip -= len(piece)
            out = self._empty(stop - start)
            view = out.data.cast("B")
            done = 0
            while done < len(view):
                got = self._f.readinto(view[done:])
                if not got:
                    raise self._short(start, stop)
                done += got
        except DataError:
            self.close()
            raise
        except (OSError, EOFError, zlib.error, zipfile.BadZipFile) as e:
            self.close()
            raise DataError(f"{self.where}: cannot decompress rows [{start}, {stop}) (corrupt or truncated, or "
                            f"changed while the job ran): {e}") from e
        self._pos = stop
        return out

    def check_end(self) -> None:
        """After the last row: the stream must end there (a longer one is not what its header says), and a
        zip member's CRC is checked as it ends."""
        if self._f is None or self._pos != len(self):
            self.read(len(self), len(self))
        assert self._f is not None, "read() opened the stream"
        try:
            extra = self._f.read(1)
        except (OSError, EOFError, zlib.error, zipfile.BadZipFile) as e:
            raise DataError(f"{self.where}: the data does not check out at its end (corrupt or changed): {e}") from e
        if extra:
            raise DataError(f"{self.where}: holds more data after its {len(self)} rows than its header declares; "
                            f"the file is corrupt")

    def _short(self, start: int, stop: int) -> DataError:
        return InputChanged(f"{self.where}: the data ends before rows [{start}, {stop}): the file is truncated, "
                            f"or was rewritten while the job ran")

    def close(self) -> None:
        if self._f is not None:
            self._f.close()
            self._f = None


def open_rows(spec: str, image_shape: tuple[int, ...] | None = None) -> RowSource:
    """The reader for what a user typed (see vae_infer.data.sources.open_source for the forms accepted)."""
    text = str(spec)
    if text in NAMED:
        looked = dataset_dirs(text)
        for folder in looked:
            path = find_split_file(folder, IMAGE_FILES[SPLIT]) if folder.is_dir() else None
            if path is not None:
                return _idx(text, path)
        raise missing_dataset_error(text, looked, IMAGE_FILES[SPLIT])
    file, key = split_key(text)
    if file.is_dir():
        path = find_split_file(file, IMAGE_FILES[SPLIT])
        if path is not None:
            return _idx(text, path)
        from ..data.sources import open_source  # a folder of PNG images: one small file per row

        shape = tuple(image_shape) if image_shape is not None else None  # (h, w) gray or (h, w, 3) colour
        channels = None if shape is None else ("rgb" if len(shape) == 3 and shape[2] == 3 else "gray")
        return open_source(text, image_shape=shape and shape[:2], channels=channels)
    if not file.exists():
        raise DataError(f"{file}: no such file or folder; expected a data set name ({', '.join(NAMED)}), a folder "
                        f"of IDX or .png files, an IDX file, a .npy, .npz or .parquet file")
    if not file.is_file():
        raise DataError(f"{file}: not a regular file (a device, FIFO or socket cannot be read as images)")
    suffix = file.suffix.lower()
    if suffix == ".parquet":
        from ..data.parquet import open_parquet

        return open_parquet(text, file, key, image_shape)
    if key is not None and suffix != ".npz":
        raise DataError(f"{text}: a :KEY applies to .npz (or .parquet) files only")
    if suffix == ".npy":
        return _npy(text, file)
    if suffix == ".npz":
        return _npz(text, file, key)
    return _idx(text, file)


def _npy_header(f: IO[bytes], where: str) -> tuple[tuple[int, ...], np.dtype]:
    """(shape, dtype) from an npy header read off `f`, refusing objects, Fortran order and unknown versions."""
    if f.read(len(NPY_MAGIC)) != NPY_MAGIC:
        raise DataError(f"{where}: not a .npy array (it does not start with numpy's magic bytes); expected a numeric "
                        f"array as np.save writes")
    major = f.read(2)[:1]
    readers = {b"\x01": np.lib.format.read_array_header_1_0, b"\x02": np.lib.format.read_array_header_2_0}
    if major not in readers:
        raise DataError(f"{where}: .npy format version {major!r} is not read here; save it with np.save")
    try:
        shape, fortran, dtype = readers[major](f)
    except ValueError as e:
        raise DataError(f"{where}: the .npy header cannot be read: {e}") from e
    if dtype.hasobject:
        raise DataError(f"{where}: holds Python objects (pickled data), which are never loaded; expected numeric "
                        f"images")
    if fortran and len(shape) > 1:
        raise DataError(f"{where}: the array is stored in Fortran order, so rows are not contiguous on disk; save "
                        f"it with np.save(np.ascontiguousarray(x))")
    if len(shape) == 0:
        raise DataError(f"{where}: expected an array of images (rows first), found a 0-d array")
    return tuple(int(d) for d in shape), dtype


def _npy(text: str, file: Path) -> FileRows:
    with open(file, "rb") as f:
        shape, dtype = _npy_header(f, str(file))
        offset = f.tell()
    return _exact(FileRows(text, file, str(file), offset, shape[0], shape[1:], dtype))


def _exact(rows: FileRows) -> FileRows:
    """The file holds exactly its header and rows: a shorter or longer one is refused before any work."""
    size = rows.file.stat().st_size
    expected = rows.offset + len(rows) * rows.row_bytes
    if size != expected:
        raise DataError(f"{rows.where}: the header says {len(rows)} rows of {rows.row_shape} {rows.dtype} "
                        f"({expected} bytes with the header) but the file holds {size} bytes; it is truncated or "
                        f"corrupt")
    return rows


def _idx(text: str, path: Path) -> RowReader:
    with open(path, "rb") as f:
        gz = f.read(2) == b"\x1f\x8b"
    if not gz:
        with open(path, "rb") as f:
            dtype, shape, offset = idx_header(f.read(4 + 4 * 255), path)
        return _exact(FileRows(text, path, str(path), offset, shape[0], shape[1:], dtype))

    def opener() -> io.BufferedIOBase:
        g = gzip.open(path, "rb")
        g.read(4)
        g.read(4 * ndim)
        return g

    try:
        with gzip.open(path, "rb") as g:
            head = g.read(4)
            ndim = head[3] if len(head) == 4 else 0
            dtype, shape, _ = idx_header(head + g.read(4 * ndim), path)
    except (OSError, EOFError, zlib.error) as e:
        raise DataError(f"{path}: cannot read the gzip-compressed IDX file: {e}") from e
    return StreamRows(text, str(path), opener, shape[0], shape[1:], dtype)


def _npz(text: str, file: Path, key: str | None) -> RowReader:
    try:
        with zipfile.ZipFile(file) as zf:
            members = {n[:-4]: zf.getinfo(n) for n in zf.namelist() if n.endswith(".npy")}
    except (zipfile.BadZipFile, OSError, EOFError) as e:
        raise DataError(f"{file}: not a readable .npz archive (corrupt or truncated): {e}") from e
    if key is None:
        if f"x_{SPLIT}" in members:
            key = f"x_{SPLIT}"
        elif len(members) == 1:
            key = next(iter(members))
        else:
            raise DataError(f"{file}: expected one array, or x_{SPLIT}, or a key as {file}:KEY; it holds "
                            f"{', '.join(members) or 'no arrays'}")
    if key not in members:
        raise DataError(f"{file}: no array named {key!r}; it holds {', '.join(members) or 'no arrays'}")
    info, where = members[key], f"{file}:{key}"

    def opener() -> io.BufferedIOBase:
        zf = zipfile.ZipFile(file)
        member = cast(io.BufferedIOBase, zf.open(info))  # read mode: a zipfile.ZipExtFile
        member.read(header)
        return member

    try:
        with zipfile.ZipFile(file) as zf, zf.open(info) as member:
            shape, dtype = _npy_header(member, where)
            header = member.tell()
    except DataError:
        raise
    except (zipfile.BadZipFile, OSError, EOFError, zlib.error, NotImplementedError, RuntimeError) as e:
        raise DataError(f"{where}: cannot read the array's header (corrupt, encrypted or truncated): {e}") from e
    data = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    if header + data != info.file_size:  # refused before anything is decompressed
        raise DataError(f"{where}: the archive declares {info.file_size} bytes for this member but its header's "
                        f"shape {shape} {dtype} needs {header + data}; the archive is corrupt")
    if info.compress_type == zipfile.ZIP_STORED:
        with open(file, "rb") as f:
            f.seek(info.header_offset)
            local = f.read(ZIP_LOCAL_HEADER)
        if local[:4] != b"PK\x03\x04":
            raise DataError(f"{where}: corrupt .npz archive (bad local header)")
        start = (info.header_offset + ZIP_LOCAL_HEADER + int.from_bytes(local[26:28], "little")
                 + int.from_bytes(local[28:30], "little"))
        return FileRows(text, file, where, start + header, shape[0], shape[1:], dtype)
    return StreamRows(text, where, opener, shape[0], shape[1:], dtype)
