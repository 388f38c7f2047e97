"""VAULT_KEYS parsing, the development key file, and keeping key material secret."""

from __future__ import annotations

import base64
import os
import pickle
import stat
from collections.abc import Iterator
from pathlib import Path
from typing import Literal

import pytest
from pydantic import SecretStr
from structlog.testing import capture_logs

from app.config import Settings
from app.vault import Keyring, KeyringError, VaultKey, generate_key_entry, load_keyring
from app.vault import parse_keyring as parse

KEY1 = bytes(range(32))
KEY2 = bytes(range(100, 132))
# Unpadded and padded spellings of the same kind of key.
TEXT1 = base64.urlsafe_b64encode(KEY1).decode().rstrip("=")
TEXT2 = base64.urlsafe_b64encode(KEY2).decode()


def settings(
    tmp_path: Path,
    *,
    app_env: Literal["development", "production"] = "development",
    vault_keys: SecretStr | None = None,
) -> Settings:
    # _env_file=None: a developer's .env must not leak into the test.
    return Settings(
        _env_file=None, app_env=app_env, vault_keys=vault_keys, data_dir=tmp_path / "data"
    )


def test_parse_primary_first_and_lookup() -> None:
    keyring = parse(f" k1:{TEXT1} , old_key-2:{TEXT2} ")
    assert keyring.primary.id == "k1"
    assert keyring.primary.key == KEY1
    assert keyring.key_ids == ("k1", "old_key-2")
    old = keyring.get("old_key-2")
    assert old is not None and old.key == KEY2
    assert keyring.get("k3") is None
    assert "k1" in keyring and "k3" not in keyring
    assert len(keyring) == 2


def test_padding_is_optional() -> None:
    padded = base64.urlsafe_b64encode(KEY1).decode()
    assert padded.endswith("=")
    assert parse(f"k:{padded}").primary.key == parse(f"k:{TEXT1}").primary.key == KEY1


SHORT = base64.urlsafe_b64encode(bytes(16)).decode().rstrip("=")
LONG = base64.urlsafe_b64encode(bytes(range(33))).decode().rstrip("=")
STANDARD_ALPHABET = base64.b64encode(bytes([0xFB] * 32)).decode()  # contains '+' and '/'
BAD_LENGTH_B64 = TEXT1 + "AA"  # 45 characters: a length of 4n+1 is never valid base64


@pytest.mark.parametrize(
    ("text", "expected", "material"),
    [
        ("", "is empty", None),
        ("  ,", "entry #1 is empty", None),
        (f"k1:{TEXT1},", "entry #2 is empty", TEXT1),
        (f"k1:{TEXT1},,k2:{TEXT2}", "entry #2 is empty", TEXT2),
        (TEXT1, "entry #1 is malformed", TEXT1),
        (f"k1:{TEXT1},k2", "entry #2 is malformed", TEXT1),
        ("k1:", "entry #1 is malformed", None),
        (f":{TEXT1}", "entry #1 has an invalid key id", TEXT1),
        (f"{TEXT1}:{TEXT2}", "entry #1 has an invalid key id", TEXT1),
        (f"bad.id:{TEXT1}", "entry #1 has an invalid key id", TEXT1),
        (f"{'x' * 33}:{TEXT1}", "entry #1 has an invalid key id", TEXT1),
        (f"k1:{TEXT1},k1:{TEXT2}", "entry #2: duplicate key id 'k1'", TEXT2),
        (f"k1:{SHORT}", "key 'k1' decodes to 16 bytes", SHORT),
        (f"k1:{LONG}", "key 'k1' decodes to 33 bytes", LONG),
        (f"k1:{TEXT1},k2:{STANDARD_ALPHABET}", "entry #2: key 'k2' is not URL-safe", None),
        (f"k1:{TEXT1}*", "key 'k1' is not URL-safe base64", TEXT1),
        (f"k1:{BAD_LENGTH_B64}", "key 'k1' is not valid base64", TEXT1),
    ],
)
def test_parse_errors_name_the_problem_not_the_key(
    text: str, expected: str, material: str | None
) -> None:
    with pytest.raises(KeyringError) as info:
        parse(text)
    message = str(info.value)
    assert expected in message
    # No key material of any entry, and no exception chained from the decoder
    # (whose message could quote the input).
    for secret in filter(None, (material, TEXT1, TEXT2, SHORT, LONG, STANDARD_ALPHABET)):
        assert secret not in message
    assert info.value.__cause__ is None
    assert info.value.__context__ is None or info.value.__suppress_context__


def test_vault_key_and_keyring_reprs_hide_the_key() -> None:
    key = VaultKey("k1", KEY1)
    keyring = Keyring([key])
    for text in (repr(key), str(key), repr(keyring), str(keyring), repr([key])):
        assert TEXT1 not in text
        assert repr(KEY1) not in text
        assert KEY1.hex() not in text
    assert repr(key) == "VaultKey(id='k1', key=***)"
    with pytest.raises(TypeError, match="cannot be pickled"):
        pickle.dumps(keyring)


def test_vault_key_validation_and_immutability() -> None:
    with pytest.raises(KeyringError, match="exactly 32 bytes"):
        VaultKey("k1", bytes(31))
    with pytest.raises(KeyringError, match="invalid key id"):
        VaultKey("no spaces", KEY1)
    key = VaultKey("k1", KEY1)
    with pytest.raises(AttributeError):
        key._key = KEY2
    assert key.key == KEY1


def test_keyring_rejects_empty_and_duplicates() -> None:
    with pytest.raises(KeyringError, match="empty"):
        Keyring([])
    with pytest.raises(KeyringError, match="duplicate key id 'k1'"):
        Keyring([VaultKey("k1", KEY1), VaultKey("k1", KEY2)])


def test_generate_key_entry() -> None:
    first, second = generate_key_entry("k9"), generate_key_entry("k9")
    assert first != second
    for entry in (first, second):
        assert entry.startswith("k9:")
        assert "=" not in entry
        assert len(parse(entry).primary.key) == 32
    with pytest.raises(KeyringError):
        generate_key_entry("bad id")


def test_load_from_settings(tmp_path: Path) -> None:
    keyring = load_keyring(settings(tmp_path, vault_keys=SecretStr(f"k1:{TEXT1},k2:{TEXT2}")))
    assert keyring.key_ids == ("k1", "k2")
    # Configured keys never touch the data directory.
    assert not (tmp_path / "data").exists()


@pytest.fixture
def permissive_umask() -> Iterator[None]:
    # With umask 0 a file created without an explicit mode would be 0666: the
    # test then proves the 0600 comes from the code, not from the environment.
    previous = os.umask(0)
    try:
        yield
    finally:
        os.umask(previous)


@pytest.mark.usefixtures("permissive_umask")
def test_development_key_file_created_private_and_reused(tmp_path: Path) -> None:
    config = settings(tmp_path)
    path = tmp_path / "data" / "vault.key"
    with capture_logs() as logs:
        first = load_keyring(config)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    lines = path.read_text().splitlines()
    assert len(lines) == 1
    assert lines[0].startswith("dev1:")
    assert first.key_ids == ("dev1",)

    warnings = [entry for entry in logs if entry["log_level"] == "warning"]
    assert len(warnings) == 1
    assert "development key file" in warnings[0]["event"]
    assert "not for production" in warnings[0]["event"]
    key_text = lines[0].split(":", 1)[1]
    assert all(key_text not in repr(entry) for entry in logs)

    with capture_logs() as logs_again:
        second = load_keyring(config)
    assert second.primary.key == first.primary.key
    assert path.read_text().splitlines() == lines
    assert [entry["log_level"] for entry in logs_again] == ["warning"]
    # No temporary files left behind.
    assert sorted(p.name for p in path.parent.iterdir()) == ["vault.key"]


def test_development_key_file_warns_when_readable_by_others(tmp_path: Path) -> None:
    config = settings(tmp_path)
    load_keyring(config)
    path = tmp_path / "data" / "vault.key"
    path.chmod(0o644)
    with capture_logs() as logs:
        load_keyring(config)
    assert any("readable by other users" in entry["event"] for entry in logs)


def test_blank_vault_keys_in_development_uses_the_key_file(tmp_path: Path) -> None:
    keyring = load_keyring(settings(tmp_path, vault_keys=SecretStr("  ")))
    assert keyring.key_ids == ("dev1",)
    assert (tmp_path / "data" / "vault.key").exists()


@pytest.mark.parametrize("vault_keys", [None, SecretStr(""), SecretStr("  ")])
def test_production_requires_vault_keys(tmp_path: Path, vault_keys: SecretStr | None) -> None:
    with pytest.raises(KeyringError, match="VAULT_KEYS is required in production"):
        load_keyring(settings(tmp_path, app_env="production", vault_keys=vault_keys))
    assert not (tmp_path / "data").exists()


def test_production_with_keys(tmp_path: Path) -> None:
    config = settings(tmp_path, app_env="production", vault_keys=SecretStr(f"p1:{TEXT1}"))
    assert load_keyring(config).primary.id == "p1"


def test_corrupt_development_key_file_names_the_file(tmp_path: Path) -> None:
    path = tmp_path / "data" / "vault.key"
    path.parent.mkdir()
    path.write_text("dev1:tooshort\n")
    with pytest.raises(KeyringError, match=r"vault\.key entry #1") as info:
        load_keyring(settings(tmp_path))
    assert "tooshort" not in str(info.value)
