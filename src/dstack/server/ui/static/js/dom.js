// Building the page from data without ever parsing a string as HTML: every text goes in as a text node.
// (The page's CSP enforces Trusted Types, so an accidental innerHTML = "..." would throw, not render.)

/**
 * h("a", {href: "/x", className: "link", onclick: f}, "text", child, [more]) -> HTMLAnchorElement
 * Properties: className, text, title, dataset (object), on<event> (listeners), attrs (object, set as
 * attributes), and a few DOM properties (href, type, value, disabled, checked, name, id, htmlFor...).
 */
export function h(tag, props, ...children) {
  const el = document.createElement(tag);
  if (props) {
    for (const [key, value] of Object.entries(props)) {
      if (value === undefined || value === null || value === false) continue;
      if (key === "text") el.textContent = String(value);
      else if (key === "dataset") Object.assign(el.dataset, value);
      else if (key === "attrs") for (const [a, v] of Object.entries(value)) el.setAttribute(a, String(v));
      else if (key.startsWith("on") && typeof value === "function") el.addEventListener(key.slice(2), value);
      else el[key] = value;
    }
  }
  append(el, children);
  return el;
}

function append(el, children) {
  for (const child of children) {
    if (child === null || child === undefined || child === false) continue;
    if (Array.isArray(child)) append(el, child);
    else if (child instanceof Node) el.appendChild(child);
    else el.appendChild(document.createTextNode(String(child)));
  }
}

/** Replace an element's children (strings become text nodes). */
export function fill(el, ...children) {
  el.replaceChildren();
  append(el, children);
  return el;
}

/** A link inside the app: navigates without reloading the page. */
export function navLink(path, ...children) {
  return h("a", { href: path, dataset: { nav: "" } }, ...children);
}

/** A <table> with a header row and body rows (arrays of cells: strings or nodes). */
export function table(headers, rows, { className = "grid", rowProps } = {}) {
  return h(
    "table",
    { className },
    h("thead", null, h("tr", null, headers.map((name) => h("th", { text: name })))),
    h(
      "tbody",
      null,
      rows.map((cells, i) => h("tr", rowProps ? rowProps(i) : null, cells.map((cell) => h("td", null, cell)))),
    ),
  );
}
