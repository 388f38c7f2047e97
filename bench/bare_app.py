"""The floor of the comparison: a bare FastAPI endpoint that reads the body and returns {}.

No secret check, no parsing, no storage: what one uvicorn worker answers when the
handler does nothing. bench/ingress.py serves it with

    uvicorn --app-dir bench bare_app:app --loop uvloop --http httptools --no-access-log
"""

from __future__ import annotations

from fastapi import FastAPI, Request

WEBHOOK_PATH = "/api/v1/integrations/telegram/webhook"

app = FastAPI(docs_url=None, redoc_url=None, openapi_url=None)


@app.post(WEBHOOK_PATH)
async def webhook(request: Request) -> dict[str, str]:
    await request.body()
    return {}
