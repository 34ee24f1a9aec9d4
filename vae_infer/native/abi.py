"""The ABI of a generated library: the Sources it is made of, the generator's version, the C names of each
function's arguments, and the info string that <prefix>_info() returns (what each function computes: the
graph's sha256 and the widths of its input and outputs), which the Python runner parses to match a library
to a graph.

Nothing in a library comes from the text of a model package: argument names are the generator's own (x, mu,
logvar; z, x_hat, logits; input, output0, ... for other graphs), and the graph's own tensor names are given to
the runner by the caller (from model.json), never read from the library."""

from __future__ import annotations

import re
from dataclasses import dataclass

from .graph import Graph

GENERATOR = "vae-infer-native/2"  # bump when the generated code changes: it is part of the build cache key
# The C names of each function's input and outputs, by position: a model package's encoder gives (mu, logvar)
# and its decoder (x_hat, logits), in model.json's order. Other graphs get positional names.
ROLE_ARGUMENTS = {"encode": ("x", ("mu", "logvar")), "decode": ("z", ("x_hat", "logits"))}


def argument_names(function: str, outputs: int) -> list[str]:
    """The C argument names of a generated function: its input, then each output."""
    known = ROLE_ARGUMENTS.get(function)
    if known is not None and len(known[1]) == outputs:
        return [known[0], *known[1]]
    return ["input", *(f"output{i}" for i in range(outputs))]


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
    function for a graph (by the graph's sha256) and the widths of its input and outputs."""
    parts = [f"generator={GENERATOR}", f"weights={weights}", f"block={block}"]
    for fname, g in graphs.items():
        if not re.fullmatch(r"[0-9a-f]{64}", digests[fname]):
            raise ValueError(f"the digest of {fname} must be a sha256 in hex, got {digests[fname][:80]!r}")
        outs = " ".join(str(w) for _, w in g.outputs)
        parts.append(f"{fname}={digests[fname]} {g.input[1]} -> {outs}")
    return "; ".join(parts)


@dataclass(frozen=True)
class LibraryFunction:
    name: str  # the function is <prefix>_<name>
    sha256: str  # of the ONNX graph it was generated from
    input: int  # floats per row
    outputs: tuple[int, ...]  # floats per row of each output, in the graph's order


def parse_info(text: str) -> tuple[dict[str, str], dict[str, LibraryFunction]]:
    """(settings, functions) from an info string; ValueError when it is not one of ours."""
    settings: dict[str, str] = {}
    functions: dict[str, LibraryFunction] = {}
    parts = text.split("; ")
    generator = parts[0].removeprefix("generator=")
    if generator == parts[0] or generator.split("/")[0] != GENERATOR.split("/")[0]:
        raise ValueError(f"not a vae-infer native library info string: {text[:80]!r}")
    if generator != GENERATOR:
        raise ValueError(f"built by {generator[:40]!r}, but this vae_infer reads libraries of {GENERATOR}: export "
                         f"or build the library again")
    for part in parts:
        key, sep, value = part.partition("=")
        if not sep:
            raise ValueError(f"not a vae-infer native library info string: {text[:80]!r}")
        if key in ("generator", "weights", "block"):
            settings[key] = value
            continue
        m = re.fullmatch(r"([0-9a-f]{64}) (\d+) -> (\d+(?: \d+)*)", value)
        if not m:
            raise ValueError(f"malformed function entry in a native library info string: {part[:80]!r}")
        outs = tuple(int(w) for w in m.group(3).split(" "))
        functions[key] = LibraryFunction(key, m.group(1), int(m.group(2)), outs)
    return settings, functions
