"""The Litestar application: the route modules of API.md, one error body for every failure, and the
process's resources opened for the app's lifetime."""

from __future__ import annotations

import gc
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import psycopg
from litestar import Litestar, Request, Response, Router
from litestar.datastructures import State
from litestar.exceptions import HTTPException, NotFoundException, ValidationException
from litestar.middleware import DefineMiddleware
from litestar.openapi import OpenAPIConfig
from litestar.plugins.prometheus import PrometheusConfig
from psycopg_pool import PoolTimeout

from server.errors import (
    AppError,
    DatabaseUnavailable,
    Forbidden,
    MethodNotAllowed,
    NotFound,
    PayloadTooLarge,
    UnsupportedMediaType,
    ValidationFailed,
)
from server.http.access import access, check_access
from server.http.admin import AdminController
from server.http.agent_protocol import CONTROLLERS as AGENT_PROTOCOL
from server.http.cors import Cors
from server.http.csrf import OperatorCsrf
from server.http.operations import VERSION, MetricsController, health, live, ready
from server.http.operator_auth import OperatorSignInController
from server.http.operators import OperatorController
from server.http.pages import chat_page, operator_page, shopper_page, static_files, widget, widget_version
from server.http.sessions import SessionController
from server.http.stores import StoreSettingsController
from server.http.widget import WidgetController
from server.resources import open_resources
from server.settings import Settings, load_settings
from server.shutdown import drain_on_signals

log = logging.getLogger(__name__)


def _error_response(err: AppError) -> Response[dict[str, Any]]:
    return Response(err.body(), status_code=err.status_code, headers=err.headers)


def _validation_detail(exc: ValidationException) -> dict[str, Any]:
    extra = exc.extra if isinstance(exc.extra, list) else [exc.extra] if exc.extra else []
    return {"errors": [e if isinstance(e, dict) else {"message": str(e)} for e in extra]}


def handle_exception(request: Request[Any, Any, Any], exc: Exception) -> Response[dict[str, Any]]:
    if isinstance(exc, AppError):
        return _error_response(exc)
    if isinstance(exc, ValidationException):
        return _error_response(ValidationFailed(str(exc.detail) or None, _validation_detail(exc)))
    if isinstance(exc, NotFoundException):
        return _error_response(NotFound(f"No route for {request.method} {request.url.path}"))
    if isinstance(exc, HTTPException):
        code = exc.status_code
        if code == 413:
            return _error_response(PayloadTooLarge(detail={"max_bytes": request.app.state.settings.max_body_bytes}))
        if code == 403:  # Litestar's CSRF check
            return _error_response(Forbidden(str(exc.detail)))
        if code == 405:
            return _error_response(MethodNotAllowed())
        if code == 415:
            return _error_response(UnsupportedMediaType())
        if 400 <= code < 500:
            return _error_response(ValidationFailed(str(exc.detail)))
    if isinstance(exc, psycopg.OperationalError | PoolTimeout):
        log.warning("database unavailable: %s", type(exc).__name__)
        return _error_response(DatabaseUnavailable())
    if isinstance(exc, psycopg.errors.DataError):  # e.g. an out-of-range timestamp from a query string
        return _error_response(ValidationFailed("A value is out of range"))
    log.exception("unhandled error on %s %s", request.method, request.url.path)
    return _error_response(AppError())


def create_app(settings: Settings | None = None) -> Litestar:
    settings = settings or load_settings()

    @asynccontextmanager
    async def lifespan(app: Litestar) -> AsyncIterator[None]:
        async with open_resources(settings) as resources:
            app.state.resources = resources
            # what start-up loaded (models, the graph, clients: most of the heap) is never garbage: out of the
            # collector's sight, so that a full collection during a turn does not walk it (bench/run.py --open-loop)
            gc.collect()
            gc.freeze()
            with drain_on_signals(resources.drain, settings.shutdown_drain_seconds):
                yield

    prometheus = PrometheusConfig(app_name="sixshop-ai-agent", prefix="sixshop", group_path=True,
                                  exclude=["/metrics"])
    return Litestar(
        route_handlers=[SessionController, AdminController, StoreSettingsController, OperatorController,
                        *AGENT_PROTOCOL, WidgetController, OperatorSignInController, health, live, ready,
                        MetricsController, shopper_page, chat_page, operator_page, static_files, widget,
                        widget_version],
        # CORS for CORS_ALLOW_ORIGINS, and the stores' allowed_origins on the shoppers' routes (server/http/cors.py)
        middleware=[DefineMiddleware(Cors, origins=settings.cors_origins()), prometheus.middleware, OperatorCsrf],
        guards=[check_access],  # every route's owner rule (server/http/access.py)
        lifespan=[lifespan],
        state=State({"settings": settings}),
        exception_handlers={Exception: handle_exception},
        request_max_body_size=settings.max_body_bytes,
        openapi_config=OpenAPIConfig(title="sixshop-ai-agent", version=VERSION, path="/schema",
                                     openapi_router=Router("/schema", route_handlers=[], opt=access("public"),
                                                           include_in_schema=False)),
        debug=False,
        logging_config=None,  # server.logs configures logging once for the process
    )
