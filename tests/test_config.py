"""Settings read from the environment: blank values mean what leaving them out means."""

from __future__ import annotations

from pathlib import Path

import pytest

from app.config import Settings


def settings_from(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, **env: str) -> Settings:
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    return Settings(_env_file=None, data_dir=tmp_path)  # type: ignore[call-arg]


def test_a_blank_telegram_api_base_is_the_default(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    settings = settings_from(monkeypatch, tmp_path, TELEGRAM_API_BASE="  ")
    assert settings.telegram_api_base == "https://api.telegram.org"


def test_a_blank_public_base_url_means_polling_mode(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    assert settings_from(monkeypatch, tmp_path, PUBLIC_BASE_URL="").public_base_url is None


def test_trailing_slashes_are_dropped(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    settings = settings_from(
        monkeypatch,
        tmp_path,
        TELEGRAM_API_BASE="http://127.0.0.1:8081/",
        PUBLIC_BASE_URL="https://hooks.example.com//",
    )
    assert settings.telegram_api_base == "http://127.0.0.1:8081"
    assert settings.public_base_url == "https://hooks.example.com"


@pytest.mark.parametrize(("text", "seconds"), [("86400", 86400), ("90.5", 90.5), ("PT2H", 7200)])
def test_approval_ttl_reads_seconds_or_an_iso_duration(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, text: str, seconds: float
) -> None:
    settings = settings_from(monkeypatch, tmp_path, APPROVAL_TTL=text)
    assert settings.approval_ttl.total_seconds() == seconds
