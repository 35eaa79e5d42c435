"""/api/admin/stores/{store_id}/settings: each store's own assistant (API.md, "Store settings and handoff").

The admin token or an admin key reaches every store; a store's own key reaches its own settings and nothing
else (404 for another store's, as for its sessions)."""

from __future__ import annotations

from typing import Any

import msgspec
from litestar import Controller, Request, get, put
from litestar.connection import ASGIConnection
from litestar.datastructures import State
from litestar.handlers import BaseRouteHandler
from litestar.params import FromPath

from server.errors import NotFound, ValidationFailed
from server.http.deps import checked, operator_of, resources_of
from server.schemas import StoreId


class StoreNotFound(NotFound):
    code, default_message = "store_not_found", "No such store"


async def _actor(connection: ASGIConnection[Any, Any, Any, Any]) -> str:
    """Who is asking, as the change log records it (never a secret): admin-token, key:<id> or development."""
    principal = await operator_of(connection,
                                  "A valid admin token or API key is required (Authorization: Bearer ...)")
    if principal is None:
        return "admin-token"
    store_id = str(connection.path_params.get("store_id", ""))
    principal.require_store(store_id, StoreNotFound(detail={"store_id": store_id}))
    return "development" if principal.anonymous else f"key:{principal.key_id}"


async def settings_guard(connection: ASGIConnection[Any, Any, Any, Any], _: BaseRouteHandler) -> None:
    await _actor(connection)


def _store(store_id: str) -> str:
    return checked(store_id, StoreId, "store_id")


class StoreSettingsController(Controller):
    path = "/api/admin/stores/{store_id:str}/settings"
    tags = ["admin"]
    guards = [settings_guard]

    @get("/")
    async def get_settings(self, store_id: FromPath[str], state: State) -> dict[str, Any]:
        """Every setting (null: the service's default), the webhook secret only as whether one is set."""
        return await resources_of(state).store_settings.view(_store(store_id))

    @put("/")
    async def put_settings(self, store_id: FromPath[str], request: Request[Any, Any, Any],
                           state: State) -> dict[str, Any]:
        """Any subset of the settings; null resets one to its default; unknown fields and bad values are 400
        naming the field. Reaches the next turn on every replica at once (NOTIFY)."""
        try:
            patch = msgspec.json.decode(await request.body() or b"{}")
        except msgspec.DecodeError as exc:
            raise ValidationFailed(f"the body is not JSON: {exc}", {"field": "body"}) from None
        return await resources_of(state).store_settings.update(_store(store_id), patch, await _actor(request))

    @get("/changes")
    async def changes(self, store_id: FromPath[str], state: State) -> dict[str, Any]:
        """The last 50 changes, newest first: when, by whom, field, old → new (secrets as set/unset)."""
        return {"items": await resources_of(state).store_settings.changes(_store(store_id))}
