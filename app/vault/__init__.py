"""The credential vault: sealed secrets (AES-256-GCM), lookup hashes, key rotation.

Typical use::

    vault = Vault(load_keyring(settings))
    context = SecretContext("connections", "bot_token", str(row.id), str(row.workspace_id))
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
from app.vault.keyring import (
    Keyring,
    KeyringError,
    VaultKey,
    generate_key_entry,
    load_keyring,
    parse_keyring,
)
from app.vault.rotation import (
    FieldRotation,
    FieldStatus,
    RotationProgress,
    RotationReport,
    SealedField,
    VaultStatus,
    register_sealed_field,
    rotate,
    sealed_fields,
    vault_status,
)

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
    "parse_keyring",
    "register_sealed_field",
    "rotate",
    "sealed_fields",
    "vault_status",
]
