"""Keyed lookup hashes: format, derivation, candidates across keys, matching."""

from __future__ import annotations

import hashlib
import hmac

import pytest
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from app.vault import Keyring, Vault, VaultKey

VALUE = "webhook-secret-Zq9_é"


def reference_hash(key: VaultKey, value: str) -> str:
    """The documented construction, computed independently of the vault."""
    subkey = HKDF(
        algorithm=hashes.SHA256(), length=32, salt=None, info=b"integrations/lookup-hash/v1"
    ).derive(key.key)
    return f"{key.id}:{hmac.new(subkey, value.encode(), hashlib.sha256).hexdigest()}"


def test_lookup_hash_format_and_derivation(key_a: VaultKey, vault_a: Vault) -> None:
    stored = vault_a.lookup_hash(VALUE)
    assert stored == reference_hash(key_a, VALUE)
    key_id, digest = stored.split(":")
    assert key_id == "kA"
    assert len(digest) == 64 and int(digest, 16) >= 0
    assert len(stored) <= 100  # fits the String(100) hash columns
    assert vault_a.lookup_hash(VALUE) == stored  # deterministic


def test_hash_key_is_independent_of_the_encryption_key(key_a: VaultKey, vault_a: Vault) -> None:
    raw = hmac.new(key_a.key, VALUE.encode(), hashlib.sha256).hexdigest()
    assert vault_a.lookup_hash(VALUE) != f"kA:{raw}"


def test_hash_differs_per_key_and_value(vault_a: Vault, vault_b: Vault) -> None:
    assert vault_a.lookup_hash(VALUE).split(":")[1] != vault_b.lookup_hash(VALUE).split(":")[1]
    assert vault_a.lookup_hash(VALUE) != vault_a.lookup_hash(VALUE + "x")


def test_primary_key_writes_the_hash(vault_ba: Vault, vault_b: Vault) -> None:
    assert vault_ba.lookup_hash(VALUE) == vault_b.lookup_hash(VALUE)


def test_candidates_cover_every_key(vault_ba: Vault, vault_a: Vault, vault_b: Vault) -> None:
    candidates = vault_ba.lookup_candidates(VALUE)
    assert candidates == [vault_b.lookup_hash(VALUE), vault_a.lookup_hash(VALUE)]
    assert len(set(candidates)) == 2


def test_a_value_matches_its_hash_under_any_key_of_the_keyring_and_nothing_else(
    vault_ba: Vault, vault_a: Vault, vault_b: Vault, key_a: VaultKey
) -> None:
    under_a, under_b = vault_a.lookup_hash(VALUE), vault_b.lookup_hash(VALUE)
    assert vault_ba.matches(VALUE, under_a)  # old key, still in the keyring
    assert vault_ba.matches(VALUE, under_b)
    assert not vault_ba.matches(VALUE + "x", under_a)
    assert not vault_ba.matches(VALUE, "kB:" + under_a.split(":")[1])  # relabelled
    assert not vault_b.matches(VALUE, under_a)  # kA unknown to this vault
    impostor = Vault(Keyring([VaultKey("kA", bytes(32))]))
    assert not impostor.matches(VALUE, under_a)  # same id, different key


@pytest.mark.parametrize(
    "stored",
    [
        "",
        "kA",
        "kA:",
        "kA:" + "0" * 63,
        "kA:" + "0" * 65,
        "kA:" + "g" * 64,
        "kA:" + "é" * 64,
        ":" + "0" * 64,
        "kA:kA:" + "0" * 64,
    ],
)
def test_malformed_stored_hash_never_matches(vault_a: Vault, stored: str) -> None:
    assert not vault_a.matches(VALUE, stored)


def test_uppercase_digest_is_not_accepted(vault_a: Vault) -> None:
    # Hashes are written lowercase; a different spelling is a different value
    # for `hash IN (...)` lookups, so matches() must not paper over it.
    key_id, digest = vault_a.lookup_hash(VALUE).split(":")
    assert vault_a.matches(VALUE, f"{key_id}:{digest}")
    assert not vault_a.matches(VALUE, f"{key_id}:{digest.upper()}")


def test_hash_needs_rotation(vault_ba: Vault, vault_a: Vault) -> None:
    assert vault_ba.hash_needs_rotation(vault_a.lookup_hash(VALUE))
    assert not vault_ba.hash_needs_rotation(vault_ba.lookup_hash(VALUE))
    assert vault_ba.hash_needs_rotation("garbage")
