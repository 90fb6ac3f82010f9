// Entry point: wires the sign-in view, the upload area and the job list to the
// API, the event stream and each other. Everything that can go wrong ends up
// as one plain sentence in the status region.

import {
  ApiError,
  deleteJob,
  describeError,
  downloadMp3,
  discardUpload,
  getLimits,
  listJobs,
  login,
  logout,
  onUnauthorized,
  session,
  unfinishedUploads,
} from './api.js';
import { formatBytes, formatLimit, mp3Name } from './format.js';
import { JobList, JobStore } from './jobs.js';
import { connectJobEvents } from './sse.js';
import { DEFAULT_LIMITS, OptionsForm, UploadQueue } from './uploads.js';

const $ = (id) => document.getElementById(id);

const SESSION_ENDED = 'Your session has ended. Please sign in again.';

let limits = DEFAULT_LIMITS;
let events = null; // the open job event stream, while signed in
let expiryTimer = null;

// ---- Status messages -------------------------------------------------------

let statusTimer = null;

/** Says something in the live region; info fades after a while, errors stay longer. */
function announce(message, kind = 'info') {
  const status = $('status');
  clearTimeout(statusTimer);
  // Emptied first so the same sentence twice is announced twice.
  status.textContent = '';
  status.className = `status status-${kind}`;
  setTimeout(() => {
    status.textContent = message;
  }, 50);
  statusTimer = setTimeout(() => {
    status.textContent = '';
    status.className = 'status';
  }, kind === 'error' ? 30000 : 8000);
}

// ---- Jobs ------------------------------------------------------------------

const store = new JobStore();

new JobList($('jobs'), $('jobs-empty'), store, {
  onDownload: download,
  onDelete: remove,
});

// Say when a job this page watched changes to done or failed (not for the
// snapshot of old jobs, which have no previous state here).
store.subscribe(({ type, job, previous }) => {
  if (type !== 'upsert' || !previous || previous.state === job.state) return;
  if (job.state === 'done') announce(`${job.filename} is converted and ready to download.`);
  if (job.state === 'failed') announce(`${job.filename} could not be converted.`, 'error');
});

let refreshing = null;
let refreshAgain = false;

/** Re-reads GET /jobs into the store; concurrent calls collapse into one more. */
async function refreshJobs({ quiet = false } = {}) {
  if (refreshing) {
    refreshAgain = true;
    return refreshing;
  }
  refreshing = (async () => {
    do {
      refreshAgain = false;
      store.beginRefresh();
      try {
        const { jobs, complete } = await listJobs();
        if (!session.get()) return; // signed out meanwhile
        store.endRefresh(jobs, complete);
        $('jobs-partial').hidden = complete;
      } catch (err) {
        store.abortRefresh();
        if (err instanceof ApiError && err.status === 401) return; // already back at sign-in
        if (!quiet) announce(describeError(err, limits), 'error');
      }
    } while (refreshAgain);
  })();
  try {
    await refreshing;
  } finally {
    refreshing = null;
  }
}

function onJobEvent({ type, data }) {
  let body;
  try {
    body = JSON.parse(data);
  } catch {
    return; // a malformed event is skipped; the next snapshot or resync repairs the list
  }
  if (type === 'job') store.upsert(body);
  else if (type === 'deleted' && body) store.remove(body.job_id);
  else if (type === 'resync') refreshJobs({ quiet: true });
}

async function download(job) {
  const name = mp3Name(job.filename);
  try {
    const blob = await downloadMp3(job.mp3_id);
    // A plain link cannot carry the Authorization header: save a Blob instead.
    const url = URL.createObjectURL(blob);
    const a = document.createElement('a');
    a.href = url;
    a.download = name;
    a.hidden = true;
    document.body.append(a);
    a.click();
    a.remove();
    // Revoked later, not at once: the browser reads the Blob asynchronously.
    setTimeout(() => URL.revokeObjectURL(url), 30000);
    announce(`Saving ${name}.`);
  } catch (err) {
    if (err instanceof ApiError && err.status === 401) return;
    announce(`${name}: ${describeError(err, limits)}`, 'error');
  }
}

async function remove(job) {
  // confirm() is plain text, so the file name cannot inject markup here either.
  if (!window.confirm(`Delete “${job.filename}” and its MP3? This cannot be undone.`)) return;
  try {
    await deleteJob(job.job_id);
    store.remove(job.job_id);
    announce(`Deleted ${job.filename}.`);
  } catch (err) {
    if (err instanceof ApiError && err.status === 404) {
      store.remove(job.job_id); // already gone
      announce(`${job.filename} was already deleted.`);
    } else if (!(err instanceof ApiError && err.status === 401)) {
      announce(`${job.filename}: ${describeError(err, limits)}`, 'error');
    }
    return;
  }
  // The focused Delete button is gone with its row; land somewhere meaningful.
  $('jobs-title').focus();
}

// ---- Uploads ---------------------------------------------------------------

const options = new OptionsForm($('options-form'));
const uploads = new UploadQueue($('uploads'), {
  limits: () => limits,
  onUploaded: (job) => {
    store.upsert(job);
    showUnfinished();
  },
  announce,
});

/** Uploads an earlier visit left unfinished: picking the same file again goes on. */
async function showUnfinished() {
  const list = $('unfinished');
  const items = await unfinishedUploads();
  list.replaceChildren(
    ...items.map((u) => {
      const row = document.createElement('li');
      row.className = 'upload card';
      const text = document.createElement('p');
      text.className = 'upload-text';
      text.textContent = `${u.name}: ${formatBytes(u.offset)} of ${formatBytes(u.size)} uploaded. Pick the same file again to go on from there (with the options it was started with).`;
      const discard = document.createElement('button');
      discard.type = 'button';
      discard.className = 'button';
      discard.textContent = 'Discard';
      discard.setAttribute('aria-label', `Discard the unfinished upload of ${u.name}`);
      discard.addEventListener('click', async () => {
        discard.disabled = true;
        await discardUpload(u);
        showUnfinished();
      });
      const actions = document.createElement('div');
      actions.className = 'upload-actions';
      actions.append(discard);
      row.append(text, actions);
      return row;
    }),
  );
  list.hidden = items.length === 0;
}

function pick(fileList) {
  const files = [...fileList];
  if (!files.length) return;
  const fields = options.read();
  if (!fields) {
    announce('Fix the output options, then pick the videos again.', 'error');
    return;
  }
  uploads.add(files, fields);
}

const fileInput = $('file-input');
const dropzone = $('dropzone');
dropzone.addEventListener('click', () => fileInput.click());
fileInput.addEventListener('change', () => {
  pick(fileInput.files);
  fileInput.value = ''; // so picking the same file again fires "change" again
});

// Dropping a file anywhere else would make the browser navigate to it and
// lose the page (and any upload in flight), so that default is cancelled.
for (const type of ['dragover', 'drop']) {
  window.addEventListener(type, (e) => {
    if (e.dataTransfer && [...e.dataTransfer.types].includes('Files')) e.preventDefault();
  });
}
dropzone.addEventListener('dragenter', () => dropzone.classList.add('dragging'));
dropzone.addEventListener('dragover', (e) => {
  e.preventDefault();
  e.dataTransfer.dropEffect = 'copy';
  dropzone.classList.add('dragging');
});
dropzone.addEventListener('dragleave', () => dropzone.classList.remove('dragging'));
dropzone.addEventListener('drop', (e) => {
  e.preventDefault();
  dropzone.classList.remove('dragging');
  pick(e.dataTransfer.files);
});

window.addEventListener('beforeunload', (e) => {
  if (uploads.active) e.preventDefault();
});

// ---- Session ---------------------------------------------------------------

function showSignIn(message = '', kind = 'info') {
  $('app-view').hidden = true;
  $('account').hidden = true;
  $('signin-view').hidden = false;
  const msg = $('signin-message');
  msg.textContent = message;
  msg.className = `message ${message ? `message-${kind}` : ''}`;
  $('email').focus();
}

function startSession() {
  const s = session.get();
  $('signin-view').hidden = true;
  $('app-view').hidden = false;
  $('account').hidden = false;
  $('account-email').textContent = s.email || '';
  refreshJobs();
  showUnfinished();
  events = connectJobEvents({
    onEvent: onJobEvent,
    onOpen: (reconnected) => {
      $('live-state').hidden = true;
      // Events missed while disconnected (deletions above all) are only in the listing.
      if (reconnected) refreshJobs({ quiet: true });
    },
    onDown: () => {
      $('live-state').hidden = false;
      refreshJobs({ quiet: true });
    },
  });
  // Check the token as it expires, so an idle page does not keep showing a
  // session the server no longer honours (a 401 brings back sign-in).
  const expires = Date.parse(s.expireTime || '');
  if (!Number.isNaN(expires)) {
    const delay = Math.min(Math.max(expires - Date.now() + 1000, 1000), 2 ** 31 - 1);
    expiryTimer = setTimeout(() => refreshJobs(), delay);
  }
}

/** Leaves the signed-in state locally: stream, uploads, list, token. */
function endSession(message, kind) {
  if (events) events.close();
  events = null;
  clearTimeout(expiryTimer);
  uploads.cancelAll();
  $('unfinished').replaceChildren();
  $('unfinished').hidden = true;
  store.clear();
  session.clear();
  $('live-state').hidden = true;
  showSignIn(message, kind);
}

onUnauthorized(() => {
  // Several calls can fail at once; only the first one acts.
  if (!$('app-view').hidden || session.get()) endSession(SESSION_ENDED, 'error');
});

$('signin-form').addEventListener('submit', async (e) => {
  e.preventDefault();
  const email = $('email').value.trim();
  const password = $('password').value;
  const msg = $('signin-message');
  if (!email || !password) {
    msg.textContent = 'Enter your email and password.';
    msg.className = 'message message-error';
    (email ? $('password') : $('email')).focus();
    return;
  }
  const submit = $('signin-submit');
  submit.disabled = true;
  submit.textContent = 'Signing in…';
  msg.textContent = '';
  msg.className = 'message';
  try {
    const { token, expireTime } = await login(email, password);
    session.set({ token, email, expireTime });
    $('password').value = '';
    startSession();
    $('upload-title').focus();
    announce(`Signed in as ${email}.`);
  } catch (err) {
    let text;
    if (err instanceof ApiError && err.status === 401) text = 'Wrong email or password.';
    else if (err instanceof ApiError && err.status === 429) {
      text = `Too many attempts. Slow down — try again in ${err.retryAfter != null ? `${err.retryAfter} s` : 'a moment'}.`;
    } else text = describeError(err, limits);
    msg.textContent = text;
    msg.className = 'message message-error';
    $('password').select();
  } finally {
    submit.disabled = false;
    submit.textContent = 'Sign in';
  }
});

$('signout').addEventListener('click', async () => {
  if (uploads.active && !window.confirm('Uploads in progress will be cancelled. Sign out anyway?')) return;
  const s = session.get();
  const button = $('signout');
  button.disabled = true;
  // The stream goes first: the server may end it on logout, and its
  // reconnect must not race the sign-out into "your session has ended".
  if (events) events.close();
  events = null;
  if (s) {
    // Waited for (briefly), so the token is revoked before the page says so.
    const timeout = new Promise((resolve) => {
      setTimeout(resolve, 5000);
    });
    await Promise.race([logout(s.token).catch(() => {}), timeout]);
  }
  button.disabled = false;
  endSession('You have signed out.', 'info');
});

// ---- Start -----------------------------------------------------------------

async function loadLimits() {
  try {
    const l = await getLimits();
    if (l && typeof l === 'object') {
      limits = { ...DEFAULT_LIMITS, ...l, options: { ...DEFAULT_LIMITS.options, ...(l.options || {}) } };
      options.configure(limits);
      if (limits.max_upload_bytes) {
        $('dropzone-hint').textContent = `or drop them here · up to ${formatLimit(limits.max_upload_bytes)} each`;
      }
    }
  } catch {
    // Defaults apply; the server still checks everything.
  }
}

loadLimits();
if (session.get()) startSession();
else showSignIn();
