"""The explorer page in a real browser: Playwright for Python driving Debian's Chromium against the real server
(`vae-infer serve` in a subprocess on a free loopback port). Set VAE_SAVE_SCREENSHOTS=1 to refresh the
screenshots in docs/images/."""

from __future__ import annotations

import contextlib
import os
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest

from tests.conftest import needs, needs_binary, needs_module, real_data_available
from tests.test_serve import ROOT, SHIPPED, start_server

CHROMIUM = "/usr/bin/chromium"
LAUNCH_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
               "--disable-component-update", "--disable-sync"]
ORT_DIST = ROOT / "vae_infer" / "serve" / "web" / "node_modules" / "onnxruntime-web" / "dist"
SCREENSHOTS = ROOT / "docs" / "images"
TIMEOUT_MS = 30_000

ORT_BUILD = "ort.wasm.min.mjs"  # onnxruntime-web's CPU-only build: the one the page loads (no eval, so CSP-safe)

pytestmark = [pytest.mark.slow, needs_binary("chromium", "chromium"), needs_module("playwright", "dev"),
              needs_module("fastapi", "serve")]
needs_ort = needs((ORT_DIST / ORT_BUILD).is_file(),
                  "onnxruntime-web from npm: make web (npm ci in vae_infer/serve/web)")


@contextlib.contextmanager
def launched_chromium():
    """Debian's Chromium under Playwright (Playwright cannot fetch its own browsers here)."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=LAUNCH_ARGS, headless=True)
        yield b
        b.close()


@pytest.fixture(scope="module")
def server():
    examples = "fashion-mnist" if real_data_available() else "none"
    proc, url = start_server(str(SHIPPED), "--examples", examples)
    yield url
    proc.terminate()
    proc.wait(30)


def open_page(browser, url: str, page=None, path: str = "/"):
    """The page, loaded and ready. (Waits are written as functions: a string expression would be run through
    eval, which the page's Content-Security-Policy refuses.)"""
    page = page or browser.new_page(viewport={"width": 1280, "height": 1500})
    errors: list[str] = []
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.goto(url + path)
    page.wait_for_function("() => window.explorer && (window.explorer.ready || window.explorer.error)",
                           timeout=TIMEOUT_MS)
    assert page.evaluate("window.explorer.error || null") is None
    assert not errors, errors
    return page


def server_decode(url: str, z) -> np.ndarray:
    import httpx

    r = httpx.post(url + "/v1/decode", json={"z": np.asarray(z).tolist()}, timeout=30)
    assert r.status_code == 200, r.text
    return np.asarray(r.json()["x_hat"])


def png_bytes(gray: np.ndarray) -> bytes:
    """An 8-bit grayscale PNG (the format's minimum: IHDR, one IDAT, IEND)."""
    h, w = gray.shape
    raw = b"".join(b"\x00" + gray[i].astype(np.uint8).tobytes() for i in range(h))

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 8, 0, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b""))


def canvas_pixels(page, selector: str) -> np.ndarray:
    data = page.evaluate(f"""() => {{ const c = document.querySelector('{selector}');
        return Array.from(c.getContext('2d').getImageData(0, 0, c.width, c.height).data); }}""")
    return np.asarray(data, dtype=np.uint8)


def screenshot(page, tmp_path: Path, name: str) -> None:
    page.screenshot(path=str(tmp_path / name), full_page=True)
    if os.environ.get("VAE_SAVE_SCREENSHOTS") == "1":
        SCREENSHOTS.mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(SCREENSHOTS / name), full_page=True)
    assert (tmp_path / name).stat().st_size > 10_000


@needs_ort
def test_browser_decode_equals_server_and_hover_changes_the_image(browser, server, tmp_path):
    page = open_page(browser, server)
    mode = page.text_content("#decode-mode")
    assert page.evaluate("window.explorer.decoder.mode") == "browser", mode
    assert "sha256" in mode and "verified against model.json" in mode
    z = [[0.3, -0.7], [1.2, 0.4], [-2.0, 1.5], [0.0, 0.0]]
    got = np.asarray(page.evaluate(f"window.explorer.decoder.decode({z})"))
    want = server_decode(server, z)
    assert got.shape == want.shape == (4, 784)
    np.testing.assert_allclose(got, want, atol=1e-4, rtol=0)

    box = page.locator("#map").bounding_box()
    shown = []
    for fx, fy in ((0.3, 0.3), (0.7, 0.65)):
        before = page.evaluate("window.explorer.hovers")
        page.mouse.move(box["x"] + fx * box["width"], box["y"] + fy * box["height"])
        page.wait_for_function(f"() => window.explorer.hovers > {before}", timeout=TIMEOUT_MS)
        page.wait_for_timeout(100)
        hover = page.evaluate("window.explorer.lastHover")
        np.testing.assert_allclose(hover["row"], server_decode(server, [hover["z"]])[0], atol=1e-4, rtol=0)
        shown.append(canvas_pixels(page, "#hover-image"))
    assert np.abs(shown[0].astype(int) - shown[1].astype(int)).max() > 50  # a different image is on screen
    assert "decoded in the browser" in page.text_content("#hover-time")
    grid = canvas_pixels(page, "#grid")
    assert grid.reshape(-1, 4)[:, 0].std() > 20  # the manifold grid holds decoded images, not a blank canvas
    screenshot(page, tmp_path, "explorer-hover.png")


def test_two_points_draw_three_paths_and_png_upload_shows_a_score(browser, server, tmp_path):
    page = open_page(browser, server)
    box = page.locator("#map").bounding_box()
    for fx, fy in ((0.25, 0.3), (0.75, 0.7)):
        page.mouse.click(box["x"] + fx * box["width"], box["y"] + fy * box["height"])
    page.wait_for_function("() => window.explorer.pathsDrawn === 3", timeout=TIMEOUT_MS)
    methods = page.eval_on_selector_all(".strip[data-method]", "els => els.map(e => e.dataset.method)")
    assert sorted(methods) == ["graph", "linear", "slerp"]
    assert page.eval_on_selector_all(".strip .frames canvas", "els => els.length") == 30
    drawn = page.evaluate("window.explorer.map.paths.map(p => [p.method, p.z.length])")
    assert sorted(drawn) == [["graph", 10], ["linear", 10], ["slerp", 10]]
    assert page.eval_on_selector_all(".strip .error", "els => els.length") == 0

    with np.load(ROOT / "tests" / "fixtures" / "tiny-images.npz") as f:
        image = f["images"][3]
    png = tmp_path / "test-image.png"
    png.write_bytes(png_bytes(image))
    page.set_input_files("#upload", str(png))
    page.wait_for_selector("#upload-score", timeout=TIMEOUT_MS)
    text = page.text_content("#upload-result")
    assert "score (dose)" in text and ("flagged" in text)
    import httpx

    want = httpx.post(server + "/v1/detect", json={"images": [image.reshape(-1).tolist()], "dtype": "uint8"}).json()
    got = page.evaluate("window.explorer.lastResult")
    assert got["score"] == pytest.approx(want["scores"][0], abs=1e-6) and got["flag"] == want["flags"][0]
    assert page.evaluate("Object.keys(window.explorer.map.markers).sort()") == ["A", "B", "image"]
    screenshot(page, tmp_path, "explorer.png")


def test_api_docs_render_from_local_assets(browser, server):
    """/docs shows every route in the browser from the server's own files (this machine has no internet): Swagger UI
    from npm, or a page the server renders from its schema."""
    page = browser.new_page()
    requested: list[str] = []
    page.on("request", lambda r: requested.append(r.url))
    page.goto(server + "/docs")
    page.wait_for_function("() => document.body && document.body.innerText.includes('/v1/interpolate')",
                           timeout=TIMEOUT_MS)
    text = page.inner_text("body")
    for route in ("/v1/encode", "/v1/decode", "/v1/detect", "/v1/interpolate"):
        assert route in text, route
    assert requested and all(u.startswith(server) or u.startswith("data:") for u in requested), requested


def test_without_onnxruntime_web_the_page_decodes_through_the_api(browser, tmp_path):
    empty = tmp_path / "no-ort"
    empty.mkdir()
    proc, url = start_server(str(SHIPPED), "--examples", "none", "--web-assets", str(empty))
    try:
        page = open_page(browser, url)
        assert page.evaluate("window.explorer.decoder.mode") == "api"
        assert page.text_content("#decode-mode") == ("in-browser decoding is off: decoding through the server "
                                                      "(POST /v1/decode)")
        box = page.locator("#map").bounding_box()
        page.mouse.move(box["x"] + box["width"] / 2, box["y"] + box["height"] / 3)
        page.wait_for_function("() => window.explorer.hovers > 0", timeout=TIMEOUT_MS)
        hover = page.evaluate("window.explorer.lastHover")
        np.testing.assert_allclose(hover["row"], server_decode(url, [hover["z"]])[0], atol=1e-6, rtol=0)
        assert "decoded by the server" in page.text_content("#hover-time")
        assert page.request.get(url + "/ort/ort.min.mjs").status == 404
        assert page.request.get(url + "/ort/" + ORT_BUILD).status == 404
    finally:
        proc.terminate()
        proc.wait(30)
