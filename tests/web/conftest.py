"""The settings UI in a real headless browser, against the real service.

- One Chromium for the whole test session (Debian's `/usr/bin/chromium`, driven by
  Playwright; Playwright's own browser download is not used). Each test gets a
  fresh browser context, so session storage never leaks between tests.
- Each test gets the service as `make run` runs it: uvicorn on a free port with the
  worker in the same process (the outbound dispatcher sends what reviewers
  approve), on the test PostgreSQL database and Redis, talking to the Bot API
  double.
- Screenshots: `shoot()` always takes them (into the test's tmp dir); with
  UPDATE_SCREENSHOTS=1 they are also written to docs/screenshots/, the copies the
  README shows. A read-only checkout never fails a test.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import socket
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import uvicorn
from playwright.async_api import Browser, BrowserContext, Page, async_playwright
from redis.asyncio import Redis
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from app.auth.models import Role
from app.config import Settings
from app.main import create_app
from tests.conftest import WorkspaceFixture
from tests.connections.helpers import connect_bot
from tests.telegram_double.double import TelegramDouble
from tests.telegram_double.state import FakeBot

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking"]
SCREENSHOT_DIR = Path(__file__).resolve().parents[2] / "docs" / "screenshots"
DESKTOP = {"width": 1280, "height": 800}
PHONE = {"width": 375, "height": 740}
# How long a UI step may take before the test fails (the service answers in
# milliseconds; this only keeps a broken page from hanging the run).
STEP_TIMEOUT_MS = 15_000


def _require_chromium() -> None:
    if not Path(CHROMIUM).exists():
        pytest.fail(f"{CHROMIUM} is missing: `apt-get install chromium` (.ci/run does it)")


@pytest.fixture(scope="session")
async def browser() -> AsyncIterator[Browser]:
    _require_chromium()
    async with async_playwright() as playwright:
        launched = await playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield launched
        await launched.close()


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


@dataclass
class UiService:
    """The running service, its workspace and a client for setting the scene."""

    base_url: str
    workspace: WorkspaceFixture
    double: TelegramDouble
    api: httpx.AsyncClient
    context: BrowserContext
    tmp_path: Path

    @property
    def ui_url(self) -> str:
        return f"{self.base_url}/ui/"

    async def new_page(self, viewport: dict[str, int] | None = None) -> Page:
        page = await self.context.new_page()
        page.set_default_timeout(STEP_TIMEOUT_MS)
        await page.set_viewport_size(viewport or DESKTOP)
        return page

    async def signed_in(self, token: str | None = None, hash_: str = "") -> Page:
        """A page signed in with `token` (the admin's by default), then at `hash_`."""
        page = await self.new_page()
        await page.goto(self.ui_url)
        await page.get_by_label("API token").fill(token or self.workspace.admin_token)
        await page.get_by_role("button", name="Sign in").click()
        await page.get_by_role("heading", level=1, name="Connections").wait_for()
        if hash_:
            await page.goto(self.ui_url + hash_)
        return page

    async def token(self, role: Role, name: str) -> tuple[str, str]:
        token_id, secret = await self.workspace.token(role, name)
        return str(token_id), secret

    async def connect(
        self, *, approval: str = "required", **bot_options: Any
    ) -> tuple[FakeBot, dict[str, Any]]:
        bot, body = await connect_bot(self.api, self.workspace, self.double, **bot_options)
        if approval != body["approval_mode"]:
            patched = await self.api.patch(
                f"/api/v1/connections/{body['id']}",
                json={"approval_mode": approval},
                headers=self.workspace.headers(),
            )
            assert patched.status_code == 200, patched.text
        return bot, body

    async def request_message(self, token: str, connection_id: str, **body: Any) -> dict[str, Any]:
        response = await self.api.post(
            "/api/v1/messages",
            json={"connection_id": connection_id, **body},
            headers=self.workspace.headers(token),
        )
        assert response.status_code == 202, response.text
        message: dict[str, Any] = response.json()
        return message

    async def shoot(self, page: Page, name: str) -> None:
        """`name`-desktop.png and `name`-375.png of the page as it is now."""
        size = page.viewport_size or DESKTOP
        for suffix, viewport in (("desktop", DESKTOP), ("375", PHONE)):
            await page.set_viewport_size(viewport)
            target = self.tmp_path / f"{name}-{suffix}.png"
            await page.screenshot(path=str(target), full_page=True)
            assert target.stat().st_size > 0
            if os.environ.get("UPDATE_SCREENSHOTS") == "1":
                SCREENSHOT_DIR.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(target, SCREENSHOT_DIR / target.name)
        await page.set_viewport_size(size)


@pytest.fixture
async def ui(
    settings: Settings,
    workspace: WorkspaceFixture,
    telegram_double: TelegramDouble,
    db_session_factory: async_sessionmaker[AsyncSession],
    redis_client: Redis,
    browser: Browser,
    tmp_path: Path,
) -> AsyncIterator[UiService]:
    # The real per-second setWebhook limit would make a resync right after a
    # connect wait; these tests are about the pages, not that limit.
    telegram_double.enforce_set_webhook_rate_limit = False
    app = create_app(settings, configure_logs=False, with_worker=True)
    port = _free_port()
    config = uvicorn.Config(
        app,
        host="127.0.0.1",
        port=port,
        log_config=None,
        access_log=False,
        lifespan="on",
        timeout_graceful_shutdown=5,
    )
    server = uvicorn.Server(config)
    serving = asyncio.create_task(server.serve())
    base_url = f"http://127.0.0.1:{port}"
    try:
        while not server.started:
            if serving.done():
                serving.result()
                pytest.fail("the service stopped during start-up")
            await asyncio.sleep(0.02)
        context = await browser.new_context(viewport=DESKTOP)
        try:
            async with httpx.AsyncClient(base_url=base_url, timeout=10) as api:
                yield UiService(base_url, workspace, telegram_double, api, context, tmp_path)
        finally:
            await context.close()
    finally:
        server.should_exit = True
        await asyncio.wait_for(serving, 30)
