// The person's jobs: a store fed by GET /jobs and the event stream, and the
// list that shows it. The list updates elements in place (never rebuilds
// them), so a focused button keeps its focus while progress ticks.

import {
  describeOptions,
  formatBytes,
  formatDateTime,
  formatDuration,
  formatPercent,
  formatRelative,
  mp3Name,
} from './format.js';

function time(job) {
  const t = Date.parse(job && job.updated_at);
  return Number.isNaN(t) ? -Infinity : t;
}

/** Newest first by created_at; the id breaks ties so the order is stable. */
function newerFirst(a, b) {
  const ta = Date.parse(a.created_at) || 0;
  const tb = Date.parse(b.created_at) || 0;
  if (ta !== tb) return tb - ta;
  return a.job_id < b.job_id ? 1 : a.job_id > b.job_id ? -1 : 0;
}

export class JobStore {
  constructor() {
    this.jobs = new Map();
    this.listeners = new Set();
    // Ids written since the last full refresh started: a refresh must not
    // drop a job the stream announced while the GET /jobs was in flight.
    this.touched = null;
  }

  subscribe(fn) {
    this.listeners.add(fn);
  }

  emit(change) {
    for (const fn of this.listeners) fn(change);
  }

  /** Adds or updates a job; an update older than what is held is ignored. */
  upsert(job) {
    if (!job || typeof job.job_id !== 'string' || !job.job_id) return;
    const previous = this.jobs.get(job.job_id);
    // Equal timestamps are applied: progress ticks can share a second.
    if (previous && time(job) < time(previous)) return;
    this.jobs.set(job.job_id, job);
    if (this.touched) this.touched.add(job.job_id);
    this.emit({ type: 'upsert', job, previous });
  }

  remove(jobId) {
    const previous = this.jobs.get(jobId);
    if (!previous) return;
    this.jobs.delete(jobId);
    if (this.touched) this.touched.add(jobId);
    this.emit({ type: 'remove', job: previous });
  }

  /** Call before GET /jobs; pass the answer to endRefresh. */
  beginRefresh() {
    this.touched = new Set();
  }

  /** The GET /jobs failed: nothing to apply. */
  abortRefresh() {
    this.touched = null;
  }

  /**
   * Applies a full listing. Jobs missing from it were deleted meanwhile,
   * unless the listing is only the first page or the stream touched them
   * since the refresh began.
   */
  endRefresh(jobs, complete) {
    const touched = this.touched || new Set();
    this.touched = null;
    const seen = new Set();
    for (const job of jobs) {
      if (!job || !job.job_id) continue;
      seen.add(job.job_id);
      if (!touched.has(job.job_id)) this.upsert(job);
    }
    if (!complete) return;
    for (const id of [...this.jobs.keys()]) {
      if (!seen.has(id) && !touched.has(id)) this.remove(id);
    }
  }

  clear() {
    for (const id of [...this.jobs.keys()]) this.remove(id);
  }
}

const STATE_LABELS = {
  queued: 'Queued',
  converting: 'Converting',
  done: 'Done',
  failed: 'Failed',
};

function el(tag, className, text) {
  const node = document.createElement(tag);
  if (className) node.className = className;
  if (text != null) node.textContent = text;
  return node;
}

/** Builds one job's element once; returns it with an update(job) function. */
function createJobItem(job, { onDownload, onDelete }) {
  const item = el('li', 'job card');
  item.dataset.jobId = job.job_id;

  const head = el('div', 'job-head');
  const name = el('span', 'job-name');
  const badge = el('span', 'badge');
  head.append(name, badge);

  const meta = el('p', 'job-meta muted');

  const progressRow = el('div', 'job-progress');
  const progress = el('progress');
  progress.max = 100;
  const percent = el('span', 'job-percent');
  progressRow.append(progress, percent);

  const failure = el('p', 'job-failure');
  const result = el('p', 'job-result muted');
  const expiry = el('p', 'job-expiry muted');

  const actions = el('div', 'job-actions');
  const download = el('button', 'button primary', 'Download');
  download.type = 'button';
  const remove = el('button', 'button danger-outline', 'Delete');
  remove.type = 'button';
  actions.append(download, remove);

  item.append(head, meta, progressRow, failure, result, expiry, actions);

  let current = job;
  download.addEventListener('click', async () => {
    download.disabled = true;
    download.textContent = 'Downloading…';
    try {
      await onDownload(current);
    } finally {
      download.disabled = false;
      download.textContent = 'Download';
    }
  });
  remove.addEventListener('click', () => onDelete(current));

  function refreshExpiry() {
    const at = formatDateTime(current.expires_at);
    if (!at) {
      expiry.hidden = true;
      return;
    }
    expiry.hidden = false;
    const past = Date.parse(current.expires_at) <= Date.now();
    expiry.textContent = past ? `Expired (${at})` : `Expires ${formatRelative(current.expires_at)} (${at})`;
  }

  function update(next) {
    current = next;
    const state = String(next.state || 'unknown');
    item.dataset.state = state;
    name.textContent = next.filename || '(no name)';
    badge.textContent = STATE_LABELS[state] || state;
    badge.className = `badge badge-${STATE_LABELS[state] ? state : 'other'}`;

    const metaParts = [formatBytes(next.size_bytes), formatDateTime(next.created_at) && `uploaded ${formatDateTime(next.created_at)}`, describeOptions(next.options)];
    meta.textContent = metaParts.filter(Boolean).join(' · ');

    const converting = state === 'converting';
    progressRow.hidden = !converting;
    if (converting) {
      const p = Number(next.progress);
      if (next.progress != null && Number.isFinite(p)) {
        progress.value = Math.min(100, Math.max(0, p));
        percent.textContent = formatPercent(p);
      } else {
        // No figure yet: an indeterminate bar rather than a misleading 0 %.
        progress.removeAttribute('value');
        percent.textContent = 'starting…';
      }
    }
    progress.setAttribute('aria-label', `Conversion progress of ${next.filename || 'the video'}`);

    failure.hidden = state !== 'failed';
    if (state === 'failed') {
      failure.textContent = next.failure_reason ? `Could not convert: ${next.failure_reason}` : 'Could not convert (no reason given).';
    }

    const done = state === 'done' && Boolean(next.mp3_id);
    result.hidden = !done;
    if (done) {
      const parts = ['MP3', formatBytes(next.mp3_size_bytes), formatDuration(next.duration_seconds)];
      const notes = Array.isArray(next.notes) ? next.notes : [];
      result.textContent = [parts.filter(Boolean).join(' · '), ...notes.map((n) => `Note: ${n}`)].join(' — ');
    }
    download.hidden = !done;
    download.setAttribute('aria-label', `Download ${mp3Name(next.filename)}`);
    remove.setAttribute('aria-label', `Delete ${next.filename || 'this job'}`);
    refreshExpiry();
  }

  update(job);
  return { item, update, refreshExpiry, job: () => current };
}

export class JobList {
  /**
   * @param {HTMLElement} list the <ul>
   * @param {HTMLElement} empty shown when there are no jobs
   * @param {JobStore} store
   * @param {{onDownload: (job) => Promise<void>, onDelete: (job) => void}} actions
   */
  constructor(list, empty, store, actions) {
    this.list = list;
    this.empty = empty;
    this.actions = actions;
    this.items = new Map();
    store.subscribe((change) => this.apply(change));
    // Relative expiry times ("in 3 hours") go stale; a minute is fine-grained enough.
    setInterval(() => {
      for (const entry of this.items.values()) entry.refreshExpiry();
    }, 60000);
    this.updateEmpty();
  }

  apply({ type, job }) {
    if (type === 'remove') {
      const entry = this.items.get(job.job_id);
      if (entry) {
        entry.item.remove();
        this.items.delete(job.job_id);
      }
    } else {
      const entry = this.items.get(job.job_id);
      if (entry) entry.update(job);
      else this.insert(job);
    }
    this.updateEmpty();
  }

  insert(job) {
    const entry = createJobItem(job, this.actions);
    this.items.set(job.job_id, entry);
    // Keep newest first: place before the first item that sorts after it.
    let before = null;
    for (const child of this.list.children) {
      const other = this.items.get(child.dataset.jobId);
      if (other && newerFirst(job, other.job()) < 0) {
        before = child;
        break;
      }
    }
    this.list.insertBefore(entry.item, before);
  }

  updateEmpty() {
    this.empty.hidden = this.items.size > 0;
  }
}
