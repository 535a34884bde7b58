"""The `siesta` command itself: --version, completion, help at 80 columns, config check -c."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import typer
import yaml
from typer.testing import CliRunner

from siesta import __version__
from siesta.cli import app

from .conftest import backend_template

runner = CliRunner()


def _commands(group: Any, path: tuple[str, ...] = ()) -> list[tuple[str, ...]]:
    """Every command path of the CLI, groups included."""
    found = [path]
    for name, command in group.commands.items():
        if hasattr(command, "commands"):
            found += _commands(command, (*path, name))
        else:
            found.append((*path, name))
    return found


def test_version() -> None:
    """`siesta --version` prints the version and which hot path runs."""
    result = runner.invoke(app, ["--version"])
    assert result.exit_code == 0
    assert result.output.startswith(f"siesta {__version__} (")


def test_completion_script() -> None:
    """Shell completion is offered (--show-completion in the help) and answers as bash asks
    it to (the protocol the script installed by --install-completion speaks). The script
    itself is not printed here: typer detects the shell from the process tree, which a test
    runner does not have in every environment."""
    assert "--show-completion" in runner.invoke(app, ["--help"]).output
    asked = {"_SIESTA_COMPLETE": "complete_bash", "COMP_WORDS": "siesta ses", "COMP_CWORD": "1"}
    result = runner.invoke(app, [], prog_name="siesta", env=asked)
    assert result.exit_code == 0
    assert result.output.split() == ["sessions"]


def test_every_help_fits_80_columns_and_sentences_are_not_broken() -> None:
    """Every command's --help at 80 columns: no line is wider, and a paragraph written on
    several source lines is re-flowed (no line ends mid-sentence before a short stub)."""
    paths = _commands(typer.main.get_command(app))
    assert len(paths) > 15
    for path in paths:
        result = runner.invoke(app, [*path, "--help"], terminal_width=80, env={"COLUMNS": "80"})
        assert result.exit_code == 0, (path, result.output)
        lines = result.output.splitlines()
        assert max(len(line) for line in lines) <= 80, path
        text = [line.strip(" │") for line in lines if line.strip(" │╭╰─")]
        stubs = [t for t in text if len(t) < 12 and t[-1:].isalpha() and t.islower()]
        assert not stubs, (path, stubs)
    report = runner.invoke(app, ["report", "--help"], terminal_width=80, env={"COLUMNS": "80"})
    assert "wake time p50/p95" in " ".join(report.output.split())


def test_config_check_takes_c_like_every_command(tmp_path: Path) -> None:
    """`config check -c FILE` works as `config check FILE` does; a bad file exits 2."""
    path = tmp_path / "siesta.yaml"
    path.write_text(yaml.safe_dump({"templates": {"web": backend_template()}}))
    for args in (["config", "check", "-c", str(path)], ["config", "check", str(path)]):
        result = runner.invoke(app, args)
        assert result.exit_code == 0, result.output
        assert "ok" in result.output
    path.write_text("templates: {web: {command: 3}}\n")
    assert runner.invoke(app, ["config", "check", "-c", str(path)]).exit_code == 2
