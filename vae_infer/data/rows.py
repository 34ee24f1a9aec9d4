"""The readers behind every image source: a length, the per-row shape and dtype, rows read by range
(`read(start, stop)`), and labels where the source has them. `Source` wraps an array or a memory map;
`PngFolderSource` reads a folder of PNG files one file per row. vae_infer.data.sources opens the right one for
what a user typed; vae_infer.data.parquet adds Parquet columns."""

from __future__ import annotations

import mmap
from pathlib import Path
from typing import Protocol

import numpy as np
from numpy.typing import NDArray

from ..errors import DataError


class RowSource(Protocol):
    """What every reader of rows offers, whatever its storage (Source and its subclasses, ParquetSource, the
    batch job's readers): the type of a function that takes or returns any of them."""

    name: str  # the spec as the user gave it
    where: str  # the file actually read, for messages

    def __len__(self) -> int: ...

    @property
    def row_shape(self) -> tuple[int, ...]: ...

    @property
    def dtype(self) -> np.dtype: ...

    def read(self, start: int, stop: int) -> np.ndarray: ...

    def labels(self) -> NDArray[np.int64] | None: ...

    def close(self) -> None: ...


class AnySource(RowSource, Protocol):
    """What vae_infer.data.sources.open_source returns (a Source, or a ParquetSource): rows, and all of them."""

    def read_all(self) -> np.ndarray: ...


class Source:
    """Rows of images: len(), row_shape, dtype, read(start, stop), labels()."""

    def __init__(self, name: str, data: np.ndarray, labels: NDArray[np.int64] | None = None,
                 where: str | None = None) -> None:
        if data.ndim < 1:
            raise DataError(f"{where or name}: expected an array of images (rows first), found a 0-d array")
        if data.dtype.names is not None or data.dtype == object:
            raise DataError(f"{where or name}: expected a plain numeric array of images, found dtype {data.dtype}")
        self.name = name  # the spec as the user gave it: what outputs record as the source
        self.where = where or name  # the file actually read, for messages
        self._data = data
        self._labels = labels

    def __len__(self) -> int:
        return int(self._data.shape[0])

    def __repr__(self) -> str:
        return f"Source({self.name!r}, rows={len(self)}, row_shape={self.row_shape}, dtype={self.dtype})"

    @property
    def row_shape(self) -> tuple[int, ...]:
        return tuple(int(d) for d in self._data.shape[1:])

    @property
    def dtype(self) -> np.dtype:
        return self._data.dtype

    def read(self, start: int, stop: int) -> np.ndarray:
        """Rows [start, stop) as an in-memory array of the stored dtype, (stop - start, *row_shape)."""
        n = len(self)
        if not (isinstance(start, (int, np.integer)) and isinstance(stop, (int, np.integer))
                and 0 <= start <= stop <= n):
            raise DataError(f"{self.where}: rows [{start}, {stop}) are outside the source's {n} rows")
        try:
            rows = np.array(self._data[start:stop])
        except (OSError, ValueError) as e:  # a memory-mapped file truncated under us
            raise DataError(f"{self.where}: cannot read rows [{start}, {stop}): {e}") from e
        # The copy is made: unmap the file's pages, which would otherwise stay in this process's resident memory
        # until the whole file had been read into it (they stay in the page cache; a later read maps them again).
        mapped = getattr(self._data, "_mmap", None)
        if isinstance(mapped, mmap.mmap) and hasattr(mapped, "madvise"):
            mapped.madvise(mmap.MADV_DONTNEED)
        return rows

    def read_all(self) -> np.ndarray:
        return self.read(0, len(self))

    def labels(self) -> NDArray[np.int64] | None:
        """Class labels (n,) when the source has them (named data sets, IDX folders, .npz with labels)."""
        return self._labels

    def close(self) -> None:
        """Release what the source holds open (nothing here; readers of files override it)."""


class PngFolderSource(Source):
    """A folder of .png images, one row per file in sorted name order; files are read when asked for."""

    def __init__(self, name: str, files: list[Path], image_shape: tuple[int, ...] | None) -> None:
        self.name, self.where = name, str(Path(files[0]).parent)
        self._files, self._labels = files, None
        first = self._read_one(files[0], image_shape)
        self._shape, self._image_shape = first.shape, image_shape or first.shape

    def _read_one(self, file: Path, image_shape: tuple[int, ...] | None) -> np.ndarray:
        from ..viz import read_png

        return read_png(file, image_shape)

    def __len__(self) -> int:
        return len(self._files)

    @property
    def row_shape(self) -> tuple[int, ...]:
        return tuple(self._shape)

    @property
    def dtype(self) -> np.dtype:
        return np.dtype(np.float32)

    def read(self, start: int, stop: int) -> np.ndarray:
        if not (0 <= start <= stop <= len(self)):
            raise DataError(f"{self.where}: rows [{start}, {stop}) are outside the folder's {len(self)} images")
        rows = [self._read_one(f, self._image_shape) for f in self._files[start:stop]]
        return np.stack(rows).astype(np.float32) if rows else np.zeros((0, *self._shape), np.float32)
