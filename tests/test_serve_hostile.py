"""The server on an open network, through a real `vae-infer serve` (uvicorn) on a loopback port: who may call
(Host, Origin, Sec-Fetch-Site, media types, CORS), the token as a cookie, the security headers, pathological
bodies while another client's /healthz keeps answering, metrics that junk cannot grow, dropped uploads, slow and
idle connections, and no server path in any reply."""

from __future__ import annotations

import io
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from tests.conftest import needs_module

pytestmark = [needs_module("fastapi", "serve"), needs_module("simdjson", "serve"), pytest.mark.slow]

ROOT = Path(__file__).resolve().parents[1]
TOKEN = "t0ken-for-tests"
JSON = {"content-type": "application/json"}
NPY = {"content-type": "application/x-npy"}
HEADER_TIMEOUT, BODY_TIMEOUT = 1.0, 2.0
CORS_ORIGIN = "https://app.example:8443"
SECRET_DIR = "private-folder-4711"  # a folder name that must never show in a reply


class Server:
    """`vae-infer serve` in a subprocess; its stderr kept, to check that nothing was logged as a failure."""

    def __init__(self, model: Path, *args: str) -> None:
        cmd = [sys.executable, "-m", "vae_infer", "serve", str(model), "--port", "0", "--log-level", "info",
               "--header-timeout", str(HEADER_TIMEOUT), "--body-timeout", str(BODY_TIMEOUT), "--keep-alive", "1",
               *args]
        self.proc = subprocess.Popen(cmd, cwd=ROOT, stderr=subprocess.PIPE, text=True, env=dict(os.environ))
        self.log: list[str] = []
        line = self.proc.stderr.readline()
        match = re.search(r"on http://127\.0\.0\.1:(\d+)/", line)
        if not match:
            self.proc.kill()
            raise AssertionError(f"server did not start: {line}{self.proc.stderr.read()}")
        self.log.append(line)
        self.port = int(match.group(1))
        self.url = f"http://127.0.0.1:{self.port}"
        threading.Thread(target=self._drain, daemon=True).start()
        deadline = time.monotonic() + 30
        while self.status("/readyz") != 200:
            assert time.monotonic() < deadline, "server not ready"
            time.sleep(0.05)

    def _drain(self) -> None:
        for line in self.proc.stderr:
            self.log.append(line)

    def status(self, path: str) -> int:
        import httpx

        try:
            return httpx.get(self.url + path, timeout=5).status_code
        except httpx.TransportError:
            return -1

    def request(self, method: str, path: str, **kw):
        import httpx

        kw.setdefault("timeout", 30)
        return httpx.request(method, self.url + path, **kw)

    def metrics(self, **kw) -> str:
        r = self.request("GET", "/metrics", **kw)
        assert r.status_code == 200, r.text
        return r.text

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


@pytest.fixture(scope="module")
def package(tmp_path_factory, tiny_package) -> Path:
    """The tiny package in a folder whose name must not leak, with an examples file beside it."""
    root = tmp_path_factory.mktemp(SECRET_DIR)
    dest = root / "pkg"
    shutil.copytree(tiny_package, dest)
    with np.load(ROOT / "tests" / "fixtures" / "tiny-images.npz") as z:
        np.save(root / "examples.npy", z["images"][:8])
    return dest


@pytest.fixture(scope="module")
def open_server(package):
    server = Server(package, "--examples", str(package.parent / "examples.npy"), "--max-connections", "24")
    yield server
    server.stop()


@pytest.fixture(scope="module")
def token_server(package):
    server = Server(package, "--examples", "none", "--token", TOKEN, "--cors-origin", CORS_ORIGIN)
    yield server
    server.stop()


def error(r, status: int, kind: str, *fragments: str) -> dict:
    assert r.status_code == status, (r.status_code, r.text)
    body = r.json()["error"]
    assert body["type"] == kind, body
    for fragment in fragments:
        assert fragment in body["message"], (fragment, body)
    return body


def npy(arr) -> bytes:
    buf = io.BytesIO()
    np.save(buf, arr)
    return buf.getvalue()


# -- who may call ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("host", ["localhost", "LOCALHOST:1234", "127.0.0.1", "127.0.0.1:80", "[::1]:8000", "[::1]",
                                  "localhost.", "localhost.:99"])
def test_loopback_host_names_are_allowed(open_server, host):
    assert open_server.request("GET", "/healthz", headers={"host": host}).status_code == 200


@pytest.mark.parametrize("host", ["attacker.example:8000", "attacker.example", "localhost.attacker.example",
                                  "127.0.0.1.nip.io", "[::2]", "::1", "127.0.0.2", "localhost:80@evil", ""])
def test_foreign_host_is_refused_before_routing(open_server, host):
    """DNS rebinding: a page of attacker.example resolved to 127.0.0.1 sends its own name as Host."""
    for path in ("/v1/files/decoder.onnx", "/v1/info", "/healthz", "/no/such/path"):
        r = open_server.request("GET", path, headers={"host": host})
        error(r, 400, "bad_host", "--allowed-host")
        assert b"onnx" not in r.content[:4]


@pytest.mark.parametrize("headers", [{"origin": "http://attacker.example"}, {"origin": "null"},
                                     {"origin": "http://localhost:1"}, {"sec-fetch-site": "cross-site"},
                                     {"sec-fetch-site": "same-site"},
                                     {"sec-fetch-site": "cross-site", "sec-fetch-mode": "navigate"}])
def test_pages_of_other_origins_are_refused(open_server, headers):
    r = open_server.request("POST", "/v1/sample", json={"n": 1, "seed": 0}, headers=headers)
    error(r, 403, "forbidden_origin", "--cors-origin")
    error(open_server.request("GET", "/v1/info", headers=headers), 403, "forbidden_origin")


def test_own_origin_and_plain_clients_pass(open_server):
    own = {"origin": open_server.url, "sec-fetch-site": "same-origin"}
    for headers in ({}, own, {"sec-fetch-site": "none"}):
        r = open_server.request("POST", "/v1/sample", json={"n": 2, "seed": 1}, headers=headers)
        assert r.status_code == 200 and len(r.json()["x_hat"]) == 2, r.text
    # a link to the page followed from another site loads the page (it holds no data; the API stays closed)
    nav = {"sec-fetch-site": "cross-site", "sec-fetch-mode": "navigate", "sec-fetch-dest": "document"}
    assert open_server.request("GET", "/", headers=nav).status_code == 200
    error(open_server.request("GET", "/v1/info", headers=nav), 403, "forbidden_origin")


@pytest.mark.parametrize("content_type", ["text/plain", "application/x-www-form-urlencoded",
                                          "multipart/form-data; boundary=x", "application/jsonx", None])
def test_bodies_of_undocumented_media_types_get_415(open_server, content_type):
    headers = {} if content_type is None else {"content-type": content_type}
    r = open_server.request("POST", "/v1/sample", content=b'{"n": 1}', headers=headers)
    error(r, 415, "unsupported_media_type", "application/json")


def test_documented_media_types_with_parameters_pass(open_server, tiny_images):
    r = open_server.request("POST", "/v1/sample", content=b'{"n": 1}',
                            headers={"content-type": "Application/JSON; charset=utf-8"})
    assert r.status_code == 200 and len(r.json()["x_hat"]) == 1
    r = open_server.request("POST", "/v1/encode", content=npy(tiny_images[:2]), headers=NPY)
    assert r.status_code == 200 and r.headers["content-type"] == "application/x-npz"
    error(open_server.request("POST", "/v1/sample", content=npy(np.zeros(1)), headers=NPY), 415,
          "unsupported_media_type", "takes application/json;")


def test_cors_origin_gets_cors_headers_and_preflight(token_server):
    pre = token_server.request("OPTIONS", "/v1/decode", headers={
        "origin": CORS_ORIGIN, "access-control-request-method": "POST", "sec-fetch-site": "cross-site",
        "access-control-request-headers": "authorization,content-type"})
    assert pre.status_code == 200, pre.text
    assert pre.headers["access-control-allow-origin"] == CORS_ORIGIN
    assert "POST" in pre.headers["access-control-allow-methods"]
    assert "authorization" in pre.headers["access-control-allow-headers"].lower()
    r = token_server.request("POST", "/v1/decode", json={"z": [[0.0, 0.0]]}, headers={
        "origin": CORS_ORIGIN, "sec-fetch-site": "cross-site", "authorization": f"Bearer {TOKEN}"})
    assert r.status_code == 200 and r.headers["access-control-allow-origin"] == CORS_ORIGIN
    other = token_server.request("OPTIONS", "/v1/decode", headers={
        "origin": "https://other.example", "access-control-request-method": "POST"})
    error(other, 403, "forbidden_origin")
    assert "access-control-allow-origin" not in other.headers


# -- the token: bearer or the login cookie -----------------------------------------------------------------------


def test_login_cookie_flow(token_server):
    import httpx

    assert "#token=" + TOKEN in "".join(token_server.log[:2])  # the page's address, the token in its fragment
    error(token_server.request("GET", "/v1/info"), 401, "unauthorized", "no Authorization header", "/v1/login")
    error(token_server.request("POST", "/v1/login", json={"token": "wrong"}), 401, "unauthorized", "wrong token")
    error(token_server.request("POST", "/v1/login", json={"token": 7}), 422, "schema", "token")
    error(token_server.request("POST", "/v1/login", content=json.dumps({"token": TOKEN}),
                               headers={"content-type": "text/plain"}), 415, "unsupported_media_type")
    error(token_server.request("POST", "/v1/login", json={"token": TOKEN},
                               headers={"origin": "http://attacker.example"}), 403, "forbidden_origin")
    r = token_server.request("POST", "/v1/login", json={"token": TOKEN})
    assert r.status_code == 204 and r.content == b""
    assert r.headers["set-cookie"] == f"vae_infer_token={TOKEN}; HttpOnly; SameSite=Strict; Path=/"
    with httpx.Client(base_url=token_server.url) as browser:
        browser.cookies.set("vae_infer_token", TOKEN)
        assert browser.get("/v1/info").json()["auth"] is True
        r = browser.post("/v1/decode", json={"z": [[0.5, -0.5]]})
        assert r.status_code == 200 and len(r.json()["x_hat"][0]) == 784
        out = browser.post("/v1/logout")
        assert out.status_code == 204
        assert out.headers["set-cookie"] == "vae_infer_token=; Max-Age=0; HttpOnly; SameSite=Strict; Path=/"
    error(token_server.request("GET", "/v1/info", headers={"cookie": "vae_infer_token=wrong"}), 401, "unauthorized",
          "wrong token")
    bearer = token_server.request("GET", "/v1/info", headers={"authorization": f"Bearer {TOKEN}"})
    assert bearer.status_code == 200 and bearer.json()["auth"] is True
    for path in ("/healthz", "/readyz", "/", "/docs", "/web/js/main.js", "/openapi.json"):
        assert token_server.request("GET", path).status_code == 200, path


# -- headers -------------------------------------------------------------------------------------------------------

PAGE_CSP = ("default-src 'none'; script-src 'self' 'wasm-unsafe-eval'; connect-src 'self'; style-src 'self'; "
            "img-src 'self' data:; base-uri 'none'; form-action 'none'; frame-ancestors 'none'; object-src 'none'")


def test_security_headers(open_server):
    for path, status in (("/v1/info", 200), ("/healthz", 200), ("/metrics", 200), ("/nope", 404), ("/", 200),
                         ("/web/js/main.js", 200), ("/docs", 200), ("/openapi.json", 200)):
        r = open_server.request("GET", path)
        assert r.status_code == status, path
        assert r.headers["x-content-type-options"] == "nosniff", path
        assert r.headers["referrer-policy"] == "no-referrer", path
        if path in ("/", "/web/js/main.js"):
            assert r.headers["content-security-policy"] == PAGE_CSP
            assert r.headers.get("cache-control") != "no-store"
        elif path == "/docs":
            assert "script-src" not in r.headers["content-security-policy"]
            assert "default-src 'none'" in r.headers["content-security-policy"]
        else:
            assert r.headers["cache-control"] == "no-store", path
    refused = open_server.request("GET", "/v1/info", headers={"host": "evil.example"})
    assert refused.headers["cache-control"] == "no-store" and refused.headers["x-content-type-options"] == "nosniff"


def test_no_server_path_in_any_reply(open_server, package):
    texts = []
    for path in ("/v1/info", "/v1/files/model.json", "/v1/latent-map", "/v1/examples", "/docs", "/openapi.json"):
        r = open_server.request("GET", path)
        assert r.status_code in (200, 409), (path, r.text)
        texts.append(r.text)
    info = open_server.request("GET", "/v1/info").json()
    from vae_infer.package.files import sha256_bytes

    assert info["manifest_sha256"] == sha256_bytes((package / "model.json").read_bytes())
    assert info["examples"] == "examples.npy"
    examples = open_server.request("GET", "/v1/examples").json()
    assert len(examples["images"]) == 8 and "examples.npy" in examples["source"]
    error(open_server.request("GET", "/v1/latent-map"), 409, "model_package", "pkg has no latent_map")
    for text in texts:
        assert SECRET_DIR not in text and str(package) not in text and "/tmp" not in text


# -- pathological bodies: refused, while /healthz keeps answering -------------------------------------------------

MIB = 1024 * 1024


def _families() -> dict[str, tuple[str, bytes, str, int]]:
    """name -> (path, body, content type, expected status)."""
    big = MIB - 64  # just under the JSON cap
    return {
        "strings": ("/v1/decode", b'{"z": [' + b'"a",' * (big // 4 - 4) + b'"a"]}', "json", 422),
        "string rows": ("/v1/decode", b'{"z": [' + b'["0.5",0],' * (big // 10 - 2) + b'["0.5",0]]}', "json", 422),
        "nulls": ("/v1/decode", b'{"z": [' + b"null," * (big // 5 - 4) + b"null]}", "json", 422),
        "booleans": ("/v1/decode", b'{"z": [' + b"[true,false]," * (big // 13 - 2) + b"[true,false]]}", "json", 422),
        "one huge row": ("/v1/decode", b'{"z": [[' + b"0," * (big // 2 - 8) + b"0]]}", "json", 400),
        "ragged": ("/v1/decode", b'{"z": [' + b"[0,0]," * (big // 6 - 4) + b"[0]]}", "json", 400),
        "deep nesting": ("/v1/decode", b'{"z": ' + b"[" * (big // 2 - 8) + b"]" * (big // 2 - 8) + b"}", "json", 400),
        "1e309": ("/v1/decode", b'{"z": [' + b"[1e309,0]," * (big // 10 - 2) + b"[0,0]]}", "json", 400),
        "NaN": ("/v1/decode", b'{"z": [' + b"[NaN,0]," * (big // 8 - 2) + b"[0,0]]}", "json", 400),
        "over the JSON cap": ("/v1/decode", b'{"z": [' + b"[0,0]," * (2 * MIB // 6) + b"[0,0]]}", "json", 413),
        "too many rows": ("/v1/decode", b'{"z": [' + b"[0,0]," * (big // 6 - 4) + b"[0,0]]}", "json", 413),
        "string count": ("/v1/sample", b'{"n": "3"}', "json", 422),
        "boolean seed": ("/v1/sample", b'{"n": 1, "seed": true}', "json", 422),
        "not an object": ("/v1/sample", b"[" * 100_000, "json", 400),
        "npy over the cap": ("/v1/encode", npy(np.zeros((16 * MIB // 784 + 1, 784), np.uint8)), "npy", 413),
        "npy of objects": ("/v1/encode", npy(np.array([{"a": 1}] * 1000, dtype=object)), "npy", 400),
    }


FAMILIES = _families()


@pytest.mark.parametrize("family", list(FAMILIES))
def test_pathological_bodies_are_refused_while_health_answers(open_server, family):
    import httpx

    path, body, kind, status = FAMILIES[family]
    stop = threading.Event()
    health: list[object] = []

    def probe():
        with httpx.Client(timeout=1.0) as c:  # the other client: every answer within 1 s, or it fails
            while not stop.is_set():
                try:
                    health.append(c.get(open_server.url + "/healthz").status_code)
                except httpx.TimeoutException as e:
                    health.append(e)
                time.sleep(0.01)

    prober = threading.Thread(target=probe)
    prober.start()
    try:
        for _ in range(3):  # back to back
            r = open_server.request("POST", path, content=body, headers=NPY if kind == "npy" else JSON)
            assert r.status_code == status, (family, r.status_code, r.text[:300])
            assert r.json()["error"]["message"]
    finally:
        stop.set()
        prober.join()
    assert health and all(h == 200 for h in health), [h for h in health if h != 200][:3]


def test_exact_types_like_the_python_api(open_server):
    cases = [({"z": [["0.5", 0]]}, "z.0.0"), ({"z": [[True, False]]}, "z.0.0"), ({"z": [[0.5, None]]}, "z.0.1")]
    for body, where in cases:
        error(open_server.request("POST", "/v1/decode", json=body), 422, "schema", where, "expected a number")
    error(open_server.request("POST", "/v1/sample", json={"n": "3"}), 422, "schema", "n:")
    error(open_server.request("POST", "/v1/sample", json={"seed": True}), 422, "schema", "seed:")
    error(open_server.request("POST", "/v1/score", json={"images": [[0.5] * 784], "samples": 2.0}), 422, "schema")
    error(open_server.request("POST", "/v1/decode", json={"z": [[[0.5], [0.5]]]}), 400, "input_error", "nested")
    error(open_server.request("POST", "/v1/decode", content=b'{"z": [[0, 0]], "z": [[1, 1]]}', headers=JSON), 422,
          "schema", "twice")
    ok = open_server.request("POST", "/v1/decode", json={"z": [[0, 1], [0.5, -2]]})  # integers are numbers
    assert ok.status_code == 200 and len(ok.json()["x_hat"]) == 2


# -- metrics: a closed set of labels -------------------------------------------------------------------------------


def _series(text: str) -> set[str]:
    return {line.rsplit(" ", 1)[0] for line in text.splitlines() if not line.startswith("#")}


def _junk(server: Server, rng: np.random.Generator, n: int) -> None:
    """Requests no route takes, none with the token: each new name of a method, path or file seen once."""
    import httpx

    with httpx.Client(base_url=server.url, timeout=10) as c:
        for i in range(n):
            word = "".join(rng.choice(list("ABCDEFGHIJKLMNOPQRSTUVWXYZ"), 12))
            kind = i % 5
            if kind == 0:
                c.request(word, "/v1/info")  # a made-up method
            elif kind == 1:
                c.get("/" + word.lower() * 150)  # a long unknown path
            elif kind == 2:
                c.post(f"/v1/{word}", content=b"x" * 10, headers={"content-type": "text/plain"})
            elif kind == 3:
                c.get(f"/web/{word}.js")
            else:
                c.post(f"/v1/files/{word}", content=b"\x93NUMPY", headers={"content-type": "application/x-npy"})


def test_metrics_labels_are_closed(open_server, token_server):
    rng = np.random.default_rng(0)
    for server, auth in ((open_server, {}), (token_server, {"authorization": f"Bearer {TOKEN}"})):
        _junk(server, rng, 100)
        server.metrics(headers=auth)  # so that /metrics itself is in both
        before = server.metrics(headers=auth)
        _junk(server, rng, 2000)
        after = server.metrics(headers=auth)
        assert _series(after) == _series(before)
        assert abs(len(after) - len(before)) < 200  # only the counts grew
        assert 'method="other",endpoint="/v1/info"' in after and 'endpoint="other"' in after
        assert "ABCDEFGH"[:3] not in "".join(re.findall(r'endpoint="([^"]*)"', after))


# -- disconnects and slow clients ----------------------------------------------------------------------------------


def _raw(server: Server) -> socket.socket:
    return socket.create_connection(("127.0.0.1", server.port), timeout=10)


def _read_until_closed(sock: socket.socket, limit_s: float) -> tuple[bytes, float]:
    start, got = time.monotonic(), b""
    sock.settimeout(limit_s)
    try:
        while chunk := sock.recv(65536):
            got += chunk
    except (ConnectionResetError, TimeoutError):
        pass
    return got, time.monotonic() - start


def test_dropped_upload_is_a_499_without_a_traceback(open_server):
    before = open_server.metrics()
    for path, media in (("/v1/encode", b"application/x-npy"), ("/v1/decode", b"application/json")):
        with _raw(open_server) as s:
            s.sendall(b"POST " + path.encode() + b" HTTP/1.1\r\nHost: localhost\r\nContent-Type: " + media +
                      b"\r\nContent-Length: 500000\r\n\r\n" + b"0" * 20000)
            time.sleep(0.2)
        time.sleep(0.3)
    after = open_server.metrics()
    assert 'vae_http_requests_total{method="POST",endpoint="/v1/encode",status="499"}' in after
    assert 'vae_http_requests_total{method="POST",endpoint="/v1/decode",status="499"}' in after
    assert 'status="500"' not in after
    log = "".join(open_server.log)
    assert "Traceback" not in log and "unexpected error" not in log and "Exception in ASGI" not in log
    assert before != after


def test_idle_and_slow_connections_are_closed(open_server):
    with _raw(open_server) as idle:  # connects and sends nothing
        got, waited = _read_until_closed(idle, 10)
    assert got.startswith(b"HTTP/1.1 408 ") and b"headers" in got
    with _raw(open_server) as slow:  # headers trickle in
        slow.sendall(b"GET /healthz HTTP/1.1\r\nHost: localhost\r\n")
        got, waited = _read_until_closed(slow, 10)
    assert got.startswith(b"HTTP/1.1 408 ")
    with _raw(open_server) as slow_body:  # headers in, the body never completes
        slow_body.sendall(b"POST /v1/decode HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\n"
                          b"Content-Length: 100\r\n\r\n{\"z\": ")
        got, waited = _read_until_closed(slow_body, 10)
    assert got == b"" or b" 408 " in got.split(b"\r\n")[0] or b" 499 " in got.split(b"\r\n")[0]
    text = open_server.metrics()
    assert re.search(r'vae_rejected_total\{reason="headers_timeout"\} [2-9]', text)
    assert re.search(r'vae_rejected_total\{reason="body_timeout"\} [1-9]', text)
    assert open_server.status("/healthz") == 200


def test_connections_over_the_cap_are_closed_at_once(open_server):
    held = []
    try:
        for _ in range(24):
            held.append(_raw(open_server))
        time.sleep(0.2)
        extra = _raw(open_server)
        got, _ = _read_until_closed(extra, 0.9)  # closed by the cap, not by a header timeout (1 s)
        extra.close()
        assert got == b""
    finally:
        for s in held:
            s.close()
    assert re.search(r'vae_rejected_total\{reason="connections"\} [1-9]', _metrics_when_free(open_server))


def _metrics_when_free(server: Server) -> str:
    deadline = time.monotonic() + 10
    while True:
        try:
            return server.metrics()
        except Exception:  # noqa: BLE001  (connections still at the cap: wait for them to close)
            assert time.monotonic() < deadline
            time.sleep(0.1)


# -- large JSON replies: written in blocks, the same bytes ---------------------------------------------------------


def test_json_replies_written_in_blocks_are_the_same_bytes():
    import asyncio

    from vae_infer.serve import bodies

    x = np.random.default_rng(1).random((100, 784)).astype(np.float32)  # 78,400 numbers: 5 blocks
    scores = np.array([1.5, np.inf, -2.0])
    payload = {"kind": "nelbo", "x_hat": x, "scores": scores, "metrics": {"length": 1.25}}
    chunked = asyncio.run(bodies.encode_json_yielding(payload))
    assert chunked == bodies.encode_json(payload)
    back = json.loads(chunked)
    assert back["scores"] == [1.5, None, -2.0] and back["metrics"] == {"length": 1.25}
    np.testing.assert_array_equal(np.asarray(back["x_hat"], np.float32), x)


def test_large_json_reply_equals_the_python_api(open_server, package):
    import vae_infer

    r = open_server.request("POST", "/v1/sample", json={"n": 64, "seed": 3})
    assert r.status_code == 200, r.text
    want = vae_infer.load(package, threads=1).sample(64, seed=3)
    np.testing.assert_allclose(np.asarray(r.json()["x_hat"]), want, atol=1e-6, rtol=0)


def test_a_client_that_never_reads_its_answer_is_disconnected(package):
    """The answer (a 12.8 MB .npz) waits for a client that reads nothing: the connection is closed after the
    request timeout plus the body timeout, and the server keeps answering others."""
    server = Server(package, "--examples", "none", "--timeout", "1")
    try:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 16384)
        sock.connect(("127.0.0.1", server.port))
        body = b'{"n": 4096, "seed": 0}'
        sock.sendall(b"POST /v1/sample HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\n"
                     b"Accept: application/x-npz\r\nContent-Length: " + str(len(body)).encode() + b"\r\n\r\n" + body)
        deadline = time.monotonic() + 30
        while "response_timeout" not in server.metrics():
            assert time.monotonic() < deadline, "the slow reader was never disconnected"
            time.sleep(0.2)
        got, _ = _read_until_closed(sock, 10)
        sock.close()
        assert got.startswith(b"HTTP/1.1 200 ") and len(got) < 12_000_000  # cut off before the whole answer
        assert server.status("/healthz") == 200
    finally:
        server.stop()
