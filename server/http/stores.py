"""/api/admin/stores/{store_id}/settings: each store's own assistant (API.md, "Store settings and handoff").

The admin token or an admin key reaches every store; a store's own key reaches its own settings and nothing
else (404 for another store's, as for its sessions)."""

from __future__ import annotations

from typing import Any

import msgspec
from litestar import Controller, Request, get, put
from litestar.datastructures import State
from litestar.di import Provide
from litestar.params import FromPath

from server.errors import ValidationFailed
from server.http.access import access
from server.http.deps import OperatorDep, provide_operator, resources_of


class StoreSettingsController(Controller):
    path = "/api/admin/stores/{store_id:str}/settings"
    tags = ["admin"]
    dependencies = {"operator": Provide(provide_operator)}
    opt = access("operator")

    @get("/")
    async def get_settings(self, store_id: FromPath[str], state: State, operator: OperatorDep) -> dict[str, Any]:
        """Every setting (null: the service's default), the webhook secret only as whether one is set."""
        return await resources_of(state).store_settings.view(operator.path_store(store_id))

    @put("/")
    async def put_settings(self, store_id: FromPath[str], request: Request[Any, Any, Any],
                           state: State, operator: OperatorDep) -> dict[str, Any]:
        """Any subset of the settings; null resets one to its default; unknown fields and bad values are 400
        naming the field. Reaches the next turn on every replica at once (NOTIFY)."""
        store = operator.path_store(store_id)  # another store's: 404 before the body is looked at
        try:
            patch = msgspec.json.decode(await request.body() or b"{}")
        except msgspec.DecodeError as exc:
            raise ValidationFailed(f"the body is not JSON: {exc}", {"field": "body"}) from None
        return await resources_of(state).store_settings.update(store, patch, operator.name)

    @get("/changes")
    async def changes(self, store_id: FromPath[str], state: State, operator: OperatorDep) -> dict[str, Any]:
        """The last 50 changes, newest first: when, by whom, field, old → new (secrets as set/unset)."""
        return {"items": await resources_of(state).store_settings.changes(operator.path_store(store_id))}
