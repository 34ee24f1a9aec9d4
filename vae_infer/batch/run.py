"""run_batch: one job from input files to a results folder, on any engine.

    from vae_infer.batch import run_batch, BatchOptions
    summary = run_batch("models/fashion-mnist", ["data/shard-*.npy"], "results/",
                        BatchOptions(outputs=("mu", "logvar", "score")), workers=2)

The steps: expand and describe the inputs, write or check `_job.json`, plan parts and tasks, skip the parts
already complete and verified, let the engine compute the remaining tasks (in order), and write each part
atomically as its tasks come back. A bad shard stops the job with one line naming it (DataError), or with
skip_bad=True is recorded in failures.jsonl while the rest goes on; parts already written are never touched."""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

from ..errors import DataError, InputError
from ..package import read_manifest
from .core import Columns, check_model_for
from .job import job_id, job_record, open_job
from .options import CHUNK_ROWS, BatchOptions
from .parts import part_is_complete, part_meta, part_path, write_failures, write_part
from .plan import InputFile, Part, describe, expand, plan
from .progress import Progress

ENGINES = ("local", "ray")


@dataclasses.dataclass
class BatchSummary:
    out: str
    rows: int  # rows in the job (complete parts, reused or written)
    rows_computed: int  # rows computed by this run
    parts_written: int
    parts_reused: int
    failures: list[dict]
    seconds: float
    resumed: bool

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


class _BadRows(Exception):
    """A task's rows could not be computed: the part they belong to is abandoned."""


def run_batch(package: str | Path, inputs: Sequence[str | Path], out: str | Path,
              options: BatchOptions | None = None, *, engine: str = "local", workers: int = 1,
              threads: int | None = None, chunk_rows: int = CHUNK_ROWS, skip_bad: bool = False,
              progress: bool | None = None, ray_options: dict | None = None,
              on_rows: Callable[[int], None] | None = None) -> BatchSummary:
    """Run a batch job (module docstring). engine "local" (workers processes, threads each) or "ray"
    (vae_infer.batch.ray_engine; ray_options: address, concurrency, num_cpus, timeout_s). progress: the
    progress line on stderr (default: when stderr is a terminal); on_rows(n) is called as each task's n rows
    arrive (for a progress display of your own, or to time the start-up apart)."""
    t0 = time.perf_counter()
    options = options or BatchOptions()
    if engine not in ENGINES:
        raise InputError(f"engine must be one of {', '.join(ENGINES)}, got {engine!r}")
    if options.format == "parquet":  # a missing extra is said before any work
        from .parts import pyarrow_modules

        pyarrow_modules()
    if engine == "ray":
        from ..ray import require_ray

        require_ray()
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise InputError(f"--out {out} is a file; expected a folder for the result parts")
    manifest = read_manifest(package)
    check_model_for(manifest, package, options)
    if isinstance(inputs, (str, Path)):
        inputs = [inputs]
    described = [describe(spec, manifest.image_shape) for spec in expand(inputs)]
    failures: list[dict] = []
    for inp in described:
        if inp.error is not None:
            if not skip_bad:
                raise DataError(inp.error)
            failures.append({"source": inp.source, "start": None, "stop": None, "error": inp.error})
    record = job_record(package, options, described)
    resumed = open_job(out, record)
    job = job_id(record)
    specs = [inp.source for inp in described]
    parts, tasks = plan(described, options.part_rows, chunk_rows)
    todo_parts: list[Part] = []
    reused = 0
    for part in parts:
        meta = part_meta(job, part, specs[part.input])
        if part_is_complete(part_path(out, part, options.format), options.format, meta):
            reused += part.rows
        else:
            todo_parts.append(part)
    todo_tasks = [tasks[i] for p in todo_parts for i in p.tasks]
    total = sum(p.rows for p in parts)
    bar = Progress(total, done=reused, enabled=progress, on_rows=on_rows)
    if engine == "local":
        from .local import run_local

        results = run_local(package, options, todo_tasks, specs, workers=workers, threads=threads)
    else:
        from .ray_engine import run_ray

        results = run_ray(package, options, todo_tasks, specs, **(ray_options or {}))
    written = computed = 0
    try:
        for part in todo_parts:
            ok = _write_one(out, part, options.format, job, specs, results, bar, failures, skip_bad)
            written += ok
            computed += part.rows if ok else 0
    finally:
        results.close()  # stops the engine's workers if a bad shard ended the job early
        bar.close()
        write_failures(out, failures)
    done_rows = reused + computed
    return BatchSummary(str(out), done_rows, computed, written, len(parts) - len(todo_parts), failures,
                        time.perf_counter() - t0, resumed)


def _write_one(out: Path, part: Part, fmt: str, job: str, specs: list[str], results: Iterator,
               bar: Progress, failures: list[dict], skip_bad: bool) -> bool:
    """Write one part from the next len(part.tasks) results; False when its rows were bad (skip_bad)."""
    source = specs[part.input]
    taken = 0

    def blocks() -> Iterator[Columns]:
        nonlocal taken
        for _ in part.tasks:
            task, cols = next(results)
            taken += 1
            if isinstance(cols, str):
                raise _BadRows(task, cols)
            bar.update(task.stop - task.start)
            yield cols

    try:
        write_part(part_path(out, part, fmt), fmt, part_meta(job, part, source), blocks())
        return True
    except _BadRows as bad:
        task, problem = bad.args
        line = problem if source in problem else f"{source}: {problem}"
        if not skip_bad:
            raise DataError(f"{line} (rows {task.start}..{task.stop}; {_kept(out)})") from None
        failures.append({"source": source, "start": task.start, "stop": task.stop, "error": problem,
                         "part": part.name})
        for _ in range(len(part.tasks) - taken):  # the rest of this part's rows are not wanted
            next(results)
        return False


def _kept(out: Path) -> str:
    return f"parts already written in {out} are kept; fix or remove the file and run again, or pass --skip-bad"


__all__ = ["run_batch", "BatchSummary", "BatchOptions", "InputFile", "ENGINES"]
