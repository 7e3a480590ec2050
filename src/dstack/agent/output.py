"""The one thread that publishes what running jobs write to their output files, as they write it.

A job's processes write straight into its output.log (see logstore.py). The watcher learns of each write
from inotify (IN_MODIFY, through ctypes: standard library only) and then publishes the new bytes, so a
line reaches readers within a scheduler tick of being written, and an idle job costs nothing. Where inotify
is unavailable (a kernel without it, or out of watches) it polls, quickly while output flows and slowly
once it stops. One thread for every job of the agent: no thread, pipe or reader process per job.
"""

from __future__ import annotations

import ctypes
import errno
import logging
import os
import select
import struct
import threading
import time
from typing import Dict, Optional, Set

from dstack.agent.logstore import LogStore

log = logging.getLogger(__name__)

_IN_MODIFY = 0x00000002
_IN_NONBLOCK = 0o4000
_IN_CLOEXEC = 0o2000000
_EVENT = struct.Struct("iIII")  # wd, mask, cookie, len (then len bytes of name)
# A safety net even with inotify (writes through mmap raise no event), and the pace of polling without it.
_SAFETY_SECONDS = 1.0
_POLL_FAST_SECONDS = 0.005
_POLL_SLOW_SECONDS = 0.2
# A flood of small writes would wake the watcher (and every reader) once per write: publishing at most
# once per this interval makes them big chunks, at no cost to a trickle (a line now and then goes at once).
_BATCH_SECONDS = 0.002


class _Inotify:
    def __init__(self) -> None:
        libc = ctypes.CDLL(None, use_errno=True)  # the interpreter links libc
        self._add = libc.inotify_add_watch
        self._add.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_uint32]
        self._rm = libc.inotify_rm_watch
        self._rm.argtypes = [ctypes.c_int, ctypes.c_int]
        fd = libc.inotify_init1(_IN_NONBLOCK | _IN_CLOEXEC)
        if fd < 0:
            raise OSError(ctypes.get_errno(), os.strerror(ctypes.get_errno()))
        self.fd = fd

    def add(self, path: str) -> int:
        wd = self._add(self.fd, os.fsencode(path), _IN_MODIFY)
        if wd < 0:
            raise OSError(ctypes.get_errno(), os.strerror(ctypes.get_errno()))
        return int(wd)

    def remove(self, wd: int) -> None:
        self._rm(self.fd, wd)  # fails harmlessly if the file is gone (the kernel dropped the watch)

    def read_events(self) -> Set[int]:
        changed: Set[int] = set()
        while True:
            try:
                data = os.read(self.fd, 64 * 1024)
            except BlockingIOError:
                return changed
            except OSError as e:
                if e.errno == errno.EINTR:
                    continue
                raise
            position = 0
            while position + _EVENT.size <= len(data):
                wd, _, _, length = _EVENT.unpack_from(data, position)
                changed.add(wd)
                position += _EVENT.size + length


class OutputWatcher:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._stores: Dict[int, LogStore] = {}  # inotify watch (or a counter when polling) -> store
        self._wd_of: Dict[int, int] = {}  # id(store) -> its key above
        self._next_key = -1
        self._inotify: Optional[_Inotify] = None
        try:
            self._inotify = _Inotify()
        except (OSError, AttributeError) as e:
            log.info("inotify is not available (%s); job output is polled", e)
        self._wake_r, self._wake_w = os.pipe()
        os.set_blocking(self._wake_w, False)
        self._thread = threading.Thread(target=self._loop, name="output-watcher", daemon=True)
        self._thread.start()

    def watch(self, store: LogStore) -> None:
        """Publish the store's file as it grows, until `unwatch`."""
        os.close(store.writer_fd())  # the file exists from now on (a watch needs it)
        key = None
        if self._inotify is not None:
            try:
                key = self._inotify.add(str(store.log_path))
            except OSError as e:
                log.warning("Cannot watch %s (%s); polling it", store.log_path, e)
        with self._lock:
            if key is None:
                key = self._next_key
                self._next_key -= 1
            self._stores[key] = store
            self._wd_of[id(store)] = key
        store.sync()
        self._wake()

    def unwatch(self, store: LogStore) -> None:
        """Stop watching; publishes what is in the file now (the job's processes are gone)."""
        with self._lock:
            key = self._wd_of.pop(id(store), None)
            if key is not None:
                self._stores.pop(key, None)
        if key is not None and key >= 0 and self._inotify is not None:
            self._inotify.remove(key)
        store.sync()

    def _wake(self) -> None:
        try:
            os.write(self._wake_w, b"x")
        except BlockingIOError:
            pass

    def _loop(self) -> None:
        poller = select.poll()
        poller.register(self._wake_r, select.POLLIN)
        if self._inotify is not None:
            poller.register(self._inotify.fd, select.POLLIN)
        interval = _POLL_SLOW_SECONDS
        last_sync = 0.0
        while True:
            with self._lock:
                polled = any(key < 0 for key in self._stores)
            timeout = interval if polled else _SAFETY_SECONDS
            ready = {fd for fd, _ in poller.poll(timeout * 1000)}
            since = time.monotonic() - last_sync
            if ready and since < _BATCH_SECONDS:
                time.sleep(_BATCH_SECONDS - since)  # more of the flood lands in this publication
            if self._wake_r in ready:
                try:
                    os.read(self._wake_r, 4096)
                except BlockingIOError:
                    pass
            try:
                changed = self._inotify.read_events() if self._inotify is not None else set()
            except OSError as e:
                log.warning("Reading inotify events failed (%s); polling job output", e)
                self._inotify = None
                changed = set()
            with self._lock:
                if ready:  # the files inotify named, and those it cannot watch
                    stores = [s for key, s in self._stores.items() if key in changed or key < 0]
                else:  # the safety net, or polling
                    stores = list(self._stores.values())
            grew = False
            last_sync = time.monotonic()
            for store in stores:
                try:
                    grew = store.sync() or grew
                except OSError as e:
                    log.warning("Cannot publish the output in %s: %s", store.log_path, e)
            interval = _POLL_FAST_SECONDS if grew else min(_POLL_SLOW_SECONDS, interval * 2)
