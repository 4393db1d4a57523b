"""`python -m labs`: the lab command group on its own (the same group `calico-bgp lab` mounts)."""

from __future__ import annotations

from labs.cli import lab

if __name__ == "__main__":
    lab(prog_name="python -m labs")
