"""Images in a Parquet column, read by row ranges: `FILE.parquet:COLUMN` for vae_infer.data.sources.open_source and
batch jobs.

The column holds one image per row, as a fixed-size list of numbers (uint8 0..255 or floats in [0, 1]; a plain
list whose rows all have the same length is accepted too) or as a binary value of one byte per pixel.

Memory is bounded by construction, whatever the file claims: the file is decoded in a reader process of its
own whose data segment is limited to READER_MEMORY (RLIMIT_DATA: an allocation past it fails, which pyarrow
reports as an error). Inside it the footer is checked first (row counts, and each column chunk's declared
uncompressed size against what its rows need), then the column is streamed with
`ParquetFile(..., pre_buffer=False).iter_batches(batch_size=..., columns=[column])` in batches of at most
BATCH_BYTES of pixels; pyarrow allocates a page's declared size whole, so a page (or a forged footer) that
needs more than READER_MEMORY is refused, naming the file, and this process never holds more than the range
it asked for. Nulls, wrong widths and non-numeric values are refused naming the column and the row."""

from __future__ import annotations

import socket
import subprocess
import sys
from collections.abc import Iterator
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import DataError, MissingExtraError

READER_MEMORY = 1 << 30  # RLIMIT_DATA of the reader process: the per-page (and per-batch) bound, enforced
BATCH_BYTES = 4 << 20  # pixels per decoded batch (pyarrow's levels and offsets for a list column: ~5x that)
CHUNK_SLACK = 2.0  # a column chunk may declare up to this times the bytes its rows need (levels, offsets)
CHUNK_EXTRA = 1 << 20  # ... plus this much
START_TIMEOUT_S = 60.0  # the reader process imports pyarrow and reads the footer within this


def _pyarrow():
    try:
        import pyarrow as pa
        import pyarrow.parquet as pq
    except ImportError as e:
        raise MissingExtraError(
            "reading Parquet needs pyarrow, which is not installed; install it with: pip install 'vae-infer[parquet]'"
        ) from e
    return pa, pq


class ParquetSource:
    """One column of a Parquet file: len(), row_shape, dtype, read(start, stop), read by a reader process."""

    def __init__(self, name: str, file: Path, column: str | None, image_shape: tuple[int, ...] | None = None
                 ) -> None:
        _pyarrow()  # a missing extra is said here, not in the reader process
        self.name, self.where, self._labels = name, str(file), None
        width = None if image_shape is None else int(np.prod(image_shape))  # h*w*c values, channels-last
        ours, theirs = socket.socketpair()
        # a fresh interpreter (not multiprocessing's spawn, which would import the caller's __main__ again)
        code = "import sys; from vae_infer.data.parquet import _reader_main; _reader_main(*sys.argv[1:])"
        self._limit = READER_MEMORY
        args = [str(theirs.fileno()), str(file), column or "", str(width or 0), str(self._limit)]
        self._proc: subprocess.Popen[bytes] | None = subprocess.Popen(
            [sys.executable, "-c", code, *args], pass_fds=[theirs.fileno()], stdin=subprocess.DEVNULL)
        theirs.close()
        self._conn = Connection(ours.detach())
        reply = self._receive(START_TIMEOUT_S)
        self.where, rows, width, dtype = reply
        self._rows, self._width, self._dtype = int(rows), int(width), np.dtype(dtype)

    def _receive(self, timeout: float | None = None):
        if not self._conn.poll(timeout):
            self.close()
            raise DataError(f"{self.where}: the Parquet reader did not answer within {timeout:g} s")
        try:
            kind, value = self._conn.recv()
        except (EOFError, OSError):
            assert self._proc is not None, "the reader process runs until close()"
            code = self._proc.wait()
            self.close()
            raise DataError(f"{self.where}: the Parquet reader process ended (exit code {code}) while decoding the "
                            f"file; it is corrupt, or needs more than {self._limit >> 20} MiB to decode") from None
        if kind == "error":
            raise DataError(value)
        return value

    def __len__(self) -> int:
        return self._rows

    @property
    def row_shape(self) -> tuple[int, ...]:
        return (self._width,)

    @property
    def dtype(self) -> np.dtype:
        return self._dtype

    def labels(self) -> None:
        return None

    def read(self, start: int, stop: int) -> np.ndarray:
        n = len(self)
        if not (isinstance(start, (int, np.integer)) and isinstance(stop, (int, np.integer))
                and 0 <= start <= stop <= n):
            raise DataError(f"{self.where}: rows [{start}, {stop}) are outside the file's {n} rows")
        if start == stop:
            return np.zeros((0, self._width), self._dtype)
        if self._proc is None:
            raise DataError(f"{self.where}: the reader was closed")
        self._conn.send((int(start), int(stop)))
        self._receive()
        out = np.empty((stop - start, self._width), self._dtype)
        self._conn.recv_bytes_into(out.data.cast("B"))
        return out

    def read_all(self) -> np.ndarray:
        return self.read(0, len(self))

    def close(self) -> None:
        proc = getattr(self, "_proc", None)  # None: closed, or __init__ failed before starting it
        if proc is not None:
            try:
                self._conn.send(None)
            except OSError:
                pass
            try:
                proc.wait(timeout=2)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
            self._conn.close()
            self._proc = None

    def __del__(self) -> None:
        self.close()


def open_parquet(text: str, file: Path, column: str | None, image_shape: tuple[int, ...] | None = None
                 ) -> ParquetSource:
    """The source for `FILE.parquet[:COLUMN]` (vae_infer.data.sources.open_source dispatches here)."""
    return ParquetSource(text, Path(file), column, image_shape)


# -- the reader process ----------------------------------------------------------------------------------------


def _reader_main(fd: str, file: str, column: str, width: str, limit: str) -> None:
    """The reader process: `python -c ... FD FILE COLUMN WIDTH LIMIT` (COLUMN "" and WIDTH 0: not given)."""
    import resource

    resource.setrlimit(resource.RLIMIT_DATA, (int(limit), int(limit)))
    conn = Connection(int(fd))
    global READER_MEMORY
    READER_MEMORY = int(limit)  # for the messages
    try:
        reader = _Reader(file, column or None, int(width) or None)
        conn.send(("ok", (reader.where, reader.rows, reader.width, reader.dtype.str)))
    except (DataError, MemoryError) as e:
        conn.send(("error", _words(e, file)))
        return
    except Exception as e:  # pyarrow's own errors for a file that is not Parquet, or is damaged
        conn.send(("error", f"{file}: not a readable Parquet file (corrupt or truncated): {e}"))
        return
    while True:
        try:
            item = conn.recv()
        except EOFError:
            return
        if item is None:
            return
        try:
            block = reader.read(*item)
        except (DataError, MemoryError) as e:
            conn.send(("error", _words(e, reader.where)))
            continue
        except Exception as e:
            conn.send(("error", _words(e, reader.where)))
            continue
        conn.send(("rows", None))
        conn.send_bytes(np.ascontiguousarray(block).data.cast("B"))


def _words(e: BaseException, where: str) -> str:
    if isinstance(e, DataError):
        return str(e)
    if isinstance(e, MemoryError) or "memory" in type(e).__name__.lower() or "malloc" in str(e).lower():
        return (f"{where}: decoding needs more than the reader's {READER_MEMORY >> 20} MiB (a page or a batch that "
                f"large: a decompression bomb, or pages written far too big); rewrite it with smaller pages")
    return f"{where}: cannot decode the column (the file is corrupt, or changed while the job ran): {e}"


class _Reader:
    """In the reader process: the footer checked, then the column streamed forward in bounded batches."""

    def __init__(self, file: str, column: str | None, width: int | None) -> None:
        pa, pq = _pyarrow()
        self.pa, self.file = pa, file
        self.pf = pq.ParquetFile(file, pre_buffer=False, buffer_size=1 << 20)
        schema = self.pf.schema_arrow
        if column is None:
            if len(schema.names) != 1:
                raise DataError(f"{file}: name the image column as {file}:COLUMN; the file has columns "
                                f"{', '.join(schema.names)}")
            column = schema.names[0]
        if column not in schema.names:
            raise DataError(f"{file}: no column named {column!r}; it has {', '.join(schema.names)}")
        self.column, self.where = column, f"{file}:{column}"
        self.dtype, fixed = _row_layout(pa, schema.field(column).type, self.where)
        meta = self.pf.metadata
        counts = [meta.row_group(i).num_rows for i in range(meta.num_row_groups)]
        if any(c < 0 for c in counts) or sum(counts) != meta.num_rows:
            raise DataError(f"{self.where}: the footer's row counts do not add up (corrupt file)")
        self.rows = int(meta.num_rows)
        width = fixed if fixed is not None else width
        if width is None:  # a variable-length column and no model to say the width: the first row tells
            width = len(self._first_row()) if self.rows else 0
        self.width = width
        self._check_footer(meta)
        self.batch_rows = max(1, BATCH_BYTES // max(1, self.width * self.dtype.itemsize))
        self._batches: Iterator[Any] | None = None  # pyarrow RecordBatches, forward from row self._pos
        self._pos = 0
        self._held: np.ndarray | None = None

    def _first_row(self):
        for batch in self.pf.iter_batches(batch_size=1, columns=[self.column]):
            return _to_rows(self.pa, batch.column(0), self.dtype, self.where, 0, None)[0]
        return []

    def _check_footer(self, meta) -> None:
        """Each column chunk's declared uncompressed size against what its rows need, before decoding it."""
        index = self.pf.schema_arrow.get_field_index(self.column)
        leaves = [i for i in range(meta.num_columns) if meta.schema.column(i).path.split(".")[0] == self.column]
        per_row = (self.width * self.dtype.itemsize + 8) * CHUNK_SLACK
        for g in range(meta.num_row_groups):
            group = meta.row_group(g)
            for i in leaves or [index]:
                chunk = group.column(i)
                need = group.num_rows * per_row + CHUNK_EXTRA
                if chunk.total_uncompressed_size > need or chunk.total_uncompressed_size < 0:
                    raise DataError(f"{self.where}: row group {g} declares {chunk.total_uncompressed_size} bytes "
                                    f"uncompressed for {group.num_rows} rows of {self.width} values (at most "
                                    f"{int(need)} expected); refused before decompressing (a decompression bomb or "
                                    f"a corrupt file)")

    def read(self, start: int, stop: int) -> np.ndarray:
        if self._batches is None or start < self._pos:
            self._batches = self.pf.iter_batches(batch_size=self.batch_rows, columns=[self.column])
            self._pos, self._held = 0, None
        pieces, at = [], self._pos  # `at`: the row index of self._held's first row
        while at < stop:
            if self._held is None:
                batch = next(self._batches, None)
                if batch is None:
                    raise DataError(f"{self.where}: the column ends at row {at}, before row {stop} (the file is "
                                    f"corrupt, or changed while the job ran)")
                self._held = _to_rows(self.pa, batch.column(0), self.dtype, self.where, at, self.width)
            block = self._held
            lo, hi = max(start - at, 0), min(stop - at, len(block))
            if lo < hi:
                pieces.append(block[lo:hi])
            if at + len(block) <= stop:
                at += len(block)
                self._held = None
            else:
                break
        self._pos = at
        return pieces[0] if len(pieces) == 1 else np.concatenate(pieces)


def _row_layout(pa, t, where: str) -> tuple[np.dtype, int | None]:
    """(numpy dtype of one value, values per row or None when only the data can tell) for a column type."""
    if pa.types.is_fixed_size_list(t) or pa.types.is_list(t) or pa.types.is_large_list(t):
        value = t.value_type
        if not (pa.types.is_integer(value) or pa.types.is_floating(value)):
            raise DataError(f"{where}: expected lists of numbers (uint8 or float), found lists of {value}")
        width = t.list_size if pa.types.is_fixed_size_list(t) else None
        return np.dtype(value.to_pandas_dtype()), width
    if pa.types.is_fixed_size_binary(t):
        return np.dtype(np.uint8), t.byte_width
    if pa.types.is_binary(t) or pa.types.is_large_binary(t):
        return np.dtype(np.uint8), None
    raise DataError(f"{where}: expected a column of fixed-size lists of pixel values or of binary images "
                    f"(one byte per pixel), found {t}")


def _to_rows(pa, arr, dtype: np.dtype, where: str, first: int, width: int | None) -> np.ndarray:
    """A pyarrow array of images -> (rows, width) numpy array, without a per-row Python loop. Null rows, null
    values and rows of another width are refused naming the row (`first` is the index of arr's first row)."""
    n = len(arr)
    if arr.null_count:
        row = first + int(np.nonzero(~np.asarray(arr.is_valid()))[0][0])
        raise DataError(f"{where}: row {row} is null ({arr.null_count} null row(s) in rows [{first}, {first + n})); "
                        f"expected an image in every row")
    t = arr.type
    if pa.types.is_fixed_size_binary(t):
        data = np.frombuffer(arr.buffers()[1], np.uint8, count=n * t.byte_width, offset=arr.offset * t.byte_width)
        return data.reshape(n, t.byte_width)
    if pa.types.is_binary(t) or pa.types.is_large_binary(t):
        offsets = np.frombuffer(arr.buffers()[1], np.int64 if pa.types.is_large_binary(t) else np.int32,
                                count=n + 1, offset=arr.offset * (8 if pa.types.is_large_binary(t) else 4))
        values = np.frombuffer(arr.buffers()[2], np.uint8)[offsets[0] : offsets[-1]]
    else:  # fixed-size list, list or large list of numbers
        flat = arr.flatten()
        if flat.null_count:
            starts = np.asarray(arr.offsets) if not pa.types.is_fixed_size_list(t) else np.arange(n + 1) * t.list_size
            bad = int(np.nonzero(~np.asarray(flat.is_valid()))[0][0])
            row = first + int(np.searchsorted(starts - starts[0], bad, side="right") - 1)
            raise DataError(f"{where}: row {row} holds a null value; expected a number for every pixel")
        values = flat.to_numpy(zero_copy_only=False)
        offsets = (np.arange(n + 1) * t.list_size if pa.types.is_fixed_size_list(t)
                   else np.asarray(arr.offsets) - np.asarray(arr.offsets)[0])
    lengths = np.diff(offsets)
    expected = width if width is not None else (int(lengths[0]) if n else 0)
    wrong = np.nonzero(lengths != expected)[0]
    if len(wrong):
        row = first + int(wrong[0])
        raise DataError(f"{where}: row {row} holds {int(lengths[wrong[0]])} values, expected {expected}; every "
                        f"image must have the same size")
    return np.asarray(values, dtype).reshape(n, expected)
