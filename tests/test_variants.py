"""Model variants (int8, fp16, ORT format): made from the fp32 graphs, measured, stored, loadable, and
within their stated tolerance of fp32."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("onnx")

import vae_infer  # noqa: E402
from train.variants import TOLERANCE, VARIANTS, add_variants  # noqa: E402
from vae_infer import ModelPackageError, VaeInferError  # noqa: E402


@pytest.fixture(scope="module")
def with_variants(tmp_path_factory, tiny_images):
    import shutil

    from tests.conftest import TINY_PACKAGE

    dest = tmp_path_factory.mktemp("variants") / "tiny-model"
    shutil.copytree(TINY_PACKAGE, dest)
    add_variants(dest, list(VARIANTS), tiny_images)
    return dest


@pytest.mark.parametrize("kind", VARIANTS)
def test_variant_loads_and_agrees_with_fp32_within_tolerance(with_variants, tiny_images, kind):
    fp32 = vae_infer.load(with_variants, threads=1)
    variant = vae_infer.load(with_variants, threads=1, variant=kind)
    assert variant.variant == kind
    entry = variant.manifest.variants[kind]
    for name in (entry["encoder_file"], entry["decoder_file"]):
        assert name in variant.manifest.files  # sha256-checked like the fp32 graphs
    mu_diff = np.abs(variant.encode(tiny_images)[0] - fp32.encode(tiny_images)[0]).mean()
    x_diff = np.abs(variant.reconstruct(tiny_images) - fp32.reconstruct(tiny_images)).mean()
    assert max(mu_diff, x_diff) <= TOLERANCE[kind]
    assert entry["mean_abs_diff_vs_fp32"]["mu"] == pytest.approx(mu_diff, rel=1e-5, abs=1e-9)
    nelbo = variant.score(tiny_images, seed=0).mean()
    assert entry["test_nelbo"] == pytest.approx(nelbo)
    assert entry["test_nelbo_change"] == pytest.approx(nelbo - fp32.score(tiny_images, seed=0).mean())


def test_variant_sizes(with_variants):
    v = vae_infer.load(with_variants).manifest.variants
    assert v["fp16"]["bytes"] < 0.6 * v["fp16"]["fp32_bytes"]
    assert v["int8"]["bytes"] < 0.5 * v["int8"]["fp32_bytes"]
    assert (with_variants / "encoder.ort").read_bytes()[4:8] == b"ORTM"


def test_unknown_variant_is_refused(with_variants, tiny_package):
    with pytest.raises(ModelPackageError, match=r"has no variant 'int4'; it has \['fp16', 'int8', 'ort'\]"):
        vae_infer.load(with_variants, variant="int4")
    with pytest.raises(ModelPackageError, match=r"has no variant 'int8'; it has none.*--quantize int8"):
        vae_infer.load(tiny_package, variant="int8")


def test_unknown_variant_kind_leaves_package_unchanged(tiny_copy, tiny_images):
    before = (tiny_copy / "model.json").read_bytes()
    with pytest.raises(VaeInferError, match=r"unknown variant\(s\) \['int4'\]"):
        add_variants(tiny_copy, ["int4"], tiny_images)
    assert (tiny_copy / "model.json").read_bytes() == before


def test_variant_over_tolerance_leaves_package_unchanged(tiny_copy, tiny_images, monkeypatch):
    import train.variants as variants_mod

    monkeypatch.setitem(variants_mod.TOLERANCE, "fp16", 0.0)
    before = sorted(p.name for p in tiny_copy.iterdir())
    with pytest.raises(VaeInferError, match=r"variant fp16 differs from fp32 by .* the package is unchanged"):
        add_variants(tiny_copy, ["fp16"], tiny_images)
    assert sorted(p.name for p in tiny_copy.iterdir()) == before


@pytest.mark.slow
def test_train_export_cli_adds_variants_and_refuses_bad_use(tiny_copy, tmp_path):
    from click.testing import CliRunner

    from tests.conftest import real_data_available
    from train.cli import main as train_cli

    runner = CliRunner()
    r = runner.invoke(train_cli, ["export", str(tiny_copy)])
    assert r.exit_code == 2 and "name variants to add (--quantize int8, --fp16, --ort-format) and no --out" in r.output
    r = runner.invoke(train_cli, ["export", str(tmp_path)])
    assert r.exit_code == 2 and "SOURCE is a run folder: --out names the model package to write" in r.output
    if not real_data_available():
        pytest.skip("needs Fashion-MNIST for the variant's test figures: apt-get install dataset-fashion-mnist")
    r = runner.invoke(train_cli, ["export", str(tiny_copy), "--fp16"])
    assert r.exit_code == 0, r.output
    assert r.output.startswith("variant fp16: 0.11 MB (fp32 0.22 MB), test -ELBO")
    assert vae_infer.load(tiny_copy, variant="fp16").manifest.variants["fp16"]["test_examples"] == 10000


@pytest.mark.parametrize("verbose", [False, True])
@pytest.mark.slow
def test_quantizers_are_quiet_unless_asked(verbose):
    """onnxruntime's quantizers log advice on the root logger ("Please consider to run pre-processing"); a user
    who asked for int8 sees none of it, unless they turned logging up to DEBUG (what -v does)."""
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    code = ("import logging, sys\n"
            f"{'logging.basicConfig(level=logging.DEBUG)' if verbose else ''}\n"
            "from pathlib import Path\n"
            "from train.variants import _int8_dynamic, _int8_weights_only\n"
            "enc = Path('tests/fixtures/tiny-model/encoder.onnx').read_bytes()\n"
            "dec = Path('tests/fixtures/tiny-model/decoder.onnx').read_bytes()\n"
            "assert _int8_dynamic(enc) and _int8_weights_only(dec)\n"
            "logging.warning('after: logging works as before')\n")
    done = subprocess.run([sys.executable, "-c", code], cwd=root, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    if verbose:
        assert any("pre-processing" in line for line in lines), lines
    else:
        # one line: ours (onnxruntime.quantization installs its own root format when imported)
        assert len(lines) == 1 and lines[0].endswith("after: logging works as before"), lines
