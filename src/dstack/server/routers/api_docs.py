"""The API's own description, behind the token like every route but health.

The schema names every route and field of the API: nothing secret, but a map of it that an anonymous
caller needs no more than the API itself. `/api/openapi.json` is for tools (send the token as for any
call); `/api/docs` is a page that lists the routes, self-contained (no assets from elsewhere, which
FastAPI's Swagger page would fetch from a CDN).
"""

from __future__ import annotations

import html
from typing import Any

from fastapi import APIRouter, Depends, Request
from fastapi.responses import HTMLResponse, JSONResponse

from dstack.server.routers.deps import get_user
from dstack.server.services.users import User

router = APIRouter(prefix="/api", include_in_schema=False)


@router.get("/openapi.json")
async def openapi_schema(request: Request, user: User = Depends(get_user)) -> JSONResponse:
    return JSONResponse(request.app.openapi())


@router.get("/docs")
async def api_docs(request: Request, user: User = Depends(get_user)) -> HTMLResponse:
    schema: dict[str, Any] = request.app.openapi()
    rows = []
    for path, operations in sorted(schema.get("paths", {}).items()):
        for method, operation in operations.items():
            summary = operation.get("summary") or operation.get("operationId") or ""
            rows.append(
                f"<tr><td><code>{html.escape(method.upper())}</code></td>"
                f"<td><code>{html.escape(path)}</code></td><td>{html.escape(summary)}</td></tr>"
            )
    title = html.escape(f"{schema['info']['title']} {schema['info']['version']} API")
    page = (
        f"<!doctype html><html><head><meta charset='utf-8'><title>{title}</title></head><body>"
        f"<h1>{title}</h1><p>Every call but <code>GET /api/health</code> needs "
        "<code>Authorization: Bearer TOKEN</code>; the full schema is <code>GET /api/openapi.json</code>."
        f"</p><table>{''.join(rows)}</table></body></html>"
    )
    return HTMLResponse(page)
