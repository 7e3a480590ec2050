// Fleets and their hosts: status, resources, GPUs (and which run holds each), the runs on each host.
// Grouped by fleet (a backend and region; an SSH fleet's name once fleets exist). Refreshed every few s.

import { projectPath, request } from "../api.js";
import { fill, h, navLink } from "../dom.js";
import { ago, price } from "../format.js";

const REFRESH_MS = 5000;

export function mount(container, { project }) {
  document.title = `Fleets · ${project} · dstack`;
  const error = h("p", { className: "error", attrs: { role: "alert" }, hidden: true });
  const body = h("div", { className: "fleets" });
  fill(container, h("h1", { text: "Fleets" }), error, body);
  let timer = null;
  let stopped = false;
  const controller = new AbortController();

  async function load() {
    try {
      const hosts = await request(projectPath(project, "/hosts"), { signal: controller.signal });
      draw(hosts);
      error.hidden = true;
    } catch (e) {
      if (e.name === "AbortError") return;
      error.textContent = e.message;
      error.hidden = false;
    }
    if (!stopped) timer = setTimeout(load, REFRESH_MS);
  }

  function draw(hosts) {
    if (!hosts.length) {
      fill(body, h("p", { className: "empty", text: "The server knows no hosts yet." }));
      return;
    }
    const fleets = new Map();
    for (const host of hosts) {
      if (!fleets.has(host.fleet)) fleets.set(host.fleet, []);
      fleets.get(host.fleet).push(host);
    }
    fill(
      body,
      [...fleets].map(([fleet, members]) =>
        h(
          "section",
          { className: "fleet", dataset: { fleet } },
          h("h2", { text: `${fleet} (${members.length} host${members.length === 1 ? "" : "s"})` }),
          hostTable(members, project),
        ),
      ),
    );
  }

  load();
  return () => {
    stopped = true;
    controller.abort();
    clearTimeout(timer);
  };
}

function hostTable(hosts, project) {
  const rows = hosts.map((host) =>
    h(
      "tr",
      { dataset: { host: host.name } },
      h("td", { className: "name", text: host.name }),
      h("td", null, h("span", { className: `status h-${host.status}`, text: host.status }), host.status_message ? h("div", { className: "reason", text: host.status_message }) : null),
      h("td", { text: host.resources }),
      h("td", null, gpuList(host, project)),
      h("td", { text: price(host.price) }),
      h("td", null, runList(host, project)),
      h("td", { text: host.last_seen_at ? ago(host.last_seen_at) : "never" }),
    ),
  );
  return h(
    "table",
    { className: "grid hosts" },
    h("thead", null, h("tr", null, ["HOST", "STATUS", "RESOURCES", "GPUS", "PRICE", "RUNS", "LAST SEEN"].map((t) => h("th", { text: t })))),
    h("tbody", null, rows),
  );
}

function gpuList(host, project) {
  if (!host.gpus.length) return "-";
  return h(
    "ul",
    { className: "plain" },
    host.gpus.map((gpu) =>
      h(
        "li",
        null,
        `${gpu.index}: ${gpu.name} (${gpu.memory_gb} GB) — `,
        gpu.run ? navLink(`/${encodeURIComponent(project)}/runs/${encodeURIComponent(gpu.run)}`, gpu.run) : gpu.busy ? "another project's run" : "free",
      ),
    ),
  );
}

function runList(host, project) {
  const items = host.runs.map((run) =>
    h("li", null, navLink(`/${encodeURIComponent(project)}/runs/${encodeURIComponent(run.name)}`, run.name), ` ${run.status}`),
  );
  if (host.other_projects_runs) items.push(h("li", { text: `${host.other_projects_runs} of other projects` }));
  return items.length ? h("ul", { className: "plain" }, items) : "-";
}
