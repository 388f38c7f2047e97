"""The text `integrations vault status` and `vault rotate` print."""

from __future__ import annotations

from collections.abc import Mapping

from app.vault.rotation import RotationReport
from app.vault.status import VaultStatus


def status_lines(status: VaultStatus) -> list[str]:
    """A human-readable summary, one line per string."""
    out = [
        f"primary key: {status.primary_key_id} (keyring: {', '.join(status.keyring_key_ids)})",
    ]
    if not status.fields:
        out.append("no sealed columns registered")
    for f in status.fields:
        line = f"{f.label}: {f.rows} rows; ciphertexts {_format_counts(f.ciphertexts)}"
        if f.hash_column is not None:
            line += f"; hashes ({f.hash_column}) {_format_counts(f.hashes)}"
        if f.malformed_ciphertexts or f.malformed_hashes:
            line += (
                f"; MALFORMED: {f.malformed_ciphertexts} ciphertexts, {f.malformed_hashes} hashes"
            )
        out.append(line)
    out.append(f"pending rotation: {status.pending_rotation} values not under the primary key")
    if status.missing_key_ids:
        out.append("MISSING keys (in use, not in VAULT_KEYS): " + ", ".join(status.missing_key_ids))
    if status.unused_key_ids:
        out.append(
            "unused keys (can be removed from VAULT_KEYS): " + ", ".join(status.unused_key_ids)
        )
    out.append("status: OK" if status.ok else "status: PROBLEM")
    return out


def rotation_lines(report: RotationReport) -> list[str]:
    """A human-readable summary, one line per string."""
    out = [f"rotating to primary key: {report.primary_key_id}"]
    for f in report.fields:
        out.append(
            f"{f.label}: examined {f.examined}, rotated {f.rotated}, "
            f"skipped (changed concurrently) {f.skipped_concurrent}, failed {f.failed}"
        )
        for reason, count in sorted(f.failures.items()):
            out.append(f"  failed: {count} x {reason}")
        if f.failed_row_ids:
            out.append("  failed row ids (first): " + ", ".join(f.failed_row_ids))
    out.append(
        f"total: examined {report.examined}, rotated {report.rotated}, "
        f"skipped {report.skipped_concurrent}, failed {report.failed}"
    )
    if report.skipped_concurrent:
        out.append("rows changed during the run were skipped: run rotate again")
    out.append("status: OK" if report.ok else "status: FAILURES (see above)")
    return out


def _format_counts(counts: Mapping[str, int]) -> str:
    if not counts:
        return "none"
    return " ".join(f"{key_id}={counts[key_id]}" for key_id in sorted(counts))
