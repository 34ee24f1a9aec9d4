"""The serve command: the model over HTTP and the explorer page (needs the `serve` extra)."""

from __future__ import annotations

from pathlib import Path

import click

from ..errors import InputError
from .base import main


@main.command()
@click.argument("model", type=click.Path(path_type=Path))
@click.option("--host", default="127.0.0.1", show_default=True,
              help="Address to bind. Anything but loopback needs --token or --insecure.")
@click.option("--port", type=click.IntRange(0, 65535), default=8000, show_default=True, help="0: any free port.")
@click.option("--token", envvar="VAE_SERVE_TOKEN", default=None, metavar="TOKEN",
              help="Require the token on every request but health checks, the page's files and /docs: "
                   "`Authorization: Bearer TOKEN`, or the cookie of POST /v1/login (or set VAE_SERVE_TOKEN). The "
                   "page's address is printed as http://HOST:PORT/#token=TOKEN.")
@click.option("--allowed-host", "allowed_hosts", multiple=True, metavar="NAME",
              help="A Host name clients use to reach the server, besides the loopback names and the bound "
                   "address (repeatable; needed with --host 0.0.0.0 or ::). Other Host headers get 400.")
@click.option("--cors-origin", "cors_origins", multiple=True, metavar="ORIGIN",
              help="An origin (scheme://host:port) whose web pages may call the API (repeatable). Pages of any "
                   "other origin are refused (403).")
@click.option("--insecure", is_flag=True, help="Allow a non-loopback --host without a token (trusted networks only).")
@click.option("--web-assets", type=click.Path(path_type=Path, file_okay=False), default=None, metavar="DIR",
              help="An installed onnxruntime-web for decoding in the browser: a folder where `npm install "
                   "--no-save onnxruntime-web@1.30.0` ran (or its dist/ folder). Without one the page decodes "
                   "through the API.")
@click.option("--max-body-bytes", type=click.IntRange(min=1), default=16 * 1024 * 1024, show_default=True,
              help="Largest request body; larger ones get 413.")
@click.option("--max-json-bytes", type=click.IntRange(min=1), default=1024 * 1024, show_default=True,
              help="Largest JSON body (parsed while the server waits, about 10 ms per MiB); send larger batches as "
                   "application/x-npy.")
@click.option("--header-timeout", "header_timeout_s", type=click.FloatRange(min=0, min_open=True), default=10.0,
              show_default=True, help="Seconds a client may take to send a request's headers.")
@click.option("--body-timeout", "body_timeout_s", type=click.FloatRange(min=0, min_open=True), default=30.0,
              show_default=True, help="Seconds a client may take to send a request's body.")
@click.option("--keep-alive", "keep_alive_s", type=click.FloatRange(min=0, min_open=True), default=5.0,
              show_default=True, help="Seconds an idle connection stays open.")
@click.option("--max-connections", type=click.IntRange(min=1), default=256, show_default=True,
              help="Open connections; more are closed at once.")
@click.option("--max-rows", type=click.IntRange(min=1), default=4096, show_default=True,
              help="Most images or codes per request; more get 413.")
@click.option("--max-in-flight", type=click.IntRange(min=1), default=64, show_default=True,
              help="Requests admitted at once; more get 503 with Retry-After.")
@click.option("--timeout", "timeout_s", type=click.FloatRange(min=0, min_open=True), default=30.0, show_default=True,
              help="Seconds a request may take before it gets 503 (its computation still finishes).")
@click.option("--compute-threads", type=click.IntRange(min=0), default=0, show_default=True,
              help="Threads running model calls side by side; 0: the cores this process may use.")
@click.option("--threads", type=click.IntRange(min=1), default=1, show_default=True,
              help="onnxruntime intra-op threads per call.")
@click.option("--inline-rows", type=click.IntRange(min=0), default=8, show_default=True,
              help="encode/decode/reconstruct requests of at most this many rows run on the event loop (faster "
                   "than a hand-off to a compute thread); 0: every call on the compute threads.")
@click.option("--drain", "drain_s", type=click.FloatRange(min=0), default=0.0, show_default=True,
              help="On SIGTERM, seconds to keep serving with /readyz false before closing.")
@click.option("--examples", default="fashion-mnist", show_default=True, metavar="DATA",
              help="Test images the page offers (a data set: name, IDX folder, .npy/.npz); 'none' for none.")
@click.option("--log-level", type=click.Choice(["critical", "error", "warning", "info", "debug"]), default="warning",
              show_default=True)
def serve(model: Path, host: str, port: int, token: str | None, allowed_hosts: tuple[str, ...],
          cors_origins: tuple[str, ...], insecure: bool, web_assets: Path | None, max_body_bytes: int,
          max_json_bytes: int, header_timeout_s: float, body_timeout_s: float, keep_alive_s: float,
          max_connections: int, max_rows: int, max_in_flight: int, timeout_s: float, compute_threads: int,
          threads: int, inline_rows: int, drain_s: float, examples: str, log_level: str) -> None:
    """Serve MODEL over HTTP: the JSON/.npy API (/v1/..., /docs), health checks, /metrics and the
    latent-space explorer page at /.

    Binds to 127.0.0.1 unless told otherwise. Stops on Ctrl-C or SIGTERM: /readyz turns false, requests in
    flight finish."""
    from ..serve import ServeConfig, create_app, require_extra
    from ..serve.config import is_wildcard
    from ..serve.resources import NPM_COMMAND

    require_extra()
    if web_assets is not None and not web_assets.is_dir():
        raise InputError(f"--web-assets {web_assets}: no such folder")
    config = ServeConfig(host=host, port=port, token=token, insecure=insecure, max_body_bytes=max_body_bytes,
                         allowed_hosts=allowed_hosts, cors_origins=cors_origins, max_json_bytes=max_json_bytes,
                         header_timeout_s=header_timeout_s, body_timeout_s=body_timeout_s, keep_alive_s=keep_alive_s,
                         max_connections=max_connections,
                         max_rows=max_rows, max_in_flight=max_in_flight, request_timeout_s=timeout_s,
                         compute_threads=compute_threads, threads=threads, inline_rows=inline_rows,
                         web_assets=web_assets,
                         examples=None if examples.lower() == "none" else examples)
    app = create_app(model, config)  # a missing or damaged package is reported before the port is taken
    from ..serve.server import bind, run

    sock = bind(config)  # a busy port: one line naming host:port and --port
    bound = sock.getsockname()[1]
    state = app.state.vae
    name = host if not is_wildcard(host) else allowed_hosts[0]
    shown = f"[{name}]" if ":" in name else name
    browser = "in the browser (onnxruntime-web)" if state.ort_dist is not None else \
        f"through the API (for in-browser decoding: `{NPM_COMMAND}` in a folder DIR, then --web-assets DIR)"
    page = f"http://{shown}:{bound}/" + (f"#token={token}" if token is not None else "")
    click.echo(f"serving {state.model.manifest.name} on http://{shown}:{bound}/  (API docs: /docs; "
               f"the page decodes {browser}; Ctrl-C stops)", err=True)
    if token is not None:
        click.echo(f"the page, logged in: {page}", err=True)
    run(app, config, drain_s=drain_s, log_level=log_level, sock=sock)
