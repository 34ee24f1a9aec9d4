"""The output folder: parts (Parquet, or .npz for small jobs), each written atomically and carrying what it
holds (job id, source, row range, the digest of the input rows it was computed from) so that a re-run can
verify it; _failures.jsonl; and reading results back.

The folder is a dataset as it is: every side file (`_job.json`, `_failures.jsonl`, `_lock`, `_ray.log`)
starts with `_`, which every Parquet reader (pyarrow.dataset, pandas, DuckDB, Polars, Spark, Ray Data) skips,
and temporaries start with `.`. Columns: source (the input as given), row (its index in that input), mu and
logvar (fixed-size lists of the latent size, float32), score (float64), flag (bool)."""

from __future__ import annotations

import io
import json
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import numpy as np

from ..atomic import atomic_write_bytes, write_atomically
from ..errors import DataError, MissingExtraError
from .core import Columns
from .pins import content_digest
from .plan import Part

FAILURES_FILE = "_failures.jsonl"
RAY_LOG = "_ray.log"  # what Ray itself printed during a job with --engine ray (unless --verbose)
META_KEY = "vae_infer.batch"  # Parquet schema metadata / npz member holding the part's description
ROW_GROUP_ROWS = 65536  # rows buffered per Parquet row group: ~2 MB of outputs, readers skip by groups
EXTENSIONS = {"parquet": ".parquet", "npz": ".npz"}


def pyarrow_modules():
    try:
        import pyarrow as pa
        import pyarrow.parquet as pq
    except ImportError as e:
        raise MissingExtraError("Parquet output needs pyarrow, which is not installed; install it with: "
                                "pip install 'vae-infer[parquet]', or pass --format npz") from e
    return pa, pq


def part_meta(job: str, part: Part, source: str, pins: list[str] | tuple[str, ...]) -> dict[str, Any]:
    """What a part holds; input_sha256: the digest of the pinned blocks its rows were computed from."""
    return {"job": job, "source": source, "start": part.start, "stop": part.stop,
            "input_sha256": content_digest([pins])}


def part_path(out_dir: Path, part: Part, fmt: str) -> Path:
    return out_dir / (part.name + EXTENSIONS[fmt])


def to_table(cols: Columns, source: str):
    """One block of output columns as a pyarrow table (source dictionary-encoded: one string per part)."""
    pa, _ = pyarrow_modules()
    n = len(cols["row"])
    # safe=False: the indices are all 0 by construction, and validating them costs more than the model's encoder
    arrays = {"source": pa.DictionaryArray.from_arrays(pa.array(np.zeros(n, np.int32)), pa.array([source]), safe=False),
              "row": pa.array(cols["row"])}
    for name in ("mu", "logvar"):
        if name in cols:
            v = np.ascontiguousarray(cols[name], np.float32)
            arrays[name] = pa.FixedSizeListArray.from_arrays(pa.array(v.reshape(-1)), v.shape[1])
    for name in ("score", "flag"):
        if name in cols:
            arrays[name] = pa.array(cols[name])
    return pa.table(arrays)


def write_part(path: Path, fmt: str, meta: dict[str, Any], blocks: Iterable[Columns]) -> int:
    """Write the part from its blocks (in row order) atomically; returns its rows. Parquet streams the blocks
    in row groups, so memory stays at one row group whatever the part's size."""
    if fmt == "npz":
        parts = list(blocks)
        cols = {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}
        buf = io.BytesIO()
        np.savez(buf, allow_pickle=False, **cols, **{META_KEY: np.array(json.dumps(meta))})
        atomic_write_bytes(path, buf.getvalue())
        return len(cols["row"])
    pa, pq = pyarrow_modules()
    written = 0

    def write(f) -> None:
        nonlocal written
        writer = None
        pending: list[Columns] = []

        def flush() -> None:
            nonlocal writer
            table = pa.concat_tables([to_table(c, meta["source"]) for c in pending])
            table = table.replace_schema_metadata({META_KEY: json.dumps(meta)})
            if writer is None:
                # dictionary-encode the source only: for the number columns it costs 4x the write time for nothing
                writer = pq.ParquetWriter(f, table.schema, use_dictionary=["source"])
            writer.write_table(table, row_group_size=len(table))
            pending.clear()

        for cols in blocks:
            pending.append(cols)
            written += len(cols["row"])
            if sum(len(c["row"]) for c in pending) >= ROW_GROUP_ROWS:
                flush()
        if pending:
            flush()
        if writer is not None:
            writer.close()

    write_atomically(path, write)
    return written


def part_is_complete(path: Path, fmt: str, meta: dict[str, Any]) -> bool:
    """The part exists, says it holds exactly `meta` (this job, this range) and has that many rows."""
    if not path.is_file():
        return False
    try:
        if fmt == "npz":
            with np.load(path, allow_pickle=False) as z:
                return json.loads(str(z[META_KEY])) == meta and len(z["row"]) == meta["stop"] - meta["start"]
        _, pq = pyarrow_modules()
        md = pq.read_metadata(path)
        stored = (md.metadata or {}).get(META_KEY.encode())
        return stored is not None and json.loads(stored) == meta and md.num_rows == meta["stop"] - meta["start"]
    except MissingExtraError:
        raise
    except Exception:  # a damaged part is not complete: it is computed and written again
        return False


def write_failures(out_dir: Path, failures: list[dict[str, Any]]) -> Path:
    text = "".join(json.dumps(f) + "\n" for f in failures)
    return atomic_write_bytes(Path(out_dir) / FAILURES_FILE, text.encode())


def part_files(out_dir: str | Path) -> list[Path]:
    out = Path(out_dir)
    return sorted(p for ext in EXTENSIONS.values() for p in out.glob(f"part-*{ext}"))


def iter_results(out_dir: str | Path) -> Iterator[dict[str, np.ndarray]]:
    """Each part's columns as numpy arrays, in part order (source as a str array)."""
    for path in part_files(out_dir):
        if path.suffix == ".npz":
            with np.load(path, allow_pickle=False) as z:
                meta = json.loads(str(z[META_KEY]))
                cols = {k: z[k] for k in z.files if k != META_KEY}
        else:
            _, pq = pyarrow_modules()
            table = pq.read_table(path)
            meta = json.loads(table.schema.metadata[META_KEY.encode()])
            cols = {}
            for name in table.column_names:
                if name == "source":
                    continue
                col = table.column(name).combine_chunks()
                if name in ("mu", "logvar"):
                    cols[name] = col.flatten().to_numpy().reshape(len(col), -1)
                else:
                    cols[name] = col.to_numpy(zero_copy_only=False)
        cols["source"] = np.full(len(cols["row"]), meta["source"])
        yield cols


def read_results(out_dir: str | Path) -> dict[str, np.ndarray]:
    """Every part of a results folder, concatenated (for small jobs and tests; big ones read the parts)."""
    parts = list(iter_results(out_dir))
    if not parts:
        raise DataError(f"{out_dir}: no result parts (part-*.parquet or part-*.npz) found")
    return {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}
