"""A JSON request body read without building a Python object per number: numbers go straight into numpy.

simdjson parses the body into its own compact tape (C, no Python objects); the array fields (images, z, image_a,
...) are copied out of it with `as_buffer` as one float64 buffer, which refuses anything that is not a number
(strings, booleans, null: exact types, as the Python API's); the few other fields are plain scalars checked by
pydantic in strict mode ("3" is not 3, true is not 1). `as_buffer` flattens nested arrays, so the shape is checked
apart: the body's brackets and commas (every other byte dropped) must be exactly those of a regular array of the
shape read off the first row, which refuses ragged rows and deeper nesting at C speed.

Cost, measured (benchmarks/serve.md): about 10 ms per MiB of body at worst ("0,0,0,..."), all of it holding the
GIL, hence the lower cap on JSON bodies (ServeConfig.max_json_bytes; larger batches go as .npy). Peak memory: the
body, simdjson's tape (up to 8 bytes per body byte for "0,0,..."), the float64 values (up to 4 per body byte) and
a bracket skeleton: measured about 18 times the body at worst, up to the model's float32 input (docs/server.md)."""

from __future__ import annotations

from typing import Any, TypeVar

import numpy as np
from pydantic import BaseModel

from ..errors import InputError
from .errors import BadRequest, SchemaError

M = TypeVar("M", bound=BaseModel)

# The fields that hold arrays of numbers, with the numbers of dimensions each may have, and a placeholder of each
# depth that passes the schema's type check while the real values travel apart as numpy arrays.
# Images of a colour model may come as (n, h, w, 3) (one image: (h, w, 3)): channels last.
ARRAY_FIELDS: dict[str, tuple[int, ...]] = {"images": (2, 3, 4), "z": (2,), "image_a": (1, 2, 3),
                                            "image_b": (1, 2, 3), "z_a": (1,), "z_b": (1,)}
PLACEHOLDER = {1: [0.0], 2: [[0.0]], 3: [[[0.0]]], 4: [[[[0.0]]]]}
STRUCTURE = b"[],"
_DROP = bytes(b for b in range(256) if b not in STRUCTURE)  # every byte but brackets and commas
LOCATE_LIMIT = 4096  # values scanned to name the first bad one; past that the error names its row only


def read_json(body: bytes, model: type[M]) -> tuple[M, dict[str, np.ndarray]]:
    """(the request's scalar fields checked by `model` in strict mode, {array field: float64 array})."""
    import simdjson

    parser = simdjson.Parser()
    try:
        doc = parser.parse(body or b"{}")
    except (ValueError, RuntimeError) as e:  # simdjson's TAPE_ERROR, DEPTH_ERROR, NUMBER_ERROR, BIGINT_ERROR...
        if b"NaN" in body or b"Infinity" in body:
            raise InputError("the body holds NaN or inf, which JSON has no numbers for (and the model takes only "
                             "finite values): send finite numbers") from None
        raise BadRequest(f"the body is not valid JSON, or holds a number outside float64 (1e309) or int64: "
                         f"{_simdjson_reason(e)}") from None
    if not isinstance(doc, simdjson.Object):
        raise SchemaError(f"body: expected a JSON object with the fields of {model.__name__}, got "
                          f"{_kind(doc)}")
    keys = list(doc.keys())
    if len(set(keys)) != len(keys):
        raise SchemaError(f"body: a field is given twice ({', '.join(sorted({k for k in keys if keys.count(k) > 1}))})")
    fields = model.model_fields
    unknown = [k for k in keys if k not in fields]
    if unknown:
        raise SchemaError("; ".join(f"{k[:40]}: Extra inputs are not permitted" for k in unknown[:5]))
    scalars: dict[str, Any] = {}
    arrays: dict[str, Any] = {}
    for key in keys:
        try:
            value = doc[key]
        except (ValueError, RuntimeError) as e:  # an integer beyond 64 bits
            raise BadRequest(f"{key}: {_simdjson_reason(e)}") from None
        if key in ARRAY_FIELDS:
            if isinstance(value, simdjson.Array):
                arrays[key] = value
            elif value is not None:
                raise SchemaError(f"{key}: expected an array of numbers, got {_kind(value)}")
            continue
        if isinstance(value, (simdjson.Array, simdjson.Object)):
            raise SchemaError(f"{key}: expected a single value, got {_kind(value)}")
        if isinstance(value, str) and any(c in value for c in "[],"):
            raise SchemaError(f"{key}: no option value holds brackets or commas")
        scalars[key] = value
    shapes = {key: _shape(key, value) for key, value in arrays.items()}
    depth = {k: max(len(s), min(ARRAY_FIELDS[k])) for k, s in shapes.items()}
    parsed = model.model_validate({**scalars, **{k: PLACEHOLDER[d] for k, d in depth.items()}}, strict=True)
    values = {key: _numbers(key, value) for key, value in arrays.items()}
    want = b",".join(_skeleton(shapes[k]) if k in arrays else b"" for k in keys)
    # the skeleton alone cannot tell [] from [x]: the count of numbers settles it
    if body.translate(None, _DROP) != want or any(values[k].size != np.prod(shapes[k]) for k in arrays):
        names = " or ".join(arrays)
        raise InputError(f"{names}: expected rows of equal length holding numbers only, with the shape of their "
                         f"first rows {' and '.join(str(s) for s in shapes.values())}; got ragged rows or deeper "
                         f"nesting")
    return parsed, {k: values[k].reshape(shapes[k]) for k in arrays}


def _shape(key: str, arr) -> tuple[int, ...]:
    """The shape read off the first element at each depth, up to the deepest the field may have."""
    import simdjson

    shape = []
    node = arr
    while isinstance(node, simdjson.Array):
        shape.append(len(node))
        if len(shape) > max(ARRAY_FIELDS[key]):
            raise InputError(f"{key}: expected rows of equal length holding numbers only, nested "
                             f"{' or '.join(map(str, ARRAY_FIELDS[key]))} deep; got deeper nesting")
        if not len(node):
            break
        node = node[0]
    return tuple(shape)


def _numbers(key: str, arr) -> np.ndarray:
    try:
        return np.frombuffer(arr.as_buffer(of_type="d"), dtype=np.float64)
    except (TypeError, ValueError, RuntimeError):
        raise SchemaError(f"{_locate(key, arr)}: expected a number (no strings, booleans or nulls)") from None


def _locate(key: str, arr) -> str:
    """Where the first value that is not a number is, e.g. "z.0.1", within a bounded scan."""
    import simdjson

    path, node, budget = [key], arr, LOCATE_LIMIT
    while isinstance(node, simdjson.Array):
        for i, item in enumerate(node):
            budget -= 1
            if budget < 0:
                return ".".join(path)
            if isinstance(item, simdjson.Array):
                try:
                    item.as_buffer(of_type="d")
                    continue
                except (TypeError, ValueError, RuntimeError):
                    path.append(str(i))
                    node = item
                    break
            if isinstance(item, bool) or not isinstance(item, (int, float)):
                path.append(str(i))
                return ".".join(path)
        else:
            return ".".join(path)
    return ".".join(path)


def _skeleton(shape: tuple[int, ...]) -> bytes:
    """The brackets and commas of a regular array of this shape: (2, 3) -> b"[[,,],[,,]]"."""
    if not shape:
        return b""
    inner = _skeleton(shape[1:]) if len(shape) > 1 else b""
    if shape[0] == 0:
        return b"[]"
    return b"[" + b",".join([inner] * shape[0]) + b"]"


def _kind(value) -> str:
    import simdjson

    if isinstance(value, simdjson.Array):
        return "an array"
    if isinstance(value, simdjson.Object):
        return "an object"
    if isinstance(value, bool):
        return "a boolean"
    if value is None:
        return "null"
    return f"a {type(value).__name__}"


def _simdjson_reason(e: Exception) -> str:
    return str(e).split(":", 1)[-1].strip() or type(e).__name__
