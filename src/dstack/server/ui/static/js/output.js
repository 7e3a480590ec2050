// A run's live output: the attach stream (the same one `dstack attach` reads) into a Screen, drawn by a
// TermView. Bytes are turned into lines in slices of a few milliseconds, so a flood of output never
// blocks the page; if the page falls far behind a flood, it skips ahead to the tail and says how much it
// skipped (every byte stays in the downloadable log).

import { send } from "./api.js";
import { bytes } from "./format.js";
import { FrameReader } from "./frames.js";
import { Screen } from "./terminal.js";
import { TermView } from "./termview.js";

const SLICE_MS = 8; // the most one slice of work may take before the page gets to draw
const PIECE = 64 * 1024; // bytes decoded at a time
const SKIP_AT = 16 * 1024 * 1024; // behind by this much: skip ahead...
const KEEP = 2 * 1024 * 1024; // ...to this much before the tail
const IDLE_TIMEOUT = 10000; // the server sends a heartbeat every 3 s: silence this long means a dead link
const RETRY_MS = 1000;

export class LiveOutput {
  /**
   * url(offset, first): the attach stream's URL from `offset` (first: the initial connection, which asks
   * only for the tail of a long log).
   * handlers: {status(frame), end(frame), error(message)}
   */
  constructor({ url, handlers, maxLines = 10000 }) {
    this.url = url;
    this.handlers = handlers;
    this.screen = new Screen({ maxLines });
    this.view = new TermView(this.screen);
    this.element = this.view.element;
    this.queue = []; // Uint8Array chunks not turned into lines yet
    this.queued = 0;
    this.decoder = new TextDecoder("utf-8");
    this.offset = null; // of the next byte to read
    this.received = 0;
    this.skipped = 0;
    this.ended = false;
    this.stopped = false;
    this.pumping = false;
    this.controller = null;
    this.channel = new MessageChannel(); // a macrotask with no timer clamping, to yield between slices
    this.channel.port1.onmessage = () => this.pump();
  }

  start() {
    this.connect(true);
  }

  stop() {
    this.stopped = true;
    this.controller?.abort();
    this.view.destroy();
    this.channel.port1.close();
  }

  async connect(first) {
    while (!this.stopped && !this.ended) {
      this.controller = new AbortController();
      let watchdog = null;
      const kick = () => {
        clearTimeout(watchdog);
        watchdog = setTimeout(() => this.controller.abort(), IDLE_TIMEOUT);
      };
      const reader = new FrameReader({
        log: (offset, data) => this.onLog(offset, data),
        status: (frame) => this.handlers.status?.(frame),
        end: (frame) => {
          this.ended = true;
          this.handlers.end?.(frame);
        },
        heartbeat: () => {},
      });
      try {
        kick();
        const response = await send(this.url(this.offset ?? 0, first && this.offset === null), {
          signal: this.controller.signal,
        });
        const body = response.body.getReader();
        for (;;) {
          const { done, value } = await body.read();
          if (done) break;
          kick();
          reader.push(value);
        }
      } catch (error) {
        if (this.stopped) return;
        if (error.status && error.status !== 0 && error.status < 500) {
          this.handlers.error?.(error.message);
          return;
        }
      } finally {
        clearTimeout(watchdog);
      }
      if (this.ended || this.stopped) return;
      first = false;
      await new Promise((resolve) => setTimeout(resolve, RETRY_MS)); // then resume from this.offset
    }
  }

  onLog(offset, data) {
    if (this.offset !== null && offset !== this.offset) {
      // A reconnect resumed elsewhere than expected (it never should): say so rather than mislead.
      if (offset > this.offset) this.noteSkip(offset - this.offset);
    }
    this.offset = offset + data.length;
    this.received += data.length;
    this.queue.push(data);
    this.queued += data.length;
    if (this.queued > SKIP_AT) this.skipAhead();
    if (!this.pumping) {
      this.pumping = true;
      this.channel.port2.postMessage(0);
    }
  }

  skipAhead() {
    // Keep the tail the screen can show (half its lines, at most KEEP bytes), from a line's start.
    const want = Math.max(1, Math.floor(this.screen.maxLines / 2));
    let lines = 0;
    let scanned = 0;
    let cut = null; // [chunk, byte]: the first byte kept
    search: for (let c = this.queue.length - 1; c >= 0; c--) {
      const chunk = this.queue[c];
      let before = chunk.length;
      while (before > 0) {
        const newline = chunk.lastIndexOf(0x0a, before - 1);
        if (newline < 0) break;
        lines += 1;
        if (lines > want || scanned + (chunk.length - newline) > KEEP) {
          cut = [c, newline + 1];
          break search;
        }
        before = newline;
      }
      if (scanned + chunk.length > KEEP) {
        cut = [c, chunk.length - (KEEP - scanned)]; // no line start within KEEP: cut inside the line
        break;
      }
      scanned += chunk.length;
    }
    if (cut === null) return;
    const [index, start] = cut;
    let dropped = start;
    for (let c = 0; c < index; c++) dropped += this.queue[c].length;
    if (dropped === 0) return;
    this.queue = [this.queue[index].subarray(start), ...this.queue.slice(index + 1)];
    this.queued -= dropped;
    this.noteSkip(dropped);
  }

  noteSkip(count) {
    this.skipped += count;
    this.decoder = new TextDecoder("utf-8");
    this.screen.resetParser();
    this.screen.notice(`… ${bytes(count)} of output skipped here to keep up (the whole log is in the download) …`);
  }

  pump() {
    const deadline = performance.now() + SLICE_MS;
    while (this.queue.length > 0 && performance.now() < deadline) {
      let chunk = this.queue[0];
      if (chunk.length > PIECE) {
        this.queue[0] = chunk.subarray(PIECE);
        chunk = chunk.subarray(0, PIECE);
      } else {
        this.queue.shift();
      }
      this.queued -= chunk.length;
      this.screen.write(this.decoder.decode(chunk, { stream: true }));
    }
    this.view.schedule();
    if (this.queue.length > 0 && !this.stopped) {
      this.channel.port2.postMessage(0);
    } else {
      this.pumping = false;
    }
  }
}
