"""The --reload loop: a watcher thread collects changed paths, a sender thread turns them into batches.

Latency: the watcher hands over a group of changes once the tree has been quiet for STEP_MS (inotify
through watchfiles' Rust backend; its default 1.6 s debounce is far too slow here). A group that looks
like a burst (a git checkout, a formatter over the tree) waits until BURST_QUIET passes without more, so
the whole burst travels as one batch.

Reliability: changed paths stay "dirty" until a batch with them is applied. Whatever fails to reach the
task (the run not submitted yet, the task not running yet, a lost link, a restarting server) is sent
when it can be, with what is on disk by then; edits made meanwhile join it. A run that gets a new job (a
fresh copy of the code) is compared again in full. And since an event can be lost (inotify's queue
overflows, and watchfiles drops the rescan that asks for; a file written in a folder before the folder is
watched), the whole tree is compared with the index now and then, stat by stat (RESCAN_*).
"""

from __future__ import annotations

import hashlib
import json
import os
import queue
import threading
import time
from collections.abc import Callable
from typing import Any

from dstack.cli.reload.batch import READ_FLAGS, build_batches
from dstack.cli.reload.changes import GIT_EXCLUDE, compute, invalidate_rules, relative_path
from dstack.cli.reload.transport import Finished, LinkDown, NotReady, Refused, Transport
from dstack.cli.reload.tree import Entry, Index, join, scan
from dstack.code.errors import CodeError
from dstack.code.ignore import GIT_DIR, IgnoreRules

STEP_MS = 25  # quiet time that ends a group of changes ...
DEBOUNCE_MS = 200  # ... or this long after its first change, however busy the tree is
SETTLE = 0.05  # a group waits this long for the next one (a burst may start slowly)
BURST_PATHS = 32  # changes that look like a burst ...
BURST_QUIET = 0.45  # ... wait until no more come for this long (over DEBOUNCE_MS: groups keep coming)
BURST_MAX = 5.0  # ... but never longer than this
NOT_READY_RETRY = 0.5  # seconds between tries while the task is not running yet
RETRY_FIRST = 0.25  # seconds before the first retry after a lost link; doubles up to RETRY_MAX
RETRY_MAX = 2.0
COMPARE_CHUNK_BYTES = 512 * 1024  # JSON per compare request (the agent takes up to 1 MB)
COMPARE_CHUNK_ENTRIES = 5000
RESCAN_MIN = 5.0  # seconds between full compares of the tree with the index, at least ...
RESCAN_COST = 50  # ... and this many times what the last one took (a huge tree is compared less often)
_STOP = None  # tells the sender thread to end


class Reloader:
    def __init__(
        self,
        transport: Transport,
        root: str,
        rules: IgnoreRules,
        warn: Callable[[str], None],
        info: Callable[[str], None],
    ) -> None:
        self.root = root
        self.rules = rules
        self.index = Index()
        self._transport = transport
        self._warn_out = warn
        self._info = info
        self._compare_first = True
        self._dirty: set[str] = set()
        self._events: queue.Queue[set[str] | None] = queue.Queue()
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._notify: Any = None
        self._job_id: str | None = None
        self._retry_at: float | None = None
        self._retry_delay = RETRY_FIRST
        self._link_down = False
        self._warned: dict[str, str] = {}
        self._rescan_at = time.monotonic() + RESCAN_MIN

    # -- life cycle --------------------------------------------------------------------------------------

    def start(self, *, baseline: bool) -> None:
        """Watch from now on. With `baseline`, the task's copy is taken to be the tree as it is now (the
        code about to be packed); without, the task's copy is compared with the tree first."""
        from watchfiles._rust_notify import RustNotify

        # Watching starts before the baseline is read, so no change can fall between the two.
        self._notify = RustNotify([self.root], False, False, 300, True, True)
        if baseline:
            self.index = Index(dict(scan(self.root, "", self.rules, self._warn_once)))
            self._compare_first = False
        for target, name in ((self._watch, "reload-watch"), (self._send_loop, "reload-send")):
            thread = threading.Thread(target=target, name=name, daemon=True)
            thread.start()
            self._threads.append(thread)

    def submitted(self) -> None:
        """The run exists now: what waited for it is sent (as soon as the task runs)."""
        self._transport.submitted = True
        self._events.put(set())  # wake the sender

    def stop(self, timeout: float = 2.0) -> None:
        self._stop.set()
        self._events.put(_STOP)
        for thread in self._threads:
            if thread is not threading.current_thread():
                thread.join(timeout)
        self._transport.close()

    # -- the watcher thread ------------------------------------------------------------------------------

    def _watch(self) -> None:
        try:
            while not self._stop.is_set():
                raw = self._notify.watch(DEBOUNCE_MS, STEP_MS, 5000, self._stop)
                if isinstance(raw, str):
                    continue  # "timeout" (nothing changed), or "stop" (the loop condition ends it)
                paths = {rel for _, path in raw if (rel := self._relevant(path)) is not None}
                if paths:
                    self._events.put(paths)
        except Exception as e:  # e.g. the inotify watch limit; the run goes on without reload
            self._warn_once(f"stopped watching {self.root} ({e}); edits are not sent any more")
        finally:
            self._notify.close()
            self._events.put(_STOP)

    def _relevant(self, path: str) -> str | None:
        rel = relative_path(self.root, path)
        if rel is None or (rel.startswith(GIT_DIR + "/") and rel != GIT_EXCLUDE) or rel == GIT_DIR:
            return None
        return rel

    # -- the sender thread -------------------------------------------------------------------------------

    def _send_loop(self) -> None:
        try:
            while not self._stop.is_set():
                if not self._gather():
                    return
                if self._retry_at is not None and time.monotonic() < self._retry_at:
                    continue
                if (self._dirty or self._compare_first) and self._transport.submitted:
                    self._attempt()
        except Exception as e:  # a bug must not take the attached run down with it
            if not self._stop.is_set():  # stopping closes the connection under a send: not news
                self._warn_once(f"stopped sending edits after an unexpected error: {e!r}")
        finally:
            self._stop.set()

    def _gather(self) -> bool:
        """Wait for changes (or a retry), then take everything pending; False to stop."""
        idle = not self._dirty and not self._compare_first
        if idle or not self._transport.submitted:
            # Nothing to send (or nowhere yet): sleep until the watcher has something, or a rescan is due.
            timeout: float | None = max(0.0, self._rescan_at - time.monotonic())
        elif self._retry_at is None:
            timeout = 0.0
        else:
            timeout = max(0.0, self._retry_at - time.monotonic())
        try:
            if not self._take(self._events.get(timeout=timeout)):
                return False
        except queue.Empty:
            if time.monotonic() >= self._rescan_at:
                self._dirty.add("")  # compare the whole tree with the index
                self._rescan_at = float("inf")  # until this one has run
            return True
        try:
            if not self._take(self._events.get(timeout=SETTLE)):
                return False
        except queue.Empty:
            pass
        while True:
            try:
                if not self._take(self._events.get_nowait()):
                    return False
            except queue.Empty:
                break
        if len(self._dirty) < BURST_PATHS:
            return True
        deadline = time.monotonic() + BURST_MAX
        while time.monotonic() < deadline:
            try:
                if not self._take(self._events.get(timeout=BURST_QUIET)):
                    return False
            except queue.Empty:
                break
        return True

    def _take(self, paths: set[str] | None) -> bool:
        if paths is None:
            return False
        # A changed ignore file may bring paths back into the code: look at its folder again in full.
        self._dirty |= paths | invalidate_rules(self.rules, paths)
        return True

    def _attempt(self) -> None:
        snapshot = set(self._dirty)
        try:
            if self._compare_first:
                self._compare_all()
                snapshot = set(self._dirty)
            started = time.monotonic()
            changes = compute(self.root, self.index, snapshot, self.rules, self._warn_once)
            if "" in snapshot:
                self._rescan_at = time.monotonic() + max(
                    RESCAN_MIN, RESCAN_COST * (time.monotonic() - started)
                )
            for rel in changes.forget:
                self.index.remove(rel)
            for batch in build_batches(self.root, changes, self._warn_once):
                result = self._transport.send_batch(batch)
                self._applied(batch.deletes, batch.puts, result)
            self._dirty -= snapshot
            self._retry_at, self._retry_delay = None, RETRY_FIRST
            if self._link_down:
                self._link_down = False
                self._info("reload: the link is back; edits reach the task again")
        except NotReady:
            self._retry_at = time.monotonic() + NOT_READY_RETRY
        except LinkDown as e:
            if not self._link_down and not self._stop.is_set():
                self._link_down = True
                self._info(f"reload: {e.message}; edits are kept and sent once the link is back")
            self._retry_later()
        except Finished:
            self._stop.set()
        except Refused as e:
            self._warn_once(f"the server refused the changes: {e.message}")
            self._dirty -= snapshot  # the same batch would be refused again; later edits try anew

    def _retry_later(self) -> None:
        self._retry_at = time.monotonic() + self._retry_delay
        self._retry_delay = min(RETRY_MAX, self._retry_delay * 2)

    def _applied(self, deletes: list[str], puts: list[tuple[str, Entry]], result: dict[str, Any]) -> None:
        self._check_job(result.get("job_id"))
        failed = {}
        for error in result.get("errors") or []:
            failed[error["path"]] = error["error"]
            self._warn_once(f"could not apply {error['path']} in the task: {error['error']}", error["path"])
        for rel in deletes:
            if rel not in failed:
                self.index.remove(rel)
        for rel, entry in puts:
            if rel not in failed:
                self.index.put(rel, entry)
                self._warned.pop(rel, None)

    def _check_job(self, job_id: Any) -> None:
        if isinstance(job_id, str):
            if self._job_id is not None and job_id != self._job_id:
                # A new job started from the original code: what this CLI sent before is not there.
                self._compare_first = True
            self._job_id = job_id

    def _compare_all(self) -> None:
        """Ask the task which of the local entries it already has; only the others will travel."""
        local = list(scan(self.root, "", self.rules, self._warn_once))
        index = Index()
        job_id = None
        start = 0
        while start < len(local):
            chunk: list[tuple[str, Entry, list[Any]]] = []
            size = 0
            while start < len(local) and len(chunk) < COMPARE_CHUNK_ENTRIES and size < COMPARE_CHUNK_BYTES:
                rel, entry = local[start]
                detail: Any = entry.size if entry.kind == "file" else entry.target
                chunk.append((rel, entry, [rel, entry.kind, detail]))
                size += len(json.dumps(rel)) + 32
                start += 1
            answer = self._transport.compare([item[2] for item in chunk])
            job_id = answer.get("job_id")
            for (rel, entry, _), verdict in zip(chunk, answer.get("results") or [], strict=False):
                if verdict is True or (isinstance(verdict, str) and _sha256(self.root, rel) == verdict):
                    index.put(rel, entry)
        self.index = index
        self._compare_first = False
        self._job_id = job_id if isinstance(job_id, str) else self._job_id
        self._dirty.add("")

    def _warn_once(self, message: str, rel: str = "") -> None:
        if rel and self._warned.get(rel) == message:
            return
        if not rel and message in self._warned.values():
            return
        self._warned[rel or message] = message
        self._warn_out(f"reload: {message}")


def _sha256(root: str, rel: str) -> str | None:
    digest = hashlib.sha256()
    try:
        fd = os.open(join(root, rel), READ_FLAGS)
        with os.fdopen(fd, "rb") as f:
            for chunk in iter(lambda: f.read(1024 * 1024), b""):
                digest.update(chunk)
    except (OSError, CodeError):
        return None
    return digest.hexdigest()
