"""The core's rules for hostile input: values checked before any cast, sizes bounded before allocating, and
package files read only as bounded regular files inside the package. One test per rule, each with the
input that used to get through (a NaN decode, a hang, a traceback)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

import vae_infer
from vae_infer.errors import DeviceError, InputError, ModelPackageError
from vae_infer.inputs import LATENT_BOUND, MAX_OUTPUT_BYTES


def test_far_latents_are_refused_not_decoded_to_nan(tiny_model):
    with pytest.raises(InputError, match=r"latent codes must lie within \+-1e\+06 .* found 1e\+38 at row 1"):
        tiny_model.decode(np.array([[0, 0], [1e38, 1e38]], np.float32))
    edge = tiny_model.decode(np.full((1, 2), LATENT_BOUND, np.float32))
    assert edge.shape == (1, tiny_model.manifest.features) and np.isfinite(edge).all()
    rng = np.random.default_rng(0)  # wide-range float32 codes: half of them used to decode to NaN
    z = (rng.standard_normal((200, 2)) * 10.0 ** rng.uniform(0, 38, (200, 1))).astype(np.float32)
    ok = np.abs(z).max(axis=1) <= LATENT_BOUND
    assert np.isfinite(tiny_model.decode(z[ok])).all()
    with pytest.raises(InputError, match="latent codes must lie within"):
        tiny_model.decode(z)


def test_ragged_and_object_inputs_get_an_input_error(tiny_model):
    features = tiny_model.manifest.features
    with pytest.raises(InputError, match="rectangular numeric array; the rows have different lengths"):
        tiny_model.encode([[0.1] * features, [0.2] * (features - 1)])
    with pytest.raises(InputError, match="expected uint8 or float images, got dtype object"):
        tiny_model.encode(np.array([None] * features, dtype=object)[None])
    with pytest.raises(InputError, match=r"got \(\) \(a 0-d array \(a single number\)\)"):
        tiny_model.encode(np.float32(0.5))


def test_float_pixels_are_checked_in_the_callers_precision(tiny_model):
    features = tiny_model.manifest.features
    for bad, shown in ((1 + 1e-9, r"0.5, 1.000000001"), (-1e-50, r"-1e-50, 0.5")):
        x = np.full((2, features), 0.5)
        x[1, 3] = bad
        with pytest.raises(InputError, match=rf"float images must lie in \[0, 1\], found values in \[{shown}\]"):
            tiny_model.encode(x)
    x = np.full((1, features), 0.5)
    x[0, 0] = 1e300  # finite: reported as out of range, not as NaN or inf
    with pytest.raises(InputError, match=r"found values in \[0.5, 1e\+300\]"):
        tiny_model.encode(x)


def test_sizes_are_bounded_before_allocating(tiny_model):
    with pytest.raises(InputError, match=r"sample: 1000000000 rows .* one call returns at most \d+ rows"):
        tiny_model.sample(10**9)
    most = MAX_OUTPUT_BYTES // (tiny_model.manifest.features * 4)
    with pytest.raises(InputError, match="decode"):
        tiny_model.decode(np.zeros((most + 1, 2), np.float32))


@pytest.mark.slow
def test_large_uint8_input_is_converted_chunk_by_chunk(tiny_package, tmp_path):
    """200,000 uint8 rows (150 MB): encode's peak anonymous memory stays far below the 627 MB that one
    float32 copy of the whole batch would take (measured in a fresh process, from /proc's RssAnon)."""
    code = textwrap.dedent(f"""
        import numpy as np, vae_infer
        def anon():
            for line in open("/proc/self/status"):
                if line.startswith("RssAnon"):
                    return int(line.split()[1]) * 1024
        m = vae_infer.load({str(tiny_package)!r}, threads=1)
        x = np.random.default_rng(0).integers(0, 256, (200_000, m.manifest.features), dtype=np.uint8)
        m.encode(x[:10])
        before = anon()
        import threading, time
        peak = [before]
        done = threading.Event()
        def watch():
            while not done.is_set():
                peak[0] = max(peak[0], anon()); time.sleep(0.002)
        t = threading.Thread(target=watch); t.start()
        mu, _ = m.encode(x)
        done.set(); t.join()
        print(peak[0] - before, mu.shape[0])
    """)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    grown, rows = map(int, out.stdout.split())
    assert rows == 200_000
    assert grown < 200 * 2**20, f"encode grew anonymous memory by {grown / 2**20:.0f} MiB"


def test_load_arguments_are_checked(tiny_package):
    with pytest.raises(InputError, match="path must be a model package folder .* got NoneType"):
        vae_infer.load(None)
    with pytest.raises(DeviceError, match="threads must be a positive integer or None"):
        vae_infer.load(tiny_package, threads=True)
    assert vae_infer.load(tiny_package, threads=np.int64(1)).encode(np.zeros((1, 784), np.uint8))[0].shape == (1, 2)
    with pytest.raises(DeviceError, match="spinning must be True or False"):
        vae_infer.load(tiny_package, spinning="yes")
    with pytest.raises(DeviceError, match="unknown device"):
        vae_infer.load(tiny_package, device=["cpu"])


def test_deeply_nested_manifest_is_refused(tiny_copy):
    (tiny_copy / "model.json").write_text("[" * 100_000 + "]" * 100_000)
    with pytest.raises(ModelPackageError, match="nested too deeply"):
        vae_infer.load(tiny_copy)


def test_nan_in_manifest_is_refused(tiny_copy):
    text = (tiny_copy / "model.json").read_text().replace('"uint8_scale": 255.0', '"uint8_scale": NaN')
    (tiny_copy / "model.json").write_text(text)
    with pytest.raises(ModelPackageError, match="not valid JSON .*NaN is not a JSON number"):
        vae_infer.load(tiny_copy)


@pytest.mark.parametrize("kind", ["fifo", "dev_zero", "outside", "folder"])
def test_package_files_must_be_regular_files_inside_the_package(tiny_copy, tmp_path, kind):
    target = tiny_copy / "encoder.onnx"
    data = target.read_bytes()
    target.unlink()
    if kind == "fifo":
        os.mkfifo(target)
        match = "is not a regular file"
    elif kind == "dev_zero":
        target.symlink_to("/dev/zero")
        match = "leads outside the package folder"
    elif kind == "outside":  # a symlink out of the package, to a file with the right sha256
        (tmp_path / "elsewhere.onnx").write_bytes(data)
        target.symlink_to(tmp_path / "elsewhere.onnx")
        match = "leads outside the package folder"
    else:
        target.mkdir()
        match = "is not a regular file"
    with pytest.raises(ModelPackageError, match=match):  # never hangs, never reads forever
        vae_infer.load(tiny_copy)


def test_load_verifies_every_listed_file(tiny_copy):
    extra = tiny_copy / "calibration.npz"
    extra.write_bytes(b"garbage")
    manifest = json.loads((tiny_copy / "model.json").read_text())
    manifest["files"]["calibration.npz"] = {"sha256": "0" * 64}
    (tiny_copy / "model.json").write_text(json.dumps(manifest))
    with pytest.raises(ModelPackageError, match="calibration.npz does not match model.json"):
        vae_infer.load(tiny_copy)


def test_a_later_package_write_removes_folders_of_killed_writes(tiny_copy):
    """write_package's temporary folders left by a killed writer (its PID gone) are removed by the next
    write to the same package; a live writer's folder is left alone."""
    from vae_infer.package.files import update_package

    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    dead_pid = int(dead.stdout)
    from vae_infer.atomic import temp_folder_prefix

    leftover = tiny_copy.parent / (temp_folder_prefix(tiny_copy, "new", pid=dead_pid) + "x1y2z3")
    leftover.mkdir()
    (leftover / "encoder.onnx").write_bytes(b"half written")
    live = tiny_copy.parent / (temp_folder_prefix(tiny_copy, "new") + "a1b2c3")
    live.mkdir()
    update_package(tiny_copy, {})
    assert not leftover.exists()
    assert live.is_dir()
    assert vae_infer.load(tiny_copy, threads=1).latent_size == 2


def test_a_decoder_that_overflows_is_refused_not_returned_as_nan(tiny_copy):
    """A package whose decoder overflows inside for codes within the bound (its hidden weights scaled by 1e37,
    so a code of 1e5 drives hidden units to +inf and the output sums +inf and -inf into NaN): decode raises
    InputError naming the row instead of returning NaN pixels. A zero code never touches the scaled weights."""
    onnx = pytest.importorskip("onnx")
    from onnx import numpy_helper

    from vae_infer.package.files import update_package

    proto = onnx.load(str(tiny_copy / "decoder.onnx"))
    hidden = next(i for i in proto.graph.initializer if i.name.endswith("hidden.weight"))
    hidden.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(hidden) * np.float32(1e37), hidden.name))
    update_package(tiny_copy, {"decoder.onnx": proto.SerializeToString()})
    model = vae_infer.load(tiny_copy, threads=1)
    assert np.isfinite(model.decode(np.zeros((1, 2), np.float32))).all()
    with pytest.raises(InputError, match=r"the decoder gave non-finite pixels for the latent code at row 1"):
        model.decode(np.array([[0.0, 0.0], [1e5, -1e5]], np.float32))
