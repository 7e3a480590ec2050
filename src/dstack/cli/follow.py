"""Following a run: its output to stdout as it is printed, its status to stderr, its exit code at the end.

The stream resumes from the byte offset it reached, so a reconnect after a lost link repeats and loses
nothing. Ctrl+C asks whether to stop the run (SPEC §4); a second Ctrl+C aborts it.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from typing import Any

from dstack.api.client import Client
from dstack.api.errors import APIError, ServerUnreachable
from dstack.api.stream import LinkLost
from dstack.cli.errors import CLIError
from dstack.cli.output import is_tty, note
from dstack.core import frames
from dstack.core.statuses import RunStatus

RECONNECT_FOR = 60.0  # seconds to keep trying after the link is lost
REVIVE_EVERY = 5.0  # seconds between tries to start the embedded server again


class Follower:
    def __init__(
        self,
        client: Client,
        name: str,
        offset: int = 0,
        tail: int | None = None,
        ask_on_interrupt: bool = True,
        on_status: Callable[[str, str | None], None] | None = None,
        node: int | None = None,
    ) -> None:
        self.client = client
        self.name = name
        self.node = node  # a multi-node run's node whose output to show (None: the master's)
        self.offset = offset  # the next byte of output to show: a reconnect resumes exactly here
        self.tail = tail
        self.ask_on_interrupt = ask_on_interrupt
        self.on_status = on_status
        self.status: str | None = None
        self._shown: set[str] = set()
        self._last_message: str | None = None
        self._revived_at = -REVIVE_EVERY

    def follow(self) -> int:
        """Stream until the run ends; returns the CLI's exit code for it."""
        try:
            return self._stream_until_end()
        except KeyboardInterrupt:
            return self._interrupted()

    def _stream_until_end(self) -> int:
        lost_since: float | None = None
        while True:
            try:
                end = self._stream_once()
                lost_since = None
            except (LinkLost, ServerUnreachable) as e:
                now = time.monotonic()
                if lost_since is None:
                    lost_since = now
                    note(f"{e.message}; reconnecting...", dim=True)
                if self._revive(e):
                    continue  # it answers again: resume from the offset reached
                if now - lost_since > RECONNECT_FOR:
                    raise CLIError(
                        f"Lost the link to the server and could not reconnect for {RECONNECT_FOR:.0f} s; "
                        f"the run may still be going: dstack attach {self.name}"
                    ) from e
                time.sleep(1.0)
                continue
            if end is not None:
                return self._finish(end)
            # The stream ended without an end frame: the server closed it (e.g. restarting); reconnect.
            lost_since = lost_since or time.monotonic()

    def _revive(self, error: APIError) -> bool:
        """Start the embedded server again if it is gone (as `dstack ps` would), at most every few seconds."""
        if isinstance(error, LinkLost):
            return False  # the stream broke mid-way; the next try to connect tells whether anything answers
        now = time.monotonic()
        if now - self._revived_at < REVIVE_EVERY:
            return False
        self._revived_at = now
        from dstack.cli.connection import revive

        try:
            return revive(self.client)
        except CLIError as e:  # it would not start: say why, and keep trying to reconnect
            note(e.message, dim=True)
            return False

    def _stream_once(self) -> dict[str, Any] | None:
        tail, self.tail = self.tail, None
        stream = self.client.attach(self.name, offset=self.offset, tail=tail, node=self.node)
        out = sys.stdout.buffer
        try:
            # Each piece of output is written out before the next is read: one buffer serves them all.
            for frame in stream.frames(reuse=True):
                if frame.kind == frames.LOG:
                    if frame.offset != self.offset and tail is None:
                        # Only a tail request may start elsewhere; anything else would repeat or skip output.
                        raise LinkLost("The server sent output from an unexpected offset")
                    out.write(frame.data)
                    out.flush()
                    self.offset = frame.offset + len(frame.data)
                    tail = None
                elif frame.kind == frames.STATUS and frame.info is not None:
                    self._show_status(frame.info["status"], frame.info.get("status_message"))
                elif frame.kind == frames.END and frame.info is not None:
                    return frame.info
        finally:
            stream.close()
        return None

    def _show_status(self, status: str, message: str | None) -> None:
        self.status = status
        if self.on_status is not None:
            self.on_status(status, message)
        if status == RunStatus.PENDING.value:
            if "pending" not in self._shown:
                self._shown.add("pending")
                note("Waiting for capacity... To exit, press Ctrl+C...")
            if message and message != self._last_message:
                # Why it waits, each time that changes (Slurm's reason: Priority, then Resources, ...).
                self._last_message = message
                note(message, dim=True)
        elif status == RunStatus.PULLING.value and message and message != self._last_message:
            # What the host does for the environment: pulling an image, creating a venv.
            self._last_message = message
            note(message, dim=True)

    def _finish(self, end: dict[str, Any]) -> int:
        status = end["status"]
        if status == RunStatus.DONE.value:
            return 0
        reason = end.get("termination_message") or end.get("termination_reason") or status
        note(f"Run {self.name} {status}: {reason}")
        if end.get("termination_reason") == "commands_failed" and end.get("exit_code"):
            return int(end["exit_code"])
        return 1

    # -- Ctrl+C ------------------------------------------------------------------------------------------

    def _interrupted(self) -> int:
        sys.stderr.write("\n")
        if not self.ask_on_interrupt:
            return 130
        try:
            if is_tty(sys.stdin):
                stop = _ask("Stop the run before detaching? [y/n]: ")
            else:
                note("Standard input is not a terminal, so stopping the run without asking")
                stop = True
            if not stop:
                note(f"Detached; the run goes on. Attach again with: dstack attach {self.name}")
                return 0
            self.client.stop([self.name], abort=False)
            note("Stopping... (press Ctrl+C again to abort)")
            self.ask_on_interrupt = False
            self._stream_until_end()
            note("Stopped")
            return 1
        except KeyboardInterrupt:
            try:
                self.client.stop([self.name], abort=True)
            except APIError as e:
                raise CLIError(f"Could not abort the run: {e.message}") from e
            sys.stderr.write("\n")
            note("Aborted")
            return 1


def _ask(question: str) -> bool:
    while True:
        sys.stderr.write(question)
        sys.stderr.flush()
        answer = sys.stdin.readline()
        if not answer:
            return True
        answer = answer.strip().lower()
        if answer in ("y", "yes"):
            return True
        if answer in ("n", "no"):
            return False
