"""Signing in on a server started with --token: the page trades the token for an HttpOnly, SameSite=Strict cookie
(POST /v1/login {"token"}: 204, or 401 for a wrong one) and never keeps it itself (no Web Storage, no
Authorization header, the `#token=` fragment gone from the address bar at once). A 401 from any API call shows a
small token field; a wrong token says so, the right one signs in and the page carries on."""

from __future__ import annotations

import json

import pytest

from tests.test_browser import (
    SHIPPED,
    TIMEOUT_MS,
    open_page,
    pytestmark,  # noqa: F401  (slow, and the parts these tests need)
    start_server,
)

TOKEN = "s3cret-token-for-the-browser-test"


@pytest.fixture(scope="module")
def server():
    proc, url = start_server(str(SHIPPED), "--examples", "none", "--token", TOKEN)
    yield url
    proc.terminate()
    proc.wait(30)


def server_has_login(url: str) -> None:
    import httpx

    right = httpx.post(url + "/v1/login", json={"token": TOKEN}, timeout=30)
    assert right.status_code == 204, f"POST /v1/login with the right token: {right.status_code} {right.text[:200]}"
    assert httpx.post(url + "/v1/login", json={"token": "wrong"}, timeout=30).status_code == 401


def watched_page(browser):
    """A fresh context (no cookie yet) and a page that records what it sent."""
    context = browser.new_context(viewport={"width": 1024, "height": 900})
    page = context.new_page()
    sent: list[dict] = []
    page.on("request", lambda r: sent.append({"url": r.url, "method": r.method, "headers": r.headers,
                                              "body": r.post_data}))
    return page, sent


def token_kept_nowhere(page, sent: list[dict]) -> None:
    assert TOKEN not in page.url
    assert page.evaluate("location.hash") == ""
    assert page.evaluate("[sessionStorage.length, localStorage.length]") == [0, 0]
    assert TOKEN not in page.evaluate("document.cookie")  # HttpOnly: no script reads it
    assert not [r["url"] for r in sent if "authorization" in r["headers"]]
    cookies = page.context.cookies()
    assert cookies and all(c["httpOnly"] and c["sameSite"] == "Strict" for c in cookies), cookies
    logins = [r for r in sent if r["url"].endswith("/v1/login")]
    assert logins and all(r["method"] == "POST" for r in logins), logins


def test_a_token_link_signs_in_and_leaves_the_address_bar(browser, server):
    server_has_login(server)
    page, sent = watched_page(browser)
    open_page(browser, server, page, path=f"/#token={TOKEN}")
    assert page.evaluate("window.explorer.info.auth") is True
    assert page.is_hidden("#login")
    logins = [r for r in sent if r["url"].endswith("/v1/login")]
    assert [json.loads(r["body"]) for r in logins] == [{"token": TOKEN}]
    token_kept_nowhere(page, sent)
    page.context.close()


def test_a_401_asks_for_the_token_refuses_a_wrong_one_and_retries_with_the_right_one(browser, server):
    server_has_login(server)
    page, sent = watched_page(browser)
    page.goto(server + "/")
    page.wait_for_selector("#login:not([hidden])", timeout=TIMEOUT_MS)
    assert page.evaluate("window.explorer.ready") is False
    page.fill("#login-token", "not-the-token")
    page.click("#login-button")
    page.wait_for_function("() => document.getElementById('login-message').className === 'error'",
                           timeout=TIMEOUT_MS)
    assert "not this server's" in page.text_content("#login-message")
    assert page.is_visible("#login")
    page.fill("#login-token", TOKEN)
    page.press("#login-token", "Enter")
    page.wait_for_function("() => window.explorer.ready || window.explorer.error", timeout=TIMEOUT_MS)
    assert page.evaluate("window.explorer.error || null") is None
    assert page.is_hidden("#login")
    assert page.input_value("#login-token") == ""
    assert page.evaluate("window.explorer.info.auth") is True
    token_kept_nowhere(page, sent)
    page.context.close()
