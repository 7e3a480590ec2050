"""The UI port's defences: protective headers, sessions only, cross-site requests refused, CSRF, loopback
only, DNS rebinding, Trusted Types in the browser."""

from __future__ import annotations

import json
import socket

import pytest

from tests.e2e.harness import DstackEnv
from tests.ui.browser import Browser
from tests.ui.kit import Server, free_port, request, session_cookie, start_server

pytestmark = pytest.mark.e2e


def test_every_answer_carries_protective_headers(server: Server) -> None:
    for path in ("/", "/main/runs", "/static/js/app.js", "/static/style.css", "/api/project/main/runs"):
        _, _, headers = request(server.ui_url, "GET", path)
        csp = headers["content-security-policy"]
        assert "script-src 'self'" in csp and "unsafe-inline" not in csp and "unsafe-eval" not in csp
        assert "frame-ancestors 'none'" in csp and "default-src 'none'" in csp
        assert "require-trusted-types-for 'script'" in csp
        assert headers["x-content-type-options"] == "nosniff"
        assert headers["x-frame-options"] == "DENY"
        assert headers["referrer-policy"] == "no-referrer"
        assert headers["cross-origin-resource-policy"] == "same-origin"
    _, _, headers = request(server.ui_url, "GET", "/static/js/app.js")
    assert headers["content-type"].split(";")[0] in ("text/javascript", "application/javascript")


def test_the_api_on_the_ui_port_needs_a_session_and_refuses_other_sites(server: Server) -> None:
    base = server.ui_url
    # No session: nothing, even with the admin's bearer token (the UI port takes sessions only).
    status, body, _ = request(base, "GET", "/api/project/main/runs")
    assert status == 401 and json.loads(body) == {"error": "Sign in first"}
    status, _, _ = request(
        base, "GET", "/api/project/main/runs", headers={"Authorization": f"Bearer {server.token}"}
    )
    assert status == 401

    cookie, csrf = session_cookie(server)
    status, body, _ = request(base, "GET", "/api/project/main/runs?all=true", headers={"Cookie": cookie})
    assert status == 200 and json.loads(body) == []
    stop = {"names": ["nothing"], "abort": False}
    # A state-changing request without the page's CSRF token is refused...
    status, body, _ = request(
        base, "POST", "/api/project/main/runs/stop", body=stop, headers={"Cookie": cookie}
    )
    assert status == 403 and "CSRF" in json.loads(body)["error"]
    # ...and so is one with a wrong token, one from another origin (another port of this host is one: a
    # task's web app forwarded to 127.0.0.1), and one the browser marks as cross-site.
    for headers in (
        {"X-CSRF-Token": "wrong"},
        {"X-CSRF-Token": csrf, "Origin": "http://127.0.0.1:7860"},
        {"X-CSRF-Token": csrf, "Sec-Fetch-Site": "same-site"},
        {"X-CSRF-Token": csrf, "Sec-Fetch-Site": "cross-site"},
    ):
        status, _, _ = request(
            base, "POST", "/api/project/main/runs/stop", body=stop, headers={"Cookie": cookie, **headers}
        )
        assert status == 403, headers
    # Reading from another site is refused too (a page elsewhere cannot use the cookie to read runs).
    status, _, _ = request(
        base, "GET", "/api/project/main/runs", headers={"Cookie": cookie, "Sec-Fetch-Site": "cross-site"}
    )
    assert status == 403
    # With the token, from the page itself: the API answers (here: no such run).
    status, body, _ = request(
        base,
        "POST",
        "/api/project/main/runs/stop",
        body=stop,
        headers={"Cookie": cookie, "X-CSRF-Token": csrf, "Origin": base, "Sec-Fetch-Site": "same-origin"},
    )
    assert status == 404 and json.loads(body)["error"] == "Run nothing not found in project main"
    # A WebSocket (the port tunnel) is not offered on the UI port.
    status, _, _ = request(
        base,
        "GET",
        "/api/project/main/runs/x/ports/80/connect",
        headers={
            "Cookie": cookie,
            "Connection": "Upgrade",
            "Upgrade": "websocket",
            "Sec-WebSocket-Version": "13",
            "Sec-WebSocket-Key": "dGhlIHNhbXBsZSBub25jZQ==",
        },
    )
    assert status == 403


def test_a_name_that_is_not_loopback_gets_nothing(server: Server) -> None:
    """DNS rebinding: a page at evil.example whose name resolves to 127.0.0.1 reaches the port, but not
    the UI."""
    port = server.ui_url.rsplit(":", 1)[1]
    status, body, _ = request(server.ui_url, "GET", "/", headers={"Host": f"evil.example:{port}"})
    assert status == 421 and b"answers only as" in body
    status, _, _ = request(server.ui_url, "GET", "/", headers={"Host": f"localhost:{port}"})
    assert status == 200


def test_a_sign_in_link_works_once_and_a_changed_token_ends_sessions(server: Server) -> None:
    link = server.sign_in_link()
    cookie, _ = session_cookie(server, link)
    code = link.split("#", 1)[1]
    status, body, _ = request(
        server.ui_url, "POST", "/ui/session", body={"code": code}, headers={"Origin": server.ui_url}
    )
    assert status == 401 and "expired or was used already" in json.loads(body)["error"]
    # A form posted from elsewhere cannot sign a browser in (login CSRF): JSON only, same origin only.
    status, _, _ = request(
        server.ui_url,
        "POST",
        "/ui/session",
        body={"token": server.token},
        headers={"Origin": "http://attacker.example"},
    )
    assert status == 403
    status, _, _ = request(server.ui_url, "GET", "/api/projects", headers={"Cookie": cookie})
    assert status == 200
    # The admin replaces a leaked token: the sessions made with the old one end with it.
    ports = (int(server.url.rsplit(":", 1)[1]), int(server.ui_url.rsplit(":", 1)[1]))
    server.stop()
    restarted = start_server(server.env, "--token", "a-brand-new-token", ports=ports)
    try:
        status, _, _ = request(restarted.ui_url, "GET", "/api/projects", headers={"Cookie": cookie})
        assert status == 401
    finally:
        restarted.stop()


def test_the_ui_listens_on_loopback_only_and_a_busy_port_is_one_sentence(dstack_env: DstackEnv) -> None:
    server = start_server(dstack_env)
    try:
        host, port = server.ui_url.split("://", 1)[1].rsplit(":", 1)
        assert host == "127.0.0.1"
        listening = _listening_addresses(int(port))
        assert listening == {"127.0.0.1"}, listening
        # The UI port taken: the foreground server says which flag fixes it, and exits.
        result = dstack_env.run("server", "--port", str(free_port()), "--ui-port", port, timeout=60)
        assert result.returncode != 0
        errors = [line for line in result.stderr.splitlines() if "Warning" not in line and "warn" not in line]
        expected = f"Port {port} on 127.0.0.1 is in use (another dstack server?); "
        assert errors[-1] == expected + "pass --ui-port (or --no-ui) to use another one"
    finally:
        server.stop()


def test_trusted_types_make_html_sinks_throw(server: Server, browser: Browser) -> None:
    browser.get(server.sign_in_link())
    browser.wait_text("header .user", "admin")
    error = browser.js(
        "try { document.body.insertAdjacentHTML('beforeend', '<b id=x>x</b>'); return 'rendered'; }"
        " catch (e) { return e.name; }"
    )
    assert error == "TypeError"
    assert browser.js("return document.getElementById('x')") is None


def _listening_addresses(port: int) -> set[str]:
    """The local addresses with a TCP socket listening on `port` (from /proc/net/tcp and tcp6)."""
    found = set()
    for table, family in (("/proc/net/tcp", socket.AF_INET), ("/proc/net/tcp6", socket.AF_INET6)):
        try:
            with open(table) as f:
                lines = f.read().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            fields = line.split()
            address, hex_port = fields[1].split(":")
            if fields[3] != "0A" or int(hex_port, 16) != port:  # 0A: LISTEN
                continue
            raw = bytes.fromhex(address)
            if family == socket.AF_INET:
                found.add(socket.inet_ntop(family, raw[::-1]))
            else:
                words = b"".join(raw[i : i + 4][::-1] for i in range(0, 16, 4))
                found.add(socket.inet_ntop(family, words))
    return found
