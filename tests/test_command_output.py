"""A one-shot command prints what it is for and nothing else."""

from __future__ import annotations

from pathlib import Path

from tests.test_cli import cli_env, run_cli

DEV_KEY_WARNING = "VAULT_KEYS is not set: using a development key file"


def test_workspace_create_prints_the_workspace_and_its_token_only(tmp_path: Path) -> None:
    # The embedded default: no Redis, no VAULT_KEYS, both of which the service
    # warns about at start-up; neither concerns creating a workspace.
    env = cli_env(tmp_path)
    assert run_cli("migrate", env=env).returncode == 0
    result = run_cli("workspace", "create", "Acme", env=env)
    assert result.returncode == 0, result.stderr
    workspace_line, token_line = result.stdout.splitlines()
    assert workspace_line.startswith("workspace_id: ")
    assert token_line.startswith("admin token:  wsk_")
    assert result.stderr == "The token is shown once; store it now.\n"


def test_vault_status_prints_its_report_and_the_development_key_warning_only(
    tmp_path: Path,
) -> None:
    env = cli_env(tmp_path)
    assert run_cli("migrate", env=env).returncode == 0
    result = run_cli("vault", "status", env=env)
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines()[-1] == "status: OK"
    (warning,) = result.stderr.splitlines()
    assert DEV_KEY_WARNING in warning
