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
- Under pytest-xdist each worker process scans its own evidence (its tests ran
  there) and hands the result to the controller (`workeroutput`), which reports
  every worker's findings and fails the run for any of them: a worker's own exit
  status would not reach `make test`.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from typing import Any

import pytest

from tests.leaks.registry import session_registry as registry

_WORKER_KEY = "leak_check"


@dataclass
class _Result:
    """One process's scan."""

    secrets: int
    files: int
    bytes: int
    findings: list[str] = field(default_factory=list)
    evidence: str | None = None


_worker_results = pytest.StashKey[list[_Result]]()


@pytest.fixture(scope="session", autouse=True)
def _scan_temporary_files(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    registry.watch_directory(tmp_path_factory.getbasetemp())
    yield


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    for title, content in report.sections:
        registry.add_text("pytest-output", f"--- {report.nodeid} {title}\n{content}")


@pytest.hookimpl(optionalhook=True)
def pytest_testnodedown(node: Any, error: object) -> None:
    """pytest-xdist, in the controller: a worker finished; keep its scan."""
    found = getattr(node, "workeroutput", {}).get(_WORKER_KEY)
    if found is not None:
        node.config.stash.setdefault(_worker_results, []).append(_Result(**found))


def _scan_here() -> _Result:
    findings = registry.scan()
    result = _Result(
        len(registry.secrets),
        registry.scanned_files,
        registry.scanned_bytes,
        [finding.describe() for finding in findings[:50]],
        str(registry.evidence_dir) if findings else None,
    )
    if not findings:
        shutil.rmtree(registry.evidence_dir, ignore_errors=True)
    return result


@pytest.hookimpl(trylast=True)
def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    config = session.config
    result = _scan_here()
    if hasattr(config, "workerinput"):
        # An xdist worker: the controller reports it (and fails the run for it).
        config.workeroutput[_WORKER_KEY] = asdict(result)  # type: ignore[attr-defined]
        return
    results = [result, *config.stash.get(_worker_results, [])]
    findings = [finding for each in results for finding in each.findings]
    reporter = config.pluginmanager.get_plugin("terminalreporter")
    if reporter is not None:
        reporter.line("")
    if not findings:
        line = (
            f"secret-leak check: {sum(r.secrets for r in results)} secrets, none found in "
            "the logs, the captured output, the database dumps or the temporary files "
            f"({sum(r.files for r in results)} files, "
            f"{sum(r.bytes for r in results) / 1e6:.1f} MB"
            + (f", {len(results) - 1} worker processes)" if len(results) > 1 else ")")
        )
        if reporter is not None:
            reporter.write_line(line)
        return
    kept = ", ".join(r.evidence for r in results if r.evidence)
    lines = [
        f"secret-leak check FAILED: {len(findings)} finding(s) (evidence kept in {kept})",
        *(f"  {finding}" for finding in findings[:50]),
    ]
    if reporter is not None:
        reporter.write_sep("=", "secret leak", red=True)
        for line in lines:
            reporter.write_line(line, red=True)
    else:
        print("\n".join(lines))
    if session.exitstatus == pytest.ExitCode.OK:
        session.exitstatus = pytest.ExitCode.TESTS_FAILED
