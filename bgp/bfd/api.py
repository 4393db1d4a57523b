"""BFD's seam with the rest of the daemon: what a BFD session is asked to do and what it reports.

Stage: vocabulary between the BGP side (``bgp.sessions``, status, metrics, the daemon's wiring) and the BFD
engine (``bgp.bfd.service`` over a UDP transport). Pure: no I/O.

Owns: the per-peer request (``BfdPeerConfig``), the per-session report (``BfdStatus``), the state names and
diagnostic codes of RFC 5880 (section 4.1), and the ``BfdService`` protocol the engine and its fake both keep.

Complicating factors:
- Intervals are carried in microseconds, as on the wire, so a negotiated value shown in status is exactly
  what the peer was told; configuration in milliseconds is converted once, where it is read.
- A session is keyed by (peer address, local address): one BFD session serves every BGP session to the same
  neighbour from the same source (RFC 5882 section 2: BFD is shared by its clients).
- State changes are delivered through the callback given to the service, on the event loop, in order; a
  consumer that needs the current picture asks ``status()`` instead of replaying changes.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Protocol

# RFC 5880 section 4.1, "State (Sta)".
ADMIN_DOWN = "AdminDown"
DOWN = "Down"
INIT = "Init"
UP = "Up"
STATES = (ADMIN_DOWN, DOWN, INIT, UP)  # index = the wire value

# RFC 5880 section 4.1, "Diagnostic (Diag)": index = the wire value.
DIAGNOSTICS = (
    "No Diagnostic",
    "Control Detection Time Expired",
    "Echo Function Failed",
    "Neighbor Signaled Session Down",
    "Forwarding Plane Reset",
    "Path Down",
    "Concatenated Path Down",
    "Administratively Down",
    "Reverse Concatenated Path Down",
)

# Defaults for the daemon-wide settings; docs/bfd.md gives the reasons.
DEFAULT_MIN_TX_MS = 300
DEFAULT_MIN_RX_MS = 300
DEFAULT_MULTIPLIER = 3


@dataclass(frozen=True, order=True)
class BfdPeerConfig:
    """One BFD session the daemon wants: single-hop (RFC 5881), asynchronous mode, no authentication."""

    peer: str  # neighbour address, bare (IPv4 or IPv6)
    local: str  # our source address on the shared link
    min_tx_us: int = DEFAULT_MIN_TX_MS * 1000  # Desired Min TX Interval once Up (slow rate before, 1 s)
    min_rx_us: int = DEFAULT_MIN_RX_MS * 1000  # Required Min RX Interval
    multiplier: int = DEFAULT_MULTIPLIER  # Detect Mult
    interface: str = ""  # bind the socket to this device when set (link-local IPv6 needs it)

    @property
    def key(self) -> tuple[str, str]:
        return (self.peer, self.local)


@dataclass(frozen=True)
class BfdStatus:
    """One session as it stands, for status, metrics and the BGP side."""

    peer: str
    local: str
    state: str  # one of STATES
    local_discriminator: int
    remote_discriminator: int  # 0 until the peer has told us its own
    tx_interval_us: int  # the interval we transmit at now (negotiated; 1 s while not Up)
    detection_time_us: int  # how long without a packet before we declare the session Down (0: not running)
    remote_multiplier: int  # 0 until heard
    local_diagnostic: str  # the last diagnostic we set (one of DIAGNOSTICS)
    remote_diagnostic: str  # the last diagnostic the peer sent
    downs: int  # transitions from Up to anything else since the session was configured
    since: float  # clock reading of the last state change
    # The C bit of the peer's last packet (RFC 5880 section 4.1): its BFD runs independently of its control
    # plane, so BFD Down means its forwarding failed, not a restart (RFC 5882 section 4.3). We send C=0.
    remote_control_independent: bool = False
    # Why the engine cannot serve this session now ("" when it can): a socket that failed to open (and is
    # being retried), or the session cap. The session stays Down meanwhile.
    error: str = ""

    @property
    def up(self) -> bool:
        return self.state == UP


OnChange = Callable[[BfdStatus], None]  # a session changed state (called with its status after the change)


class BfdService(Protocol):
    """The BFD engine as the daemon sees it; ``bgp.bfd.testing.FakeBfdService`` keeps the same contract."""

    def configure(self, peers: Mapping[tuple[str, str], BfdPeerConfig]) -> None:
        """The full set of sessions wanted now, keyed by ``BfdPeerConfig.key``. New keys start Down, keys
        that left are stopped (after telling the peer AdminDown), changed intervals go through a Poll."""
        ...

    def status(self) -> list[BfdStatus]:
        """Every configured session, ordered by (peer, local)."""
        ...

    async def run(self) -> None:
        """Serve until cancelled. Sockets are opened here; a socket that cannot be opened is retried and
        reported in the sessions' status, never raised."""
        ...
