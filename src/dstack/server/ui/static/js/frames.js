// A streaming reader of the attach stream (see dstack/core/frames.py): each frame is 1 byte kind, 4 bytes
// big-endian length, payload. Log frames ("L") start with an 8-byte offset; their bytes are handed on as
// they arrive, without waiting for the whole frame (a frame may be megabytes).

const LOG = 0x4c; // L
const STATUS = 0x53; // S
const END = 0x45; // E
const HEARTBEAT = 0x48; // H

export class FrameReader {
  /** handlers: {log(offset, bytes), status(object), end(object), heartbeat()} */
  constructor(handlers) {
    this.handlers = handlers;
    this.header = new Uint8Array(13);
    this.headerFill = 0;
    this.kind = 0;
    this.remaining = 0; // payload bytes of the current frame still to come
    this.offset = 0; // of the next log byte
    this.json = null; // the payload of a JSON frame being gathered
    this.jsonFill = 0;
    this.decoder = new TextDecoder();
  }

  push(chunk) {
    let i = 0;
    while (i < chunk.length) {
      if (this.remaining === 0 && this.json === null) {
        // Reading a header: 5 bytes, and 8 more for a log frame.
        const need = this.headerFill < 5 ? 5 : 13;
        const take = Math.min(need - this.headerFill, chunk.length - i);
        this.header.set(chunk.subarray(i, i + take), this.headerFill);
        this.headerFill += take;
        i += take;
        if (this.headerFill === 5) {
          this.kind = this.header[0];
          const length = new DataView(this.header.buffer).getUint32(1);
          if (this.kind === LOG) continue; // its offset comes next
          this.headerFill = 0;
          this.startPayload(length);
        } else if (this.headerFill === 13) {
          const view = new DataView(this.header.buffer);
          const length = view.getUint32(1);
          this.offset = view.getUint32(5) * 2 ** 32 + view.getUint32(9);
          this.headerFill = 0;
          this.remaining = length - 8;
        }
        continue;
      }
      if (this.kind === LOG) {
        const take = Math.min(this.remaining, chunk.length - i);
        this.handlers.log(this.offset, chunk.subarray(i, i + take));
        this.offset += take;
        this.remaining -= take;
        i += take;
        continue;
      }
      const take = Math.min(this.json.length - this.jsonFill, chunk.length - i);
      this.json.set(chunk.subarray(i, i + take), this.jsonFill);
      this.jsonFill += take;
      i += take;
      if (this.jsonFill === this.json.length) this.finishJson();
    }
  }

  startPayload(length) {
    if (length === 0) {
      this.json = new Uint8Array(0);
      this.jsonFill = 0;
      this.finishJson();
      return;
    }
    this.json = new Uint8Array(length);
    this.jsonFill = 0;
  }

  finishJson() {
    const payload = this.json;
    this.json = null;
    if (this.kind === HEARTBEAT) {
      this.handlers.heartbeat?.();
      return;
    }
    let data = null;
    try {
      data = JSON.parse(this.decoder.decode(payload));
    } catch {
      return;
    }
    if (this.kind === STATUS) this.handlers.status?.(data);
    else if (this.kind === END) this.handlers.end?.(data);
  }
}
