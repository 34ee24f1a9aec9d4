"""C99 source for dense networks read from ONNX graphs (vae_infer.native.graph): a header and one .c file.

The generated library has no dynamic allocation, no mutable global state (only const tables, so every
function is reentrant) and no dependency beyond libm (fmaf, which compilers turn into one instruction on
targets with fused multiply-add). Each public function runs the whole graph on n rows:

    int vae_encode(const float *x, float *mu, float *logvar, int n);

Rows go through in tiles of VAE_ROWS (a compile-time constant; 6 with AVX-512, 1 on small targets) so that
the intermediate activations live on the stack.

Weight formats:
- fp32 and fp16: stored in blocks of BLOCK outputs, each block input-major ([in][BLOCK]), so that the inner
  loop is a contiguous, vectorizable multiply-add over BLOCK outputs held in registers (register blocking),
  each weight loaded once per tile of rows. fp16 weights are IEEE half bits, converted in the loop.
- int8: weight = q * scale[out] * columns[in] (a scale per output row, after equalizing the input columns).
  Layers with 32 or more inputs also quantize each input row to uint8 (asymmetric, per row) and compute
  exact int32 dot products, which compilers turn into 4-way byte dot-product instructions (AVX-512 VNNI,
  AVX2, Arm dot products); smaller layers multiply the int8 weights in float.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from urllib.parse import quote, unquote

import numpy as np

from .graph import Dense, Elementwise, Graph

GENERATOR = "vae-infer-native/1"  # bump when the generated code changes: it is part of the build cache key
WEIGHT_FORMATS = ("fp32", "fp16", "int8")
DEFAULT_BLOCK = 64
C_KEYWORDS = frozenset(
    "auto break case char const continue default do double else enum extern float for goto if inline int long "
    "register restrict return short signed sizeof static struct switch typedef union unsigned void volatile while "
    "_Bool _Complex _Imaginary NULL size_t".split()
)
RESERVED_LOCALS = frozenset({"n", "r0", "rows"})


@dataclass(frozen=True)
class Sources:
    header: str
    source: str
    prefix: str
    weights: str
    functions: dict[str, str]  # function name -> the C signature
    weight_bytes: int  # bytes of constant tables (weights, scales, biases)
    args: dict[str, list[tuple[str, int]]]  # function name -> (C argument name, floats per row): input, outputs


# -- weights --------------------------------------------------------------------------------------------


def quantize_int8(weight: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Symmetric int8 with one scale per output row, after equalizing the input columns:
    weight ~= q * scale[:, None] * columns[None, :], q in [-127, 127].

    columns[i] is the root mean square of input column i, so that a few inputs with large weights (hidden
    units the next layer leans on) do not set every row's step; the generated code multiplies the input by
    it (one multiply per input and row). On the course model this cuts the test -ELBO change of int8 from
    +2.5 to about +0.4 nats per image."""
    w = weight.astype(np.float64)
    columns = np.sqrt((w**2).mean(axis=0))
    columns = np.where(columns > 0, columns, 1.0)
    w = w / columns[None, :]
    peak = np.abs(w).max(axis=1)
    scale = np.where(peak > 0, peak / 127.0, 1.0)
    q = np.clip(np.rint(w / scale[:, None]), -127, 127).astype(np.int8)
    return q, scale.astype(np.float32), columns.astype(np.float32)


HALF_TINY = 2.0**-14  # the smallest normal half; smaller halves are stored as zero


def to_fp16(weight: np.ndarray, where: str = "weight") -> np.ndarray:
    """IEEE half weights, with subnormal halves (|w| < 2^-14 = 6.1e-5) flushed to zero: converting them
    would multiply denormal floats, which x86 CPUs do about 100 times slower."""
    from .graph import UnsupportedModelError

    h = weight.astype(np.float16)
    if not np.all(np.isfinite(h)):
        raise UnsupportedModelError(f"{where}: a weight is beyond the float16 range (|w| > 65504); use fp32 or int8")
    h[np.abs(h) < HALF_TINY] = 0
    return h


def effective_weight(weight: np.ndarray, weights: str) -> np.ndarray:
    """The fp32 weights the generated code really multiplies by, for a weight format (for reference checks)."""
    if weights == "fp32":
        return weight.astype(np.float32)
    if weights == "fp16":
        return to_fp16(weight).astype(np.float32)
    q, scale, columns = quantize_int8(weight)
    return (q.astype(np.float64) * scale[:, None] * columns[None, :]).astype(np.float32)


INT8_DOT_MIN_INPUTS = 32  # int8 layers with at least this many inputs use integer dot products (w8a8)
INT8_DOT_MAX_INPUTS = 66_000  # 255 * 127 * K must fit an int32 accumulator


def uses_int8_dot(weights: str, k: int) -> bool:
    return weights == "int8" and INT8_DOT_MIN_INPUTS <= k <= INT8_DOT_MAX_INPUTS


def quantize_activations(x: np.ndarray, columns: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """What the generated int8 code does to a layer's input rows, in the same float32 steps:
    x' = x * columns; per row lo = min(0, min x'), hi = max(0, max x'), step = (hi - lo) / 255;
    a = (uint8)((x' - lo) / step + 0.5), so that x' ~= step * a + lo. Returns (a, step, lo)."""
    v = x.astype(np.float32) * columns.astype(np.float32)[None, :]
    lo = np.minimum(v.min(axis=1), np.float32(0)).astype(np.float32)
    hi = np.maximum(v.max(axis=1), np.float32(0)).astype(np.float32)
    step = ((hi - lo) / np.float32(255)).astype(np.float32)
    with np.errstate(divide="ignore"):
        inv = np.where(step > 0, np.float32(1) / step, np.float32(0)).astype(np.float32)
    q = ((v - lo[:, None]) * inv[:, None]).astype(np.float32) + np.float32(0.5)
    a = np.clip(q, 0, 255).astype(np.uint8)
    return a, step, lo


def int8_dot_dense(x: np.ndarray, weight: np.ndarray, bias: np.ndarray) -> np.ndarray:
    """The int8 layer with quantized inputs (w8a8), as the generated code computes it, in float64."""
    q, scale, columns = quantize_int8(weight)
    a, step, lo = quantize_activations(x, columns)
    acc = a.astype(np.int64) @ q.T.astype(np.int64)
    rowsum = q.astype(np.int64).sum(axis=1)
    return scale.astype(np.float64) * (step[:, None].astype(np.float64) * acc + lo[:, None].astype(np.float64)
                                       * rowsum) + bias.astype(np.float64)


def block_layout(n: int, block: int) -> list[tuple[int, int, int]]:
    """(first output, outputs stored, outputs computed) of each block of a layer with n outputs.

    Full blocks of `block` outputs, then the rest. A rest of 1 to 4 outputs is computed as it is; a wider
    rest is padded with zero weights up to a width compilers vectorize well (24, 32, 48, 64, ... at most
    `block`): widths of 5 to 16 unroll completely and then vectorize across rows very badly (measured 20 to
    60 times slower with GCC 12)."""
    width = min(block, n)
    blocks = [(b * width, width, width) for b in range(n // width)]
    rest = n % width
    if rest:
        padded = rest if rest <= 4 or block < 24 else min(block, next(w for w in (24, 32, 48) + tuple(
            range(64, block + 16, 16)) if w >= rest))
        blocks.append((n - rest, rest, padded))
    return blocks


def pack(matrix: np.ndarray, block: int) -> np.ndarray:
    """(out, in) -> blocks of outputs, each stored input-major: block b is matrix[b0:b0+w, :].T, flattened,
    with zero columns for a padded last block."""
    parts = []
    for b0, stored, width in block_layout(matrix.shape[0], block):
        part = np.zeros((matrix.shape[1], width), matrix.dtype)
        part[:, :stored] = matrix[b0 : b0 + stored, :].T
        parts.append(part.reshape(-1))
    return np.concatenate(parts)


# -- C text helpers ----------------------------------------------------------------------------------


def c_float(v: float) -> str:
    s = f"{v:.9g}"
    if "." not in s and "e" not in s:
        s += ".0"
    return s + "f"


def c_array(ctype: str, name: str, values: list[str], comment: str, per_line: int = 8) -> str:
    lines = [f"/* {comment} */", f"static const {ctype} {name}[{len(values)}] = {{"]
    for i in range(0, len(values), per_line):
        lines.append("    " + ", ".join(values[i : i + per_line]) + ",")
    lines.append("};")
    return "\n".join(lines)


def float_values(a: np.ndarray) -> list[str]:
    return [c_float(v) for v in a.astype(np.float32).astype(np.float64).tolist()]


def c_identifier(name: str, taken: set[str]) -> str:
    ident = re.sub(r"[^0-9A-Za-z_]", "_", name) or "t"
    if ident[0].isdigit():
        ident = "t_" + ident
    while ident in C_KEYWORDS or ident in RESERVED_LOCALS or ident in taken or ident.startswith("vae_"):
        ident += "_"
    taken.add(ident)
    return ident


def comment_text(text: str) -> str:
    return text.replace("*/", "* /").replace("/*", "/ *")


# -- the kernels -----------------------------------------------------------------------------------------

K_CHUNK = 128  # inputs per partial sum in layers with more inputs than this
WEIGHT_CTYPE = {"fp32": "float", "fp16": "int16_t", "int8": "int8_t"}
WEIGHT_CONVERT = {"fp32": "{w}", "fp16": "vae_half({w})", "int8": "(float)({w})"}


def kernel_name(weights: str, k: int, width: int, act: str | None, stored: int | None = None) -> str:
    pad = f"_{stored}" if stored is not None and stored != width else ""
    return f"dense_{weights}_{k}x{width}{pad}" + (f"_{act}" if act else "")


def kernel_source(weights: str, k: int, width: int, act: str | None, stored: int | None = None) -> str:
    """y[r][0:stored] = act(x[r][0:k] . w + bias) for rows r < rows (rows <= VAE_ROWS); w input-major
    (k, width), where the last width - stored columns are zero padding (computed, not stored)."""
    stored = width if stored is None else stored
    wt = WEIGHT_CTYPE[weights]
    conv = WEIGHT_CONVERT[weights]
    scaled = weights == "int8"
    scale_param = ", const float *scale, const float *columns" if scaled else ""
    x_in = "x[r * K + i] * columns[i]" if scaled else "x[r * K + i]"

    def epilogue(acc: str) -> str:
        v = f"{acc} * scale[k] + bias[k]" if scaled else f"{acc} + bias[k]"
        if act is None:
            return v
        return f"vae_{act}({v})" if act != "relu" else f"vae_relu({v})"

    name = kernel_name(weights, k, width, act, stored)
    if weights == "fp32":
        block_weights = "            const float *wf = w + (size_t)i * W;\n"
    else:
        # int8: the input's column scale goes into the converted weights (W multiplies per input, shared by
        # the tile's rows), so that the rows' inputs stay plain broadcasts from memory
        col = " * columns[i]" if scaled else ""
        block_weights = (
            f"            const {wt} *wi = w + (size_t)i * W;\n"
            f"            float wf[W];\n"
            f"            for (k = 0; k < W; k++)\n"
            f"                wf[k] = {conv.format(w='wi[k]')}{col};\n"
        )
    block_weights_chunked = "".join("    " + line + "\n" for line in block_weights.splitlines())
    if k <= K_CHUNK:
        return f"""\
static void {name}(const float *x, float *y, int ldy, int rows, const {wt} *w, const float *bias{scale_param})
{{
    enum {{ K = {k}, W = {width}, V = {stored} }}; /* inputs, outputs computed, outputs stored */
    int i, k, r;
    if (rows == VAE_ROWS) {{
        /* register block: VAE_ROWS rows x W outputs of accumulators; each weight loaded once per tile */
        float acc[VAE_ROWS][W];
        for (r = 0; r < VAE_ROWS; r++)
            for (k = 0; k < W; k++)
                acc[r][k] = 0.0f;
        for (i = 0; i < K; i++) {{
            float xr[VAE_ROWS]; /* (a separate loop keeps compilers from interchanging i and r) */
{block_weights}            for (r = 0; r < VAE_ROWS; r++)
                xr[r] = x[r * K + i];
            for (r = 0; r < VAE_ROWS; r++)
                for (k = 0; k < W; k++)
                    acc[r][k] = VAE_MADD(acc[r][k], xr[r], wf[k]);
        }}
        for (r = 0; r < VAE_ROWS; r++)
            for (k = 0; k < V; k++)
                y[r * ldy + k] = {epilogue("acc[r][k]")};
        return;
    }}
    for (r = 0; r < rows; r++) {{
        float acc[W];
        for (k = 0; k < W; k++)
            acc[k] = 0.0f;
        for (i = 0; i < K; i++) {{
            const {wt} *wi = w + (size_t)i * W;
            const float xv = {x_in};
            for (k = 0; k < W; k++)
                acc[k] = VAE_MADD(acc[k], xv, {conv.format(w="wi[k]")});
        }}
        for (k = 0; k < V; k++)
            y[r * ldy + k] = {epilogue("acc[k]")};
    }}
}}
"""
    return f"""\
static void {name}(const float *x, float *y, int ldy, int rows, const {wt} *w, const float *bias{scale_param})
{{
    enum {{ K = {k}, W = {width}, V = {stored}, KC = {K_CHUNK} }}; /* inputs, outputs computed and stored, chunk */
    int i, i0, k, r;
    if (rows == VAE_ROWS) {{
        /* register block: VAE_ROWS rows x W outputs of accumulators; each weight loaded once per tile.
           Sums over chunks of KC inputs are added up separately, which halves the rounding error. */
        float acc[VAE_ROWS][W];
        for (r = 0; r < VAE_ROWS; r++)
            for (k = 0; k < W; k++)
                acc[r][k] = 0.0f;
        for (i0 = 0; i0 < K; i0 += KC) {{
            const int i1 = K - i0 < KC ? K : i0 + KC;
            float part[VAE_ROWS][W];
            for (r = 0; r < VAE_ROWS; r++)
                for (k = 0; k < W; k++)
                    part[r][k] = 0.0f;
            for (i = i0; i < i1; i++) {{
                float xr[VAE_ROWS]; /* (a separate loop keeps compilers from interchanging i and r) */
{block_weights_chunked}                for (r = 0; r < VAE_ROWS; r++)
                    xr[r] = x[r * K + i];
                for (r = 0; r < VAE_ROWS; r++)
                    for (k = 0; k < W; k++)
                        part[r][k] = VAE_MADD(part[r][k], xr[r], wf[k]);
            }}
            for (r = 0; r < VAE_ROWS; r++)
                for (k = 0; k < W; k++)
                    acc[r][k] += part[r][k];
        }}
        for (r = 0; r < VAE_ROWS; r++)
            for (k = 0; k < V; k++)
                y[r * ldy + k] = {epilogue("acc[r][k]")};
        return;
    }}
    for (r = 0; r < rows; r++) {{
        float acc[W];
        for (k = 0; k < W; k++)
            acc[k] = 0.0f;
        for (i0 = 0; i0 < K; i0 += KC) {{
            const int i1 = K - i0 < KC ? K : i0 + KC;
            float part[W];
            for (k = 0; k < W; k++)
                part[k] = 0.0f;
            for (i = i0; i < i1; i++) {{
                const {wt} *wi = w + (size_t)i * W;
                const float xv = {x_in};
                for (k = 0; k < W; k++)
                    part[k] = VAE_MADD(part[k], xv, {conv.format(w="wi[k]")});
            }}
            for (k = 0; k < W; k++)
                acc[k] += part[k];
        }}
        for (k = 0; k < V; k++)
            y[r * ldy + k] = {epilogue("acc[k]")};
    }}
}}
"""


def int8_dot_kernel_name(k: int, n: int, act: str | None) -> str:
    return f"dense_w8a8_{k}x{n}" + (f"_{act}" if act else "")


INT8_DOT_ALIGN = 64  # inputs are padded with zeros to a multiple of this: no remainder loop after the vectors


def int8_dot_padded(k: int) -> int:
    return -(-k // INT8_DOT_ALIGN) * INT8_DOT_ALIGN


def int8_dot_kernel_source(k: int, n: int, act: str | None) -> str:
    """An int8 layer as integer dot products: each input row is quantized to uint8 (per row, asymmetric:
    x * columns ~= step * a + lo), then y[o] = scale[o] * (step * sum(a * q[o]) + lo * rowsum[o]) + bias[o].
    The sums are exact int32 arithmetic, which compilers map to 4-way byte dot products (AVX-512 VNNI
    vpdpbusd, AVX2 vpmaddwd, Arm sdot/smlad): 4 to 6 times the multiply-adds per instruction of fp32."""
    out = "v" if act is None else f"vae_{act}(v)"
    return f"""\
static void {int8_dot_kernel_name(k, n, act)}(const float *x, float *y, int rows, const int8_t *w, const float *scale,
    const float *columns, const int32_t *rowsum, const float *bias)
{{
    enum {{ K = {k}, KP = {int8_dot_padded(k)}, N = {n}, L = 16 }}; /* inputs (padded), outputs, lanes */
    uint8_t a[VAE_ROWS][KP];
    float step[VAE_ROWS], lo[VAE_ROWS];
    int i, j, o, r;
    for (r = 0; r < rows; r++) {{
        const float *xr = x + r * K;
        float lo_l[L], hi_l[L], low = 0.0f, high = 0.0f, inv;
        for (j = 0; j < L; j++)
            lo_l[j] = hi_l[j] = 0.0f;
        for (i = 0; i + L <= K; i += L) /* in lanes, so that it vectorizes without reassociation */
            for (j = 0; j < L; j++) {{
                const float v = xr[i + j] * columns[i + j];
                lo_l[j] = v < lo_l[j] ? v : lo_l[j];
                hi_l[j] = v > hi_l[j] ? v : hi_l[j];
            }}
        for (; i < K; i++) {{
            const float v = xr[i] * columns[i];
            low = v < low ? v : low;
            high = v > high ? v : high;
        }}
        for (j = 0; j < L; j++) {{
            low = lo_l[j] < low ? lo_l[j] : low;
            high = hi_l[j] > high ? hi_l[j] : high;
        }}
        step[r] = (high - low) / 255.0f;
        lo[r] = low;
        inv = step[r] > 0.0f ? 1.0f / step[r] : 0.0f;
        for (i = 0; i < K; i++) {{
            /* one operation per statement: no contraction into fused multiply-adds, so that every
               compiler rounds exactly like the Python reference */
            const float v = xr[i] * columns[i];
            const float d = v - low;
            float q = d * inv;
            q = q + 0.5f;
            q = q < 0.0f ? 0.0f : q;
            q = q > 255.0f ? 255.0f : q;
            a[r][i] = (uint8_t)q;
        }}
        for (; i < KP; i++)
            a[r][i] = 0;
    }}
    for (o = 0; o < N; o++) {{ /* each output's weights are read once per tile and reused for its rows */
        const int8_t *wo = w + (size_t)o * KP;
        for (r = 0; r < rows; r++) {{
            int32_t acc = 0;
            float v;
            for (i = 0; i < KP; i++)
                acc += (int32_t)a[r][i] * (int32_t)wo[i];
            v = scale[o] * (step[r] * (float)acc + lo[r] * (float)rowsum[o]) + bias[o];
            y[r * N + o] = {out};
        }}
    }}
}}
"""


ELEMENTWISE_SOURCE = {
    "relu": "vae_relu(x[j])",
    "sigmoid": "vae_sigmoid(x[j])",
    "tanh": "vae_tanh(x[j])",
    "identity": "x[j]",
}


def elementwise_source(op: str) -> str:
    return f"""\
static void ew_{op}(const float *x, float *y, int count)
{{
    int j;
    for (j = 0; j < count; j++)
        y[j] = {ELEMENTWISE_SOURCE[op]};
}}
"""


ROWS_BY_TARGET = """\
/* Rows per tile. Intermediate activations take VAE_ROWS * width floats of stack each, and a tile of rows
   shares each weight load: 6 rows x 64 outputs of accumulators fill 24 of the 32 AVX-512 registers (best
   with -mprefer-vector-width=512). Define VAE_ROWS=1 for the smallest stack (microcontrollers). */
#ifndef VAE_ROWS
#if defined(__AVX512F__)
#define VAE_ROWS 6
#else
#define VAE_ROWS 1
#endif
#endif
"""

PREAMBLE = """\
/* a + x * w, fused into one rounding where the target has a fused multiply-add instruction */
#if defined(FP_FAST_FMAF) || defined(__FMA__) || defined(__ARM_FEATURE_FMA)
#define VAE_MADD(a, x, w) fmaf((x), (w), (a))
#else
#define VAE_MADD(a, x, w) ((a) + (x) * (w))
#endif

typedef union { uint32_t u; float f; } vae_bits;
"""

RELU_HELPER = """
static float vae_relu(float v)
{
    return v > 0.0f ? v : 0.0f;
}
"""

EXP_HELPER = """
/* exp(x) for float, branch-free so that loops over it vectorize: Cephes' expf polynomial after range
   reduction x = n ln2 + r, |relative error| < 2e-7 on [-87, 88]; the input is clamped to that range. */
static float vae_exp(float x)
{
    vae_bits s;
    float t, n, r, p;
    x = x < -87.0f ? -87.0f : x;
    x = x > 88.0f ? 88.0f : x;
    t = x * 1.44269504088896341f + 12582912.0f; /* + 1.5 * 2^23 rounds to the nearest integer */
    n = t - 12582912.0f;
    r = x - n * 0.693359375f;
    r = r - n * -2.12194440e-4f;
    p = 1.9875691500e-4f;
    p = p * r + 1.3981999507e-3f;
    p = p * r + 8.3334519073e-3f;
    p = p * r + 4.1665795894e-2f;
    p = p * r + 1.6666665459e-1f;
    p = p * r + 5.0000001201e-1f;
    p = p * r * r + r + 1.0f;
    s.u = (uint32_t)((int32_t)n + 127) << 23;
    return p * s.f;
}
"""

SIGMOID_HELPER = """
static float vae_sigmoid(float v)
{
    return 1.0f / (1.0f + vae_exp(-v));
}
"""

TANH_HELPER = """
static float vae_tanh(float v)
{
    return 2.0f / (1.0f + vae_exp(-2.0f * v)) - 1.0f;
}
"""

HALF_HELPER = """
/* IEEE half (its bits, stored as int16_t) to float: sign-extend, move exponent and mantissa into place,
   clear the sign copies, and rescale by 2^112 (the difference of the exponent biases). Exact for zero and
   every normal half; the generator stores no subnormal halves (they would make the multiply slow). */
static float vae_half(int16_t h)
{
    vae_bits b;
    b.u = ((uint32_t)(int32_t)h << 13) & 0x8fffe000u;
    return b.f * 5.192296858534827628530496329220096e33f;
}
"""


# -- one graph -> one function ------------------------------------------------------------------------------


@dataclass
class _Function:
    name: str  # "encode"
    graph: Graph
    args: list[str]  # C names: input, outputs
    signature: str


class _Writer:
    def __init__(self, graphs: dict[str, Graph], prefix: str, weights: str, block: int, info: str,
                 model_name: str, digests: dict[str, str], rows: int | None = None) -> None:
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
        self.info, self.model_name, self.digests = info, model_name, digests
        self.P = prefix.upper()
        self.kernels: dict[str, str] = {}
        self.tables: list[str] = []
        self.layers: list[str] = []
        self.elementwise: set[str] = set()
        self.activations: set[str] = set()
        self.weight_bytes = 0
        self.functions: list[_Function] = []
        for fname, g in graphs.items():
            taken: set[str] = set()
            args = [c_identifier(g.input[0], taken)] + [c_identifier(o, taken) for o in g.output_names]
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
        what = f"{comment_text(op.name)}: {k} -> {n}" + (f", {op.act}" if op.act else "")
        if op.act:
            self.activations.add(op.act)
        if uses_int8_dot(self.weights, k):
            return self._int8_dot(base, what, op)
        if self.weights == "fp32":
            self._table("float", f"{base}_w", float_values(pack(op.weight, self.block)), 4,
                        f"{what}: weights, fp32, blocks of {min(self.block, n)} outputs, input-major")
        elif self.weights == "fp16":
            bits = pack(to_fp16(op.weight, op.name), self.block).view(np.int16)
            self._table("int16_t", f"{base}_w", [str(b) for b in bits.tolist()], 2,
                        f"{what}: weights, IEEE half bits, blocks of {min(self.block, n)} outputs, input-major")
        else:
            q, scale, columns = quantize_int8(op.weight)
            self._table("int8_t", f"{base}_w", [str(v) for v in pack(q, self.block).tolist()], 1,
                        f"{what}: weights, int8 (w = q * scale[out] * columns[in]), blocks of "
                        f"{min(self.block, n)} outputs")
            self._table("float", f"{base}_s", float_values(scale), 4, f"{what}: int8 scale per output")
            self._table("float", f"{base}_c", float_values(columns), 4, f"{what}: int8 scale per input")
        self._table("float", f"{base}_b", float_values(op.bias), 4, f"{what}: bias")
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
                "    int b;",
                f"    for (b = 0; b < {len(full)}; b++)",
                f"        {full[0][3]}(x, y + b * {width}, {n}, rows, {base}_w + (size_t)b * {k * width}, "
                f"{base}_b + b * {width}" + (f", {base}_s + b * {width}, {base}_c" if self.weights == "int8" else "")
                + ");",
            ]
            rest = calls[len(full):]
        for b0, _, _, kname, scale, off in rest:
            body.append(f"    {kname}(x, y + {b0}, {n}, rows, {base}_w + {off}, {base}_b + {b0}{scale});")
        self.layers.append(
            f"/* {what} */\nstatic void {base}(const float *x, float *y, int rows)\n{{\n" + "\n".join(body) + "\n}\n"
        )
        return base

    def _int8_dot(self, base: str, what: str, op: Dense) -> str:
        n, k = op.weight.shape
        q, scale, columns = quantize_int8(op.weight)
        padded = np.zeros((n, int8_dot_padded(k)), np.int8)
        padded[:, :k] = q
        self._table("int8_t", f"{base}_w", [str(v) for v in padded.reshape(-1).tolist()], 1,
                    f"{what}: weights, int8 (w = q * scale[out] * columns[in]), one row of "
                    f"{padded.shape[1]} (zero-padded) per output")
        self._table("float", f"{base}_s", float_values(scale), 4, f"{what}: int8 scale per output")
        self._table("float", f"{base}_c", float_values(columns), 4, f"{what}: int8 scale per input")
        self._table("int32_t", f"{base}_r", [str(v) for v in q.astype(np.int64).sum(axis=1).tolist()], 4,
                    f"{what}: sum of each output's int8 weights")
        self._table("float", f"{base}_b", float_values(op.bias), 4, f"{what}: bias")
        kname = int8_dot_kernel_name(k, n, op.act)
        self.kernels.setdefault(kname, int8_dot_kernel_source(k, n, op.act))
        self.layers.append(
            f"/* {what}: int8 weights, inputs quantized per row to uint8, integer dot products */\n"
            f"static void {base}(const float *x, float *y, int rows)\n{{\n"
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
                decls.append(f"    float s{j}[VAE_ROWS * {g.widths[name]}]; /* {comment_text(name)} when {arg} "
                             f"is NULL */")
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
                decls.append(f"    float t{t}[VAE_ROWS * {g.widths[op.dst]}]; /* {comment_text(op.dst)} */")
                buffers[op.dst] = f"t{t}"
                stack_floats += g.widths[op.dst]
                t += 1
            src, dst = buffers[op.src], buffers[op.dst]
            if isinstance(op, Dense):
                call = f"{self._dense(fn.name, index, op)}({src}, {dst}, rows);"
            else:
                assert isinstance(op, Elementwise)
                self.elementwise.add(op.op)
                call = f"ew_{op.op}({src}, {dst}, rows * {g.widths[op.dst]}); /* {comment_text(op.name)} */"
            wanted = need[op.dst]
            if len(wanted) < len(outs):
                cond = " || ".join(f"{fn.args[1 + i]} != NULL" for i in sorted(wanted))
                steps.append(f"    if ({cond})\n        {call}")
            else:
                steps.append(f"    {call}")
        params = ", ".join(["const float *x"] + [f"float *{a}" for a in fn.args[1:]] + ["int rows"])
        tile = (f"/* {fn.name}: rows (<= VAE_ROWS) rows of {comment_text(in_name)} through the graph */\n"
                f"static void {fn.name}_tile({params})\n{{\n" + "\n".join(decls + steps) + "\n}\n")
        x = fn.args[0]
        out_args = fn.args[1:]
        offsets = ", ".join(
            f"{a} != NULL ? {a} + (size_t)r0 * {w} : NULL" for a, (_, w) in zip(out_args, g.outputs, strict=True)
        )
        all_null = " && ".join(f"{a} == NULL" for a in out_args)
        public = f"""\
{fn.signature}
{{
    int r0, rows;
    if (n < 0)
        return {P}_ERR_BATCH;
    if ({x} == NULL)
        return {P}_ERR_NULL_INPUT;
    if ({all_null})
        return {P}_ERR_NULL_OUTPUT;
    for (r0 = 0; r0 < n; r0 += rows) {{
        rows = n - r0 < VAE_ROWS ? n - r0 : VAE_ROWS;
        {fn.name}_tile({x} + (size_t)r0 * {in_width}, {offsets}, rows);
    }}
    return {P}_OK;
}}
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
        ew = [elementwise_source(op) for op in sorted(self.elementwise)]
        info = comment_text(self.info)
        source = "\n".join([
            f"/* {p}.c: {comment_text(self.model_name)} as plain C99, generated by {GENERATOR} from the ONNX graphs.",
            f"   Weights: {self.weights}. No dynamic allocation, no mutable global state (reentrant), only libm.",
            "   Do not edit: regenerate with `vae-infer export-c`. */",
            f'#include "{p}.h"',
            "",
            "#include <math.h>",
            "#include <stddef.h>",
            "#include <stdint.h>",
            "",
            helpers,
            *ew,
            *self.kernels.values(),
            *self.tables,
            "",
            *self.layers,
            *bodies,
            f'static const char {p}_info_text[] = "{info}";',
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
            header=self._header(), source=source, prefix=p, weights=self.weights,
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
            for (tname, width), arg in zip(names, fn.args, strict=True):
                sizes.append(f"#define {P}_{fn.name.upper()}_{arg.upper()}_SIZE {width} "
                             f"/* floats per row of {comment_text(tname)} */")
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
            )
        return "\n".join([
            f"/* {p}.h: {comment_text(self.model_name)} as a C99 library, generated by {GENERATOR}; do not edit.",
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


def generate(graphs: dict[str, Graph], digests: dict[str, str], weights: str = "fp32", prefix: str = "vae",
             block: int = DEFAULT_BLOCK, model_name: str = "a model", rows: int | None = None) -> Sources:
    """C99 sources computing each graph as `int <prefix>_<name>(const float *in, float *out..., int n)`.

    graphs: function name -> Graph; digests: function name -> sha256 of its ONNX bytes (recorded in
    <prefix>_info()). block: outputs per weight block (the register block's width); rows: rows per tile
    (VAE_ROWS), None for a choice by the target's preprocessor macros."""
    info = info_string(graphs, digests, weights, block)
    return _Writer(graphs, prefix, weights, block, info, model_name, digests, rows).write()


# -- a reference in numpy -----------------------------------------------------------------------------


def evaluate(graph: Graph, x: np.ndarray, weights: str = "fp32") -> list[np.ndarray]:
    """What the generated code computes for x, in float64 numpy with the same (quantized) weights: the
    outputs in the graph's order. Used to check generated code tightly, whatever the weight format."""
    values = {graph.input[0]: np.asarray(x, dtype=np.float64)}
    acts = {
        None: lambda v: v,
        "identity": lambda v: v,
        "relu": lambda v: np.maximum(v, 0.0),
        "sigmoid": lambda v: np.exp(-np.logaddexp(0.0, -v)),
        "tanh": np.tanh,
    }
    for op in graph.ops:
        src = values[op.src]
        if isinstance(op, Dense) and uses_int8_dot(weights, op.weight.shape[1]):
            values[op.dst] = acts[op.act](int8_dot_dense(src, op.weight, op.bias))
        elif isinstance(op, Dense):
            w = effective_weight(op.weight, weights).astype(np.float64)
            values[op.dst] = acts[op.act](src @ w.T + op.bias.astype(np.float64))
        else:
            values[op.dst] = acts[op.op](src)
    return [values[name] for name in graph.output_names]
