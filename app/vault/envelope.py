"""Sealing secrets with AES-256-GCM, and keyed lookup hashes.

Ciphertext format (text, self-describing, versioned)::

    v1.<key_id>.<base64url-no-padding(nonce(12) || ciphertext || tag(16))>

The GCM associated data binds the format version, the key id and the
SecretContext (table, column, row id, workspace id), so a ciphertext copied to
another row, column, table or workspace, or relabelled with another key id,
fails to open.

Lookup hashes (`<key_id>:<64 hex>`) let webhook keys and secrets be found and
compared without decrypting: HMAC-SHA256 under a per-key subkey derived with
HKDF, so the hash key is independent of the encryption key.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import os
import re
import struct
from collections.abc import Iterable
from dataclasses import dataclass

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from app.vault.keyring import KEY_ID_PATTERN, Keyring

FORMAT_VERSION = "v1"
NONCE_BYTES = 12
TAG_BYTES = 16
LOOKUP_HASH_INFO = b"integrations/lookup-hash/v1"
# Domain separation for the associated data, in case the same keys ever
# authenticate another kind of record.
_AAD_DOMAIN = b"integrations/vault/secret"

_CIPHERTEXT_RE = re.compile(rf"(v[0-9]+)\.({KEY_ID_PATTERN})\.([A-Za-z0-9_-]+)")
_LOOKUP_HASH_RE = re.compile(rf"({KEY_ID_PATTERN}):([0-9a-f]{{64}})")


class VaultError(Exception):
    """A secret could not be sealed or opened. Never carries plaintext or keys."""


class DecryptionError(VaultError):
    """Authentication failed: tampered ciphertext, wrong context or wrong key."""


class UnknownKeyError(VaultError):
    """The ciphertext names a key id that is not in the keyring."""

    def __init__(self, key_id: str) -> None:
        super().__init__(f"ciphertext was made with key id {key_id!r}, which is not in VAULT_KEYS")
        self.key_id = key_id


@dataclass(frozen=True)
class SecretContext:
    """Where a sealed secret lives; bound into the ciphertext as associated data.

    `row_id` and `workspace_id` are strings: pass `str(row.id)` of the value as
    the ORM returns it (for a UUID column, the hyphenated lowercase form), the
    same spelling rotation uses. `workspace_id` may be empty for a secret that
    belongs to no workspace.
    """

    table: str
    column: str
    row_id: str
    workspace_id: str

    def __post_init__(self) -> None:
        for name in ("table", "column", "row_id", "workspace_id"):
            if not isinstance(getattr(self, name), str):
                raise TypeError(f"SecretContext.{name} must be a str")
        for name in ("table", "column", "row_id"):
            if not getattr(self, name):
                raise ValueError(f"SecretContext.{name} must not be empty")

    def canonical_bytes(self) -> bytes:
        """An unambiguous encoding: each field length-prefixed, in fixed order."""
        return _length_prefixed((self.table, self.column, self.row_id, self.workspace_id))


def _length_prefixed(parts: Iterable[str]) -> bytes:
    # Length prefixes (not separators) so that no two different field tuples
    # can encode to the same bytes, whatever characters the fields contain.
    out = bytearray()
    for part in parts:
        data = part.encode("utf-8")
        out += struct.pack(">I", len(data))
        out += data
    return bytes(out)


def _associated_data(version: str, key_id: str, context: SecretContext) -> bytes:
    return _AAD_DOMAIN + _length_prefixed((version, key_id)) + context.canonical_bytes()


def _b64encode(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _b64decode(text: str) -> bytes:
    try:
        data = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
    except (binascii.Error, ValueError):
        raise VaultError("malformed ciphertext: the payload is not valid base64url") from None
    # Refuse non-canonical spellings (unused trailing bits set): one payload,
    # one text, so equality and compare-and-set on the text are meaningful.
    if _b64encode(data) != text:
        raise VaultError("malformed ciphertext: the payload is not canonical base64url")
    return data


class SealedSecret:
    """An immutable sealed secret: the ciphertext text as stored in the database.

    The constructor checks the format (version, key id, payload), so a plain
    string cannot pass for a sealed one. repr/str reveal nothing, not even the
    ciphertext; read `.ciphertext` explicitly to store or compare it.
    """

    __slots__ = ("_ciphertext", "_key_id", "_payload", "_version")

    _ciphertext: str
    _version: str
    _key_id: str
    _payload: bytes

    def __init__(self, ciphertext: str) -> None:
        if not isinstance(ciphertext, str):
            raise TypeError("SealedSecret wraps ciphertext text (str)")
        match = _CIPHERTEXT_RE.fullmatch(ciphertext)
        if match is None:
            raise VaultError("malformed ciphertext: expected v1.<key_id>.<base64url payload>")
        version, key_id, payload_text = match.groups()
        if version != FORMAT_VERSION:
            raise VaultError(
                f"unsupported ciphertext version {version!r}; this build reads {FORMAT_VERSION!r}"
            )
        payload = _b64decode(payload_text)
        if len(payload) < NONCE_BYTES + TAG_BYTES:
            raise VaultError("malformed ciphertext: the payload is too short")
        object.__setattr__(self, "_ciphertext", ciphertext)
        object.__setattr__(self, "_version", version)
        object.__setattr__(self, "_key_id", key_id)
        object.__setattr__(self, "_payload", payload)

    @property
    def ciphertext(self) -> str:
        return self._ciphertext

    @property
    def key_id(self) -> str:
        return self._key_id

    @property
    def version(self) -> str:
        return self._version

    def __setattr__(self, name: str, value: object) -> None:
        raise AttributeError("SealedSecret is immutable")

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, SealedSecret):
            return NotImplemented
        return self._ciphertext == other._ciphertext

    def __hash__(self) -> int:
        return hash(self._ciphertext)

    def __reduce__(self) -> tuple[type[SealedSecret], tuple[str]]:
        # Immutability blocks the default slot-by-slot restore; rebuilding
        # from the text keeps copy() and pickle working (and re-validates).
        return (SealedSecret, (self._ciphertext,))

    def __repr__(self) -> str:
        return "SealedSecret(***)"

    __str__ = __repr__


def split_lookup_hash(stored_hash: str) -> tuple[str, str] | None:
    """`(key_id, hex digest)` of a lookup hash, or None when it is malformed."""
    if not isinstance(stored_hash, str):
        return None
    match = _LOOKUP_HASH_RE.fullmatch(stored_hash)
    if match is None:
        return None
    return match.group(1), match.group(2)


def derive_lookup_key(key: bytes) -> bytes:
    """The HMAC key for lookup hashes, derived from a vault key with HKDF-SHA256.

    Changing LOOKUP_HASH_INFO would invalidate every stored hash.
    """
    return HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=LOOKUP_HASH_INFO).derive(key)


class Vault:
    """Seals and opens secrets with a keyring, and computes lookup hashes.

    Thread-safe and cheap to share: per-key cipher objects and HMAC states are
    built once here, since `matches()` runs on every webhook request.
    """

    __slots__ = ("_ciphers", "_hmacs", "_keyring")

    def __init__(self, keyring: Keyring) -> None:
        if not isinstance(keyring, Keyring):
            raise TypeError("Vault needs a Keyring")
        self._keyring = keyring
        self._ciphers = {key.id: AESGCM(key.key) for key in keyring}
        # Keyed HMAC states, copied per use: copying skips re-deriving the
        # inner/outer pads from the key on every call.
        self._hmacs = {
            key.id: hmac.new(derive_lookup_key(key.key), digestmod=hashlib.sha256)
            for key in keyring
        }

    @property
    def keyring(self) -> Keyring:
        return self._keyring

    def __repr__(self) -> str:
        return f"Vault({self._keyring!r})"

    # -- encryption ---------------------------------------------------------

    def seal(self, plaintext: str, context: SecretContext) -> SealedSecret:
        """Encrypt `plaintext` for `context` under the primary key (fresh nonce)."""
        if not isinstance(plaintext, str):
            raise TypeError("Vault.seal takes the plaintext as str")
        _check_context(context)
        key_id = self._keyring.primary.id
        try:
            data = plaintext.encode("utf-8")
        except UnicodeEncodeError:
            raise ValueError("the plaintext is not valid Unicode (lone surrogate)") from None
        # A random 96-bit nonce per seal: with GCM a repeated (key, nonce) pair
        # is catastrophic, and 2**32 seals per key keep the collision odds
        # negligible; rotate keys long before that.
        nonce = os.urandom(NONCE_BYTES)
        sealed = self._ciphers[key_id].encrypt(
            nonce, data, _associated_data(FORMAT_VERSION, key_id, context)
        )
        return SealedSecret(f"{FORMAT_VERSION}.{key_id}.{_b64encode(nonce + sealed)}")

    def open(self, sealed: SealedSecret, context: SecretContext) -> str:
        """Decrypt `sealed`, which must have been sealed for this very `context`.

        Raises UnknownKeyError when its key id is not in the keyring, and
        DecryptionError when it was altered, belongs to another context, or the
        key under its id is not the key that sealed it.
        """
        if not isinstance(sealed, SealedSecret):
            raise TypeError("Vault.open takes a SealedSecret")
        _check_context(context)
        cipher = self._ciphers.get(sealed.key_id)
        if cipher is None:
            raise UnknownKeyError(sealed.key_id)
        payload = sealed._payload
        nonce, body = payload[:NONCE_BYTES], payload[NONCE_BYTES:]
        try:
            data = cipher.decrypt(
                nonce, body, _associated_data(sealed.version, sealed.key_id, context)
            )
            return data.decode("utf-8")
        except (InvalidTag, UnicodeDecodeError):
            raise DecryptionError(
                f"decryption failed for {context.table}.{context.column} "
                f"(row {context.row_id}): the ciphertext was altered, belongs to "
                f"another row, column or workspace, or key {sealed.key_id!r} is "
                "not the key that sealed it"
            ) from None

    def needs_rotation(self, sealed: SealedSecret) -> bool:
        """True when `sealed` is not under the primary key."""
        return sealed.key_id != self._keyring.primary.id

    def reseal(self, sealed: SealedSecret, context: SecretContext) -> SealedSecret:
        """`sealed` re-encrypted under the primary key (same context)."""
        return self.seal(self.open(sealed, context), context)

    # -- lookup hashes --------------------------------------------------------

    def _hash_with(self, key_id: str, value: str) -> str:
        mac = self._hmacs[key_id].copy()
        mac.update(value.encode("utf-8"))
        return f"{key_id}:{mac.hexdigest()}"

    def lookup_hash(self, value: str) -> str:
        """`<primary key id>:<hex HMAC>` of `value`, the form to store."""
        _check_value(value)
        return self._hash_with(self._keyring.primary.id, value)

    def lookup_candidates(self, value: str) -> list[str]:
        """The hash of `value` under every key, primary first, for `hash IN (...)`.

        Rows whose hash is still under an older key keep being found during a
        rotation.
        """
        _check_value(value)
        return [self._hash_with(key_id, value) for key_id in self._keyring.key_ids]

    def matches(self, value: str, stored_hash: str) -> bool:
        """Whether `stored_hash` is the lookup hash of `value` (constant-time compare).

        Uses the key named in `stored_hash`; False when that key id is unknown or
        the hash is malformed.
        """
        _check_value(value)
        parts = split_lookup_hash(stored_hash)
        if parts is None or parts[0] not in self._hmacs:
            return False
        expected = self._hash_with(parts[0], value)
        return hmac.compare_digest(expected.encode("ascii"), stored_hash.encode("ascii"))

    def hash_needs_rotation(self, stored_hash: str) -> bool:
        """True when `stored_hash` is not under the primary key (or is malformed)."""
        parts = split_lookup_hash(stored_hash)
        return parts is None or parts[0] != self._keyring.primary.id


def _check_context(context: object) -> None:
    if not isinstance(context, SecretContext):
        raise TypeError("a SecretContext is required")


def _check_value(value: object) -> None:
    if not isinstance(value, str):
        raise TypeError("lookup hashes take a str")
