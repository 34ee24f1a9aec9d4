"""C99 source for dense networks read from ONNX graphs (vae_infer.native.graph): a header and one .c file.

The generated library has no dynamic allocation, no mutable global state (only const tables, so every
function is reentrant) and no dependency beyond libm (fmaf, which compilers turn into one instruction on
targets with fused multiply-add). Each public function runs the whole graph on n rows:

    int vae_encode(const float *x, float *mu, float *logvar, int n);

Rows go through in tiles of VAE_ROWS (a compile-time constant; 6 with AVX-512, 1 on small targets) so that
the intermediate activations live on the stack (or, built with -DVAE_STATIC_ACTIVATIONS, in static RAM:
bare-metal targets, where the stack is small and reentrancy is not needed).

Weight formats (vae_infer.native.weights): fp32 and fp16 in blocks of BLOCK outputs, each block input-major,
so that the inner loop is a contiguous multiply-add over BLOCK outputs held in registers; int8 with a scale
per output row and input column, and for layers with 32 or more inputs the inputs quantized per row to
uint8 and exact int32 dot products. The kernels are in vae_infer.native.kernels, the info string in
vae_infer.native.abi.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import numpy as np

from .abi import GENERATOR, Sources, argument_names, info_string
from .ctext import c_array, c_string, check_c_text, float_values
from .graph import Dense, Elementwise, Graph
from .kernels import (
    EXP_HELPER,
    HALF_HELPER,
    LAYER_HELPER,
    POOL_HELPER,
    PREAMBLE,
    RELU_HELPER,
    ROWS_BY_TARGET,
    SIGMOID_HELPER,
    TANH_HELPER,
    THREADS_HELPER,
    elementwise_source,
    kernel_name,
    kernel_source,
    narrow_kernel_name,
    narrow_kernel_source,
)
from .kernels_int8 import (
    VNNI_HELPER,
    int8_dot_kernel_name,
    int8_dot_kernel_source,
    int8_dot_padded,
    pack_int8_dot,
    uses_vnni,
)
from .weights import DEFAULT_BLOCK, WEIGHT_FORMATS, block_layout, is_narrow, pack, quantize_int8, to_fp16, uses_int8_dot

WEIGHT_BYTES = {"fp32": 4, "fp16": 2, "int8": 1}
# a layer is split between two threads for small batches when it has this many weight bytes and blocks
PARALLEL_MIN_BYTES = 128 * 1024
PARALLEL_MIN_BLOCKS = 2


@dataclass
class _Function:
    name: str  # "encode"
    graph: Graph
    args: list[str]  # C names: input, outputs
    signature: str


class _Writer:
    def __init__(self, graphs: dict[str, Graph], prefix: str, weights: str, block: int, info: str,
                 digests: dict[str, str], rows: int | None = None) -> None:
        if weights not in WEIGHT_FORMATS:
            raise ValueError(f"unknown weight format {weights!r}: expected one of {', '.join(WEIGHT_FORMATS)}")
        if not re.fullmatch(r"[A-Za-z][A-Za-z0-9_]*", prefix):
            raise ValueError(f"prefix must be a C identifier (letters, digits, _), got {prefix!r}")
        if block < 1:
            raise ValueError(f"block must be a positive number of outputs, got {block}")
        if rows is not None and rows < 1:
            raise ValueError(f"rows must be a positive number of rows per tile, got {rows}")
        self.rows = rows
        self.graphs, self.prefix, self.weights, self.block = graphs, prefix, weights, block
        self.info, self.digests = info, digests
        self.P = prefix.upper()
        self.kernels: dict[str, str] = {}
        self.tables: list[str] = []
        self.layers: list[str] = []
        self.elementwise: set[str] = set()
        self.activations: set[str] = set()
        self.weight_bytes = 0
        self.functions: list[_Function] = []
        self.parallel: set[str] = set()  # layers large enough to split between two threads
        self.vnni = False  # an int8 layer with the AVX-512 VNNI kernel
        for fname, g in graphs.items():
            if not re.fullmatch(r"[a-z][a-z0-9_]*", fname):
                raise ValueError(f"function names are the generator's own (encode, decode, run), got {fname!r}")
            args = argument_names(fname, len(g.outputs))  # never the graph's own tensor names
            params = [f"const float *{args[0]}"] + [f"float *{a}" for a in args[1:]] + ["int n"]
            sig = f"int {prefix}_{fname}({', '.join(params)})"
            self.functions.append(_Function(fname, g, args, sig))

    # -- tables and layers -------------------------------------------------------------------------------
    def _table(self, ctype: str, name: str, values: list[str], itemsize: int, comment: str) -> None:
        self.tables.append(c_array(ctype, name, values, comment))
        self.weight_bytes += itemsize * len(values)

    def _dense(self, fname: str, index: int, op: Dense) -> str:
        n, k = op.weight.shape
        base = f"{fname}_l{index}"
        what = f"{fname} layer {index}: {k} -> {n}" + (f", {op.act}" if op.act else "")
        if op.act:
            self.activations.add(op.act)
        if uses_int8_dot(self.weights, k, n):
            return self._int8_dot(base, what, op)
        order = ("one row per output" if is_narrow(n, k) else
                 f"blocks of {min(self.block, n)} outputs, input-major")
        if self.weights == "fp32":
            self._table("float", f"{base}_w", float_values(pack(op.weight, self.block)), 4,
                        f"{what}: weights, fp32, {order}")
        elif self.weights == "fp16":
            bits = pack(to_fp16(op.weight, f"{fname} layer {index}"), self.block).view(np.int16)
            self._table("int16_t", f"{base}_w", [str(b) for b in bits.tolist()], 2,
                        f"{what}: weights, IEEE half bits, {order}")
        else:
            q, scales, columns = quantize_int8(op.weight)
            self._table("int8_t", f"{base}_w", [str(v) for v in pack(q, self.block).tolist()], 1,
                        f"{what}: weights, int8 (w = q * scale[out] * columns[in]), {order}")
            self._table("float", f"{base}_s", float_values(scales), 4, f"{what}: int8 scale per output")
            self._table("float", f"{base}_c", float_values(columns), 4, f"{what}: int8 scale per input")
        self._table("float", f"{base}_b", float_values(op.bias), 4, f"{what}: bias")
        if is_narrow(n, k):
            kname = narrow_kernel_name(self.weights, k, n, op.act)
            self.kernels.setdefault(kname, narrow_kernel_source(self.weights, k, n, op.act))
            scale = f", {base}_s, {base}_c" if self.weights == "int8" else ""
            self.layers.append(
                f"/* {what}: a dot product over the inputs per output */\n"
                f"static void {base}(const float *x, float *y, int rows, int part)\n{{\n    (void)part;\n"
                f"    {kname}(x, y, {n}, rows, {base}_w, {base}_b{scale});\n}}\n")
            return base
        calls = []
        offset = 0  # into the packed weights
        for b0, stored, width in block_layout(n, self.block):
            kname = kernel_name(self.weights, k, width, op.act, stored)
            self.kernels.setdefault(kname, kernel_source(self.weights, k, width, op.act, stored))
            scale = f", {base}_s + {b0}, {base}_c" if self.weights == "int8" else ""
            calls.append((b0, stored, width, kname, scale, offset))
            offset += k * width
        body = []
        full = [c for c in calls if c[3] == calls[0][3]]
        rest = calls
        if len(full) > 1:
            width = full[0][2]
            body += [
                f"    const int h = {len(full) // 2}, b0 = part == 1 ? h : 0, b1 = part == 0 ? h : {len(full)};",
                "    int b;",
                "    for (b = b0; b < b1; b++)",
                f"        {full[0][3]}(x, y + b * {width}, {n}, rows, {base}_w + (size_t)b * {k * width}, "
                f"{base}_b + b * {width}" + (f", {base}_s + b * {width}, {base}_c" if self.weights == "int8" else "")
                + ");",
            ]
            rest = calls[len(full):]
            if len(full) >= PARALLEL_MIN_BLOCKS and k * n * WEIGHT_BYTES[self.weights] >= PARALLEL_MIN_BYTES:
                self.parallel.add(base)
        else:
            body.append("    (void)part;")
        if rest:
            body.append("    if (part != 0) {" if len(full) > 1 else "    {")
            for b0, _, _, kname, scale, off in rest:
                body.append(f"        {kname}(x, y + {b0}, {n}, rows, {base}_w + {off}, {base}_b + {b0}{scale});")
            body.append("    }")
        self.layers.append(
            f"/* {what}; part < 0: every output block, 0 or 1: the first or second half of them */\n"
            f"static void {base}(const float *x, float *y, int rows, int part)\n{{\n" + "\n".join(body) + "\n}\n"
        )
        return base

    def _int8_dot(self, base: str, what: str, op: Dense) -> str:
        n, k = op.weight.shape
        q, scale, columns = quantize_int8(op.weight)
        padded = np.zeros((n, int8_dot_padded(k)), np.int8)
        padded[:, :k] = q
        self._table("int8_t", f"{base}_w", [str(v) for v in pack_int8_dot(padded).tolist()], 1,
                    f"{what}: weights, int8 (w = q * scale[out] * columns[in]), {padded.shape[1]} (zero-padded) "
                    f"inputs per output, in the kernel's layout")
        self._table("float", f"{base}_s", float_values(scale), 4, f"{what}: int8 scale per output")
        self._table("float", f"{base}_c", float_values(columns), 4, f"{what}: int8 scale per input")
        self._table("int32_t", f"{base}_r", [str(v) for v in q.astype(np.int64).sum(axis=1).tolist()], 4,
                    f"{what}: sum of each output's int8 weights")
        self._table("float", f"{base}_b", float_values(op.bias), 4, f"{what}: bias")
        self.vnni = self.vnni or uses_vnni(n)
        kname = int8_dot_kernel_name(k, n, op.act)
        self.kernels.setdefault(kname, int8_dot_kernel_source(k, n, op.act))
        self.layers.append(
            f"/* {what}: int8 weights, inputs quantized per row to uint8, integer dot products */\n"
            f"static void {base}(const float *x, float *y, int rows, int part)\n{{\n    (void)part;\n"
            f"    {kname}(x, y, rows, {base}_w, {base}_s, {base}_c, {base}_r, {base}_b);\n}}\n"
        )
        return base

    # -- one function ------------------------------------------------------------------------------------
    def _function(self, fn: _Function) -> str:
        g, P = fn.graph, self.P
        in_name, in_width = g.input
        outs = {name: (i, arg) for i, (name, arg) in enumerate(zip(g.output_names, fn.args[1:], strict=True))}
        # which outputs need each value: an op runs only when an output it feeds was asked for
        need: dict[str, set[int]] = {}
        for op in reversed(g.ops):
            s = set(need.get(op.dst, set()))
            if op.dst in outs:
                s.add(outs[op.dst][0])
            need[op.dst] = s
            need[op.src] = need.get(op.src, set()) | s
        buffers, decls, steps = {in_name: "x"}, [], []
        stack_floats = 0
        for j, (name, (_, arg)) in enumerate(outs.items()):
            consumed = any(op.src == name for op in g.ops)
            if consumed:
                decls.append(f"    VAE_ACTIVATIONS float s{j}[VAE_ROWS * {g.widths[name]}]; "
                             f"/* {arg}, when the caller passes NULL for it */")
                decls.append(f"    float *o{j} = {arg} != NULL ? {arg} : s{j};")
                stack_floats += g.widths[name]
            else:
                decls.append(f"    float *o{j} = {arg};")
            buffers[name] = f"o{j}"
        t = 0
        for index, op in enumerate(g.ops):
            if not need.get(op.dst):
                continue  # feeds no output
            if op.dst not in buffers:
                decls.append(f"    VAE_ACTIVATIONS float t{t}[VAE_ROWS * {g.widths[op.dst]}]; "
                             f"/* the output of layer {index} */")
                buffers[op.dst] = f"t{t}"
                stack_floats += g.widths[op.dst]
                t += 1
            src, dst = buffers[op.src], buffers[op.dst]
            if isinstance(op, Dense):
                layer = self._dense(fn.name, index, op)
                call = (f"vae_run_layer({layer}, {src}, {dst}, rows, par);" if layer in self.parallel
                        else f"{layer}({src}, {dst}, rows, -1);")
            else:
                assert isinstance(op, Elementwise)
                self.elementwise.add(op.op)
                call = f"ew_{op.op}({src}, {dst}, rows * {g.widths[op.dst]}); /* layer {index} */"
            wanted = need[op.dst]
            if len(wanted) < len(outs):
                cond = " || ".join(f"{fn.args[1 + i]} != NULL" for i in sorted(wanted))
                steps.append(f"    if ({cond})\n        {call}")
            else:
                steps.append(f"    {call}")
        params = ", ".join(["const float *x"] + [f"float *{a}" for a in fn.args[1:]] + ["int rows", "int par"])
        tile = (f"/* {fn.name}: rows (<= VAE_ROWS) rows of {fn.args[0]} through the graph; par: large "
                f"layers on two threads (with -DVAE_THREADS) */\n"
                f"static void {fn.name}_tile({params})\n{{\n" + "\n".join(decls + ["    (void)par;"] + steps) + "\n}\n")
        x = fn.args[0]
        out_args = fn.args[1:]
        offsets = ", ".join(
            f"{a} != NULL ? {a} + (size_t)r0 * {w} : NULL" for a, (_, w) in zip(out_args, g.outputs, strict=True)
        )
        all_null = " && ".join(f"{a} == NULL" for a in out_args)
        outs_params = [f"float *{a}" for a in out_args]
        run_params = ", ".join([f"const float *{x}", *outs_params, "int n", "int par"])
        range_params = ", ".join([f"const float *{x}", *outs_params, "int r0", "int r1", "int par"])
        call_args = ", ".join([x, *out_args, "n"])
        parallel_sig = fn.signature.replace(f"{self.prefix}_{fn.name}(", f"{self.prefix}_{fn.name}_parallel(", 1)
        job_fields = "".join(f"    float *{a};\n" for a in out_args)
        job_sets = "".join(f"        j.{a} = {a};\n" for a in out_args)
        job_outs = ", ".join(f"j->{a}" for a in out_args)
        public = f"""\
/* rows r0 <= r < r1 */
static void {fn.name}_range({range_params})
{{
    int rows;
    for (; r0 < r1; r0 += rows) {{
        rows = r1 - r0 < VAE_ROWS ? r1 - r0 : VAE_ROWS;
        {fn.name}_tile({x} + (size_t)r0 * {in_width}, {offsets}, rows, par);
    }}
}}

#ifdef VAE_THREADS
struct {fn.name}_job {{
    const float *{x};
{job_fields}    int n;
}};

/* half of the rows, in whole tiles */
static void {fn.name}_rows_part(const void *ctx, int part)
{{
    const struct {fn.name}_job *j = (const struct {fn.name}_job *)ctx;
    const int mid = (j->n + VAE_ROWS - 1) / VAE_ROWS / 2 * VAE_ROWS;
    {fn.name}_range(j->{x}, {job_outs}, part == 0 ? 0 : mid, part == 0 ? mid : j->n, 0);
}}
#endif

static int {fn.name}_run({run_params})
{{
    if (n < 0)
        return {P}_ERR_BATCH;
    if ({x} == NULL)
        return {P}_ERR_NULL_INPUT;
    if ({all_null})
        return {P}_ERR_NULL_OUTPUT;
#ifdef VAE_THREADS
    if (par && n >= VAE_SPLIT_ROWS) {{ /* many rows: half of them on each thread */
        struct {fn.name}_job j;
        j.{x} = {x};
{job_sets}        j.n = n;
        vae_split({fn.name}_rows_part, &j);
        return {P}_OK;
    }}
#endif
    {fn.name}_range({x}, {", ".join(out_args)}, 0, n, par);
    return {P}_OK;
}}

{fn.signature}
{{
    return {fn.name}_run({call_args}, 0);
}}

#ifdef VAE_THREADS
/* the same, with each large layer split between this thread and a worker (batch-1 latency) */
{parallel_sig}
{{
    return {fn.name}_run({call_args}, 1);
}}
#endif
"""
        self.stack[fn.name] = stack_floats
        return tile + "\n" + public

    # -- the files ---------------------------------------------------------------------------------------
    def write(self) -> Sources:
        self.stack: dict[str, int] = {}
        bodies = [self._function(fn) for fn in self.functions]
        p, P = self.prefix, self.P
        used = self.elementwise | self.activations
        rows = ROWS_BY_TARGET if self.rows is None else (
            f"/* rows per tile, chosen for the CPU this was generated for; -DVAE_ROWS=N overrides */\n"
            f"#ifndef VAE_ROWS\n#define VAE_ROWS {self.rows}\n#endif\n")
        helpers = rows + "\n" + PREAMBLE + (RELU_HELPER if "relu" in used else "")
        helpers += EXP_HELPER if used & {"sigmoid", "tanh"} else ""
        helpers += (SIGMOID_HELPER if "sigmoid" in used else "") + (TANH_HELPER if "tanh" in used else "")
        helpers += HALF_HELPER if self.weights == "fp16" else ""
        helpers += VNNI_HELPER if self.vnni else ""
        helpers += LAYER_HELPER + POOL_HELPER + (THREADS_HELPER if self.parallel else "")
        ew = [elementwise_source(op) for op in sorted(self.elementwise)]
        names = " and ".join(f"{p}_{fn.name}" for fn in self.functions)
        source = "\n".join([
            f"/* {p}.c: {names} as plain C99, generated by {GENERATOR} from the ONNX graphs.",
            f"   Weights: {self.weights}. No dynamic allocation, no mutable global state (reentrant), only libm.",
            "   Do not edit: regenerate with `vae-infer export-c`. */",
            "#ifdef VAE_THREADS",
            "#define _POSIX_C_SOURCE 200112L /* pthreads under -std=c99 */",
            "#endif",
            f'#include "{p}.h"',
            "",
            "#include <math.h>",
            "#include <stddef.h>",
            "#include <stdint.h>",
            *(["#if defined(__AVX512F__)", "#include <immintrin.h> /* AVX-512 and vpdpbusd */",
               "#endif"] if self.weights == "int8" else []),
            "",
            helpers,
            *ew,
            *self.kernels.values(),
            *self.tables,
            "",
            *self.layers,
            *bodies,
            "/* generator, weight format, and each function's graph (sha256) and widths; octal escapes keep",
            "   the text free of characters C treats specially */",
            f"static const char {p}_info_text[] = {c_string(self.info)};",
            "",
            f"const char *{p}_info(void)\n{{\n    return {p}_info_text;\n}}\n",
            f"int {p}_rows(void)\n{{\n    return VAE_ROWS;\n}}\n",
            f"""const char *{p}_strerror(int code)
{{
    switch (code) {{
    case {P}_OK:
        return "ok";
    case {P}_ERR_NULL_INPUT:
        return "the input pointer is NULL";
    case {P}_ERR_NULL_OUTPUT:
        return "every output pointer is NULL; pass at least one output buffer";
    case {P}_ERR_BATCH:
        return "the row count n is negative";
    default:
        return "unknown error code";
    }}
}}
""",
        ])
        return Sources(
            header=check_c_text(f"{p}.h", self._header()), source=check_c_text(f"{p}.c", source), prefix=p,
            weights=self.weights,
            functions={fn.name: fn.signature for fn in self.functions}, weight_bytes=self.weight_bytes,
            args={fn.name: list(zip(fn.args, [fn.graph.input[1]] + [w for _, w in fn.graph.outputs], strict=True))
                  for fn in self.functions},
        )

    def _header(self) -> str:
        p, P = self.prefix, self.P
        guard = f"{P}_H"
        sizes, protos = [], []
        for fn in self.functions:
            g = fn.graph
            names = [g.input] + g.outputs
            for (_, width), arg in zip(names, fn.args, strict=True):
                sizes.append(f"#define {P}_{fn.name.upper()}_{arg.upper()}_SIZE {width} "
                             f"/* floats per row of {arg} */")
            sizes.append(f"#define {P}_{fn.name.upper()}_STACK_FLOATS_PER_ROW {self.stack[fn.name]} "
                         f"/* stack: this times {p}_rows() floats, plus each layer's accumulators "
                         f"(int8: and its inputs as bytes) */")
            outs = ", ".join(f"{a} ({w} per row)" for a, (_, w) in zip(fn.args[1:], g.outputs, strict=True))
            protos.append(
                f"/* {fn.name}: {fn.args[0]} ({g.input[1]} floats per row) -> {outs}, for n rows stored one after "
                f"another.\n"
                f"   Any output pointer may be NULL (that output is not written), but not all of them; buffers must "
                f"not overlap.\n"
                f"   Returns {P}_OK, or {P}_ERR_NULL_INPUT, {P}_ERR_NULL_OUTPUT, {P}_ERR_BATCH (n < 0); n = 0 does "
                f"nothing. */\n{fn.signature};\n"
                f"#ifdef VAE_THREADS\n/* the same, splitting large layers between the caller and one worker thread "
                f"(built with -DVAE_THREADS -pthread) */\n"
                f"{fn.signature.replace(f'{p}_{fn.name}(', f'{p}_{fn.name}_parallel(', 1)};\n#endif\n"
            )
        return "\n".join([
            f"/* {p}.h: {' and '.join(f'{p}_{fn.name}' for fn in self.functions)} as a C99 library, generated by "
            f"{GENERATOR}; do not edit.",
            f"   Weights {self.weights}. Thread-safe: no global mutable state, no allocation; link with -lm. */",
            f"#ifndef {guard}",
            f"#define {guard}",
            "",
            "#ifdef __cplusplus",
            'extern "C" {',
            "#endif",
            "",
            f"#define {P}_OK 0",
            f"#define {P}_ERR_NULL_INPUT (-1)",
            f"#define {P}_ERR_NULL_OUTPUT (-2)",
            f"#define {P}_ERR_BATCH (-3)",
            "",
            *sizes,
            "",
            *protos,
            f"/* what was compiled: generator, weight format and the sha256 of each ONNX graph */\n"
            f"const char *{p}_info(void);",
            f"/* rows per tile (VAE_ROWS at compile time) */\nint {p}_rows(void);",
            f"/* a message for an error code */\nconst char *{p}_strerror(int code);",
            "",
            "#ifdef __cplusplus",
            "}",
            "#endif",
            "",
            f"#endif /* {guard} */",
            "",
        ])


def generate(graphs: dict[str, Graph], digests: dict[str, str], weights: str = "fp32", prefix: str = "vae",
             block: int = DEFAULT_BLOCK, rows: int | None = None) -> Sources:
    """C99 sources computing each graph as `int <prefix>_<name>(const float *in, float *out..., int n)`.

    graphs: function name -> Graph; digests: function name -> sha256 of its ONNX bytes (recorded in
    <prefix>_info()). block: outputs per weight block (the register block's width); rows: rows per tile
    (VAE_ROWS), None for a choice by the target's preprocessor macros. No text of the graphs (names, doc
    strings) reaches the sources: arguments are named by position (abi.argument_names), layers by index."""
    info = info_string(graphs, digests, weights, block)
    return _Writer(graphs, prefix, weights, block, info, digests, rows).write()
