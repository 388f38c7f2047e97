"""API token strings: generation and hashing."""

from __future__ import annotations

import hashlib
import secrets

TOKEN_PREFIX = "wsk_"  # noqa: S105 - a public marker for secret scanners, not a secret


def generate_api_token() -> str:
    """A new token: the `wsk_` prefix (so secret scanners can spot it) and 256 random bits."""
    return TOKEN_PREFIX + secrets.token_urlsafe(32)


def hash_api_token(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def looks_like_api_token(token: str) -> bool:
    return token.startswith(TOKEN_PREFIX) and 20 <= len(token) <= 100
