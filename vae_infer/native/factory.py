"""The one place the C backend builds a runner for a graph: from a prebuilt library matched by sha256, from
the per-user build cache, or by generating and compiling the graph into that cache.

    runner = create_runner(onnx_bytes, spec, threads=2, weights="int8")   # an InferenceSession look-alike"""

from __future__ import annotations

import hashlib
from pathlib import Path

from ..errors import InputError, ModelPackageError
from ..package.manifest import GraphSpec
from .build import cached_library, compile_library, find_compiler, no_compiler_error, tuning
from .graph import Graph, read_graph
from .runner import NativeRunner, open_library
from .weights import WEIGHT_FORMATS
from .writer import generate

RUN_FUNCTION = "run"  # the one function of a library built for one graph by create_runner


def check_weights(weights: str) -> str:
    if weights not in WEIGHT_FORMATS:
        raise InputError(f"unknown weight format {weights!r}: expected one of {', '.join(WEIGHT_FORMATS)}")
    return weights


def create_runner(onnx_bytes: bytes, spec: GraphSpec | None = None, threads: int | None = None,
                  weights: str | None = None, library: str | Path | None = None,
                  cache_dir: str | Path | None = None, cc: str | None = None, block: int | None = None,
                  rows: int | None = None, native: bool = True) -> NativeRunner:
    """A runner for one ONNX graph (its bytes), compiled to C, with InferenceSession's run/get_inputs/
    get_outputs/get_providers.

    weights: "fp32" (default, exact), "fp16" or "int8". library: a prebuilt library (for example
    `make libvae.so` in an export-c folder) holding a function generated from this very graph (matched by
    sha256); otherwise the library is built into the cache (cache_dir, default $XDG_CACHE_HOME or ~/.cache
    under vae-infer/native) with the C compiler cc (default $CC, cc, gcc, clang). native=False builds
    portable code instead of code for this CPU. block, rows: the register blocking (outputs per weight block,
    rows per tile); by default tuned for this CPU (vae_infer.native.build.tuning)."""
    weights = check_weights(weights or "fp32")
    digest = hashlib.sha256(onnx_bytes).hexdigest()
    where = spec.file if spec is not None else "graph"
    # the graph's tensor names come from model.json (checked against the graph when the model loads), never
    # from the library; without a spec they are read from the graph itself
    names = (spec.inputs[0].name, [t.name for t in spec.outputs]) if spec is not None else None
    if library is not None:
        if names is None:
            names = _graph_names(read_graph(onnx_bytes, where))
        return _prebuilt(Path(library), digest, where, threads, names)
    tuned_block, tuned_rows = tuning(native)
    block = block or tuned_block
    rows = rows if rows is not None else (tuned_rows if block == tuned_block else None)
    folder, lib = cached_library(digest, weights, block, rows, "vae", cache_dir, native)
    graph = None
    if lib is None or names is None:
        graph = read_graph(onnx_bytes, where)  # an unsupported graph is refused before anything else
        names = names or _graph_names(graph)
    if lib is None:
        assert graph is not None, "read above when there is no library"
        if find_compiler(cc) is None:
            raise no_compiler_error(cc)
        try:
            sources = generate({RUN_FUNCTION: graph}, {RUN_FUNCTION: digest}, weights=weights, block=block,
                               rows=rows)
        except ValueError as e:
            raise InputError(str(e)) from e
        lib = compile_library(sources, folder, cc=cc, native=native)
    runner = NativeRunner(lib, RUN_FUNCTION, threads=threads, names=names)
    if runner.function.sha256 != digest or runner.weights != weights:
        raise ModelPackageError(f"{lib} was built from another graph or weight format ({runner.function.sha256[:16]}"
                                f"..., {runner.weights}); delete {folder} and load again")
    return runner


def _graph_names(graph: Graph) -> tuple[str, list[str]]:
    return graph.input[0], graph.output_names


def _prebuilt(path: Path, digest: str, where: str, threads: int | None,
              names: tuple[str, list[str]]) -> NativeRunner:
    _, _, functions = open_library(path)
    for name, fn in functions.items():
        if fn.sha256 == digest:
            return NativeRunner(path, name, threads=threads, names=names)
    found = ", ".join(f"vae_{name} from {fn.sha256[:16]}..." for name, fn in functions.items())
    raise ModelPackageError(f"{path} was not generated from {where} (sha256 {digest[:16]}...): it holds {found}; "
                            f"export the library again from this model package")
