"""The `integrations` command's help: every argument explained, defaults shown."""

from __future__ import annotations

import argparse
import subprocess
import sys
from collections.abc import Iterator

import pytest

from app.cli import _parser, main


def commands(
    parser: argparse.ArgumentParser, path: tuple[str, ...] = ()
) -> Iterator[tuple[tuple[str, ...], argparse.ArgumentParser]]:
    """Every (sub)command's words and parser, the top level first."""
    yield path, parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, subparser in action.choices.items():
                yield from commands(subparser, (*path, name))


COMMANDS = dict(commands(_parser()))


def test_the_commands_are_all_found() -> None:
    assert {("serve",), ("workspace", "create"), ("vault", "rotate")} <= set(COMMANDS)


@pytest.mark.parametrize("path", list(COMMANDS), ids=lambda path: " ".join(path) or "top")
def test_every_argument_has_help_with_its_default(
    path: tuple[str, ...], capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main([*path, "--help"])
    assert exit_info.value.code == 0
    shown = " ".join(capsys.readouterr().out.split())
    for action in COMMANDS[path]._actions:
        assert action.help, f"{' '.join(path)}: {action.dest} has no help"
        if action.help is argparse.SUPPRESS or isinstance(action, argparse._HelpAction):
            continue
        assert " ".join(action.help.split()) in shown
        if action.option_strings and action.default is not None:
            assert f"(default: {action.default})" in shown, action.dest


def test_help_promises_no_ui_that_is_not_built() -> None:
    for path in [(), ("serve",)]:
        result = subprocess.run(
            [sys.executable, "-m", "app", *path, "--help"],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert result.returncode == 0, result.stderr
        assert "serve" in result.stdout
        assert "UI" not in result.stdout and "settings page" not in result.stdout.lower()
