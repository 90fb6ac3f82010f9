// The gateway's REST API as the page uses it: the session token, JSON requests,
// the resumable upload (tus) and the error model.
//
// The token lives in sessionStorage only: never in a URL (it would end up in
// logs and history), never in a cookie (it would be sent with requests the page
// did not make), and never written to the console.

import { formatLimit } from './format.js';

const SESSION_KEY = 'mp3converter.session';

export const session = {
  /** @returns {{token: string, email: string, expireTime: string} | null} */
  get() {
    try {
      const s = JSON.parse(sessionStorage.getItem(SESSION_KEY) || 'null');
      return s && typeof s.token === 'string' && s.token ? s : null;
    } catch {
      return null;
    }
  },
  set(value) {
    sessionStorage.setItem(SESSION_KEY, JSON.stringify(value));
  },
  clear() {
    sessionStorage.removeItem(SESSION_KEY);
  },
};

/** A failed API call: an HTTP answer (status > 0) or no answer at all (network). */
export class ApiError extends Error {
  constructor({ status = 0, code = '', message = '', reason = '', retryAfter = null } = {}) {
    super(message || (status ? `HTTP ${status}` : 'network error'));
    this.name = 'ApiError';
    this.status = status;
    this.code = code;
    this.serverMessage = message;
    this.reason = reason;
    this.retryAfter = retryAfter;
  }

  get isNetwork() {
    return this.status === 0;
  }
}

// Any 401 on an authenticated call means the token expired or was revoked:
// the app registers one handler that sends the person back to sign-in.
let unauthorizedHandler = () => {};
export function onUnauthorized(fn) {
  unauthorizedHandler = fn;
}
export function reportUnauthorized() {
  unauthorizedHandler();
}

/** Retry-After is either delta-seconds or an HTTP date; returns whole seconds or null. */
export function parseRetryAfter(value) {
  if (value == null || value === '') return null;
  const trimmed = String(value).trim();
  if (/^\d+$/.test(trimmed)) return Number(trimmed);
  const t = Date.parse(trimmed);
  return Number.isNaN(t) ? null : Math.max(0, Math.ceil((t - Date.now()) / 1000));
}

/** Builds an ApiError from a status, the raw body text and a header getter. */
function errorFrom(status, bodyText, contentType, getHeader) {
  let code = '';
  let message = '';
  let reason = '';
  try {
    const body = JSON.parse(bodyText);
    if (body && typeof body === 'object') {
      code = typeof body.code === 'string' ? body.code : '';
      message = typeof body.message === 'string' ? body.message : '';
      reason = typeof body.reason === 'string' ? body.reason : '';
    }
  } catch {
    // Not JSON (e.g. a proxy's or a body-limit layer's plain text): keep short
    // plain text as the message, never HTML.
    if (/^text\/plain/i.test(contentType || '') && bodyText) message = bodyText.trim().slice(0, 300);
  }
  return new ApiError({ status, code, message, reason, retryAfter: parseRetryAfter(getHeader('retry-after')) });
}

/**
 * fetch() with the Bearer token, turning every non-2xx answer into an ApiError
 * and a failure to connect into ApiError{status: 0}. AbortError passes through.
 */
export async function request(path, { method = 'GET', headers = {}, body, auth = true, signal } = {}) {
  const h = new Headers(headers);
  if (!h.has('Accept')) h.set('Accept', 'application/json');
  if (auth) {
    const s = session.get();
    if (!s) {
      reportUnauthorized();
      throw new ApiError({ status: 401, message: 'not signed in' });
    }
    h.set('Authorization', `Bearer ${s.token}`);
  }
  let res;
  try {
    res = await fetch(path, { method, headers: h, body, signal, cache: 'no-store', credentials: 'omit' });
  } catch (e) {
    if (e && e.name === 'AbortError') throw e;
    throw new ApiError({ status: 0 });
  }
  if (res.ok) return res;
  const text = await res.text().catch(() => '');
  const err = errorFrom(res.status, text, res.headers.get('content-type'), (n) => res.headers.get(n));
  if (res.status === 401 && auth) reportUnauthorized();
  throw err;
}

async function json(res) {
  if (res.status === 204) return null;
  return res.json();
}

/** HTTP Basic with the UTF-8 bytes of "email:password" (btoa alone only takes Latin-1). */
function basicAuth(email, password) {
  const bytes = new TextEncoder().encode(`${email}:${password}`);
  let binary = '';
  for (const b of bytes) binary += String.fromCharCode(b);
  return `Basic ${btoa(binary)}`;
}

export async function getLimits() {
  return json(await request('/limits', { auth: false }));
}

/** Signs in; returns {token, expireTime}. A 401 here means wrong credentials, not an ended session. */
export async function login(email, password) {
  const res = await request('/login', {
    method: 'POST',
    auth: false,
    headers: { Authorization: basicAuth(email, password) },
  });
  // The JSON answer is the contract; a plain-text token (the curl-friendly
  // answer) is accepted too so the page does not depend on content negotiation.
  const type = res.headers.get('content-type') || '';
  if (/json/i.test(type)) {
    const body = await res.json();
    if (!body || typeof body.token !== 'string' || !body.token) throw new ApiError({ status: res.status, message: 'the server sent no token' });
    return { token: body.token, expireTime: typeof body.expire_time === 'string' ? body.expire_time : '' };
  }
  const token = (await res.text()).trim();
  if (!token) throw new ApiError({ status: res.status, message: 'the server sent no token' });
  return { token, expireTime: '' };
}

/** Revokes the token on the server; the caller clears it locally whatever happens. */
export async function logout(token) {
  await fetch('/logout', {
    method: 'POST',
    headers: { Authorization: `Bearer ${token}`, Accept: 'application/json' },
    cache: 'no-store',
    credentials: 'omit',
  });
}

/** The newest jobs first: {jobs, complete}, complete=false when the server has more pages. */
export async function listJobs() {
  const body = await json(await request('/jobs?page_size=100'));
  const jobs = Array.isArray(body && body.jobs) ? body.jobs : [];
  return { jobs, complete: !(body && body.next_page_token) };
}

export async function deleteJob(jobId) {
  await request(`/jobs/${encodeURIComponent(jobId)}`, { method: 'DELETE' });
}

export async function downloadMp3(mp3Id, signal) {
  const res = await request(`/download?fid=${encodeURIComponent(mp3Id)}`, {
    headers: { Accept: 'audio/mpeg, */*' },
    signal,
  });
  return res.blob();
}

/** What the fingerprints of a person's uploads start with (tus-js-client keys
 * its localStorage entries `tus::<fingerprint>::…`). */
function fingerprintPrefix(s) {
  return `mp3converter|${s.email}|`;
}

/**
 * The unfinished uploads this browser started for the signed-in person, each
 * with how much the server has kept: `{key, url, name, size, offset}`. Ones the
 * server no longer has (expired, cancelled) are forgotten.
 */
export async function unfinishedUploads() {
  const s = session.get();
  const storage = window.tus && window.tus.defaultOptions.urlStorage;
  if (!s || !storage) return [];
  let stored = [];
  try {
    stored = await storage.findAllUploads();
  } catch {
    return [];
  }
  const found = [];
  for (const u of stored) {
    if (!String(u.urlStorageKey).startsWith(`tus::${fingerprintPrefix(s)}`)) continue;
    try {
      const res = await request(u.uploadUrl, { method: 'HEAD', headers: { 'Tus-Resumable': '1.0.0' } });
      const size = Number(res.headers.get('upload-length'));
      const offset = Number(res.headers.get('upload-offset'));
      if (offset >= size) {
        await storage.removeUpload(u.urlStorageKey);
        continue;
      }
      found.push({ key: u.urlStorageKey, url: u.uploadUrl, name: (u.metadata && u.metadata.filename) || '', size, offset });
    } catch (e) {
      if (e instanceof ApiError && e.status === 404) await storage.removeUpload(u.urlStorageKey);
    }
  }
  return found;
}

/** Gives up an unfinished upload: the server removes what it kept. */
export async function discardUpload(upload) {
  await request(upload.url, { method: 'DELETE', headers: { 'Tus-Resumable': '1.0.0' } }).catch(() => {});
  await window.tus.defaultOptions.urlStorage.removeUpload(upload.key);
}

/** Bytes per PATCH: a dropped connection costs at most what was in flight
 * (the server keeps every byte that arrived), and proxies' body limits stay clear. */
const UPLOAD_CHUNK = 32 * 1024 * 1024;

/**
 * Uploads one file with its option fields over tus (POST /uploads, then PATCH
 * from the offset the server has), with tus-js-client (vendored as
 * /assets/tus.min.js). A dropped connection is retried from the server's
 * offset; offline, it waits for the network to come back; the same file picked
 * again by the same person (after a reload, say) continues where it stopped.
 *
 * @param {File} file
 * @param {Array<[string, string]>} fields option fields, already validated
 * @param {{onProgress?: (sent: number, total: number) => void, onOffline?: () => void}} hooks
 * @returns {{promise: Promise<object>, abort: () => void}} promise resolves to the Job JSON;
 *   rejects with ApiError, or with an Error named 'AbortError' after abort()
 */
export function uploadFile(file, fields, { onProgress, onOffline } = {}) {
  let upload = null;
  let aborted = false;
  let fail = () => {};
  const promise = new Promise((resolve, reject) => {
    fail = reject;
    const s = session.get();
    if (!s) {
      reportUnauthorized();
      reject(new ApiError({ status: 401, message: 'not signed in' }));
      return;
    }
    const tus = window.tus;
    if (!tus || !tus.isSupported) {
      reject(new ApiError({ status: 0, message: 'this browser cannot upload files' }));
      return;
    }
    const metadata = { filename: file.name, filetype: file.type || 'application/octet-stream' };
    for (const [name, value] of fields) metadata[name] = value;
    upload = new tus.Upload(file, {
      endpoint: '/uploads',
      chunkSize: UPLOAD_CHUNK,
      metadata,
      headers: { Authorization: `Bearer ${s.token}` },
      // Whose file and which: picked again (after a reload, say), it goes on
      // from what the server kept, with the options it was started with.
      fingerprint: (f) => Promise.resolve(`${fingerprintPrefix(s)}${[f.name, f.type, f.size, f.lastModified].join('|')}`),
      removeFingerprintOnSuccess: true,
      retryDelays: [0, 1000, 3000, 5000, 10000, 20000],
      onProgress: (sent, total) => onProgress && onProgress(sent, total),
      onSuccess: () => {
        const id = upload.url.split('/').pop();
        request(`/jobs/${encodeURIComponent(id)}`).then(json).then(resolve, reject);
      },
      onError: (err) => {
        if (aborted) return;
        if (!navigator.onLine) {
          // Offline: carry on from the server's offset once back online.
          if (onOffline) onOffline();
          window.addEventListener('online', () => aborted || upload.start(), { once: true });
          return;
        }
        const res = err && err.originalResponse;
        if (!res) {
          reject(new ApiError({ status: 0 }));
          return;
        }
        const status = res.getStatus();
        if (status === 401) reportUnauthorized();
        reject(errorFrom(status, res.getBody() || '', res.getHeader('content-type'), (n) => res.getHeader(n)));
      },
    });
    upload
      .findPreviousUploads()
      .then((previous) => {
        if (aborted) return;
        if (previous.length) upload.resumeFromPreviousUpload(previous[0]);
        upload.start();
      })
      .catch(() => upload.start());
  });
  const abort = () => {
    aborted = true;
    // Stops sending and removes what the server has (tus termination).
    if (upload) upload.abort(true).catch(() => {});
    fail(new DOMException('upload cancelled', 'AbortError'));
  };
  return { promise, abort };
}

/**
 * One sentence a person can act on, for any failed call. `limits` is the
 * GET /limits answer (for the 413 limit), when known.
 */
export function describeError(err, limits) {
  if (!(err instanceof ApiError)) return 'Something went wrong in the page. Reload it and try again.';
  // The server's own words, as a second sentence, when it gave any.
  const said = err.serverMessage.trim();
  const server = said ? ` ${said[0].toUpperCase()}${said.slice(1)}${/[.!?]$/.test(said) ? '' : '.'}` : '';
  switch (err.status) {
    case 0:
      return 'Cannot reach the server. Check your connection and try again.';
    case 400:
      return err.serverMessage || 'The server refused the request as invalid.';
    case 401:
      return 'Your session has ended. Please sign in again.';
    case 404:
      return err.serverMessage ? `Not found: ${err.serverMessage}` : 'Not found.';
    case 413: {
      const limit = limits && limits.max_upload_bytes ? formatLimit(limits.max_upload_bytes) : '';
      return `Too large${limit ? ` (limit ${limit})` : ''}.${server}`;
    }
    case 429:
      return `Slow down — try again in ${err.retryAfter != null ? `${err.retryAfter} s` : 'a moment'}.${server}`;
    case 503:
      return `The service is busy, try again${err.retryAfter != null ? ` in ${err.retryAfter} s` : ' in a moment'}.`;
    default:
      return `Something went wrong (HTTP ${err.status}).${server} Try again.`;
  }
}
