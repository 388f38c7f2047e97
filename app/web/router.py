"""Serving the UI: `/ui/` is the page, `/ui/static/<file>` its assets.

The UI is a mounted ASGI app of its own rather than API routes: it is not part of
the API document, and every response it gives (the page, an asset, a 404) carries
the same security headers:

- `Content-Security-Policy`: scripts, styles, images and API calls from this
  origin only, no inline script or style, no plugins, no framing, forms post
  here only. Every value from Telegram or a user is put into the page as text
  (`textContent`), and this policy is the second line should that ever slip.
- `X-Frame-Options: DENY` for browsers that predate `frame-ancestors`.
- `Referrer-Policy: no-referrer`: links out (the BotFather docs) carry no URL.
- `X-Content-Type-Options: nosniff`, and `Cache-Control: no-cache` so a new
  release's assets are picked up (they are revalidated, not refetched blindly).

The assets are read once, at import: the set of files is fixed, so a request
can never name a path outside the static folder.
"""

from __future__ import annotations

from pathlib import Path

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route, Router
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app.errors import error_response

UI_PREFIX = "/ui"
STATIC_DIR = Path(__file__).resolve().parent / "static"
_MEDIA_TYPES = {
    ".html": "text/html; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".svg": "image/svg+xml",
    ".txt": "text/plain; charset=utf-8",
}

CONTENT_SECURITY_POLICY = "; ".join(
    [
        "default-src 'self'",
        "script-src 'self'",
        "style-src 'self'",
        "img-src 'self'",
        "connect-src 'self'",
        "object-src 'none'",
        "base-uri 'none'",
        "form-action 'self'",
        "frame-ancestors 'none'",
    ]
)
SECURITY_HEADERS: dict[str, str] = {
    "Content-Security-Policy": CONTENT_SECURITY_POLICY,
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "no-referrer",
    "X-Content-Type-Options": "nosniff",
    "Cache-Control": "no-cache",
}


def _load_assets() -> dict[str, tuple[bytes, str]]:
    assets: dict[str, tuple[bytes, str]] = {}
    for path in sorted(STATIC_DIR.iterdir()):
        media_type = _MEDIA_TYPES.get(path.suffix)
        if path.is_file() and media_type is not None:
            assets[path.name] = (path.read_bytes(), media_type)
    return assets


_ASSETS = _load_assets()
_PAGE = "index.html"


async def _page(_request: Request) -> Response:
    body, media_type = _ASSETS[_PAGE]
    return Response(body, media_type=media_type)


async def _asset(request: Request) -> Response:
    found = _ASSETS.get(request.path_params["name"])
    if found is None:
        return error_response(404, "not_found", "No such file.")
    body, media_type = found
    return Response(body, media_type=media_type)


async def to_page(_request: Request) -> Response:
    """`/ui` without the slash (a route of the main app: a mount only sees `/ui/...`):
    the page's relative asset links need the slash."""
    return Response(status_code=307, headers={**SECURITY_HEADERS, "Location": f"{UI_PREFIX}/"})


async def _not_found(scope: Scope, receive: Receive, send: Send) -> None:
    response = error_response(404, "not_found", "No such page.")
    await response(scope, receive, send)


class _SecurityHeaders:
    """Adds `SECURITY_HEADERS` to every response of the wrapped app."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app
        self.headers = [(k.lower().encode(), v.encode()) for k, v in SECURITY_HEADERS.items()]

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                message["headers"] = [*message.get("headers", []), *self.headers]
            await send(message)

        await self.app(scope, receive, send_with_headers)


def ui_app() -> ASGIApp:
    """The UI, to be mounted at `UI_PREFIX`."""
    router = Router(
        routes=[
            Route("/", _page, methods=["GET"]),
            Route("/static/{name}", _asset, methods=["GET"]),
        ],
        redirect_slashes=False,
        default=_not_found,
    )
    return _SecurityHeaders(router)
