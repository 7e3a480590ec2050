"""`POST /api/ui/sign-in`: a one-time link that opens the web UI signed in (what `dstack ui` opens).

On the API port, with the caller's token: the link signs the browser in as the same user.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import quote

from fastapi import APIRouter, Depends, Request
from pydantic import BaseModel, ConfigDict, Field

from dstack.server.context import ServerContext
from dstack.server.routers.deps import get_ctx, get_user
from dstack.server.services.errors import Conflict
from dstack.server.services.users import User
from dstack.server.settings import LOOPBACK_HOSTS
from dstack.server.ui.session import CODE_SECONDS

router = APIRouter(prefix="/api/ui")


class SignInRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    project: str | None = Field(default=None, max_length=64)  # the project whose runs the page opens


@router.get("")
async def ui_info(
    request: Request, ctx: ServerContext = Depends(get_ctx), user: User = Depends(get_user)
) -> dict[str, Any]:
    """{"url"}: where the web UI is (null when this server runs without it). Behind the token, as every
    route but health."""
    return {"url": _ui_base(request, ctx)}


@router.post("/sign-in")
async def sign_in_link(
    body: SignInRequest,
    request: Request,
    ctx: ServerContext = Depends(get_ctx),
    user: User = Depends(get_user),
) -> dict[str, Any]:
    """{"url", "expires_in"}: a link that signs a browser in once, within `expires_in` seconds."""
    base = _ui_base(request, ctx)
    if base is None:
        raise Conflict("This dstack server runs without its web UI (it was started with --no-ui)")
    if body.project is not None:
        await request.app.state.projects.resolve(body.project, user)  # a project the user may open
    code = await request.app.state.ui_sessions.new_code(user, body.project)
    return {"url": f"{base}/sign-in#{quote(code, safe='')}", "expires_in": CODE_SECONDS}


def _ui_base(request: Request, ctx: ServerContext) -> str | None:
    settings = ctx.settings
    url = settings.ui_url
    if url is None:
        return None
    if settings.ui_host in ("0.0.0.0", "::", "") and request.url.hostname not in (None, *LOOPBACK_HOSTS):
        # Listening everywhere and asked from afar: the UI is on the host the caller reached the API at.
        host = request.url.hostname or "127.0.0.1"
        return f"http://[{host}]:{settings.ui_port}" if ":" in host else f"http://{host}:{settings.ui_port}"
    return url
