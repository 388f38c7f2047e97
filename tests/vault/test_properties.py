"""Property-based: seal/open round-trips for any text and any context."""

from __future__ import annotations

import dataclasses

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from app.vault import DecryptionError, SecretContext, Vault

non_empty = st.text(min_size=1, max_size=40)
contexts = st.builds(
    SecretContext,
    table=non_empty,
    column=non_empty,
    row_id=non_empty,
    workspace_id=st.text(max_size=40),
)


@given(plaintext=st.text(), context=contexts)
@example(plaintext="", context=SecretContext("t", "c", "1", "w"))
@example(plaintext="токен 🔑 秘密 \x00 ☃", context=SecretContext("t", "c", "1", "w"))
@settings(max_examples=300, deadline=None)
def test_seal_open_round_trip(vault_a: Vault, plaintext: str, context: SecretContext) -> None:
    sealed = vault_a.seal(plaintext, context)
    assert vault_a.open(sealed, context) == plaintext
    assert sealed.key_id == "kA"


@given(plaintext=st.text(), context=contexts, row_id=non_empty)
@settings(max_examples=100, deadline=None)
def test_other_row_never_opens(
    vault_a: Vault, plaintext: str, context: SecretContext, row_id: str
) -> None:
    if row_id == context.row_id:
        return
    sealed = vault_a.seal(plaintext, context)
    with pytest.raises(DecryptionError):
        vault_a.open(sealed, dataclasses.replace(context, row_id=row_id))
