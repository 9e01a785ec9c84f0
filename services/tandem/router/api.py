"""The router's configuration API: trunks, routes and usages, whole-policy export and import.

Every write takes the policy's write lock, checks the whole resulting policy (a route
naming an unknown trunk or usage: 422; deleting a trunk a route uses: 409) and stores it
with a commit, so each replica applies it at once. `POST /v1/route-test` answers what a
call would get, without placing one (Lync's Test-CsInterTrunkRouting).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import TYPE_CHECKING, Annotated, Any, TypeVar

import yaml
from fastapi import APIRouter, HTTPException, Query, Request, Response
from pydantic import BaseModel, Field, ValidationError

from tandem.config import Config, format_errors
from tandem.http import AUTH
from tandem.policy import Policy, Route, Trunk, Usage, store
from tandem.router.table import decision_dict

if TYPE_CHECKING:
    from tandem.router.service import Service

T = TypeVar("T", Trunk, Route)
YAML_TYPES = ("application/yaml", "application/x-yaml", "text/yaml", "text/x-yaml")


class RouteTest(BaseModel):
    trunk: str = Field(description="the ingress trunk's id")
    called: str
    calling: str = ""


def export(policy: Policy) -> dict[str, Any]:
    return policy.model_dump(mode="json", exclude_defaults=True)


def checked(errors_status: int, **parts: Any) -> Policy:
    """The policy made of these parts, or HTTP errors_status naming what is wrong."""
    try:
        return Policy.model_validate(parts)
    except ValidationError as exc:
        raise HTTPException(errors_status, [line.strip() for line in format_errors(exc)]) from None


def assembled(
    errors_status: int, usages: list[str], trunks: list[Trunk], routes: list[Route]
) -> Policy:
    """A policy of objects already validated one by one: only the cross-checks run (quick
    with 100,000 routes), HTTP errors_status naming what is wrong."""
    try:
        return Policy.model_construct(pstn_usages=usages, trunks=trunks, routes=routes).checked()
    except ValueError as exc:
        raise HTTPException(errors_status, [str(exc)]) from None


def parse_body(body: bytes, content_type: str) -> Any:
    try:
        if content_type.split(";")[0].strip() in YAML_TYPES:
            return yaml.safe_load(body)
        return json.loads(body)
    except (ValueError, yaml.YAMLError) as exc:
        raise HTTPException(400, f"unreadable policy: {exc}") from None


def build(service: Service) -> APIRouter:
    router = APIRouter(prefix="/v1", dependencies=AUTH)

    def current() -> Policy:
        return service.table.policy

    async def change(mutate: Callable[[Policy], Policy]) -> Policy:
        """Apply mutate to the latest stored policy and store the result, under the lock."""
        assert service.kv is not None
        try:
            async with store.write_lock(service.kv, service.ctx.name):
                await service.caught_up()
                policy = mutate(current())
                revision = await store.write_policy(service.kv, policy, service.state)
        except (store.PolicyBusyError, TimeoutError) as exc:
            raise HTTPException(503, str(exc)) from None
        await service.applied(revision)  # read your writes: this replica has it in force
        return policy

    # ---- the whole policy -------------------------------------------------------------

    @router.get("/policy", tags=["policy"])
    def get_policy(
        format: Annotated[str, Query(pattern="^(json|yaml)$")] = "json",
    ) -> Response:
        """Export the policy in force (JSON, or YAML with ?format=yaml)."""
        data = export(current())
        if format == "yaml":
            return Response(yaml.safe_dump(data, sort_keys=False), media_type="application/yaml")
        return Response(json.dumps(data, indent=2), media_type="application/json")

    @router.put(
        "/policy",
        tags=["policy"],
        openapi_extra={
            "requestBody": {
                "content": {
                    t: {"schema": Policy.model_json_schema()}
                    for t in ("application/json", "application/yaml")
                }
            }
        },
    )
    async def put_policy(request: Request) -> dict[str, int]:
        """Import a whole policy (JSON or YAML), replacing the stored one all at once."""
        data = parse_body(await request.body(), request.headers.get("content-type", ""))
        if not isinstance(data, dict):
            raise HTTPException(422, "a policy is a mapping of pstn_usages, trunks and routes")
        # a whole config file is welcome: its deployment part (nats, edges...) is not policy
        deployment = Config.model_fields.keys() - Policy.model_fields.keys()
        policy = checked(422, **{k: v for k, v in data.items() if k not in deployment})
        await change(lambda _: policy)
        return {"trunks": len(policy.trunks), "routes": len(policy.routes)}

    @router.get("/usages", tags=["policy"])
    def get_usages() -> dict[str, list[str]]:
        """The usage catalogue, and every usage known (catalogue plus the trunks' own)."""
        policy = current()
        return {"pstn_usages": policy.pstn_usages, "known": sorted(policy.usages)}

    @router.put("/usages", tags=["policy"])
    async def put_usages(usages: list[Usage]) -> dict[str, list[str]]:
        """Replace the usage catalogue (a route may only name a known usage)."""
        policy = await change(lambda p: assembled(409, usages, p.trunks, p.routes))
        return {"pstn_usages": policy.pstn_usages, "known": sorted(policy.usages)}

    # ---- trunks -----------------------------------------------------------------------

    @router.get("/trunks", tags=["trunks"])
    def list_trunks() -> list[Trunk]:
        return current().trunks

    @router.get("/trunks/{trunk_id}", tags=["trunks"])
    def get_trunk(trunk_id: str) -> Trunk:
        return _find(current().trunks, trunk_id, "trunk")

    @router.post("/trunks", tags=["trunks"], status_code=201)
    async def create_trunk(trunk: Trunk) -> Trunk:
        def add(p: Policy) -> Policy:
            if any(t.id == trunk.id for t in p.trunks):
                raise HTTPException(409, f"trunk {trunk.id!r} exists")
            return assembled(422, p.pstn_usages, [*p.trunks, trunk], p.routes)

        await change(add)
        return trunk

    @router.put("/trunks/{trunk_id}", tags=["trunks"])
    async def put_trunk(trunk_id: str, trunk: Trunk) -> Trunk:
        """Create or replace a trunk."""
        _same_id(trunk_id, trunk.id)
        await change(lambda p: assembled(422, p.pstn_usages, _replace(p.trunks, trunk), p.routes))
        return trunk

    @router.delete("/trunks/{trunk_id}", tags=["trunks"], status_code=204)
    async def delete_trunk(trunk_id: str) -> None:
        def remove(p: Policy) -> Policy:
            _find(p.trunks, trunk_id, "trunk")
            users = [r.id for r in p.routes if trunk_id in r.trunks]
            if users:
                raise HTTPException(409, f"trunk {trunk_id!r} is used by routes {users}")
            trunks = [t for t in p.trunks if t.id != trunk_id]
            return assembled(409, p.pstn_usages, trunks, p.routes)

        await change(remove)

    # ---- routes -----------------------------------------------------------------------

    @router.get("/routes", tags=["routes"])
    def list_routes() -> list[Route]:
        return current().routes

    @router.get("/routes/{route_id}", tags=["routes"])
    def get_route(route_id: str) -> Route:
        return _find(current().routes, route_id, "route")

    @router.post("/routes", tags=["routes"], status_code=201)
    async def create_route(route: Route) -> Route:
        def add(p: Policy) -> Policy:
            if any(r.id == route.id for r in p.routes):
                raise HTTPException(409, f"route {route.id!r} exists")
            return assembled(422, p.pstn_usages, p.trunks, [*p.routes, route])

        await change(add)
        return route

    @router.put("/routes/{route_id}", tags=["routes"])
    async def put_route(route_id: str, route: Route) -> Route:
        """Create or replace a voice route."""
        _same_id(route_id, route.id)
        await change(lambda p: assembled(422, p.pstn_usages, p.trunks, _replace(p.routes, route)))
        return route

    @router.delete("/routes/{route_id}", tags=["routes"], status_code=204)
    async def delete_route(route_id: str) -> None:
        def remove(p: Policy) -> Policy:
            _find(p.routes, route_id, "route")
            routes = [r for r in p.routes if r.id != route_id]
            return assembled(409, p.pstn_usages, p.trunks, routes)

        await change(remove)

    # ---- testing a number -------------------------------------------------------------

    @router.post("/route-test", tags=["routing"])
    def route_test(test: RouteTest) -> dict[str, Any]:
        """What a call arriving on `trunk` to `called` would get, with no call placed."""
        return decision_dict(service.route_test(test.trunk, test.called, test.calling))

    @router.get("/status", tags=["routing"])
    def status() -> dict[str, Any]:
        """The policy this replica has in force, and what it knows of the trunks."""
        policy = current()
        return {
            "revision": service.revision,
            "answered": service.answered,
            "trunks": len(policy.trunks),
            "routes": len(policy.routes),
            "policy_error": service.policy_error,
            "trunks_down": sorted(service.down),
            "active_calls": dict(sorted(service.active_calls.items())),
        }

    return router


def _find(items: list[T], item_id: str, what: str) -> T:
    for item in items:
        if item.id == item_id:
            return item
    raise HTTPException(404, f"no {what} {item_id!r}")


def _replace(items: list[T], new: T) -> list[T]:
    if any(item.id == new.id for item in items):
        return [new if item.id == new.id else item for item in items]
    added = list(items)
    added.append(new)
    return added


def _same_id(path_id: str, body_id: str) -> None:
    if path_id != body_id:
        raise HTTPException(422, f"the id in the path ({path_id!r}) and body ({body_id!r}) differ")
