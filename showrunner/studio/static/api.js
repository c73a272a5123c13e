// Talking to the API: fetch with the signed-in key, its error answers as ApiError, and the
// episode tokens put in the URLs the browser fetches by itself (an EventSource, a video, a
// download link), which cannot carry the key. URLs are relative to the page, so the studio
// works under a route prefix too.

export const FINISHED = new Set(["completed", "failed", "cancelled"]);
const TOKEN_MARGIN_MS = 60_000; // a token this close to its end is replaced before use

// Who is signed in: the API key in use (null on a keyless server) and GET /v1/whoami's answer.
export const session = { key: null, who: null };

export class ApiError extends Error {
  constructor(status, code, message, fields = []) {
    super(message);
    this.status = status;
    this.code = code;
    this.fields = fields;
  }
}

export function apiUrl(path) {
  return new URL(path, document.baseURI);
}

export async function api(path, { method = "GET", body } = {}) {
  const headers = { Accept: "application/json" };
  if (session.key) headers.Authorization = `Bearer ${session.key}`;
  if (body !== undefined) headers["Content-Type"] = "application/json";
  let response;
  try {
    response = await fetch(apiUrl(path), {
      method, headers, cache: "no-store",
      body: body === undefined ? undefined : JSON.stringify(body),
    });
  } catch (err) {
    throw new ApiError(0, "network", `the server could not be reached (${err.message})`);
  }
  const text = await response.text();
  let data = null;
  try {
    data = text ? JSON.parse(text) : null;
  } catch {
    data = null;
  }
  if (!response.ok) {
    const error = data && data.error ? data.error : {};
    throw new ApiError(response.status, error.code || "http_error",
      error.message || `${response.status} ${response.statusText}`, error.fields || []);
  }
  return data;
}

export const episodePath = (id) => `v1/episodes/${encodeURIComponent(id)}`;

let keyLost = () => {};

// What to do, with the server's message, when a key that worked is refused (the entry module
// sets it: back to signing in).
export function whenKeyLost(handler) {
  keyLost = handler;
}

// A failure of a key that worked: it was revoked, or the server restarted with other keys.
export function lostKey(err) {
  if (err instanceof ApiError && err.status === 401) {
    keyLost(err.message);
    return true;
  }
  return false;
}

// One episode's token: `?token=` for the URLs the browser fetches itself; none on a server
// without keys. Asked for when first needed, and again when it is about to run out.
export class EpisodeToken {
  constructor(id) {
    this.id = id;
    this.value = null;
    this.ends = 0;
    this.asked = null; // the token request under way
  }

  // Perhaps it ran out, or was refused: the next URL asks for a new one.
  forget() {
    this.value = null;
  }

  // How long until the URLs made with it should be made anew.
  renewIn() {
    return Math.max(TOKEN_MARGIN_MS, this.ends - Date.now() - TOKEN_MARGIN_MS);
  }

  async query() {
    if (!session.key || (session.who && session.who.keyless)) return "";
    if (!this.value || Date.now() > this.ends - TOKEN_MARGIN_MS) {
      // One request for every URL made meanwhile (the files are linked all at once).
      if (!this.asked) {
        this.asked = api(`${episodePath(this.id)}/token`, { method: "POST" })
          .finally(() => { this.asked = null; });
      }
      const answer = await this.asked;
      this.value = answer.token;
      this.ends = Date.now() + answer.expires_in_s * 1000;
    }
    return `token=${encodeURIComponent(this.value)}`;
  }

  async fileUrl(name) {
    const query = await this.query();
    const url = apiUrl(`${episodePath(this.id)}/artifacts/${encodeURIComponent(name)}`);
    if (query) url.search = query;
    return url.href;
  }
}
