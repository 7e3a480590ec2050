// Offers: what `dstack offer` shows, for resource filters given as its flags are (e.g. GPU "A100:80GB:2").
// The filters live in the URL, so a link shows the same offers.

import { projectPath, request } from "../api.js";
import { fill, h, table } from "../dom.js";

const FIELDS = [
  ["gpu", "GPU", "e.g. A100:80GB:2, 24GB..:1, H100"],
  ["cpu", "CPU", "e.g. 4, 2..8"],
  ["memory", "Memory", "e.g. 16GB.."],
  ["disk", "Disk", "e.g. 100GB.."],
  ["backends", "Backends", "e.g. local (comma-separated)"],
  ["max_price", "Max price ($/h)", "e.g. 2.5"],
];

export function mount(container, { project, navigate }) {
  document.title = `Offers · ${project} · dstack`;
  const params = new URLSearchParams(location.search);
  const inputs = {};
  const fields = FIELDS.map(([key, label, hint]) => {
    inputs[key] = h("input", { id: `offer-${key}`, name: key, value: params.get(key) ?? "", placeholder: hint, autocomplete: "off" });
    return h("div", { className: "field" }, h("label", { htmlFor: `offer-${key}`, text: label }), inputs[key]);
  });
  const image = h("input", { type: "checkbox", id: "offer-image", checked: params.get("image") === "1" });
  const form = h(
    "form",
    { className: "filters", onsubmit: (event) => submit(event) },
    fields,
    h("div", { className: "field check" }, image, h("label", { htmlFor: "offer-image", text: "can run containers (image)" })),
    h("button", { type: "submit", text: "Show offers" }),
  );
  const error = h("p", { className: "error", id: "offers-error", attrs: { role: "alert" }, hidden: true });
  const result = h("div", { className: "offers" });
  fill(container, h("h1", { text: "Offers" }), form, error, result);
  const controller = new AbortController();

  function submit(event) {
    event.preventDefault();
    const query = new URLSearchParams();
    for (const [key] of FIELDS) if (inputs[key].value.trim()) query.set(key, inputs[key].value.trim());
    if (image.checked) query.set("image", "1");
    navigate(`${location.pathname}${query.size ? `?${query}` : ""}`, { replace: true });
  }

  async function load() {
    const body = { image: image.checked };
    for (const [key] of FIELDS) {
      const value = inputs[key].value.trim();
      if (!value) continue;
      if (key === "backends") body.backends = value.split(",").map((b) => b.trim()).filter(Boolean);
      else if (key === "max_price") body.max_price = Number(value);
      else body[key] = value;
    }
    if (body.max_price !== undefined && !Number.isFinite(body.max_price)) {
      showError(`Invalid max price '${inputs.max_price.value}': use a number of USD per hour`);
      return;
    }
    try {
      const plan = await request(projectPath(project, "/offers"), { method: "POST", body, signal: controller.signal });
      error.hidden = true;
      draw(plan);
    } catch (e) {
      if (e.name !== "AbortError") showError(e.message);
    }
  }

  function showError(message) {
    error.textContent = message;
    error.hidden = false;
    result.replaceChildren();
  }

  function draw(plan) {
    const rows = plan.offers.map((offer, i) => [
      String(i + 1),
      offer.backend,
      offer.region,
      offer.instance,
      offer.resources,
      offer.spot ? "yes" : "no",
      `$${offer.price}`,
      offer.availability + (offer.note ? `: ${offer.note}` : ""),
    ]);
    fill(
      result,
      h("p", { className: "requirements", text: `Requirements: ${plan.requirements}` }),
      rows.length
        ? table(["#", "BACKEND", "REGION", "INSTANCE", "RESOURCES", "SPOT", "PRICE", "AVAILABILITY"], rows, { className: "grid offers-table" })
        : h("p", { className: "no-offer", text: plan.no_offer_message || "No offer fits." }),
      plan.total_offers > rows.length ? h("p", { className: "help", text: `Showing ${rows.length} of ${plan.total_offers} offers.` }) : null,
    );
  }

  load();
  return () => controller.abort();
}
