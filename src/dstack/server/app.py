"""The FastAPI application and its lifespan: database, admin, backends and background workers."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException

from dstack import __version__
from dstack.server.backends.base import Backend
from dstack.server.backends.local import LocalBackend
from dstack.server.backends.registry import BackendRegistry
from dstack.server.backends.ssh import SSHBackend
from dstack.server.background.manager import BackgroundWorkers
from dstack.server.config_file import LocalBackendConfig, ServerConfig, SSHBackendConfig, load_server_config
from dstack.server.context import ServerContext
from dstack.server.db.engine import Database
from dstack.server.db.migrate import migrate
from dstack.server.events import RECONCILE
from dstack.server.routers import api_docs, code, files, fleets, history, hosts, misc, runs, secrets
from dstack.server.routers import ports as ports_router
from dstack.server.services.errors import ServiceError
from dstack.server.services.projects import ProjectResolver
from dstack.server.services.users import Authenticator, init_admin
from dstack.server.settings import ServerSettings
from dstack.server.ssh import SSHPool
from dstack.server.ui import links as ui_links
from dstack.server.ui.session import SessionStore

log = logging.getLogger(__name__)


def create_app(
    settings: ServerSettings,
    on_ready: Callable[[str | None], None] | None = None,
    on_stopped: Callable[[], None] | None = None,
) -> FastAPI:
    """`on_ready(issued_token)` is called once the server can take requests (the token, if it made one);
    `on_stopped()` once it has let go of everything at shutdown."""

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        settings.ensure_dirs()
        config = load_server_config(settings.config_file)
        db = Database(settings.resolved_database_url())
        await migrate(db.writer)
        _, issued = await init_admin(db, settings.admin_token)
        pool = SSHPool(settings.server_dir / "ssh")
        registry = BackendRegistry(db, _backends(config, settings, pool, db))
        ctx = ServerContext(settings=settings, db=db, backends=registry, retention=config.retention)
        registry.on_host_back(lambda: ctx.notifier.notify(RECONCILE))
        app.state.ctx = ctx
        app.state.auth = Authenticator(db)
        app.state.projects = ProjectResolver(db)
        app.state.ui_sessions = SessionStore(db)
        await registry.start()
        workers = BackgroundWorkers(ctx)
        await workers.start()
        if on_ready is not None:
            on_ready(issued)
        try:
            yield
        finally:
            await workers.stop()
            await registry.close()
            await pool.close()
            await db.close()
            if on_stopped is not None:
                on_stopped()

    app = FastAPI(
        title="dstack",
        version=__version__,
        lifespan=lifespan,
        # Served by routes of our own below, behind the token like everything but health.
        docs_url=None,
        openapi_url=None,
        redoc_url=None,
    )
    app.include_router(misc.router)
    app.include_router(runs.router)
    app.include_router(code.router)
    app.include_router(files.router)
    app.include_router(fleets.router)
    app.include_router(secrets.router)
    app.include_router(ports_router.router)
    app.include_router(api_docs.router)
    app.include_router(history.router)
    app.include_router(hosts.router)
    app.include_router(ui_links.router)

    @app.exception_handler(ServiceError)
    async def _service_error(_: Request, exc: ServiceError) -> JSONResponse:
        return JSONResponse({"error": exc.message}, status_code=exc.status_code)

    @app.exception_handler(RequestValidationError)
    async def _invalid(_: Request, exc: RequestValidationError) -> JSONResponse:
        first = exc.errors()[0] if exc.errors() else {"loc": (), "msg": "invalid request"}
        where = ".".join(str(p) for p in first.get("loc", ()) if p != "body")
        return JSONResponse({"error": f"Invalid request: {where}: {first.get('msg')}"}, status_code=422)

    @app.exception_handler(HTTPException)
    async def _http(_: Request, exc: HTTPException) -> JSONResponse:
        return JSONResponse({"error": str(exc.detail)}, status_code=exc.status_code)

    return app


def _backends(config: ServerConfig, settings: ServerSettings, pool: SSHPool, db: Database) -> list[Backend]:
    # Fleets are always on (their hosts come from `dstack apply`); the rest as config.yml says.
    backends: list[Backend] = [SSHBackend(db, settings.server_dir, pool)]
    for entry in config.backends:
        if isinstance(entry, LocalBackendConfig):
            backends.insert(0, LocalBackend(settings.agents_dir, price=entry.price, declared=entry.resources))
        elif isinstance(entry, SSHBackendConfig):
            pass
        else:
            from dstack.server.backends.slurm import SlurmBackend

            backends.append(SlurmBackend(entry, pool, settings.server_dir / "slurm"))
    return backends
