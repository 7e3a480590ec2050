"""A multi-node run in the web UI: the run page's node picker shows each node's output (the master's first),
on a real two-host fleet with placement: cluster, started with the real `dstack` CLI."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.e2e.fleetkit import apply, task, write_fleet
from tests.e2e.harness import DstackEnv
from tests.infra.sshhosts import ClientKey, SSHHost
from tests.ui.browser import Browser
from tests.ui.kit import Server

pytestmark = pytest.mark.e2e


def _rows(browser: Browser) -> list[str]:
    return [
        str(t)
        for t in browser.js("return [...document.querySelectorAll('.term-row')].map(r => r.textContent)")
    ]


def test_the_node_picker_shows_each_nodes_output(
    server: Server,
    browser: Browser,
    dstack_env: DstackEnv,
    fleet_hosts: list[SSHHost],
    client_key: ClientKey,
    tmp_path: Path,
) -> None:
    fleet = write_fleet(dstack_env.home, fleet_hosts, client_key, placement="cluster")
    assert apply(dstack_env, fleet).returncode == 0
    project = tmp_path / "project"
    project.mkdir()
    task(
        project,
        ["echo hello from node $DSTACK_NODE_RANK on $(hostname)", "sleep 600"],
        extra="nodes: 2\nresources:\n  cpu: 1..\n",
    )
    result = dstack_env.run("run", ".", "-y", "-d", "-n", "pair", cwd=project, timeout=300)
    assert result.returncode == 0, result.stderr

    browser.get(server.sign_in_link())
    browser.wait_text("header .user", "admin")
    browser.get(server.ui_url + "/main/runs/pair")
    browser.wait(lambda: browser.find_all("#node:not([hidden]) option"), what="the node picker")
    options = [
        str(o)
        for o in browser.js("return [...document.querySelectorAll('#node option')].map(o => o.textContent)")
    ]
    assert [o.split(" · ")[0] for o in options] == ["node 0 (master)", "node 1"], options
    master_line = browser.wait(
        lambda: next((r for r in _rows(browser) if r.startswith("hello from node 0")), None),
        what="the master's output",
    )
    browser.wait(lambda: "Nodes" in browser.text(".summary"), what="the nodes in the summary")
    browser.shot("multinode-master")
    browser.js(
        "const s = document.querySelector('#node'); s.value = '1'; s.dispatchEvent(new Event('change'))"
    )
    worker_line = browser.wait(
        lambda: next((r for r in _rows(browser) if r.startswith("hello from node 1")), None),
        what="node 1's output",
    )
    assert not any(r.startswith("hello from node 0") for r in _rows(browser))
    assert master_line.split(" on ")[1] != worker_line.split(" on ")[1]  # two hosts
    assert browser.find("a.download").get_attribute("href").endswith("/logs?node=1")
    browser.shot("multinode-worker")
    dstack_env.run("stop", "pair", "-y", check=True)
    browser.wait(lambda: browser.text("#run-status") == "terminated", what="the run to end", timeout=120)
    assert not browser.console_errors()
