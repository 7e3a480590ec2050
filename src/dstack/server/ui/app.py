"""The web UI's side of the server: its own port, its pages and assets, sign-in, and the API behind a session.

The server process listens on the API port and the UI port with one ASGI app (`with_ui`) that routes each
connection by the port it came in on. On the UI port:
- `/static/...` are the page's assets (plain JavaScript modules and CSS, shipped in the package);
- `/ui/session` signs in (a one-time code from `dstack ui`, or a pasted token), tells the page who is
  signed in, and signs out;
- `/api/...` is the same API the CLI uses, for the signed-in user: the session cookie stands in for the
  bearer token, and a request another site (or another port of this host) makes is refused;
- any other path is the page itself (`index.html`), which routes on the client.
Every answer carries protective headers: a CSP that allows only this origin's scripts (no inline script,
and Trusted Types, so no string ever becomes HTML), no framing, no sniffing, no referrer.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable, MutableMapping
from pathlib import Path
from typing import Any

from starlette.applications import Starlette
from starlette.datastructures import Headers
from starlette.requests import Request, cookie_parser
from starlette.responses import JSONResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from dstack.server.routers.deps import SESSION_USER
from dstack.server.services.projects import projects_of
from dstack.server.settings import LOOPBACK_HOSTS, ServerSettings
from dstack.server.ui.session import CSRF_HEADER, SESSION_SECONDS, Session, SessionStore, cookie_name

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

STATIC_DIR = Path(__file__).parent / "static"

CSP = "; ".join(
    [
        "default-src 'none'",
        "script-src 'self'",
        "style-src 'self'",
        "img-src 'self' data:",
        "connect-src 'self'",
        "font-src 'self'",
        "manifest-src 'self'",
        "form-action 'self'",
        "base-uri 'none'",
        "frame-ancestors 'none'",
        # Assigning a string to innerHTML (or any other HTML/script sink) throws: task output is text.
        "require-trusted-types-for 'script'",
        "trusted-types 'none'",
    ]
)
SECURITY_HEADERS = [
    (b"content-security-policy", CSP.encode()),
    (b"x-content-type-options", b"nosniff"),
    (b"x-frame-options", b"DENY"),
    (b"referrer-policy", b"no-referrer"),
    (b"cross-origin-opener-policy", b"same-origin"),
    (b"cross-origin-resource-policy", b"same-origin"),
    (b"permissions-policy", b"camera=(), microphone=(), geolocation=(), usb=()"),
]
SAFE_METHODS = ("GET", "HEAD")
WRONG_TOKEN = "That token is not valid for this server."  # noqa: S105 (a sentence, not a secret)
EXPIRED_LINK = "This sign-in link has expired or was used already; run dstack ui again, or paste a token."


def with_ui(api: ASGIApp, settings: ServerSettings) -> ASGIApp:
    """One app for both ports: connections to the UI port get the UI, every other one the API."""
    if settings.ui_port is None:
        return api
    ui = UIApp(api, settings)
    ui_port = settings.ui_port

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        server = scope.get("server")
        if scope["type"] != "lifespan" and server is not None and server[1] == ui_port:
            await ui(scope, receive, send)
        else:
            await api(scope, receive, send)

    return app


class UIApp:
    def __init__(self, api: Any, settings: ServerSettings) -> None:
        assert settings.ui_port is not None
        self.api = api
        self.settings = settings
        self.cookie = cookie_name(settings.ui_port)
        self._index = (STATIC_DIR / "index.html").read_bytes()
        self.pages = Starlette(
            routes=[
                Route("/ui/session", self.current_session, methods=["GET"]),
                Route("/ui/session", self.sign_in, methods=["POST"]),
                Route("/ui/session", self.sign_out, methods=["DELETE"]),
                Mount("/static", StaticFiles(directory=STATIC_DIR, follow_symlink=False)),
                Route("/{path:path}", self.index, methods=["GET", "HEAD"]),
            ]
        )

    @property
    def store(self) -> SessionStore:
        store: SessionStore = self.api.state.ui_sessions
        return store

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "websocket":
            # The UI needs no WebSocket (port tunnels are the CLI's); refuse before any upgrade.
            await send({"type": "websocket.close", "code": 1008})
            return
        if scope["type"] != "http":
            return
        send = _with_security_headers(send, scope["path"])
        headers = Headers(scope=scope)
        problem = self._refuse(scope, headers)
        if problem is not None:
            await JSONResponse({"error": problem[1]}, status_code=problem[0])(scope, receive, send)
            return
        if scope["path"].startswith("/api/"):
            await self._api(scope, receive, send, headers)
        else:
            await self.pages(scope, receive, send)

    def _refuse(self, scope: Scope, headers: Headers) -> tuple[int, str] | None:
        host = headers.get("host", "")
        hostname = host.rsplit(":", 1)[0].strip("[]") if not host.endswith("]") else host.strip("[]")
        if self.settings.ui_host in LOOPBACK_HOSTS and hostname not in LOOPBACK_HOSTS:
            # A name that resolves to loopback but is not one (DNS rebinding) gets nothing.
            return 421, f"This dstack UI answers only as {self.settings.ui_url}"
        if scope["path"].startswith(("/api/", "/ui/")):
            site = headers.get("sec-fetch-site")
            if site is not None and site not in ("same-origin", "none"):
                return 403, "Requests from other sites (or other ports of this host) are refused"
            origin = headers.get("origin")
            if origin is not None and origin != f"{scope.get('scheme', 'http')}://{host}":
                return 403, "Requests from other origins are refused"
        return None

    async def _session(self, headers: Headers) -> tuple[str | None, Session | None]:
        secret = cookie_parser(headers.get("cookie", "")).get(self.cookie)
        return secret, await self.store.lookup(secret)

    async def _api(self, scope: Scope, receive: Receive, send: Send, headers: Headers) -> None:
        _, session = await self._session(headers)
        if session is None:
            response = JSONResponse({"error": "Sign in first"}, status_code=401)
        elif scope["method"] not in SAFE_METHODS and not session.csrf_ok(headers.get(CSRF_HEADER)):
            response = JSONResponse(
                {"error": "This request lacks the page's CSRF token; reload the page"}, status_code=403
            )
        else:
            await self.api({**scope, SESSION_USER: session.user}, receive, send)
            return
        await response(scope, receive, send)

    # -- pages -------------------------------------------------------------------------------------------

    async def index(self, request: Request) -> Response:
        return Response(self._index, media_type="text/html; charset=utf-8")

    async def current_session(self, request: Request) -> Response:
        _, session = await self._session(request.headers)
        if session is None:
            return JSONResponse({"error": "Not signed in"}, status_code=401)
        projects = await projects_of(self.api.state.ctx.db, session.user)
        # The projects come along: the first page needs them, and one round trip fewer paints sooner.
        return JSONResponse({**_session_json(session), "projects": [{"name": p.name} for p in projects]})

    async def sign_in(self, request: Request) -> Response:
        if request.headers.get("content-type", "").split(";")[0].strip() != "application/json":
            return JSONResponse({"error": "Send the sign-in as JSON"}, status_code=415)
        try:
            body = json.loads(await request.body())
        except ValueError:
            body = None
        if not isinstance(body, dict):
            return JSONResponse({"error": "Send a token or a sign-in code"}, status_code=400)
        project = None
        token, code = body.get("token"), body.get("code")
        if isinstance(code, str) and code:
            exchanged = await self.store.exchange_code(code)
            if exchanged is None:
                return JSONResponse({"error": EXPIRED_LINK}, status_code=401)
            secret, session, project = exchanged
        elif isinstance(token, str) and token.strip():
            user = await self.api.state.auth.user_for(token.strip())
            if user is None:
                return JSONResponse({"error": WRONG_TOKEN}, status_code=401)
            secret, session = await self.store.sign_in_with(user)
        else:
            return JSONResponse({"error": "Paste your token to sign in"}, status_code=400)
        response = JSONResponse({**_session_json(session), "project": project})
        response.set_cookie(
            self.cookie,
            secret,
            max_age=int(SESSION_SECONDS),
            path="/",
            httponly=True,
            samesite="strict",
            secure=False,  # served over plain HTTP on loopback; a TLS proxy in front may add Secure
        )
        return response

    async def sign_out(self, request: Request) -> Response:
        secret, session = await self._session(request.headers)
        if session is not None and not session.csrf_ok(request.headers.get(CSRF_HEADER)):
            return JSONResponse({"error": "This request lacks the page's CSRF token"}, status_code=403)
        if secret:
            await self.store.sign_out(secret)
        response = JSONResponse({"signed_out": True})
        response.delete_cookie(self.cookie, path="/", httponly=True, samesite="strict")
        return response


def _session_json(session: Session) -> dict[str, Any]:
    user = session.user
    return {
        "user": {"id": user.id, "name": user.name, "is_admin": user.is_admin},
        "csrf_token": session.csrf_token,
        "expires_at": session.expires_at,
    }


def _with_security_headers(send: Send, path: str) -> Send:
    cache = b"no-cache" if path.startswith("/static/") else b"no-store"

    async def sender(message: Message) -> None:
        if message["type"] == "http.response.start":
            present = {name.lower() for name, _ in message.get("headers", [])}
            extra = [(n, v) for n, v in SECURITY_HEADERS if n not in present]
            if b"cache-control" not in present:
                extra.append((b"cache-control", cache))
            message = {**message, "headers": [*message.get("headers", []), *extra]}
        await send(message)

    return sender
