"""The loaded model's API on the committed tiny package: shapes, values, determinism, threads, chunks."""

from __future__ import annotations

import threading

import numpy as np
import pytest

import vae_infer
from vae_infer.anomaly import likelihood


def test_load_reports_manifest_and_device(tiny_model):
    assert tiny_model.latent_size == 2
    assert tiny_model.image_shape == (28, 28)
    assert tiny_model.device == "cpu"
    assert tiny_model.providers == {"encoder": ["CPUExecutionProvider"], "decoder": ["CPUExecutionProvider"]}
    assert tiny_model.manifest.features == 784
    assert "tiny-model" in repr(tiny_model)


def test_encode_shapes_and_input_forms_agree(tiny_model, tiny_images):
    mu, logvar = tiny_model.encode(tiny_images)
    assert mu.shape == logvar.shape == (32, 2)
    assert mu.dtype == logvar.dtype == np.float32
    floats = tiny_images.astype(np.float32) / 255
    mu_f, logvar_f = tiny_model.encode(floats.reshape(32, 784))
    np.testing.assert_array_equal(mu, mu_f)
    np.testing.assert_array_equal(logvar, logvar_f)
    mu_64, _ = tiny_model.encode(floats.astype(np.float64))
    np.testing.assert_allclose(mu, mu_64, atol=1e-6)


def test_decode_is_sigmoid_of_logits_in_unit_range(tiny_model):
    z = np.random.default_rng(0).standard_normal((50, 2)).astype(np.float32) * 3
    x_hat = tiny_model.decode(z)
    assert x_hat.shape == (50, 784) and x_hat.dtype == np.float32
    assert x_hat.min() >= 0.0 and x_hat.max() <= 1.0
    logits = tiny_model.decode_logits(z)
    np.testing.assert_allclose(x_hat, 1 / (1 + np.exp(-logits.astype(np.float64))), atol=1e-6)


def test_reconstruct_is_decode_of_mu(tiny_model, tiny_images):
    mu, _ = tiny_model.encode(tiny_images)
    np.testing.assert_array_equal(tiny_model.reconstruct(tiny_images), tiny_model.decode(mu))


def test_sample_is_seeded(tiny_model):
    a, b, c = tiny_model.sample(8, seed=1), tiny_model.sample(8, seed=1), tiny_model.sample(8, seed=2)
    assert a.shape == (8, 784)
    np.testing.assert_array_equal(a, b)
    assert np.abs(a - c).max() > 1e-3
    z = np.random.default_rng(1).standard_normal((8, 2)).astype(np.float32)
    np.testing.assert_array_equal(a, tiny_model.decode(z))


def test_score_matches_direct_computation(tiny_model, tiny_images):
    x = tiny_images.reshape(32, 784).astype(np.float32) / 255
    mu, logvar = tiny_model.encode(x)
    rng = np.random.default_rng(5)
    z = (mu + np.exp(0.5 * logvar) * rng.standard_normal(mu.shape, dtype=np.float32)).astype(np.float32)
    p = tiny_model.decode(z).astype(np.float64)
    # the textbook formula, straight from probabilities (safe here: the tiny model's p stays inside (0, 1))
    recon = -(x * np.log(p) + (1 - x) * np.log1p(-p)).sum(axis=1)
    kl = -0.5 * (1 + logvar - mu**2 - np.exp(logvar)).sum(axis=1)
    np.testing.assert_allclose(tiny_model.score(tiny_images, seed=5), recon + kl, rtol=1e-4)


def test_score_is_reproducible_and_more_samples_reduce_variance(tiny_model, tiny_images):
    s1 = tiny_model.score(tiny_images, seed=0)
    assert s1.shape == (32,) and np.all(s1 > 0)
    np.testing.assert_array_equal(s1, tiny_model.score(tiny_images, seed=0))
    one = np.stack([tiny_model.score(tiny_images[:4], samples=1, seed=s) for s in range(20)])
    many = np.stack([tiny_model.score(tiny_images[:4], samples=16, seed=s) for s in range(20)])
    assert many.std(axis=0).mean() < one.std(axis=0).mean()
    np.testing.assert_allclose(many.mean(axis=0), one.mean(axis=0), rtol=0.01)


def test_chunking_gives_identical_results(tiny_package, tiny_images):
    whole = vae_infer.load(tiny_package, threads=1)
    chunked = vae_infer.load(tiny_package, threads=1, chunk_size=5)
    for a, b in zip(whole.encode(tiny_images), chunked.encode(tiny_images), strict=True):
        np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(whole.reconstruct(tiny_images), chunked.reconstruct(tiny_images))
    np.testing.assert_allclose(whole.score(tiny_images, seed=3), chunked.score(tiny_images, seed=3), rtol=1e-6)


def test_concurrent_calls_from_threads_agree(tiny_model, tiny_images):
    expected = tiny_model.reconstruct(tiny_images)
    results, errors = [None] * 8, []

    def work(i: int) -> None:
        try:
            for _ in range(10):
                results[i] = tiny_model.reconstruct(tiny_images)
        except Exception as e:  # pragma: no cover - reported below
            errors.append(e)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    for r in results:
        np.testing.assert_array_equal(r, expected)


def test_numpy_likelihood_is_stable_where_sigmoid_saturates():
    logits = np.array([[80.0, -80.0, 0.0]], dtype=np.float32)
    x = np.array([[0.0, 1.0, 0.5]], dtype=np.float32)
    # -log sigmoid(-80) = 80 (plus e^-80); the naive form would give inf
    np.testing.assert_allclose(likelihood.bernoulli_nll(logits, x), [80 + 80 + np.log(2)], rtol=1e-12)


@pytest.mark.parametrize("threads", [1, 2])
def test_threads_option_gives_same_answers(tiny_package, tiny_images, threads, tiny_model):
    m = vae_infer.load(tiny_package, threads=threads)
    np.testing.assert_allclose(m.encode(tiny_images)[0], tiny_model.encode(tiny_images)[0], atol=1e-6)
