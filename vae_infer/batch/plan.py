"""A job's inputs and its plan: files and globs expanded, each input described (size, modification time,
rows, and the digests of its contents: vae_infer.batch.pins) and checked, then split into parts (output
files) and tasks (row ranges one engine call computes).

Parts never span two inputs and every part is a fixed row range of one input, so the same inputs and
options give the same parts on every run: that is what lets a re-run skip the parts already written."""

from __future__ import annotations

import dataclasses
import glob
import math
from collections.abc import Sequence
from pathlib import Path

from ..data.rows import RowSource
from ..data.sources import split_key
from ..errors import DataError
from .pins import content_digest, pin_part
from .readers import StreamRows, open_rows

GLOB_CHARS = "*?["


@dataclasses.dataclass(frozen=True)
class InputFile:
    source: str  # the input as given (one file after glob expansion, with its :KEY); the `source` column
    size: int | None  # bytes on disk (a folder: its files together); None when it cannot be found
    mtime_ns: int | None  # latest modification time, ns
    rows: int | None  # None when the input could not be opened (see error)
    error: str | None = None
    pins: tuple[tuple[str, ...], ...] = ()  # per part of this input, the digests of its blocks (pins.py)

    def record(self) -> dict:
        return {"source": self.source, "size": self.size, "mtime_ns": self.mtime_ns, "rows": self.rows,
                "sha256": content_digest(self.pins) if self.error is None else None,
                "pins": [list(p) for p in self.pins]}


@dataclasses.dataclass(frozen=True)
class Task:
    id: int
    input: int  # index into the job's inputs
    start: int
    stop: int
    part: int
    origin: int = 0  # the part's rows [origin, end): pinned blocks start at origin
    end: int = 0


@dataclasses.dataclass(frozen=True)
class Part:
    id: int
    input: int
    start: int
    stop: int
    name: str  # file name without the extension
    tasks: range  # ids of its tasks, consecutive

    @property
    def rows(self) -> int:
        return self.stop - self.start


def expand(inputs: Sequence[str | Path]) -> list[str]:
    """Files and globs (`data/shard-*.npy`, `data/*.npz:images`) -> input specs, in sorted order within a glob,
    each once. A glob that matches nothing is an error (a typo must not run a job on nothing)."""
    specs: list[str] = []
    for item in inputs:
        text = str(item)
        file, key = split_key(text)
        if any(c in str(file) for c in GLOB_CHARS) and not file.exists():
            matches = sorted(glob.glob(str(file)))
            if not matches:
                raise DataError(f"{text}: no file matches this pattern; check the path (quote globs so that "
                                f"the shell does not expand them)")
            specs += [m if key is None else f"{m}:{key}" for m in matches]
        else:
            specs.append(text)
    if not specs:
        raise DataError("no inputs: pass one or more files or globs")
    return list(dict.fromkeys(specs))


def stat_input(spec: str) -> tuple[int | None, int | None]:
    """(size, mtime_ns) of the file or folder an input reads; (None, None) for a named data set or a missing file."""
    file, _ = split_key(spec)
    try:
        if file.is_dir():
            stats = [p.stat() for p in sorted(file.iterdir()) if p.is_file()]
            return sum(s.st_size for s in stats), max((s.st_mtime_ns for s in stats), default=0)
        st = file.stat()
        return st.st_size, st.st_mtime_ns
    except OSError:
        return None, None


def open_input(spec: str, image_shape: tuple[int, ...]) -> RowSource:
    """The input's reader (vae_infer.batch.readers), checked: rows shaped like the model's images ((h, w) gray
    or (h, w, c) colour, or flat), uint8 or floats. DataError otherwise."""
    source = open_rows(spec, image_shape=image_shape)
    shape = tuple(image_shape)
    features = math.prod(shape)
    if source.row_shape not in (shape, (features,)):
        raise DataError(f"{spec}: expected images shaped {shape} or ({features},) per row, found "
                        f"{source.row_shape or 'scalars'}")
    if not (source.dtype == "uint8" or source.dtype.kind == "f"):
        raise DataError(f"{spec}: expected uint8 pixels (0..255) or floats in [0, 1], found dtype {source.dtype}")
    return source


def describe(spec: str, image_shape: tuple[int, int]) -> InputFile:
    size, mtime = stat_input(spec)
    try:
        rows: int | None = len(open_input(spec, image_shape))
        error = None
    except DataError as e:
        rows, error = None, str(e)
    return InputFile(spec, size, mtime, rows, error)


def pin(inp: InputFile, image_shape: tuple[int, int], part_rows: int, digests: bool = True) -> InputFile:
    """The input with the digests of its contents (read once, PIN_ROWS rows at a time), part by part as
    plan() splits it; an input that cannot be read to its end gets the error instead. digests=False (only to
    measure what pinning costs): no digests, nothing read."""
    if inp.error is not None:
        return inp
    assert inp.rows is not None, "describe() gives an input without an error its rows"
    if not digests:
        return dataclasses.replace(inp, pins=tuple(() for _ in range(0, inp.rows, part_rows)))
    try:
        reader = open_input(inp.source, image_shape)
        if len(reader) != inp.rows:
            raise DataError(f"{inp.source}: holds {len(reader)} rows now, {inp.rows} a moment ago: it changed "
                            f"while the job started")
        pins = tuple(tuple(pin_part(reader, s, min(s + part_rows, inp.rows))) for s in range(0, inp.rows, part_rows))
        if isinstance(reader, StreamRows):
            reader.check_end()
        getattr(reader, "close", lambda: None)()
    except DataError as e:
        return dataclasses.replace(inp, rows=None, error=str(e))
    return dataclasses.replace(inp, pins=pins)


def plan(inputs: Sequence[InputFile], part_rows: int, chunk_rows: int) -> tuple[list[Part], list[Task]]:
    """Parts of at most part_rows rows per input, each split into tasks of at most chunk_rows rows."""
    parts: list[Part] = []
    tasks: list[Task] = []
    for i, inp in enumerate(inputs):
        rows = inp.rows or 0
        for k, start in enumerate(range(0, rows, part_rows)):
            stop = min(start + part_rows, rows)
            first = len(tasks)
            for s in range(start, stop, chunk_rows):
                tasks.append(Task(len(tasks), i, s, min(s + chunk_rows, stop), len(parts), start, stop))
            parts.append(Part(len(parts), i, start, stop, f"part-{i:05d}-{k:05d}", range(first, len(tasks))))
    return parts, tasks
