"""InterfaceAddressWatcher: the addresses on this node's interfaces, followed by netlink notifications.

Stage: the kernel-to-BGP direction, beside ``routes.monitor``. The import guard (``bgp.import_guard``) needs
the subnets this node is directly connected to; they are the networks of its interface addresses. This
watcher hands the whole set of addresses (interface form, ``10.0.0.11/24``) to the daemon's ``on_change``
whenever it changes; deciding which of them make a subnet is the guard's business.

Owns: the set of (ifindex, address) the kernel holds, and recovery from lost notifications.

Design and complicating factors:
- No polling: the watch is subscribed before the dump, so nothing falls in between; an event replayed over
  the dump is harmless (a set).
- The kernel notifies RTM_NEWADDR again when only an address's flags or lifetimes change (IPv6 DAD, SLAAC
  renewals): ``on_change`` is called only when the set of addresses differs from the last one reported.
- Lost notifications (``WatchOverflow``) trigger a fresh dump. A failing dump or socket, or a watch that
  ends, must not stop the daemon (its tasks are watched as a group, and one that ends stops it): it is
  logged and a fresh subscription and dump follow after ``retry`` seconds, keeping the last addresses
  reported meanwhile.
- ``on_change`` is synchronous, must not block, and is called once after the first dump even when there
  are no addresses. A call that raises is logged; the next change reports the whole set again.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable

from routes.model import ADD, AddressEvent, InterfaceAddress, Netlink, WatchOverflow

log = logging.getLogger(__name__)

RETRY_SECONDS = 5.0


class InterfaceAddressWatcher:
    def __init__(
        self,
        netlink: Netlink,
        on_change: Callable[[frozenset[str]], None],
        *,
        retry: float = RETRY_SECONDS,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        self._netlink = netlink
        self._on_change = on_change
        self._retry = retry
        self._sleep = sleep
        self._held: set[InterfaceAddress] = set()
        self._reported: frozenset[str] | None = None
        self.ready = asyncio.Event()  # set after the first report

    @property
    def addresses(self) -> frozenset[str]:
        return frozenset(a.address for a in self._held)

    async def run(self) -> None:
        """Watch until cancelled."""
        while True:
            try:
                await self._watch()
                log.warning("interface address watch ended; subscribing again in %.0fs", self._retry)
            except OSError as exc:
                log.warning("interface address watch failed (%s); retrying in %.0fs", exc, self._retry)
            await self._sleep(self._retry)

    async def _watch(self) -> None:
        watch = self._netlink.watch_addresses()
        try:
            await self._load()
            while True:
                try:
                    async for event in watch:
                        self.feed(event)
                except WatchOverflow:
                    log.warning("address notifications were lost; re-reading the interface addresses")
                    await self._load()
                else:
                    return
        finally:
            watch.close()

    async def _load(self) -> None:
        self._held = set(await self._netlink.dump_addresses())
        self._report()

    def feed(self, event: AddressEvent) -> None:
        """Apply one notification (``run`` calls this; tests may too)."""
        if event.action == ADD:
            self._held.add(event.address)
        else:
            self._held.discard(event.address)
        self._report()

    def _report(self) -> None:
        current = self.addresses
        if current == self._reported:
            return
        try:
            self._on_change(current)
        except Exception:  # the consumer's bug must not stop the watch; the next change reports it all
            log.exception("interface address consumer failed")
            return
        self._reported = current
        self.ready.set()
