"""Which Host and Origin headers /mcp accepts, from the settings."""

from __future__ import annotations

from pathlib import Path

import pytest

from app.agents.security import LOCAL_HOSTS, LOCAL_ORIGINS, transport_security
from app.config import Settings


def settings_with(tmp_path: Path, **values: object) -> Settings:
    return Settings(_env_file=None, data_dir=tmp_path, **values)  # type: ignore[call-arg]


def test_without_a_public_url_only_the_local_names_are_allowed(tmp_path: Path) -> None:
    security = transport_security(settings_with(tmp_path))
    assert security.enable_dns_rebinding_protection is True
    assert security.allowed_hosts == list(LOCAL_HOSTS)
    assert security.allowed_origins == list(LOCAL_ORIGINS)


def test_the_public_url_adds_its_host_and_origin(tmp_path: Path) -> None:
    security = transport_security(
        settings_with(tmp_path, public_base_url="https://Hooks.Example.com:8443/base/")
    )
    assert security.allowed_hosts == [*LOCAL_HOSTS, "hooks.example.com:8443"]
    assert security.allowed_origins == [*LOCAL_ORIGINS, "https://hooks.example.com:8443"]


@pytest.mark.parametrize("env_value", ["mcp.example.com, 10.0.0.5:*", "mcp.example.com,10.0.0.5:*"])
def test_configured_hosts_and_origins_replace_the_defaults(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, env_value: str
) -> None:
    monkeypatch.setenv("MCP_ALLOWED_HOSTS", env_value)
    monkeypatch.setenv("MCP_ALLOWED_ORIGINS", "https://app.example.com")
    security = transport_security(
        settings_with(tmp_path, public_base_url="https://hooks.example.com")
    )
    assert security.allowed_hosts == ["mcp.example.com", "10.0.0.5:*"]
    assert security.allowed_origins == ["https://app.example.com"]
    assert security.enable_dns_rebinding_protection is True


def test_agent_access_is_off_by_default(tmp_path: Path) -> None:
    assert settings_with(tmp_path).mcp_enabled is False
