// Pure formatting helpers: no DOM, no network, so they are easy to reason about.

const UNITS = ['bytes', 'KB', 'MB', 'GB', 'TB'];

/** 2147483648 → "2 GiB"-style text, but in the decimal-free units people read: "2.1 GB". */
export function formatBytes(n) {
  if (!Number.isFinite(n) || n < 0) return '';
  if (n < 1000) return `${n} ${n === 1 ? 'byte' : 'bytes'}`;
  let i = 0;
  let v = n;
  while (v >= 1000 && i < UNITS.length - 1) {
    v /= 1000;
    i += 1;
  }
  // One decimal below 10 ("4.2 MB"), none above ("420 MB"), and never "2.0".
  const digits = v < 10 ? 1 : 0;
  return `${Number(v.toFixed(digits))} ${UNITS[i]}`;
}

/**
 * Limits are usually powers of two (2147483648); say them the way the
 * operator configured them ("2 GiB") rather than as "2.1 GB".
 */
export function formatLimit(n) {
  if (!Number.isFinite(n) || n <= 0) return '';
  const bin = ['bytes', 'KiB', 'MiB', 'GiB', 'TiB'];
  let i = 0;
  let v = n;
  while (v >= 1024 && v % 1024 === 0 && i < bin.length - 1) {
    v /= 1024;
    i += 1;
  }
  return i === 0 ? formatBytes(n) : `${v} ${bin[i]}`;
}

/** Whole percent, floored so a job at 99.6 % never reads "100 %" before it is done. */
export function formatPercent(p) {
  const clamped = Math.min(100, Math.max(0, Number(p) || 0));
  return `${Math.floor(clamped)} %`;
}

/** "holiday.mkv" → "holiday.mp3"; "notes" → "notes.mp3"; ".hidden" → ".hidden.mp3". */
export function mp3Name(filename) {
  // Only the last path segment: a name is never a path on the user's disk.
  const base = String(filename || '').split(/[\\/]/).pop().trim() || 'audio';
  const dot = base.lastIndexOf('.');
  const stem = dot > 0 ? base.slice(0, dot) : base;
  return `${stem}.mp3`;
}

/** 83.4 → "1:23"; 3723 → "1:02:03". */
export function formatDuration(seconds) {
  if (!Number.isFinite(seconds) || seconds < 0) return '';
  const s = Math.round(seconds);
  const h = Math.floor(s / 3600);
  const m = Math.floor((s % 3600) / 60);
  const ss = String(s % 60).padStart(2, '0');
  return h > 0 ? `${h}:${String(m).padStart(2, '0')}:${ss}` : `${m}:${ss}`;
}

const dateTime = new Intl.DateTimeFormat(undefined, { dateStyle: 'medium', timeStyle: 'short' });
const relative = new Intl.RelativeTimeFormat(undefined, { numeric: 'auto' });

/** An RFC 3339 string → local "1 Dec 2026, 21:00", or '' when absent or unparsable. */
export function formatDateTime(rfc3339) {
  const t = Date.parse(rfc3339 || '');
  return Number.isNaN(t) ? '' : dateTime.format(t);
}

/** "in 3 days", "in 5 hours", "in 12 minutes" relative to now. */
export function formatRelative(rfc3339, now = Date.now()) {
  const t = Date.parse(rfc3339 || '');
  if (Number.isNaN(t)) return '';
  const diff = (t - now) / 1000;
  const abs = Math.abs(diff);
  if (abs < 60) return relative.format(Math.round(diff), 'second');
  if (abs < 3600) return relative.format(Math.round(diff / 60), 'minute');
  if (abs < 86400) return relative.format(Math.round(diff / 3600), 'hour');
  return relative.format(Math.round(diff / 86400), 'day');
}

/** The options a job was converted with, as a short line: "VBR quality 2 · mono · 44.1 kHz · 1.5 s–10 s". */
export function describeOptions(options) {
  if (!options || typeof options !== 'object') return '';
  const parts = [];
  if (options.bitrate_kbps != null) parts.push(`${options.bitrate_kbps} kb/s`);
  else if (options.quality != null) parts.push(`VBR quality ${options.quality}`);
  if (options.channels && options.channels !== 'source') parts.push(String(options.channels));
  if (options.sample_rate && options.sample_rate !== 'source') {
    const hz = Number(options.sample_rate);
    parts.push(Number.isFinite(hz) ? `${hz / 1000} kHz` : String(options.sample_rate));
  }
  const start = options.trim_start;
  const end = options.trim_end;
  if (start != null || end != null) {
    parts.push(`trim ${start != null ? `${start} s` : 'start'}–${end != null ? `${end} s` : 'end'}`);
  }
  return parts.join(' · ');
}
