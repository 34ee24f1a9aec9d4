"""The explorer page under the Content-Security-Policy the server is to send with it: normal use (load, in-browser
decoding with onnxruntime-web's CPU-only build, hover, two picks and their paths, an upload) raises no
`securitypolicyviolation` event. The policy is put on the page's response by Playwright (page.route), so the test
holds whether or not this server sends it yet; where it does, the route replaces it with the same policy."""

from __future__ import annotations

import numpy as np
import pytest

from tests.test_browser import (
    ORT_BUILD,
    ROOT,
    SHIPPED,
    TIMEOUT_MS,
    needs_ort,
    open_page,
    png_bytes,
    pytestmark,  # noqa: F401  (slow, and the parts these tests need)
    server_decode,
    start_server,
)

CSP = ("default-src 'none'; script-src 'self' 'wasm-unsafe-eval'; connect-src 'self'; style-src 'self'; "
       "img-src 'self' data:; base-uri 'none'; form-action 'none'; frame-ancestors 'none'; object-src 'none'")
# Installed before any of the page's scripts run (and not itself subject to the page's policy).
RECORD_VIOLATIONS = """
window.__cspViolations = [];
document.addEventListener('securitypolicyviolation', (e) => window.__cspViolations.push({
  directive: e.violatedDirective, blocked: e.blockedURI, sample: e.sample, where: `${e.sourceFile}:${e.lineNumber}`,
}));
"""


@pytest.fixture(scope="module")
def server():
    proc, url = start_server(str(SHIPPED), "--examples", "none")
    yield url
    proc.terminate()
    proc.wait(30)


def page_with_policy(browser, url: str, policy: str = CSP):
    """A page whose document response carries `policy`, and that records every violation of it."""
    page = browser.new_page(viewport={"width": 1280, "height": 1200})
    page.add_init_script(RECORD_VIOLATIONS)

    def with_policy(route):
        response = route.fetch()
        headers = {k: v for k, v in response.headers.items() if k.lower() != "content-security-policy"}
        route.fulfill(response=response, headers={**headers, "content-security-policy": policy})

    page.route(url + "/", with_policy)
    return page


@needs_ort
def test_normal_use_raises_no_policy_violation(browser, server, tmp_path):
    page = page_with_policy(browser, server)
    requested: list[str] = []
    page.on("request", lambda r: requested.append(r.url))
    open_page(browser, server, page)
    assert page.evaluate("window.explorer.decoder.mode") == "browser", page.text_content("#decode-mode")
    assert "verified against model.json" in page.text_content("#decode-mode")
    assert server + "/ort/" + ORT_BUILD in requested, requested
    assert not [u for u in requested if u.endswith("/ort.min.mjs") or ".jsep." in u], requested
    assert page.evaluate("window.explorer.firstView") is not None

    z = [[0.3, -0.7], [-2.0, 1.5]]
    got = np.asarray(page.evaluate(f"window.explorer.decoder.decode({z})"))
    np.testing.assert_allclose(got, server_decode(server, z), atol=1e-4, rtol=0)

    box = page.locator("#map").bounding_box()
    page.mouse.move(box["x"] + 0.4 * box["width"], box["y"] + 0.4 * box["height"])
    page.wait_for_function("() => window.explorer.hovers > 0", timeout=TIMEOUT_MS)
    assert "decoded in the browser" in page.text_content("#hover-time")
    for fx, fy in ((0.25, 0.3), (0.75, 0.7)):
        page.mouse.click(box["x"] + fx * box["width"], box["y"] + fy * box["height"])
    page.wait_for_function("() => window.explorer.pathsDrawn === 3", timeout=TIMEOUT_MS)
    assert page.evaluate("window.explorer.map.paths.length") == 3
    with np.load(ROOT / "tests" / "fixtures" / "tiny-images.npz") as f:
        image = f["images"][3]
    page.set_input_files("#upload", files=[{"name": "shirt.png", "mimeType": "image/png", "buffer": png_bytes(image)}])
    page.wait_for_selector("#upload-score", timeout=TIMEOUT_MS)
    page.mouse.wheel(0, -300)
    page.wait_for_timeout(500)  # the grid redraws after a wheel zoom

    assert page.evaluate("window.__cspViolations") == []

    # the policy is in force and the listener hears it: what the page never does is refused and reported
    assert page.evaluate("""() => { const el = document.createElement('div');
        el.setAttribute('style', 'color: red'); document.body.append(el);
        return getComputedStyle(el).color; }""") != "rgb(255, 0, 0)"
    page.wait_for_function("() => window.__cspViolations.length > 0", timeout=TIMEOUT_MS)
    assert [v["directive"] for v in page.evaluate("window.__cspViolations")] == ["style-src-attr"]
    page.close()
