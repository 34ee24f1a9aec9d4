"""Inputs given as URIs (s3://, gs://, file://, ...) on Ray: read by Ray Data's own readers on the workers,
mapped by vae_infer.ray.map_model, written by the workers with write_parquet to --out (a folder or a URI).

No `_job.json` and no resume here: the parts are Ray Data's, not verified ones; for resumable jobs give paths
on a shared file system. Ray Data gives rows no index, so only deterministic outputs can be asked for (mu,
logvar, and the scores recon, mse, excess, dose; flag when the calibrated kind is one of them)."""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Sequence
from pathlib import Path

from ..anomaly.scores import STOCHASTIC_KINDS
from ..errors import InputError, VaeInferError
from .options import BatchOptions


def is_uri(text: str) -> bool:
    return "://" in str(text)


def _reader(ray, uris: Sequence[str]):
    """One Ray dataset with the images in "data" and the file each row came from in "source"."""
    heads = {u.rsplit(":", 1)[0] if u.rsplit(":", 1)[0].lower().endswith(".parquet") else u for u in uris}
    keys = {u.rsplit(":", 1)[1] for u in uris if u.rsplit(":", 1)[0].lower().endswith(".parquet")}
    suffixes = {h.rsplit(".", 1)[-1].lower() for h in heads}
    if suffixes == {"npy"}:
        return ray.data.read_numpy(sorted(heads), include_paths=True).rename_columns({"path": "source"})
    if suffixes == {"parquet"} and len(keys) == 1:
        column = keys.pop()
        ds = ray.data.read_parquet(sorted(heads), columns=[column], include_paths=True)
        return ds.rename_columns({"path": "source", **({column: "data"} if column != "data" else {})})
    raise InputError(f"URIs on Ray: expected .npy files or FILE.parquet:COLUMN (one column name for all), got "
                     f"{', '.join(sorted(uris))}")


def run_uris(package: str | Path, uris: Sequence[str], out: str, options: BatchOptions, *,
             address: str | None = None, concurrency: int = 2, num_cpus: float | None = None,
             threads: int | None = None, timeout_s: float | None = None, log: str | Path | None = None) -> dict:
    """Map the model over URIs with Ray Data and write Parquet from the workers; returns {"out", "seconds"}."""
    from .. import ray as vray
    from ..package.files import read_manifest

    kinds = {options.kind} if "score" in options.outputs else set()
    if "flag" in options.outputs:
        cal = read_manifest(package).calibration or {}
        kinds.add(cal.get("default_kind", "dose"))
    sampled = sorted(kinds & set(STOCHASTIC_KINDS))
    if sampled:
        raise InputError(f"the sampled score {sampled[0]!r} keys its noise by each row's index, which Ray Data's "
                         f"readers do not give: pick a deterministic --kind (recon, mse, excess, dose) for URIs, or "
                         f"give paths on a shared file system")
    t0 = time.perf_counter()
    with vray.connect(address, log=log) as ray:
        ray.data.DataContext.get_current().enable_progress_bars = False
        ds = vray.map_model(_reader(ray, uris), package, options.outputs, kind=options.kind,
                            samples=options.asked_samples, seed=options.seed, concurrency=concurrency,
                            num_cpus=num_cpus, threads=threads)
        done: queue.Queue = queue.Queue()

        def write() -> None:
            try:
                ds.write_parquet(str(out))
                done.put(None)
            except BaseException as e:  # handed to the caller
                done.put(e)

        threading.Thread(target=write, daemon=True, name="vae-infer-ray-write").start()
        try:
            error = done.get(timeout=timeout_s)
        except queue.Empty:
            raise VaeInferError(f"the Ray job did not finish within {timeout_s:g} s") from None
        if error is not None:
            raise VaeInferError(f"the Ray job failed: {str(error).strip().splitlines()[-1]}") from error
    return {"out": str(out), "seconds": time.perf_counter() - t0}
