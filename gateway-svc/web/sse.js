// Server-Sent Events over fetch(). EventSource cannot send an Authorization
// header, and the token must not go into the URL, so the stream is read with
// fetch() + a reader and parsed here, following the WHATWG event-stream rules.

import { parseRetryAfter, reportUnauthorized, session } from './api.js';

/**
 * Incremental event-stream parser: feed it decoded text in any chunking, it
 * calls onEvent({type, data, id}) for each complete event.
 */
export class SseParser {
  constructor(onEvent) {
    this.onEvent = onEvent;
    this.buffer = '';
    this.reset();
    this.lastEventId = '';
    this.retry = null;
  }

  reset() {
    this.type = '';
    this.data = [];
    this.hasData = false;
  }

  push(text) {
    this.buffer += text;
    // Lines end with CRLF, LF or CR. A CR at the very end may be the first
    // half of a CRLF split across chunks, so it waits for the next chunk.
    const eol = /\r\n|\n|\r/g;
    let start = 0;
    let m;
    while ((m = eol.exec(this.buffer)) !== null) {
      if (m[0] === '\r' && m.index === this.buffer.length - 1) break;
      this.line(this.buffer.slice(start, m.index));
      start = eol.lastIndex;
    }
    this.buffer = this.buffer.slice(start);
  }

  line(line) {
    if (line === '') {
      this.dispatch();
      return;
    }
    if (line.startsWith(':')) return; // a comment, e.g. ": keep-alive"
    const colon = line.indexOf(':');
    const field = colon === -1 ? line : line.slice(0, colon);
    let value = colon === -1 ? '' : line.slice(colon + 1);
    if (value.startsWith(' ')) value = value.slice(1);
    switch (field) {
      case 'event':
        this.type = value;
        break;
      case 'data':
        this.data.push(value);
        this.hasData = true;
        break;
      case 'id':
        if (!value.includes('\0')) this.lastEventId = value;
        break;
      case 'retry':
        if (/^\d+$/.test(value)) this.retry = Number(value);
        break;
      default:
        // Unknown fields are ignored, as the spec says.
        break;
    }
  }

  dispatch() {
    if (this.hasData) {
      this.onEvent({ type: this.type || 'message', data: this.data.join('\n'), id: this.lastEventId });
    }
    this.reset();
  }
}

const BACKOFF_MS = [1000, 2000, 4000, 8000, 15000];
// A connection that lived this long (or delivered an event) was healthy: the
// next failure starts the backoff again from 1 s.
const HEALTHY_AFTER_MS = 15000;

/**
 * Keeps GET /jobs/events open while signed in: reconnects with backoff when
 * the stream ends or fails, and stops on 401 (after reporting it) or close().
 *
 * @param {{onEvent: (e: {type: string, data: string, id: string}) => void,
 *          onOpen: (reconnected: boolean) => void,
 *          onDown: () => void}} handlers
 *   onOpen runs on every successful (re)connection; onDown each time the
 *   stream is lost, so the caller can refresh by other means meanwhile.
 * @returns {{close: () => void}}
 */
export function connectJobEvents({ onEvent, onOpen, onDown }) {
  let closed = false;
  let controller = null;
  let timer = null;
  let attempt = 0;
  let opened = 0;
  let lastEventId = '';

  async function run() {
    if (closed) return;
    const s = session.get();
    if (!s) return;
    controller = new AbortController();
    let healthy = false;
    let retryAfter = null;
    const parser = new SseParser((e) => {
      healthy = true;
      try {
        onEvent(e);
      } catch (err) {
        // A bug in a handler must not tear the stream down into a reconnect
        // loop; rethrown outside, it still shows up as an uncaught error.
        setTimeout(() => {
          throw err;
        });
      }
    });
    parser.lastEventId = lastEventId;
    const startedAt = Date.now();
    try {
      const headers = { Authorization: `Bearer ${s.token}`, Accept: 'text/event-stream' };
      if (lastEventId) headers['Last-Event-ID'] = lastEventId;
      const res = await fetch('/jobs/events', {
        headers,
        cache: 'no-store',
        credentials: 'omit',
        signal: controller.signal,
      });
      if (res.status === 401) {
        reportUnauthorized();
        return;
      }
      if (!res.ok || !res.body) {
        retryAfter = parseRetryAfter(res.headers.get('retry-after'));
        throw new Error(`HTTP ${res.status}`);
      }
      onOpen(opened > 0);
      opened += 1;
      const reader = res.body.getReader();
      const decoder = new TextDecoder();
      for (;;) {
        const { value, done } = await reader.read();
        if (done) break;
        parser.push(decoder.decode(value, { stream: true }));
        lastEventId = parser.lastEventId;
      }
    } catch {
      // Network failure, non-200, or abort: all handled below.
    }
    if (closed) return;
    if (healthy || Date.now() - startedAt >= HEALTHY_AFTER_MS) attempt = 0;
    let delay = BACKOFF_MS[Math.min(attempt, BACKOFF_MS.length - 1)];
    if (parser.retry != null) delay = Math.max(delay, Math.min(parser.retry, 15000));
    if (retryAfter != null) delay = Math.max(delay, Math.min(retryAfter * 1000, 60000));
    attempt += 1;
    onDown();
    timer = setTimeout(run, delay);
  }

  run();
  return {
    close() {
      closed = true;
      clearTimeout(timer);
      if (controller) controller.abort();
    },
  };
}
