// The page's client of the server API (the API the CLI uses, on the UI's own port with the session cookie).

let csrfToken = null;
const signedOutListeners = new Set();

export class ApiError extends Error {
  constructor(message, status) {
    super(message);
    this.status = status;
  }
}

export function setCsrfToken(token) {
  csrfToken = token;
}

/** Called when the server says the session is over (e.g. the token changed), to show the sign-in page. */
export function onSignedOut(listener) {
  signedOutListeners.add(listener);
}

export function projectPath(project, suffix = "") {
  return `/api/project/${encodeURIComponent(project)}${suffix}`;
}

export function runPath(project, name, suffix = "") {
  return projectPath(project, `/runs/${encodeURIComponent(name)}${suffix}`);
}

/** One request; resolves to the parsed JSON, or throws ApiError with the server's one sentence. */
export async function request(path, { method = "GET", body, signal, params } = {}) {
  const response = await send(path, { method, body, signal, params });
  const text = await response.text();
  return text ? JSON.parse(text) : null;
}

/** The raw Response (for streams); throws ApiError when the status is not 2xx. */
export async function send(path, { method = "GET", body, signal, params } = {}) {
  let url = path;
  if (params) {
    const query = new URLSearchParams();
    for (const [key, value] of Object.entries(params)) {
      if (value !== undefined && value !== null && value !== "") query.set(key, String(value));
    }
    const text = query.toString();
    if (text) url += (url.includes("?") ? "&" : "?") + text;
  }
  const headers = { Accept: "application/json" };
  if (body !== undefined) headers["Content-Type"] = "application/json";
  if (method !== "GET" && method !== "HEAD" && csrfToken) headers["X-CSRF-Token"] = csrfToken;
  let response;
  try {
    response = await fetch(url, {
      method,
      headers,
      body: body === undefined ? undefined : JSON.stringify(body),
      signal,
      credentials: "same-origin",
      cache: "no-store",
    });
  } catch (error) {
    if (error.name === "AbortError") throw error;
    throw new ApiError("Cannot reach the dstack server (is it running?)", 0);
  }
  if (!response.ok) {
    let message = `The server answered HTTP ${response.status}`;
    try {
      const data = await response.json();
      if (data && data.error) message = String(data.error);
    } catch {
      // not JSON: keep the generic sentence
    }
    if (response.status === 401 && path.startsWith("/api/")) for (const listener of signedOutListeners) listener();
    throw new ApiError(message, response.status);
  }
  return response;
}
