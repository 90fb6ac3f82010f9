// Choosing conversion options and uploading files: the options form (read
// and validated when files are picked, so each file keeps the options it was
// picked with) and the upload queue, one row per file with progress and Cancel.
// Uploads are resumable (tus): a dropped connection or a reload does not
// start a file over.

import { ApiError, describeError, uploadFile } from './api.js';
import { formatBytes, formatLimit, formatPercent } from './format.js';

/** What the page assumes until GET /limits answers (and if it never does). */
export const DEFAULT_LIMITS = {
  max_upload_bytes: 0,
  max_uploads_at_once: 3,
  options: {
    bitrate_kbps: { min: 64, max: 320 },
    quality: { min: 0, max: 9 },
    channels: ['source', 'mono', 'stereo'],
    sample_rate: ['source', '44100', '48000'],
  },
};

const BITRATES = [64, 96, 128, 160, 192, 256, 320];
const CHANNEL_LABELS = { source: 'As source', mono: 'Mono', stereo: 'Stereo' };

function sampleRateLabel(v) {
  if (v === 'source') return 'As source';
  const hz = Number(v);
  return Number.isFinite(hz) ? `${hz / 1000} kHz` : v;
}

function fillSelect(select, values, label, preferred) {
  const keep = select.value;
  select.replaceChildren(
    ...values.map((v) => {
      const o = document.createElement('option');
      o.value = String(v);
      o.textContent = label(v);
      return o;
    }),
  );
  const wanted = [keep, preferred].find((v) => values.map(String).includes(String(v)));
  if (wanted != null) select.value = String(wanted);
}

/** "12", "1.5", "1,5" (decimal comma) → number; '' → null; anything else → NaN. */
function parseSeconds(text) {
  const t = text.trim().replace(',', '.');
  if (t === '') return null;
  return /^\d+(\.\d+)?$/.test(t) ? Number(t) : NaN;
}

export class OptionsForm {
  /** @param {HTMLFormElement} form the options form (ids below are looked up inside it) */
  constructor(form) {
    this.form = form;
    const q = (sel) => form.querySelector(sel);
    this.modeInputs = [...form.querySelectorAll('input[name="mode"]')];
    this.quality = q('#quality');
    this.bitrate = q('#bitrate');
    this.channels = q('#channels');
    this.sampleRate = q('#sample-rate');
    this.trimStart = q('#trim-start');
    this.trimEnd = q('#trim-end');
    this.qualityField = q('#quality-field');
    this.bitrateField = q('#bitrate-field');
    this.summary = q('#options-error');
    this.configure(DEFAULT_LIMITS);
    for (const input of this.modeInputs) input.addEventListener('change', () => this.showMode());
    // Enter in a field must not submit (there is nothing to submit to).
    form.addEventListener('submit', (e) => e.preventDefault());
    // Once errors are showing, they follow the person's corrections.
    const revalidate = () => {
      if (this.summary.textContent) this.read({ focus: false });
    };
    form.addEventListener('input', revalidate);
    form.addEventListener('change', revalidate);
    this.showMode();
  }

  get mode() {
    const checked = this.modeInputs.find((i) => i.checked);
    return checked ? checked.value : 'quality';
  }

  showMode() {
    const bitrate = this.mode === 'bitrate';
    this.bitrateField.hidden = !bitrate;
    this.qualityField.hidden = bitrate;
  }

  /** Applies the server's ranges and choices (GET /limits .options). */
  configure(limits) {
    const o = (limits && limits.options) || DEFAULT_LIMITS.options;
    this.ranges = {
      quality: o.quality || DEFAULT_LIMITS.options.quality,
      bitrate: o.bitrate_kbps || DEFAULT_LIMITS.options.bitrate_kbps,
    };
    this.quality.min = String(this.ranges.quality.min);
    this.quality.max = String(this.ranges.quality.max);
    const rates = BITRATES.filter((b) => b >= this.ranges.bitrate.min && b <= this.ranges.bitrate.max);
    fillSelect(this.bitrate, rates.length ? rates : [this.ranges.bitrate.min], (b) => `${b} kb/s`, 192);
    fillSelect(this.channels, o.channels || DEFAULT_LIMITS.options.channels, (c) => CHANNEL_LABELS[c] || c, 'source');
    fillSelect(this.sampleRate, o.sample_rate || DEFAULT_LIMITS.options.sample_rate, sampleRateLabel, 'source');
  }

  setError(input, message) {
    const error = document.getElementById(`${input.id}-error`);
    if (message) input.setAttribute('aria-invalid', 'true');
    else input.removeAttribute('aria-invalid');
    if (error) error.textContent = message || '';
  }

  /**
   * Validates the form; returns the multipart fields in the order they are
   * sent, or null (and marks the invalid fields, focusing the first).
   * "As source" values are not sent: leaving a field out means "as source".
   */
  read({ focus = true } = {}) {
    const fields = [];
    const invalid = [];
    const check = (input, message) => {
      this.setError(input, message);
      if (message) invalid.push(input);
    };

    if (this.mode === 'bitrate') {
      const { min, max } = this.ranges.bitrate;
      const b = Number(this.bitrate.value);
      check(this.bitrate, Number.isInteger(b) && b >= min && b <= max ? '' : `Choose a bitrate from ${min} to ${max} kb/s.`);
      fields.push(['bitrate', String(b)]);
      this.setError(this.quality, '');
    } else {
      const { min, max } = this.ranges.quality;
      const text = this.quality.value.trim();
      const v = Number(text);
      check(this.quality, text !== '' && Number.isInteger(v) && v >= min && v <= max ? '' : `Quality is a whole number from ${min} (best) to ${max} (smallest).`);
      fields.push(['quality', String(v)]);
      this.setError(this.bitrate, '');
    }
    if (this.channels.value && this.channels.value !== 'source') fields.push(['channels', this.channels.value]);
    if (this.sampleRate.value && this.sampleRate.value !== 'source') fields.push(['sample_rate', this.sampleRate.value]);

    const start = parseSeconds(this.trimStart.value);
    const end = parseSeconds(this.trimEnd.value);
    check(this.trimStart, Number.isNaN(start) ? 'Trim start is a number of seconds, like 1.5.' : '');
    let endError = '';
    if (Number.isNaN(end)) endError = 'Trim end is a number of seconds, like 90.';
    else if (end === 0) endError = 'Trim end must be after the start of the video.';
    else if (end != null && start != null && !Number.isNaN(start) && end <= start) endError = 'Trim end must be after trim start.';
    check(this.trimEnd, endError);
    if (start != null && !Number.isNaN(start)) fields.push(['trim_start', String(start)]);
    if (end != null && !Number.isNaN(end)) fields.push(['trim_end', String(end)]);

    if (invalid.length) {
      this.summary.textContent = 'Fix the options above, then pick the videos again.';
      if (focus) invalid[0].focus();
      return null;
    }
    this.summary.textContent = '';
    return fields;
  }
}

const STATE_TEXT = {
  waiting: 'Waiting',
  uploading: 'Uploading',
  done: 'Uploaded',
  failed: 'Failed',
  cancelled: 'Cancelled',
};

// A finished row lingers briefly (its job now shows in the list below).
const DONE_ROW_MS = 5000;

export class UploadQueue {
  /**
   * @param {HTMLElement} list the <ul> of upload rows
   * @param {{limits: () => object, onUploaded: (job: object) => void,
   *          announce: (message: string, kind?: string) => void}} hooks
   */
  constructor(list, hooks) {
    this.list = list;
    this.hooks = hooks;
    this.uploads = [];
  }

  /** Uploads still waiting or in flight (e.g. to warn before leaving). */
  get active() {
    return this.uploads.filter((u) => u.state === 'waiting' || u.state === 'uploading').length;
  }

  add(files, fields) {
    const limit = this.hooks.limits().max_upload_bytes;
    for (const file of files) {
      const upload = this.createRow(file, fields);
      this.uploads.push(upload);
      this.list.append(upload.row);
      // Refused here rather than after sending gigabytes the server would refuse.
      if (limit && file.size > limit) {
        this.finish(upload, 'failed', `${formatBytes(file.size)} is too large (limit ${formatLimit(limit)}).`);
        upload.retry.hidden = true; // it would only be refused again
        this.hooks.announce(`${file.name} is too large (limit ${formatLimit(limit)}).`, 'error');
      } else {
        this.setState(upload, 'waiting');
      }
    }
    this.pump();
  }

  /** Starts waiting uploads while fewer than max_uploads_at_once run. */
  pump() {
    const max = Math.max(1, Number(this.hooks.limits().max_uploads_at_once) || 3);
    let running = this.uploads.filter((u) => u.state === 'uploading').length;
    for (const upload of this.uploads) {
      if (running >= max) break;
      if (upload.state === 'waiting') {
        this.start(upload);
        running += 1;
      }
    }
    for (const upload of this.uploads) {
      if (upload.state === 'waiting') upload.text.textContent = `Waiting: at most ${max} uploads run at once.`;
    }
  }

  start(upload) {
    this.setState(upload, 'uploading');
    this.progress(upload, 0, 1);
    const { promise, abort } = uploadFile(upload.file, upload.fields, {
      onProgress: (sent, total) => {
        if (upload.state === 'uploading') this.progress(upload, sent, total);
      },
      onOffline: () => {
        if (upload.state === 'uploading') upload.text.textContent = 'Offline: the upload continues from where it stopped when the connection is back.';
      },
    });
    upload.abort = abort;
    promise.then(
      (job) => {
        this.finish(upload, 'done', 'Uploaded. Its conversion is listed under “Your conversions”.');
        this.hooks.onUploaded(job);
        this.hooks.announce(`${upload.file.name} uploaded; converting.`);
        setTimeout(() => this.dismiss(upload), DONE_ROW_MS);
      },
      (err) => {
        if (err && err.name === 'AbortError') {
          this.finish(upload, 'cancelled', 'Cancelled: the upload was stopped and nothing was kept.');
          return;
        }
        if (err instanceof ApiError && err.status === 401) {
          this.finish(upload, 'failed', 'Not uploaded: your session has ended.');
          return;
        }
        const message = describeError(err, this.hooks.limits());
        this.finish(upload, 'failed', message);
        this.hooks.announce(`${upload.file.name}: ${message}`, 'error');
      },
    ).finally(() => this.pump());
  }

  cancel(upload) {
    if (upload.state === 'waiting') {
      this.finish(upload, 'cancelled', 'Cancelled before it started.');
    } else if (upload.state === 'uploading' && upload.abort) {
      upload.abort(); // the promise rejects with AbortError and finishes the row
    }
  }

  /** Stops everything (sign-out, ended session) and clears the rows. */
  cancelAll() {
    for (const upload of this.uploads) {
      if (upload.abort && upload.state === 'uploading') upload.abort();
      upload.state = 'cancelled';
    }
    this.uploads = [];
    this.list.replaceChildren();
  }

  retry(upload) {
    this.setState(upload, 'waiting');
    upload.text.textContent = '';
    this.pump();
  }

  dismiss(upload) {
    upload.row.remove();
    this.uploads = this.uploads.filter((u) => u !== upload);
  }

  createRow(file, fields) {
    const el = (tag, className, text) => {
      const n = document.createElement(tag);
      if (className) n.className = className;
      if (text != null) n.textContent = text;
      return n;
    };
    const row = el('li', 'upload card');
    const head = el('div', 'upload-head');
    const name = el('span', 'upload-name', file.name);
    const state = el('span', 'badge');
    head.append(name, state);
    const bar = el('progress');
    bar.max = 100;
    bar.value = 0;
    bar.setAttribute('aria-label', `Upload progress of ${file.name}`);
    const text = el('p', 'upload-text muted');
    const actions = el('div', 'upload-actions');
    const cancel = el('button', 'button', 'Cancel');
    cancel.type = 'button';
    cancel.setAttribute('aria-label', `Cancel upload of ${file.name}`);
    const retry = el('button', 'button', 'Retry');
    retry.type = 'button';
    retry.setAttribute('aria-label', `Retry upload of ${file.name}`);
    const dismiss = el('button', 'button', 'Dismiss');
    dismiss.type = 'button';
    dismiss.setAttribute('aria-label', `Dismiss ${file.name}`);
    actions.append(cancel, retry, dismiss);
    row.append(head, bar, text, actions);

    const upload = { file, fields, row, state: 'new', badge: state, bar, text, cancel, retry, dismiss, abort: null };
    cancel.addEventListener('click', () => this.cancel(upload));
    retry.addEventListener('click', () => this.retry(upload));
    dismiss.addEventListener('click', () => this.dismiss(upload));
    return upload;
  }

  setState(upload, state) {
    upload.state = state;
    upload.row.dataset.state = state;
    upload.badge.textContent = STATE_TEXT[state] || state;
    upload.badge.className = `badge badge-upload-${state}`;
    const finished = state === 'done' || state === 'failed' || state === 'cancelled';
    upload.cancel.hidden = !(state === 'waiting' || state === 'uploading');
    upload.retry.hidden = !(state === 'failed' || state === 'cancelled');
    upload.dismiss.hidden = !finished || state === 'done';
    upload.bar.hidden = state === 'failed' || state === 'cancelled';
    // Keep keyboard focus somewhere sensible when the focused button hides.
    if (upload.row.contains(document.activeElement) && document.activeElement.hidden) {
      const visible = [upload.retry, upload.dismiss].find((b) => !b.hidden);
      if (visible) visible.focus();
    }
  }

  progress(upload, loaded, total) {
    const fraction = total > 0 ? Math.min(1, loaded / total) : 0;
    upload.bar.value = fraction * 100;
    const sent = Math.round(fraction * upload.file.size);
    upload.text.textContent = `${formatBytes(sent)} of ${formatBytes(upload.file.size)} sent (${formatPercent(fraction * 100)})`;
  }

  finish(upload, state, message) {
    this.setState(upload, state);
    upload.text.textContent = message;
  }
}
