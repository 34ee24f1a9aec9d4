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


def test_shipped_model_is_the_course_architecture(shipped):
    m = shipped.manifest
    assert (m.image_shape, m.hidden_size, m.latent_size, m.likelihood) == ((28, 28), 512, 2, "bernoulli")
    assert m.training["train_examples"] + m.training["validation_examples"] == 60000
    assert m.training["command"].startswith("python -m train fit --dataset fashion-mnist")


def test_shipped_figures_meet_the_target(shipped):
    t = shipped.manifest.training
    assert t["test_nelbo"] <= TARGET_TEST_NELBO
    assert t["test_nelbo"] == pytest.approx(t["test_recon"] + t["test_kl"])
    assert t["test_iw_nll"] < t["test_nelbo"]


@needs_real_data
def test_runtime_reproduces_the_shipped_test_figure(shipped):
    from train.data import load_dataset

    test_images = load_dataset("fashion-mnist", download=False).test_images
    runtime = shipped.score(test_images, seed=0).mean()
    assert runtime <= TARGET_TEST_NELBO
    assert runtime == pytest.approx(shipped.manifest.training["test_nelbo"], abs=0.2)
