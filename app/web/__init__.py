"""The settings and approvals pages, served at `/ui/` (SPEC section 9).

Plain HTML, CSS and a little JavaScript, served as static files by the service
itself (no build step, no CDN). The pages call the same JSON API as every other
client, with the API token the user pasted (kept in the browser's session
storage), so there is no second source of truth and the server enforces every
role. See `app.web.router` for the security headers every UI response carries.
"""

from app.web.router import UI_PREFIX, to_page, ui_app

__all__ = ["UI_PREFIX", "to_page", "ui_app"]
