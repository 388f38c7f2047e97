"""The credential vault: sealed secrets (AES-256-GCM), lookup hashes, key rotation.

Typical use::

    vault = Vault(load_keyring(settings))
    context = SealedField(table, "bot_token").context(row.id, row.workspace_id)
    row.bot_token = vault.seal(token, context)       # a SealedSecretType column
    token = vault.open(row.bot_token, context)       # explicit decryption
    row.webhook_secret_hash = vault.lookup_hash(secret)
"""

from app.vault.column import SealedSecretType
from app.vault.envelope import (
    FORMAT_VERSION,
    DecryptionError,
    SealedSecret,
    SecretContext,
    UnknownKeyError,
    Vault,
    VaultError,
)
from app.vault.fields import SealedField, lookup_hash_info, sealed_fields
from app.vault.keyring import (
    Keyring,
    KeyringError,
    VaultKey,
    generate_key_entry,
    load_keyring,
    parse_keyring,
)
from app.vault.report import rotation_lines, status_lines
from app.vault.rotation import FieldRotation, RotationProgress, RotationReport, rotate
from app.vault.status import FieldStatus, VaultStatus, vault_status

__all__ = [
    "FORMAT_VERSION",
    "DecryptionError",
    "FieldRotation",
    "FieldStatus",
    "Keyring",
    "KeyringError",
    "RotationProgress",
    "RotationReport",
    "SealedField",
    "SealedSecret",
    "SealedSecretType",
    "SecretContext",
    "UnknownKeyError",
    "Vault",
    "VaultError",
    "VaultKey",
    "VaultStatus",
    "generate_key_entry",
    "load_keyring",
    "lookup_hash_info",
    "parse_keyring",
    "rotate",
    "rotation_lines",
    "sealed_fields",
    "status_lines",
    "vault_status",
]
