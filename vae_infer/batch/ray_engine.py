"""The Ray engine of run_batch: the job's row ranges become a small Ray dataset (one row per task), the
callable class of vae_infer.ray reads each range on the worker and computes it, and only output columns come
back to this process, which writes the parts (so resuming and verifying work as with the local engine).
Input paths must be readable by every node (a shared file system); for object stores use vae_infer.ray.map_model
with a Ray Data reader and write_parquet (docs/batch.md)."""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np

from ..errors import VaeInferError
from .core import Columns
from .options import BatchOptions
from .plan import Task

RESULT_COLUMNS = ("row", "mu", "logvar", "score", "flag")
MAX_BLOCKS = 2000  # blocks of the task list: about one task each, so actors share the work evenly
_DONE = object()


def run_ray(package: str | Path, options: BatchOptions, tasks: Sequence[Task], specs: Sequence[str], *,
            address: str | None = None, concurrency: int = 2, num_cpus: float | None = None,
            threads: int | None = None, timeout_s: float | None = None,
            local_cpus: int | None = None) -> Iterator[tuple[Task, Columns | str]]:
    """(task, columns or problem) for every task, in order. timeout_s bounds the whole job (then VaeInferError)."""
    from .. import ray as vray

    if not tasks:
        return
    with vray.connect(address, num_cpus=local_cpus) as ray:
        ctx = ray.data.DataContext.get_current()
        ctx.execution_options.preserve_order = True  # results come back in task order: parts stay bounded
        ctx.enable_progress_bars = False
        items = [{"task": t.id, "source": specs[t.input], "start": t.start, "stop": t.stop} for t in tasks]
        ds = ray.data.from_items(items, override_num_blocks=min(len(items), MAX_BLOCKS))
        out = vray.map_model(ds, package, options.outputs, kind=options.kind, samples=options.samples,
                             seed=options.seed, concurrency=concurrency, num_cpus=num_cpus, threads=threads,
                             batch_size=1)
        by_id = {t.id: t for t in tasks}
        pending: dict[int, list[dict]] = {}
        counts: dict[int, int] = {}
        order = iter(tasks)
        want = next(order)
        for batch in _batches(out, timeout_s):
            ids = batch["task"]
            for tid in np.unique(ids):
                sel = ids == tid
                tid = int(tid)
                errors = [e for e in batch["error"][sel] if e]
                if errors:
                    pending[tid], counts[tid] = [errors[0]], by_id[tid].stop - by_id[tid].start
                    continue
                pending.setdefault(tid, []).append({k: batch[k][sel] for k in RESULT_COLUMNS if k in batch})
                counts[tid] = counts.get(tid, 0) + int(sel.sum())
            while want is not None and counts.get(want.id, 0) == want.stop - want.start:
                got = pending.pop(want.id)
                if isinstance(got[0], str):
                    yield want, got[0]
                else:
                    yield want, {k: np.concatenate([g[k] for g in got]) for k in got[0]}
                want = next(order, None)
        if want is not None:
            raise VaeInferError(f"the Ray job ended without the rows of {specs[want.input]} [{want.start}, "
                                f"{want.stop}); run the job again to resume")


def _batches(ds, timeout_s: float | None) -> Iterator[dict]:
    """ds.iter_batches, with a deadline: Ray Data waits silently when its tasks cannot be scheduled."""
    q: queue.Queue = queue.Queue(maxsize=8)

    def produce() -> None:
        try:
            for b in ds.iter_batches(batch_size=None, batch_format="numpy"):
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
