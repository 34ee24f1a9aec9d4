"""Tests of train/data.py: IDX reading, array files, the named-dataset lookup order and the real download code.

Every download is served by a local HTTP server on 127.0.0.1; nothing here reaches the network."""

from __future__ import annotations

import dataclasses
import gzip
import hashlib
import http.server
import io
import shutil
import threading
from pathlib import Path

import numpy as np
import pytest

from train import data
from train.data import (
    NAMED_DATASETS,
    SPLIT_FILES,
    DataError,
    as_uint8_images,
    cache_dir,
    candidate_dirs,
    download_named,
    load_array_file,
    load_dataset,
    read_idx,
)
from vae_infer.data.datasets import IDX_DTYPES, validation_split

FASHION = "fashion-mnist"
MNIST = "mnist"
APT_HINT = "apt-get install dataset-fashion-mnist"
REAL_FASHION_DIR = Path("/usr/share/datasets/fashion-mnist")
IMAGE_SHAPE = (4, 5)  # deliberately not square, so height and width cannot be swapped unnoticed
N_TRAIN, N_TEST = 6, 3
UINT8_CODE, INT32_CODE, FLOAT32_CODE, UNKNOWN_CODE = 0x08, 0x0C, 0x0D, 0x07


# ----------------------------------------------------------------------------------------------- helpers


def idx_bytes(array: np.ndarray, type_code: int = UINT8_CODE) -> bytes:
    """An IDX file holding `array`: two zero bytes, the type code, ndim, big-endian dims, big-endian data."""
    big_endian = np.dtype(IDX_DTYPES[type_code]).newbyteorder(">")
    header = bytes([0, 0, type_code, array.ndim]) + b"".join(d.to_bytes(4, "big") for d in array.shape)
    return header + np.ascontiguousarray(array, dtype=big_endian).tobytes()


def gz(raw: bytes) -> bytes:
    return gzip.compress(raw, mtime=0)  # mtime=0: the same content always has the same MD5


def write(path: Path, raw: bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(raw)
    return path


def md5_of(raw: bytes) -> str:
    return hashlib.md5(raw).hexdigest()


def fake_arrays(marker: int) -> dict[str, np.ndarray]:
    """Small train/test images and labels; every pixel of image i is marker + i, so each source is recognisable."""
    def images(n: int, start: int) -> np.ndarray:
        return (marker + start + np.arange(n, dtype=np.uint8))[:, None, None] * np.ones(IMAGE_SHAPE, np.uint8)

    return {
        "train_images": images(N_TRAIN, 0),
        "train_labels": np.arange(N_TRAIN, dtype=np.uint8) % 10,
        "test_images": images(N_TEST, N_TRAIN),
        "test_labels": (np.arange(N_TEST, dtype=np.uint8) + 7) % 10,
    }


def gz_files(arrays: dict[str, np.ndarray]) -> dict[str, bytes]:
    """The four published .gz files, by file name, holding `arrays`."""
    return {f"{SPLIT_FILES[key]}.gz": gz(idx_bytes(arrays[key])) for key in SPLIT_FILES}


def write_idx_folder(folder: Path, marker: int) -> dict[str, np.ndarray]:
    arrays = fake_arrays(marker)
    for filename, raw in gz_files(arrays).items():
        write(folder / filename, raw)
    return arrays


def assert_dataset_equals(ds: data.Dataset, arrays: dict[str, np.ndarray]) -> None:
    for key, expected in arrays.items():
        got = getattr(ds, key)
        assert got.shape == expected.shape, key
        np.testing.assert_array_equal(got, expected, err_msg=key)
    assert ds.train_images.dtype == np.uint8 and ds.test_images.dtype == np.uint8
    assert ds.train_labels.dtype == np.int64 and ds.test_labels.dtype == np.int64
    assert ds.image_shape == IMAGE_SHAPE


def folder_listing(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


# ----------------------------------------------------------------------------------------------- local HTTP server

OK, TRUNCATED, MALFORMED = "ok", "truncated", "malformed"


class _Handler(http.server.BaseHTTPRequestHandler):
    def do_GET(self):  # noqa: N802 (the name http.server calls)
        self.server.requests.append(self.path)
        route = self.server.routes.get(self.path)
        if route is None:
            self.send_error(404, "no such file")
            return
        mode, body = route
        if mode == MALFORMED:
            self.wfile.write(b"this is not an HTTP status line\r\n\r\n")
            return
        self.send_response(200)
        self.send_header("Content-Type", "application/octet-stream")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        # TRUNCATED: promise the whole body, send half of it, then close the connection
        self.wfile.write(body[: len(body) // 2] if mode == TRUNCATED else body)

    def log_message(self, *args):
        pass


class LocalServer:
    """Serves `routes` (URL path -> (mode, body)) on 127.0.0.1 and records every requested path."""

    def __init__(self):
        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
        self.httpd.routes = {}
        self.httpd.requests = []
        self.thread = threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True)
        self.thread.start()

    @property
    def requests(self) -> list[str]:
        return self.httpd.requests

    def mirror(self, name: str) -> str:
        return f"http://127.0.0.1:{self.httpd.server_address[1]}/{name}/"

    def serve(self, mirror: str, files: dict[str, bytes], mode: str = OK) -> None:
        for filename, body in files.items():
            self.httpd.routes[f"/{mirror}/{filename}"] = (mode, body)

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join()


@pytest.fixture
def server():
    srv = LocalServer()
    yield srv
    srv.close()


# ----------------------------------------------------------------------------------------------- isolation


@pytest.fixture
def places(tmp_path, monkeypatch):
    """Every place a named dataset is looked for, under tmp_path: no env var, an empty cache, a fake system folder
    per dataset, and no mirrors (so nothing can reach the network unless a test serves it locally)."""
    root = tmp_path / "places"
    monkeypatch.delenv("VAE_DATA_DIR", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(root / "cache"))
    monkeypatch.setenv("HOME", str(root / "home"))
    for name, spec in list(NAMED_DATASETS.items()):
        system = root / "system" / name
        monkeypatch.setitem(NAMED_DATASETS, name, dataclasses.replace(spec, mirrors=(), system_dirs=(str(system),)))
    return {
        "data_dir": root / "data_dir",
        "env": root / "env",
        "cache": root / "cache" / "vae-infer" / "datasets",
        "system": root / "system",
    }


@pytest.fixture
def served(server, places, monkeypatch):
    """Fake Fashion-MNIST files whose MD5s the spec lists; two local mirrors, "m1" then "m2", serve nothing yet."""
    arrays = fake_arrays(marker=40)
    files = gz_files(arrays)
    spec = dataclasses.replace(
        NAMED_DATASETS[FASHION],
        mirrors=(server.mirror("m1"), server.mirror("m2")),
        md5={filename: md5_of(raw) for filename, raw in files.items()},
    )
    monkeypatch.setitem(NAMED_DATASETS, FASHION, spec)
    return arrays, files


def corrupted(files: dict[str, bytes]) -> dict[str, bytes]:
    return {filename: raw[:-1] + bytes([raw[-1] ^ 0xFF]) for filename, raw in files.items()}


# ----------------------------------------------------------------------------------------------- read_idx

IDX_CASES = {
    "uint8 images": (np.arange(2 * 3 * 4, dtype=np.uint8).reshape(2, 3, 4) * 10, UINT8_CODE),
    "uint8 labels": (np.array([9, 0, 3, 255, 1], dtype=np.uint8), UINT8_CODE),
    "int32 matrix": (np.array([[1, -2, 70000], [-(2**31), 2**31 - 1, 0]], dtype=np.int32), INT32_CODE),
    "float32 vector": (np.array([0.5, -1.25, 3e7], dtype=np.float32), FLOAT32_CODE),
}


@pytest.mark.parametrize("compress", [False, True], ids=["raw", "gzip"])
@pytest.mark.parametrize("case", IDX_CASES)
def test_read_idx_round_trip(tmp_path, case, compress):
    expected, type_code = IDX_CASES[case]
    raw = idx_bytes(expected, type_code)
    path = write(tmp_path / "file.idx", gz(raw) if compress else raw)  # no .gz suffix: detected by content
    got = read_idx(path)
    assert got.shape == expected.shape
    assert got.dtype == expected.dtype  # native byte order, whatever the file's
    assert got.dtype.isnative
    np.testing.assert_array_equal(got, expected)


def test_read_idx_big_endian_on_disk(tmp_path):
    path = write(tmp_path / "one.idx", bytes([0, 0, INT32_CODE, 1]) + (1).to_bytes(4, "big") + (258).to_bytes(4, "big"))
    assert read_idx(path).tolist() == [258]


def test_read_idx_result_is_writable(tmp_path):
    expected, type_code = IDX_CASES["uint8 images"]
    got = read_idx(write(tmp_path / "f.idx", idx_bytes(expected, type_code)))
    got[0, 0, 0] = 1  # not a read-only view of the file's bytes
    assert got[0, 0, 0] == 1


def _good_idx() -> bytes:
    return idx_bytes(*IDX_CASES["uint8 images"])


def _corrupt_gzip_body() -> bytes:
    raw = gz(_good_idx())
    return raw[:10] + b"\xff" + raw[11:]  # byte 10 opens the deflate stream; 0xff is an invalid block type


BAD_IDX = {
    "truncated data": (lambda: _good_idx()[:-1], ["truncated or corrupt", "(2, 3, 4)", "24 bytes"]),
    "extra data": (lambda: _good_idx() + b"\x00", ["truncated or corrupt", "holds 25"]),
    "truncated header": (lambda: _good_idx()[:9], ["header is truncated", "3 dimensions"]),
    "empty file": (lambda: b"", ["is not an IDX file"]),
    "wrong magic": (lambda: b"\x01" + _good_idx()[1:], ["is not an IDX file", "two zero bytes"]),
    "text file": (lambda: b"P5 28 28 255\n", ["is not an IDX file"]),
    "unknown type code": (lambda: bytes([0, 0, UNKNOWN_CODE]) + _good_idx()[3:], ["unknown IDX type code 0x07"]),
    "zero dimensions": (lambda: bytes([0, 0, UINT8_CODE, 0]), ["header is truncated", "0 dimensions"]),
    "truncated gzip": (lambda: gz(_good_idx())[:-12], ["cannot read IDX file"]),
    "corrupt gzip body": (_corrupt_gzip_body, ["cannot read IDX file", "invalid"]),  # a zlib.error
}


@pytest.mark.parametrize("case", BAD_IDX)
def test_read_idx_rejects_bad_files(tmp_path, case):
    make, phrases = BAD_IDX[case]
    path = write(tmp_path / "bad-idx1-ubyte", make())
    with pytest.raises(DataError) as info:
        read_idx(path)
    message = str(info.value)
    assert str(path) in message
    for phrase in phrases:
        assert phrase in message


def test_read_idx_missing_file(tmp_path):
    path = tmp_path / "absent-idx3-ubyte.gz"
    with pytest.raises(DataError, match="cannot read IDX file") as info:
        read_idx(path)
    assert str(path) in str(info.value)


# ----------------------------------------------------------------------------------------------- real Fashion-MNIST

FASHION_SIZES = {"train": 60000, "test": 10000}


@pytest.fixture(scope="module")
def real_fashion():
    if not (REAL_FASHION_DIR / f"{SPLIT_FILES['train_images']}.gz").is_file():
        pytest.skip(f"needs Fashion-MNIST in {REAL_FASHION_DIR}: {APT_HINT}")
    with pytest.MonkeyPatch.context() as mp:  # the real system folder is the only place, and no download
        mp.delenv("VAE_DATA_DIR", raising=False)
        mp.setenv("XDG_CACHE_HOME", "/nonexistent-vae-test-cache")
        mp.setitem(NAMED_DATASETS, FASHION, dataclasses.replace(NAMED_DATASETS[FASHION], mirrors=()))
        return load_dataset(FASHION, download=False)


@pytest.mark.slow
def test_real_fashion_mnist_idx_files(real_fashion):
    labels = read_idx(REAL_FASHION_DIR / f"{SPLIT_FILES['test_labels']}.gz")
    images = read_idx(REAL_FASHION_DIR / f"{SPLIT_FILES['test_images']}.gz")
    assert images.shape == (FASHION_SIZES["test"], 28, 28) and images.dtype == np.uint8
    assert labels.shape == (FASHION_SIZES["test"],) and labels.dtype == np.uint8
    np.testing.assert_array_equal(images, real_fashion.test_images)
    np.testing.assert_array_equal(labels, real_fashion.test_labels)


@pytest.mark.slow
def test_real_fashion_mnist_dataset(real_fashion):
    ds = real_fashion
    assert ds.source == str(REAL_FASHION_DIR)
    assert ds.name == FASHION and ds.image_shape == (28, 28)
    for split, n in FASHION_SIZES.items():
        images, labels = getattr(ds, f"{split}_images"), getattr(ds, f"{split}_labels")
        assert images.shape == (n, 28, 28) and images.dtype == np.uint8
        assert labels.shape == (n,) and labels.dtype == np.int64
        # Fashion-MNIST is balanced: every one of the 10 classes holds exactly a tenth of each split
        np.testing.assert_array_equal(np.bincount(labels, minlength=10), np.full(10, n // 10))
        assert images.min() == 0 and images.max() == 255
    assert len(data.CLASS_NAMES[FASHION]) == 10


# ----------------------------------------------------------------------------------------------- as_uint8_images


def test_as_uint8_images_passes_uint8_through():
    images = np.arange(2 * 3 * 4, dtype=np.uint8).reshape(2, 3, 4)
    got = as_uint8_images(images, "src")
    assert got.dtype == np.uint8
    np.testing.assert_array_equal(got, images)


def test_as_uint8_images_scales_floats():
    images = np.array([[[0.0, 0.2, 0.5], [1.0, 1 / 255, 0.999]]], dtype=np.float32)
    got = as_uint8_images(images, "src")
    assert got.dtype == np.uint8
    np.testing.assert_array_equal(got, [[[0, 51, 128], [255, 1, 255]]])  # rounded, not truncated


def test_as_uint8_images_reshapes_flat_28x28():
    flat = np.arange(3 * 784).reshape(3, 784) % 256
    got = as_uint8_images(flat.astype(np.uint8), "src")
    assert got.shape == (3, 28, 28)
    np.testing.assert_array_equal(got[1, 2], flat[1, 56:84])


BAD_IMAGES = {
    "above one": (np.full((1, 2, 2), 1.5), ["must lie in [0, 1]", "[1.5, 1.5]"]),
    "negative": (np.array([[[-0.25, 0.5]]]), ["must lie in [0, 1]", "-0.25"]),
    "NaN": (np.array([[[np.nan, 0.5]]]), ["NaN or inf"]),
    "inf": (np.array([[[np.inf, 0.5]]]), ["NaN or inf"]),
    "int64 pixels": (np.zeros((1, 2, 2), dtype=np.int64), ["expected uint8 or float images", "int64"]),
    "2-D": (np.zeros((2, 5), dtype=np.uint8), ["expected images shaped (n, height, width)", "(2, 5)"]),
    "4-D": (np.zeros((1, 1, 2, 2), dtype=np.uint8), ["expected images shaped", "(1, 1, 2, 2)"]),
    "no images": (np.zeros((0, 2, 2), dtype=np.uint8), ["n >= 1", "(0, 2, 2)"]),
}


@pytest.mark.parametrize("case", BAD_IMAGES)
def test_as_uint8_images_rejects(case):
    images, phrases = BAD_IMAGES[case]
    with pytest.raises(DataError) as info:
        as_uint8_images(images, "my-origin")
    message = str(info.value)
    assert message.startswith("my-origin: ")
    for phrase in phrases:
        assert phrase in message


# ----------------------------------------------------------------------------------------------- load_array_file


def save_npz(path: Path, **arrays) -> Path:
    np.savez(path, **arrays)
    return path


def npz_arrays(arrays: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    names = {"train_images": "x_train", "test_images": "x_test", "train_labels": "y_train", "test_labels": "y_test"}
    return {names[key]: value for key, value in arrays.items()}


def test_load_npz_with_labels(tmp_path):
    arrays = fake_arrays(marker=10)
    path = save_npz(tmp_path / "mine.npz", **npz_arrays(arrays))
    ds = load_array_file(path)
    assert_dataset_equals(ds, arrays)
    assert ds.name == "mine" and ds.source == str(path)


def test_load_npz_without_labels_and_via_load_dataset(tmp_path):
    arrays = fake_arrays(marker=10)
    path = save_npz(tmp_path / "nolabels.npz", x_train=arrays["train_images"], x_test=arrays["test_images"])
    ds = load_dataset(path)
    assert ds.train_labels is None and ds.test_labels is None
    np.testing.assert_array_equal(ds.test_images, arrays["test_images"])


def test_load_npz_missing_keys_lists_found_keys(tmp_path):
    arrays = fake_arrays(marker=10)
    path = save_npz(tmp_path / "partial.npz", x_train=arrays["train_images"], labels=arrays["train_labels"])
    with pytest.raises(DataError) as info:
        load_array_file(path)
    message = str(info.value)
    assert str(path) in message and "x_test" in message
    assert "found ['labels', 'x_train']" in message


@pytest.mark.parametrize(("n", "fraction", "n_test"), [(10, 0.1, 1), (10, 0.3, 3), (5, 0.01, 1), (2, 0.9, 1)])
def test_load_npy_splits_off_the_last_images(tmp_path, n, fraction, n_test):
    images = (np.arange(n, dtype=np.uint8)[:, None, None] * np.ones(IMAGE_SHAPE, np.uint8)) + 100
    path = tmp_path / "all.npy"
    np.save(path, images)
    ds = load_array_file(path, test_fraction=fraction)
    np.testing.assert_array_equal(ds.train_images, images[: n - n_test])
    np.testing.assert_array_equal(ds.test_images, images[n - n_test :])
    assert ds.train_labels is None and ds.test_labels is None
    assert ds.name == "all"


def test_load_npy_float_images_are_converted(tmp_path):
    images = np.linspace(0, 1, 10 * 2 * 2, dtype=np.float64).reshape(10, 2, 2)
    path = tmp_path / "floats.npy"
    np.save(path, images)
    ds = load_dataset(str(path))
    assert ds.train_images.dtype == np.uint8
    np.testing.assert_array_equal(ds.train_images, np.round(images[:9] * 255).astype(np.uint8))
    assert ds.test_images[-1, -1, -1] == 255 and ds.train_images[0, 0, 0] == 0


BAD_ARRAY_FILES = {
    "float out of range": (
        lambda a: {"x_train": a["train_images"] * 2.0, "x_test": a["test_images"] / 255.0},
        ["(train_images)", "must lie in [0, 1]"],
    ),
    "NaN test images": (
        lambda a: {"x_train": a["train_images"], "x_test": np.full((N_TEST, *IMAGE_SHAPE), np.nan)},
        ["(test_images)", "NaN or inf"],
    ),
    "too few train labels": (
        lambda a: {"x_train": a["train_images"], "x_test": a["test_images"], "y_train": a["train_labels"][:-1]},
        [f"{N_TRAIN} train images but {N_TRAIN - 1} train labels"],
    ),
    "too many test labels": (
        lambda a: {"x_train": a["train_images"], "x_test": a["test_images"], "y_test": np.zeros(N_TEST + 2)},
        [f"{N_TEST} test images but {N_TEST + 2} test labels"],
    ),
    "train and test shapes differ": (
        lambda a: {"x_train": a["train_images"], "x_test": a["test_images"][:, :-1]},
        [f"train images are {IMAGE_SHAPE}", f"test images are {(IMAGE_SHAPE[0] - 1, IMAGE_SHAPE[1])}"],
    ),
}


@pytest.mark.parametrize("case", BAD_ARRAY_FILES)
def test_load_npz_rejects_bad_contents(tmp_path, case):
    make, phrases = BAD_ARRAY_FILES[case]
    path = save_npz(tmp_path / "bad.npz", **make(fake_arrays(marker=10)))
    with pytest.raises(DataError) as info:
        load_array_file(path)
    message = str(info.value)
    assert str(path) in message
    for phrase in phrases:
        assert phrase in message


def test_load_npy_needs_two_images(tmp_path):
    path = tmp_path / "one.npy"
    np.save(path, np.zeros((1, *IMAGE_SHAPE), np.uint8))
    with pytest.raises(DataError, match="need at least 2 images"):
        load_array_file(path)


def test_load_truncated_npz_is_a_data_error(tmp_path):
    buffer = io.BytesIO()
    np.savez(buffer, **npz_arrays(fake_arrays(marker=10)))
    path = write(tmp_path / "cut.npz", buffer.getvalue()[:100])
    with pytest.raises(DataError, match="cannot read") as info:
        load_array_file(path)
    assert str(path) in str(info.value)


def test_load_npy_named_npz_is_a_data_error(tmp_path):
    path = tmp_path / "wrong.npz"
    with path.open("wb") as f:
        np.save(f, np.zeros((3, *IMAGE_SHAPE), np.uint8))
    with pytest.raises(DataError, match="found a single .npy array"):
        load_array_file(path)


def test_load_pickled_npy_is_refused(tmp_path):
    path = tmp_path / "objects.npy"
    np.save(path, np.array([{"a": 1}, None], dtype=object), allow_pickle=True)
    with pytest.raises(DataError, match="cannot read"):
        load_array_file(path)


# ----------------------------------------------------------------------------------------------- load_dataset: paths


def test_load_dataset_idx_folder_raw_and_gzip_mixed(tmp_path):
    arrays = fake_arrays(marker=20)
    folder = tmp_path / "mine"
    for i, key in enumerate(SPLIT_FILES):
        raw = idx_bytes(arrays[key])
        write(folder / (f"{SPLIT_FILES[key]}.gz" if i % 2 else SPLIT_FILES[key]), gz(raw) if i % 2 else raw)
    ds = load_dataset(folder)
    assert_dataset_equals(ds, arrays)
    assert ds.name == "mine" and ds.source == str(folder)


def test_load_dataset_idx_folder_without_labels(tmp_path):
    arrays = fake_arrays(marker=20)
    for key in ("train_images", "test_images"):
        write(tmp_path / SPLIT_FILES[key], idx_bytes(arrays[key]))
    ds = load_dataset(tmp_path)
    assert ds.train_labels is None and ds.test_labels is None
    np.testing.assert_array_equal(ds.train_images, arrays["train_images"])


def test_load_dataset_folder_without_idx_files(tmp_path):
    write(tmp_path / SPLIT_FILES["train_images"], idx_bytes(fake_arrays(marker=20)["train_images"]))
    with pytest.raises(DataError) as info:
        load_dataset(tmp_path)
    assert str(tmp_path) in str(info.value) and SPLIT_FILES["test_images"] in str(info.value)


@pytest.mark.parametrize("what", ["no-such-dataset", "missing.npz", "images.png"])
def test_load_dataset_unknown(tmp_path, what):
    with pytest.raises(DataError) as info:
        load_dataset(tmp_path / what if "." in what else what)
    message = str(info.value)
    assert "unknown dataset" in message and what in message
    assert FASHION in message and MNIST in message


# ------------------------------------------------------------------------------------------ load_dataset: lookup order


def test_cache_dir(monkeypatch, tmp_path):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert cache_dir() == tmp_path / "xdg" / "vae-infer" / "datasets"
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert cache_dir() == tmp_path / "home" / ".cache" / "vae-infer" / "datasets"


def test_candidate_dirs_order(places, monkeypatch):
    monkeypatch.setenv("VAE_DATA_DIR", str(places["env"]))
    assert candidate_dirs(FASHION, places["data_dir"]) == [
        places["data_dir"] / FASHION,
        places["data_dir"],
        places["env"] / FASHION,
        places["env"],
        places["cache"] / FASHION,
        places["system"] / FASHION,
    ]
    monkeypatch.delenv("VAE_DATA_DIR")
    assert candidate_dirs(FASHION) == [places["cache"] / FASHION, places["system"] / FASHION]


def test_load_dataset_lookup_order(places, monkeypatch):
    """data_dir beats VAE_DATA_DIR beats the cache beats the system folder; each holds different images."""
    folders = [
        ("data_dir", places["data_dir"] / FASHION),
        ("data_dir flat", places["data_dir"]),
        ("env", places["env"] / FASHION),
        ("env flat", places["env"]),
        ("cache", places["cache"] / FASHION),
        ("system", places["system"] / FASHION),
    ]
    contents = {label: write_idx_folder(folder, marker=10 * i) for i, (label, folder) in enumerate(folders)}
    monkeypatch.setenv("VAE_DATA_DIR", str(places["env"]))
    for label, folder in folders:
        ds = load_dataset(FASHION, data_dir=places["data_dir"], download=False)
        assert ds.source == str(folder), label
        assert ds.name == FASHION
        assert_dataset_equals(ds, contents[label])
        for filename in gz_files(contents[label]):  # take this one away: the next place must win
            (folder / filename).unlink()


def test_load_dataset_skips_folders_without_images(places):
    write(places["data_dir"] / FASHION / "README", b"the files are elsewhere")  # exists, but holds no IDX files
    arrays = write_idx_folder(places["cache"] / FASHION, marker=30)
    ds = load_dataset(FASHION, data_dir=places["data_dir"], download=False)
    assert ds.source == str(places["cache"] / FASHION)
    assert_dataset_equals(ds, arrays)


def test_load_dataset_does_not_download_when_found(places, served, server):
    arrays = write_idx_folder(places["system"] / FASHION, marker=50)
    _, files = served
    server.serve("m1", files)
    assert_dataset_equals(load_dataset(FASHION), arrays)
    assert server.requests == []


def test_not_found_names_every_place_and_how_to_fix(places, served, server, monkeypatch):
    monkeypatch.setenv("VAE_DATA_DIR", str(places["env"]))
    with pytest.raises(DataError) as info:
        load_dataset(FASHION, data_dir=places["data_dir"])
    message = str(info.value)
    for folder in candidate_dirs(FASHION, places["data_dir"]):
        assert str(folder) in message
    assert APT_HINT in message and "VAE_DATA_DIR" in message and "data_dir" in message
    assert "404" in message and server.mirror("m1") in message and server.mirror("m2") in message
    assert server.requests  # it did try to download, from the local mirrors only


def test_not_found_with_download_off(places):
    with pytest.raises(DataError) as info:
        load_dataset(FASHION, download=False)
    message = str(info.value)
    assert "downloading was switched off" in message and APT_HINT in message
    assert str(places["cache"] / FASHION) in message and str(places["system"] / FASHION) in message


def test_not_found_mnist_has_no_fashion_package_hint(places):
    with pytest.raises(DataError) as info:
        load_dataset(MNIST, download=False)
    message = str(info.value)
    assert str(places["cache"] / MNIST) in message
    assert "apt-get" not in message


# ----------------------------------------------------------------------------------------------- download_named


def test_download_then_load(places, served, server):
    arrays, files = served
    server.serve("m1", files)
    ds = load_dataset(FASHION)
    dest = places["cache"] / FASHION
    assert ds.source == str(dest)
    assert_dataset_equals(ds, arrays)
    assert folder_listing(dest) == sorted(files)  # no temporary files left behind
    for filename, raw in files.items():
        assert (dest / filename).read_bytes() == raw
    assert sorted(server.requests) == sorted(f"/m1/{filename}" for filename in files)
    load_dataset(FASHION)  # found in the cache now: no second download
    assert len(server.requests) == len(files)


def test_download_falls_back_to_second_mirror_on_md5_mismatch(tmp_path, served, server):
    _, files = served
    server.serve("m1", corrupted(files))
    server.serve("m2", files)
    dest = download_named(FASHION, tmp_path / "dl")
    assert dest == tmp_path / "dl"
    assert folder_listing(dest) == sorted(files)
    for filename, raw in files.items():
        assert (dest / filename).read_bytes() == raw
    for filename in files:
        assert [f"/m1/{filename}", f"/m2/{filename}"] == [r for r in server.requests if r.endswith(filename)]


@pytest.mark.parametrize("first_mirror", [MALFORMED, TRUNCATED, "missing"])
def test_download_falls_back_when_first_mirror_fails(tmp_path, served, server, first_mirror):
    _, files = served
    if first_mirror != "missing":
        server.serve("m1", files, mode=first_mirror)
    server.serve("m2", files)
    dest = download_named(FASHION, tmp_path / "dl", timeout=5)
    assert folder_listing(dest) == sorted(files)
    assert all((dest / filename).read_bytes() == raw for filename, raw in files.items())


def test_download_all_mirrors_bad(tmp_path, served, server):
    _, files = served
    server.serve("m1", corrupted(files))
    server.serve("m2", files, mode=TRUNCATED)
    dest = tmp_path / "dl"
    with pytest.raises(DataError) as info:
        download_named(FASHION, dest, timeout=5)
    message = str(info.value)
    first = next(iter(files))
    assert f"could not download {first} for {FASHION}" in message
    assert message.count("MD5 mismatch") == 2  # the corrupt file and the cut-off one
    assert server.mirror("m1") + first in message and server.mirror("m2") + first in message
    assert NAMED_DATASETS[FASHION].md5[first] in message
    assert folder_listing(dest) == []  # neither a partial target nor a temporary file


def test_download_interrupted_leaves_no_partial_file(tmp_path, served, server, monkeypatch):
    _, files = served
    server.serve("m1", files)
    dest = tmp_path / "dl"

    def copy_then_interrupt(source, target, *args):
        target.write(source.read(10))
        raise KeyboardInterrupt

    monkeypatch.setattr(shutil, "copyfileobj", copy_then_interrupt)
    with pytest.raises(KeyboardInterrupt):
        download_named(FASHION, dest)
    assert folder_listing(dest) == []


def test_download_keeps_verified_files_and_replaces_bad_ones(tmp_path, served, server):
    _, files = served
    server.serve("m1", files)
    dest = tmp_path / "dl"
    names = list(files)
    for filename in names[:-1]:
        write(dest / filename, files[filename])
    write(dest / names[-1], b"stale partial file from somewhere else")
    download_named(FASHION, dest)
    assert server.requests == [f"/m1/{names[-1]}"]
    assert (dest / names[-1]).read_bytes() == files[names[-1]]
    download_named(FASHION, dest)  # everything verified now: nothing is fetched
    assert server.requests == [f"/m1/{names[-1]}"]


def test_download_into_unwritable_place_is_a_data_error(tmp_path, served):
    blocker = write(tmp_path / "a-file", b"not a folder")
    with pytest.raises(DataError, match="cannot create the download folder") as info:
        download_named(FASHION, blocker / "dl")
    assert str(blocker / "dl") in str(info.value)


# ----------------------------------------------------------------------------------------------- validation_split


def test_validation_split_is_seeded_and_disjoint():
    n, size = 100, 17
    train, val = validation_split(n, size, seed=3)
    again_train, again_val = validation_split(n, size, seed=3)
    np.testing.assert_array_equal(train, again_train)
    np.testing.assert_array_equal(val, again_val)
    assert len(train) == n - size and len(val) == size
    assert not set(train.tolist()) & set(val.tolist())
    np.testing.assert_array_equal(np.sort(np.concatenate([train, val])), np.arange(n))
    assert np.all(np.diff(train) > 0) and np.all(np.diff(val) > 0)  # sorted, hence no repeats
    _, other_val = validation_split(n, size, seed=4)
    assert not np.array_equal(val, other_val)


def test_validation_split_is_the_one_every_shipped_model_recorded():
    """Golden values: packages record only (validation_size, seed), and calibration re-creates their held-out
    images from them, so the draw may never change (a change would calibrate on training images silently)."""
    assert validation_split(10, 3, seed=0)[1].tolist() == [2, 4, 6]
    assert validation_split(60_000, 5_000, seed=0)[1][:5].tolist() == [9, 24, 49, 60, 65]


def test_validation_split_empty_validation():
    train, val = validation_split(5, 0, seed=0)
    np.testing.assert_array_equal(train, np.arange(5))
    assert val.shape == (0,)


@pytest.mark.parametrize(("n", "size", "phrase"), [(10, 10, "leaves no training data"), (10, 11, "out of 10"),
                                                   (10, -1, "must be >= 0")])
def test_validation_split_rejects(n, size, phrase):
    with pytest.raises(DataError, match=phrase) as info:
        validation_split(n, size, seed=0)
    assert str(size) in str(info.value)
