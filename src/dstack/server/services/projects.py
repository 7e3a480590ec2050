"""Projects and membership: every project route resolves its project here, once per request."""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import select

from dstack.server.db.engine import Database
from dstack.server.db.models import MemberRow, ProjectRow
from dstack.server.services.errors import Forbidden, NotFound
from dstack.server.services.users import User


@dataclass(frozen=True)
class Project:
    id: str
    name: str


class ProjectResolver:
    """Caches (project name, user) -> Project; membership changes are rare and only happen via this server."""

    def __init__(self, db: Database) -> None:
        self._db = db
        self._cache: dict[tuple[str, str], Project] = {}

    async def resolve(self, name: str, user: User) -> Project:
        key = (name, user.id)
        cached = self._cache.get(key)
        if cached is not None:
            return cached
        async with self._db.read() as session:
            row = (
                await session.execute(select(ProjectRow).where(ProjectRow.name == name))
            ).scalar_one_or_none()
            if row is None:
                raise NotFound(f"Project {name} not found")
            if user.project_id is not None:
                if user.project_id != row.id:
                    raise Forbidden(f"This run's token is valid for its own project only, not {name}")
            elif not user.is_admin:
                member = await session.get(MemberRow, (row.id, user.id))
                if member is None:
                    raise Forbidden(f"You are not a member of project {name}")
        project = Project(id=row.id, name=row.name)
        self._cache[key] = project
        return project

    async def require_admin(self, project: Project, user: User, what: str) -> None:
        """Only a project's admins (and the server's) may do `what`; a run's token never may."""
        if user.is_run:
            raise Forbidden(f"A run's token cannot {what}")
        if user.is_admin:
            return
        async with self._db.read() as session:
            member = await session.get(MemberRow, (project.id, user.id))
        if member is None or member.role != "admin":
            raise Forbidden(f"Only the admins of project {project.name} can {what}")


async def projects_of(db: Database, user: User) -> list[Project]:
    """The projects a user may open: those they are a member of (an admin: all of them), by name."""
    query = select(ProjectRow.id, ProjectRow.name).order_by(ProjectRow.name)
    if not user.is_admin:
        query = query.join(MemberRow, MemberRow.project_id == ProjectRow.id).where(
            MemberRow.user_id == user.id
        )
    async with db.read() as session:
        return [Project(id=row.id, name=row.name) for row in await session.execute(query)]
