"""Request bodies in and responses out: JSON, or one .npy array in and an .npz out for large batches.

JSON bodies are read by jsonbody.py (numbers straight into numpy); replies are written with the standard json
module from numpy's tolist(): float32 values become the shortest decimal that reads back to the same float64, so
a client that parses them gets exactly our numbers."""

from __future__ import annotations

import io
import json
from typing import Any, TypeVar

import numpy as np
from pydantic import BaseModel

from ..errors import InputError
from .errors import BadRequest

JSON = "application/json"
NPY = "application/x-npy"
NPZ = "application/x-npz"
NPY_MAGIC = b"\x93NUMPY"
M = TypeVar("M", bound=BaseModel)
CHUNK_VALUES = 16_384  # numbers of a JSON reply written between two turns of the event loop (a few ms)


def is_npy(content_type: str | None) -> bool:
    return (content_type or "").split(";")[0].strip().lower() == NPY


def wants_npz(content_type: str | None, accept: str | None) -> bool:
    return is_npy(content_type) or NPZ in (accept or "").lower()


def parse_query(params: dict[str, str], model: type[M]) -> M:
    """The options of an .npy request, from the query string (pydantic converts "5" to 5 in this lax mode)."""
    return model.model_validate({k: (None if v in ("", "null") else v) for k, v in params.items()})


def read_npy(body: bytes) -> np.ndarray:
    """One array from an .npy body. Pickles are refused (allow_pickle=False): an .npy from a stranger must not
    run code here."""
    if not body.startswith(NPY_MAGIC):
        raise BadRequest(f"a {NPY} body must be one array in numpy's .npy format (np.save), starting with "
                         f"\\x93NUMPY; got {len(body)} bytes that do not")
    try:
        arr = np.load(io.BytesIO(body), allow_pickle=False)
    except Exception as e:  # numpy raises ValueError, EOFError, OSError... for damaged headers or data
        raise BadRequest(f"cannot read the .npy body: {e}") from e
    if not isinstance(arr, np.ndarray):
        raise BadRequest(f"a {NPY} body must hold one array, got {type(arr).__name__}")
    return arr


def as_rows(values: Any, what: str, dtype: str = "float32") -> np.ndarray:
    """Nested JSON lists -> an array; dtype "uint8" checks that the numbers are integers 0..255 first."""
    try:
        arr = np.asarray(values, dtype=np.float64)
    except (ValueError, TypeError) as e:
        raise InputError(f"{what}: expected rows of equal length, got ragged nested lists ({e})") from None
    if dtype == "uint8":
        if arr.size and not (np.isfinite(arr).all() and (arr == np.round(arr)).all()
                             and arr.min() >= 0 and arr.max() <= 255):
            raise InputError(f"{what}: dtype uint8 needs integers 0..255; send floats in [0, 1] with dtype float32")
        return arr.astype(np.uint8)
    return arr


def encode_json(payload: dict[str, Any]) -> bytes:
    return b"{" + b",".join(json.dumps(k).encode() + b":" + _dumps(_plain(v)) for k, v in payload.items()) + b"}"


async def encode_json_yielding(payload: dict[str, Any]) -> bytes:
    """encode_json's bytes, written CHUNK_VALUES numbers at a time with the event loop free in between: a reply of
    4096 decoded images (3.2M numbers) would otherwise hold it for about a second."""
    import asyncio

    fields = []
    for key, value in payload.items():
        if isinstance(value, np.ndarray) and value.ndim >= 1 and value.size > CHUNK_VALUES:
            rows_per = max(1, CHUNK_VALUES // max(1, value[0].size))
            pieces = []
            for start in range(0, len(value), rows_per):
                pieces.append(_dumps(value[start:start + rows_per].tolist())[1:-1])
                await asyncio.sleep(0)
            text = b"[" + b",".join(pieces) + b"]"
        else:
            text = _dumps(_plain(value))
        fields.append(json.dumps(key).encode() + b":" + text)
    return b"{" + b",".join(fields) + b"}"


def _dumps(plain: Any) -> bytes:
    try:
        return json.dumps(plain, allow_nan=False, separators=(",", ":")).encode()
    except ValueError:  # an infinite score (an image the model gives probability 0): JSON has no inf, send null
        return json.dumps(_finite(plain), allow_nan=False, separators=(",", ":")).encode()


def encode_npz(payload: dict[str, Any]) -> bytes:
    buf = io.BytesIO()
    np.savez(buf, allow_pickle=False, **{k: np.asarray(v) for k, v in payload.items() if isinstance(v, np.ndarray)})
    return buf.getvalue()


def _finite(v: Any) -> Any:
    if isinstance(v, float):
        return v if np.isfinite(v) else None
    if isinstance(v, dict):
        return {k: _finite(x) for k, x in v.items()}
    if isinstance(v, list):
        return [_finite(x) for x in v]
    return v


def _plain(v: Any) -> Any:
    if isinstance(v, np.ndarray):
        return v.tolist()
    if isinstance(v, np.generic):
        return v.item()
    if isinstance(v, dict):
        return {k: _plain(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_plain(x) for x in v]
    return v
