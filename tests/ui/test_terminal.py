"""The page's terminal (static/js/terminal.js) and stream reader (frames.js), run in the real Chromium:
what a task's output looks like once rendered."""

from __future__ import annotations

import base64
from typing import Any

import pytest

from dstack.core import frames
from tests.ui.browser import Browser
from tests.ui.kit import Server

pytestmark = pytest.mark.e2e

SCREEN = """
const done = arguments[arguments.length - 1];
import('/static/js/terminal.js').then((t) => {
  const make = (options) => new t.Screen(options);
  const lines = (screen) => screen.lines.map((l) => l.text());
  const run = (chunks, options) => { const s = make(options); for (const c of chunks) s.write(c); return s; };
  const out = {};
  out.tqdm = lines(run(Array.from({length: 11}, (_, i) => `\\r${i * 10}%|${'#'.repeat(i)}`).concat(['\\n'])));
  out.crShorter = lines(run(['abcdef\\rXY']));
  out.eraseLine = lines(run(['abcdef\\r\\x1b[KXY']));
  out.multiBar = lines(run(['bar1 0%\\nbar2 0%', '\\x1b[A\\rbar1 50%', '\\x1b[B\\rbar2 50%\\n']));
  const split = run(['\\x1b[3', '1mred\\x1b[0m plain']);
  out.split = lines(split);
  out.splitStyles = split.lines[0].segs.map((seg) => [seg.t, split.styles[seg.s].fg]);
  out.backspaceTab = lines(run(['ab\\bc\\na\\tb']));
  out.wrap = lines(run(['x'.repeat(25)], {maxColumns: 10}));
  const many = run([Array.from({length: 10000}, (_, i) => `line ${i}\\n`).join('')], {maxLines: 100});
  out.bounded = [many.lines.length, many.base, many.lines[many.lines.length - 2].text(), many.lineCount];
  out.osc = lines(run(['\\x1b]0;a title\\x07visible \\x1b]8;;http://x\\x1b\\\\link\\x1b]8;;\\x1b\\\\']));
  const colours = run(['\\x1b[38;5;208mo\\x1b[48;2;1;2;3mx\\x1b[1;4;7mz']);
  out.colours = colours.lines[0].segs.map((seg) => {
    const style = colours.styles[seg.s];
    return [seg.t, style.fg, style.bg, style.flags];
  });
  out.hostile = lines(run(['<script>alert(1)</script>\\x1b[31m<b>\\x1b[0m']));
  done(out);
}).catch((e) => done({error: String(e)}));
"""

FRAMES = """
const [encoded, done] = [arguments[0], arguments[arguments.length - 1]];
import('/static/js/frames.js').then(({FrameReader}) => {
  const all = Uint8Array.from(atob(encoded), (c) => c.charCodeAt(0));
  const seen = [];
  const pieces = [];
  const decoder = new TextDecoder();
  const reader = new FrameReader({
    log: (offset, bytes) => {
      pieces.push(offset);
      seen.push(['log', decoder.decode(bytes, {stream: true})]);
    },
    status: (s) => seen.push(['status', s.status]),
    end: (e) => seen.push(['end', e.status, e.exit_code]),
    heartbeat: () => seen.push(['heartbeat']),
  });
  for (let i = 0; i < all.length; i++) reader.push(all.subarray(i, i + 1));  // one byte at a time
  const text = seen.filter((s) => s[0] === 'log').map((s) => s[1]).join('');
  const events = seen.filter((s) => s[0] !== 'log');
  done({text, events, firstOffset: pieces[0], lastOffset: pieces[pieces.length - 1]});
}).catch((e) => done({error: String(e)}));
"""


def test_the_terminal_renders_output_like_a_terminal(server: Server, browser: Browser) -> None:
    browser.get(server.ui_url + "/sign-in")
    out: dict[str, Any] = browser.driver.execute_async_script(SCREEN)
    assert "error" not in out, out
    assert out["tqdm"] == ["100%|##########", ""]
    assert out["crShorter"] == ["XYcdef"]  # "\r" returns; what is not overwritten stays, as on a terminal
    assert out["eraseLine"] == ["XY"]
    assert out["multiBar"] == ["bar1 50%", "bar2 50%", ""]
    assert out["split"] == ["red plain"]  # an escape sequence split across two chunks
    assert out["splitStyles"] == [["red", 1], [" plain", None]]
    assert out["backspaceTab"] == ["ac", "a       b"]
    assert out["wrap"] == ["x" * 10, "x" * 10, "x" * 5]
    lines, base, last_full, total = out["bounded"]
    assert lines <= 110 and base > 0 and last_full == "line 9999" and total == 10001
    assert out["osc"] == ["visible link"]
    bold_underline_inverse = 1 | 8 | 16
    assert out["colours"] == [
        ["o", 208, None, 0],
        ["x", 208, "#010203", 0],
        ["z", 208, "#010203", bold_underline_inverse],
    ]
    assert out["hostile"] == ["<script>alert(1)</script><b>"]


def test_the_stream_reader_takes_frames_in_any_pieces(server: Server, browser: Browser) -> None:
    # The server's own framing (dstack.core.frames), as the attach stream sends it.
    stream = b"".join(
        [
            frames.log_frame(0, "héllo ".encode()),
            frames.json_frame(frames.STATUS, {"status": "running", "status_message": None}),
            frames.heartbeat_frame(),
            frames.log_header(7, len("wörld".encode())) + "wörld".encode(),
            frames.json_frame(frames.END, {"status": "done", "exit_code": 0}),
        ]
    )
    browser.get(server.ui_url + "/sign-in")
    out: dict[str, Any] = browser.driver.execute_async_script(FRAMES, base64.b64encode(stream).decode())
    assert "error" not in out, out
    assert out["text"] == "héllo wörld"
    assert out["events"] == [["status", "running"], ["heartbeat"], ["end", "done", 0]]
    assert out["firstOffset"] == 0 and out["lastOffset"] == 7 + len("wörld".encode()) - 1


BEHIND = """
const done = arguments[arguments.length - 1];
import('/static/js/output.js').then(async ({LiveOutput}) => {
  const output = new LiveOutput({url: () => 'about:blank', handlers: {}, maxLines: 1000});
  document.body.appendChild(output.element);
  const encoder = new TextEncoder();
  let offset = 0;
  let n = 0;
  // Megabytes arrive at once, faster than anything could draw them, until the page skips to the tail.
  while (!output.skipped) {
    let text = '';
    while (text.length < 1024 * 1024) text += `line ${n++}\\n`;
    const bytes = encoder.encode(text);
    output.onLog(offset, bytes);
    offset += bytes.length;
  }
  while (output.queue.length) await new Promise((r) => setTimeout(r, 20));
  const lines = output.screen.lines.map((l) => l.text());
  done({
    skipped: output.skipped, received: output.received, total: offset, last: lines[lines.length - 2],
    notice: lines.some((l) => l.includes('skipped here')), kept: lines.length, expected: `line ${n - 1}`,
  });
}).catch((e) => done({error: String(e)}));
"""


def test_a_page_far_behind_a_flood_skips_to_the_tail_and_says_so(server: Server, browser: Browser) -> None:
    browser.get(server.ui_url + "/sign-in")
    out: dict[str, Any] = browser.driver.execute_async_script(BEHIND)
    assert "error" not in out, out
    assert out["received"] == out["total"]
    assert 0 < out["skipped"] < out["total"]
    assert out["notice"] and out["last"] == out["expected"]
    assert out["kept"] <= 1100
