"""Batch inference on Ray Data: `map_model` adds the model's outputs to any Ray dataset of images.

    import ray, vae_infer.ray
    ds = ray.data.read_numpy("s3://bucket/shards/")                  # any Ray Data source; images in "data"
    out = vae_infer.ray.map_model(ds, "models/fashion-mnist", outputs=["mu", "score"], concurrency=8)
    out.write_parquet("s3://bucket/results/")

A callable class loads the model once per actor and computes each batch with the same core as the local
engine (vae_infer.batch.core). The package travels by value: its files are read and verified here, put in
Ray's object store once, and every actor checks the sha256 of model.json (which holds the sha256 of every
other file, checked when the model loads) before it writes them to a private temporary folder. So workers on
other nodes need no shared disk, only the `ray` extra. Needs `pip install 'vae-infer[ray]'`."""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import sys
import tempfile
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from .anomaly.scores import STOCHASTIC_KINDS
from .errors import InputError, MissingExtraError, ModelPackageError, VaeInferError
from .package.manifest import MANIFEST_NAME

DEFAULT_COLUMN = "data"  # the column ray.data.read_numpy and from_numpy put arrays in
DEFAULT_BATCH_ROWS = 4096
READ_CPUS = 1.0  # CPUs the default actor size leaves free for Ray Data's read tasks (each asks for one)
# row ranges to read (vae_infer.batch's Ray engine): the part's rows [origin, end) and its pins (comma-joined)
RANGE_COLUMNS = ("task", "source", "start", "stop", "step", "origin", "end", "pins")


def require_ray():
    try:
        import ray
        import ray.data  # noqa: F401
    except ImportError as e:
        raise MissingExtraError("the Ray engine needs Ray Data, which is not installed; install it with: "
                                "pip install 'vae-infer[ray]'") from e
    return ray


def package_payload(package: str | Path) -> tuple[dict[str, bytes], str]:
    """({file name: bytes} of the package, verified, and the sha256 of its model.json)."""
    from .package.files import read_manifest, read_verified

    package = Path(package)
    manifest = read_manifest(package)
    files = {name: read_verified(package, manifest, name) for name in manifest.files}
    files[MANIFEST_NAME] = (package / MANIFEST_NAME).read_bytes()
    return files, hashlib.sha256(files[MANIFEST_NAME]).hexdigest()


def _fetch(payload: Any) -> dict[str, bytes]:
    ray = require_ray()
    while isinstance(payload, (list, tuple)) or isinstance(payload, ray.ObjectRef):
        payload = ray.get(payload) if isinstance(payload, ray.ObjectRef) else payload[0]
    return payload


class ModelMapper:
    """The callable class of map_batches: one model per actor, loaded from the shipped package bytes.

    A batch is either images (column `column`; the other columns pass through, and `source`/`path` and `row`
    columns key the noise of sampled scores) or row ranges to read (columns task, source, start, stop), which
    the Ray engine of vae_infer.batch uses so that only output columns cross the object store."""

    def __init__(self, payload: Any, sha256: str, options: dict, threads: int | None, column: str,
                 with_node: bool = False) -> None:
        from .batch.core import ChunkComputer
        from .batch.options import BatchOptions
        from .model import load

        files = _fetch(payload)
        got = hashlib.sha256(files.get(MANIFEST_NAME, b"")).hexdigest()
        if got != sha256:
            raise ModelPackageError(f"the model package shipped to this worker has model.json sha256 {got[:16]}..., "
                                    f"expected {sha256[:16]}...; it was damaged on the way")
        self.folder = Path(tempfile.mkdtemp(prefix="vae-infer-model-"))
        for name, data in files.items():
            (self.folder / name).write_bytes(data)
        self.model = load(self.folder, threads=threads)  # verifies every graph against model.json
        self.options = BatchOptions.from_dict(options)
        self.computer = ChunkComputer(self.model, self.options)
        self.column, self.with_node = column, with_node
        self.sources: dict[str, Any] = {}
        self.node = require_ray().get_runtime_context().get_node_id()

    def __del__(self) -> None:
        shutil.rmtree(getattr(self, "folder", ""), ignore_errors=True)

    def __call__(self, batch: dict[str, np.ndarray]):
        if self.column not in batch and all(c in batch for c in RANGE_COLUMNS):
            return self._ranges(batch)
        if self.column not in batch:
            raise InputError(f"the dataset has no column {self.column!r} of images (it has {', '.join(batch)}); "
                             f"pass column=... to map_model")
        images = np.asarray(batch[self.column])
        n = len(images)
        if n == 0:
            return batch
        sources = batch.get("source", batch.get("path"))
        rows = batch.get("row")
        kinds = ({self.options.kind} if "score" in self.options.outputs else set()) | (
            {self.computer.flag[0]} if self.computer.flag else set())
        sampled = sorted(kinds & set(STOCHASTIC_KINDS))
        if sampled and rows is None:
            raise InputError(f"the sampled score {sampled[0]!r} keys its noise by each row's index: add a 'row' "
                             f"column (and 'source' or 'path'), or pick a deterministic kind")
        out = {k: v for k, v in batch.items() if k != self.column}
        if rows is None:
            cols = self.computer.columns(images, "", 0)
            cols.pop("row")
            out.update(cols)
        else:  # rows of one source at a time, so each keeps its (source, row) noise key
            keys = np.asarray(sources if sources is not None else np.full(n, ""), dtype=str)
            pieces = []
            for src in dict.fromkeys(keys.tolist()):
                idx = np.nonzero(keys == src)[0]
                pieces.append((idx, self.computer.columns(images[idx], src, np.asarray(rows)[idx])))
            for name in pieces[0][1]:
                if name == "row":
                    continue
                first = pieces[0][1][name]
                col = np.empty((n, *first.shape[1:]), first.dtype)
                for idx, cols in pieces:
                    col[idx] = cols[name]
                out[name] = col
        if self.with_node:
            out["node_id"] = np.full(n, self.node, dtype=object)
        return out

    def _ranges(self, batch: dict[str, np.ndarray]):
        """Each (task, source, start, stop, step) row: the range read and computed `step` rows at a time, as one
        Arrow table (task, row, outputs, error). A range whose rows the model refuses ends with one row whose
        `error` says why (its `row` is where the refused step starts); `error` is null everywhere else. Arrow
        rather than numpy object arrays: strings per row would cost more than the encoder."""
        import pyarrow as pa

        from .batch.pins import CHANGED, read_checked
        from .batch.plan import open_input
        from .batch.readers import InputChanged

        latent = self.model.latent_size
        tables = []
        for task, source, start, stop, step, origin, end, pins in zip(*(batch[c] for c in RANGE_COLUMNS),
                                                                      strict=True):
            source = str(source)
            start, stop, step, origin, end = (int(v) for v in (start, stop, step, origin, end))
            pins = tuple(str(pins).split(","))
            pieces, error = [], None
            for s in range(start, stop, step):
                try:
                    if source not in self.sources:
                        for old in self.sources.values():
                            old.close()
                        self.sources = {source: open_input(source, self.model.image_shape)}  # one input open
                    block = read_checked(self.sources[source], s, min(s + step, stop), origin, end, pins)
                    pieces.append(self.computer.columns(block, source, s))
                except (VaeInferError, OSError, ValueError) as e:
                    pieces.append(self._placeholder(s, latent))
                    error = (CHANGED if isinstance(e, InputChanged) else "") + (str(e) or type(e).__name__)
                    break
            cols = {k: np.concatenate([p[k] for p in pieces]) for k in pieces[0]}
            n = len(cols["row"])
            arrays = {"task": pa.array(np.full(n, task, np.int64)), "row": pa.array(cols["row"])}
            for name in self.options.outputs:
                v = cols[name]
                arrays[name] = (pa.FixedSizeListArray.from_arrays(pa.array(v.reshape(-1)), v.shape[1]) if v.ndim == 2
                                else pa.array(v))
            arrays["error"] = pa.nulls(n, pa.string()) if error is None else pa.array([None] * (n - 1) + [error])
            tables.append(pa.table(arrays))
        return pa.concat_tables(tables)

    def _placeholder(self, start: int, latent: int) -> dict[str, np.ndarray]:
        """One row standing for a task that failed, with the same columns as a good one (error says why)."""
        cols: dict[str, np.ndarray] = {"row": np.array([start], np.int64)}
        zeros: dict[str, np.ndarray] = {"mu": np.zeros((1, latent), np.float32),
                                        "logvar": np.zeros((1, latent), np.float32), "score": np.zeros(1),
                                        "flag": np.zeros(1, bool)}
        for name in self.options.outputs:
            cols[name] = zeros[name]
        return cols


def default_num_cpus(concurrency: int) -> float:
    """CPUs reserved per actor, so that Ray Data's read tasks always get their share. A read task asks for a
    whole CPU on one node, and its request counts as much as an actor's: actors that hold 1.5 of 2 CPUs, or
    half of each of two 1-CPU nodes, starve the reads and the job never moves (docs/batch.md). So: one CPU per
    actor when the cluster keeps a whole CPU free beside them (whole-CPU actors leave whole CPUs free on some
    node); on a single node, an equal share of what is left after one CPU; else (a small cluster of several
    nodes) nothing reserved, and the actors share the CPUs with the reads."""
    ray = require_ray()
    cpus = float(ray.cluster_resources().get("CPU", 1.0))
    if concurrency + READ_CPUS <= cpus:
        return 1.0
    nodes = [n for n in ray.nodes() if n.get("Alive") and n.get("Resources", {}).get("CPU", 0) > 0]
    if len(nodes) == 1 and cpus > READ_CPUS:
        return round((cpus - READ_CPUS) / concurrency, 2)
    return 0.0


def map_model(ds, package: str | Path, outputs: Sequence[str] = ("mu", "logvar"), *, kind: str = "nelbo",
              samples: int | None = None, seed: int = 0, column: str = DEFAULT_COLUMN, concurrency: int = 2,
              num_cpus: float | None = None, threads: int | None = None, batch_size: int | None = DEFAULT_BATCH_ROWS,
              with_node: bool = False, **ray_remote_args: Any):
    """The dataset with the model's outputs added (mu, logvar, score, flag: as `vae-infer batch`), lazily.

    ds: a Ray dataset with images in `column` ((h, w) or (h*w,) per row, uint8 or floats in [0, 1]); its other
    columns pass through. Sampled scores (kind nelbo, iwae, ic) need `row` (and `source` or `path`) columns:
    their noise is keyed by (seed, source, row), as in vae_infer.batch. concurrency: actors; num_cpus: CPUs
    reserved per actor (default: default_num_cpus); threads: onnxruntime threads per actor (default: the
    reserved CPUs, at least one); batch_size: rows per call; with_node: add a node_id column (the Ray node that
    computed each row, to see how the work spread). ray_remote_args go to map_batches
    (resources=..., scheduling_strategy=...)."""
    ray = require_ray()
    from .batch.core import check_model_for
    from .batch.options import BatchOptions
    from .package.files import read_manifest

    options = BatchOptions(outputs=tuple(outputs), kind=kind, samples=samples, seed=seed)
    check_model_for(read_manifest(package), package, options)
    payload, digest = package_payload(package)
    ref = ray.put(payload)
    if num_cpus is None:
        num_cpus = default_num_cpus(concurrency)
    threads = threads or max(1, int(round(num_cpus)))
    args = ([ref], digest, options.to_dict(), threads, column, with_node)  # [ref]: fetched in the actor, not here
    pool = ray.data.ActorPoolStrategy(size=concurrency)
    return ds.map_batches(ModelMapper, fn_constructor_args=args, compute=pool, num_cpus=num_cpus,
                          batch_size=batch_size, batch_format="numpy",
                          **ray_remote_args)


@contextlib.contextmanager
def connect(address: str | None = None, num_cpus: int | None = None, log: str | Path | None = None
            ) -> Iterator[Any]:
    """Ray for the length of a job: the cluster this process is already connected to; or the one at `address`
    (an existing cluster: "auto", "ray://host:10001", "host:6379"; its token, when token authentication is on,
    comes from RAY_AUTH_TOKEN, RAY_AUTH_TOKEN_PATH or ~/.ray/auth_token); or a local one started now and shut
    down afterwards. log: a file that receives what Ray itself prints (its Python log lines and its C++ core's,
    which write to the process's stderr) for the length of the job; None shows them."""
    ray = require_ray()
    with _ray_output_to(log):
        if ray.is_initialized():
            yield ray
            return
        try:
            if address:
                ray.init(address=address, log_to_driver=False)
            else:
                ray.init(num_cpus=num_cpus, include_dashboard=False, log_to_driver=False)
        except (ConnectionError, RuntimeError, ValueError) as e:
            where = f"the Ray cluster at {address}" if address else "a local Ray cluster"
            raise VaeInferError(f"cannot start or reach {where}: {e}") from e
        try:
            yield ray
        finally:
            ray.shutdown()


@contextlib.contextmanager
def _ray_output_to(log: str | Path | None) -> Iterator[None]:
    """File descriptor 2 (where Ray's loggers and its C++ core write, in this process and in the processes it
    starts) goes to `log`; sys.stderr, for this program's own messages and progress, stays on the terminal."""
    if log is None:
        yield
        return
    sys.stderr.flush()
    target = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    saved = os.dup(2)
    ours = os.fdopen(os.dup(saved), "w", buffering=1, encoding=getattr(sys.stderr, "encoding", None) or "utf-8",
                     errors="replace")
    old_stderr = sys.stderr
    os.dup2(target, 2)
    os.close(target)
    sys.stderr = ours
    try:
        yield
    finally:
        sys.stderr = old_stderr
        ours.close()
        os.dup2(saved, 2)
        os.close(saved)
