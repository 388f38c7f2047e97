"""The leak check itself: it finds a planted secret, and a leak fails the run.

The scanner is tested on evidence made here; then whole pytest runs of their own
(a tiny test directory using the same plugin, in a subprocess) show that a secret
in a test's output turns the exit status non-zero, and that a clean run stays 0.
"""

from __future__ import annotations

import json
import os
import secrets
import subprocess
import sys
import tempfile
import textwrap
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import quote

import pytest
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from app.logging import redact_text
from tests.conftest import new_workspace
from tests.leaks.dump import dump_database
from tests.leaks.registry import SecretRegistry

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def scratch() -> Iterator[Path]:
    """A directory outside pytest's temporary tree, gone after the test: the secrets
    planted here must not reach the evidence of the run that tests the checker."""
    with tempfile.TemporaryDirectory(prefix="planted-") as directory:
        yield Path(directory)


def bot_token() -> str:
    return f"{secrets.randbelow(10**9) + 10**8}:AA{secrets.token_urlsafe(32)[:33]}"


def registry_with(scratch: Path, **secrets_by_kind: str) -> SecretRegistry:
    registry = SecretRegistry(evidence_root=scratch)
    for kind, value in secrets_by_kind.items():
        registry.record(kind, value)
    registry.watch_directory(scratch)
    return registry


def test_a_planted_secret_is_found_wherever_it_is_written(scratch: Path) -> None:
    token, secret = bot_token(), secrets.token_urlsafe(32)
    registry = registry_with(scratch, bot_token=token, webhook_secret=secret)
    (scratch / "server.log").write_text(
        f"calling https://api.telegram.org/bot{quote(token)}/getMe\n"
    )
    (scratch / "dump.txt").write_text(json.dumps({"secret": secret}))
    (scratch / "clean.txt").write_text("nothing to see\n")

    findings = registry.scan()

    assert {(f.kind, Path(f.where).name) for f in findings} == {
        ("bot_token", "server.log"),
        ("webhook_secret", "dump.txt"),
    }
    # The report names the secret only by its first characters.
    assert all(token not in f.describe() and secret not in f.describe() for f in findings)


def test_redacted_output_passes(scratch: Path) -> None:
    token = bot_token()
    api_token = "wsk_" + secrets.token_urlsafe(32)
    registry = registry_with(scratch, bot_token=token, api_token=api_token)
    (scratch / "app.log").write_text(redact_text(f"GET /bot{token}/getMe with {api_token}"))

    assert registry.scan() == []


def test_an_unredacted_api_token_is_found_even_if_no_fixture_minted_it(scratch: Path) -> None:
    registry = registry_with(scratch)
    (scratch / "cli.log").write_text(f"created wsk_{secrets.token_urlsafe(32)}\n")

    assert [f.kind for f in registry.scan()] == ["api_token"]


def test_evidence_text_and_watched_files_are_scanned(scratch: Path) -> None:
    key = secrets.token_urlsafe(24)
    registry = SecretRegistry(evidence_root=scratch)
    registry.record_webhook(f"https://example.com/hook?key={key}", None)
    outside = scratch / "elsewhere.log"
    outside.write_text(f"key={key}")
    registry.watch_file(outside)
    registry.add_text("pytest-output", "a clean line")
    assert [f.kind for f in registry.scan()] == ["webhook_key"]
    outside.unlink()
    registry.add_text("pytest-output", f"?key={key}")
    assert [f.kind for f in registry.scan()] == ["webhook_key"]


def test_values_too_short_to_be_secrets_are_not_recorded() -> None:
    registry = SecretRegistry()
    registry.record("webhook_secret", "short")
    registry.record("bot_token", "123:abc")
    assert registry.secrets == {}


_INNER_CONFTEST = """
pytest_plugins = ["tests.leaks.plugin"]
"""

_INNER_TEST = """
import secrets

from tests.leaks import registry


def test_something_that_prints_a_secret():
    token = f"123456789:AA{secrets.token_urlsafe(32)[:33]}"
    registry.record("bot_token", token)
    print(f"OUTPUT")
"""


def run_inner_session(scratch: Path, output: str, *extra: str) -> subprocess.CompletedProcess[str]:
    project = scratch / "project"
    project.mkdir()
    (project / "pytest.ini").write_text("[pytest]\n")
    (project / "conftest.py").write_text(_INNER_CONFTEST)
    (project / "test_inner.py").write_text(textwrap.dedent(_INNER_TEST).replace("OUTPUT", output))
    env = {
        **os.environ,
        "PYTHONPATH": str(REPO),
        # The inner run's evidence stays under this test's temporary directory.
        "TMPDIR": str(scratch),
    }
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            "-p",
            "no:randomly",
            "-p",
            "no:cacheprovider",
            "-c",
            str(project / "pytest.ini"),
            "--rootdir",
            str(project),
            "--basetemp",
            str(scratch / "inner-basetemp"),
            *extra,
            str(project),
        ],
        cwd=project,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


@pytest.mark.timeout(180)
@pytest.mark.parametrize(
    "processes", [(), ("-p", "xdist", "-n", "2")], ids=["one-process", "worker-processes"]
)
def test_a_secret_in_a_tests_output_fails_the_whole_run(
    scratch: Path, processes: tuple[str, ...]
) -> None:
    """Also under pytest-xdist (as `make test` runs): the worker that ran the test
    found the secret, and the controller, whose status `make test` sees, fails."""
    result = run_inner_session(scratch, "connecting with {token}", *processes)
    assert "1 passed" in result.stdout, result.stdout + result.stderr
    assert result.returncode == pytest.ExitCode.TESTS_FAILED, result.stdout + result.stderr
    assert "secret-leak check FAILED" in result.stdout
    assert "bot_token in" in result.stdout


@pytest.mark.timeout(180)
def test_a_run_without_leaks_passes_on_worker_processes_too(scratch: Path) -> None:
    result = run_inner_session(scratch, "connecting with a token", "-p", "xdist", "-n", "2")
    assert result.returncode == pytest.ExitCode.OK, result.stdout + result.stderr
    assert "secret-leak check: 1 secrets, none found" in result.stdout
    assert "2 worker processes" in result.stdout


@pytest.mark.timeout(180)
def test_a_run_without_leaks_passes(scratch: Path) -> None:
    result = run_inner_session(scratch, output="connecting with a token")
    assert result.returncode == pytest.ExitCode.OK, result.stdout + result.stderr
    assert "secret-leak check: 1 secrets, none found" in result.stdout


async def test_the_database_dump_holds_every_row_under_its_tables_name(
    db_session_factory: async_sessionmaker[AsyncSession], db_engine: AsyncEngine
) -> None:
    await new_workspace(db_session_factory, "O'Brien & Co")
    await new_workspace(db_session_factory, "Initech")

    async with db_engine.connect() as connection:
        dump = await dump_database(connection)

    workspaces = [line for line in dump.splitlines() if line.startswith("workspaces: ")]
    names = sorted(json.loads(line.removeprefix("workspaces: "))["name"] for line in workspaces)
    assert names == ["Initech", "O'Brien & Co"]
    # Their admin tokens' rows are there too (as hashes).
    assert sum(line.startswith("api_tokens: ") for line in dump.splitlines()) == 2
