"""``python -m bgp.exabgp.check FILE``: ExaBGP's own config check, without the rest of its command line.

Stage: the config dataplane's validator (``confgen.apply.ConfigWriter`` runs it on every candidate file before
it replaces the live one). Runs in a child process, never in the daemon: ExaBGP's parser is a third of
ExaBGP's imports, and the daemon should not hold them.

Owns: nothing but the call. It runs ``exabgp validate``'s own code (``exabgp.application.validate.cmdline``,
no neighbour or route re-checks, as ``exabgp validate FILE`` runs it): the same parse, the same exit status
(0 accepted, 1 refused) and the same message on stderr.

Complicating factors: the ``exabgp`` script imports every subcommand's module (server, cli, healthcheck,
decode...) before it parses its arguments, about a quarter of the validator's CPU (0.04-0.05 s of
0.17-0.24 s), paid at every node start and every config change. This entry point imports only what the
check needs; a test runs both on the same accepted and refused files and compares the outcomes.
"""

from __future__ import annotations

import sys


def command() -> tuple[str, ...]:
    """The validator's command line, for ``ConfigWriter`` (which appends the candidate file)."""
    return (sys.executable, "-m", __name__ if __name__ != "__main__" else "bgp.exabgp.check")


def main(argv: list[str] | None = None) -> int:
    import argparse  # here: the daemon imports this module for ``command`` only

    parser = argparse.ArgumentParser(prog="python -m bgp.exabgp.check", description=__doc__.splitlines()[0])
    parser.add_argument("configuration", nargs="+", help="ExaBGP configuration file(s)")
    args = parser.parse_args(argv)
    from exabgp.application import validate  # imported here: ``--help`` needs none of ExaBGP

    options = argparse.Namespace(
        verbose=False, pdb=False, neighbor=False, route=False, configuration=args.configuration
    )
    validate.cmdline(options)  # sys.exit(1) with the reason on stderr when a file is refused
    return 0


if __name__ == "__main__":
    sys.exit(main())
