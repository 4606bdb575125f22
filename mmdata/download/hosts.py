"""Per-host limits of one Fetcher, across all its threads: at most ``max_per_host`` requests in flight
to a host, and a pause of ``backoff`` seconds once a host failed to answer ``failure_limit`` times in a
row, so a dead or overloaded server costs one timeout per thread rather than one per URL.
"""

from __future__ import annotations

import threading
import time

# Error classes of the requests a host's gate refuses; both are worth a later retry.
HOST_BACKOFF = "host_backoff"
HOST_BUSY = "host_busy"
# Beyond this many hosts, the healthy idle ones are forgotten: memory stays bounded.
_MAX_REMEMBERED_HOSTS = 10_000


class HostUnavailable(Exception):
    """A request the host's gate refused; ``error_class`` is HOST_BACKOFF or HOST_BUSY."""

    def __init__(self, error_class: str, message: str):
        super().__init__(message)
        self.error_class = error_class


class HostGate:
    """One host's requests in flight, waiters and run of failures. All gates of a HostGates share
    one lock, so finding, waiting on and forgetting a gate are atomic together."""

    def __init__(self, lock: threading.Lock):
        self.condition = threading.Condition(lock)
        self.in_flight = 0
        self.waiting = 0
        self.consecutive_failures = 0
        self.backoff_until = 0.0

    def idle(self) -> bool:
        return self.in_flight == 0 and self.waiting == 0 and self.consecutive_failures == 0


class HostGates:
    """The gates of every host one Fetcher talks to. ``None`` limits mean no cap / never back off."""

    def __init__(self, *, max_per_host: int | None, failure_limit: int | None, backoff: float):
        self.max_per_host, self.failure_limit, self.backoff = max_per_host, failure_limit, backoff
        self._gates: dict[str, HostGate] = {}
        self._lock = threading.Lock()

    def enter(self, host: str, deadline: float) -> HostGate:
        """Wait for a slot on ``host`` (up to the monotonic ``deadline``); refuse at once while it is
        backed off. Every gate returned must be handed to :meth:`leave`."""
        cap = self.max_per_host
        with self._lock:
            gate = self._gates.get(host)
            if gate is None:
                if len(self._gates) > _MAX_REMEMBERED_HOSTS:
                    self._gates = {name: known for name, known in self._gates.items() if not known.idle()}
                gate = self._gates[host] = HostGate(self._lock)
            gate.waiting += 1
            try:
                while True:
                    now = time.monotonic()
                    if gate.backoff_until > now:
                        raise HostUnavailable(HOST_BACKOFF, f"{host} failed {gate.consecutive_failures} times in a "
                                              f"row; backed off for {gate.backoff_until - now:.0f} s more")
                    if cap is None or gate.in_flight < cap:
                        gate.in_flight += 1
                        return gate
                    if now >= deadline:
                        raise HostUnavailable(HOST_BUSY, f"no free slot for {host} before the deadline "
                                              f"(at most {cap} requests per host)")
                    gate.condition.wait(deadline - now)
            finally:
                gate.waiting -= 1

    def leave(self, gate: HostGate, *, connection_failed: bool) -> None:
        """Free the slot; a connection failure extends the host's run of failures, anything else ends it."""
        with self._lock:
            gate.in_flight -= 1
            if connection_failed:
                gate.consecutive_failures += 1
                if self.failure_limit is not None and gate.consecutive_failures >= self.failure_limit:
                    gate.backoff_until = time.monotonic() + self.backoff
                    gate.condition.notify_all()  # waiters leave with host_backoff now
            else:
                gate.consecutive_failures = 0
            gate.condition.notify()
