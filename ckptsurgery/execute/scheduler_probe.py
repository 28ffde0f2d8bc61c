"""Fail fast when ``--scheduler ADDRESS`` names a port nobody listens on.

``distributed.Client(address, timeout=30)`` retries a refused connection until
its timeout, so a typo in the port (or a scheduler that is down) hung the
command for 30 seconds before its one-line error.  A plain TCP connect says at
once whether anything listens there; only then is Dask given its longer
timeout for the handshake (a remote scheduler under load may be slow to answer,
but its port accepts).
"""

from __future__ import annotations

import socket

from ..errors import OutputError

#: seconds to wait for the TCP connect alone (a refused port answers at once)
CONNECT_TIMEOUT = 5.0


def probe(address: str, timeout: float = CONNECT_TIMEOUT) -> None:
    """Raise :class:`OutputError` (one line) when nothing accepts TCP connections at ``address``.

    Only ``tcp://`` and ``tls://`` addresses (and bare ``host:port``) are probed;
    other transports (``inproc://``, ``ucx://``) are left to Dask.
    """
    from distributed.comm import parse_address, parse_host_port

    try:
        scheme, location = parse_address(address)
        if scheme not in ("tcp", "tls"):
            return
        host, port = parse_host_port(location)
    except (ValueError, TypeError) as exc:
        raise OutputError(f"{address}: not a Dask scheduler address ({exc})") from None
    try:
        with socket.create_connection((host, port), timeout=timeout):
            pass
    except OSError as exc:
        reason = exc.strerror or str(exc) or type(exc).__name__
        raise OutputError(f"{address}: cannot reach the Dask scheduler: {reason}") from None
