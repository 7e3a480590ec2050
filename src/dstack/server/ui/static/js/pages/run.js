// One run: what it is and how it went (status, reason, times, where it runs), its live output, its status
// history, its ports, its plan and configuration, and Stop / Abort.
//
// Multi-node runs: `nodesOf(run)` lists the run's nodes and the node picker shows when there is more than
// one; the output (and anything else per node) is built for the chosen node.

import { projectPath, request, runPath } from "../api.js";
import { fill, h, navLink, table } from "../dom.js";
import { bytes, dateTime, duration, isFinished, price, reasonText, runDuration, statusText } from "../format.js";
import { LiveOutput } from "../output.js";

const MAX_LINES = 10000; // kept for scrolling back; the whole log is a download away
const PORT_CHECK_MS = 5000;

/** The run's nodes: a multi-node run's, one per job (master first); else its one job as node 0. */
export function nodesOf(run) {
  if (run.nodes?.length) {
    return run.nodes.map((node) => ({
      rank: node.rank,
      label: `node ${node.rank}${node.rank === 0 ? " (master)" : ""}${node.hostname ? ` · ${node.hostname}` : ""}`,
      job: node,
    }));
  }
  return run.job ? [{ rank: 0, label: "node 0", job: run.job }] : [];
}

/** "node 0: running on host-a; node 1: failed (commands failed with exit code 1)" */
function nodesSummary(nodes) {
  return nodes
    .map((node) => {
      const where = node.hostname ? ` on ${node.hostname}` : "";
      const why = node.status !== "done" && node.termination_message ? ` (${node.termination_message})` : "";
      return `node ${node.rank}: ${node.status}${where}${why}`;
    })
    .join("; ");
}

export function mount(container, { project, name }) {
  document.title = `${name} · ${project} · dstack`;
  const els = {
    status: h("span", { className: "status", id: "run-status" }),
    stop: h("button", { type: "button", id: "stop", text: "Stop", disabled: true, onclick: () => confirmStop(false) }),
    abort: h("button", { type: "button", id: "abort", className: "danger", text: "Abort", disabled: true, onclick: () => confirmStop(true) }),
    nodes: h("select", { id: "node", hidden: true, attrs: { "aria-label": "Node" }, onchange: () => showOutput() }),
    summary: h("dl", { className: "summary" }),
    error: h("p", { className: "error", attrs: { role: "alert" }, hidden: true }),
    outputBox: h("div", { className: "output" }),
    received: h("span", { className: "received" }),
    history: h("div", { className: "history" }),
    ports: h("div", { className: "ports" }),
    plan: h("div", { className: "plan" }),
    configuration: h("div", { className: "configuration" }),
    dialog: h("dialog", { id: "confirm" }),
  };
  const download = h("a", {
    href: runPath(project, name, "/logs"),
    download: `${name}.log`,
    className: "download",
    text: "Download the whole log",
  });
  fill(
    container,
    h(
      "div",
      { className: "run-head" },
      h("h1", null, navLink(`/${encodeURIComponent(project)}/runs`, "Runs"), " / ", h("span", { id: "run-name", text: name })),
      els.status,
      els.nodes,
      h("div", { className: "actions" }, els.stop, els.abort),
    ),
    els.error,
    els.summary,
    h("section", null, h("div", { className: "section-head" }, h("h2", { text: "Output" }), h("div", { className: "tools" }, els.received, download)), els.outputBox),
    h("div", { className: "columns" }, h("section", null, h("h2", { text: "Status history" }), els.history), h("section", null, h("h2", { text: "Ports" }), els.ports)),
    h("section", null, h("h2", { text: "Plan" }), els.plan),
    h("section", null, h("h2", { text: "Configuration" }), els.configuration),
    els.dialog,
  );

  let run = null;
  let output = null;
  let stopped = false;
  let loading = null;
  let pending = false;
  const controller = new AbortController();
  const signal = controller.signal;

  const showError = (message) => {
    els.error.textContent = message;
    els.error.hidden = !message;
  };

  async function load() {
    if (loading) {
      pending = true;
      return;
    }
    loading = (async () => {
      try {
        const [fresh, history] = await Promise.all([
          request(runPath(project, name), { signal }),
          request(runPath(project, name, "/history"), { signal }),
        ]);
        const first = run === null;
        run = fresh;
        drawRun();
        drawHistory(history);
        if (first) {
          drawNodes();
          showOutput();
          drawConfiguration();
          request(runPath(project, name, "/plan"), { signal }).then(drawPlan, () => {});
        }
        showError("");
      } catch (error) {
        if (error.name !== "AbortError") showError(error.message);
      }
    })();
    await loading;
    loading = null;
    if (pending && !stopped) {
      pending = false;
      await load();
    }
  }

  function drawRun() {
    els.status.textContent = statusText(run);
    els.status.className = `status s-${run.status}`;
    const finished = isFinished(run.status);
    els.stop.disabled = finished || run.status === "terminating";
    els.abort.disabled = finished;
    const job = run.job ?? {};
    const item = (label, value, id) => [h("dt", { text: label }), h("dd", { text: value ?? "-", id })];
    fill(
      els.summary,
      item("Status", statusText(run), "summary-status"),
      item("Reason", reasonText(run) || "-", "summary-reason"),
      item("Submitted", dateTime(run.submitted_at)),
      item("Started", job.started_at ? dateTime(job.started_at) : "-"),
      item("Finished", run.finished_at ? dateTime(run.finished_at) : "-"),
      item("Duration", runDuration(run), "summary-duration"),
      item("Backend", run.backend || "-"),
      item("Resources", run.resources || "-"),
      item("Price", price(run.price)),
      item("Exit code", run.exit_code ?? "-"),
      item("Configuration", run.configuration_path || "-"),
      ...(run.nodes?.length > 1 ? item("Nodes", nodesSummary(run.nodes), "summary-nodes") : []),
    );
    drawPorts();
  }

  function drawHistory(entries) {
    const rows = entries.map((entry) => [
      dateTime(entry.at),
      h("span", { className: `status s-${entry.status}`, text: entry.status }),
      entry.termination_message || entry.status_message || "",
    ]);
    fill(els.history, table(["TIME", "STATUS", "MESSAGE"], rows, { className: "grid history-table" }));
  }

  function drawNodes() {
    const nodes = nodesOf(run);
    fill(els.nodes, nodes.map((node) => h("option", { value: String(node.rank), text: node.label })));
    els.nodes.hidden = nodes.length < 2;
  }

  function showOutput() {
    output?.stop();
    const rank = Number(els.nodes.value || 0);
    download.href = runPath(project, name, "/logs") + (rank > 0 ? `?node=${rank}` : "");
    download.download = rank > 0 ? `${name}-node${rank}.log` : `${name}.log`;
    output = new LiveOutput({
      maxLines: MAX_LINES,
      url: (offset, first) => {
        const params = new URLSearchParams({ offset: String(offset) });
        if (first) params.set("tail", String(MAX_LINES));
        if (rank > 0) params.set("node", String(rank)); // a multi-node run's other node (the master's by default)
        return `${runPath(project, name, "/attach")}?${params}`;
      },
      handlers: {
        status: () => load(),
        end: () => load(),
        error: (message) => showError(message),
      },
    });
    fill(els.outputBox, output.element);
    output.start();
  }

  const receivedTimer = setInterval(() => {
    if (!output) return;
    const skipped = output.skipped ? `, ${bytes(output.skipped)} skipped` : "";
    els.received.textContent = `${bytes(output.received)} received${skipped}`;
    if (run && !isFinished(run.status)) {
      const cell = container.querySelector("#summary-duration");
      if (cell) cell.textContent = runDuration(run);
    }
  }, 1000);

  let portTimer = null;
  async function drawPorts() {
    const ports = run?.spec?.ports ?? [];
    if (!ports.length) {
      fill(els.ports, h("p", { className: "empty", text: "This task declares no ports." }));
      return;
    }
    const running = run.status === "running";
    const states = await Promise.all(
      ports.map((port) =>
        running
          ? request(runPath(project, name, `/ports/${port.container_port}`), { params: { wait: 0 }, signal }).catch(() => null)
          : null,
      ),
    );
    const rows = ports.map((port, i) => {
      const local = port.local_port ?? port.container_port;
      const state = states[i];
      const answers = state ? (state.open ? "answers" : "not answering yet") : running ? "unknown" : "not running";
      return [String(port.container_port), answers, h("code", { text: `dstack attach ${name}` }), `http://127.0.0.1:${local}`];
    });
    fill(
      els.ports,
      table(["PORT", "STATE", "FORWARD WITH", "THEN OPEN"], rows, { className: "grid ports-table" }),
      h("p", { className: "help", text: "The CLI forwards a task's ports to your machine while it is attached." }),
    );
    clearTimeout(portTimer);
    if (running && !stopped) portTimer = setTimeout(drawPorts, PORT_CHECK_MS);
  }

  function drawPlan(plan) {
    const item = (label, value) => [h("dt", { text: label }), h("dd", { text: value ?? "-" })];
    const profile = plan.profile ?? {};
    const retry = profile.retry ? `${duration(profile.retry.duration)} on ${profile.retry.on_events?.join(", ")}` : "no";
    const allocation = plan.allocation;
    const held = allocation
      ? [
          allocation.cpus ? `${allocation.cpus} CPUs reserved` : "CPUs shared",
          allocation.memory_gb ? `${allocation.memory_gb} GB memory reserved` : "memory shared",
          allocation.gpus?.length ? `GPUs ${allocation.gpus.join(", ")}` : "no GPU",
          allocation.ports?.length ? `ports ${allocation.ports.join(", ")}` : null,
        ]
          .filter(Boolean)
          .join("; ")
      : "-";
    const host = plan.host;
    fill(
      els.plan,
      h(
        "dl",
        { className: "summary" },
        item("Requirements", plan.requirements),
        item("Environment", plan.image ? `image ${plan.image}` : plan.python ? `Python ${plan.python}` : "the host's Python"),
        item("Host", host ? `${host.name} (${host.backend}, ${host.region}): ${host.resources}` : "not placed"),
        item("Holds", held),
        item("Sharing", plan.sharing),
        item("Max price", profile.max_price ? `$${profile.max_price}/h` : "no limit"),
        item("Max duration", profile.max_duration ? duration(profile.max_duration) : "no limit"),
        item("Spot policy", profile.spot_policy),
        item("Retry", retry),
        item("Backends", profile.backends?.join(", ") || "any"),
      ),
    );
  }

  function drawConfiguration() {
    const spec = run.spec ?? {};
    const env = Object.entries(spec.env ?? {});
    const envRows = env.map(([key, value]) => {
      const cell = h("code", { className: "secret", text: "••••••" });
      const reveal = h("button", {
        type: "button",
        className: "link-button",
        text: "show",
        onclick: () => {
          cell.textContent = value;
          reveal.remove();
        },
      });
      return [key, h("span", null, cell, " ", reveal)];
    });
    fill(
      els.configuration,
      h("h3", { text: "Commands" }),
      h("pre", { className: "commands", text: (spec.commands ?? []).join("\n") || "(the image's own command)" }),
      spec.build?.length ? [h("h3", { text: "Build" }), h("pre", { className: "commands", text: spec.build.join("\n") })] : null,
      h("h3", { text: "Environment" }),
      envRows.length ? table(["NAME", "VALUE"], envRows, { className: "grid env" }) : h("p", { className: "empty", text: "No variables." }),
      h("details", null, h("summary", { text: "The whole configuration" }), h("pre", { text: JSON.stringify(spec.configuration ?? {}, null, 2) })),
    );
  }

  function confirmStop(abort) {
    const verb = abort ? "Abort" : "Stop";
    const what = abort
      ? "Its processes are killed at once."
      : "Its processes get SIGTERM, and SIGKILL if they are still there after a grace period.";
    const confirmButton = h("button", { type: "button", id: "confirm-yes", className: abort ? "danger" : "", text: `${verb} ${name}` });
    const cancel = h("button", { type: "button", id: "confirm-no", text: "Cancel", onclick: () => els.dialog.close() });
    confirmButton.addEventListener("click", async () => {
      confirmButton.disabled = true;
      try {
        await request(projectPath(project, "/runs/stop"), { method: "POST", body: { names: [name], abort } });
        els.dialog.close();
        load();
      } catch (error) {
        els.dialog.close();
        showError(error.message);
      }
    });
    fill(els.dialog, h("h2", { text: `${verb} run ${name}?` }), h("p", { text: what }), h("div", { className: "actions" }, cancel, confirmButton));
    els.dialog.showModal();
    cancel.focus();
  }

  load();
  return () => {
    stopped = true;
    controller.abort();
    output?.stop();
    clearInterval(receivedTimer);
    clearTimeout(portTimer);
  };
}
