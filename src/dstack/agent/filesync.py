"""Live edits for `dstack run --reload` (SPEC §7): applying the CLI's changes to a job's code folder.

A batch is a JSON change list, `{"delete": [path, ...], "put": [[path, kind, mode, size, ref], ...]}`:
deletions, then folders, files and symlinks to put in place, as entries of the code's manifest format
(dstack.agent.codestore): a file is named by its content's sha256, and its bytes come from the agent's
code store, where the server put them first (only those the store lacked travel: the same store as the
code of jobs, so a file put back as it was sends nothing). The puts are checked by the same rules as the
code (unpack.check_items), and every path is also checked on disk, since earlier batches and the task
itself shape the folder: a path whose parent resolves outside the code folder is refused, the last
component is never followed (a symlink is replaced, not written through), and symlinks must point inside.

Files are copied to a temporary name and renamed into place, so an app's own reloader never reads half a
file. Their mtime is the time of writing, not the user's: reloaders (uvicorn, werkzeug) reload only when
an mtime grows, and restoring an older file must reload too.

A second route compares the CLI's files with the job's copy (for `dstack attach --reload`), so that only
files that differ travel.
"""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
import stat
import threading
from http import HTTPStatus
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Tuple

from dstack.agent.codestore import parse_entry
from dstack.agent.httpserver import ApiError, Exchange, Route
from dstack.agent.jobs.job import RUNNING, Job
from dstack.agent.jobs.registry import JobRegistry
from dstack.agent.unpack import (
    DIR,
    SYMLINK,
    Item,
    UnpackError,
    check_items,
    copy_file,
    normalise_path,
    remove_path,
)

log = logging.getLogger(__name__)

MAX_COMPARE_ENTRIES = 20_000
MAX_BATCH_ENTRIES = 100_000
MAX_BATCH_JSON_BYTES = 32 * 1024 * 1024
_FILES = r"/api/jobs/(?P<job_id>[^/]+)/files"
_CHUNK = 1024 * 1024
_TEMP_PREFIX = ".dstack-sync-"  # no .py suffix: a reloader that watches *.py ignores it
_KINDS = ("file", "dir", "symlink")


class Refused(Exception):
    """One change could not be applied; the message completes "<path>: ..."."""


class FileSync:
    def __init__(self, registry: JobRegistry, content: Callable[[str], Path]) -> None:
        self._registry = registry
        self._content = content  # where the code store keeps a content (by its sha256)
        self._locks: Dict[str, threading.Lock] = {}
        self._locks_guard = threading.Lock()

    def routes(self) -> List[Route]:
        return [
            Route("POST", _FILES, self.apply),
            Route("POST", _FILES + "/compare", self.compare),
        ]

    def apply(self, exchange: Exchange) -> None:
        job = self._running_job(exchange)
        deletes, puts = _parse_batch(exchange.read_json(MAX_BATCH_JSON_BYTES))
        with self._lock(job.id):
            result = apply_batch(deletes, puts, str(job.code_dir), self._content)
        log.info(
            "Job %s: reload batch applied: %d put, %d deleted, %d failed",
            job.id,
            result["put"],
            result["deleted"],
            len(result["errors"]),
        )
        exchange.send_json(HTTPStatus.OK, result)

    def compare(self, exchange: Exchange) -> None:
        job = self._running_job(exchange)
        entries = _parse_compare(exchange.read_json())
        root = os.path.realpath(job.code_dir)
        exchange.send_json(HTTPStatus.OK, {"results": [_compare_one(root, *entry) for entry in entries]})

    def _running_job(self, exchange: Exchange) -> Job:
        job_id = exchange.params["job_id"]
        job = self._registry.get(job_id)
        if job is None:
            raise ApiError(HTTPStatus.NOT_FOUND, f"Job {job_id[:64]} not found")
        status = job.state.status
        if job.state.is_final:
            raise ApiError(HTTPStatus.GONE, f"Job {job.id} is {status}; it takes no more changes")
        if status != RUNNING:
            raise ApiError(HTTPStatus.CONFLICT, f"Job {job.id} is {status}; its code is not in place yet")
        return job

    def _lock(self, job_id: str) -> threading.Lock:
        # Two CLIs may sync the same job; their batches must not interleave.
        with self._locks_guard:
            return self._locks.setdefault(job_id, threading.Lock())


def _parse_batch(body: Any) -> Tuple[List[str], List[Item]]:
    """The deletions and puts of a batch, checked (raises ApiError: the whole batch is refused)."""
    if not isinstance(body, dict) or set(body) - {"delete", "put"}:
        raise ApiError(HTTPStatus.BAD_REQUEST, 'The batch must be an object with "delete" and "put" lists')
    deletes, entries = body.get("delete", []), body.get("put", [])
    if not (isinstance(deletes, list) and isinstance(entries, list)):
        raise ApiError(HTTPStatus.BAD_REQUEST, 'The batch must be an object with "delete" and "put" lists')
    if len(deletes) + len(entries) > MAX_BATCH_ENTRIES:
        raise ApiError(HTTPStatus.BAD_REQUEST, f"Send at most {MAX_BATCH_ENTRIES} changes at once")
    try:
        for path in deletes:
            if not isinstance(path, str) or normalise_path(path) != path:
                raise UnpackError(f"the deletion {str(path)[:200]!r} is not a normalised relative path")
        puts = [parse_entry(entry) for entry in entries]
        check_items(puts)
    except UnpackError as e:
        raise ApiError(HTTPStatus.BAD_REQUEST, f"The batch of changes was refused: {e}") from e
    return deletes, puts


def apply_batch(
    deletes: List[str], puts: List[Item], code_dir: str, content: Callable[[str], Path]
) -> Dict[str, Any]:
    """Apply the checked changes in order; a change that fails is reported and the others go on."""
    applier = _Applier(os.path.realpath(code_dir))
    put = deleted = 0
    errors: List[Dict[str, str]] = []
    for rel in deletes:
        try:
            applier.delete(rel)
            deleted += 1
        except Refused as e:
            errors.append({"path": rel, "error": str(e)})
        except OSError as e:
            errors.append({"path": rel, "error": e.strerror or str(e)})
    for item in puts:
        try:
            if item.kind == DIR:
                applier.put_dir(item.path, item.mode)
            elif item.kind == SYMLINK:
                applier.put_symlink(item.path, item.ref)
            else:
                applier.put_file(item, content(item.ref))
            put += 1
        except Refused as e:
            errors.append({"path": item.path, "error": str(e)})
        except (OSError, UnpackError) as e:
            errors.append({"path": item.path, "error": getattr(e, "strerror", None) or str(e)})
    return {"put": put, "deleted": deleted, "errors": errors}


class _Applier:
    """Applies one batch under root. The real path of each folder is resolved and checked once per batch
    (a burst puts many files in few folders), and resolved again after anything that may reshape the
    tree: a deletion, a folder or symlink put, a file that replaced a folder.

    The checks hold against what the batch says; the task itself runs as the same user and could
    write anywhere this agent can, so racing it buys it nothing.
    """

    def __init__(self, root: str) -> None:
        self.root = root
        self._folders: Dict[str, str] = {}
        self._temp_prefix = f"{_TEMP_PREFIX}{os.urandom(6).hex()}-"
        self._temps = 0

    def delete(self, rel: str) -> None:
        self._folders.clear()
        remove_path(os.path.join(self._parent(rel, create=False), os.path.basename(rel)))

    def put_dir(self, rel: str, mode: int) -> None:
        self._folders.clear()
        path = os.path.join(self._parent(rel, create=True), os.path.basename(rel))
        try:
            status: Optional[os.stat_result] = os.lstat(path)
        except FileNotFoundError:
            status = None
        if status is not None and not stat.S_ISDIR(status.st_mode):
            os.unlink(path)
            status = None
        if status is None:
            os.mkdir(path, 0o755)
        os.chmod(path, _safe_mode(mode) | stat.S_IRWXU)  # a folder we cannot enter could not be synced

    def put_symlink(self, rel: str, target: str) -> None:
        self._folders.clear()
        parent = self._parent(rel, create=True)
        if not _inside(os.path.realpath(os.path.join(parent, target)), self.root):
            raise Refused("the symlink points outside the code folder")
        path = os.path.join(parent, os.path.basename(rel))
        _remove_folder(path)
        temp = self._temp_path(parent)
        os.symlink(target, temp)
        try:
            os.replace(temp, path)
        except BaseException:
            os.unlink(temp)
            raise

    def put_file(self, item: Item, source: Path) -> None:
        parent = self._parent(item.path, create=True)
        path = os.path.join(parent, os.path.basename(item.path))
        temp = self._temp_path(parent)
        try:
            copy_file(source, temp, item)
            if _remove_folder(path):
                self._folders.clear()
            os.replace(temp, path)  # replaces a file or symlink itself, never what a symlink points to
        except BaseException:
            try:
                os.unlink(temp)
            except FileNotFoundError:
                pass
            raise

    def _parent(self, rel: str, create: bool) -> str:
        """The real path of rel's folder, which must lie inside root (created if asked)."""
        folder = os.path.dirname(rel)
        if not folder:
            return self.root
        real = self._folders.get(folder)
        if real is not None:
            return real
        real = _real_folder(self.root, folder)
        if create:
            os.makedirs(real, mode=0o755, exist_ok=True)
            # Check what was actually created, in case a component changed on the way.
            if not _inside(os.path.realpath(real), self.root):
                raise Refused("it leads outside the code folder")
            self._folders[folder] = real
        return real

    def _temp_path(self, parent: str) -> str:
        self._temps += 1
        return os.path.join(parent, f"{self._temp_prefix}{self._temps}")


def _real_folder(root: str, folder: str) -> str:
    """The real path of a folder under root, which must lie inside it (it need not exist yet)."""
    real = os.path.realpath(os.path.join(root, folder)) if folder else root
    if not _inside(real, root):
        raise Refused("it leads outside the code folder")
    return real


def _inside(path: str, root: str) -> bool:
    return path == root or path.startswith(root.rstrip(os.sep) + os.sep)


def _remove_folder(path: str) -> bool:
    """A file or symlink is about to take the place of a folder (rename cannot replace one)."""
    try:
        if stat.S_ISDIR(os.lstat(path).st_mode):
            shutil.rmtree(path)
            return True
    except FileNotFoundError:
        pass
    return False


def _safe_mode(mode: int) -> int:
    return mode & 0o777


# -- compare ---------------------------------------------------------------------------------------------


def _parse_compare(body: Any) -> List[Tuple[str, str, Any]]:
    entries = body.get("entries") if isinstance(body, dict) else None
    if not isinstance(entries, list):
        raise ApiError(HTTPStatus.BAD_REQUEST, "The body must be an object with a list of entries")
    if len(entries) > MAX_COMPARE_ENTRIES:
        raise ApiError(HTTPStatus.BAD_REQUEST, f"Send at most {MAX_COMPARE_ENTRIES} entries at once")
    parsed = []
    for entry in entries:
        if not (isinstance(entry, list) and len(entry) == 3 and entry[1] in _KINDS):
            raise ApiError(HTTPStatus.BAD_REQUEST, "Each entry must be [path, file|dir|symlink, size|target]")
        path, kind, detail = entry
        if not isinstance(path, str) or not _is_relative_path(path):
            raise ApiError(
                HTTPStatus.BAD_REQUEST, f"The path {str(path)[:200]!r} is not inside the code folder"
            )
        parsed.append((path, kind, detail))
    return parsed


def _is_relative_path(path: str) -> bool:
    parts = path.split("/")
    return bool(path) and not path.startswith("/") and all(part not in ("", ".", "..") for part in parts)


def _compare_one(root: str, rel: str, kind: str, detail: Any) -> Any:
    """True: the job has the same entry; False: it differs; a sha256: same size, compare the content."""
    try:
        path = os.path.join(_real_folder(root, os.path.dirname(rel)), os.path.basename(rel))
        status = os.lstat(path)
        if kind == "dir":
            return stat.S_ISDIR(status.st_mode)
        if kind == "symlink":
            return stat.S_ISLNK(status.st_mode) and os.readlink(path) == detail
        if not stat.S_ISREG(status.st_mode) or status.st_size != detail:
            return False
        return _sha256(path)
    except (OSError, Refused):
        return False


def _sha256(path: str) -> str:
    digest = hashlib.sha256()
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    with os.fdopen(fd, "rb") as f:
        for chunk in iter(lambda: f.read(_CHUNK), b""):
            digest.update(chunk)
    return digest.hexdigest()
