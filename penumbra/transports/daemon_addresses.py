"""Which ``host:port`` names a daemon, as others should use it.

A daemon may listen on a wildcard (``--host 0.0.0.0``), which reaches
nobody when handed out: it advertises an address of one of its interfaces
instead (``advertised_host``), and the head hands the other nodes what it
saw a node's connection come from (``_as_seen``).  ``_normal_address``
makes two spellings of one daemon compare equal (``localhost:p`` and
``127.0.0.1:p``), for a head matching the daemons named in ``--recover``.
"""

from __future__ import annotations

import socket

_WILDCARDS = ("", "0.0.0.0", "::", "[::]")


def advertised_host(host: str) -> str:
    """The address others should use to reach a daemon listening on
    ``host``: ``host`` itself, unless it is a wildcard (``--host 0.0.0.0``
    listens on every interface, but ``0.0.0.0:port`` reaches nobody), then
    this machine's first non-loopback IPv4 address (the head still uses the
    address a node's connection came from: see ``_as_seen``)."""
    if host not in _WILDCARDS:
        return host
    for addr in _interface_addresses():
        if not addr.startswith("127."):
            return addr
    try:
        addr = socket.gethostbyname(socket.gethostname())
        if not addr.startswith("127."):
            return addr
    except OSError:
        pass
    return "127.0.0.1"


def _interface_addresses() -> list[str]:
    """The IPv4 address of each interface that has one (SIOCGIFADDR; no
    packet is sent)."""
    import fcntl
    import struct

    out = []
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        for _, name in socket.if_nameindex():
            try:
                raw = fcntl.ioctl(s.fileno(), 0x8915, struct.pack("256s", name.encode()[:15]))  # SIOCGIFADDR
            except OSError:
                continue  # no IPv4 address (or down)
            out.append(socket.inet_ntoa(raw[20:24]))
    finally:
        s.close()
    return out


def _normal_address(address: str) -> str:
    """``host:port`` with the host resolved (``localhost`` and
    ``127.0.0.1`` name the same daemon)."""
    host, _, port = address.rpartition(":")
    host = host.strip("[]")
    try:
        host = socket.gethostbyname(host)
    except OSError:
        pass
    return f"{host}:{port}"


def _as_seen(advertised: str, peer_address: str) -> str:
    """A node's listening address as the head should hand it to the other
    nodes: what it advertised, with a wildcard host replaced by the address
    its connection came from (reachable from the head, so from the cluster)."""
    host, _, port = advertised.rpartition(":")
    if host in _WILDCARDS:
        seen = peer_address.rpartition(":")[0].strip("[]")
        if seen:
            return f"{seen}:{port}"
    return advertised
