"""Signing in to the web UI: `dstack ui`'s one-time link, a pasted token, a wrong one, signing out."""

from __future__ import annotations

import json
import stat
from pathlib import Path

import pytest

from tests.e2e.harness import DstackEnv, wait_for
from tests.ui.browser import Browser
from tests.ui.kit import Server, add_user

pytestmark = pytest.mark.e2e


def _fake_browser(env: DstackEnv) -> Path:
    """A $BROWSER that records the URL it is asked to open (Python's webbrowser honours $BROWSER)."""
    opened = env.home / "opened-url"
    script = env.home / "browser.sh"
    script.write_text(f'#!/bin/sh\nprintf "%s" "$1" > {opened}\n')
    script.chmod(script.stat().st_mode | stat.S_IEXEC)
    env.env["BROWSER"] = str(script)
    return opened


def test_dstack_ui_opens_the_browser_signed_in(dstack_env: DstackEnv, browser: Browser) -> None:
    opened = _fake_browser(dstack_env)
    # No server configured: `dstack ui` starts the embedded one, with its UI, like the first `dstack run`.
    result = dstack_env.run("ui", timeout=120)
    assert result.returncode == 0, result.stderr
    assert "Started a dstack server in the background" in result.stderr
    url = wait_for(lambda: opened.exists() and opened.read_text(), timeout=30, what="the browser to be asked")
    token = json.loads((dstack_env.home / ".dstack" / "config.yml").read_text())["projects"][0]["token"]
    # The link carries a one-time code in its fragment, never the token; nothing printed carries it either.
    assert token not in url and token not in result.stdout + result.stderr
    base, code = url.split("#", 1)
    assert base.endswith("/sign-in") and code
    assert url.split("#")[0] in result.stderr  # the user is told where it opened (without the code)

    browser.get(url)
    browser.wait_text("header .user", "admin")
    browser.wait(lambda: browser.find("section .empty"), what="the runs page")
    assert browser.driver.current_url.endswith("/main/runs")  # the code is gone from the address bar
    browser.shot("runs-after-dstack-ui")

    # The link works once: opened again (e.g. from the history, by someone else), it signs nobody in.
    other = Browser(browser.artifacts)
    try:
        other.get(url)
        sentence = other.wait_text("#sign-in-error", "expired or was used already")
        assert sentence.count(".") == 1
        other.shot("used-link")
    finally:
        other.quit()


def test_a_wrong_token_is_one_sentence_and_the_right_one_signs_in(server: Server, browser: Browser) -> None:
    browser.get(server.ui_url + "/main/runs")
    browser.wait(lambda: "/sign-in" in browser.driver.current_url, what="the sign-in page")
    browser.shot("sign-in")
    field = browser.find("#token")
    field.send_keys("not-the-token")
    browser.find("form.sign-in button[type=submit]").click()
    assert browser.wait_text("#sign-in-error", "not valid") == "That token is not valid for this server."
    browser.shot("wrong-token")
    assert not browser.find_all("header .user")

    field = browser.find("#token")
    field.clear()
    field.send_keys(server.token)
    browser.find("form.sign-in button[type=submit]").click()
    browser.wait_text("header .user", "admin")
    # Back where the user was going before signing in.
    browser.wait(lambda: browser.driver.current_url.endswith("/main/runs"), what="the runs page")
    cookie = next(c for c in browser.driver.get_cookies() if c["name"].startswith("dstack_session_"))
    assert cookie["httpOnly"] is True and cookie["sameSite"] == "Strict"
    assert browser.js("return document.cookie") == ""  # a script on the page cannot read it

    browser.find("header .who button").click()  # sign out
    browser.wait(lambda: "/sign-in" in browser.driver.current_url, what="signing out")
    browser.get(server.ui_url + "/main/runs")
    browser.wait(lambda: "/sign-in" in browser.driver.current_url, what="the session to be over")


def test_a_user_sees_only_their_projects(server: Server, browser: Browser) -> None:
    add_user(server.db_path, "alice", "alice-token", "vision")
    browser.get(server.sign_in_link(project=None, token="alice-token"))
    browser.wait_text("header .user", "alice")
    browser.wait(lambda: browser.driver.current_url.endswith("/vision/runs"), what="alice's project")
    # One project: no picker, and the admin's project `main` is nowhere.
    assert not browser.find_all("select.project-picker")
    assert browser.text("header .project-name") == "vision"
    browser.get(server.ui_url + "/main/runs")
    browser.wait_text("main .error", "not one of yours")
    browser.shot("not-a-member")
    status = browser.js(
        "return fetch('/api/project/main/runs', {credentials: 'same-origin'}).then(r => r.status)"
    )
    assert status == 403
    assert browser.js("return fetch('/api/projects').then(r => r.json()).then(p => p.map(x => x.name))") == [
        "vision"
    ]


def test_every_asset_comes_from_the_ui_itself(server: Server, browser: Browser) -> None:
    """Every asset the page loads comes from the UI's own origin (nothing from a CDN or font service)."""
    browser.get(server.sign_in_link())
    browser.wait_text("header .user", "admin")
    origins = browser.js(
        "return performance.getEntriesByType('resource').map(e => new URL(e.name).origin)"
        ".concat([location.origin])"
    )
    assert set(origins) == {server.ui_url}
    assert not browser.console_errors()
