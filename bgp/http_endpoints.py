"""The metrics port: ``/metrics`` for Prometheus, ``/readyz`` and ``/livez`` for probes.

Stage: observability and supervision, across the pipeline.

Owns: a small threaded HTTP server (``EndpointServer``) and the hand-over of a probe to the daemon's event
loop (``LoopCall``). ``/readyz`` and ``/livez`` answer 200 or 503 with one line, the same line as
``calico-bgp health --ready`` / ``--live`` (``bgp.readiness`` has the rules); anything else is 404.

Complicating factors:
- The server runs in its own threads, so a blocked event loop still gets its ``/metrics`` scraped (the lag
  and component metrics are what shows the block). A probe's verdict, though, is computed on the loop, as
  the daemon's state lives there: the handler hands the call over and waits at most ``LOOP_DEADLINE``; no
  answer by then is itself the verdict (503, "the daemon's event loop did not answer").
- Bounded: at most ``MAX_ACTIVE`` requests are served at once (more get 503 at once), and a client that
  sends nothing is dropped after ``READ_TIMEOUT``.
- The address is whatever the operator gave (``--metrics-address``), IPv4 or IPv6; its family is looked up.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import socket
import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from prometheus_client import CollectorRegistry
from prometheus_client.exposition import choose_encoder

from bgp.readiness import Verdict

LOOP_DEADLINE = 2.0
MAX_ACTIVE = 8
READ_TIMEOUT = 5.0


class LoopCall:
    """Runs a function on an event loop from another thread and waits for its result, with a deadline."""

    def __init__(self, loop: asyncio.AbstractEventLoop, deadline: float = LOOP_DEADLINE) -> None:
        self._loop = loop
        self._deadline = deadline

    def __call__(self, fn: Callable[[], Verdict]) -> Verdict:
        future: concurrent.futures.Future[Verdict] = concurrent.futures.Future()

        def run() -> None:
            if future.set_running_or_notify_cancel():
                try:
                    future.set_result(fn())
                except Exception as exc:  # a bug in a check is its verdict, not a dead handler thread
                    future.set_exception(exc)

        try:
            self._loop.call_soon_threadsafe(run)
            return future.result(timeout=self._deadline)
        except (concurrent.futures.TimeoutError, TimeoutError):
            future.cancel()
            return Verdict(False, f"the daemon's event loop did not answer within {self._deadline:g}s")
        except RuntimeError as exc:  # the loop is closed: the daemon is stopping
            return Verdict(False, f"the daemon is stopping ({exc})")


class EndpointServer:
    def __init__(
        self,
        address: str,
        port: int,
        registry: CollectorRegistry,
        probes: dict[str, tuple[str, Callable[[], Verdict]]],
    ) -> None:
        """``probes``: path -> (what it reports, "ready" or "live"; the verdict, callable from any thread)."""
        self._registry = registry
        self._probes = probes
        self._slots = threading.BoundedSemaphore(MAX_ACTIVE)
        family = socket.getaddrinfo(address, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)[0][0]
        handler = self._handler_class()
        server_class = type("_Server", (ThreadingHTTPServer,), {"address_family": family})
        self._server = server_class((address, port), handler)
        self._thread: threading.Thread | None = None

    @property
    def port(self) -> int:
        return self._server.server_address[1]

    def start(self) -> None:
        self._thread = threading.Thread(target=self._server.serve_forever, name="http-endpoints", daemon=True)
        self._thread.start()

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    def _respond(self, path: str, accept: str) -> tuple[int, str, bytes]:
        if path == "/metrics":
            encoder, content_type = choose_encoder(accept)
            return 200, content_type, encoder(self._registry)
        probe = self._probes.get(path)
        if probe is None:
            return 404, "text/plain; charset=utf-8", b"not found: /metrics, " + ", ".join(
                sorted(self._probes)
            ).encode() + b"\n"
        what, check = probe
        try:
            verdict = check()
        except Exception as exc:
            verdict = Verdict(False, f"the check failed: {exc}")
        body = (verdict.line(what) + "\n").encode()
        return (200 if verdict.ok else 503), "text/plain; charset=utf-8", body

    def _handler_class(self) -> type[BaseHTTPRequestHandler]:
        server = self

        class Handler(BaseHTTPRequestHandler):
            timeout = READ_TIMEOUT

            def do_GET(self) -> None:  # noqa: N802 (the name http.server calls)
                if not server._slots.acquire(blocking=False):
                    status, content_type, body = 503, "text/plain; charset=utf-8", b"busy\n"
                else:
                    try:
                        path = self.path.split("?", 1)[0]
                        status, content_type, body = server._respond(path, self.headers.get("Accept", ""))
                    finally:
                        server._slots.release()
                self.send_response(status)
                self.send_header("Content-Type", content_type)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: object) -> None:  # noqa: A002
                pass  # probes every few seconds would flood the daemon's log

        return Handler
