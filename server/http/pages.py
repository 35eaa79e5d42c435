"""The web pages: the shopper chat at /, the operator page at /admin, and their static files."""

from __future__ import annotations

from pathlib import Path

from litestar import get
from litestar.datastructures import CacheControlHeader
from litestar.response import File
from litestar.static_files import create_static_files_router

from server.http.access import access

WEB = Path(__file__).resolve().parent / "web"
PAGE_HEADERS = {"Cache-Control": "no-cache", "X-Content-Type-Options": "nosniff",
                "Content-Security-Policy": "default-src 'self'; img-src 'self' data:; style-src 'self'; "
                                           "script-src 'self'; connect-src 'self'; frame-ancestors 'none'"}


@get("/", include_in_schema=False, opt=access("public"))
async def shopper_page() -> File:
    """The shopper chat (server/http/web/index.html); its data comes from /api/session-chat."""
    return File(WEB / "index.html", content_disposition_type="inline", media_type="text/html; charset=utf-8",
                headers=PAGE_HEADERS)


@get("/admin", include_in_schema=False, opt=access("public"))
async def operator_page() -> File:
    """The operator page; the page is static, its data (/api/admin/*) needs the admin token in production."""
    return File(WEB / "admin.html", content_disposition_type="inline", media_type="text/html; charset=utf-8",
                headers=PAGE_HEADERS)


static_files = create_static_files_router(path="/static", directories=[WEB], include_in_schema=False,
                                          cache_control=CacheControlHeader(no_cache=True), opt=access("public"))
