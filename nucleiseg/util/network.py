"""Whether the network is there: one quick TCP probe, shared by the dataset downloads and the weight lookup, so an
offline machine fails in seconds with instructions instead of waiting through a chain of HTTP retries."""

from __future__ import annotations

import socket


def host_reachable(host: str, port: int = 443, timeout: float = 3.0) -> bool:
    """Whether a TCP connection to ``host:port`` opens within ``timeout`` seconds."""
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False
