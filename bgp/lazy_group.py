"""LazyGroup: a click group whose subcommands are named by import path and imported only when used.

Stage: user interface (``bgp.cli`` is built on it).

Owns: the mapping from a subcommand name to ``"package.module:attribute"`` and the one place that imports
it. ``calico-bgp status`` must start fast and must not load the lab tooling (16 modules) or grpc (the etcd
client) that other subcommands need, so the root group holds only names until one is invoked.

Complicating factors:
- ``calico-bgp --help`` lists every subcommand with its one-line help, which click takes from the command
  object, so the top-level help imports every subcommand; only that listing does.
- A wrong entry (a typo in the path, an attribute that is not a click command, a command whose own name
  differs from its entry) fails with a message naming the entry, not with a bare ``AttributeError`` from
  deep inside click.
"""

from __future__ import annotations

import importlib
from collections.abc import Mapping
from typing import Any

import click


class LazyCommandError(click.ClickException):
    """A lazy subcommand entry that does not lead to a click command of that name."""


class LazyGroup(click.Group):
    """A ``click.Group`` that also knows ``lazy``: subcommand name -> ``"module:attribute"``."""

    def __init__(self, *args: Any, lazy: Mapping[str, str] | None = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.lazy: dict[str, str] = dict(lazy or {})
        for name, target in self.lazy.items():
            module, sep, attribute = target.partition(":")
            if not (module and sep and attribute):
                raise ValueError(f"lazy subcommand {name!r}: {target!r} is not 'module:attribute'")

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted({*super().list_commands(ctx), *self.lazy})

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        if cmd_name in self.lazy and cmd_name not in self.commands:
            return self._load(cmd_name)
        return super().get_command(ctx, cmd_name)

    def _load(self, name: str) -> click.Command:
        target = self.lazy[name]
        module_name, _, attribute = target.partition(":")
        try:
            module = importlib.import_module(module_name)
        except ImportError as exc:
            raise LazyCommandError(f"subcommand {name!r}: cannot import {module_name}: {exc}") from exc
        command = getattr(module, attribute, None)
        if not isinstance(command, click.Command):
            raise LazyCommandError(f"subcommand {name!r}: {target} is not a click command")
        if command.name != name:
            raise LazyCommandError(f"subcommand {name!r}: {target} is the command {command.name!r}")
        return command
