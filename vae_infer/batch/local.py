"""The local engine: tasks computed by one loaded model in this process, or by N worker processes (each one
onnxruntime session with cores/N threads). Results come back in task order with a bounded number of tasks in
flight, so memory stays bounded whatever the input size: inputs are read one range at a time (never
memory-mapped: vae_infer.batch.readers), each range checked against the input's pins before it is computed
(vae_infer.batch.pins), and only output columns (a few dozen bytes a row) cross between processes."""

from __future__ import annotations

import multiprocessing as mp
import os
import queue
from collections.abc import Generator, Iterator, Sequence
from pathlib import Path

from ..data.rows import RowSource
from ..errors import VaeInferError
from ..machine import available_cores
from .core import ChunkComputer, Columns
from .options import BatchOptions
from .pins import CHANGED, read_checked
from .plan import Task, open_input
from .readers import InputChanged

IN_FLIGHT_PER_WORKER = 2  # tasks queued per worker: one computing, one ready, so no worker waits on the parent
OPEN_SOURCES = 4  # inputs kept open per process (a job may have thousands of files)
Pins = dict[int, "tuple[str, ...]"]  # part id -> the digests of its blocks
Result = tuple[Task, "Columns | str"]  # output columns, or the problem with these rows as one line


class TaskRunner:
    """One model and the inputs it reads: computes a task's columns, or says what is wrong with its rows."""

    def __init__(self, package: str | Path, options: BatchOptions, threads: int | None) -> None:
        from ..model import load

        self.model = load(package, threads=threads)
        self.computer = ChunkComputer(self.model, options)
        self.sources: dict[str, RowSource] = {}

    def run(self, spec: str, start: int, stop: int, origin: int, end: int, pins: tuple[str, ...]) -> Columns | str:
        """Rows [start, stop) of the part [origin, end) of `spec`, checked against its pins, computed."""
        try:
            if spec not in self.sources:
                if len(self.sources) >= OPEN_SOURCES:
                    self.sources.pop(next(iter(self.sources))).close()
                self.sources[spec] = open_input(spec, self.model.image_shape)
            block = read_checked(self.sources[spec], start, stop, origin, end, pins)
            return self.computer.columns(block, spec, start)
        except InputChanged as e:
            return f"{CHANGED}{e}"
        except VaeInferError as e:
            return str(e)
        except (OSError, ValueError) as e:
            return f"{type(e).__name__}: {e}"


def run_local(package: str | Path, options: BatchOptions, tasks: Sequence[Task], specs: Sequence[str], pins: Pins,
              workers: int = 1, threads: int | None = None) -> Generator[Result, None, None]:
    """(task, columns or problem) for every task, in the order given."""
    if not tasks:  # everything was done by an earlier run: load nothing, start nothing
        return
    if workers <= 1:
        runner = TaskRunner(package, options, threads)
        for t in tasks:
            yield t, runner.run(specs[t.input], t.start, t.stop, t.origin, t.end, pins[t.part])
        return
    yield from _run_workers(package, options, tasks, specs, pins, workers, threads)


def _run_workers(package, options, tasks, specs, pins: Pins, workers: int, threads: int | None) -> Iterator[Result]:
    ctx = mp.get_context("spawn")  # no fork: the parent may hold onnxruntime threads and open files
    per_worker = threads or max(1, available_cores() // workers)
    todo, done = ctx.Queue(), ctx.Queue()
    procs = [ctx.Process(target=_worker_main, args=(str(package), options.to_dict(), per_worker, todo, done),
                         daemon=True) for _ in range(workers)]
    for p in procs:
        p.start()
    finished = False
    try:
        sent, ready = 0, {}
        window = IN_FLIGHT_PER_WORKER * workers
        next_out = 0
        while next_out < len(tasks):
            while sent < len(tasks) and sent - next_out < window:
                t = tasks[sent]
                todo.put((t.id, specs[t.input], t.start, t.stop, t.origin, t.end, pins[t.part]))
                sent += 1
            while tasks[next_out].id not in ready:
                try:
                    tid, result = done.get(timeout=1.0)
                except queue.Empty:
                    dead = [p for p in procs if not p.is_alive()]
                    if dead:
                        raise VaeInferError(f"a worker process died (exit code {dead[0].exitcode}); the parts "
                                            f"written so far are kept: run the job again to resume") from None
                    continue
                if isinstance(result, BaseException):
                    raise result
                ready[tid] = result
            t = tasks[next_out]
            yield t, ready.pop(t.id)
            next_out += 1
        finished = True
    finally:
        for p in procs:
            if finished:
                todo.put(None)
            else:  # stopped early (a bad shard, an interrupt): queued tasks are not wanted
                p.kill()
        for p in procs:
            p.join(timeout=10)
            if p.is_alive():
                p.kill()


def _worker_main(package: str, options: dict, threads: int, todo, done) -> None:
    parent = os.getppid()
    try:
        runner = TaskRunner(package, BatchOptions.from_dict(options), threads)
    except VaeInferError as e:
        done.put((-1, e))
        return
    while True:
        try:
            item = todo.get(timeout=1.0)
        except queue.Empty:
            if os.getppid() != parent:  # the parent was killed: nobody will read our results
                return
            continue
        if item is None:
            return
        tid, *task = item
        done.put((tid, runner.run(*task)))
