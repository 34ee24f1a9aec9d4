"""vae_infer.viz (grids, PNG in and out) and train.plots (the training pictures)."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import numpy as np
import pytest

from vae_infer.atomic import write_atomically
from vae_infer.errors import InputError, MissingExtraError
from vae_infer.viz import PAD_VALUE, image_grid, read_png, save_image_grid, to_uint8, upscale_factor

FIXTURES = Path(__file__).parent / "fixtures"
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
SHAPE = (28, 28)

needs_mpl = pytest.mark.skipif(importlib.util.find_spec("matplotlib") is None, reason="needs the viz extra")


# tiny_model (the loaded fixture package) comes from conftest.py; these are the images with their labels.
@pytest.fixture(scope="module")
def fixture_images():
    with np.load(FIXTURES / "tiny-images.npz") as z:
        return z["images"], z["labels"]


def _imread(path: Path) -> np.ndarray:
    from matplotlib.image import imread

    return imread(path)


def _write_pil(path: Path, array: np.ndarray) -> Path:
    from PIL import Image

    Image.fromarray(np.ascontiguousarray(array)).save(path, format="PNG")
    return path


# -- image_grid ------------------------------------------------------------------------------------------
def test_image_grid_places_tiles_and_padding_exactly():
    images = np.stack([np.full((2, 3), 51 * (i + 1), dtype=np.uint8) for i in range(3)])  # values 51, 102, 153
    images[0, 0, 0] = 0  # one marker pixel: the tile is not flipped or transposed
    grid = image_grid(images, (2, 3), ncols=2, pad=1)
    assert grid.shape == (2 * 2 + 1, 2 * 3 + 1)
    assert grid.dtype == np.float32
    expected = np.full((5, 7), PAD_VALUE, dtype=np.float32)
    expected[0:2, 0:3] = 51 / 255
    expected[0, 0] = 0.0
    expected[0:2, 4:7] = 102 / 255
    expected[3:5, 0:3] = 153 / 255
    # row 2 and column 3 are padding, and the fourth cell (rows 3-4, columns 4-6) is empty: both PAD_VALUE
    np.testing.assert_allclose(grid, expected, atol=1e-7)
    assert PAD_VALUE == 1.0


def test_image_grid_defaults_and_layouts():
    images = np.random.default_rng(0).random((5, 4, 4))
    assert image_grid(images, (4, 4)).shape == (2 * 4 + 1, 3 * 4 + 2)  # ncols = ceil(sqrt(5)) = 3
    assert image_grid(images, (4, 4), ncols=5, pad=0).shape == (4, 20)
    assert image_grid(images, (4, 4), ncols=1, pad=2).shape == (5 * 4 + 4 * 2, 4)
    assert image_grid(images[:1], (4, 4)).shape == (4, 4)
    flat = image_grid(images.reshape(5, 16), (4, 4), ncols=2)
    np.testing.assert_array_equal(flat, image_grid(images, (4, 4), ncols=2))


def test_image_grid_uint8_and_float_agree():
    u = np.random.default_rng(1).integers(0, 256, (6, 28, 28), dtype=np.uint8)
    np.testing.assert_allclose(image_grid(u, SHAPE), image_grid(u / 255.0, SHAPE), atol=1e-6)
    np.testing.assert_array_equal(to_uint8(image_grid(u, SHAPE, ncols=6, pad=0)), np.concatenate(list(u), axis=1))


@pytest.mark.parametrize(
    ("images", "kwargs", "match"),
    [
        (np.full((2, 4, 4), 1.5), {}, r"\[0, 1\]"),
        (np.zeros((2, 4, 5)), {}, r"\(n, 16\) or \(n, 4, 4\)"),
        (np.zeros((0, 4, 4)), {}, "at least one"),
        (np.zeros((2, 4, 4)), {"ncols": 0}, "ncols"),
        (np.zeros((2, 4, 4)), {"pad": -1}, "pad"),
    ],
)
def test_image_grid_rejects_bad_input(images, kwargs, match):
    with pytest.raises(InputError, match=match):
        image_grid(images, (4, 4), **kwargs)


# -- save_image_grid -------------------------------------------------------------------------------------
@needs_mpl
def test_save_image_grid_round_trips_pixels(tmp_path, fixture_images):
    images = fixture_images[0][:5]
    path = save_image_grid(images, SHAPE, tmp_path / "sub" / "grid.png")  # the missing folder is created
    assert path == tmp_path / "sub" / "grid.png"
    assert path.read_bytes()[:8] == PNG_SIGNATURE
    grid = to_uint8(image_grid(images, SHAPE))  # 57 x 86
    k = upscale_factor(grid.shape)
    assert k == round(512 / 86) == 6
    back = _imread(path)
    assert back.shape == (57 * k, 86 * k)  # one grayscale channel, enlarged by exactly k
    expected = np.kron(grid, np.ones((k, k), dtype=np.uint8))
    np.testing.assert_array_equal(np.round(back * 255).astype(np.uint8), expected)
    assert sorted(p.name for p in path.parent.iterdir()) == ["grid.png"]  # no temporary file left


def test_upscale_factor_enlarges_small_grids_only():
    assert upscale_factor((28, 28)) == 8
    assert upscale_factor((57, 115)) == 4
    assert upscale_factor((289, 289)) == 2  # a 10 x 10 grid of 28 x 28 images
    assert upscale_factor((512, 300)) == 1
    assert upscale_factor((2000, 2000)) == 1


@needs_mpl
def test_save_image_grid_with_title_keeps_the_grid_exact(tmp_path, fixture_images):
    images = fixture_images[0][:1]
    path = save_image_grid(images, SHAPE, tmp_path / "titled.png", title="A title wider than the one image")
    back = np.round(_imread(path) * 255).astype(np.uint8)
    k = upscale_factor(SHAPE)
    grid = np.kron(images[0], np.ones((k, k), dtype=np.uint8))
    assert back.ndim == 2 and back.shape[0] > grid.shape[0] and back.shape[1] >= grid.shape[1]
    left = (back.shape[1] - grid.shape[1]) // 2
    np.testing.assert_array_equal(back[-grid.shape[0]:, left : left + grid.shape[1]], grid)
    strip = back[: back.shape[0] - grid.shape[0]]
    assert strip.min() < 64 and strip.max() == 255  # dark text on a white strip


def test_write_atomically_keeps_the_old_file_when_writing_fails(tmp_path):
    target = tmp_path / "picture.png"
    target.write_bytes(b"old")

    def fail(f):
        f.write(b"half a pic")
        raise RuntimeError("crash mid-write")

    with pytest.raises(RuntimeError):
        write_atomically(target, fail)
    assert target.read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir()] == ["picture.png"]
    write_atomically(target, lambda f: f.write(b"new"))
    assert target.read_bytes() == b"new"


# -- read_png ----------------------------------------------------------------------------------------------
@needs_mpl
def test_read_png_grayscale_and_equal_channel_colour(tmp_path, fixture_images):
    img = fixture_images[0][3]
    gray = read_png(_write_pil(tmp_path / "gray.png", img), SHAPE)
    assert gray.dtype == np.uint8 and gray.shape == SHAPE
    np.testing.assert_array_equal(gray, img)
    rgb = np.repeat(img[..., None], 3, axis=2)
    np.testing.assert_array_equal(read_png(_write_pil(tmp_path / "rgb.png", rgb), SHAPE), img)
    rgba = np.concatenate([rgb, np.full(SHAPE + (1,), 255, np.uint8)], axis=2)
    np.testing.assert_array_equal(read_png(_write_pil(tmp_path / "rgba.png", rgba), SHAPE), img)
    sixteen = img.astype(np.uint16) * 257  # 16-bit grayscale, the same grey levels
    np.testing.assert_array_equal(read_png(_write_pil(tmp_path / "16.png", sixteen), SHAPE), img)
    np.testing.assert_array_equal(read_png(str(tmp_path / "gray.png"), [28, 28]), img)  # str path, list shape


@needs_mpl
def test_read_png_feeds_the_model(tmp_path, fixture_images, tiny_model):
    img = fixture_images[0][0]
    back = read_png(_write_pil(tmp_path / "x.png", img), tiny_model.image_shape)
    np.testing.assert_array_equal(tiny_model.encode(back[None])[0], tiny_model.encode(img[None])[0])


@needs_mpl
def test_read_png_rejects_colour_with_a_fix(tmp_path, fixture_images):
    rgb = np.repeat(fixture_images[0][0][..., None], 3, axis=2)
    rgb[5, 5] = (200, 10, 10)
    with pytest.raises(InputError, match="expected a grayscale image") as e:
        read_png(_write_pil(tmp_path / "colour.png", rgb), SHAPE)
    assert "1 of 784 pixels" in str(e.value) and "convert('L')" in str(e.value)


@needs_mpl
def test_read_png_rejects_transparency(tmp_path):
    rgba = np.zeros(SHAPE + (4,), np.uint8)
    rgba[..., 3] = 255
    rgba[0, 0, 3] = 0
    with pytest.raises(InputError, match="transparent"):
        read_png(_write_pil(tmp_path / "alpha.png", rgba), SHAPE)


@needs_mpl
def test_read_png_wrong_size_names_both_sizes(tmp_path):
    path = _write_pil(tmp_path / "small.png", np.zeros((30, 20), np.uint8))
    with pytest.raises(InputError) as e:
        read_png(path, SHAPE)
    message = str(e.value)
    assert "expected a 28x28 image" in message and "found 30x20" in message and "does not resize" in message


@needs_mpl
@pytest.mark.parametrize("content", [b"", b"not a png at all", PNG_SIGNATURE + b"\x00\x00\x00\x0dIHDR truncated"])
def test_read_png_unreadable_files(tmp_path, content):
    path = tmp_path / "bad.png"
    path.write_bytes(content)
    with pytest.raises(InputError, match="cannot read"):
        read_png(path, SHAPE)
    with pytest.raises(InputError, match="cannot read"):
        read_png(tmp_path / "missing.png", SHAPE)


@needs_mpl
def test_read_png_rejects_other_formats(tmp_path):
    from PIL import Image

    path = tmp_path / "photo.png"  # a JPEG under a PNG name
    Image.fromarray(np.zeros(SHAPE, np.uint8)).save(path, format="JPEG")
    with pytest.raises(InputError, match="expected a PNG file, found JPEG"):
        read_png(path, SHAPE)


# -- the optional extra ------------------------------------------------------------------------------------
def test_missing_matplotlib_raises_missing_extra_with_install_hint(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # `import matplotlib` now fails
    for call in (
        lambda: save_image_grid(np.zeros((1, 28, 28)), SHAPE, tmp_path / "x.png"),
        lambda: read_png(tmp_path / "x.png", SHAPE),
    ):
        with pytest.raises(MissingExtraError, match=r"pip install 'vae-infer\[viz\]'") as e:
            call()
        assert isinstance(e.value, ImportError)
    assert not (tmp_path / "x.png").exists()
    assert image_grid(np.zeros((1, 28, 28)), SHAPE).shape == SHAPE  # numpy only: still works


# -- train.plots --------------------------------------------------------------------------------------------
HISTORY = [
    {"epoch": e, "train_nelbo": 300 / e + 250, "val_nelbo": 290 / e + 255, "train_recon": 280 / e + 240,
     "val_recon": 270 / e + 245, "train_kl": 20 / e + 10, "val_kl": 20 / e + 10, "lr": 1e-3, "seconds": 1.0}
    for e in range(1, 5)
]


def _assert_picture(path: Path, min_side: int = 100) -> None:
    path = Path(path)
    data = path.read_bytes()
    assert data[:8] == PNG_SIGNATURE and len(data) > 1000
    pixels = _imread(path)
    assert min(pixels.shape[:2]) >= min_side
    channels = np.round(pixels * 255).astype(np.uint32).reshape(pixels.shape[0] * pixels.shape[1], -1)
    colours = channels @ (256 ** np.arange(channels.shape[1], dtype=np.uint32))  # one number per colour
    assert len(np.unique(colours)) > 10  # not one colour, not just two


@needs_mpl
@pytest.mark.slow
def test_plot_loss_curves(tmp_path):
    from train.plots import plot_loss_curves

    _assert_picture(plot_loss_curves(HISTORY, tmp_path / "loss.png"))
    no_validation = [{**row, "val_nelbo": float("nan"), "val_recon": float("nan"), "val_kl": float("nan")}
                     for row in HISTORY[:1]]
    _assert_picture(plot_loss_curves(no_validation, tmp_path / "loss1.png"))
    with pytest.raises(ValueError, match="empty"):
        plot_loss_curves([], tmp_path / "none.png")


@needs_mpl
@pytest.mark.slow
def test_plot_latent_scatter(tmp_path, fixture_images):
    from train.plots import plot_latent_scatter

    labels = fixture_images[1]
    mu = np.random.default_rng(0).standard_normal((len(labels), 2))
    _assert_picture(plot_latent_scatter(mu, labels, ("a",) * 10, tmp_path / "s.png"))
    _assert_picture(plot_latent_scatter(mu, None, None, tmp_path / "nolabels.png"))
    mu3 = np.random.default_rng(0).standard_normal((len(labels), 3))
    _assert_picture(plot_latent_scatter(mu3, labels, None, tmp_path / "three.png"))
    _assert_picture(plot_latent_scatter(mu3[:, :1], labels, None, tmp_path / "one.png"))
    with pytest.raises(ValueError, match="labels"):
        plot_latent_scatter(mu, labels[:3], None, tmp_path / "bad.png")


@needs_mpl
def test_plot_image_pictures(tmp_path, fixture_images, tiny_model):
    from train.plots import plot_manifold, plot_reconstructions, plot_samples

    images = fixture_images[0]
    _assert_picture(plot_reconstructions(images, tiny_model.reconstruct(images), SHAPE, tmp_path / "r.png", n=10))
    _assert_picture(plot_reconstructions(images[:1], images[:1] / 255.0, SHAPE, tmp_path / "r1.png"))
    _assert_picture(plot_samples(tiny_model.sample(16, seed=0), SHAPE, tmp_path / "samples.png"))
    _assert_picture(plot_manifold(tiny_model.decode, SHAPE, tmp_path / "m.png", n=5))


@needs_mpl
def test_plot_manifold_needs_a_2d_latent_space(tmp_path):
    from train.plots import plot_manifold

    class ThreeD:
        latent_size = 3

        def decode(self, z):
            raise AssertionError("must not be called")

    with pytest.raises(ValueError, match="latent size 3"):
        plot_manifold(ThreeD().decode, SHAPE, tmp_path / "m.png")

    def strict_decoder(z):
        raise InputError(f"expected latent codes shaped (n, 8), got {z.shape}")

    with pytest.raises(ValueError, match="needs latent size 2"):
        plot_manifold(strict_decoder, SHAPE, tmp_path / "m.png")
    assert not (tmp_path / "m.png").exists()


@needs_mpl
@pytest.mark.slow
def test_make_all_writes_the_five_pictures(tmp_path, fixture_images, tiny_model):
    from train.data import Dataset
    from train.plots import make_all

    images, labels = fixture_images
    ds = Dataset("fashion-mnist", images, labels, images, labels, "fixture")
    paths = make_all(tiny_model, ds, HISTORY, tmp_path / "pics")
    names = ["loss_curves.png", "latent_scatter.png", "reconstructions.png", "samples.png", "manifold.png"]
    assert paths == [tmp_path / "pics" / name for name in names]
    assert sorted(p.name for p in (tmp_path / "pics").iterdir()) == sorted(names)
    for p in paths:
        _assert_picture(p)

    unlabelled = Dataset("elsewhere", images, None, images, None, "fixture")
    again = make_all(tiny_model, unlabelled, [], tmp_path / "again")
    assert [p.name for p in again] == names[1:]  # no history: no loss curves
    assert (tmp_path / "again" / "samples.png").read_bytes() == (tmp_path / "pics" / "samples.png").read_bytes()
