// Shows a Screen (terminal.js) in a scrolling box, drawing only the lines in view: the cost of a frame does
// not grow with the lines kept, so a task printing megabytes a second leaves the page responsive.
//
// It follows the tail while the box is scrolled to the bottom; scrolling up stops following (the lines in
// view stay put even while old lines are dropped from the top) until the user scrolls back down or
// presses "Follow".

import { h } from "./dom.js";
import { BOLD, DIM, INVERSE, ITALIC, STRIKE, UNDERLINE, paletteColor } from "./terminal.js";

const OVERSCAN = 20; // lines drawn above and below the view, so a quick scroll shows no gap

export class TermView {
  constructor(screen) {
    this.screen = screen;
    this.spacer = h("div", { className: "term-spacer" });
    this.rows = h("div", { className: "term-rows" });
    this.box = h("div", { className: "term", attrs: { tabindex: "0", role: "log", "aria-live": "off" } }, this.spacer, this.rows);
    this.followButton = h("button", { className: "follow", type: "button", text: "Follow the output ↓", hidden: true, onclick: () => this.follow() });
    this.element = h("div", { className: "term-wrap" }, this.box, this.followButton);
    this.following = true;
    this.lineHeight = 0;
    this.pool = []; // row elements, reused
    this.drawnBase = 0;
    this.frame = 0;
    this.programmaticScroll = false;
    this.box.addEventListener("scroll", () => this.onScroll(), { passive: true });
    this.resizeObserver = new ResizeObserver(() => this.schedule());
    this.resizeObserver.observe(this.box);
  }

  destroy() {
    this.resizeObserver.disconnect();
    if (this.frame) cancelAnimationFrame(this.frame);
  }

  follow() {
    this.following = true;
    this.followButton.hidden = true;
    this.schedule();
  }

  onScroll() {
    if (this.programmaticScroll) {
      this.programmaticScroll = false;
    } else {
      const atBottom = this.box.scrollTop + this.box.clientHeight >= this.box.scrollHeight - this.lineHeight;
      this.following = atBottom;
      this.followButton.hidden = atBottom;
    }
    this.schedule();
  }

  schedule() {
    if (!this.frame) this.frame = requestAnimationFrame(() => this.render());
  }

  measure() {
    if (!this.lineHeight) {
      const probe = h("div", { className: "term-row", text: "M" });
      this.rows.appendChild(probe);
      this.lineHeight = probe.getBoundingClientRect().height || 18;
      probe.remove();
    }
  }

  render() {
    this.frame = 0;
    this.measure();
    const screen = this.screen;
    const lh = this.lineHeight;
    const total = screen.lines.length;
    this.spacer.style.height = `${total * lh}px`;
    const dropped = screen.base - this.drawnBase;
    this.drawnBase = screen.base;
    if (this.following) {
      const bottom = Math.max(0, total * lh - this.box.clientHeight);
      if (Math.abs(this.box.scrollTop - bottom) > 1) {
        this.programmaticScroll = true;
        this.box.scrollTop = bottom;
      }
    } else if (dropped > 0) {
      // Keep the same lines in view while older ones leave from the top.
      this.programmaticScroll = true;
      this.box.scrollTop = Math.max(0, this.box.scrollTop - dropped * lh);
    }
    const first = Math.max(0, Math.floor(this.box.scrollTop / lh) - OVERSCAN);
    const last = Math.min(total, Math.ceil((this.box.scrollTop + this.box.clientHeight) / lh) + OVERSCAN);
    const count = Math.max(0, last - first);
    while (this.pool.length < count) {
      const row = h("div", { className: "term-row" });
      row.line = null;
      row.drawn = -1;
      this.pool.push(row);
      this.rows.appendChild(row);
    }
    while (this.pool.length > count) this.pool.pop().remove();
    this.rows.style.transform = `translateY(${first * lh}px)`;
    for (let k = 0; k < count; k++) {
      const row = this.pool[k];
      const line = screen.lines[first + k];
      if (row.line === line && row.drawn === line.v) continue;
      row.line = line;
      row.drawn = line.v;
      drawLine(row, line, screen.styles);
    }
  }
}

function drawLine(row, line, styles) {
  const parts = [];
  for (const seg of line.segs) {
    if (seg.s === 0) {
      parts.push(seg.t);
      continue;
    }
    const span = document.createElement("span");
    applyStyle(span, styles[seg.s]);
    span.textContent = seg.t;
    parts.push(span);
  }
  if (parts.length === 0) parts.push("\u200b"); // an empty line keeps its height
  row.replaceChildren(...parts);
}

function applyStyle(span, style) {
  let fg = style.fg;
  let bg = style.bg;
  const classes = [];
  if (style.flags & INVERSE) {
    [fg, bg] = [bg, fg];
    if (fg === null) classes.push("inv-fg");
    if (bg === null) classes.push("inv-bg");
  }
  if (style.flags & BOLD) classes.push("bold");
  if (style.flags & DIM) classes.push("dim");
  if (style.flags & ITALIC) classes.push("italic");
  if (style.flags & UNDERLINE) classes.push(style.flags & STRIKE ? "underline-strike" : "underline");
  else if (style.flags & STRIKE) classes.push("strike");
  // The 16 named colours are classes (themable in CSS); others are set through CSSOM, which the CSP allows.
  if (typeof fg === "number" && fg < 16) classes.push(`f${fg}`);
  else if (fg !== null) span.style.color = typeof fg === "number" ? paletteColor(fg) : fg;
  if (typeof bg === "number" && bg < 16) classes.push(`b${bg}`);
  else if (bg !== null) span.style.backgroundColor = typeof bg === "number" ? paletteColor(bg) : bg;
  span.className = classes.join(" ");
}
