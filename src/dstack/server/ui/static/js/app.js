// The page: who is signed in, the header, and which view the path shows. Views are modules with
// mount(container, context) -> unmount(); the router swaps them without reloading the page.

import { ApiError, onSignedOut, request, setCsrfToken } from "./api.js";
import { fill, h, navLink } from "./dom.js";
import * as fleets from "./pages/fleets.js";
import * as offers from "./pages/offers.js";
import * as run from "./pages/run.js";
import * as runs from "./pages/runs.js";
import * as signIn from "./pages/signin.js";

const root = document.getElementById("app");
const state = { session: null, projects: [], unmount: null };

function route(pathname) {
  const parts = pathname.split("/").filter(Boolean).map(decodeURIComponent);
  if (parts[0] === "sign-in") return { view: signIn };
  if (parts.length === 0) return { view: null };
  const project = parts[0];
  if (parts[1] === "runs" && parts.length === 3) return { view: run, project, name: parts[2] };
  if (parts[1] === "fleets") return { view: fleets, project };
  if (parts[1] === "offers") return { view: offers, project };
  return { view: runs, project };
}

export function navigate(path, { replace = false } = {}) {
  if (replace) history.replaceState(null, "", path);
  else history.pushState(null, "", path);
  render();
}

function defaultProject() {
  const names = state.projects.map((p) => p.name);
  return names.includes("main") ? "main" : names[0];
}

async function loadSession() {
  try {
    const session = await request("/ui/session");
    state.session = session;
    state.projects = session.projects;
    setCsrfToken(session.csrf_token);
    return true;
  } catch (error) {
    if (error instanceof ApiError && error.status === 401) return false;
    throw error;
  }
}

async function render() {
  state.unmount?.();
  state.unmount = null;
  const target = route(location.pathname);
  if (target.view === signIn) {
    document.title = "Sign in · dstack";
    state.unmount = signIn.mount(root, { signedIn: onSignedIn });
    return;
  }
  if (!state.session) {
    sessionStorage.setItem("dstack-next", location.pathname + location.search);
    navigate("/sign-in", { replace: true });
    return;
  }
  if (!target.view) {
    const project = defaultProject();
    if (!project) {
      fill(root, shell(null), h("main", null, h("p", { className: "error", text: "You are not a member of any project." })));
      return;
    }
    navigate(`/${encodeURIComponent(project)}/runs`, { replace: true });
    return;
  }
  const main = h("main");
  fill(root, shell(target), main);
  const known = state.projects.some((p) => p.name === target.project);
  if (!known) {
    fill(main, h("p", { className: "error", text: `Project ${target.project} is not one of yours.` }));
    return;
  }
  state.unmount = target.view.mount(main, { ...target, navigate });
}

function shell(target) {
  const project = target?.project;
  const here = target?.view;
  const tab = (view, label, suffix) =>
    project ? h("li", { className: here === view ? "current" : "" }, navLink(`/${encodeURIComponent(project)}/${suffix}`, label)) : null;
  const picker =
    state.projects.length > 1
      ? h(
          "select",
          {
            className: "project-picker",
            attrs: { "aria-label": "Project" },
            onchange: (event) => navigate(`/${encodeURIComponent(event.target.value)}/runs`),
          },
          state.projects.map((p) => h("option", { value: p.name, text: p.name, selected: p.name === project })),
        )
      : project
        ? h("span", { className: "project-name", text: project })
        : null;
  return h(
    "header",
    { className: "top" },
    h("a", { className: "brand", href: "/", dataset: { nav: "" }, text: "dstack" }),
    picker,
    h("nav", null, h("ul", null, tab(runs, "Runs", "runs"), tab(fleets, "Fleets", "fleets"), tab(offers, "Offers", "offers"))),
    h(
      "div",
      { className: "who" },
      h("span", { className: "user", text: state.session?.user?.name ?? "" }),
      h("button", { type: "button", className: "link-button", text: "Sign out", onclick: signOut }),
    ),
  );
}

async function signOut() {
  try {
    await request("/ui/session", { method: "DELETE" });
  } finally {
    state.session = null;
    navigate("/sign-in");
  }
}

async function onSignedIn(project) {
  await loadSession();
  const next = sessionStorage.getItem("dstack-next");
  sessionStorage.removeItem("dstack-next");
  const path = project ? `/${encodeURIComponent(project)}/runs` : next && next !== "/sign-in" ? next : "/";
  navigate(path, { replace: true });
}

document.addEventListener("click", (event) => {
  const link = event.target.closest?.("a[data-nav]");
  if (!link || event.defaultPrevented || event.button !== 0 || event.metaKey || event.ctrlKey || event.shiftKey || event.altKey) return;
  event.preventDefault();
  navigate(link.getAttribute("href"));
});
window.addEventListener("popstate", render);
onSignedOut(() => {
  if (!state.session) return;
  state.session = null;
  sessionStorage.setItem("dstack-next", location.pathname + location.search);
  navigate("/sign-in", { replace: true });
});

(async () => {
  try {
    if (route(location.pathname).view !== signIn) await loadSession();
  } catch (error) {
    fill(root, h("p", { className: "error", text: error.message }));
    return;
  }
  render();
})();
