"""The one source spec (vae_infer.data.sources) on every kind of source, image files and folders read as trained
(vae_infer.data.preprocessing, vae_infer.data.image_folder), and a model trained on a folder of PNG files driven through
every runtime command with that folder as its source.

Real data that ships inside packages, no download: scikit-learn's 8x8 digits (1,797 images) written as a PNG
folder with class subfolders, and 32x32 patches cut from scikit-learn's two sample photos, as PNG and JPEG."""

from __future__ import annotations

import gzip
import json
import os
import shutil
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

import vae_infer
from tests.conftest import needs_real_data
from vae_infer import cli
from vae_infer.data.datasets import holdout_split, validation_split
from vae_infer.data.image_folder import check_class_name, pin_folder
from vae_infer.data.preprocessing import MAX_FILE_PIXELS, Preprocessing, read_image_file
from vae_infer.data.sources import class_names, open_source, parse_split, spec_splits
from vae_infer.errors import DataError, ModelPackageError
from vae_infer.package.manifest import MAX_FEATURES, MAX_WEIGHTS, Manifest, size_problem

Image = pytest.importorskip("PIL.Image")
SHIPPED = Path("models/fashion-mnist")
PATCH = 32
PATCH_CORNERS = [(100, 100), (200, 300), (300, 500), (50, 400)]  # (row, column) in each 427x640 sample photo


def run(*args) -> object:
    return CliRunner().invoke(cli.main, [str(a) for a in args])


def ok(result):
    assert result.exit_code == 0, result.output
    return result


def fails(result, *fragments: str) -> str:
    assert result.exit_code == 1, result.output
    for fragment in fragments:
        assert fragment in result.output, (fragment, result.output)
    return result.output


# -- data -----------------------------------------------------------------------------------------------------


def digit_images() -> tuple[np.ndarray, np.ndarray]:
    from sklearn.datasets import load_digits

    d = load_digits()
    return np.round(d.images * 255 / 16).astype(np.uint8), d.target.astype(np.int64)  # 0..16 -> 0..255


def write_digits(root: Path, images: np.ndarray, labels: np.ndarray) -> Path:
    for i, (im, y) in enumerate(zip(images, labels, strict=True)):
        (root / str(y)).mkdir(parents=True, exist_ok=True)
        Image.fromarray(im).save(root / str(y) / f"{i:04d}.png")
    return root


def photo_patches() -> np.ndarray:
    from sklearn.datasets import load_sample_images

    photos = load_sample_images().images
    return np.stack([p[r : r + PATCH, c : c + PATCH] for p in photos for r, c in PATCH_CORNERS])  # (8, 32, 32, 3)


@pytest.fixture(scope="module")
def digits(tmp_path_factory) -> tuple[Path, np.ndarray, np.ndarray]:
    images, labels = digit_images()
    return write_digits(tmp_path_factory.mktemp("digits") / "digits", images, labels), images, labels


def idx_bytes(a: np.ndarray) -> bytes:
    return bytes([0, 0, 0x08, a.ndim]) + b"".join(struct.pack(">I", s) for s in a.shape) + a.tobytes()


def png_header_only(path: Path, width: int, height: int) -> Path:
    """A PNG whose header declares width x height gray pixels, with almost no data: a bomb's header."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64))
                     + chunk(b"IEND", b""))
    return path


# -- the spec parser, on every kind of source ---------------------------------------------------------------


def test_parse_split_suffixes(tmp_path):
    assert parse_split("fashion-mnist:train") == ("fashion-mnist", "train")
    assert parse_split("data/x.npz:test") == ("data/x.npz", "test")
    assert parse_split("data/x.npz:images") == ("data/x.npz:images", None)
    assert parse_split("t.parquet:train") == ("t.parquet:train", None)  # a column named train
    odd = tmp_path / "odd:test"
    odd.mkdir()
    assert parse_split(str(odd)) == (str(odd), None)  # a path that exists is taken as typed


@pytest.mark.slow
def test_every_source_kind_and_its_default_split(tmp_path, digits):
    rng = np.random.default_rng(0)
    train, test = rng.integers(0, 256, (12, 8, 8), np.uint8), rng.integers(0, 256, (5, 8, 8), np.uint8)
    y_train, y_test = np.arange(12) % 3, np.arange(5) % 3

    idx = tmp_path / "idx"
    idx.mkdir()
    (idx / "train-images-idx3-ubyte").write_bytes(idx_bytes(train))
    (idx / "t10k-images-idx3-ubyte.gz").write_bytes(gzip.compress(idx_bytes(test)))
    (idx / "t10k-labels-idx1-ubyte").write_bytes(idx_bytes(y_test.astype(np.uint8)))
    np.testing.assert_array_equal(open_source(idx).read_all(), test)  # runtime commands: test
    np.testing.assert_array_equal(open_source(f"{idx}:train").read_all(), train)
    np.testing.assert_array_equal(open_source(idx, split="train").read_all(), train)
    np.testing.assert_array_equal(open_source(idx).labels(), y_test)
    assert spec_splits(idx) == ("train", "test")

    raw = tmp_path / "images-idx3-ubyte"
    raw.write_bytes(idx_bytes(train))
    np.testing.assert_array_equal(open_source(raw).read_all(), train)
    assert spec_splits(raw) == ()

    np.save(tmp_path / "a.npy", train)
    np.testing.assert_array_equal(open_source(tmp_path / "a.npy").read_all(), train)  # no splits: whole
    with pytest.raises(DataError, match="without train and test splits; drop :test"):
        open_source(f"{tmp_path / 'a.npy'}:test")

    np.savez(tmp_path / "one.npz", pixels=test)
    np.testing.assert_array_equal(open_source(tmp_path / "one.npz").read_all(), test)
    np.savez(tmp_path / "two.npz", x_train=train, x_test=test, y_train=y_train, y_test=y_test)
    both = tmp_path / "two.npz"
    assert spec_splits(both) == ("train", "test") and spec_splits(tmp_path / "one.npz") == ()
    np.testing.assert_array_equal(open_source(both).read_all(), test)
    np.testing.assert_array_equal(open_source(f"{both}:train").read_all(), train)
    np.testing.assert_array_equal(open_source(f"{both}:train").labels(), y_train)
    np.testing.assert_array_equal(open_source(f"{both}:x_train").read_all(), train)  # a key still works

    pq = pytest.importorskip("pyarrow.parquet")
    import pyarrow as pa

    table = pa.table({"pixels": pa.array(list(train.reshape(12, 64)), pa.list_(pa.uint8(), 64))})
    pq.write_table(table, tmp_path / "t.parquet")
    np.testing.assert_array_equal(open_source(f"{tmp_path / 't.parquet'}:pixels").read_all(), train.reshape(12, 64))

    folder, images, labels = digits
    source = open_source(folder)  # class folders, no splits: the whole folder, labelled
    assert len(source) == 1797 and source.row_shape == (8, 8) and source.dtype == np.uint8
    assert class_names(source, folder) == tuple(str(d) for d in range(10))
    order = np.argsort(labels, kind="stable")  # files sort by class folder, then name (= original index)
    np.testing.assert_array_equal(source.read(0, 1797), images[order])
    np.testing.assert_array_equal(source.labels(), labels[order])
    with pytest.raises(DataError, match="has no train/ and test/ folders, so no test split"):
        open_source(f"{folder}:test")

    split_root = tmp_path / "split"
    write_digits(split_root / "train", images[:30], labels[:30])
    write_digits(split_root / "test", images[30:40], labels[30:40])
    assert spec_splits(split_root) == ("train", "test")
    assert len(open_source(split_root)) == 10 and len(open_source(f"{split_root}:train")) == 30
    assert open_source(split_root).class_names == tuple(sorted({str(y) for y in labels[:40]}))

    single = folder / "3" / "0003.png"
    np.testing.assert_array_equal(open_source(single).read_all(), images[3][None])
    assert class_names(None, "fashion-mnist:test")[0] == "T-shirt/top"  # a named set's classes


@needs_real_data
@pytest.mark.slow
def test_encode_reads_a_named_set_without_a_split_suffix(tmp_path):
    ok(run("encode", SHIPPED, "fashion-mnist", "--out", tmp_path / "z.npz", "--threads", 1))
    model = vae_infer.load(SHIPPED, threads=1)
    test = open_source("fashion-mnist", split="test")
    with np.load(tmp_path / "z.npz") as z:
        assert z["mu"].shape == (10000, 2)  # the test split, the default of every runtime command
        np.testing.assert_allclose(z["mu"][:64], model.encode(test.read(0, 64))[0], atol=1e-6)
    ok(run("encode", SHIPPED, "fashion-mnist:train", "--out", tmp_path / "t.npy", "--threads", 1))
    assert np.load(tmp_path / "t.npy").shape == (60000, 2)


def test_calibrate_reads_an_npz_with_x_train_and_x_test(tmp_path, tiny_copy, tiny_images):
    """The validation split training recorded, from x_train; :test and --split train override it."""
    images = np.concatenate([tiny_images, tiny_images[:, ::-1], 255 - tiny_images])[:80]  # 60 train, 20 test
    data = tmp_path / "f32.npz"
    np.savez(data, x_train=images[:60].astype(np.float32) / 255, x_test=images[60:].astype(np.float32) / 255,
             y_train=np.zeros(60, np.int64), y_test=np.zeros(20, np.int64))
    manifest = tiny_copy / "model.json"
    d = json.loads(manifest.read_text())
    d["training"].update(train_examples=40, validation_examples=20,
                         config={"validation_size": 20, "seed": 5, "train_limit": 0})
    manifest.write_text(json.dumps(d))
    mse = ("--kind", "mse", "--default-kind", "mse", "--json")
    section = json.loads(ok(run("calibrate", tiny_copy, "--data", data, *mse)).output)
    assert section["examples"] == 20 and "the validation split (20 images" in section["source"]
    val = validation_split(60, 20, 5)[1]
    reference = tmp_path / "val.npy"
    np.save(reference, images[:60][val].astype(np.float32) / 255)
    other = tmp_path / "other"
    shutil.copytree(tiny_copy, other)
    by_hand = json.loads(ok(run("calibrate", other, "--data", reference, *mse)).output)
    assert section["thresholds"]["mse"] == pytest.approx(by_hand["thresholds"]["mse"], rel=1e-6)
    assert json.loads(ok(run("calibrate", tiny_copy, "--data", f"{data}:test", *mse)).output)["examples"] == 20
    assert json.loads(ok(run("calibrate", tiny_copy, "--data", data, "--split", "train", *mse)).output
                      )["examples"] == 60
    fails(run("calibrate", tiny_copy, "--data", f"{data}:test", "--split", "train", *mse), "name different splits")


# -- bad folders and files: one clear error naming the file ------------------------------------------------


def test_mixed_sizes_need_image_size(tmp_path, digits):
    _, images, _ = digits
    root = tmp_path / "mixed"
    (root / "a").mkdir(parents=True)
    Image.fromarray(images[0]).save(root / "a" / "0.png")
    Image.fromarray(np.zeros((9, 8), np.uint8)).save(root / "a" / "1.png")
    with pytest.raises(DataError) as info:
        open_source(root).read_all()
    assert str(root / "a" / "1.png") in str(info.value) and "--image-size" in str(info.value)
    assert "is 9x8" in str(info.value) and "8x8 is expected" in str(info.value)
    resized = open_source(root, preprocessing=Preprocessing(image_size=(8, 8))).read_all()
    assert resized.shape == (2, 8, 8)
    np.testing.assert_array_equal(resized[0], images[0])  # already the size: untouched
    from train.cli import main as train_main

    result = CliRunner().invoke(train_main, ["fit", "--dataset", str(root), "--out", str(tmp_path / "p"),
                                             "--run-dir", str(tmp_path / "run"), "--quiet", "--no-pictures"])
    assert result.exit_code == 1 and str(root / "a" / "1.png") in result.output, result.output
    assert not (tmp_path / "p").exists()


def test_corrupt_png_empty_class_and_other_files(tmp_path, digits):
    _, images, _ = digits
    root = tmp_path / "bad"
    (root / "a").mkdir(parents=True)
    Image.fromarray(images[0]).save(root / "a" / "0.png")
    good = (root / "a" / "0.png").read_bytes()
    (root / "a" / "1.png").write_bytes(good[: len(good) // 2])  # cut short
    source = open_source(root)  # streams: only the first image is read to learn the shape
    assert len(source) == 2 and source.row_shape == (8, 8)
    np.testing.assert_array_equal(source.read(0, 1)[0], images[0])
    with pytest.raises(DataError, match="cannot read it as a PNG or JPEG image") as info:
        source.read(1, 2)
    assert str(root / "a" / "1.png") in str(info.value)
    (root / "a" / "1.png").unlink()
    (root / "b").mkdir()
    with pytest.raises(DataError, match="an empty class folder") as info:
        open_source(root)
    assert str(root / "b") in str(info.value)
    (root / "b" / "notes.txt").write_text("x")
    with pytest.raises(DataError, match="not a PNG or JPEG file") as info:
        open_source(root)
    assert str(root / "b" / "notes.txt") in str(info.value)
    (root / "b" / "notes.txt").unlink()
    (root / "b" / ".DS_Store").write_text("x")  # hidden files are skipped, so b is still empty
    with pytest.raises(DataError, match="an empty class folder"):
        open_source(root)
    os.mkfifo(root / "b" / "pipe.png")  # reading it would block forever
    with pytest.raises(DataError, match="not a regular file") as info:
        open_source(root)
    assert str(root / "b" / "pipe.png") in str(info.value)


@pytest.mark.slow
def test_train_data_from_image_folders(tmp_path, digits):
    from train.data import load_dataset

    folder, images, labels = digits
    ds = load_dataset(folder)  # no splits: a seeded 10% held out, recorded
    assert ds.train_images.shape == (1617, 8, 8) and ds.test_images.shape == (180, 8, 8)
    assert ds.holdout == {"rule": "random", "test_fraction": 0.1, "seed": 0, "rows": 1797}
    assert ds.class_names == tuple(str(d) for d in range(10))
    order = np.argsort(labels, kind="stable")
    train_idx, test_idx = holdout_split(1797)
    np.testing.assert_array_equal(ds.test_images, images[order][test_idx])
    np.testing.assert_array_equal(ds.test_labels, labels[order][test_idx])
    assert ds.preprocessing == Preprocessing().to_dict()
    split_root = tmp_path / "split"
    write_digits(split_root / "train", images[:30], labels[:30])
    write_digits(split_root / "test", images[30:40], labels[30:40])
    ds = load_dataset(split_root, preprocessing=Preprocessing(image_size=(4, 4), resize_filter="box"))
    assert ds.train_images.shape == (30, 4, 4) and ds.test_images.shape == (10, 4, 4) and ds.holdout is None
    first = sorted(range(30), key=lambda i: (str(labels[i]), f"{i:04d}"))[0]
    box_mean = images[first].reshape(4, 2, 4, 2).mean((1, 3))  # a box filter halving each side: 2x2 means
    np.testing.assert_allclose(ds.train_images[0], box_mean, atol=1)  # Pillow rounds in fixed point
    with pytest.raises(DataError, match="training reads both the train and the test split"):
        load_dataset(f"{split_root}:train")


def test_an_image_over_the_pixel_bound_is_refused_before_decoding(tmp_path):
    side = int(MAX_FILE_PIXELS**0.5) + 1
    bomb = png_header_only(tmp_path / "bomb.png", side, side)
    with pytest.raises(DataError) as info:
        read_image_file(bomb, Preprocessing(), None, None)
    message = str(info.value)
    assert str(bomb) in message and f"{side * side:,} pixels" in message and f"{MAX_FILE_PIXELS:,}" in message
    folder = tmp_path / "f"
    folder.mkdir()
    shutil.copy(bomb, folder / "bomb.png")
    with pytest.raises(DataError, match="image bombs") as info:
        open_source(folder)
    assert str(folder / "bomb.png") in str(info.value)


def test_class_names_must_be_valid_unicode_and_short(tmp_path, digits):
    _, images, _ = digits
    root = tmp_path / "names"
    with pytest.raises(DataError, match="has 257 characters; class names have at most 256"):
        check_class_name("\u00e9" * 257, root)  # Linux file names stop at 255 bytes; other systems need not
    assert check_class_name("\u00e9t\u00e9 <b>", root) == "\u00e9t\u00e9 <b>"
    bad = root / b"caf\xe9".decode("utf-8", "surrogateescape")  # a Latin-1 name: not UTF-8
    bad.mkdir(parents=True)
    Image.fromarray(images[0]).save(bad / "0.png")
    with pytest.raises(DataError, match="is not valid UTF-8; rename it"):
        open_source(root)


# -- colour and the recorded preprocessing ----------------------------------------------------------------


def test_rgb_patches_as_png_and_jpeg(tmp_path):
    patches = photo_patches()
    for kind, suffix, options in (("png", ".png", {}), ("jpeg", ".jpg", {"quality": 95, "subsampling": 0})):
        folder = tmp_path / kind
        folder.mkdir()
        for i, p in enumerate(patches):
            Image.fromarray(p).save(folder / f"{i:02d}{suffix}", **options)
        source = open_source(folder)
        assert source.row_shape == (PATCH, PATCH, 3) and len(source) == len(patches)
        got = source.read_all()
        assert got.shape == (8, PATCH, PATCH, 3) and got.dtype == np.uint8
        if kind == "png":
            np.testing.assert_array_equal(got, patches)
        else:
            diff = np.abs(got.astype(int) - patches)
            assert diff.mean() < 4 and diff.max() <= 24, (diff.mean(), diff.max())
            swapped = np.abs(got[..., ::-1].astype(int) - patches).mean()
            assert swapped > 3 * diff.mean()  # channel order matters: RGB, not BGR
    with pytest.raises(DataError, match="a colour image, but the model reads gray images") as info:
        open_source(tmp_path / "png", channels="gray").read_all()
    assert "--to-gray" in str(info.value) and str(tmp_path / "png" / "00.png") in str(info.value)
    gray = open_source(tmp_path / "png", channels="gray", preprocessing=Preprocessing(to_gray=True)).read_all()
    r, g, b = (patches[..., i].astype(np.uint32) for i in range(3))
    np.testing.assert_array_equal(gray, ((19595 * r + 38470 * g + 7471 * b + 32768) >> 16).astype(np.uint8))


def test_alpha_sixteen_bit_palette_cmyk_and_exif_orientation(tmp_path):
    rgba = np.zeros((4, 4, 4), np.uint8)
    rgba[..., :3], rgba[..., 3] = 200, 255
    rgba[0, 0, 3] = 0
    Image.fromarray(rgba, "RGBA").save(tmp_path / "a.png")
    with pytest.raises(DataError, match="has transparent pixels") as info:
        read_image_file(tmp_path / "a.png", Preprocessing(), None, "gray")
    assert str(tmp_path / "a.png") in str(info.value)
    black = read_image_file(tmp_path / "a.png", Preprocessing(alpha="black"), None, "gray")
    white = read_image_file(tmp_path / "a.png", Preprocessing(alpha="white"), None, "gray")
    assert black[0, 0] == 0 and white[0, 0] == 255 and black[1, 1] == white[1, 1] == 200

    deep = np.array([[0, 65535], [257, 32768]], np.uint16)
    Image.fromarray(deep).save(tmp_path / "d.png")
    np.testing.assert_array_equal(read_image_file(tmp_path / "d.png", Preprocessing(), None, "gray"),
                                  [[0, 255], [1, 128]])

    gray_palette = Image.fromarray(np.array([[0, 1], [2, 3]], np.uint8), "P")
    gray_palette.putpalette([0, 0, 0, 10, 10, 10, 20, 20, 20, 30, 30, 30])
    gray_palette.save(tmp_path / "p.png")
    np.testing.assert_array_equal(read_image_file(tmp_path / "p.png", Preprocessing(), None, None),
                                  [[0, 10], [20, 30]])  # a gray palette is gray: (h, w)
    gray_palette.putpalette([0, 0, 0, 255, 0, 0, 0, 255, 0, 0, 0, 255])
    gray_palette.save(tmp_path / "c.png")
    colour = read_image_file(tmp_path / "c.png", Preprocessing(), None, None)
    np.testing.assert_array_equal(colour[0, 1], [255, 0, 0])
    assert colour.shape == (2, 2, 3)

    cmyk = Image.new("CMYK", (4, 4), (0, 255, 255, 0))  # no cyan and key, full magenta and yellow: red
    cmyk.save(tmp_path / "k.jpg", quality=100)
    red = read_image_file(tmp_path / "k.jpg", Preprocessing(), None, "rgb")
    assert red.shape == (4, 4, 3) and red[..., 0].min() > 240 and red[..., 1:].max() < 15

    wide = np.tile(np.arange(16, dtype=np.uint8) * 16, (8, 1))  # 8 rows, 16 columns
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 degrees clockwise to view"
    Image.fromarray(wide).save(tmp_path / "r.jpg", exif=exif, quality=100)
    upright = read_image_file(tmp_path / "r.jpg", Preprocessing(), None, "gray")
    as_stored = read_image_file(tmp_path / "r.jpg", Preprocessing(exif_orientation=False), None, "gray")
    assert upright.shape == (16, 8) and as_stored.shape == (8, 16)
    assert abs(int(upright[0, 0]) - 0) < 8 and abs(int(upright[-1, 0]) - 240) < 8  # left edge now on top


def test_resize_stretch_and_crop(tmp_path):
    im = np.zeros((10, 20), np.uint8)
    im[:, 5:15] = 255  # a bright centre band, as wide as it is high
    Image.fromarray(im).save(tmp_path / "w.png")
    stretch = read_image_file(tmp_path / "w.png", Preprocessing(image_size=(5, 5), resize_filter="box"), None, "gray")
    crop = read_image_file(tmp_path / "w.png", Preprocessing(image_size=(5, 5), resize_filter="box", fit="crop"),
                           None, "gray")
    expected = np.asarray(Image.fromarray(im).resize((5, 5), Image.Resampling.BOX))
    np.testing.assert_array_equal(stretch, expected)
    assert (crop == 255).all() and stretch[:, 0].max() == 0  # the crop keeps only the centre square


def test_preprocessing_in_the_manifest(tmp_path):
    shipped = json.loads((SHIPPED / "model.json").read_text())
    assert "preprocessing" not in shipped and vae_infer.load(SHIPPED, threads=1).manifest.preprocessing is None
    prep = Preprocessing(image_size=(28, 28), fit="crop", alpha="white", to_gray=True)
    d = dict(shipped, preprocessing=prep.to_dict())
    man = Manifest.from_dict(d)
    assert Preprocessing.from_dict(man.to_dict()["preprocessing"]) == prep
    assert prep.describe((28, 28)) == ("resized to 28x28 (bicubic, crop); colour made gray (luma); transparency "
                                       "over white; EXIF orientation applied")
    for bad, fragment in (({**prep.to_dict(), "fit": "squash"}, "fit must be one of stretch, crop"),
                          ({**prep.to_dict(), "image_size": [32, 32]}, "differs from input.image_shape [28, 28]"),
                          ({**prep.to_dict(), "rules": {}}, "rules differ"),
                          ({**prep.to_dict(), "\x1b[2J": 1}, "unknown fields '\\x1b[2J'"),
                          ("gray", "must be an object")):
        with pytest.raises(ModelPackageError, match="model.json: ") as info:
            Manifest.from_dict(dict(shipped, preprocessing=bad))
        assert fragment in str(info.value)


def test_sizes_a_package_may_hold():
    assert size_problem(256 * 256 * 3, 512, 2) is None  # ~201M weights: the largest image, course hidden size
    assert "196,608" in size_problem(MAX_FEATURES + 1, 512, 2)
    problem = size_problem(128 * 128 * 3, 4096, 2)
    assert "49,152 values per image with 4,096 hidden units" in problem and f"{MAX_WEIGHTS:,}" in problem
    assert "latent size of 2,000" in size_problem(784, 512, 2000)
    from train.config import ModelConfig

    with pytest.raises(ValueError, match="hidden-size"):
        ModelConfig(image_shape=(128, 384), hidden_size=4096)
    from train.config import TrainConfig

    with pytest.raises(ValueError, match="--image-size 300,700: images of 210,000 values are more than a package"):
        TrainConfig(image_size="300,700")
    with pytest.raises(DataError, match="more than the 67,108,864 pixels"):
        Preprocessing(image_size=(100000, 100000))


def test_pin_folder_lists_sorted_files_with_digests(tmp_path, digits):
    _, images, labels = digits
    root = write_digits(tmp_path / "d", images[:6], labels[:6])
    pin = pin_folder(root)
    assert [e["file"] for e in pin["files"]] == sorted(e["file"] for e in pin["files"])
    assert len(pin["files"]) == 6 and all(len(e["sha256"]) == 64 for e in pin["files"])
    assert pin_folder(root)["sha256"] == pin["sha256"]
    first = root / pin["files"][0]["file"]
    Image.fromarray(255 - images[0]).save(first)
    assert pin_folder(root)["sha256"] != pin["sha256"]
    assert open_source(root).pin()["sha256"] == pin_folder(root)["sha256"]


def test_holdout_of_a_source_without_splits_is_seeded_and_disjoint():
    train, test = holdout_split(1797)
    assert len(test) == 180 and len(train) == 1617 and not set(train) & set(test)
    np.testing.assert_array_equal(holdout_split(1797)[1], test)
    assert test.max() > 1700 and test.min() < 100  # spread over the classes, not the last folder


# -- a model trained on a PNG folder, through every runtime command ------------------------------------------


@pytest.mark.slow
def test_train_on_a_png_folder_then_every_command(tmp_path, digits):
    from train.cli import main as train_main

    folder, images, labels = digits
    pkg = tmp_path / "pkg"
    result = CliRunner().invoke(train_main, [
        "fit", "--dataset", str(folder), "--epochs", "1", "--validation-size", "200", "--iw-samples", "5",
        "--threads", "1", "--out", str(pkg), "--run-dir", str(tmp_path / "run"), "--quiet", "--no-pictures"])
    assert result.exit_code == 0, result.output
    man = json.loads((pkg / "model.json").read_text())
    assert man["input"]["image_shape"] == [8, 8] and man["preprocessing"]["image_size"] is None
    assert man["training"]["holdout"] == {"rule": "random", "test_fraction": 0.1, "seed": 0, "rows": 1797}
    assert man["training"]["train_examples"] == 1617 - 200 and man["training"]["test_examples"] == 180

    info = ok(run("info", pkg, "--full")).output
    assert "8 x 8 (64 features)" in info and "image files:  must be 8x8; colour refused; transparency refused" in info
    model = vae_infer.load(pkg, threads=1)
    source = open_source(folder)
    ok(run("encode", pkg, folder, "--out", tmp_path / "z.npz"))
    with np.load(tmp_path / "z.npz") as z:
        mu = z["mu"]
    assert mu.shape == (1797, 2)
    np.testing.assert_allclose(mu, model.encode(source.read_all())[0], atol=1e-6)
    ok(run("encode", pkg, folder / "3" / "0003.png", "--out", tmp_path / "one.npy"))
    row = source.files.index(folder / "3" / "0003.png")
    np.testing.assert_allclose(np.load(tmp_path / "one.npy")[0], mu[row], atol=1e-6)
    ok(run("decode", pkg, tmp_path / "z.npz", "--out", tmp_path / "d.npy"))
    assert np.load(tmp_path / "d.npy").shape == (1797, 64)
    ok(run("sample", pkg, "-n", 5, "--seed", 1, "--out", tmp_path / "s.npy"))
    assert np.load(tmp_path / "s.npy").shape == (5, 64)
    ok(run("score", pkg, folder / "0", "--out", tmp_path / "sc.npy"))
    scores = np.load(tmp_path / "sc.npy")
    assert scores.shape == (int((labels == 0).sum()),) and np.isfinite(scores).all()

    out = ok(run("calibrate", pkg, "--data", folder)).output
    assert "the validation split (200 images held out of training" in out
    out = ok(run("detect", pkg, folder)).output
    assert "of 1797 images" in out
    ok(run("denoise", pkg, folder / "7", "--out", tmp_path / "dn.npy"))
    assert np.load(tmp_path / "dn.npy").shape == (int((labels == 7).sum()), 64)
    out = ok(run("index", "build", pkg, "--data", folder)).output
    assert "labelled" in out
    lmap = vae_infer.load(pkg, threads=1).manifest.latent_map
    assert lmap["labelled"] and lmap["class_names"] == [str(d) for d in range(10)]
    ok(run("interpolate", pkg, folder / "0" / "0000.png", folder / "1" / "0001.png", "--method", "graph",
           "--steps", 7, "--out", tmp_path / "path.npy"))
    assert np.load(tmp_path / "path.npy").shape == (7, 64)
    fails(run("encode", pkg, f"{folder}:test", "--out", tmp_path / "x.npy"), "has no train/ and test/ folders")
    # a variant is measured on the held-out test images of the same folder, re-read as training read it
    result = CliRunner().invoke(train_main, ["export", str(pkg), "--quantize", "int8"])
    assert result.exit_code == 0 and "variant int8:" in result.output, result.output
    assert vae_infer.load(pkg, threads=1).manifest.variants["int8"]["test_examples"] == 180
