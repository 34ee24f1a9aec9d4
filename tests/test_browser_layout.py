"""The explorer page at a phone's, a laptop's and a desktop's width, in Chromium against the real server: no
horizontal overflow, the map's labels (canvas text, whose rectangles the page exposes as window.__vaeLabelRects)
never overlap, axis ticks stay 1/2/5 x 10^k steps at least 40 px apart through wheel zooms, text contrast passes
axe-core's WCAG AA rule, the first view shows a decoded image, and a new pick clears the old pair's strips.
Screenshots go to pytest's tmp_path (their paths are printed: run with -s to see them)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from tests.conftest import needs, real_data_available
from tests.test_browser import (
    ROOT,
    SHIPPED,
    TIMEOUT_MS,
    canvas_pixels,
    needs_ort,
    open_page,
    png_bytes,
    pytestmark,  # noqa: F401  (slow, and the parts these tests need)
    start_server,
)

WIDTHS = (360, 1024, 1920)
MIN_TICK_PX = 40
AXE = ROOT / "tests" / "web" / "node_modules" / "axe-core" / "axe.min.js"  # a test tool, never served
needs_axe = needs(AXE.is_file(), "axe-core from npm: make web (npm ci in tests/web)")


@pytest.fixture(scope="module")
def server():
    proc, url = start_server(str(SHIPPED), "--examples", "fashion-mnist" if real_data_available() else "none")
    yield url
    proc.terminate()
    proc.wait(30)


def page_at(browser, url: str, width: int, height: int = 900):
    # bypass_csp: axe-core goes in as an inline script, which the page's own policy (rightly) refuses
    context = browser.new_context(viewport={"width": width, "height": height}, bypass_csp=True)
    return open_page(browser, url, context.new_page())


def overlaps(rects: list[dict]) -> list[tuple[str, str]]:
    found = []
    for i, a in enumerate(rects):
        for b in rects[i + 1:]:
            apart_x = a["x"] + a["w"] <= b["x"] or b["x"] + b["w"] <= a["x"]
            apart_y = a["y"] + a["h"] <= b["y"] or b["y"] + b["h"] <= a["y"]
            if not (apart_x or apart_y):
                found.append((a["text"], b["text"]))
    return found


def check_labels(page) -> dict:
    """The drawn labels: inside the canvas, none over another; ticks a 1/2/5 step at least 40 px apart."""
    rects = page.evaluate("window.__vaeLabelRects")
    size = page.evaluate("[window.explorer.map.width, window.explorer.map.height]")
    assert rects, "no labels drawn"
    assert not overlaps(rects), overlaps(rects)
    for r in rects:
        assert r["x"] >= 0 and r["y"] >= 0 and r["x"] + r["w"] <= size[0] and r["y"] + r["h"] <= size[1], (r, size)
    ticks = page.evaluate("window.explorer.map.ticks")
    mantissa = ticks["step"] / 10 ** math.floor(math.log10(ticks["step"]) + 1e-9)
    assert min(abs(mantissa - m) for m in (1, 2, 5)) < 1e-6, ticks
    assert ticks["px"] >= MIN_TICK_PX, ticks
    for kind, axis in (("tick-x", "x"), ("tick-y", "y")):
        drawn = sorted(r[axis] for r in rects if r["kind"] == kind)
        assert len(drawn) >= 2, (kind, rects)
        assert min(np.diff(drawn)) >= MIN_TICK_PX - 0.5, (kind, drawn)
    return {"rects": rects, "ticks": ticks}


def map_point(page, fx: float, fy: float) -> tuple[float, float]:
    box = page.locator("#map").bounding_box()
    return box["x"] + fx * box["width"], box["y"] + fy * box["height"]


def marker_on_screen(page, name: str) -> tuple[float, float]:
    """Where marker `name` is drawn, in page coordinates (the canvas has a 1 px border)."""
    box = page.locator("#map").bounding_box()
    x, y = page.evaluate(f"window.explorer.map.toScreen(window.explorer.map.markers[{name!r}].z)")
    return box["x"] + 1 + x, box["y"] + 1 + y


def no_horizontal_overflow(page) -> None:
    scroll, inner = page.evaluate("[document.scrollingElement.scrollWidth, window.innerWidth]")
    assert scroll <= inner, f"the page is {scroll} px wide in a {inner} px window"
    drop = page.locator("#drop").bounding_box()
    field = page.locator("#upload").bounding_box()
    assert drop["x"] >= 0 and drop["x"] + drop["width"] <= inner, drop
    assert drop["x"] <= field["x"] and field["x"] + field["width"] <= drop["x"] + drop["width"], (field, drop)


def contrast_violations(page) -> list:
    if not page.evaluate("typeof window.axe !== 'undefined'"):
        page.add_script_tag(path=str(AXE))
    result = page.evaluate("axe.run(document, {runOnly: {type: 'rule', values: ['color-contrast']}})")
    assert result["passes"], "axe-core's color-contrast rule checked nothing"
    return [(n["target"], n["failureSummary"]) for v in result["violations"] for n in v["nodes"]]


@needs_ort
@needs_axe
@pytest.mark.parametrize("width", WIDTHS)
def test_layout_labels_ticks_and_contrast_at_width(browser, server, tmp_path, width):
    page = page_at(browser, server, width)
    no_horizontal_overflow(page)
    # the first view: the map's centre already decoded, before any hover
    first = page.evaluate("window.explorer.firstView")
    assert first and len(first["row"]) == 784
    assert page.evaluate("window.explorer.hovers") == 0
    assert page.text_content("#hover-z").startswith("z = (")
    assert canvas_pixels(page, "#hover-image").reshape(-1, 4)[:, 0].std() > 20  # an image, not a black box
    assert "the map's centre" in page.text_content("#hover-time")

    # markers that crowd each other: an uploaded image, pick A on it, pick B 10 px away
    with np.load(ROOT / "tests" / "fixtures" / "tiny-images.npz") as f:
        image = f["images"][3]
    page.set_input_files("#upload", files=[{"name": "a-coat.png", "mimeType": "image/png", "buffer": png_bytes(image)}])
    page.wait_for_selector("#upload-score", timeout=TIMEOUT_MS)
    x, y = marker_on_screen(page, "image")
    page.mouse.click(x, y)
    page.mouse.click(x + 10, y + 4)
    page.wait_for_function("() => window.explorer.pathsDrawn === 3", timeout=TIMEOUT_MS)
    drawn = check_labels(page)
    markers = [r["text"] for r in drawn["rects"] if r["kind"] == "marker"]
    assert len(markers) == 2 and "B" in markers, markers  # "A · a-coat.png" once (image and A share a spot), and "B"
    assert any("A" in m and "a-coat.png" in m for m in markers), markers
    no_horizontal_overflow(page)
    shot = tmp_path / f"explorer-{width}.png"
    page.screenshot(path=str(shot), full_page=True)
    print(f"screenshot: {shot}")
    assert shot.stat().st_size > 10_000

    # wheel zooms, in far and back out past the start: ticks and labels stay readable at every step
    page.mouse.move(*map_point(page, 0.5, 0.5))
    steps = []
    for delta in [-500] * 7 + [500] * 12:
        page.mouse.wheel(0, delta)
        page.wait_for_timeout(60)
        steps.append(check_labels(page)["ticks"]["step"])
    assert min(steps) < steps[0] / 50 and max(steps) > steps[0] * 5, steps  # the zooms did happen
    shot = tmp_path / f"explorer-{width}-zoomed-out.png"
    page.screenshot(path=str(shot))
    print(f"screenshot: {shot}")

    assert contrast_violations(page) == []
    page.context.close()


@needs_axe
def test_warning_error_and_sign_in_text_have_enough_contrast(browser, server, tmp_path):
    """The states a plain load does not show: the no-onnxruntime warning, an error, the sign-in field."""
    page = page_at(browser, server, 1024)
    page.evaluate("""() => {
        const mode = document.getElementById('decode-mode');
        mode.className = 'warn';
        mode.textContent = 'in-browser decoding is off: decoding through the server (POST /v1/decode)';
        const status = document.getElementById('status');
        status.className = 'error';
        status.textContent = 'an error from the server';
        document.getElementById('login').hidden = false;
        const note = document.getElementById('login-message');
        note.className = 'error';
        note.textContent = 'That token is not this server\\'s; try again.';
        const p = document.createElement('p');
        p.className = 'warn';
        p.textContent = 'a warning in a panel';
        document.getElementById('side-panel').append(p);
    }""")
    assert contrast_violations(page) == []
    shot = tmp_path / "explorer-states.png"
    page.screenshot(path=str(shot))
    print(f"screenshot: {shot}")
    page.context.close()


def test_a_new_pick_clears_the_old_pair_and_its_strips(browser, server):
    page = page_at(browser, server, 1024)
    for fx, fy in ((0.3, 0.3), (0.7, 0.6)):
        page.mouse.click(*map_point(page, fx, fy))
    page.wait_for_function("() => window.explorer.pathsDrawn === 3", timeout=TIMEOUT_MS)
    assert page.eval_on_selector_all(".strip", "els => els.length") == 3
    page.mouse.click(*map_point(page, 0.5, 0.4))  # a third pick: a new A, the old strips and lines gone at once
    assert page.eval_on_selector_all(".strip", "els => els.length") == 0
    assert page.evaluate("window.explorer.map.paths.length") == 0
    assert page.evaluate("Object.keys(window.explorer.map.markers)") == ["A"]
    assert "A is picked" in page.text_content("#paths")

    # a pair replaced while its paths are still on the way: the late answer draws nothing
    page.mouse.click(*map_point(page, 0.6, 0.7))
    page.mouse.click(*map_point(page, 0.2, 0.8))
    page.wait_for_load_state("networkidle")
    page.wait_for_timeout(300)
    assert page.eval_on_selector_all(".strip", "els => els.length") == 0
    assert page.evaluate("window.explorer.map.paths.length") == 0
    page.mouse.click(*map_point(page, 0.8, 0.2))
    page.wait_for_function("() => window.explorer.pathsDrawn === 3", timeout=TIMEOUT_MS)
    assert page.eval_on_selector_all(".strip", "els => els.length") == 3
    page.context.close()


def test_no_horizontal_overflow_at_any_width_from_360_to_2560(browser, server):
    """One page resized through the layout's steps (one column, two from 900 px, three from 1600 px): the page
    never scrolls sideways, the drop box is whole, and the map stays square and fully on screen."""
    page = page_at(browser, server, 360)
    for width in (360, 414, 600, 768, 899, 900, 950, 1280, 1599, 1600, 2000, 2560):
        page.set_viewport_size({"width": width, "height": 900})
        page.wait_for_timeout(100)  # the map follows its new box (ResizeObserver)
        no_horizontal_overflow(page)
        box = page.locator("#map").bounding_box()
        assert box["x"] >= 0 and box["x"] + box["width"] <= width, (width, box)
        assert abs(box["width"] - box["height"]) < 1, (width, box)
        size = page.evaluate("[window.explorer.map.width, window.explorer.map.height]")
        assert abs(size[0] - (box["width"] - 2)) < 1, (width, size, box)  # drawn at its size on screen (1 px border)
        check_labels(page)
    page.context.close()
