"""The FastAPI shell every process shares: health, readiness, metrics, bearer-token checks.

A process with its API on a non-loopback address must have a token; on loopback with no
token configured the API is open (local development).
"""

from __future__ import annotations

import asyncio
import hmac
import ipaddress
import logging
import os
import socket
from collections.abc import Callable

import uvicorn
from fastapi import Depends, FastAPI, HTTPException, Request, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from tandem import __version__
from tandem.sip.uri import split_host_port

TOKEN_ENV = "TANDEM_API_TOKEN"
READ_TOKEN_ENV = "TANDEM_API_READ_TOKEN"  # GET requests and the console's read-only views
READ_METHODS = frozenset({"GET", "HEAD"})
log = logging.getLogger("tandem.http")


class InsecureApiError(Exception):
    """An API that would listen beyond loopback with no token."""


def api_token(configured: str | None) -> str | None:
    return os.environ.get(TOKEN_ENV) or configured


def api_read_token(configured: str | None) -> str | None:
    return os.environ.get(READ_TOKEN_ENV) or configured


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def check_exposure(listen: str, token: str | None) -> None:
    host, _ = split_host_port(listen)
    if token is None and not is_loopback(host):
        raise InsecureApiError(
            f"API on {listen} is not loopback: set {TOKEN_ENV} (or api_token in the config)"
        )


def authorized(request: Request) -> None:
    """Dependency for /v1 routes: the bearer token, when one is configured."""
    token: str | None = request.app.state.token
    if token is None:
        return
    scheme, _, given = request.headers.get("authorization", "").partition(" ")
    accepted = [token]
    read_token: str | None = getattr(request.app.state, "read_token", None)
    if read_token is not None and request.method in READ_METHODS:
        accepted.append(read_token)
    if scheme.lower() != "bearer" or not any(same_token(given, t) for t in accepted):
        raise HTTPException(401, "missing or wrong bearer token", {"WWW-Authenticate": "Bearer"})


def same_token(given: str, token: str) -> bool:
    return hmac.compare_digest(given.encode(), token.encode())


AUTH = [Depends(authorized)]


def create_app(service: str, *, ready: Callable[[], bool], token: str | None) -> FastAPI:
    app = FastAPI(title=f"tandem {service}", version=__version__)
    app.state.token = token
    app.state.read_token = None  # set by a process whose API takes one (callstate)

    @app.get("/healthz", tags=["health"])
    def healthz() -> dict[str, str]:
        return {"status": "ok", "service": service, "version": __version__}

    @app.get("/readyz", tags=["health"])
    def readyz(response: Response) -> dict[str, bool]:
        ok = ready()
        response.status_code = 200 if ok else 503
        return {"ready": ok}

    @app.get("/metrics", tags=["health"])
    def metrics() -> Response:
        return Response(generate_latest(), media_type=CONTENT_TYPE_LATEST)

    return app


class ApiServer:
    """uvicorn inside the process's own event loop, bound before start() returns."""

    def __init__(self, app: FastAPI, listen: str) -> None:
        host, port = split_host_port(listen)
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        self.sock = socket.socket(family, socket.SOCK_STREAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind((host, port))
        self.sock.listen(512)
        self.sock.setblocking(False)
        config = uvicorn.Config(app, log_config=None, access_log=False, lifespan="off")
        self.server = uvicorn.Server(config)
        self.task: asyncio.Task[None] | None = None

    @property
    def port(self) -> int:
        return int(self.sock.getsockname()[1])

    async def start(self) -> None:
        self.task = asyncio.create_task(self.server.serve(sockets=[self.sock]))
        # uvicorn signals start-up only by this flag
        while not self.server.started and not self.task.done():  # noqa: ASYNC110
            await asyncio.sleep(0.01)
        if self.task.done():
            self.task.result()

    async def stop(self) -> None:
        self.server.should_exit = True
        if self.task is not None:
            await self.task
