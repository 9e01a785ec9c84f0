"""The shared API shell over real HTTP: health, readiness, metrics and the bearer token."""

from __future__ import annotations

import httpx
import pytest

from tandem.http import AUTH, ApiServer, InsecureApiError, check_exposure, create_app
from tests.conftest import free_port


async def serve(token: str | None, ready: bool = True) -> ApiServer:
    app = create_app("test", ready=lambda: ready, token=token)

    @app.post("/v1/thing", dependencies=AUTH)
    def write() -> dict[str, bool]:
        return {"written": True}

    server = ApiServer(app, f"127.0.0.1:{free_port()}")
    await server.start()
    return server


async def test_health_readiness_and_metrics() -> None:
    server = await serve(None, ready=False)
    base = f"http://127.0.0.1:{server.port}"
    try:
        async with httpx.AsyncClient(base_url=base) as http:
            assert (await http.get("/healthz")).json()["status"] == "ok"
            assert (await http.get("/readyz")).status_code == 503
            metrics = await http.get("/metrics")
            assert metrics.status_code == 200 and "python_info" in metrics.text
    finally:
        await server.stop()


async def test_token_is_required_when_configured() -> None:
    server = await serve("s3cret")
    try:
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{server.port}") as http:
            assert (await http.post("/v1/thing")).status_code == 401
            wrong = await http.post("/v1/thing", headers={"Authorization": "Bearer nope"})
            assert wrong.status_code == 401
            assert "s3cret" not in wrong.text
            right = await http.post("/v1/thing", headers={"Authorization": "Bearer s3cret"})
            assert right.json() == {"written": True}
            assert (await http.get("/healthz")).status_code == 200  # probes need no token
    finally:
        await server.stop()


async def test_loopback_without_token_is_open() -> None:
    server = await serve(None)
    try:
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{server.port}") as http:
            assert (await http.post("/v1/thing")).json() == {"written": True}
    finally:
        await server.stop()


@pytest.mark.parametrize("listen", ["0.0.0.0:8080", "10.1.2.3:8080", "[::]:8080"])
def test_an_exposed_api_needs_a_token(listen: str) -> None:
    with pytest.raises(InsecureApiError, match="TANDEM_API_TOKEN"):
        check_exposure(listen, None)
    check_exposure(listen, "token")
    check_exposure("[::1]:8080", None)
