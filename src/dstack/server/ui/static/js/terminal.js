// A terminal's screen for a task's output: lines of styled text, written through a small ANSI parser.
//
// What it honours: SGR colours and attributes (16, 256 and 24-bit colours, bold, dim, italic, underline,
// inverse, strike), "\r" (back to the line's start, so tqdm-style progress bars redraw in place), "\n",
// backspace, tabs, erase in line (CSI K), cursor up/down/forward/back/column (CSI A B C D G; multi-bar
// progress output moves up and redraws). Other sequences (OSC titles, modes, ...) are read and dropped.
//
// What it bounds: the lines kept (older ones are dropped from the top; the whole log is a download away)
// and a line's length (longer lines wrap, as a terminal wraps them).
//
// Pure: no DOM. The view (termview.js) reads `lines`, `base` and each line's version `v`.

const GROUND = 0;
const ESCAPE = 1;
const CSI = 2;
const OSC = 3;
const SKIP_ONE = 4; // ESC ( B and friends: one more character, then done
const OSC_ESCAPE = 5; // ESC inside an OSC: the start of its ST terminator

// Control characters and ESC: everything else is printable text.
const CONTROL = /[\x00-\x1f\x7f]/g;

export class Line {
  constructor() {
    this.segs = []; // [{t: text, s: style id}]
    this.len = 0;
    this.v = 0; // bumped on every change, so the view redraws only what changed
  }

  text() {
    let out = "";
    for (const seg of this.segs) out += seg.t;
    return out;
  }
}

export class Style {
  constructor(fg, bg, flags) {
    this.fg = fg; // null (default), 0-255, or "#rrggbb"
    this.bg = bg;
    this.flags = flags; // bitmask of BOLD, DIM, ...
  }
}

export const BOLD = 1;
export const DIM = 2;
export const ITALIC = 4;
export const UNDERLINE = 8;
export const INVERSE = 16;
export const STRIKE = 32;

export class Screen {
  constructor({ maxLines = 10000, maxColumns = 2000 } = {}) {
    this.maxLines = maxLines;
    this.maxColumns = maxColumns;
    this.lines = [new Line()];
    this.base = 0; // absolute number of lines[0]: lines dropped from the top so far
    this.row = 0; // the cursor, as an absolute line number
    this.col = 0;
    this.styles = [new Style(null, null, 0)];
    this.styleIds = new Map([["||0", 0]]);
    this.style = 0;
    this.fg = null;
    this.bg = null;
    this.flags = 0;
    this.state = GROUND;
    this.params = "";
    this.version = 0; // bumped on every write that changed something
  }

  get lineCount() {
    return this.base + this.lines.length;
  }

  line(absolute) {
    return this.lines[absolute - this.base];
  }

  /** Every line's text (for tests and copying); "\n" between lines. */
  text() {
    return this.lines.map((line) => line.text()).join("\n");
  }

  write(text) {
    let i = 0;
    const n = text.length;
    while (i < n) {
      if (this.state !== GROUND) {
        i = this.escape(text, i);
        continue;
      }
      CONTROL.lastIndex = i;
      const match = CONTROL.exec(text);
      const end = match ? match.index : n;
      if (end > i) this.print(i === 0 && end === n ? text : text.slice(i, end));
      if (!match) break;
      this.control(text.charCodeAt(end));
      i = end + 1;
    }
    this.version += 1;
    this.trim();
  }

  /** A line of the viewer's own (e.g. "... 40 MB skipped ..."), shown dim, on a line of its own. */
  notice(text) {
    if (this.current().len > 0) this.newline();
    const saved = [this.fg, this.bg, this.flags];
    this.fg = null;
    this.bg = null;
    this.flags = DIM | ITALIC;
    this.updateStyle();
    this.print(text);
    [this.fg, this.bg, this.flags] = saved;
    this.updateStyle();
    this.newline();
    this.version += 1;
  }

  /** Forget the state of escape sequences and styles (after output was skipped). */
  resetParser() {
    this.state = GROUND;
    this.params = "";
    this.fg = null;
    this.bg = null;
    this.flags = 0;
    this.updateStyle();
  }

  // -- text --------------------------------------------------------------------------------------------

  current() {
    return this.lines[this.row - this.base];
  }

  print(text) {
    let rest = text;
    while (rest.length > 0) {
      let room = this.maxColumns - this.col;
      if (room <= 0) {
        this.newline(); // autowrap
        room = this.maxColumns;
      }
      const piece = rest.length <= room ? rest : rest.slice(0, room);
      rest = rest.length <= room ? "" : rest.slice(room);
      this.put(this.current(), piece);
    }
  }

  put(line, piece) {
    const col = this.col;
    if (col >= line.len) {
      if (col > line.len) appendSeg(line, " ".repeat(col - line.len), 0);
      appendSeg(line, piece, this.style);
    } else {
      replaceRange(line, col, col + piece.length, piece, this.style);
    }
    this.col = col + piece.length;
    line.v += 1;
  }

  newline() {
    this.row += 1;
    this.col = 0;
    if (this.row - this.base >= this.lines.length) this.lines.push(new Line());
  }

  control(code) {
    switch (code) {
      case 0x0a: // \n: pipes carry no terminal that adds "\r", so a newline starts the line too
        this.newline();
        break;
      case 0x0d: // \r
        this.col = 0;
        break;
      case 0x08: // backspace
        if (this.col > 0) this.col -= 1;
        break;
      case 0x09: // tab
        this.col = Math.min(this.maxColumns, (Math.floor(this.col / 8) + 1) * 8);
        break;
      case 0x1b:
        this.state = ESCAPE;
        break;
      default: // BEL and the rest: nothing to show
        break;
    }
  }

  // -- escape sequences --------------------------------------------------------------------------------

  escape(text, i) {
    const n = text.length;
    if (this.state === ESCAPE) {
      const c = text[i];
      if (c === "[") {
        this.state = CSI;
        this.params = "";
      } else if (c === "]") {
        this.state = OSC;
      } else if (c === "(" || c === ")" || c === "*" || c === "+" || c === "#" || c === "%") {
        this.state = SKIP_ONE;
      } else {
        this.state = GROUND; // ESC 7, ESC 8, ESC = ... : nothing to show
      }
      return i + 1;
    }
    if (this.state === SKIP_ONE) {
      this.state = GROUND;
      return i + 1;
    }
    if (this.state === OSC || this.state === OSC_ESCAPE) {
      for (let j = i; j < n; j++) {
        const code = text.charCodeAt(j);
        if (this.state === OSC_ESCAPE) {
          this.state = code === 0x5c ? GROUND : OSC; // ESC \ ends it
          if (this.state === GROUND) return j + 1;
        } else if (code === 0x07) {
          this.state = GROUND;
          return j + 1;
        } else if (code === 0x1b) {
          this.state = OSC_ESCAPE;
        }
      }
      return n;
    }
    // CSI: parameters and intermediates (0x20-0x3f), then a final byte (0x40-0x7e).
    for (let j = i; j < n; j++) {
      const code = text.charCodeAt(j);
      if (code >= 0x40 && code <= 0x7e) {
        this.params += text.slice(i, j);
        this.state = GROUND;
        this.csi(text[j], this.params);
        this.params = "";
        return j + 1;
      }
      if (code < 0x20 || code > 0x7e) {
        // A control character inside a sequence: drop the sequence, handle the character.
        this.state = GROUND;
        this.params = "";
        return j;
      }
    }
    this.params += text.slice(i);
    if (this.params.length > 64) {
      this.state = GROUND; // not a real sequence
      this.params = "";
    }
    return n;
  }

  csi(final, params) {
    if (params.startsWith("?") || params.startsWith(">") || params.startsWith("=")) return; // modes
    const first = params === "" ? NaN : parseInt(params, 10);
    const count = Number.isNaN(first) || first < 1 ? 1 : first;
    switch (final) {
      case "m":
        this.sgr(params);
        break;
      case "K":
        this.eraseInLine(Number.isNaN(first) ? 0 : first);
        break;
      case "A":
        this.row = Math.max(this.base, this.row - count);
        break;
      case "B":
        this.row = Math.min(this.base + this.lines.length - 1, this.row + count);
        break;
      case "C":
        this.col = Math.min(this.maxColumns, this.col + count);
        break;
      case "D":
        this.col = Math.max(0, this.col - count);
        break;
      case "G":
        this.col = Math.min(this.maxColumns, count - 1);
        break;
      case "H":
      case "f": {
        // Positions are relative to a screen this view does not have: keep the row, take the column.
        const column = parseInt(params.split(";")[1] ?? "1", 10);
        this.col = Math.min(this.maxColumns, (Number.isNaN(column) || column < 1 ? 1 : column) - 1);
        break;
      }
      default:
        break; // J (erase display), scroll regions, ...: nothing sensible without a fixed screen
    }
  }

  eraseInLine(mode) {
    const line = this.current();
    if (mode === 0) {
      if (this.col < line.len) {
        replaceRange(line, this.col, line.len, "", 0);
        line.v += 1;
      }
    } else if (mode === 1) {
      const end = Math.min(line.len, this.col + 1);
      if (end > 0) {
        replaceRange(line, 0, end, " ".repeat(end), 0);
        line.v += 1;
      }
    } else if (mode === 2) {
      line.segs = [];
      line.len = 0;
      line.v += 1;
    }
  }

  sgr(params) {
    const codes = params === "" ? [0] : params.replace(/:/g, ";").split(";").map((p) => (p === "" ? 0 : parseInt(p, 10)));
    for (let k = 0; k < codes.length; k++) {
      const code = codes[k];
      if (code === 0) {
        this.fg = null;
        this.bg = null;
        this.flags = 0;
      } else if (code === 1) this.flags |= BOLD;
      else if (code === 2) this.flags |= DIM;
      else if (code === 3) this.flags |= ITALIC;
      else if (code === 4) this.flags |= UNDERLINE;
      else if (code === 7) this.flags |= INVERSE;
      else if (code === 9) this.flags |= STRIKE;
      else if (code === 22) this.flags &= ~(BOLD | DIM);
      else if (code === 23) this.flags &= ~ITALIC;
      else if (code === 24) this.flags &= ~UNDERLINE;
      else if (code === 27) this.flags &= ~INVERSE;
      else if (code === 29) this.flags &= ~STRIKE;
      else if (code >= 30 && code <= 37) this.fg = code - 30;
      else if (code === 39) this.fg = null;
      else if (code >= 40 && code <= 47) this.bg = code - 40;
      else if (code === 49) this.bg = null;
      else if (code >= 90 && code <= 97) this.fg = code - 90 + 8;
      else if (code >= 100 && code <= 107) this.bg = code - 100 + 8;
      else if (code === 38 || code === 48) {
        const [color, used] = extendedColor(codes, k + 1);
        if (code === 38) this.fg = color;
        else this.bg = color;
        k += used;
      }
    }
    this.updateStyle();
  }

  updateStyle() {
    const key = `${this.fg ?? ""}|${this.bg ?? ""}|${this.flags}`;
    let id = this.styleIds.get(key);
    if (id === undefined) {
      id = this.styles.length;
      this.styles.push(new Style(this.fg, this.bg, this.flags));
      this.styleIds.set(key, id);
    }
    this.style = id;
  }

  trim() {
    // Drop old lines in batches, so dropping costs little per line.
    const excess = this.lines.length - this.maxLines;
    if (excess <= 0 || excess < Math.min(1000, this.maxLines / 10)) return;
    const keepFrom = Math.min(excess, this.row - this.base); // never the cursor's line
    if (keepFrom <= 0) return;
    this.lines.splice(0, keepFrom);
    this.base += keepFrom;
  }
}

function extendedColor(codes, k) {
  if (codes[k] === 5 && k + 1 < codes.length) {
    const index = codes[k + 1];
    return [index >= 0 && index <= 255 ? index : null, 2];
  }
  if (codes[k] === 2 && k + 3 < codes.length) {
    const hex = (v) => Math.max(0, Math.min(255, v || 0)).toString(16).padStart(2, "0");
    return [`#${hex(codes[k + 1])}${hex(codes[k + 2])}${hex(codes[k + 3])}`, 4];
  }
  return [null, codes.length - k];
}

function appendSeg(line, text, style) {
  if (!text) return;
  const last = line.segs[line.segs.length - 1];
  if (last && last.s === style) last.t += text;
  else line.segs.push({ t: text, s: style });
  line.len += text.length;
}

/** Replace columns [start, end) of a line with `text` (which may be shorter: the rest moves left). */
function replaceRange(line, start, end, text, style) {
  const out = [];
  let pos = 0;
  let placed = false;
  for (const seg of line.segs) {
    const segEnd = pos + seg.t.length;
    if (segEnd <= start) {
      out.push(seg);
    } else {
      if (pos < start) out.push({ t: seg.t.slice(0, start - pos), s: seg.s });
      if (!placed) {
        if (text) out.push({ t: text, s: style });
        placed = true;
      }
      if (segEnd > end) out.push({ t: seg.t.slice(Math.max(0, end - pos)), s: seg.s });
    }
    pos = segEnd;
  }
  if (!placed && text) out.push({ t: text, s: style });
  // Merge neighbours of one style, so a redrawn bar stays one segment per colour.
  const merged = [];
  let len = 0;
  for (const seg of out) {
    if (!seg.t) continue;
    len += seg.t.length;
    const last = merged[merged.length - 1];
    if (last && last.s === seg.s) last.t += seg.t;
    else merged.push({ t: seg.t, s: seg.s });
  }
  line.segs = merged;
  line.len = len;
}

/** The CSS colour of a 256-colour index beyond the 16 named ones (xterm's cube and greys). */
export function paletteColor(index) {
  if (index < 16) return null;
  if (index >= 232) {
    const v = 8 + (index - 232) * 10;
    return `rgb(${v},${v},${v})`;
  }
  const i = index - 16;
  const level = (n) => (n === 0 ? 0 : 55 + n * 40);
  return `rgb(${level(Math.floor(i / 36))},${level(Math.floor(i / 6) % 6)},${level(i % 6)})`;
}
