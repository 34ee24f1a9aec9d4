// The server's API: JSON in and out, and its error format ({"error": {"type", "message"}}) turned into thrown
// Errors with the server's message.
//
// The access token (vae-infer serve --token) never stays in the page: POST /v1/login trades it for an HttpOnly,
// SameSite=Strict cookie that the browser sends with every same-origin request, so no script in the page (ours, or
// one injected through a slip) can read it. The page takes it from a `#token=...` link once, at load, and drops
// the fragment from the address bar; on a 401 it asks for it in a small field and retries the request.

import { loginPrompt } from "./login.js";

export class ApiError extends Error {
  constructor(status, type, message) {
    super(message);
    this.status = status;
    this.type = type;
  }
}

async function errorOf(response) {
  let type = "http_error";
  let message = `${response.status} ${response.statusText}`;
  try {
    const body = await response.json();
    if (body && body.error && typeof body.error.message === "string") {
      type = String(body.error.type);
      message = body.error.message;
    }
  } catch (_) { /* not our error format */ }
  return new ApiError(response.status, type, message);
}

// POST /v1/login {"token"}: 204 and a cookie, or 401 for a wrong token (thrown as an ApiError).
export async function login(token) {
  const response = await fetch("/v1/login", {
    method: "POST",
    headers: { "content-type": "application/json" },
    body: JSON.stringify({ token }),
    credentials: "same-origin",
  });
  if (!response.ok) throw await errorOf(response);
}

// At load: a token in the fragment (a link printed by the server) is exchanged for the cookie, then removed from
// the address bar and the history entry, so it is neither shown, bookmarked nor sent on.
export async function loginFromFragment() {
  const params = new URLSearchParams(location.hash.slice(1));
  const token = params.get("token");
  if (token === null) return;
  history.replaceState(null, "", location.pathname + location.search);
  try {
    await login(token);
  } catch (_) { /* a wrong or stale link: the first API call gets a 401 and asks for the token */ }
}

// One prompt at a time: every request that got a 401 waits for the same sign-in, then retries.
let signingIn = null;

function signIn(message) {
  if (!signingIn) {
    signingIn = loginPrompt(message, login).finally(() => { signingIn = null; });
  }
  return signingIn;
}

async function request(path, options = {}) {
  for (;;) {
    const response = await fetch(path, { ...options, credentials: "same-origin" });
    if (response.status === 401) {
      await signIn("This server needs its access token (the one vae-infer serve was started with).");
      continue;
    }
    if (!response.ok) throw await errorOf(response);
    return response;
  }
}

export async function getJSON(path) {
  return (await request(path)).json();
}

export async function getBytes(path) {
  return new Uint8Array(await (await request(path)).arrayBuffer());
}

export async function postJSON(path, body) {
  const response = await request(path, {
    method: "POST",
    headers: { "content-type": "application/json" },
    body: JSON.stringify(body),
  });
  return response.json();
}
