"""Hostile text on the explorer page: a model package whose name, latent-map class names and map source hold HTML
and script (tests/hostile_corpus.py), served for real and opened in Chromium, and an upload whose file name is
HTML. Nothing runs (the canary attribute a payload would set stays unset, no dialog opens, no element or event
handler comes from the text) and the text is shown literally where it belongs."""

from __future__ import annotations

import json
import os
import shutil

import numpy as np
import pytest

from tests.hostile_corpus import CANARY, HOSTILE_TEXT
from tests.test_browser import (
    ROOT,
    SHIPPED,
    TIMEOUT_MS,
    open_page,
    png_bytes,
    pytestmark,  # noqa: F401  (slow, and the parts these tests need)
    start_server,
)

HTML = {label: text for label, text in HOSTILE_TEXT if label.startswith("html-")}
# Ten class names (the map's labels are 0..9): every HTML entry, then other families that stay valid names.
OTHERS = ("non-ascii", "format-string", "c-comment-close", "c-string-break", "bidi-override")
CLASS_NAMES = [*HTML.values(), *(dict(HOSTILE_TEXT)[label] for label in OTHERS)]
CANARY_ATTRIBUTE = "data-" + CANARY
# Markup that the text would have made, had it been parsed: elements, or event-handler attributes anywhere.
PARSED_MARKUP = """() => [...document.querySelectorAll('body img, body script, body svg, body iframe, body a')]
    .map((e) => e.tagName)
    .concat([...document.querySelectorAll('*')].flatMap((e) => [...e.attributes]
      .filter((a) => a.name.startsWith('on') || a.value.startsWith('javascript:'))
      .map((a) => `${e.tagName} ${a.name}`)))"""


def hostile_package(dest, name: str):
    """The shipped package with `name` as its name and hostile class names and map source in model.json (the
    other files hard-linked: they are unchanged, so their sha256 entries still hold)."""
    dest.mkdir()
    for f in SHIPPED.iterdir():
        if f.name == "model.json":
            continue
        try:
            os.link(f, dest / f.name)
        except OSError:  # another file system
            shutil.copy(f, dest / f.name)
    manifest = json.loads((SHIPPED / "model.json").read_text())
    manifest["name"] = name
    assert len(manifest["latent_map"]["class_names"]) == len(CLASS_NAMES)
    manifest["latent_map"]["class_names"] = CLASS_NAMES
    manifest["latent_map"]["source"] = HTML["html-element"]
    (dest / "model.json").write_text(json.dumps(manifest, indent=1))
    return dest


def nothing_ran(page, dialogs: list[str]) -> None:
    assert page.evaluate(f"document.documentElement.hasAttribute({CANARY_ATTRIBUTE!r})") is False
    assert dialogs == []
    assert page.evaluate(PARSED_MARKUP) == []


@pytest.mark.parametrize("label", sorted(HTML))
def test_hostile_names_in_a_package_and_a_file_name_are_shown_as_text(browser, tmp_path, label):
    text = HTML[label]
    pkg = hostile_package(tmp_path / "pkg", text)
    no_ort = tmp_path / "no-ort"  # decoding through the server: this test is about text, and starts faster
    no_ort.mkdir()
    proc, url = start_server(str(pkg), "--examples", "none", "--web-assets", str(no_ort))
    try:
        page = browser.new_page(viewport={"width": 1280, "height": 1200})
        dialogs: list[str] = []
        page.on("dialog", lambda d: (dialogs.append(d.message), d.dismiss()))
        open_page(browser, url, page)

        assert text in page.text_content("#model-name")
        names = page.eval_on_selector_all("#legend .legend-name", "els => els.map((e) => e.textContent)")
        assert names == CLASS_NAMES
        assert page.text_content("#map-source")  # the source text (the server may replace a path) is text too

        with np.load(ROOT / "tests" / "fixtures" / "tiny-images.npz") as f:
            image = f["images"][5]
        page.set_input_files("#upload", files=[{"name": text, "mimeType": "image/png", "buffer": png_bytes(image)}])
        page.wait_for_selector("#upload-score", timeout=TIMEOUT_MS)
        assert page.text_content("#upload-result .title") == text
        assert page.evaluate("window.explorer.map.markers.image.label") == text

        # give handlers a chance to fire: hover the places the text went, wait for image errors and timers
        for selector in ("#model-name", "#legend", "#map-source", "#upload-result .title"):
            page.hover(selector)
        page.wait_for_timeout(500)
        nothing_ran(page, dialogs)
        # a file that is no image, under the same name: refused beside the upload, the name shown as text
        page.set_input_files("#upload", files=[{"name": text, "mimeType": "image/png", "buffer": b"not a PNG"}])
        page.wait_for_selector("#upload-result .error", timeout=TIMEOUT_MS)
        assert page.text_content("#upload-result .error").startswith(text + " is not an image this browser can read")
        assert page.evaluate("window.explorer.error || null") is None
        page.hover("#upload-result")
        page.wait_for_timeout(200)
        nothing_ran(page, dialogs)
        page.close()
    finally:
        proc.terminate()
        proc.wait(30)
