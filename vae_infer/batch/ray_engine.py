"""The Ray engine of run_batch: the job's row ranges become a small Ray dataset (one row per task), the
callable class of vae_infer.ray reads each range on the worker and computes it, and only output columns come
back to this process, which writes the parts (so resuming and verifying work as with the local engine).
Input paths must be readable by every node (a shared file system); for object stores use vae_infer.ray.map_model
with a Ray Data reader and write_parquet (docs/batch.md)."""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Generator, Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from ..errors import VaeInferError
from .core import Columns
from .options import BatchOptions
from .plan import Task

if TYPE_CHECKING:
    import pyarrow as pa

MAX_BLOCKS = 2000  # blocks of the task list: about one group each, so actors share the work evenly
GROUP_ROWS = 65536  # rows per Ray call: 8 tasks of 8192 rows
_DONE = object()


def run_ray(package: str | Path, options: BatchOptions, tasks: Sequence[Task], specs: Sequence[str],
            pins: dict[int, tuple[str, ...]], *,
            address: str | None = None, concurrency: int = 2, num_cpus: float | None = None,
            threads: int | None = None, timeout_s: float | None = None,
            local_cpus: int | None = None, log: str | Path | None = None
            ) -> Generator[tuple[Task, Columns | str], None, None]:
    """(task, columns or problem) for every task, in order. timeout_s bounds the whole job (then VaeInferError).
    log: where Ray's own output goes (vae_infer.ray.connect; None shows it)."""
    from .. import ray as vray

    if not tasks:
        return
    groups = _groups(tasks)
    with vray.connect(address, num_cpus=local_cpus, log=log) as ray:
        ctx = ray.data.DataContext.get_current()
        ctx.execution_options.preserve_order = True  # results come back in task order: parts stay bounded
        ctx.enable_progress_bars = False
        items = [{"task": g, "source": specs[group[0].input], "start": group[0].start, "stop": group[-1].stop,
                  "step": group[0].stop - group[0].start, "origin": group[0].origin, "end": group[0].end,
                  "pins": ",".join(pins[group[0].part])} for g, group in enumerate(groups)]
        ds = ray.data.from_items(items, override_num_blocks=min(len(items), MAX_BLOCKS))
        out = vray.map_model(ds, package, options.outputs, kind=options.kind, samples=options.asked_samples,
                             seed=options.seed, concurrency=concurrency, num_cpus=num_cpus, threads=threads,
                             batch_size=1)
        pending: dict[int, list] = {}
        want = 0
        for table in _batches(out, timeout_s):
            ids = table.column("task").to_numpy()
            for g in np.unique(ids):
                idx = np.nonzero(ids == g)[0]
                pending.setdefault(int(g), []).append(table.take(idx) if len(idx) < len(ids) else table)
            while want < len(groups) and _complete(pending.get(want), groups[want]):
                yield from _split(pending.pop(want), groups[want])
                want += 1
        if want < len(groups):
            t = groups[want][0]
            raise VaeInferError(f"the Ray job ended without the rows of {specs[t.input]} [{t.start}, {t.stop}); "
                                f"run the job again to resume")


def _groups(tasks: Sequence[Task]) -> list[list[Task]]:
    """Consecutive tasks of one part, up to GROUP_ROWS rows: one Ray call each (fewer, bigger Ray tasks cost
    less scheduling), computed task by task inside the actor so memory stays that of one task."""
    groups: list[list[Task]] = []
    for t in tasks:
        g = groups[-1] if groups else None
        if g and t.part == g[0].part and t.start == g[-1].stop and t.stop - g[0].start <= GROUP_ROWS:
            g.append(t)
        else:
            groups.append([t])
    return groups


def _complete(tables: list | None, group: list[Task]) -> bool:
    if not tables:
        return False
    rows = sum(len(t) for t in tables)
    return rows == group[-1].stop - group[0].start or any(t.column("error").null_count < len(t) for t in tables)


def _split(tables: list, group: list[Task]) -> Iterator[tuple[Task, Columns | str]]:
    """The group's rows back as one result per task; a refused range fails its task (and skips the rest)."""
    import pyarrow as pa

    table = pa.concat_tables(tables).combine_chunks()
    errors = table.column("error")
    failed_at: int | None = None
    problem = ""  # the error of the row at failed_at
    if errors.null_count < len(table):
        i = int(np.nonzero(~np.asarray(errors.is_null()))[0][0])
        failed_at, problem = int(table.column("row")[i].as_py()), errors[i].as_py()
    cols: Columns = {}
    for name in table.column_names:
        if name in ("task", "error"):
            continue
        col = table.column(name).combine_chunks()
        cols[name] = (col.flatten().to_numpy().reshape(len(col), -1) if pa.types.is_fixed_size_list(col.type)
                      else col.to_numpy(zero_copy_only=False))
    base = group[0].start
    for t in group:
        if failed_at is not None and t.stop > failed_at:
            yield t, problem if t.start <= failed_at else "skipped: an earlier range of its part failed"
        else:
            yield t, {k: v[t.start - base : t.stop - base] for k, v in cols.items()}


def _batches(ds, timeout_s: float | None) -> Iterator[pa.Table]:
    """ds.iter_batches, with a deadline: Ray Data waits silently when its tasks cannot be scheduled."""
    q: queue.Queue = queue.Queue(maxsize=8)

    def produce() -> None:
        try:
            for b in ds.iter_batches(batch_size=None, batch_format="pyarrow"):
                q.put(b)
            q.put(_DONE)
        except BaseException as e:  # handed to the consumer, which raises it
            q.put(e)

    threading.Thread(target=produce, daemon=True, name="vae-infer-ray-results").start()
    deadline = None if timeout_s is None else time.monotonic() + timeout_s
    while True:
        wait = None if deadline is None else max(deadline - time.monotonic(), 0.001)
        try:
            item = q.get(timeout=wait)
        except queue.Empty:
            raise VaeInferError(f"the Ray job did not finish within {timeout_s:g} s; check that the cluster has "
                                f"CPUs free for the actors and the read tasks (ray status)") from None
        if item is _DONE:
            return
        if isinstance(item, BaseException):
            raise VaeInferError(f"the Ray job failed: {_first_line(item)}") from item
        yield item


def _first_line(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return text[-1] if text else type(e).__name__
