"""Model packages: the manifest round-trips and is validated; damaged packages are refused at load;
writing is atomic."""

from __future__ import annotations

import json
import os
import shutil

import pytest

import vae_infer
from vae_infer import ModelPackageError
from vae_infer.package import files as package_mod
from vae_infer.package.files import read_manifest, sha256_bytes, write_package
from vae_infer.package.manifest import FORMAT_NAME, FORMAT_VERSION, Manifest


def _edit_manifest(path, edit):
    data = json.loads((path / "model.json").read_text())
    edit(data)
    (path / "model.json").write_text(json.dumps(data))


def test_manifest_round_trips(tiny_package):
    m = read_manifest(tiny_package)
    assert Manifest.from_dict(json.loads(json.dumps(m.to_dict()))) == m
    d = m.to_dict()
    # the committed tiny package is format_version 1 (gray, no input.channels) and stays 1 when rewritten
    assert d["format"] == FORMAT_NAME and d["format_version"] == 1 and FORMAT_VERSION == 2
    assert d["input"] == {"image_shape": [28, 28], "features": 784, "dtype": "float32", "range": [0.0, 1.0],
                          "uint8_scale": 255.0}
    assert d["likelihood"] == "bernoulli" and d["latent_size"] == 2 and d["opset"] == 18
    assert [t["name"] for t in d["graphs"]["encoder"]["outputs"]] == ["mu", "logvar"]
    assert set(d["files"]) == {"encoder.onnx", "decoder.onnx"}
    for name, entry in d["files"].items():
        assert entry["sha256"] == sha256_bytes((tiny_package / name).read_bytes())
    assert {"torch", "onnx", "onnxruntime", "python"} <= set(d["tools"])


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda d: d.update(format="something-else"), r"expected format 'vae-infer-model', found 'something-else'"),
        (lambda d: d.update(format_version=99), r"format_version 99; this vae_infer reads version 1"),
        (lambda d: d.update(likelihood="gaussian"), r"unknown likelihood 'gaussian'"),
        (lambda d: d.pop("latent_size"), r"the field latent_size is missing"),
        # exact types: nothing is coerced
        (lambda d: d.update(format_version="1"), r"format_version must be a positive integer, found '1'"),
        (lambda d: d.update(format_version=1.9), r"format_version must be a positive integer, found 1.9"),
        (lambda d: d.update(format_version=True), r"format_version must be a positive integer, found True"),
        (lambda d: d.update(latent_size=2.7), r"latent_size must be a positive integer, found 2.7"),
        (lambda d: d["input"].update(image_shape=[28, "28"]), r"image_shape must be \[height, width\]"),
        (lambda d: d["input"].update(uint8_scale=0), r"uint8_scale must be a finite number > 0"),
        (lambda d: d["input"].update(uint8_scale=-1), r"uint8_scale must be a finite number > 0"),
        (lambda d: d["input"].update(uint8_scale="255"), r"uint8_scale must be a finite number > 0"),
        # files stay inside the package
        (lambda d: d["graphs"]["encoder"].update(file="../encoder.onnx"), r"is outside the package folder"),
        (lambda d: d["graphs"]["encoder"].update(file="/etc/passwd"), r"is outside the package folder"),
        (lambda d: d["files"].update({"../x": {"sha256": "0" * 64}}), r"'../x' is outside the package folder"),
        (lambda d: d["files"]["encoder.onnx"].update(sha256="abc"), r"must be \{\"sha256\": 64 hex digits\}"),
        (lambda d: d.update(variants={"int8": {"decoder_file": "decoder.onnx"}}), r"variants\['int8'\] must name"),
        (lambda d: d.update(calibration=[1, 2]), r"calibration must be an object or absent"),
        (lambda d: d.update(latent_size=3), r"the encoder should take .* but it declares"),
        (lambda d: d["files"].pop("decoder.onnx"), r"no sha256 listed for the decoder file 'decoder.onnx'"),
    ],
)
def test_invalid_manifests_are_refused(tiny_copy, edit, message):
    _edit_manifest(tiny_copy, edit)
    with pytest.raises(ModelPackageError, match=message):
        vae_infer.load(tiny_copy)


def test_missing_folder_and_missing_manifest(tmp_path):
    with pytest.raises(ModelPackageError, match=r"no model package at .*nowhere: expected a folder holding model.json"):
        vae_infer.load(tmp_path / "nowhere")
    with pytest.raises(ModelPackageError, match=r"is not a model package: model.json is missing"):
        vae_infer.load(tmp_path)


def test_corrupt_manifest(tiny_copy):
    (tiny_copy / "model.json").write_text('{"format": "vae-infer-model", ')
    with pytest.raises(ModelPackageError, match=r"model.json is not valid JSON .*corrupt or truncated"):
        vae_infer.load(tiny_copy)


def test_missing_graph_file(tiny_copy):
    (tiny_copy / "decoder.onnx").unlink()
    with pytest.raises(ModelPackageError, match=r"cannot read .*decoder.onnx.*the model package is incomplete"):
        vae_infer.load(tiny_copy)


@pytest.mark.parametrize("damage", ["flip", "truncate"])
def test_tampered_or_truncated_graph_is_refused_by_sha256(tiny_copy, damage):
    path = tiny_copy / "encoder.onnx"
    data = bytearray(path.read_bytes())
    if damage == "flip":
        data[len(data) // 2] ^= 0xFF
    else:
        data = data[: len(data) // 2]
    path.write_bytes(bytes(data))
    with pytest.raises(ModelPackageError, match=r"encoder.onnx does not match model.json: sha256 .*Re-export"):
        vae_infer.load(tiny_copy)


def test_swapped_graphs_are_refused_by_name_and_shape_check(tiny_copy):
    """Consistent sha256s but the files exchanged: the sessions' real inputs reveal the mismatch."""
    def swap(d):
        enc, dec = d["graphs"]["encoder"], d["graphs"]["decoder"]
        enc["file"], dec["file"] = dec["file"], enc["file"]

    _edit_manifest(tiny_copy, swap)
    with pytest.raises(ModelPackageError, match=r"the graph's inputs are \[\('z', \('batch', 2\)\)\] but model.json "
                                                r"declares \[\('x', \('batch', 784\)\)\]"):
        vae_infer.load(tiny_copy)


def test_renamed_tensor_is_refused(tiny_copy):
    _edit_manifest(tiny_copy, lambda d: d["graphs"]["encoder"]["outputs"][0].update(name="mean"))
    with pytest.raises(ModelPackageError, match=r"the graph's outputs are .*'mu'.* but model.json declares .*'mean'"):
        vae_infer.load(tiny_copy)


def test_garbage_onnx_with_matching_sha_is_refused_cleanly(tiny_copy):
    garbage = b"not an onnx graph at all"
    (tiny_copy / "decoder.onnx").write_bytes(garbage)
    _edit_manifest(tiny_copy, lambda d: d["files"]["decoder.onnx"].update(sha256=sha256_bytes(garbage)))
    with pytest.raises(ModelPackageError, match=r"onnxruntime cannot load .*decoder.onnx"):
        vae_infer.load(tiny_copy)


def _package_files(path):
    return {p.name: p.read_bytes() for p in path.iterdir()}


def test_write_package_replaces_atomically_and_leaves_no_temp(tiny_package, tmp_path):
    manifest = read_manifest(tiny_package)
    files = {n: (tiny_package / n).read_bytes() for n in manifest.files}
    dest = tmp_path / "pkg"
    write_package(dest, files, manifest)
    first = _package_files(dest)
    write_package(dest, files, manifest)  # over an existing package
    assert _package_files(dest) == first
    assert sorted(os.listdir(tmp_path)) == ["pkg"]
    vae_infer.load(dest)


def test_crash_while_writing_keeps_the_old_package(tiny_package, tmp_path, monkeypatch):
    manifest = read_manifest(tiny_package)
    files = {n: (tiny_package / n).read_bytes() for n in manifest.files}
    dest = tmp_path / "pkg"
    shutil.copytree(tiny_package, dest)
    before = _package_files(dest)
    calls = {"n": 0}
    real_fsync = os.fsync

    def crash_on_second_file(fd):
        calls["n"] += 1
        if calls["n"] == 2:
            raise OSError("disk full")
        real_fsync(fd)

    monkeypatch.setattr(package_mod.os, "fsync", crash_on_second_file)
    with pytest.raises(OSError, match="disk full"):
        write_package(dest, files, manifest)
    assert _package_files(dest) == before
    assert sorted(os.listdir(tmp_path)) == ["pkg"]


def test_write_package_refuses_inconsistent_manifest(tiny_package, tmp_path):
    manifest = read_manifest(tiny_package)
    files = {n: (tiny_package / n).read_bytes() + b"x" for n in manifest.files}
    with pytest.raises(ModelPackageError, match=r"manifest sha256 for 'decoder.onnx' does not match its bytes"):
        write_package(tmp_path / "pkg", files, manifest)
    assert not (tmp_path / "pkg").exists()


def test_without_atomic_exchange_the_fallback_still_replaces(tiny_package, tmp_path, monkeypatch):
    manifest = read_manifest(tiny_package)
    files = {n: (tiny_package / n).read_bytes() for n in manifest.files}
    dest = tmp_path / "pkg"
    dest.mkdir()
    (dest / "stale.txt").write_text("old")
    monkeypatch.setattr(package_mod, "_exchange", lambda a, b: False)
    write_package(dest, files, manifest)
    assert sorted(os.listdir(dest)) == ["decoder.onnx", "encoder.onnx", "model.json"]
    assert sorted(os.listdir(tmp_path)) == ["pkg"]


def test_update_package_adds_a_file_and_section(tiny_copy):
    from vae_infer.package.files import update_package

    extra = b"\x00\x01extra"
    new = update_package(tiny_copy, {"extra.bin": extra}, calibration={"file": "extra.bin", "quantile": 0.99})
    assert new.files["extra.bin"] == sha256_bytes(extra)
    reread = read_manifest(tiny_copy)
    assert reread == new and reread.calibration == {"file": "extra.bin", "quantile": 0.99}
    assert reread.to_dict()["calibration"]["file"] == "extra.bin"
    with pytest.raises(ModelPackageError, match=r"calibration lacks version"):  # sections are checked at load
        vae_infer.load(tiny_copy)


def test_update_package_refuses_a_tampered_package(tiny_copy):
    from vae_infer.package.files import update_package

    (tiny_copy / "decoder.onnx").write_bytes(b"tampered")
    with pytest.raises(ModelPackageError, match=r"decoder.onnx does not match model.json"):
        update_package(tiny_copy, {"x.bin": b"x"})


def test_a_section_naming_an_unlisted_file_is_refused(tiny_copy):
    _edit_manifest(tiny_copy, lambda d: d.update(latent_index={"file": "graph.npz"}))
    with pytest.raises(ModelPackageError, match=r"latent_index names the file 'graph.npz' but no sha256 is listed"):
        vae_infer.load(tiny_copy)
