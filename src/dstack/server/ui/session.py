"""Web UI sign-ins: one-time sign-in codes, browser sessions, and their CSRF tokens (all in the database,
so a restart or a second replica keeps users signed in; only hashes of the secrets are stored).

- `dstack ui` asks the API (with its token) for a code and opens `UI/sign-in#CODE`: the code travels in
  the URL's fragment, which browsers never send to a server, so it reaches no access log or Referer; the
  page exchanges it (once, within CODE_SECONDS) for a session.
- A session is an HttpOnly, SameSite=Strict cookie: a script on the page (were one ever injected) cannot
  read it. Each session has a CSRF token the page sends in a header with every state-changing request.
- A session ends when it expires, when the user signs out, or when the user's token changes.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import time
import uuid
from dataclasses import dataclass

from sqlalchemy import delete, select
from sqlalchemy.ext.asyncio import AsyncSession

from dstack.server.db.engine import Database
from dstack.server.db.models import UISessionRow, UserRow
from dstack.server.services.users import User, hash_token

CODE_SECONDS = 120.0
SESSION_SECONDS = 7 * 24 * 3600.0
# A session found once is trusted this long without another query (sign-outs here take effect at once).
CACHE_SECONDS = 30.0
CSRF_HEADER = "x-csrf-token"


def cookie_name(port: int) -> str:
    # Cookies are per host, not per port: two servers' UIs on one machine must not overwrite each other's.
    return f"dstack_session_{port}"


@dataclass(frozen=True)
class Session:
    user: User
    csrf_token: str
    expires_at: float

    def csrf_ok(self, sent: str | None) -> bool:
        return sent is not None and hmac.compare_digest(sent.encode(), self.csrf_token.encode())


def _digest(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


class SessionStore:
    def __init__(self, db: Database) -> None:
        self._db = db
        self._cache: dict[str, tuple[float, Session]] = {}

    async def new_code(self, user: User, project: str | None) -> str:
        code = secrets.token_urlsafe(24)
        now = time.time()
        async with self._db.write() as session:
            token_hash = await self._token_hash(session, user.id)
            await session.execute(delete(UISessionRow).where(UISessionRow.expires_at < now))
            session.add(
                UISessionRow(
                    secret_hash=_digest(code),
                    kind="code",
                    user_id=user.id,
                    token_hash=token_hash,
                    project=project,
                    created_at=now,
                    expires_at=now + CODE_SECONDS,
                )
            )
        return code

    async def exchange_code(self, code: str) -> tuple[str, Session, str | None] | None:
        """The code's new session (secret, session, project to open), or None if the code is not valid."""
        now = time.time()
        async with self._db.write() as session:
            row = await session.get(UISessionRow, _digest(code))
            if row is None or row.kind != "code":
                return None
            await session.delete(row)  # one use, valid or not
            if row.expires_at < now:
                return None
            user = await session.get(UserRow, row.user_id)
            if user is None or user.token_hash != row.token_hash:
                return None
            secret, made = self._add_session(session, user, now)
            return secret, made, row.project

    async def sign_in_with(self, user: User) -> tuple[str, Session]:
        """A session for a user who proved a valid token."""
        async with self._db.write() as session:
            row = await session.get(UserRow, user.id)
            if row is None:
                raise LookupError(user.id)
            return self._add_session(session, row, time.time())

    def _add_session(self, session: AsyncSession, user: UserRow, now: float) -> tuple[str, Session]:
        secret = secrets.token_urlsafe(32)
        csrf = secrets.token_urlsafe(24)
        session.add(
            UISessionRow(
                secret_hash=_digest(secret),
                kind="session",
                user_id=user.id,
                token_hash=user.token_hash,
                csrf_token=csrf,
                created_at=now,
                expires_at=now + SESSION_SECONDS,
            )
        )
        made = Session(User(id=user.id, name=user.name, is_admin=user.is_admin), csrf, now + SESSION_SECONDS)
        return secret, made

    async def lookup(self, secret: str | None) -> Session | None:
        if not secret:
            return None
        digest = _digest(secret)
        now = time.time()
        cached = self._cache.get(digest)
        if cached is not None and cached[0] > time.monotonic() and cached[1].expires_at > now:
            return cached[1]
        async with self._db.read() as session:
            found = (
                await session.execute(
                    select(UISessionRow, UserRow)
                    .join(UserRow, UserRow.id == UISessionRow.user_id)
                    .where(
                        UISessionRow.secret_hash == digest,
                        UISessionRow.kind == "session",
                        UISessionRow.expires_at > now,
                        UISessionRow.token_hash == UserRow.token_hash,
                    )
                )
            ).first()
        if found is None:
            self._cache.pop(digest, None)
            return None
        row, user = found
        made = Session(
            User(id=user.id, name=user.name, is_admin=user.is_admin), row.csrf_token or "", row.expires_at
        )
        if len(self._cache) > 10_000:
            self._cache.clear()
        self._cache[digest] = (time.monotonic() + CACHE_SECONDS, made)
        return made

    async def sign_out(self, secret: str) -> None:
        digest = _digest(secret)
        self._cache.pop(digest, None)
        async with self._db.write() as session:
            await session.execute(delete(UISessionRow).where(UISessionRow.secret_hash == digest))

    async def _token_hash(self, session: AsyncSession, user_id: str) -> str:
        row = await session.get(UserRow, user_id)
        # A user deleted meanwhile gets a code that can never be exchanged.
        return row.token_hash if row is not None else hash_token(str(uuid.uuid4()))
