// Sign in: with the one-time link `dstack ui` opens (its code is in the URL's #fragment, which no server
// sees), or by pasting a token.

import { request } from "../api.js";
import { fill, h } from "../dom.js";

export function mount(container, { signedIn }) {
  const error = h("p", { id: "sign-in-error", className: "error", attrs: { role: "alert" }, hidden: true });
  const input = h("input", {
    id: "token",
    type: "password",
    name: "token",
    autocomplete: "off",
    spellcheck: false,
    required: true,
    attrs: { "aria-describedby": "sign-in-help" },
  });
  const button = h("button", { type: "submit", text: "Sign in" });
  const form = h(
    "form",
    { className: "sign-in", onsubmit: (event) => submit(event) },
    h("h1", { text: "Sign in to dstack" }),
    h("label", { htmlFor: "token", text: "Token" }),
    input,
    h(
      "p",
      { id: "sign-in-help", className: "help" },
      "Run ",
      h("code", { text: "dstack ui" }),
      " to open this page signed in, or paste the token ",
      h("code", { text: "dstack server" }),
      " printed (it is also in ~/.dstack/config.yml).",
    ),
    button,
    error,
  );
  fill(container, h("main", { className: "centered" }, form));

  const showError = (message) => {
    error.textContent = message;
    error.hidden = false;
  };

  async function submit(event) {
    event.preventDefault();
    button.disabled = true;
    error.hidden = true;
    try {
      await request("/ui/session", { method: "POST", body: { token: input.value } });
      input.value = "";
      await signedIn(null);
    } catch (e) {
      showError(e.message);
      input.select();
    } finally {
      button.disabled = false;
    }
  }

  const code = location.hash.startsWith("#") ? decodeURIComponent(location.hash.slice(1)) : "";
  if (code) {
    history.replaceState(null, "", "/sign-in"); // the code is spent either way: keep it out of history
    form.hidden = true;
    container.appendChild(h("p", { className: "centered", id: "signing-in", text: "Signing you in…" }));
    request("/ui/session", { method: "POST", body: { code } })
      .then((session) => signedIn(session.project))
      .catch((e) => {
        container.querySelector("#signing-in")?.remove();
        form.hidden = false;
        showError(e.message);
      });
  } else {
    input.focus();
  }
  return () => {};
}
