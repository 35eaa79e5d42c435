"""The web pages: the shopper chat at /, the operator page at /admin, and their static files."""

from __future__ import annotations

import base64
import functools
import hashlib
from pathlib import Path

from litestar import Response, get
from litestar.datastructures import CacheControlHeader
from litestar.response import File
from litestar.static_files import create_static_files_router

from server.errors import NotFound
from server.http.access import access

WEB = Path(__file__).resolve().parent / "web"
PAGE_HEADERS = {"Cache-Control": "no-cache", "X-Content-Type-Options": "nosniff",
                "Content-Security-Policy": "default-src 'self'; img-src 'self' data:; style-src 'self'; "
                                           "script-src 'self'; connect-src 'self'; frame-ancestors 'none'"}


@get("/", include_in_schema=False, opt=access("public"))
async def shopper_page() -> File:
    """A sample store page with the widget on it (server/http/web/index.html), as a store embeds it."""
    return File(WEB / "index.html", content_disposition_type="inline", media_type="text/html; charset=utf-8",
                headers=PAGE_HEADERS)


@get("/chat", include_in_schema=False, opt=access("public"))
async def chat_page() -> File:
    """The full-page shopper chat (server/http/web/chat.html); its data comes from /api/session-chat."""
    return File(WEB / "chat.html", content_disposition_type="inline", media_type="text/html; charset=utf-8",
                headers=PAGE_HEADERS)


@functools.cache
def widget_script() -> tuple[bytes, str, str]:
    """widget.js: (its bytes, its version, its Subresource Integrity hash)."""
    body = (WEB / "widget.js").read_bytes()
    return body, hashlib.sha256(body).hexdigest()[:12], "sha384-" + base64.b64encode(hashlib.sha384(body).digest()
                                                                                      ).decode()


WIDGET_HEADERS = {"X-Content-Type-Options": "nosniff", "Access-Control-Allow-Origin": "*",  # SRI needs CORS
                  "Cross-Origin-Resource-Policy": "cross-origin"}


@get("/widget.js", include_in_schema=False, opt=access("public"))
async def widget() -> Response[bytes]:
    """The widget, latest: cached briefly, revalidated by ETag (its version). /widget/<version>.js never changes."""
    body, version, integrity = widget_script()
    return Response(body, media_type="text/javascript; charset=utf-8", headers={
        **WIDGET_HEADERS, "Cache-Control": "public, max-age=300", "ETag": f'"{version}"',
        "X-Widget-Version": version, "X-Widget-Integrity": integrity})


@get("/widget/{version:str}", include_in_schema=False, opt=access("public"))
async def widget_version(version: str) -> Response[bytes]:
    """The widget at one version (`<version>.js`): immutable, cached for a year, for a page that pins it with SRI."""
    body, current, integrity = widget_script()
    if version != f"{current}.js":
        raise NotFound("No such widget version (GET /widget.js names the current one)", {"version": version[:40]})
    return Response(body, media_type="text/javascript; charset=utf-8", headers={
        **WIDGET_HEADERS, "Cache-Control": "public, max-age=31536000, immutable", "ETag": f'"{current}"',
        "X-Widget-Integrity": integrity})


@get("/admin", include_in_schema=False, opt=access("public"))
async def operator_page() -> File:
    """The operator page; the page is static, its data (/api/admin/*) needs the admin token in production."""
    return File(WEB / "admin.html", content_disposition_type="inline", media_type="text/html; charset=utf-8",
                headers=PAGE_HEADERS)


static_files = create_static_files_router(path="/static", directories=[WEB], include_in_schema=False,
                                          cache_control=CacheControlHeader(no_cache=True), opt=access("public"))
