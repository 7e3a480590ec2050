// Runs: the active ones first, then all of them a page at a time (keyset pages: "Older" and "Newer" walk
// the runs by submission time, so a page costs the same with 100 runs or 100,000). Live: the project's
// history feed wakes the page when any run changes; nothing is polled in a loop.

import { ApiError, projectPath, request } from "../api.js";
import { fill, h, navLink } from "../dom.js";
import { ago, isFinished, price, reasonText, runDuration, statusText } from "../format.js";

export const PAGE_SIZE = 50;
const HEADERS = ["RUN", "CONFIGURATION", "STATUS", "REASON", "BACKEND", "RESOURCES", "PRICE", "SUBMITTED", "DURATION"];
const FEED_WAIT = 25;
const REFRESH_GAP_MS = 250; // changes closer together than this are shown together

export function cursorOf(run) {
  return `${run.submitted_at}:${run.id}`;
}

export function mount(container, { project, navigate }) {
  const params = new URLSearchParams(location.search);
  const page = { before: params.get("before"), after: params.get("after") };
  const status = h("p", { className: "error", attrs: { role: "alert" }, hidden: true });
  const activeBody = h("div", { className: "active-runs" });
  const allBody = h("div", { className: "all-runs" });
  const newer = h("button", { type: "button", text: "← Newer", className: "newer", onclick: () => go("after") });
  const older = h("button", { type: "button", text: "Older →", className: "older", onclick: () => go("before") });
  const pager = h("div", { className: "pager" }, newer, older);
  fill(
    container,
    status,
    h("section", null, h("h2", { text: "Active runs" }), activeBody),
    h("section", null, h("div", { className: "section-head" }, h("h2", { text: "All runs" }), pager), allBody),
  );
  document.title = `Runs · ${project} · dstack`;

  let shown = { active: [], all: [], more: false };
  let stopped = false;
  let refreshing = null;
  let again = false;
  const controller = new AbortController();

  async function load() {
    const base = projectPath(project, "/runs");
    // One run more than a page says whether there is another page beyond (nothing is counted).
    const [active, all] = await Promise.all([
      request(base, { params: { all: false, limit: 1000 }, signal: controller.signal }),
      request(base, { params: { all: true, limit: PAGE_SIZE + 1, before: page.before, after: page.after }, signal: controller.signal }),
    ]);
    let rows = all;
    let more = false;
    if (page.after) {
      if (all.length <= PAGE_SIZE) {
        // No page of newer runs beyond these: this is the first page now.
        page.after = null;
        history.replaceState(null, "", location.pathname);
        rows = await request(base, { params: { all: true, limit: PAGE_SIZE + 1 }, signal: controller.signal });
        more = rows.length > PAGE_SIZE;
        rows = rows.slice(0, PAGE_SIZE);
      } else {
        rows = all.slice(all.length - PAGE_SIZE); // the page just newer than the cursor
        more = true;
      }
    } else {
      more = all.length > PAGE_SIZE;
      rows = all.slice(0, PAGE_SIZE);
    }
    shown = { active: active.filter((run) => !isFinished(run.status)), all: rows, more };
    draw();
  }

  function draw() {
    fill(
      activeBody,
      shown.active.length ? runTable(shown.active, project) : h("p", { className: "empty", text: "No run is active." }),
    );
    fill(allBody, shown.all.length ? runTable(shown.all, project) : h("p", { className: "empty", text: "No runs yet." }));
    newer.disabled = !page.before && !page.after;
    older.disabled = !shown.more;
    if (!window.__dstackRunsPainted) {
      window.__dstackRunsPainted = true;
      performance.mark("dstack-runs-rendered");
    }
  }

  function go(direction) {
    const rows = shown.all;
    if (!rows.length) return;
    const cursor = direction === "before" ? cursorOf(rows[rows.length - 1]) : cursorOf(rows[0]);
    navigate(`${location.pathname}?${direction}=${encodeURIComponent(cursor)}`);
  }

  async function refresh() {
    if (refreshing) {
      again = true;
      return refreshing;
    }
    refreshing = (async () => {
      try {
        await load();
        status.hidden = true;
      } catch (error) {
        if (error.name === "AbortError") return;
        status.textContent = error.message;
        status.hidden = false;
      }
    })();
    await refreshing;
    refreshing = null;
    if (again && !stopped) {
      again = false;
      await new Promise((resolve) => setTimeout(resolve, REFRESH_GAP_MS));
      await refresh();
    }
  }

  async function follow() {
    let last = null;
    while (!stopped) {
      try {
        const feed = await request(projectPath(project, "/history"), {
          params: { after: last ?? undefined, wait: last === null ? 0 : FEED_WAIT },
          signal: controller.signal,
        });
        const first = last === null;
        last = feed.last;
        // Refresh on every answer, also an empty one: the feed wakes the page, the lists say what is true.
        if (!first) await refresh();
      } catch (error) {
        if (stopped || error.name === "AbortError") return;
        if (error instanceof ApiError && error.status === 401) return;
        await new Promise((resolve) => setTimeout(resolve, 2000));
      }
    }
  }

  // Ages and durations move on by themselves.
  const ticker = setInterval(() => {
    for (const cell of container.querySelectorAll("td[data-since]")) {
      cell.textContent = ago(Number(cell.dataset.since));
    }
    for (const cell of container.querySelectorAll("td[data-running-since]")) {
      cell.textContent = runDuration({ submitted_at: Number(cell.dataset.runningSince), finished_at: null });
    }
  }, 1000);

  refresh();
  follow();
  return () => {
    stopped = true;
    controller.abort();
    clearInterval(ticker);
  };
}

export function runTable(runs, project) {
  const rows = runs.map((run) =>
    h(
      "tr",
      { dataset: { run: run.name, status: run.status } },
      h("td", { className: "name" }, navLink(`/${encodeURIComponent(project)}/runs/${encodeURIComponent(run.name)}`, run.name)),
      h("td", { text: run.configuration_path || "-" }),
      h("td", null, h("span", { className: `status s-${run.status}`, text: statusText(run) })),
      h("td", { className: "reason", text: reasonText(run) }),
      h("td", { text: run.backend || "-" }),
      h("td", { text: run.resources || "-" }),
      h("td", { text: price(run.price) }),
      h("td", { text: ago(run.submitted_at), title: new Date(run.submitted_at * 1000).toLocaleString(), dataset: { since: run.submitted_at } }),
      h("td", {
        text: runDuration(run),
        dataset: isFinished(run.status) ? undefined : { runningSince: run.submitted_at },
      }),
    ),
  );
  return h(
    "table",
    { className: "grid runs" },
    h("thead", null, h("tr", null, HEADERS.map((name) => h("th", { text: name })))),
    h("tbody", null, rows),
  );
}
