"""The job record `_job.json`: what a folder of results was computed from (the model's sha256, the options,
each input's size, modification time, rows and content digests: vae_infer.batch.pins). A re-run with the same
record resumes; a re-run with another one is refused with the differences, naming each changed input, so
results of two different jobs, or of two versions of one input, are never mixed in one folder. Records of
earlier versions (with `failures.jsonl` beside them) are refused: start such a job in a new folder."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ..atomic import atomic_write_bytes
from ..errors import InputError
from ..package.manifest import MANIFEST_NAME
from .options import BatchOptions
from .plan import InputFile

JOB_FILE = "_job.json"
JOB_VERSION = 2  # 2: content digests of the inputs, side files named _*


def model_sha256(package: str | Path) -> str:
    """The package's identity: the sha256 of its model.json, which holds the sha256 of every other file."""
    return hashlib.sha256((Path(package) / MANIFEST_NAME).read_bytes()).hexdigest()


def job_record(package: str | Path, options: BatchOptions, inputs: Sequence[InputFile]) -> dict[str, Any]:
    return {
        "version": JOB_VERSION,
        "model": {"sha256": model_sha256(package), "path": str(package)},
        "options": options.to_dict(),
        "inputs": [inp.record() for inp in inputs],
    }


def job_id(record: dict[str, Any]) -> str:
    """A digest of what the results depend on (not where the model lies): written into every part."""
    inputs = [{k: v for k, v in i.items() if k != "mtime_ns"} for i in record["inputs"]]  # contents, not dates
    key = {k: v for k, v in record.items() if k not in ("model", "inputs")} | {
        "model": record["model"]["sha256"], "inputs": inputs}
    return hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()


def differences(old: dict[str, Any], new: dict[str, Any]) -> list[str]:
    """What changed between two job records, in words; [] when they describe the same job."""
    out = []
    if old.get("version") != new["version"]:
        return [f"it was written by another version of vae-infer (record version {old.get('version')!r}, this "
                f"one writes {new['version']})"]
    if old["model"]["sha256"] != new["model"]["sha256"]:
        out.append(f"the model changed (sha256 {old['model']['sha256'][:12]}... -> {new['model']['sha256'][:12]}...)")
    for key in sorted(set(old["options"]) | set(new["options"])):
        a, b = old["options"].get(key), new["options"].get(key)
        if a != b:
            out.append(f"option {key} changed ({a!r} -> {b!r})")
    before = {i["source"]: i for i in old["inputs"]}
    after = {i["source"]: i for i in new["inputs"]}
    for src in after:
        if src not in before:
            out.append(f"input {src} was added")
        else:
            changed = [f"{k} {before[src][k]} -> {after[src][k]}" for k in ("size", "mtime_ns", "rows")
                       if before[src][k] != after[src][k]]
            if before[src].get("sha256") != after[src]["sha256"] or before[src].get("pins") != after[src]["pins"]:
                changed.append(f"content sha256 {str(before[src].get('sha256'))[:12]}... -> "
                               f"{str(after[src]['sha256'])[:12]}...")
            if changed:
                out.append(f"input {src} changed ({', '.join(changed)}); the parts there "
                           f"were computed from its old contents")
    out += [f"input {src} was removed" for src in before if src not in after]
    if not out and [i["source"] for i in old["inputs"]] != [i["source"] for i in new["inputs"]]:
        out.append("the inputs are listed in another order")
    return out


def open_job(out_dir: str | Path, record: dict[str, Any]) -> bool:
    """Write the record into out_dir, or check it against the one there. True when resuming an earlier run."""
    path = Path(out_dir) / JOB_FILE
    if path.exists():
        try:
            old = json.loads(path.read_text())
            changes = differences(old, record)
        except (OSError, ValueError, KeyError, TypeError) as e:
            raise InputError(f"{path} cannot be read ({e}); use a new --out folder or delete {out_dir}") from e
        if changes:
            raise InputError(f"{out_dir} holds the results of another job ({JOB_FILE} differs: {'; '.join(changes)}); "
                             f"use a new --out folder, or delete {out_dir} to start over")
        return True
    atomic_write_bytes(path, (json.dumps(record, indent=1) + "\n").encode())
    return False
