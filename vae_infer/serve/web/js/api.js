// The server's API: JSON in and out, the bearer token when the server wants one, and its error format
// ({"error": {"type", "message"}}) turned into thrown Errors with the server's message.

const TOKEN_KEY = "vae-infer-token";

function token() {
  const fromHash = new URLSearchParams(location.hash.slice(1)).get("token");
  if (fromHash) sessionStorage.setItem(TOKEN_KEY, fromHash);
  return sessionStorage.getItem(TOKEN_KEY);
}

export class ApiError extends Error {
  constructor(status, type, message) {
    super(message);
    this.status = status;
    this.type = type;
  }
}

async function request(path, options = {}, retried = false) {
  const headers = { ...(options.headers || {}) };
  const t = token();
  if (t) headers.authorization = `Bearer ${t}`;
  const response = await fetch(path, { ...options, headers });
  if (response.status === 401 && !retried) {
    const given = window.prompt("This server needs its access token (vae-infer serve --token):");
    if (given) {
      sessionStorage.setItem(TOKEN_KEY, given);
      return request(path, options, true);
    }
  }
  if (!response.ok) {
    let type = "http_error";
    let message = `${response.status} ${response.statusText}`;
    try {
      const body = await response.json();
      if (body && body.error) ({ type, message } = body.error);
    } catch (_) { /* not our error format */ }
    throw new ApiError(response.status, type, message);
  }
  return response;
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
