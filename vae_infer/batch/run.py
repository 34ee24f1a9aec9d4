"""run_batch: one job from input files to a results folder, on any engine.

    from vae_infer.batch import run_batch, BatchOptions
    summary = run_batch("models/fashion-mnist", ["data/shard-*.npy"], "results/",
                        BatchOptions(outputs=("mu", "logvar", "score")), workers=2)

The steps: take the folder's lock (vae_infer.batch.lock: one job per folder), expand and describe the
inputs, pin their contents (vae_infer.batch.pins), write or check `_job.json`, plan parts and tasks, skip the
parts already complete and verified, let the engine compute the remaining tasks (in order), and write each
part atomically as its tasks come back. A bad shard stops the job with one line naming it (DataError), or with
skip_bad=True is recorded in _failures.jsonl while the rest goes on; parts already written are never touched.
An input that changes while the job runs stops it whatever skip_bad says (InputChanged)."""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

from ..errors import DataError, InputError
from ..package.files import read_manifest
from .core import Columns, check_model_for
from .job import job_id, job_record, open_job
from .lock import folder_lock
from .options import CHUNK_ROWS, BatchOptions
from .parts import part_is_complete, part_meta, part_path, write_failures, write_part
from .pins import CHANGED
from .plan import InputFile, Part, describe, expand, pin, plan
from .progress import Progress
from .readers import InputChanged

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
              on_rows: Callable[[int], None] | None = None, pin_inputs: bool = True) -> BatchSummary:
    """Run a batch job (module docstring). engine "local" (workers processes, threads each) or "ray"
    (vae_infer.batch.ray_engine; ray_options: address, concurrency, num_cpus, timeout_s). progress: the
    progress line on stderr (default: when stderr is a terminal); on_rows(n) is called as each task's n rows
    arrive (for a progress display of your own, or to time the start-up apart). pin_inputs=False turns the
    content digests off (vae_infer.batch.pins): only to measure their cost; such a job cannot see an input
    that changes under it."""
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
    specs = expand(inputs)
    if any(_reads_images(spec) for spec in specs):  # the images extra, said before the folder is locked
        from ..data.preprocessing import pillow

        pillow()
    with folder_lock(out):
        return _run_locked(package, manifest, specs, out, options, engine, workers, threads, chunk_rows, skip_bad,
                           progress, ray_options, on_rows, t0, pin_inputs)


def _reads_images(spec: str) -> bool:
    """Whether an input is read with Pillow: a PNG or JPEG file, or a folder holding no IDX files."""
    from ..data.datasets import IMAGE_FILES, find_split_file
    from ..data.image_folder import is_image_file
    from ..data.sources import split_key

    file, _ = split_key(spec)
    if file.is_dir():
        return not any(find_split_file(file, stem) for stem in IMAGE_FILES.values())
    return is_image_file(file)


def _run_locked(package, manifest, specs, out: Path, options: BatchOptions, engine: str, workers: int,
                threads: int | None, chunk_rows: int, skip_bad: bool, progress, ray_options, on_rows,
                t0: float, pin_inputs: bool) -> BatchSummary:
    described = [pin(describe(spec, manifest.pixel_shape), manifest.pixel_shape, options.part_rows, pin_inputs)
                 for spec in specs]
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
    pins = {p.id: described[p.input].pins[p.start // options.part_rows] for p in parts}
    todo_parts: list[Part] = []
    reused = 0
    for part in parts:
        meta = part_meta(job, part, specs[part.input], pins[part.id])
        if part_is_complete(part_path(out, part, options.format), options.format, meta):
            reused += part.rows
        else:
            todo_parts.append(part)
    todo_tasks = [tasks[i] for p in todo_parts for i in p.tasks]
    total = sum(p.rows for p in parts)
    bar = Progress(total, done=reused, enabled=progress, on_rows=on_rows)
    if engine == "local":
        from .local import run_local

        results = run_local(package, options, todo_tasks, specs, pins, workers=workers, threads=threads)
    else:
        from .ray_engine import run_ray

        results = run_ray(package, options, todo_tasks, specs, pins, **(ray_options or {}))
    written = computed = 0
    try:
        for part in todo_parts:
            meta = part_meta(job, part, specs[part.input], pins[part.id])
            ok = _write_one(out, part, options.format, meta, results, bar, failures, skip_bad)
            written += ok
            computed += part.rows if ok else 0
    finally:
        results.close()  # stops the engine's workers if a bad shard ended the job early
        bar.close()
        write_failures(out, failures)
    done_rows = reused + computed
    return BatchSummary(str(out), done_rows, computed, written, len(parts) - len(todo_parts), failures,
                        time.perf_counter() - t0, resumed)


def _write_one(out: Path, part: Part, fmt: str, meta: dict, results: Iterator, bar: Progress,
               failures: list[dict], skip_bad: bool) -> bool:
    """Write one part from the next len(part.tasks) results; False when its rows were bad (skip_bad)."""
    source = meta["source"]
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
        write_part(part_path(out, part, fmt), fmt, meta, blocks())
        return True
    except _BadRows as bad:
        task, problem = bad.args
        if problem.startswith(CHANGED):  # never skipped: the rest of the job would mix two versions
            raise InputChanged(f"{problem[len(CHANGED):]}; the part holding these rows was not written, and "
                               f"{_kept(out).split(';')[0]}: run the job again in a new --out folder") from None
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
