"""Images in a Parquet column, read by row ranges: `FILE.parquet:COLUMN` for vae_infer.sources.open_source.

The column holds one image per row, as a fixed-size list of numbers (uint8 0..255 or floats in [0, 1]; a plain
list whose rows all have the same length is accepted too) or as a binary value of one byte per pixel. Reads go
by row groups: read(start, stop) decodes only the row groups that overlap [start, stop) and keeps the last one,
so consecutive ranges of one big file cost one decode per row group and memory stays at about one row group.
pyarrow (the `parquet` extra) is imported here only."""

from __future__ import annotations

import bisect
from pathlib import Path

import numpy as np

from .errors import DataError, MissingExtraError
from .image_source import Source


def _pyarrow():
    try:
        import pyarrow as pa
        import pyarrow.parquet as pq
    except ImportError as e:
        raise MissingExtraError(
            "reading Parquet needs pyarrow, which is not installed; install it with: pip install 'vae-infer[parquet]'"
        ) from e
    return pa, pq


class ParquetSource(Source):
    """One column of a Parquet file; rows are images, read by ranges through the file's row groups."""

    def __init__(self, name: str, file: Path, column: str | None) -> None:
        pa, pq = _pyarrow()
        self.name, self.where, self._labels = name, str(file), None
        try:
            self._file = pq.ParquetFile(file)
        except (OSError, pa.ArrowException) as e:  # ArrowInvalid for a truncated footer or a non-Parquet file
            raise DataError(f"{file}: not a readable Parquet file (corrupt or truncated): {e}") from e
        schema = self._file.schema_arrow
        if column is None:
            if len(schema.names) != 1:
                raise DataError(f"{file}: name the image column as {file}:COLUMN; the file has columns "
                                f"{', '.join(schema.names)}")
            column = schema.names[0]
        if column not in schema.names:
            raise DataError(f"{file}: no column named {column!r}; it has {', '.join(schema.names)}")
        self.where = f"{file}:{column}"
        self._column = column
        self._dtype, self._width = _row_layout(pa, schema.field(column).type, self.where)
        meta = self._file.metadata
        counts = [meta.row_group(i).num_rows for i in range(meta.num_row_groups)]
        self._starts = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64).tolist()  # row group i: [s_i, s_i+1)
        self._cached: tuple[int, np.ndarray] | None = None
        if self._width is None:  # a variable-length list: the first row group tells the width, every read checks it
            self._width = self._group(0).shape[1] if counts and counts[0] else 0

    def __len__(self) -> int:
        return int(self._starts[-1])

    @property
    def row_shape(self) -> tuple[int, ...]:
        return (int(self._width),)

    @property
    def dtype(self) -> np.dtype:
        return self._dtype

    def read(self, start: int, stop: int) -> np.ndarray:
        n = len(self)
        if not (isinstance(start, (int, np.integer)) and isinstance(stop, (int, np.integer))
                and 0 <= start <= stop <= n):
            raise DataError(f"{self.where}: rows [{start}, {stop}) are outside the file's {n} rows")
        if start == stop:
            return np.zeros((0, self._width), self._dtype)
        first = bisect.bisect_right(self._starts, start) - 1
        last = bisect.bisect_right(self._starts, stop - 1) - 1
        pieces = []
        for g in range(first, last + 1):
            block, s = self._group(g), self._starts[g]
            pieces.append(block[max(start - s, 0) : min(stop - s, len(block))])
        return np.array(pieces[0]) if len(pieces) == 1 else np.concatenate(pieces)

    def _group(self, g: int) -> np.ndarray:
        """Row group g as (rows, width) of the stored dtype; the last one decoded is kept."""
        if self._cached is not None and self._cached[0] == g:
            return self._cached[1]
        pa, _ = _pyarrow()
        try:
            chunked = self._file.read_row_group(g, columns=[self._column]).column(0)
        except (OSError, pa.ArrowException) as e:
            raise DataError(f"{self.where}: cannot read row group {g} (the file is corrupt or truncated): {e}") from e
        block = _to_rows(pa, chunked.combine_chunks(), self._dtype, self.where)
        if self._width is not None and block.shape[1] != self._width:
            raise DataError(f"{self.where}: rows hold {block.shape[1]} values in row group {g} but {self._width} "
                            f"before; every image must have the same size")
        self._cached = (g, block)
        return block


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


def _to_rows(pa, arr, dtype: np.dtype, where: str) -> np.ndarray:
    """A pyarrow array of images -> (rows, width) numpy array, without a per-row Python loop."""
    if arr.null_count:
        raise DataError(f"{where}: {arr.null_count} row(s) are null; expected an image in every row")
    n = len(arr)
    t = arr.type
    if pa.types.is_fixed_size_list(t):
        values = arr.flatten().to_numpy(zero_copy_only=False)
        return values.reshape(n, t.list_size) if n else values.reshape(0, t.list_size)
    if pa.types.is_fixed_size_binary(t):
        data = np.frombuffer(arr.buffers()[1], np.uint8, count=n * t.byte_width, offset=arr.offset * t.byte_width)
        return data.reshape(n, t.byte_width)
    if pa.types.is_binary(t) or pa.types.is_large_binary(t):
        offsets = np.frombuffer(arr.buffers()[1], np.int64 if pa.types.is_large_binary(t) else np.int32,
                                count=n + 1, offset=arr.offset * (8 if pa.types.is_large_binary(t) else 4))
        values = np.frombuffer(arr.buffers()[2], np.uint8)[offsets[0] : offsets[-1]]
    else:  # list / large_list of numbers
        offsets = np.asarray(arr.offsets)
        values = arr.flatten().to_numpy(zero_copy_only=False)
        offsets = offsets - offsets[0]
    lengths = np.diff(offsets)
    if n and not (lengths == lengths[0]).all():
        raise DataError(f"{where}: rows hold between {lengths.min()} and {lengths.max()} values; every image must "
                        f"have the same size")
    width = int(lengths[0]) if n else 0
    return np.asarray(values, dtype).reshape(n, width)


def open_parquet(text: str, file: Path, column: str | None) -> ParquetSource:
    """The source for `FILE.parquet[:COLUMN]` (vae_infer.sources.open_source dispatches here)."""
    return ParquetSource(text, Path(file), column)
