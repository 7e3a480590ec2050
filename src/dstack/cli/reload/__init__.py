"""`--reload` (SPEC §7): every change under the code root reaches the running task's copy of the code
within a second, so an app's own auto-reload (uvicorn, Flask, Gradio, Streamlit) picks it up.

    CLI: watcher (inotify) -> changed paths -> compare with the index -> tar batch
         -> POST /api/project/P/runs/R/files (server) -> POST /api/jobs/J/files (agent) -> the job's code/

The ignore rules are the code upload's (.gitignore, .git/info/exclude, .dstackignore, never .git).
"""

from __future__ import annotations

import atexit
from pathlib import Path
from typing import Any

from dstack.api.client import Client
from dstack.cli.errors import CLIError
from dstack.cli.output import note


def start_reload(client: Client, code_root: Path, run_name: str, *, baseline: bool) -> Any:
    """Send the changes under code_root to the run until the CLI exits.

    `dstack run` calls this before packing the code, with `baseline`: the task starts from the tree as
    it is now, so only what changes from here on travels; edits wait until it calls `submitted()` on the
    returned reloader. `dstack attach` calls it without: the task's copy is compared with the tree first,
    and what differs travels.
    """
    from dstack.cli.reload.reloader import Reloader
    from dstack.cli.reload.transport import Transport
    from dstack.code.ignore import IgnoreRules

    root = str(code_root)
    transport = Transport(client, run_name, submitted=not baseline)
    reloader = Reloader(transport, root, IgnoreRules(code_root), warn=note, info=_dim)
    try:
        reloader.start(baseline=baseline)
    except (OSError, RuntimeError) as e:  # RuntimeError: watchfiles' own (e.g. the inotify watch limit)
        raise CLIError(f"Cannot watch {root} for --reload: {getattr(e, 'strerror', None) or e}") from e
    atexit.register(reloader.stop)
    _dim(f"Reload mode: every change under {root} goes to the task as you save it")
    return reloader


def attach_reload(client: Client, run: dict[str, Any]) -> Any:
    """`dstack attach RUN --reload`: sync the current folder's code root with the run's copy."""
    from dstack.code import find_code_root
    from dstack.core.statuses import RunStatus

    if RunStatus(run["status"]).is_finished:
        raise CLIError(f"Run {run['name']} is {run['status']}; there is no task to send edits to")
    code_root = find_code_root(Path.cwd())
    _check_attach_root(code_root, run)
    return start_reload(client, code_root, run["name"], baseline=False)


def _check_attach_root(code_root: Path, run: dict[str, Any]) -> None:
    """Refuse to sync a folder that is not the run's: its files would overwrite the task's code."""
    config_path = (run.get("spec") or {}).get("configuration_path") or ""
    if config_path and not Path(config_path).is_absolute() and not (code_root / config_path).is_file():
        raise CLIError(
            f"Run {run['name']} was started from a folder with {config_path}, and {code_root} has none; "
            "run dstack attach --reload in that folder"
        )


def _dim(message: str) -> None:
    note(message, dim=True)
