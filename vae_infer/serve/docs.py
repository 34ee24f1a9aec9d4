"""/docs: the API reference, rendered on the server from the app's own OpenAPI schema (/openapi.json).

It comes with the wheel and needs nothing else: no CDN, no npm package, no script (so its Content-Security-Policy
allows none); every text from the schema is escaped where it enters the HTML. Each route shows its methods, its
summary, the media types of its body and the JSON Schema of each, and its responses; try requests with curl or
the explorer page."""

from __future__ import annotations

import json
from html import escape
from typing import Any

CSS = b"""body{font:15px/1.45 system-ui,sans-serif;margin:0 auto;max-width:60rem;padding:1rem;color:#111}
h1{font-size:1.5rem}h2{font-size:1.1rem;margin:1.6rem 0 .3rem;font-family:ui-monospace,monospace}
.m{display:inline-block;min-width:3.5rem;padding:0 .3rem;margin-right:.4rem;border-radius:3px;color:#fff;
background:#1f5fa8;text-align:center}.m.post{background:#1d6b35}
pre{background:#f3f3f3;padding:.6rem;overflow:auto;font-size:13px;max-height:24rem}
details{margin:.3rem 0}summary{cursor:pointer}code{font-family:ui-monospace,monospace}
"""
SCHEMA_CHARS = 20_000  # of one pretty-printed schema shown in a page (the full schema is at /openapi.json)


def render(schema: dict[str, Any]) -> bytes:
    info = schema.get("info", {})
    parts = ["<!doctype html><html lang='en'><head><meta charset='utf-8'>",
             "<meta name='viewport' content='width=device-width,initial-scale=1'>",
             f"<title>{escape(str(info.get('title', 'API')))} API</title>",
             "<link rel='stylesheet' href='/docs.css'></head><body>",
             f"<h1>{escape(str(info.get('title', '')))} {escape(str(info.get('version', '')))}</h1>",
             f"<p>{escape(str(info.get('description', '')))}</p>",
             "<p>The machine-readable schema: <a href='/openapi.json'>/openapi.json</a>. With a token, send "
             "<code>Authorization: Bearer TOKEN</code>.</p>"]
    components = schema.get("components", {}).get("schemas", {})
    for path, item in schema.get("paths", {}).items():
        for method, op in item.items():
            parts.append(f"<h2><span class='m {escape(method)}'>{escape(method.upper())}</span>{escape(path)}</h2>")
            text = op.get("description") or op.get("summary") or ""
            parts.append(f"<p>{escape(str(text))}</p>")
            for name, media in op.get("requestBody", {}).get("content", {}).items():
                parts.append(_schema_block(f"body: {name}", media.get("schema", {}), components))
            for param in op.get("parameters", []):
                parts.append(f"<p>parameter <code>{escape(str(param.get('name')))}</code> in "
                             f"{escape(str(param.get('in')))}</p>")
            codes = ", ".join(f"{escape(str(code))} {escape(str(r.get('description', '')))}"
                              for code, r in op.get("responses", {}).items())
            parts.append(f"<p>responses: {codes}</p>")
            ok = op.get("responses", {}).get("200", {}).get("content", {}).get("application/json", {})
            if ok.get("schema"):
                parts.append(_schema_block("reply: application/json", ok["schema"], components))
    parts.append("</body></html>")
    return "".join(parts).encode()


def _schema_block(title: str, schema: dict[str, Any], components: dict[str, Any]) -> str:
    ref = schema.get("$ref", "")
    shown = components.get(ref.rsplit("/", 1)[-1], schema) if ref else schema
    text = json.dumps(shown, indent=2)
    if len(text) > SCHEMA_CHARS:
        text = text[:SCHEMA_CHARS] + "\n... (see /openapi.json)"
    return f"<details><summary>{escape(title)}</summary><pre>{escape(text)}</pre></details>"


def add_routes(app) -> None:
    from fastapi.responses import Response

    rendered: list[bytes] = []  # once: the schema does not change while the server runs

    @app.get("/docs", include_in_schema=False)
    async def docs():
        if not rendered:
            rendered.append(render(app.openapi()))
        return Response(rendered[0], media_type="text/html; charset=utf-8")

    @app.get("/docs.css", include_in_schema=False)
    async def docs_css():
        return Response(CSS, media_type="text/css; charset=utf-8")
