"""A model with an 8-D latent on the explorer page: the latent map stores the codes' 2-D PCA projection (mean,
W, points), /v1/latent-map serves it, and in Chromium the map draws the projected points, hovering decodes
mean + W·p, and two picks draw paths computed in the full latent space. The shipped 2-D model's page keeps its
plain drawing. The latent-8 model is trained for one epoch on 3,000 real Fashion-MNIST images (about 15 s)."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

import vae_infer
from tests.conftest import needs, real_data_available
from tests.test_browser import TIMEOUT_MS, canvas_pixels, needs_ort, open_page, server_decode
from tests.test_serve import ROOT, SHIPPED, start_server
from vae_infer.errors import ModelPackageError
from vae_infer.interpolation.latent_map import (
    PCA_TOLERANCE,
    LatentMap,
    pca_projection,
    read_latent_map,
    save_latent_map,
)

LATENT = 8
needs_fashion = needs(real_data_available(), "Fashion-MNIST in /usr/share/datasets/fashion-mnist")


def _run(*args: str) -> str:
    r = subprocess.run([sys.executable, *args], cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-2000:]
    return r.stdout


@pytest.fixture(scope="session")
def latent8(tmp_path_factory):
    """A latent-8 Fashion-MNIST package with its latent index and map (index build on real data)."""
    if not real_data_available():
        pytest.skip("needs Fashion-MNIST in /usr/share/datasets/fashion-mnist")
    root = tmp_path_factory.mktemp("latent8")
    out = root / "m8"
    _run("-m", "train", "fit", "--dataset", "fashion-mnist", "--latent-size", str(LATENT), "--hidden-size", "64",
         "--epochs", "1", "--train-limit", "3000", "--validation-size", "500", "--iw-samples", "2", "--threads", "1",
         "--no-pictures", "--quiet", "--run-dir", str(root / "run"), "--out", str(out))
    _run("-m", "vae_infer", "index", "build", str(out), "--data", "fashion-mnist", "--max-codes", "3000",
         "--map-points", "2000", "--threads", "1")
    return out


def test_pca_projection_matches_numpy_svd():
    rng = np.random.default_rng(0)
    codes = (rng.normal(size=(500, 6)) * [5, 3, 1, 0.5, 0.2, 0.1] + 2).astype(np.float32)
    p = pca_projection(codes)
    _, _, vt = np.linalg.svd(codes - codes.mean(0), full_matrices=False)
    for k in range(2):  # the same directions as the SVD's, up to sign
        assert abs(abs(float(vt[k] @ p.components[:, k])) - 1) < 1e-5
    np.testing.assert_allclose(p.components.T @ p.components, np.eye(2), atol=1e-6)
    np.testing.assert_allclose(p.points, (codes - p.mean) @ p.components, atol=1e-5)
    assert p.points[:, 0].var() > p.points[:, 1].var() > 0.5  # largest variance first
    np.testing.assert_allclose(p.lift([[1.0, -2.0]])[0], p.mean + p.components @ [1.0, -2.0], atol=1e-6)


@pytest.mark.slow
@needs_fashion
def test_latent8_map_holds_the_pca_and_a_tampered_one_is_refused(latent8, tmp_path):
    model = vae_infer.load(latent8, threads=1)
    m = read_latent_map(model)
    section = model.manifest.latent_map
    assert section["projection"] == "pca" and section["latent_size"] == LATENT and section["points"] == 2000
    p = m.projection
    assert p.mean.shape == (LATENT,) and p.components.shape == (LATENT, 2) and p.points.shape == (2000, 2)
    np.testing.assert_allclose(p.components.T @ p.components, np.eye(2), atol=1e-5)
    np.testing.assert_allclose(p.points, (m.codes - p.mean) @ p.components, atol=1e-5)
    np.testing.assert_allclose(p.mean, m.codes.mean(0), atol=1e-5)

    import shutil

    bad = tmp_path / "bad"
    shutil.copytree(latent8, bad)
    save_latent_map(bad, LatentMap(m.codes, m.labels, m.class_names, m.source,
                                   p._replace(points=p.points + np.float32(10 * PCA_TOLERANCE))))
    with pytest.raises(ModelPackageError, match="pca_points differ from"):
        vae_infer.load(bad, threads=1)
    save_latent_map(bad, LatentMap(m.codes, m.labels, m.class_names, m.source,
                                   p._replace(components=p.components * np.float32(2))))
    with pytest.raises(ModelPackageError, match="not orthonormal"):
        vae_infer.load(bad, threads=1)


@pytest.fixture(scope="module")
def server8(latent8):
    proc, url = start_server(str(latent8), "--examples", "none")
    yield url
    proc.terminate()
    proc.wait(30)


@pytest.mark.slow
@needs_fashion
def test_latent_map_endpoint_serves_the_projection(latent8, server8):
    import httpx

    body = httpx.get(server8 + "/v1/latent-map", timeout=30).json()
    m = read_latent_map(vae_infer.load(latent8, threads=1))
    assert np.asarray(body["z"]).shape == (2000, LATENT)
    proj = body["projection"]
    assert proj["kind"] == "pca"
    np.testing.assert_allclose(proj["mean"], m.projection.mean, atol=1e-6)
    np.testing.assert_allclose(proj["components"], m.projection.components, atol=1e-6)
    np.testing.assert_allclose(proj["points"], m.projection.points, atol=1e-6)
    shipped = json.loads((SHIPPED / "model.json").read_text())
    assert shipped["latent_size"] == 2  # the shipped model's map has no projection: see the page test below


def _map_is_drawn(page) -> None:
    px = canvas_pixels(page, "#map").reshape(-1, 4)[:, :3].astype(int)
    coloured = (np.abs(px - px.mean(axis=1, keepdims=True)).max(axis=1) > 40).sum()  # class-coloured dots
    assert coloured > 500, coloured


@pytest.mark.slow
@needs_fashion
@needs_ort
def test_latent8_page_draws_the_projection_hovers_on_the_plane_and_draws_paths(browser, latent8, server8):
    import httpx

    page = open_page(browser, server8)
    _map_is_drawn(page)
    proj = httpx.get(server8 + "/v1/latent-map", timeout=30).json()["projection"]
    mean, w = np.asarray(proj["mean"]), np.asarray(proj["components"])
    note = page.text_content("#map-note")
    assert page.is_visible("#map-note") and "8 dimensions" in note and "mean + W·p" in note and "PCA" in note
    assert "8-D latent" in page.text_content("#model-name")
    np.testing.assert_allclose(page.evaluate("window.explorer.map.z.length"), 2000)

    box = page.locator("#map").bounding_box()
    shown = []
    for fx, fy in ((0.3, 0.3), (0.7, 0.65)):
        before = page.evaluate("window.explorer.hovers")
        page.mouse.move(box["x"] + fx * box["width"], box["y"] + fy * box["height"])
        page.wait_for_function(f"() => window.explorer.hovers > {before}", timeout=TIMEOUT_MS)
        page.wait_for_timeout(100)
        hover = page.evaluate("window.explorer.lastHover")
        p = np.asarray(hover["p"])
        assert p.shape == (2,) and len(hover["z"]) == LATENT
        want_z = mean + w @ p  # the point of the PCA plane under the pointer
        np.testing.assert_allclose(hover["z"], want_z, atol=1e-5)
        np.testing.assert_allclose(hover["row"], server_decode(server8, [want_z])[0], atol=1e-4, rtol=0)
        shown.append(canvas_pixels(page, "#hover-image"))
    assert np.abs(shown[0].astype(int) - shown[1].astype(int)).max() > 50  # the decoded canvas changed
    assert "mean + W·p" in page.text_content("#hover-z")

    # two picks on map points: their own 8-D codes, and paths between them computed in 8-D, drawn projected
    codes = np.asarray(httpx.get(server8 + "/v1/latent-map", timeout=30).json()["z"])
    targets = []
    for i in (int(np.argmin(np.asarray(proj["points"])[:, 0])), int(np.argmax(np.asarray(proj["points"])[:, 0]))):
        sx, sy = page.evaluate(f"window.explorer.map.toScreen(window.explorer.map.z[{i}])")
        targets.append(i)
        page.mouse.click(box["x"] + sx, box["y"] + sy)
    page.wait_for_function("() => window.explorer.pathsDrawn === 3", timeout=TIMEOUT_MS)
    picks = np.asarray(page.evaluate("window.explorer.picks"))
    assert picks.shape == (2, LATENT)
    for pick in picks:  # each the code of a map point near the click (the nearest one within a few pixels)
        assert np.abs(codes - pick).max(axis=1).min() < 1e-6
    drawn = page.evaluate("window.explorer.map.paths")
    assert sorted(d["method"] for d in drawn) == ["graph", "linear", "slerp"]
    linear = next(d for d in drawn if d["method"] == "linear")
    got = np.asarray(linear["z"])  # the 8-D straight line from A to B, drawn projected: a segment of the plane
    ends = (picks - mean) @ w
    np.testing.assert_allclose(got[[0, -1]], ends, atol=1e-4)
    d = ends[1] - ends[0]
    t = (got - ends[0]) @ d / (d @ d)
    np.testing.assert_allclose(got, ends[0] + t[:, None] * d, atol=1e-4)
    assert np.all(np.diff(t) > 0)
    assert page.eval_on_selector_all(".strip .frames canvas", "els => els.length") == 30
    grid = canvas_pixels(page, "#grid")
    assert grid.reshape(-1, 4)[:, 0].std() > 20  # the manifold grid decodes points of the plane


@pytest.mark.slow
@needs_ort
def test_shipped_2d_page_keeps_its_plain_drawing(browser):
    proc, url = start_server(str(SHIPPED), "--examples", "none")
    try:
        page = open_page(browser, url)
        _map_is_drawn(page)
        assert page.evaluate("window.explorer.plane.projected") is False
        assert not page.is_visible("#map-note")
        box = page.locator("#map").bounding_box()
        page.mouse.move(box["x"] + box["width"] / 2, box["y"] + box["height"] / 3)
        page.wait_for_function("() => window.explorer.hovers > 0", timeout=TIMEOUT_MS)
        hover = page.evaluate("window.explorer.lastHover")
        assert len(hover["z"]) == 2 and hover["z"] == hover["p"]  # the drawing's point is the code itself
        np.testing.assert_allclose(hover["row"], server_decode(url, [hover["z"]])[0], atol=1e-4, rtol=0)
        for fx, fy in ((0.25, 0.3), (0.75, 0.7)):
            page.mouse.click(box["x"] + fx * box["width"], box["y"] + fy * box["height"])
        page.wait_for_function("() => window.explorer.pathsDrawn === 3", timeout=TIMEOUT_MS)
        assert np.asarray(page.evaluate("window.explorer.picks")).shape == (2, 2)
    finally:
        proc.terminate()
        proc.wait(30)


def _map_bytes(codes, projection):
    from vae_infer.interpolation.latent_map import manifest_section, to_bytes

    m = LatentMap(codes, None, (), "synthetic", projection)
    return to_bytes(m), manifest_section(m)


def test_a_map_and_its_section_must_agree_on_the_projection():
    from vae_infer.interpolation.latent_map import parse_latent_map

    rng = np.random.default_rng(1)
    codes = rng.normal(size=(300, 5)).astype(np.float32)
    data, section = _map_bytes(codes, pca_projection(codes))
    got = parse_latent_map(data, section, 5, "map", "rebuild")
    np.testing.assert_array_equal(got.projection.points, pca_projection(codes).points)
    with pytest.raises(ModelPackageError, match=r"projection=None for a 5-D latent, the file holds PCA arrays"):
        parse_latent_map(data, {**section, "projection": None}, 5, "map", "rebuild")
    data2, section2 = _map_bytes(codes, None)  # a map written without the PCA arrays, but said to have them
    with pytest.raises(ModelPackageError, match=r"projection='pca' for a 5-D latent, the file has no PCA arrays"):
        parse_latent_map(data2, {**section2, "projection": "pca"}, 5, "map", "rebuild")
    flat = codes[:, :2].copy()
    data3, section3 = _map_bytes(flat, pca_projection(flat))  # a 2-D latent is drawn as it is: no projection
    with pytest.raises(ModelPackageError, match=r"projection='pca' for a 2-D latent"):
        parse_latent_map(data3, section3, 2, "map", "rebuild")


@pytest.mark.slow
@needs_fashion
def test_an_older_map_without_pca_arrays_is_served_with_a_projection_made_on_read(latent8, tmp_path):
    import shutil

    from vae_infer.serve.resources import _read_latent_map

    old = tmp_path / "old"
    shutil.copytree(latent8, old)
    m = read_latent_map(vae_infer.load(old, threads=1))
    save_latent_map(old, m._replace(projection=None))
    lmap = json.loads((old / "model.json").read_text())["latent_map"]
    assert lmap["projection"] is None
    served = _read_latent_map(vae_infer.load(old, threads=1))["projection"]
    want = pca_projection(m.codes)
    np.testing.assert_allclose(served["points"], want.points, atol=1e-6)
    np.testing.assert_allclose(served["components"], m.projection.components, atol=1e-5)
