"""Options shared by several `calico-bgp` subcommands.

Stage: user interface; imported by ``bgp.cli`` and the subcommand modules it loads lazily, so it imports
nothing but click.

Owns: the run directory's flag, environment name and default (where the daemon keeps its control socket,
which ``status``, ``routes`` and ``health`` connect to).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

import click

DEFAULT_RUN_DIR = "/var/run/calico-bgp"

F = TypeVar("F", bound=Callable[..., object])


def run_dir_option(f: F) -> F:
    return click.option(
        "--run-dir",
        envvar="CALICO_BGP_RUN_DIR",
        default=DEFAULT_RUN_DIR,
        show_default=True,
        type=click.Path(path_type=Path),
        help="Directory holding the daemon's control socket and ExaBGP files (env CALICO_BGP_RUN_DIR).",
    )(f)
