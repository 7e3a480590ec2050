"""Users, tokens and the default project. Tokens are stored only as SHA-256 hashes."""

from __future__ import annotations

import hashlib
import secrets
import time
import uuid
from dataclasses import dataclass
from typing import Any

from sqlalchemy import select

from dstack.core.statuses import FINISHED_STATUSES
from dstack.server.db.engine import Database
from dstack.server.db.models import MemberRow, ProjectRow, RunRow, RunTokenRow, UserRow

ADMIN_NAME = "admin"
DEFAULT_PROJECT = "main"


# A run token is checked against its run at most this often (it stops working when the run ends).
RUN_TOKEN_RECHECK_SECONDS = 2.0
_FINISHED = [status.value for status in FINISHED_STATUSES]


@dataclass(frozen=True)
class User:
    id: str
    name: str
    is_admin: bool
    # Set for the token of a run with `dstack: true`: it may act in this project only (see run_tokens).
    project_id: str | None = None
    run_id: str | None = None
    run_owner_id: str | None = None  # the user whose run it is: what the run token's records belong to

    @property
    def is_run(self) -> bool:
        return self.run_id is not None

    @property
    def record_id(self) -> str:
        """The users row that what this caller creates belongs to."""
        return self.run_owner_id or self.id


def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def new_token() -> str:
    return secrets.token_urlsafe(32)


class Authenticator:
    """Maps bearer tokens to users, caching hits so an authenticated request costs no query."""

    def __init__(self, db: Database) -> None:
        self._db = db
        self._cache: dict[str, User] = {}
        self._run_tokens: dict[str, tuple[User, float]] = {}

    async def user_for(self, token: str) -> User | None:
        digest = hash_token(token)
        user = self._cache.get(digest)
        if user is not None:
            return user
        checked = self._run_tokens.get(digest)
        if checked is not None and time.monotonic() - checked[1] < RUN_TOKEN_RECHECK_SECONDS:
            return checked[0]
        async with self._db.read() as session:
            row = (
                await session.execute(select(UserRow).where(UserRow.token_hash == digest))
            ).scalar_one_or_none()
            if row is None:
                return await self._run_user(session, digest)
        user = User(id=row.id, name=row.name, is_admin=row.is_admin)
        self._cache[digest] = user
        return user

    async def _run_user(self, session: Any, digest: str) -> User | None:
        """The identity of a run token, while its run is unfinished: never an admin, one project only."""
        found = (
            await session.execute(
                select(RunTokenRow, RunRow.name, RunRow.status, UserRow.name)
                .join(RunRow, RunRow.id == RunTokenRow.run_id)
                .join(UserRow, UserRow.id == RunTokenRow.user_id)
                .where(RunTokenRow.token_hash == digest)
            )
        ).first()
        if found is None or found[2] in _FINISHED:
            self._run_tokens.pop(digest, None)
            return None
        token, run_name, _, user_name = found
        user = User(
            id=f"run:{token.run_id}",
            name=f"{user_name} (run {run_name})",
            is_admin=False,
            project_id=token.project_id,
            run_id=token.run_id,
            run_owner_id=token.user_id,
        )
        self._run_tokens[digest] = (user, time.monotonic())
        return user


async def init_admin(db: Database, token: str | None) -> tuple[User, str | None]:
    """Create the admin (and the default project) on first start; `token` (if given) becomes its token.

    Returns the admin and the token when it was created or replaced here (so it can be printed once).
    """
    async with db.write() as session:
        row = (await session.execute(select(UserRow).where(UserRow.name == ADMIN_NAME))).scalar_one_or_none()
        issued: str | None = None
        if row is None:
            issued = token or new_token()
            row = UserRow(
                id=str(uuid.uuid4()),
                name=ADMIN_NAME,
                token_hash=hash_token(issued),
                is_admin=True,
                created_at=time.time(),
            )
            session.add(row)
        elif token is not None and row.token_hash != hash_token(token):
            row.token_hash = hash_token(token)
            issued = token
        project = (
            await session.execute(select(ProjectRow).where(ProjectRow.name == DEFAULT_PROJECT))
        ).scalar_one_or_none()
        if project is None:
            await session.flush()
            project = ProjectRow(
                id=str(uuid.uuid4()), name=DEFAULT_PROJECT, owner_id=row.id, created_at=time.time()
            )
            session.add(project)
            await session.flush()
            session.add(MemberRow(project_id=project.id, user_id=row.id, role="admin"))
        return User(id=row.id, name=row.name, is_admin=True), issued
