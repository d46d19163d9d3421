"""Every option of every command (group members of ``batch`` and ``show`` included) says what it
does in ``--help``, and every output that accepts ``{i}`` says what ``{i}`` becomes."""

from __future__ import annotations

import click
import pytest
from cli_fixtures import all_commands, ok

COMMANDS = all_commands()


def test_the_walk_finds_the_group_members() -> None:
    names = {name for name, _, _ in COMMANDS}
    assert {"unfold", "fold", "stats", "batch unfold", "batch tiles", "show grid", "show mosaic"} <= names


@pytest.mark.parametrize(("name", "command", "context"), COMMANDS, ids=[name for name, _, _ in COMMANDS])
def test_every_option_has_help(name: str, command: click.Command, context: click.Context) -> None:
    missing = [
        "/".join(param.opts)
        for param in command.get_params(context)
        if isinstance(param, click.Option) and not param.hidden and not (param.help or "").strip()
    ]
    assert missing == [], f"patchfold {name}: options without help text"
    assert (command.help or "").strip(), f"patchfold {name} has no docstring"
    assert "-h" in command.get_help_option(context).opts


@pytest.mark.parametrize(("name", "command", "context"), COMMANDS, ids=[name for name, _, _ in COMMANDS])
def test_every_i_placeholder_is_explained(name: str, command: click.Command, context: click.Context) -> None:
    for param in command.params:
        if isinstance(param, click.Option) and "{i}" in (param.help or ""):
            assert "four digits" in param.help and "0000" in param.help, f"{name} {param.opts}"
    if any("{i}" in (p.help or "") for p in command.params if isinstance(p, click.Option)):
        text = " ".join(ok(*name.split(), "--help").stdout.split())
        assert "zero-padded to four digits: 0000, 0001" in text
