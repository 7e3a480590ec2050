"""The steps of `dstack run` (SPEC §4): configuration -> plan -> confirm -> code -> submit -> attach."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, TypeVar

from dstack.api.client import Client
from dstack.cli.connection import get_client
from dstack.cli.errors import CLIError
from dstack.cli.follow import Follower
from dstack.cli.output import confirm, human_size, note, table
from dstack.cli.requirements import OFFER_HEADERS, offer_row
from dstack.cli.runspec import PreparedRun, finalize, prepare

if TYPE_CHECKING:
    from dstack.code import CodeSnapshot

PLAN_OFFERS_SHOWN = 3
PACK_ATTEMPTS = 3
T = TypeVar("T")


def run(args: argparse.Namespace) -> int:
    prepared = prepare(args)
    if args.reload and args.detach:
        raise CLIError("--reload sends your edits while the CLI stays attached; drop -d to use it")
    client = get_client(args.project)
    early = _early_snapshot(prepared, args)
    plan = client.plan(prepared.spec, code_hash=early.code_hash if early is not None else None)
    print_plan(plan, prepared)
    if plan.get("refusal"):
        raise CLIError(plan["refusal"])
    scheduled = plan.get("schedule") is not None
    if plan.get("no_offer_message") and not prepared.retry and not scheduled:
        raise CLIError(plan.get("no_offer_message") or "No offer fits this task")
    forwards = _reserve_ports(client, prepared, plan, detach=args.detach)
    if not args.yes and not confirm("Continue?"):
        note("Exiting...")
        return 0
    finalize(prepared, plan["run_name"], args.run_args)
    reloader = None
    if args.reload:  # watching starts before packing, so no edit falls between the two
        from dstack.cli.reload import start_reload

        reloader = start_reload(client, prepared.code_root, plan["run_name"], baseline=True)
    if prepared.upload_code:
        if early is not None and plan.get("has_code"):
            prepared.spec["code_hash"] = early.code_hash  # the project has it all: nothing to send
        else:
            prepared.spec["code_hash"] = upload_code(client, prepared, first=early)
    if prepared.files:
        prepared.spec["files"] = upload_files(client, prepared)
    submitted = client.submit(prepared.spec)
    name = submitted["name"]
    if reloader is not None:
        reloader.submitted()  # edits made meanwhile wait no more
    if scheduled and not args.detach:
        # It starts at its times, over and over: following it here would hold the terminal for days.
        from dstack.config.cron import format_utc

        upcoming = submitted.get("next_start_at")
        when = f" at {format_utc(upcoming)}" if upcoming else ""
        note(
            f"Run {name} is scheduled to start{when}; see it with dstack ps, stop it with dstack stop {name}"
        )
        print(name)
        return 0
    if args.detach:
        note(f"Run {name} submitted; follow it with: dstack logs -f {name}")
        print(name)
        return 0
    if forwards:
        from dstack.cli.ports import follow_with_ports

        return follow_with_ports(client, name, forwards)
    return Follower(client, name).follow()


def _reserve_ports(client: Client, prepared: PreparedRun, plan: dict[str, Any], *, detach: bool) -> list[Any]:
    """SPEC §4 step 3: every local port the run will be reached on is free (and held) before submission."""
    if not prepared.spec["ports"]:
        return []
    from dstack.cli.ports import reserve_for_run

    return reserve_for_run(client, prepared.spec["ports"], plan, detach=detach)


def print_plan(plan: dict[str, Any], prepared: PreparedRun) -> None:
    """The plan (SPEC §4): the run's settings, then the offers, cheapest first, unavailable ones last."""
    rows = [[key, value] for key, value in prepared.summary.items()]
    if (plan.get("nodes") or 1) > 1:
        rows.append(["Nodes", str(plan["nodes"])])
    rows.append(["Resources", plan["requirements"] + (" per node" if (plan.get("nodes") or 1) > 1 else "")])
    schedule = plan.get("schedule")
    if schedule is not None:
        from dstack.config.cron import format_utc

        upcoming = f" (next start {format_utc(schedule['next_start'])})" if schedule.get("next_start") else ""
        rows.append(["Schedule", ", ".join(schedule["cron"]) + " UTC" + upcoming])
    table(["", ""], rows, stream=sys.stderr)
    for line in plan.get("notes") or []:
        note(line)
    offers = plan["offers"]
    if offers:
        fitting = [o for o in offers if o["availability"] != "no fit"]
        # The cheapest offers that fit, then (where no offer fits) what never can and why.
        shown = fitting[:PLAN_OFFERS_SHOWN] or offers[:PLAN_OFFERS_SHOWN]
        body = [offer_row(i, o, _availability(o)) for i, o in enumerate(shown, 1)]
        if plan["total_offers"] > len(shown) and fitting:
            body.append(["...", "", "", "", "", "", "", f"{plan['total_offers'] - len(shown)} more"])
        sys.stderr.write("\n")
        table(
            [*OFFER_HEADERS, ""],
            body,
            stream=sys.stderr,
            dim_after_first=True,
        )
        note(plan["sharing"], dim=True)
        if plan.get("busy_message"):
            if prepared.retry:
                note(f"{plan['busy_message']}; the run will wait for capacity")
            else:
                note(
                    f"{plan['busy_message']}; without --retry-limit the run fails at once "
                    "(pass --retry-limit DURATION, e.g. 1h, to wait for capacity)"
                )
    if plan.get("no_offer_message") and prepared.retry:
        # (Without retry the run stops here with this sentence as its error, so it is not said twice.)
        sys.stderr.write("\n")
        note(f"{plan['no_offer_message']} The run will wait for capacity.")
    sys.stderr.write("\n")


def _availability(offer: dict[str, Any]) -> str:
    if offer["availability"] == "available":
        return offer.get("note") or ""  # e.g. a Slurm partition's node counts
    return f"{offer['availability']}: {offer['note']}" if offer.get("note") else offer["availability"]


def _early_snapshot(prepared: PreparedRun, args: argparse.Namespace) -> CodeSnapshot | None:
    """Without a question to ask (-y), a tree snapshotted before is snapshotted before the plan (~1 ms: only
    what changed is read), so that the plan says whether the server has this code: a warm run saves the
    round trip that asks. Anything amiss (too large, a file changing) is left to the upload step, which
    reports it after the plan as always; a tree never snapshotted is hashed only once the plan is shown."""
    if not args.yes or args.reload or not prepared.upload_code:
        return None
    from dstack.code import CodeError, snapshot_code, snapshotted_before

    try:
        if not snapshotted_before(prepared.code_root):
            return None
        return snapshot_code(prepared.code_root, limit_bytes=prepared.code_limit)
    except (CodeError, OSError):
        return None


def upload_code(client: Client, prepared: PreparedRun, first: CodeSnapshot | None = None) -> str:
    """SPEC §4 step 4: only the contents the server lacks travel (none for an unchanged tree). `first`: a
    snapshot already taken, for the first attempt (a tree is not walked twice)."""
    from dstack.code import snapshot_code

    taken = [first] if first is not None else []

    def attempt() -> str:
        if taken:
            snapshot = taken.pop()
        else:  # the first attempt without a snapshot, or a retry (a file changed meanwhile)
            snapshot = snapshot_code(prepared.code_root, limit_bytes=prepared.code_limit)
        _upload(client, snapshot, "the code")
        return snapshot.code_hash

    return _consistent(attempt)


def upload_files(client: Client, prepared: PreparedRun) -> list[dict[str, Any]]:
    """Snapshot and upload each `files` entry (only what the server lacks); the spec's entries."""
    from dstack.cli.run_files import pack_files

    def attempt() -> list[dict[str, Any]]:
        uploads = []
        for upload, snapshot in pack_files(prepared.files, prepared.code_limit):
            _upload(client, snapshot, f"files {upload['source']}")
            uploads.append(upload)
        return uploads

    return _consistent(attempt)


def _consistent(attempt: Callable[[], T]) -> T:
    """Pack and upload again when a file was saved meanwhile (an editor, `--reload` users): what was sent
    stays on the server, so a new attempt sends only what changed. A file that keeps changing is an error."""
    from dstack.code.errors import FileChangedError

    for left in reversed(range(PACK_ATTEMPTS)):
        try:
            return attempt()
        except FileChangedError as e:
            if not left:
                raise
            note(f"The file {e.rel_path} changed while the code was being {e.doing}; packing again", dim=True)
    raise AssertionError("unreachable")


def _upload(client: Client, snapshot: Any, what: str) -> None:
    """Only the contents the server lacks travel (none for an unchanged tree)."""
    missing = client.missing_code(snapshot)
    if missing is None:
        return
    size = sum(snapshot.blob_size(sha256) for sha256 in missing)
    if missing:
        note(f"Uploading {what}: {len(missing)} of {snapshot.files} files, {human_size(size)}", dim=True)
    with _progress(size) as advance:
        client.send_code(snapshot, missing, progress=advance)


class _progress:
    """A rich progress bar on a terminal for uploads worth watching; nothing otherwise."""

    def __init__(self, total: int) -> None:
        self.total = total
        self._progress: Any = None
        self._task: Any = None

    def __enter__(self) -> Any:
        from dstack.cli.output import is_tty

        if not is_tty(sys.stderr) or self.total < 1024 * 1024:
            return lambda _n: None
        from rich.progress import BarColumn, DownloadColumn, Progress, TransferSpeedColumn

        self._progress = Progress(
            "Uploading code", BarColumn(), DownloadColumn(), TransferSpeedColumn(), transient=True
        )
        self._progress.start()
        self._task = self._progress.add_task("upload", total=self.total)
        return lambda n: self._progress.advance(self._task, n)

    def __exit__(self, *exc: object) -> None:
        if self._progress is not None:
            self._progress.stop()
