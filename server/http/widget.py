"""The shopper's widget on a store's own site: its configuration (API.md, "Shoppers in the browser")."""

from __future__ import annotations

from litestar import Controller, get
from litestar.datastructures import State
from litestar.di import Provide
from litestar.params import FromPath

from server.errors import StoreNotFound
from server.http.access import access
from server.http.deps import Caller, checked, provide_principal, resources_of
from server.schemas import StoreId, WidgetConfig


class WidgetController(Controller):
    path = "/api/widget"
    tags = ["widget"]
    dependencies = {"principal": Provide(provide_principal)}
    opt = access("widget")

    @get("/{store_id:str}/config")
    async def config(self, store_id: FromPath[str], state: State, principal: Caller) -> WidgetConfig:
        """What the widget shows before a session opens: the store's name, greeting and language. A publishable key
        reads its own store's only (another store answers 404, as if it did not exist)."""
        store = checked(store_id, StoreId, "store_id")
        principal.require_store(store, StoreNotFound(detail={"store_id": store}))
        return WidgetConfig(**await resources_of(state).store_settings.widget(store))
