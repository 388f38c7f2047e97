"""Service settings: the only module that reads the environment.

Every setting of the specification is here with its default; `.env.example`
lists the same names. Settings are read once (`get_settings()`), and code that
needs them receives the object, so tests construct their own.
"""

from __future__ import annotations

import ipaddress
from datetime import timedelta
from functools import lru_cache
from pathlib import Path
from typing import Annotated, Literal

from pydantic import Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

DEFAULT_DATA_DIR = Path("data")


DEFAULT_TELEGRAM_API_BASE = "https://api.telegram.org"


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_file=".env",
        env_file_encoding="utf-8",
        extra="ignore",
        case_sensitive=False,
    )

    app_env: Literal["development", "production"] = "development"
    log_level: str = "INFO"
    # One line per HTTP request from uvicorn. Off by default: at webhook rates it
    # costs about 5% of a core and says little the events API does not.
    access_log: bool = False
    data_dir: Path = DEFAULT_DATA_DIR

    # Unset: a SQLite file under data_dir (the embedded default). Kept out of
    # repr(): these URLs may carry passwords.
    database_url: str | None = Field(default=None, repr=False)
    # Unset: an in-process rate limiter, which is not shared between replicas.
    redis_url: str | None = Field(default=None, repr=False)
    # REDIS_URL names one node of a Redis Cluster (app/redis_client.py).
    redis_cluster: bool = False
    # DATABASE_URL goes through PgBouncer in transaction pooling mode: no named
    # prepared statement may outlive its transaction (app/db.py).
    database_pgbouncer: bool = False

    # "key_id:base64url-32-bytes,..." with the primary first. Unset in development:
    # a key file is generated under data_dir.
    vault_keys: SecretStr | None = None

    # Unset: connections are created in long-polling mode.
    public_base_url: str | None = None
    telegram_api_base: str = DEFAULT_TELEGRAM_API_BASE
    telegram_max_retries: int = Field(default=3, ge=0, le=10)
    telegram_request_timeout: float = Field(default=10.0, gt=0, le=120)
    telegram_webhook_max_connections: int = Field(default=40, ge=1, le=100)

    ingress_failed_auth_per_minute: int = Field(default=20, ge=1)
    ingress_updates_per_second: int = Field(default=300, ge=1)
    ingress_updates_burst: int = Field(default=600, ge=1)
    # Peers allowed to set X-Forwarded-For, as addresses or CIDR ranges.
    ingress_trusted_proxies: Annotated[list[str], NoDecode] = Field(default_factory=list)
    # Accept webhook requests only from Telegram's published source ranges.
    ingress_telegram_ips_only: bool = False
    ingress_max_body_bytes: int = Field(default=1024 * 1024, ge=1024)

    webhook_secret_grace_seconds: int = Field(default=600, ge=0)

    # How long an outbound message may wait for approval before it expires
    # (seconds, or an ISO 8601 duration such as PT24H).
    approval_ttl: timedelta = Field(default=timedelta(hours=24), gt=timedelta(0))
    # How long a worker holds a claimed message: if it dies mid-send, another
    # worker sends the message once this has passed. Longer than a send can take.
    dispatch_lease_seconds: float = Field(default=60.0, ge=1.0, le=3600.0)
    # How fast an approved broadcast's messages fall due (app.messages.batches):
    # below the bot's 30 a second, so its ordinary messages keep room beside it.
    broadcast_messages_per_second: float = Field(default=25.0, gt=0, le=1000)

    # PostgreSQL pools per process: the API's (and the worker's) engine, and the
    # webhook path's own. Each process names its connections (PostgreSQL's
    # application_name, Redis's client name) `<database_application_name>-<role>`
    # (api, ingress, worker).
    database_pool_size: int = Field(default=10, ge=1, le=200)
    database_max_overflow: int = Field(default=10, ge=0, le=200)
    ingress_database_pool_size: int = Field(default=10, ge=1, le=200)
    database_application_name: str = Field(default="integrations", min_length=1, max_length=40)

    # Seconds a connection has to deliver a request's complete headers, from when it
    # opened or its previous response was sent; a slower client gets a 408 and is
    # closed, so slow or silent connections cannot pile up.
    http_header_timeout: float = Field(default=10.0, gt=0, le=300)

    # Who may read /metrics (the API server's, and the worker's port): addresses or
    # CIDR ranges. Unset: loopback only in production, anyone in development. A
    # request that came through a proxy (X-Forwarded-For, X-Real-IP, Forwarded) is
    # refused whatever its peer (app/metrics.py says why).
    metrics_allowed_networks: Annotated[list[str] | None, NoDecode] = None
    # The worker's metrics endpoint (`integrations worker --metrics-port`); unset: none.
    worker_metrics_port: int | None = Field(default=None, ge=1, le=65535)
    worker_metrics_host: str = "127.0.0.1"
    # After SIGTERM: how long `serve` lets requests in flight finish, and the worker
    # its sends in flight, before cutting them off (the worker then puts what it
    # claimed back in the queue). Below the orchestrator's kill timeout.
    shutdown_grace_seconds: int = Field(default=20, ge=0, le=600)

    # The MCP server at /mcp (agent access). Off unless asked for: it lets any
    # sender token send through the approval queue from an agent.
    mcp_enabled: bool = False
    # Host and Origin headers /mcp accepts (DNS-rebinding protection). Empty: the
    # local names (127.0.0.1, localhost, [::1], any port) and PUBLIC_BASE_URL's
    # host and origin (see app.agents.security). `name:*` allows any port.
    mcp_allowed_hosts: Annotated[list[str], NoDecode] = Field(default_factory=list)
    mcp_allowed_origins: Annotated[list[str], NoDecode] = Field(default_factory=list)

    @field_validator(
        "ingress_trusted_proxies", "mcp_allowed_hosts", "mcp_allowed_origins", mode="before"
    )
    @classmethod
    def _split_lists(cls, value: object) -> object:
        if isinstance(value, str):
            return [part.strip() for part in value.split(",") if part.strip()]
        return value

    @field_validator("metrics_allowed_networks", mode="before")
    @classmethod
    def _split_networks(cls, value: object) -> object:
        # METRICS_ALLOWED_NETWORKS= (blank) means unset: the default for APP_ENV.
        if isinstance(value, str):
            parts = [part.strip() for part in value.split(",") if part.strip()]
            return parts or None
        return value

    @field_validator("ingress_trusted_proxies")
    @classmethod
    def _check_proxies(cls, value: list[str]) -> list[str]:
        for entry in value:
            ipaddress.ip_network(entry, strict=False)
        return value

    @field_validator("metrics_allowed_networks")
    @classmethod
    def _check_networks(cls, value: list[str] | None) -> list[str] | None:
        for entry in value or ():
            ipaddress.ip_network(entry, strict=False)
        return value

    @field_validator("worker_metrics_port", mode="before")
    @classmethod
    def _blank_port_is_unset(cls, value: object) -> object:
        if isinstance(value, str) and value.strip() == "":
            return None
        return value

    @field_validator("public_base_url", mode="before")
    @classmethod
    def _blank_is_polling(cls, value: object) -> object:
        # PUBLIC_BASE_URL= (blank) means what leaving it out means: polling mode.
        if isinstance(value, str) and value.strip() == "":
            return None
        return value

    @field_validator("approval_ttl", mode="before")
    @classmethod
    def _seconds_are_seconds(cls, value: object) -> object:
        # APPROVAL_TTL=86400 means seconds (pydantic would read a bare number in a
        # string as a clock time); ISO 8601 durations (PT24H) still parse.
        if isinstance(value, str) and value.strip().replace(".", "", 1).isdigit():
            return float(value)
        return value

    @field_validator("telegram_api_base", mode="before")
    @classmethod
    def _blank_is_default(cls, value: object) -> object:
        if isinstance(value, str) and value.strip() == "":
            return DEFAULT_TELEGRAM_API_BASE
        return value

    @field_validator("public_base_url", "telegram_api_base")
    @classmethod
    def _strip_slash(cls, value: str | None) -> str | None:
        return None if value is None else value.rstrip("/")

    @field_validator("redis_url", "database_url", mode="before")
    @classmethod
    def _empty_is_unset(cls, value: object) -> object:
        if isinstance(value, str) and value.strip() == "":
            return None
        return value

    @property
    def is_production(self) -> bool:
        return self.app_env == "production"

    @property
    def effective_database_url(self) -> str:
        if self.database_url:
            return self.database_url
        return f"sqlite+aiosqlite:///{(self.data_dir / 'integrations.db').as_posix()}"


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    return Settings()
