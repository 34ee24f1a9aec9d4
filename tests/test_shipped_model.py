"""The committed model package: it loads, its manifest figures hold, and the runtime reproduces them."""

from __future__ import annotations

from pathlib import Path

import pytest

import vae_infer
from tests.conftest import needs_real_data

SHIPPED = Path(__file__).resolve().parents[1] / "models" / "fashion-mnist"
TARGET_TEST_NELBO = 259.0  # nats per example on the Fashion-MNIST test set


@pytest.fixture(scope="module")
def shipped():
    return vae_infer.load(SHIPPED)


COURSE = {"features": 784, "hidden": 512, "latent": 2}  # the course's architecture, the one place it is stated


def test_shipped_graphs_compute_the_course_architecture(shipped, tiny_images):
    """What the graphs hold and compute, not what the manifest says: weight matrices 784x512, 512x2 (twice:
    mu and logvar) and 2x512, 512x784; codes of size 2; images in [0, 1] that reconstruct real ones far
    better than their mean does."""
    onnx = pytest.importorskip("onnx")
    f, h, d = COURSE["features"], COURSE["hidden"], COURSE["latent"]
    matrices = {role: sorted(tuple(sorted(t.dims)) for t in onnx.load(SHIPPED / f"{role}.onnx").graph.initializer
                             if len(t.dims) == 2) for role in ("encoder", "decoder")}
    assert matrices == {"encoder": sorted([(h, f), (d, h), (d, h)]), "decoder": sorted([(d, h), (h, f)])}
    mu, logvar = shipped.encode(tiny_images)
    assert mu.shape == logvar.shape == (len(tiny_images), d)
    x = shipped.as_images(tiny_images)
    x_hat = shipped.reconstruct(tiny_images)
    assert x_hat.shape == (len(tiny_images), f) and 0 <= x_hat.min() and x_hat.max() <= 1
    assert ((x_hat - x) ** 2).mean() < 0.5 * ((x.mean(axis=0) - x) ** 2).mean()  # measured: 0.027 vs 0.085
    m = shipped.manifest
    assert m.training["train_examples"] + m.training["validation_examples"] == 60000
    assert m.training["command"].startswith("python -m train fit --dataset fashion-mnist")


def test_shipped_figures_meet_the_target(shipped):
    t = shipped.manifest.training
    assert t["test_nelbo"] <= TARGET_TEST_NELBO
    assert t["test_nelbo"] == pytest.approx(t["test_recon"] + t["test_kl"])
    assert t["test_iw_nll"] < t["test_nelbo"]


@pytest.mark.slow
@needs_real_data
def test_runtime_reproduces_the_shipped_test_figure(shipped):
    from train.data import load_dataset

    test_images = load_dataset("fashion-mnist", download=False).test_images
    runtime = shipped.score(test_images, seed=0).mean()
    assert runtime <= TARGET_TEST_NELBO
    assert runtime == pytest.approx(shipped.manifest.training["test_nelbo"], abs=0.2)
