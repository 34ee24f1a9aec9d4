"""The ABI of a generated library: the Sources it is made of, the generator's version, and the info string
that <prefix>_info() returns (what each function computes: the graph's sha256, its input and its outputs),
which the Python runner parses to match a library to a graph."""

from __future__ import annotations

import re
from dataclasses import dataclass
from urllib.parse import quote, unquote

from .graph import Graph

GENERATOR = "vae-infer-native/1"  # bump when the generated code changes: it is part of the build cache key


@dataclass(frozen=True)
class Sources:
    header: str
    source: str
    prefix: str
    weights: str
    functions: dict[str, str]  # function name -> the C signature
    weight_bytes: int  # bytes of constant tables (weights, scales, biases)
    args: dict[str, list[tuple[str, int]]]  # function name -> (C argument name, floats per row): input, outputs



def info_string(graphs: dict[str, Graph], digests: dict[str, str], weights: str, block: int) -> str:
    """The text <prefix>_info() returns: what the library computes. The Python backend reads it to find the
    function for a graph (by the graph's sha256) and its input and output names and widths."""
    parts = [f"generator={GENERATOR}", f"weights={weights}", f"block={block}"]
    for fname, g in graphs.items():
        outs = " ".join(f"{quote(name, safe='')}:{w}" for name, w in g.outputs)
        parts.append(f"{fname}={digests[fname]} {quote(g.input[0], safe='')}:{g.input[1]} -> {outs}")
    return "; ".join(parts)


@dataclass(frozen=True)
class LibraryFunction:
    name: str  # the function is <prefix>_<name>
    sha256: str  # of the ONNX graph it was generated from
    input: tuple[str, int]
    outputs: tuple[tuple[str, int], ...]


def parse_info(text: str) -> tuple[dict[str, str], dict[str, LibraryFunction]]:
    """(settings, functions) from an info string; ValueError when it is not one of ours."""
    settings: dict[str, str] = {}
    functions: dict[str, LibraryFunction] = {}
    for part in text.split("; "):
        key, sep, value = part.partition("=")
        if not sep:
            raise ValueError(f"not a vae-infer native library info string: {text[:80]!r}")
        if key in ("generator", "weights", "block"):
            settings[key] = value
            continue
        m = re.fullmatch(r"([0-9a-f]{64}) (\S+):(\d+) -> (.+)", value)
        if not m:
            raise ValueError(f"malformed function entry in a native library info string: {part[:80]!r}")
        outs = []
        for item in m.group(4).split(" "):
            name, _, width = item.rpartition(":")
            outs.append((unquote(name), int(width)))
        functions[key] = LibraryFunction(key, m.group(1), (unquote(m.group(2)), int(m.group(3))), tuple(outs))
    if settings.get("generator", "").split("/")[0] != GENERATOR.split("/")[0]:
        raise ValueError(f"not a vae-infer native library info string: {text[:80]!r}")
    return settings, functions
