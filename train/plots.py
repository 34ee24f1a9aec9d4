"""The training pictures: loss curves, the test set's latent means, reconstructions, prior samples and the
2-D manifold. Each function writes one PNG (atomically) and returns its path.

matplotlib is drawn through its Agg canvas on Figure objects, never pyplot: no display is needed, no
global backend is switched, and no figure lingers in memory after its file is written.
`make_all` draws from the exported model package, so the pictures show what users of `vae_infer` get."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from vae_infer.atomic import write_atomically
from vae_infer.viz import image_grid, save_image_grid

from .data import CLASS_NAMES, Dataset

DPI = 100
SCATTER_MAX_POINTS = 10_000
RECONSTRUCTIONS = 10
SAMPLES = 100  # a 10 x 10 grid
SAMPLE_SEED = 0
SUBSET_SEED = 0
MANIFOLD_N = 20
MANIFOLD_SPAN = 3.0  # +-3 standard deviations of the N(0, I) prior covers nearly all its mass

FILE_NAMES = {
    "loss_curves": "loss_curves.png",
    "latent_scatter": "latent_scatter.png",
    "reconstructions": "reconstructions.png",
    "samples": "samples.png",
    "manifold": "manifold.png",
}

GRAY = {"cmap": "gray", "vmin": 0.0, "vmax": 1.0, "interpolation": "nearest"}


def _new_figure(width_in: float, height_in: float) -> Figure:
    fig = Figure(figsize=(width_in, height_in), dpi=DPI, facecolor="white")
    FigureCanvasAgg(fig)
    return fig


def _save(fig: Figure, path: str | Path) -> Path:
    return write_atomically(path, lambda f: fig.savefig(f, format="png", dpi=DPI, facecolor="white"))


# -- loss curves --------------------------------------------------------------------------------------------
def plot_loss_curves(history: list[dict], path: str | Path) -> Path:
    """-ELBO and its two parts (reconstruction -E[log p(x|z)] and KL(q(z|x) || p(z))) per epoch, for the
    training set (averaged over the epoch) and the validation set (measured after it), nats per example."""
    if not history:
        raise ValueError("plot_loss_curves: the history is empty; there is nothing to plot")
    epochs = np.array([row["epoch"] for row in history], dtype=float)

    def column(key: str) -> np.ndarray:
        return np.array([row.get(key, math.nan) for row in history], dtype=float)

    # fit() logs train_nelbo as recon + beta * kl: it differs from recon + kl only during KL warm-up (beta < 1).
    weighted = not np.allclose(column("train_nelbo"), column("train_recon") + column("train_kl"), rtol=1e-4)
    panels = [
        ("nelbo", "-ELBO (recon + KL)", "lower is better"),
        ("recon", "Reconstruction: -E[log p(x|z)]", "Bernoulli negative log-likelihood"),
        ("kl", "KL(q(z|x) || p(z))", "distance of the posterior from N(0, I)"),
    ]
    fig = _new_figure(15, 4.6)
    axes = fig.subplots(1, 3)
    marker = "o" if len(history) <= 30 else None
    for ax, (key, title, subtitle) in zip(axes, panels, strict=True):
        train_label = "train (β-weighted KL during warm-up)" if key == "nelbo" and weighted else "train"
        ax.plot(epochs, column(f"train_{key}"), marker=marker, ms=4, label=train_label, color="tab:blue")
        val = column(f"val_{key}")
        if np.isfinite(val).any():
            ax.plot(epochs, val, marker=marker, ms=4, ls="--", label="validation", color="tab:orange")
        ax.set_title(f"{title}\n({subtitle})", fontsize=11)
        ax.set_xlabel("epoch")
        ax.set_ylabel("nats per example")
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=9)
        ax.xaxis.get_major_locator().set_params(integer=True)
    fig.suptitle("Training curves: negative ELBO and its two parts", fontsize=13)
    fig.tight_layout()
    return _save(fig, path)


# -- latent scatter -----------------------------------------------------------------------------------------
def plot_latent_scatter(
    mu: np.ndarray, labels: np.ndarray | None, class_names: tuple[str, ...] | None, path: str | Path
) -> Path:
    """Latent means mu (n, d) of test images, one dot each, coloured by label with a legend of class names.

    For d > 2 the first two dimensions are drawn (the title says so); for d == 1, z[0] along x and the
    points spread by class (or at random without labels) along y."""
    mu = np.asarray(mu, dtype=float)
    if mu.ndim != 2 or mu.shape[0] == 0 or mu.shape[1] == 0:
        raise ValueError(f"plot_latent_scatter: expected latent means shaped (n, d) with n, d >= 1, got {mu.shape}")
    n, d = mu.shape
    if labels is not None:
        labels = np.asarray(labels).reshape(-1)
        if len(labels) != n:
            raise ValueError(f"plot_latent_scatter: {n} latent means but {len(labels)} labels")
    fig = _new_figure(9.5, 7.5)
    ax = fig.subplots()
    size, alpha = (4, 0.5) if n > 2000 else (14, 0.8)
    if d >= 2:
        x, y = mu[:, 0], mu[:, 1]
        ax.set_xlabel("z[0]  (latent mean, dimension 0)")
        ax.set_ylabel("z[1]  (latent mean, dimension 1)")
        dims = "" if d == 2 else f"\n(the first 2 of {d} latent dimensions)"
    else:
        x = mu[:, 0]
        spread = labels.astype(float) if labels is not None else np.zeros(n)
        y = spread + np.random.default_rng(0).uniform(-0.35, 0.35, n)
        ax.set_xlabel("z[0]  (latent mean)")
        ax.set_ylabel("label (jittered)" if labels is not None else "random jitter")
        dims = "\n(1-D latent space: z[0] along x)"
    if labels is None:
        ax.scatter(x, y, s=size, alpha=alpha, color="tab:blue", linewidths=0)
        what = "no labels"
    else:
        classes = np.unique(labels)
        cmap = _class_colors(len(classes))
        for i, c in enumerate(classes):
            sel = labels == c
            name = _class_name(c, class_names)
            ax.scatter(x[sel], y[sel], s=size, alpha=alpha, color=cmap[i], linewidths=0, label=name)
        legend = ax.legend(title="class", loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=10,
                           markerscale=8 / math.sqrt(size), frameon=False)
        for handle in legend.legend_handles:
            handle.set_alpha(1.0)
        what = "coloured by class"
    ax.set_title(f"Test-set latent means μ of q(z|x), {n} images, {what}{dims}", fontsize=12)
    ax.grid(True, alpha=0.3)
    if d >= 2:
        ax.set_aspect("equal", adjustable="datalim")
    fig.tight_layout()
    return _save(fig, path)


def _class_colors(k: int) -> list:
    from matplotlib import colormaps

    if k <= 10:
        return [colormaps["tab10"](i) for i in range(k)]
    if k <= 20:
        return [colormaps["tab20"](i) for i in range(k)]
    return [colormaps["turbo"](i / (k - 1)) for i in range(k)]


def _class_name(label, class_names: Sequence[str] | None) -> str:
    if class_names is not None and isinstance(label, (int, np.integer)) and 0 <= int(label) < len(class_names):
        return f"{int(label)}: {class_names[int(label)]}"
    return str(label)


# -- images -------------------------------------------------------------------------------------------------
def _pixel_scale(grid_shape: tuple[int, int], target: int) -> int:
    """An integer factor showing every image pixel as an exact square (no moire), about `target` pixels wide."""
    return max(1, min(8, target // max(grid_shape)))


def _image_axes(fig: Figure, size_px: tuple[int, int], left_px: float, bottom_px: float, grid: np.ndarray,
                **imshow_kwargs):
    """Axes exactly grid * scale pixels big at (left_px, bottom_px) of a figure of size_px (width, height)."""
    width, height = size_px
    scale = imshow_kwargs.pop("scale")
    ax = fig.add_axes((left_px / width, bottom_px / height, grid.shape[1] * scale / width,
                       grid.shape[0] * scale / height))
    ax.imshow(grid, aspect="auto", **GRAY, **imshow_kwargs)
    return ax


def plot_reconstructions(originals, reconstructions, image_shape, path: str | Path, n: int = 10) -> Path:
    """The course's figure: a row of `n` original images above the row of their VAE reconstructions."""
    shape = tuple(image_shape)  # (h, w) gray or (h, w, 3) RGB
    k = min(n, len(originals), len(reconstructions))
    if k < 1:
        raise ValueError("plot_reconstructions: need at least one original and one reconstruction")
    rows = [
        ("Original image", image_grid(np.asarray(originals)[:k], shape, ncols=k, pad=2)),
        ("VAE Re-construct", image_grid(np.asarray(reconstructions)[:k], shape, ncols=k, pad=2)),
    ]
    scale = _pixel_scale(rows[0][1].shape, 900)
    img_w, img_h = rows[0][1].shape[1] * scale, rows[0][1].shape[0] * scale
    top, row_title, gap, bottom = 44, 30, 12, 12
    width = max(img_w + 40, 520)
    height = top + 2 * (row_title + img_h) + gap + bottom
    fig = _new_figure(width / DPI, height / DPI)
    left = (width - img_w) / 2
    for i, (title, grid) in enumerate(rows):
        lower = bottom + (1 - i) * (img_h + row_title + gap)
        ax = _image_axes(fig, (width, height), left, lower, grid, scale=scale)
        ax.set_title(title, fontsize=13)
        ax.set_xticks([])
        ax.set_yticks([])
    what = f"{k} test images and their reconstructions" if k > 1 else "A test image and its reconstruction"
    fig.suptitle(f"{what} decode(μ)", fontsize=11, y=1 - 10 / height, va="top")
    return _save(fig, path)


def plot_samples(images, image_shape, path: str | Path) -> Path:
    """A grid of images decoded from z ~ N(0, I): what the model generates (pixel-exact, via save_image_grid)."""
    n = len(images)
    return save_image_grid(images, image_shape, path, title=f"{n} samples from the prior: decode(z), z ~ N(0, I)")


def plot_manifold(
    decode: Callable[[np.ndarray], np.ndarray], image_shape, path: str | Path, n: int = 20, span: float = 3.0
) -> Path:
    """The 2-D latent manifold: decode(z) for an n x n grid of codes z evenly spaced over [-span, span]^2,
    z[0] increasing to the right and z[1] upwards, drawn as one picture with the z values on its axes.

    decode maps (m, 2) float32 codes to (m, h*w) images in [0, 1] (e.g. VAEModel.decode)."""
    owner = getattr(decode, "__self__", None)
    latent = getattr(owner, "latent_size", 2)
    if latent != 2:
        raise ValueError(
            f"plot_manifold draws a 2-D latent space, but this model has latent size {latent}; "
            f"the manifold picture exists only for latent size 2 (plot_latent_scatter works for any size)"
        )
    if isinstance(n, bool) or not isinstance(n, int) or n < 2:
        raise ValueError(f"plot_manifold: n must be an integer >= 2, got {n!r}")
    if not (math.isfinite(span) and span > 0):
        raise ValueError(f"plot_manifold: span must be a positive number, got {span!r}")
    shape = tuple(image_shape)  # (h, w) gray or (h, w, 3) RGB
    h, w = shape[:2]
    features = math.prod(shape)
    ticks = np.linspace(-span, span, n)
    zx, zy = np.meshgrid(ticks, ticks[::-1])  # top row: the largest z[1]
    z = np.stack([zx.ravel(), zy.ravel()], axis=1).astype(np.float32)
    try:
        images = np.asarray(decode(z))
    except ValueError as e:  # InputError is a ValueError: e.g. a decoder whose latent size is not 2
        raise ValueError(f"plot_manifold: decode rejected 2-D latent codes ({e}); it needs latent size 2") from e
    if images.shape[0] != n * n or images.size != n * n * features:
        raise ValueError(f"plot_manifold: decode returned shape {images.shape} for {n * n} codes of {h}x{w} images")
    grid = image_grid(images.reshape(n * n, features), shape, ncols=n, pad=0)
    scale = _pixel_scale(grid.shape, 640)
    img_w, img_h = grid.shape[1] * scale, grid.shape[0] * scale
    left, right, bottom, top = 64, 24, 52, 44
    width, height = max(left + img_w + right, 560), bottom + img_h + top
    fig = _new_figure(width / DPI, height / DPI)
    half = span / (n - 1)  # half a cell: each tile is centred on its code
    ax = _image_axes(fig, (width, height), left, bottom, grid, scale=scale,
                     extent=(-span - half, span + half, -span - half, span + half))
    ax.set_xlabel("z[0]")
    ax.set_ylabel("z[1]")
    ax.set_title(f"The learned 2-D manifold: decode(z) on a {n} x {n} grid over [-{span:g}, {span:g}]²", fontsize=12)
    return _save(fig, path)


# -- everything at once -------------------------------------------------------------------------------------
def make_all(model, dataset: Dataset, history: list[dict], out_dir: str | Path, class_names=None) -> list[Path]:
    """Write the training pictures for an exported model into out_dir; returns their paths, in this order:
    loss_curves.png (skipped when history is empty), latent_scatter.png, reconstructions.png, samples.png,
    manifold.png (skipped when the latent size is not 2).

    model: a loaded vae_infer.VAEModel. dataset: its test images (and labels, if any) are used; at most
    SCATTER_MAX_POINTS of them (a seeded subset) for the scatter. class_names defaults to the dataset's
    (train.data.CLASS_NAMES) when it is a named one. Deterministic: samples use seed 0."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    shape = tuple(model.image_shape)
    if tuple(dataset.image_shape) != shape:
        raise ValueError(f"make_all: the model takes {shape} images but the dataset holds {dataset.image_shape}")
    if class_names is None:
        class_names = CLASS_NAMES.get(dataset.name)
    paths = []
    if history:
        paths.append(plot_loss_curves(history, out / FILE_NAMES["loss_curves"]))

    images, labels = dataset.test_images, dataset.test_labels
    if len(images) > SCATTER_MAX_POINTS:
        keep = np.sort(np.random.default_rng(SUBSET_SEED).choice(len(images), SCATTER_MAX_POINTS, replace=False))
        images, labels = images[keep], (labels[keep] if labels is not None else None)
    mu, _ = model.encode(images)
    paths.append(plot_latent_scatter(mu, labels, class_names, out / FILE_NAMES["latent_scatter"]))

    originals = dataset.test_images[:RECONSTRUCTIONS]
    paths.append(plot_reconstructions(originals, model.reconstruct(originals), shape,
                                      out / FILE_NAMES["reconstructions"], n=RECONSTRUCTIONS))
    paths.append(plot_samples(model.sample(SAMPLES, seed=SAMPLE_SEED), shape, out / FILE_NAMES["samples"]))
    if model.latent_size == 2:
        paths.append(plot_manifold(model.decode, shape, out / FILE_NAMES["manifold"]))
    return paths
