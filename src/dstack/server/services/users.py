"""Users, tokens and the default project. Tokens are stored only as SHA-256 hashes."""

from __future__ import annotations

import hashlib
import secrets
import time
import uuid
from dataclasses import dataclass

from sqlalchemy import select

from dstack.server.db.engine import Database
from dstack.server.db.models import MemberRow, ProjectRow, UserRow

ADMIN_NAME = "admin"
DEFAULT_PROJECT = "main"


@dataclass(frozen=True)
class User:
    id: str
    name: str
    is_admin: bool


def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def new_token() -> str:
    return secrets.token_urlsafe(32)


class Authenticator:
    """Maps bearer tokens to users, caching hits so an authenticated request costs no query."""

    def __init__(self, db: Database) -> None:
        self._db = db
        self._cache: dict[str, User] = {}

    async def user_for(self, token: str) -> User | None:
        digest = hash_token(token)
        user = self._cache.get(digest)
        if user is not None:
            return user
        async with self._db.read() as session:
            row = (
                await session.execute(select(UserRow).where(UserRow.token_hash == digest))
            ).scalar_one_or_none()
        if row is None:
            return None
        user = User(id=row.id, name=row.name, is_admin=row.is_admin)
        self._cache[digest] = user
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
