"""LazyGroup: subcommands named by import path, loaded only when asked for, with errors naming the entry."""

from __future__ import annotations

import click
import pytest
from click.testing import CliRunner

from bgp.cli import SUBCOMMANDS, cli
from bgp.lazy_group import LazyCommandError, LazyGroup


def _group(lazy: dict[str, str]) -> click.Group:
    @click.group(cls=LazyGroup, lazy=lazy)
    def root() -> None:
        """root"""

    @root.command()
    def here() -> None:
        click.echo("eager")

    return root


@pytest.mark.parametrize("name, target", sorted(SUBCOMMANDS.items()))
def test_every_subcommand_of_the_cli_loads_under_its_own_name(name, target):
    with click.Context(cli) as ctx:
        command = cli.get_command(ctx, name)
    assert isinstance(command, click.Command)
    assert command.name == name


def test_lazy_and_eager_commands_are_listed_together():
    root = _group({"apply": "bgp.resources_cli:apply"})
    with click.Context(root) as ctx:
        assert root.list_commands(ctx) == ["apply", "here"]


def test_a_lazy_command_runs_like_an_eager_one():
    root = _group({"confgen": "bgp.resources_cli:confgen"})
    result = CliRunner().invoke(root, ["confgen", "--help"])
    assert result.exit_code == 0, result.output
    assert "render" in result.output
    assert CliRunner().invoke(root, ["here"]).output == "eager\n"


@pytest.mark.parametrize(
    "target, message",
    [
        ("json:dumps", "subcommand 'x': json:dumps is not a click command"),
        ("bgp.cli:nothing_here", "subcommand 'x': bgp.cli:nothing_here is not a click command"),
        ("bgp.resources_cli:get", "subcommand 'x': bgp.resources_cli:get is the command 'get'"),
        ("bgp.no_such_module:x", "subcommand 'x': cannot import bgp.no_such_module"),
    ],
)
def test_a_wrong_entry_names_itself(target, message):
    root = _group({"x": target})
    with click.Context(root) as ctx, pytest.raises(LazyCommandError) as caught:
        root.get_command(ctx, "x")
    assert caught.value.message.startswith(message)


@pytest.mark.parametrize("target", ["bgp.resources_cli", ":apply", "bgp.resources_cli:", ""])
def test_an_entry_that_is_not_module_colon_attribute_is_refused_at_definition(target):
    with pytest.raises(ValueError, match="is not 'module:attribute'"):
        LazyGroup(name="root", lazy={"x": target})
