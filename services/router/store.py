"""The routing policy in the TANDEM_CONFIG bucket: one key per object, and a commit marker.

Keys are `usages`, `trunk.<id>` and `route.<id>` (JSON). A writer puts every changed object,
deletes what is gone, then puts `commit`; readers rebuild their policy when `commit` moves,
so an import of the whole policy is seen all at once.
"""

from __future__ import annotations

import json
import time

from nats.js import JetStreamContext
from nats.js.errors import KeyNotFoundError, NoKeysError
from nats.js.kv import KeyValue

from tandem import bus
from tandem.config import Policy

COMMIT_KEY = "commit"
USAGES_KEY = "usages"


def policy_entries(policy: Policy) -> dict[str, bytes]:
    entries = {USAGES_KEY: json.dumps(policy.pstn_usages).encode()}
    entries.update({f"trunk.{t.id}": t.model_dump_json().encode() for t in policy.trunks})
    entries.update({f"route.{r.id}": r.model_dump_json().encode() for r in policy.routes})
    return entries


def policy_from_entries(entries: dict[str, bytes]) -> Policy:
    return Policy.model_validate(
        {
            "pstn_usages": json.loads(entries.get(USAGES_KEY, b"[]")),
            "trunks": [json.loads(v) for k, v in entries.items() if k.startswith("trunk.")],
            "routes": [json.loads(v) for k, v in entries.items() if k.startswith("route.")],
        }
    )


async def config_bucket(js: JetStreamContext) -> KeyValue:
    return await js.key_value(bus.CONFIG_BUCKET)


async def read_entries(kv: KeyValue) -> dict[str, bytes]:
    try:
        keys = await kv.keys()
    except NoKeysError:
        return {}
    entries = {}
    for key in keys:
        try:
            entry = await kv.get(key)
        except KeyNotFoundError:  # deleted since keys() listed it
            continue
        if entry.value is not None:
            entries[key] = entry.value
    return entries


async def read_policy(kv: KeyValue) -> Policy | None:
    entries = await read_entries(kv)
    if COMMIT_KEY not in entries:
        return None
    entries.pop(COMMIT_KEY)
    return policy_from_entries(entries)


async def write_policy(kv: KeyValue, policy: Policy) -> None:
    """Replace the stored policy with this one: changed keys put, stale keys deleted, commit."""
    old = await read_entries(kv)
    new = policy_entries(policy)
    for key, value in new.items():
        if old.get(key) != value:
            await kv.put(key, value)
    for key in old.keys() - new.keys() - {COMMIT_KEY}:
        await kv.delete(key)
    marker = {"time": time.time(), "trunks": len(policy.trunks), "routes": len(policy.routes)}
    await kv.put(COMMIT_KEY, json.dumps(marker).encode())


async def import_policy(js: JetStreamContext, policy: Policy, if_empty: bool = False) -> bool:
    """Store the policy; with if_empty, only when the bucket holds none. True if written."""
    kv = await config_bucket(js)
    if if_empty:
        try:
            await kv.get(COMMIT_KEY)
            return False
        except KeyNotFoundError:
            pass
    await write_policy(kv, policy)
    return True
