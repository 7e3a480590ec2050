"""Project secrets (`dstack secret set NAME VALUE`) and `${{ secrets.NAME }}` references to them.

Values are stored in the server's database (in its owner-only folder), are never returned by the API, and
are resolved only when a job is handed to its agent: the stored run spec keeps the reference, so neither
`dstack ps -v` nor a run's JSON can show a value.
"""

from __future__ import annotations

import re
import time
from typing import Any

from sqlalchemy import delete, select

from dstack.server.context import ServerContext
from dstack.server.db.models import SecretRow
from dstack.server.services.errors import NotFound, ServiceError
from dstack.server.services.projects import Project

SECRET_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,63}")
MAX_VALUE_BYTES = 64 * 1024
# `${{ secrets.NAME }}`, with the spaces the interpolation grammar allows; `$${{` is a literal.
_REFERENCE = re.compile(r"(?<!\$)\$\{\{\s*secrets\.([A-Za-z_][A-Za-z0-9_]*)\s*\}\}")


def check_name(name: str) -> str:
    if not SECRET_NAME.fullmatch(name):
        raise ServiceError(
            f"Invalid secret name {name[:80]!r}; "
            "use up to 64 letters, digits and '_', not starting with a digit"
        )
    return name


async def set_secret(ctx: ServerContext, project: Project, name: str, value: str) -> dict[str, Any]:
    check_name(name)
    if len(value.encode()) > MAX_VALUE_BYTES:
        raise ServiceError(f"The value of secret {name} is over {MAX_VALUE_BYTES // 1024} KB")
    now = time.time()
    async with ctx.db.write() as session:
        row = await session.get(SecretRow, (project.id, name))
        created = row is None
        if row is None:
            row = SecretRow(project_id=project.id, name=name, value=value, created_at=now, updated_at=now)
            session.add(row)
        else:
            row.value = value
            row.updated_at = now
        return {**_listed(row), "created": created}


async def list_secrets(ctx: ServerContext, project: Project) -> list[dict[str, Any]]:
    async with ctx.db.read() as session:
        rows = (
            await session.execute(
                select(SecretRow).where(SecretRow.project_id == project.id).order_by(SecretRow.name)
            )
        ).scalars()
        return [_listed(row) for row in rows]


async def delete_secret(ctx: ServerContext, project: Project, name: str) -> None:
    async with ctx.db.write() as session:
        result = await session.execute(
            delete(SecretRow).where(SecretRow.project_id == project.id, SecretRow.name == name)
        )
        if not result.rowcount:  # type: ignore[attr-defined]
            raise NotFound(f"Secret {name} is not set in project {project.name}")


async def values_of(ctx: ServerContext, project_id: str, names: set[str]) -> dict[str, str]:
    if not names:
        return {}
    async with ctx.db.read() as session:
        rows = await session.execute(
            select(SecretRow.name, SecretRow.value).where(
                SecretRow.project_id == project_id, SecretRow.name.in_(sorted(names))
            )
        )
        return {name: value for name, value in rows}


def references(texts: list[str]) -> set[str]:
    """The secret names `texts` refer to."""
    return {name for text in texts for name in _REFERENCE.findall(text)}


def resolve(text: str, values: dict[str, str]) -> str:
    """`text` with every `${{ secrets.NAME }}` replaced by its value (all must be in `values`)."""
    return _REFERENCE.sub(lambda match: values[match.group(1)], text)


def missing_message(missing: set[str], project: str) -> str:
    names = ", ".join(sorted(missing))
    first = sorted(missing)[0]
    return (
        f"Secret{'s' if len(missing) > 1 else ''} {names} {'are' if len(missing) > 1 else 'is'} not set in "
        f"project {project}; set {'them' if len(missing) > 1 else 'it'} with dstack secret set {first} VALUE"
    )


def _listed(row: SecretRow) -> dict[str, Any]:
    # Never the value, not even part of it: only how long it is, so a user can tell two apart.
    return {
        "name": row.name,
        "length": len(row.value),
        "created_at": row.created_at,
        "updated_at": row.updated_at,
    }
