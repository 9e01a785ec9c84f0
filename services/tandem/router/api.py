"""The router's configuration API: trunks, routes and usages, whole-policy export and import.

Every write takes the policy's write lock, checks the whole resulting policy (a route
naming an unknown trunk or usage: 422; deleting a trunk a route uses: 409) and stores it
with a commit; it answers once every replica has it in force, or 504 (stored, not yet in
force everywhere) when one takes too long. `POST /v1/route-test` answers what a
call would get, without placing one (Lync's Test-CsInterTrunkRouting).
"""

# No `from __future__ import annotations`: the endpoints `add_collection` builds name
# their collection's dependencies in their annotations, which FastAPI must get as objects
# (it looks annotation strings up among this module's globals, where those are not).

import asyncio
import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import Annotated, Any, Generic, Protocol, TypeVar

import yaml
from fastapi import APIRouter, Depends, FastAPI, HTTPException, Path, Query, Request, Response
from pydantic import BaseModel, Field, ValidationError

from tandem.config import Config, format_errors
from tandem.http import AUTH
from tandem.pb import tandem_pb2 as pb
from tandem.policy import Policy, Route, Trunk, Usage, store
from tandem.router.table import decision_dict

Item = TypeVar("Item", Trunk, Route)
YAML_TYPES = ("application/yaml", "application/x-yaml", "text/yaml", "text/x-yaml")


class Replica(Protocol):
    """What the API asks of the router replica it serves."""

    answered: int  # decisions answered on the bus
    policy_error: str | None  # why the last stored policy was refused
    down: set[str]  # trunks down by their edge's health probes
    active_calls: dict[str, int]  # per trunk, in and out

    @property
    def policy(self) -> Policy:
        """The policy in force."""
        ...

    @property
    def revision(self) -> int:
        """The last TANDEM_CONFIG revision applied."""
        ...

    async def change(self, mutate: Callable[[Policy], Policy]) -> Policy:
        """Store mutate(the latest policy) and return once every replica has it in force;
        PolicyBusyError if it cannot be written now, PolicyNotInForceError if it is stored
        but not yet in force everywhere."""
        ...

    def route_test(self, trunk: str, called: str, calling: str) -> pb.RouteDecision: ...


async def replica_of(request: Request) -> Replica:
    # async: FastAPI would run a plain function in its thread pool, for every request
    replica: Replica = request.app.state.replica
    return replica


ReplicaDep = Annotated[Replica, Depends(replica_of)]
router = APIRouter(prefix="/v1", dependencies=AUTH)


def mount(app: FastAPI, replica: Replica) -> None:
    """Serve this API on the process's app, for this replica."""
    app.state.replica = replica
    app.include_router(router)


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


def assembled(errors_status: int, policy: Policy, **parts: Any) -> Policy:
    """The policy with these parts replaced, each already validated alone: only the
    cross-checks run (quick with 100,000 routes), HTTP errors_status naming what is wrong."""
    try:
        return policy.model_copy(update=parts).checked()
    except ValueError as exc:
        raise HTTPException(errors_status, [str(exc)]) from None


async def change(replica: Replica, mutate: Callable[[Policy], Policy]) -> Policy:
    """replica.change: 503 when the policy cannot be written now; 504 when it is stored but
    some replica has not applied it in time (it will: nothing needs doing again)."""
    try:
        return await replica.change(mutate)
    except store.PolicyBusyError as exc:
        raise HTTPException(503, str(exc)) from None
    except store.PolicyNotInForceError as exc:
        detail = {"stored_revision": exc.revision, "not_in_force_on": exc.lagging}
        raise HTTPException(504, {"message": str(exc), **detail}) from None


def parse_body(body: bytes, content_type: str) -> Any:
    try:
        if content_type.split(";")[0].strip() in YAML_TYPES:
            return yaml.safe_load(body)
        return json.loads(body)
    except (ValueError, yaml.YAMLError) as exc:
        raise HTTPException(400, f"unreadable policy: {exc}") from None


# ---- the whole policy -----------------------------------------------------------------


@router.get("/policy", tags=["policy"])
def get_policy(
    replica: ReplicaDep,
    format: Annotated[str, Query(pattern="^(json|yaml)$")] = "json",
) -> Response:
    """Export the policy in force (JSON, or YAML with ?format=yaml)."""
    data = export(replica.policy)
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
async def put_policy(request: Request, replica: ReplicaDep) -> dict[str, int]:
    """Import a whole policy (JSON or YAML), replacing the stored one all at once."""
    # reading and validating 100,000 routes takes seconds: off the loop, which keeps deciding
    body, content_type = await request.body(), request.headers.get("content-type", "")
    data = await asyncio.to_thread(parse_body, body, content_type)
    if not isinstance(data, dict):
        raise HTTPException(422, "a policy is a mapping of pstn_usages, trunks and routes")
    # a whole config file is welcome: its deployment part (nats, edges...) is not policy
    deployment = Config.model_fields.keys() - Policy.model_fields.keys()
    parts = {k: v for k, v in data.items() if k not in deployment}
    policy = await asyncio.to_thread(lambda: checked(422, **parts))
    await change(replica, lambda _: policy)
    return {"trunks": len(policy.trunks), "routes": len(policy.routes)}


@router.get("/usages", tags=["policy"])
def get_usages(replica: ReplicaDep) -> dict[str, list[str]]:
    """The usage catalogue, and every usage known (catalogue plus the trunks' own)."""
    policy = replica.policy
    return {"pstn_usages": policy.pstn_usages, "known": sorted(policy.usages)}


@router.put("/usages", tags=["policy"])
async def put_usages(usages: list[Usage], replica: ReplicaDep) -> dict[str, list[str]]:
    """Replace the usage catalogue (a route may only name a known usage)."""
    policy = await change(replica, lambda p: assembled(409, p, pstn_usages=usages))
    return {"pstn_usages": policy.pstn_usages, "known": sorted(policy.usages)}


# ---- trunks and routes: one collection each -------------------------------------------


@dataclass(frozen=True)
class Collection(Generic[Item]):
    """One list of the policy, served at /v1/<field> and /v1/<field>/{<what>_id}."""

    field: str  # the policy's field, the path and the tag: "trunks"
    what: str  # one item, in the path parameter and the error texts: "trunk"
    model: type[Item]
    body: Callable[..., Item]  # the dependency reading one item from the request body
    in_use: Callable[[Policy, str], str | None] | None = None  # why one may not be deleted

    def of(self, policy: Policy) -> list[Item]:
        items: list[Item] = getattr(policy, self.field)
        return items


def add_collection(c: Collection[Item]) -> None:
    """List, get, create, put (create or replace) and delete, on the router."""
    many, one = f"/{c.field}", f"/{c.field}/{{{c.what}_id}}"
    ItemId = Annotated[str, Path(alias=f"{c.what}_id")]

    @router.get(
        many,
        tags=[c.field],
        name=f"list_{c.field}",
        response_model=list[c.model],  # type: ignore[name-defined]  # mypy: not a type name
    )
    def list_items(replica: ReplicaDep) -> list[Item]:
        return c.of(replica.policy)

    @router.get(one, tags=[c.field], name=f"get_{c.what}", response_model=c.model)
    def get_item(item_id: ItemId, replica: ReplicaDep) -> Item:
        return _find(c.of(replica.policy), item_id, c.what)

    @router.post(
        many, tags=[c.field], name=f"create_{c.what}", response_model=c.model, status_code=201
    )
    async def create_item(item: Annotated[Item, Depends(c.body)], replica: ReplicaDep) -> Item:
        def add(p: Policy) -> Policy:
            if any(i.id == item.id for i in c.of(p)):
                raise HTTPException(409, f"{c.what} {item.id!r} exists")
            return assembled(422, p, **{c.field: [*c.of(p), item]})

        await change(replica, add)
        return item

    @router.put(
        one,
        tags=[c.field],
        name=f"put_{c.what}",
        response_model=c.model,
        description=f"Create or replace a {c.what}.",
    )
    async def put_item(
        item_id: ItemId, item: Annotated[Item, Depends(c.body)], replica: ReplicaDep
    ) -> Item:
        if item_id != item.id:
            raise HTTPException(
                422, f"the id in the path ({item_id!r}) and body ({item.id!r}) differ"
            )
        await change(replica, lambda p: assembled(422, p, **{c.field: _replace(c.of(p), item)}))
        return item

    @router.delete(one, tags=[c.field], name=f"delete_{c.what}", status_code=204)
    async def delete_item(item_id: ItemId, replica: ReplicaDep) -> None:
        def remove(p: Policy) -> Policy:
            _find(c.of(p), item_id, c.what)
            refused = c.in_use(p, item_id) if c.in_use else None
            if refused:
                raise HTTPException(409, refused)
            return assembled(409, p, **{c.field: [i for i in c.of(p) if i.id != item_id]})

        await change(replica, remove)


def _find(items: list[Item], item_id: str, what: str) -> Item:
    for item in items:
        if item.id == item_id:
            return item
    raise HTTPException(404, f"no {what} {item_id!r}")


def _replace(items: list[Item], new: Item) -> list[Item]:
    if any(item.id == new.id for item in items):
        return [new if item.id == new.id else item for item in items]
    added = list(items)  # (not [*items, new]: mypy loses the type variable there)
    added.append(new)
    return added


# a collection's body dependency: FastAPI takes the body's model from the parameter's type
def _trunk(trunk: Trunk) -> Trunk:
    return trunk


def _route(route: Route) -> Route:
    return route


def _routes_using(policy: Policy, trunk_id: str) -> str | None:
    users = [r.id for r in policy.routes if trunk_id in r.trunks]
    return f"trunk {trunk_id!r} is used by routes {users}" if users else None


add_collection(Collection("trunks", "trunk", Trunk, _trunk, in_use=_routes_using))
add_collection(Collection("routes", "route", Route, _route))


# ---- testing a number -----------------------------------------------------------------


@router.post("/route-test", tags=["routing"])
def route_test(test: RouteTest, replica: ReplicaDep) -> dict[str, Any]:
    """What a call arriving on `trunk` to `called` would get, with no call placed."""
    return decision_dict(replica.route_test(test.trunk, test.called, test.calling))


@router.get("/status", tags=["routing"])
def status(replica: ReplicaDep) -> dict[str, Any]:
    """The policy this replica has in force, and what it knows of the trunks."""
    policy = replica.policy
    return {
        "revision": replica.revision,
        "answered": replica.answered,
        "trunks": len(policy.trunks),
        "routes": len(policy.routes),
        "policy_error": replica.policy_error,
        "trunks_down": sorted(replica.down),
        "active_calls": dict(sorted(replica.active_calls.items())),
    }
