"""The session-wide secret-leak check, as a pytest plugin (loaded by tests/conftest.py).

- Every test's captured output (stdout, stderr and log sections of each phase, which
  is where the service's log lines go) is appended to the evidence.
- `tests.leaks.capture.install_log_capture()` adds a root logging handler that
  writes every record of the test process to the evidence too, formatted by the
  project's own formatter (so exactly as redacted as a deployment's output).
  tests/conftest.py installs it right after configuring logging; the per-test
  logging isolation then keeps it.
- pytest's temporary directory is scanned at the end: the SQLite databases, data
  directories and process logs tests leave there.
- `pytest_sessionfinish` runs the scan once everything else is done (the session
  fixtures, including the database dump in tests/conftest.py, are torn down
  before it) and, if a secret turns up, prints where and sets the exit status to
  `TESTS_FAILED`: pytest returns `session.exitstatus` as read after this hook, so
  `make test` fails. tests/leaks/test_leak_check.py proves both in a pytest run of
  its own.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator

import pytest

from tests.leaks.registry import session_registry as registry


@pytest.fixture(scope="session", autouse=True)
def _scan_temporary_files(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    registry.watch_directory(tmp_path_factory.getbasetemp())
    yield


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    for title, content in report.sections:
        registry.add_text("pytest-output", f"--- {report.nodeid} {title}\n{content}")


@pytest.hookimpl(trylast=True)
def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    findings = registry.scan()
    reporter = session.config.pluginmanager.get_plugin("terminalreporter")
    if reporter is not None:
        reporter.line("")
    if not findings:
        if reporter is not None:
            reporter.write_line(
                f"secret-leak check: {len(registry.secrets)} secrets, none found in the "
                "logs, the captured output, the database dumps or the temporary files "
                f"({registry.scanned_files} files, {registry.scanned_bytes / 1e6:.1f} MB)"
            )
        shutil.rmtree(registry.evidence_dir, ignore_errors=True)
        return
    lines = [
        f"secret-leak check FAILED: {len(findings)} finding(s) "
        f"(evidence kept in {registry.evidence_dir})",
        *(f"  {finding.describe()}" for finding in findings[:50]),
    ]
    if reporter is not None:
        reporter.write_sep("=", "secret leak", red=True)
        for line in lines:
            reporter.write_line(line, red=True)
    else:
        print("\n".join(lines))
    if session.exitstatus == pytest.ExitCode.OK:
        session.exitstatus = pytest.ExitCode.TESTS_FAILED
