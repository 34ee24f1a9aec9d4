"""The C kernels the writer instantiates: dense layers with register blocking for fp32, fp16 and int8
weights, the int8 layer with integer dot products, elementwise functions, and the helpers every generated
file starts with (rows per tile by target, fused multiply-add, exp, sigmoid, tanh, half to float).

Only text templates live here; which kernel each layer uses is the writer's choice (vae_infer.native.writer)."""

from __future__ import annotations

K_CHUNK = 128  # inputs per partial sum in layers with more inputs than this
WEIGHT_CTYPE = {"fp32": "float", "fp16": "int16_t", "int8": "int8_t"}
WEIGHT_CONVERT = {"fp32": "{w}", "fp16": "vae_half({w})", "int8": "(float)({w})"}


def kernel_name(weights: str, k: int, width: int, act: str | None, stored: int | None = None) -> str:
    pad = f"_{stored}" if stored is not None and stored != width else ""
    return f"dense_{weights}_{k}x{width}{pad}" + (f"_{act}" if act else "")


NARROW_LANES = 16  # partial sums per dot product: one AVX-512 vector, four NEON vectors


def narrow_kernel_name(weights: str, k: int, n: int, act: str | None) -> str:
    return f"dot_{weights}_{k}x{n}" + (f"_{act}" if act else "")


def narrow_kernel_source(weights: str, k: int, n: int, act: str | None) -> str:
    """y[r][o] = act(x[r] . w[o] + bias[o]) for a narrow layer (weights output-major, [n][k]): each dot
    product in NARROW_LANES partial sums, so that it vectorizes without reassociating float additions; each
    weight is converted once per tile of rows."""
    scaled = weights == "int8"
    conv = WEIGHT_CONVERT[weights].format(w="wo[i + j]") + (" * columns[i + j]" if scaled else "")
    conv_tail = WEIGHT_CONVERT[weights].format(w="wo[i]") + (" * columns[i]" if scaled else "")
    v = "s * scale[o] + bias[o]" if scaled else "s + bias[o]"
    out = v if act is None else f"vae_{act}({v})"
    scale_param = ", const float *scale, const float *columns" if scaled else ""
    return f"""\
static void {narrow_kernel_name(weights, k, n, act)}(const float *x, float *y, int ldy, int rows,
    const {WEIGHT_CTYPE[weights]} *w, const float *bias{scale_param})
{{
    enum {{ K = {k}, N = {n}, L = {NARROW_LANES} }}; /* inputs, outputs, lanes */
    int i, j, o, r;
    for (o = 0; o < N; o++) {{
        const {WEIGHT_CTYPE[weights]} *wo = w + (size_t)o * K;
        float part[VAE_ROWS][L];
        for (r = 0; r < rows; r++)
            for (j = 0; j < L; j++)
                part[r][j] = 0.0f;
        for (i = 0; i + L <= K; i += L) {{
            float wv[L];
            for (j = 0; j < L; j++)
                wv[j] = {conv};
            for (r = 0; r < rows; r++)
                for (j = 0; j < L; j++)
                    part[r][j] += x[r * K + i + j] * wv[j]; /* not fmaf: GCC 12 leaves it scalar here */
        }}
        for (r = 0; r < rows; r++) {{
            float s = 0.0f;
            for (i = K / L * L; i < K; i++)
                s = VAE_MADD(s, x[r * K + i], {conv_tail});
            for (j = 0; j < L; j++)
                s += part[r][j];
            y[r * ldy + o] = {out};
        }}
    }}
}}
"""


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
        return f"vae_{act}({v})"

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
/* Intermediate activations: on the stack (every function reentrant), or with -DVAE_STATIC_ACTIVATIONS in
   static RAM (bare metal: a small stack, one caller at a time; the RAM then shows in .bss). */
#ifdef VAE_STATIC_ACTIVATIONS
#define VAE_ACTIVATIONS static
#else
#define VAE_ACTIVATIONS
#endif

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


LAYER_HELPER = """
/* a dense layer over all of its output blocks (part < 0), or one half of them (part 0 or 1) */
typedef void (*vae_layer)(const float *x, float *y, int rows, int part);
"""

# Two threads for one call: the calling thread and one worker each take half of the work: half of the rows
# (whole tiles) for batches of several tiles, or half of a large layer's output blocks for a few rows (each
# thread then streams half the weights, from its own core's cache when they fit). Built only with
# -DVAE_THREADS (the Python backend's library): POSIX threads and GCC atomics, the one place with mutable
# global state. The worker spins for a while after each job, then sleeps; the caller never waits for a
# worker that has not started on its half: it takes the half back.
POOL_HELPER = """
#ifdef VAE_THREADS
#include <pthread.h>
#include <sched.h>

#if defined(__x86_64__) || defined(__i386__)
#define VAE_PAUSE() __builtin_ia32_pause()
#elif defined(__aarch64__) || defined(__arm__)
#define VAE_PAUSE() __asm__ volatile("yield")
#else
#define VAE_PAUSE() ((void)0)
#endif
#ifndef VAE_SPIN
#define VAE_SPIN 20000 /* pauses before the idle worker sleeps (under a millisecond) */
#endif
#ifndef VAE_SPLIT_ROWS
#define VAE_SPLIT_ROWS (4 * VAE_ROWS) /* from this many rows on, the two threads split the rows */
#endif

typedef void (*vae_job)(const void *ctx, int part); /* part 0: the caller's half, 1: the other */

/* One job at a time: the caller publishes it (gen), then the worker, and the caller once done with its own
   half, try to take the second half (taken: 0 free, 1 the worker's, 2 the caller's). */
static struct {
    pthread_mutex_t lock;
    pthread_cond_t wake;
    pthread_once_t once;
    int started, busy, sleeping, taken;
    unsigned gen, job_id, done;
    vae_job job;
    const void *ctx;
} vae_pool = {PTHREAD_MUTEX_INITIALIZER, PTHREAD_COND_INITIALIZER, PTHREAD_ONCE_INIT, 0, 0, 0, 2, 0, 0, 0, 0, 0};

static void *vae_worker(void *arg)
{
    unsigned seen = 0;
    (void)arg;
    for (;;) {
        long spins = 0;
        int free_ = 0;
        while (__atomic_load_n(&vae_pool.gen, __ATOMIC_ACQUIRE) == seen) {
            if (++spins < VAE_SPIN) {
                VAE_PAUSE();
                if (spins % 64 == 0)
                    sched_yield(); /* a shared machine: let a waiting thread (maybe the caller) run */
                continue;
            }
            pthread_mutex_lock(&vae_pool.lock);
            __atomic_store_n(&vae_pool.sleeping, 1, __ATOMIC_SEQ_CST);
            while (__atomic_load_n(&vae_pool.gen, __ATOMIC_SEQ_CST) == seen)
                pthread_cond_wait(&vae_pool.wake, &vae_pool.lock);
            __atomic_store_n(&vae_pool.sleeping, 0, __ATOMIC_SEQ_CST);
            pthread_mutex_unlock(&vae_pool.lock);
            spins = 0;
        }
        seen = __atomic_load_n(&vae_pool.gen, __ATOMIC_ACQUIRE);
        if (__atomic_compare_exchange_n(&vae_pool.taken, &free_, 1, 0, __ATOMIC_ACQ_REL, __ATOMIC_ACQUIRE)) {
            const unsigned id = vae_pool.job_id; /* the job it took (published before taken was freed) */
            vae_pool.job(vae_pool.ctx, 1);
            __atomic_store_n(&vae_pool.done, id, __ATOMIC_RELEASE);
        }
    }
    return NULL;
}

/* a child process (fork) has no worker, and the lock may have been held at the fork: one thread there */
static void vae_forked(void)
{
    vae_pool.started = 0;
}

static void vae_start(void)
{
    pthread_t t;
    pthread_attr_t attr;
    if (pthread_atfork(NULL, NULL, vae_forked) != 0 || pthread_attr_init(&attr) != 0)
        return;
    pthread_attr_setdetachstate(&attr, PTHREAD_CREATE_DETACHED);
    vae_pool.started = pthread_create(&t, &attr, vae_worker, NULL) == 0;
    pthread_attr_destroy(&attr);
}

/* job(ctx, 0) and job(ctx, 1), on two threads when the worker is free, else one after the other here */
static void vae_split(vae_job job, const void *ctx)
{
    int idle = 0, free_ = 0;
    long spins;
    unsigned id;
    if (pthread_once(&vae_pool.once, vae_start) != 0 || !vae_pool.started ||
        !__atomic_compare_exchange_n(&vae_pool.busy, &idle, 1, 0, __ATOMIC_ACQUIRE, __ATOMIC_RELAXED)) {
        job(ctx, 0); /* no worker, or another caller has it */
        job(ctx, 1);
        return;
    }
    vae_pool.job = job;
    vae_pool.ctx = ctx;
    id = vae_pool.job_id + 1;
    vae_pool.job_id = id;
    __atomic_store_n(&vae_pool.taken, 0, __ATOMIC_RELEASE); /* the job's fields before it can be taken */
    __atomic_store_n(&vae_pool.gen, id, __ATOMIC_SEQ_CST); /* then the wake-up */
    if (__atomic_load_n(&vae_pool.sleeping, __ATOMIC_SEQ_CST)) {
        pthread_mutex_lock(&vae_pool.lock);
        pthread_cond_signal(&vae_pool.wake);
        pthread_mutex_unlock(&vae_pool.lock);
    }
    job(ctx, 0);
    if (__atomic_compare_exchange_n(&vae_pool.taken, &free_, 2, 0, __ATOMIC_ACQ_REL, __ATOMIC_RELAXED))
        job(ctx, 1); /* the worker did not start on it: do it here */
    else
        for (spins = 1; __atomic_load_n(&vae_pool.done, __ATOMIC_ACQUIRE) != id; spins++) {
            VAE_PAUSE();
            if (spins % 64 == 0)
                sched_yield(); /* the worker may be waiting for a core */
        }
    __atomic_store_n(&vae_pool.busy, 0, __ATOMIC_RELEASE);
}
#endif
"""

THREADS_HELPER = """
#ifdef VAE_THREADS
struct vae_layer_job {
    vae_layer fn;
    const float *x;
    float *y;
    int rows;
};

static void vae_layer_part(const void *ctx, int part)
{
    const struct vae_layer_job *j = (const struct vae_layer_job *)ctx;
    j->fn(j->x, j->y, j->rows, part);
}

static void vae_run_layer(vae_layer fn, const float *x, float *y, int rows, int par)
{
    struct vae_layer_job j;
    if (!par) {
        fn(x, y, rows, -1);
        return;
    }
    j.fn = fn;
    j.x = x;
    j.y = y;
    j.rows = rows;
    vae_split(vae_layer_part, &j);
}
#else
static void vae_run_layer(vae_layer fn, const float *x, float *y, int rows, int par)
{
    (void)par;
    fn(x, y, rows, -1);
}
#endif
"""
