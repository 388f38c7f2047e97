"""Sealing and opening: format, authentication, context binding, error messages."""

from __future__ import annotations

import base64
import copy
import dataclasses
import pickle
import re
import secrets

import pytest

from app.vault import (
    DecryptionError,
    Keyring,
    SealedSecret,
    SecretContext,
    UnknownKeyError,
    Vault,
    VaultError,
    VaultKey,
)

CONTEXT = SecretContext("connections", "bot_token", "row-1", "ws-1")
PLAINTEXT = "123456:AAE-secret-token-éß"
B64URL = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"


def decode_payload(sealed: SealedSecret) -> tuple[str, bytes]:
    header, payload = sealed.ciphertext.rsplit(".", 1)
    return header, base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4))


def encode_payload(header: str, payload: bytes) -> SealedSecret:
    return SealedSecret(f"{header}.{base64.urlsafe_b64encode(payload).decode().rstrip('=')}")


def test_round_trip_and_format(vault_a: Vault) -> None:
    sealed = vault_a.seal(PLAINTEXT, CONTEXT)
    assert re.fullmatch(r"v1\.kA\.[A-Za-z0-9_-]+", sealed.ciphertext)
    assert sealed.key_id == "kA"
    assert vault_a.open(sealed, CONTEXT) == PLAINTEXT
    # nonce (12) + UTF-8 plaintext + tag (16)
    assert len(decode_payload(sealed)[1]) == 12 + len(PLAINTEXT.encode()) + 16
    # The stored text is all that is needed to open it again.
    assert vault_a.open(SealedSecret(sealed.ciphertext), CONTEXT) == PLAINTEXT


def test_empty_plaintext(vault_a: Vault) -> None:
    assert vault_a.open(vault_a.seal("", CONTEXT), CONTEXT) == ""


def test_same_plaintext_seals_differently(vault_a: Vault) -> None:
    first, second = vault_a.seal(PLAINTEXT, CONTEXT), vault_a.seal(PLAINTEXT, CONTEXT)
    assert first != second
    assert decode_payload(first)[1][:12] != decode_payload(second)[1][:12]
    assert vault_a.open(first, CONTEXT) == vault_a.open(second, CONTEXT) == PLAINTEXT


def test_every_payload_byte_is_authenticated(vault_a: Vault) -> None:
    sealed = vault_a.seal(PLAINTEXT, CONTEXT)
    header, payload = decode_payload(sealed)
    for position in range(len(payload)):
        for flip in (0x01, 0x80):
            tampered = bytearray(payload)
            tampered[position] ^= flip
            with pytest.raises(DecryptionError):
                vault_a.open(encode_payload(header, bytes(tampered)), CONTEXT)


def test_truncated_or_extended_payload_fails(vault_a: Vault) -> None:
    sealed = vault_a.seal(PLAINTEXT, CONTEXT)
    header, payload = decode_payload(sealed)
    with pytest.raises(DecryptionError):
        vault_a.open(encode_payload(header, payload[:-1]), CONTEXT)
    with pytest.raises(DecryptionError):
        vault_a.open(encode_payload(header, payload + b"\x00"), CONTEXT)
    with pytest.raises(VaultError, match="too short"):
        encode_payload(header, payload[:27])


def test_every_character_of_the_text_is_covered(vault_a: Vault, vault_ba: Vault) -> None:
    """Changing any one character (header or payload) never yields a plaintext."""
    sealed = vault_a.seal(PLAINTEXT, CONTEXT)
    text = sealed.ciphertext
    for position, char in enumerate(text):
        replacement = "A" if char != "A" else "B"
        tampered = text[:position] + replacement + text[position + 1 :]
        with pytest.raises(VaultError):
            vault_ba.open(SealedSecret(tampered), CONTEXT)


def test_header_key_id_is_authenticated(key_a: VaultKey, key_b: VaultKey) -> None:
    # Both keys present: relabelling a kA ciphertext as kB must not open it.
    vault = Vault(Keyring([key_a, key_b]))
    sealed = vault.seal(PLAINTEXT, CONTEXT)
    relabelled = SealedSecret(sealed.ciphertext.replace("v1.kA.", "v1.kB.", 1))
    with pytest.raises(DecryptionError):
        vault.open(relabelled, CONTEXT)


def test_wrong_key_under_the_same_id(vault_a: Vault) -> None:
    impostor = Vault(Keyring([VaultKey("kA", secrets.token_bytes(32))]))
    sealed = vault_a.seal(PLAINTEXT, CONTEXT)
    with pytest.raises(DecryptionError):
        impostor.open(sealed, CONTEXT)


@pytest.mark.parametrize(
    "moved",
    [
        dataclasses.replace(CONTEXT, row_id="row-2"),
        dataclasses.replace(CONTEXT, workspace_id="ws-2"),
        dataclasses.replace(CONTEXT, workspace_id=""),
        dataclasses.replace(CONTEXT, column="webhook_secret"),
        dataclasses.replace(CONTEXT, table="other_table"),
        # Shifting characters between fields must not collide either.
        SecretContext("connections", "bot_token", "row-1w", "s-1"),
        SecretContext("connectionsb", "ot_token", "row-1", "ws-1"),
    ],
)
def test_ciphertext_moved_elsewhere_fails(vault_a: Vault, moved: SecretContext) -> None:
    sealed = vault_a.seal(PLAINTEXT, CONTEXT)
    with pytest.raises(DecryptionError) as info:
        vault_a.open(sealed, moved)
    message = str(info.value)
    assert f"decryption failed for {moved.table}.{moved.column}" in message
    assert PLAINTEXT not in message
    assert sealed.ciphertext.rsplit(".", 1)[1] not in message


def test_unknown_key_id_is_named(vault_a: Vault, vault_b: Vault) -> None:
    sealed = vault_a.seal(PLAINTEXT, CONTEXT)
    with pytest.raises(UnknownKeyError) as info:
        vault_b.open(sealed, CONTEXT)
    assert info.value.key_id == "kA"
    assert str(info.value) == ("ciphertext was made with key id 'kA', which is not in VAULT_KEYS")
    assert isinstance(info.value, VaultError)


def test_unsupported_version(vault_a: Vault) -> None:
    sealed = vault_a.seal(PLAINTEXT, CONTEXT)
    with pytest.raises(VaultError, match="unsupported ciphertext version 'v2'"):
        SealedSecret("v2" + sealed.ciphertext[2:])


@pytest.mark.parametrize(
    "text",
    [
        "",
        "123456:AAE-plain-bot-token",
        "v1.kA.",
        "v1..AAAA",
        "v1.kA.AAAA.AAAA",
        "v1.kA.AAAA=",
        "v1.k A.AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA",
        "v1.kA." + "A" * 37 + "+",
        "v1.kA." + "A" * 41,  # 4n+1 characters
        "v1.kA." + "A" * 37 + "B",  # non-canonical: unused low bits set
        "V1.kA." + "A" * 40,
    ],
)
def test_malformed_ciphertexts_are_refused(text: str) -> None:
    with pytest.raises(VaultError, match=r"malformed|unsupported"):
        SealedSecret(text)


def test_sealed_secret_value_semantics(vault_a: Vault) -> None:
    sealed = vault_a.seal(PLAINTEXT, CONTEXT)
    same = SealedSecret(sealed.ciphertext)
    assert sealed == same and hash(sealed) == hash(same)
    assert sealed != vault_a.seal(PLAINTEXT, CONTEXT)
    assert sealed != sealed.ciphertext
    with pytest.raises(AttributeError):
        sealed._ciphertext = "x"
    with pytest.raises(TypeError):
        SealedSecret(b"v1.kA.AAAA")  # type: ignore[arg-type]
    assert copy.copy(sealed) == sealed
    assert pickle.loads(pickle.dumps(sealed)) == sealed


def test_sealed_secret_shows_nothing(vault_a: Vault) -> None:
    sealed = vault_a.seal(PLAINTEXT, CONTEXT)
    payload = sealed.ciphertext.rsplit(".", 1)[1]
    for shown in (repr(sealed), str(sealed), f"{sealed}", f"{sealed!r}", repr([sealed])):
        assert "SealedSecret(***)" in shown
        assert PLAINTEXT not in shown
        assert payload not in shown
        assert payload[:8] not in shown


def test_needs_rotation_and_reseal(vault_a: Vault, vault_ba: Vault, vault_b: Vault) -> None:
    old = vault_a.seal(PLAINTEXT, CONTEXT)
    assert not vault_a.needs_rotation(old)
    assert vault_ba.needs_rotation(old)
    new = vault_ba.reseal(old, CONTEXT)
    assert new.key_id == "kB"
    assert not vault_ba.needs_rotation(new)
    assert vault_b.open(new, CONTEXT) == PLAINTEXT


def test_argument_types_are_checked(vault_a: Vault) -> None:
    sealed = vault_a.seal(PLAINTEXT, CONTEXT)
    with pytest.raises(TypeError):
        vault_a.open(sealed.ciphertext, CONTEXT)  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        vault_a.seal(b"bytes", CONTEXT)  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        vault_a.seal(PLAINTEXT, ("connections", "bot_token", "1", "2"))  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="lone surrogate"):
        vault_a.seal("\ud800", CONTEXT)


def test_context_validation() -> None:
    with pytest.raises(TypeError, match="row_id"):
        SecretContext("t", "c", 1, "w")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="table"):
        SecretContext("", "c", "1", "w")
    assert SecretContext("t", "c", "1", "").workspace_id == ""
    # Canonical bytes are unambiguous where naive joining is not.
    assert (
        SecretContext("a", "bc", "1", "w").canonical_bytes()
        != SecretContext("ab", "c", "1", "w").canonical_bytes()
    )


def test_vault_repr_hides_keys(key_a: VaultKey, vault_a: Vault) -> None:
    assert key_a.key.hex() not in repr(vault_a)
    assert base64.urlsafe_b64encode(key_a.key).decode()[:20] not in repr(vault_a)
    assert "kA" in repr(vault_a)


def test_every_b64_character_flip_in_payload(vault_a: Vault) -> None:
    """Character-level substitutions with every alphabet letter at a few positions."""
    sealed = vault_a.seal(PLAINTEXT, CONTEXT)
    header, payload = sealed.ciphertext.rsplit(".", 1)
    for position in (0, len(payload) // 2, len(payload) - 2, len(payload) - 1):
        for char in B64URL:
            if char == payload[position]:
                continue
            tampered = payload[:position] + char + payload[position + 1 :]
            with pytest.raises(VaultError):
                vault_a.open(SealedSecret(f"{header}.{tampered}"), CONTEXT)
