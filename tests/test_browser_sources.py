"""The explorer page's own files (not node_modules) hold none of the sinks that turn text into markup or code, no
stored token, and nothing the page's Content-Security-Policy would refuse (inline scripts, style attributes,
inline event handlers, forms). A static check beside the browser tests, which run the page itself."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

WEB = Path(__file__).resolve().parents[1] / "vae_infer" / "serve" / "web"
PAGE_FILES = sorted([WEB / "index.html", WEB / "style.css", *(WEB / "js").glob("*.js")])
SINKS = ("innerHTML", "outerHTML", "insertAdjacentHTML", "document.write", "eval(", "new Function", "setTimeout(\"",
         "sessionStorage", "localStorage", "window.prompt", "srcdoc")


@pytest.mark.parametrize("path", PAGE_FILES, ids=lambda p: p.name)
def test_no_markup_or_code_sinks_and_no_stored_token(path):
    text = path.read_text()
    assert not [s for s in SINKS if s in text], path


def test_the_page_html_needs_no_unsafe_inline():
    html = (WEB / "index.html").read_text()
    scripts = re.findall(r"<script\b([^>]*)>(.*?)</script>", html, re.S | re.I)
    assert scripts and all("src=" in attrs and not body.strip() for attrs, body in scripts), scripts
    assert not re.search(r"\sstyle\s*=", html, re.I)
    assert not re.search(r"\son[a-z]+\s*=", html, re.I)
    assert not re.search(r"<form\b", html, re.I)
    assert not re.search(r"<style\b", html, re.I)


def test_the_page_loads_the_cpu_only_onnxruntime_web_build():
    decoder = (WEB / "js" / "decoder.js").read_text()
    assert 'ORT_BUILD = "ort.wasm.min.mjs"' in decoder
    assert "ort.min.mjs\"" not in decoder and "jsep" not in decoder.lower()
