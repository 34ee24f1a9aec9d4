"""The int8 layers with integer dot products: each input row quantized per row to uint8, exact int32 sums of
uint8 x int8 products, then one float epilogue per output. Two weight layouts:

- rows (any output count): one zero-padded row of KP inputs per output, [N][KP];
- groups (output counts divisible by 16): 16 outputs x 4 inputs interleaved, [N/16][KP/4][16][4], the
  operand of AVX-512 VNNI's vpdpbusd. With __AVX512VNNI__ the kernel keeps 6 rows x 64 outputs of int32
  accumulators in registers (intrinsics); elsewhere a portable loop over the same layout.

The numpy reference (vae_infer.native.weights.int8_dot_dense) is exact for both: the sums are integers."""

from __future__ import annotations

import numpy as np


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
    layout = "groups of 16 outputs x 4 inputs" if uses_groups(n) else "a row of KP inputs per output"
    return f"""\
/* weights: {layout} */
static void {int8_dot_kernel_name(k, n, act)}(const float *x, float *y, int rows, const int8_t *w, const float *scale,
    const float *columns, const int32_t *rowsum, const float *bias)
{{
    enum {{ K = {k}, KP = {int8_dot_padded(k)}, N = {n}, L = 16 }}; /* inputs (padded), outputs, lanes */
    uint8_t a[VAE_ROWS][KP];
    float step[VAE_ROWS], lo[VAE_ROWS];
    int i, j, o, r;
    for (r = rows; r < VAE_ROWS; r++) {{ /* rows past the tile's end: zeros (computed, never stored) */
        step[r] = lo[r] = 0.0f;
        for (i = 0; i < KP; i++)
            a[r][i] = 0;
    }}
    for (r = 0; r < rows; r++) {{
        const float *xr = x + r * K;
        float lo_l[L], hi_l[L], low = 0.0f, high = 0.0f, inv;
        for (j = 0; j < L; j++)
            lo_l[j] = hi_l[j] = 0.0f;
#if defined(__AVX512F__)
        {{ /* the same lanes as below, as vectors (GCC 12 leaves the loop below scalar) */
            __m512 vlo = _mm512_setzero_ps(), vhi = _mm512_setzero_ps();
            for (i = 0; i + L <= K; i += L) {{
                const __m512 v = _mm512_mul_ps(_mm512_loadu_ps(xr + i), _mm512_loadu_ps(columns + i));
                vlo = _mm512_min_ps(v, vlo); /* v < lo ? v : lo */
                vhi = _mm512_max_ps(v, vhi); /* v > hi ? v : hi */
            }}
            _mm512_storeu_ps(lo_l, vlo);
            _mm512_storeu_ps(hi_l, vhi);
        }}
#else
        for (i = 0; i + L <= K; i += L) /* in lanes, so that it vectorizes without reassociation */
            for (j = 0; j < L; j++) {{
                const float v = xr[i + j] * columns[i + j];
                lo_l[j] = v < lo_l[j] ? v : lo_l[j];
                hi_l[j] = v > hi_l[j] ? v : hi_l[j];
            }}
#endif
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
{(_groups_sums(out, n) if uses_groups(n) else _rows_sums(out))}}}
"""


GROUP = 16  # outputs per group in the groups layout: one 512-bit vector of int32 sums


def uses_groups(n: int) -> bool:
    return n % GROUP == 0


def uses_vnni(n: int) -> bool:
    """Whether the kernel for n outputs has the VNNI path (at least 4 groups): it needs VNNI_HELPER."""
    return uses_groups(n) and n >= 4 * GROUP


def pack_int8_dot(q: np.ndarray) -> np.ndarray:
    """(N, KP) int8 -> the kernel's layout: [N/16][KP/4][16][4] when N is divisible by 16, else as it is."""
    n, kp = q.shape
    if not uses_groups(n):
        return q.reshape(-1)
    return q.reshape(n // GROUP, GROUP, kp // 4, 4).transpose(0, 2, 1, 3).reshape(-1)


def _epilogue(out: str, o: str, acc: str, indent: str) -> str:
    return (f"{indent}{{\n{indent}    const float v = scale[{o}] * (step[r] * (float)({acc}) + lo[r] * "
            f"(float)rowsum[{o}]) + bias[{o}];\n{indent}    y[r * N + {o}] = {out};\n{indent}}}\n")


def _rows_sums(out: str) -> str:
    return f"""\
    for (o = 0; o < N; o++) {{ /* each output's weights are read once per tile and reused for its rows */
        const int8_t *wo = w + (size_t)o * KP;
        for (r = 0; r < rows; r++) {{
            int32_t acc = 0;
            for (i = 0; i < KP; i++)
                acc += (int32_t)a[r][i] * (int32_t)wo[i];
{_epilogue(out, "o", "acc", "            ")}        }}
    }}
"""


VNNI_ROWS = 6  # rows of the VNNI register block: 6 rows x 4 vectors = 24 of the 32 registers


def _vnni_function(rows: int) -> str:
    """rows x 64 outputs (4 groups) of int32 sums in named register variables, as a function of its own:
    inlined into the kernel, GCC 12 kept storing the accumulators to memory on every step."""
    R = range(rows)
    zero = "\n".join(f"    __m512i c{r}0 = _mm512_setzero_si512(), c{r}1 = c{r}0, c{r}2 = c{r}0, c{r}3 = c{r}0;"
                     for r in R)
    steps = "\n".join(
        f"        av = _mm512_set1_epi32(vae_word4(a + (size_t){r} * kp + 4 * i));\n"
        + "\n".join(f"        VAE_DPBUSD(c{r}{j}, av, w{j});" for j in range(4))
        for r in R)
    stores = "\n".join(f"    _mm512_storeu_si512((void *)(sums + {r * 64 + j * 16}), c{r}{j});"
                       for r in R for j in range(4))
    return f"""
/* {rows} row(s) of uint8 inputs (a, kp bytes each) x 4 groups of 16 outputs (w: groups of kp * 16 bytes, 16
   outputs x 4 inputs interleaved) -> sums[{rows}][64]: vpdpbusd adds 4 uint8 x int8 products per lane, each
   row's 4 input bytes broadcast to every lane */
VAE_NOINLINE static void vae_vnni_{rows}x64(const int8_t *w, const uint8_t *a, int kp, int32_t *sums)
{{
    const size_t gs = (size_t)kp * 16;
    int i;
{zero}
    for (i = 0; i < kp / 4; i++) {{
        const __m512i w0 = _mm512_loadu_si512((const void *)(w + (size_t)i * 64));
        const __m512i w1 = _mm512_loadu_si512((const void *)(w + gs + (size_t)i * 64));
        const __m512i w2 = _mm512_loadu_si512((const void *)(w + 2 * gs + (size_t)i * 64));
        const __m512i w3 = _mm512_loadu_si512((const void *)(w + 3 * gs + (size_t)i * 64));
        __m512i av;
{steps}
    }}
{stores}
}}
"""


def _portable_groups(out: str, first: str) -> str:
    return f"""\
        for (g = {first}; g < NG; g++) {{ /* portable: any CPU */
            const int8_t *wg = w + (size_t)g * KP * G;
            int32_t acc[VAE_ROWS][G];
            for (r = 0; r < rows; r++)
                for (o = 0; o < G; o++)
                    acc[r][o] = 0;
            for (i = 0; i < KQ; i++)
                for (r = 0; r < rows; r++)
                    for (o = 0; o < G; o++)
                        for (j = 0; j < 4; j++)
                            acc[r][o] += (int32_t)a[r][4 * i + j] * (int32_t)wg[(i * G + o) * 4 + j];
            for (r = 0; r < rows; r++)
                for (o = 0; o < G; o++)
{_epilogue(out, "g * G + o", "acc[r][o]", "                    ")}        }}
"""


def _groups_sums(out: str, n: int) -> str:
    groups = n // GROUP
    quads = groups // 4 * 4
    tail = _portable_groups(out, str(quads)) if quads < groups else ""
    vnni = f"""\
        /* 4 groups (64 outputs) x 6 rows of int32 sums in registers; vpdpbusd adds 4 uint8 x int8 products
           per lane, each row's 4 input bytes broadcast to every lane */
        for (g = 0; g < {quads}; g += 4) {{
            const int8_t *wg = w + (size_t)g * KP * G;
            int32_t sums[VAE_ROWS][4 * G];
            if (rows == VAE_ROWS)
                vae_vnni_{VNNI_ROWS}x64(wg, a[0], KP, sums[0]);
            else /* a short tile: one row at a time */
                for (r = 0; r < rows; r++)
                    vae_vnni_1x64(wg, a[r], KP, sums[r]);
            for (r = 0; r < rows; r++)
                for (o = 0; o < 4 * G; o++)
{_epilogue(out, "g * G + o", "sums[r][o]", "                    ")}        }}
{tail}"""
    return f"""\
    {{
        enum {{ G = {GROUP}, KQ = KP / 4, NG = N / G }}; /* outputs per group, 4-input steps, groups */
        int g;
#if defined(__AVX512VNNI__) && defined(__AVX512F__) && VAE_ROWS == {VNNI_ROWS}
{vnni if quads else _portable_groups(out, "0")}#else
{_portable_groups(out, "0")}#endif
    }}
"""


VNNI_HELPER = f"""
#if defined(__AVX512VNNI__) && defined(__AVX512F__) && VAE_ROWS == {VNNI_ROWS}
#define VAE_NOINLINE __attribute__((noinline)) /* GCC 12 inlined, keeps the sums in memory: 20% slower */
#if defined(__GNUC__)
/* acc += 4 uint8 x int8 products per lane, in place: GCC 12 wraps the intrinsic in register copies
   (three per vpdpbusd), which halves the kernel's speed */
#define VAE_DPBUSD(acc, a, w) __asm__("vpdpbusd %2, %1, %0" : "+v"(acc) : "v"(a), "v"(w))
#else
#define VAE_DPBUSD(acc, a, w) ((acc) = _mm512_dpbusd_epi32((acc), (a), (w)))
#endif
/* 4 bytes as one little-endian int32 (x86): the compiler makes it one load */
static int vae_word4(const uint8_t *p)
{{
    return (int)((uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24);
}}
{_vnni_function(VNNI_ROWS)}{_vnni_function(1)}#endif
"""
