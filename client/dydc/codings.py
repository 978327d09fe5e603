"""Which compressed answers the client asks for: none over loopback, where compressing costs
the service more time than the wire saves (a 1e6-sample JSON answer: gzip adds about 0.5 s,
zstd about 0.13 s, to about 0.3 s sent as it is; the service's docs/benchmarks.md), and zstd
(when httpx can decode it: ``zstandard`` installed, the ``fast`` extra, and httpx 0.27.1 or
later) or gzip over a network, where the
service compresses JSON answers of a size that pays."""

from __future__ import annotations

import importlib
import ipaddress
import socket
from urllib.parse import urlsplit

__all__ = ["accept_encoding", "is_loopback"]


def is_loopback(url: str) -> bool:
    """Whether ``url``'s host is this machine: ``localhost`` (a trailing dot too), a
    loopback or unspecified address, in any form the resolver takes (``127.1``,
    ``2130706433``, ``[::ffff:127.0.0.1]``)."""
    host = (urlsplit(url).hostname or "").lower().rstrip(".")
    if host == "localhost" or host.endswith(".localhost"):
        return True
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        try:  # the resolver's shorter IPv4 forms: inet_aton reads them as it does
            address = ipaddress.IPv4Address(socket.inet_aton(host))
        except (OSError, ValueError):
            return False
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    return address.is_loopback or address.is_unspecified  # 0.0.0.0: a connection stays here


def _decodes_zstd() -> bool:
    """Whether httpx decodes zstd answers: from 0.27.1, with ``zstandard`` installed (its
    table of decoders says both; 0.27.0 would hand the raw bytes on)."""
    try:
        decoders = importlib.import_module("httpx._decoders").SUPPORTED_DECODERS
    except (ImportError, AttributeError):
        return False
    return "zstd" in decoders


def accept_encoding(url: str) -> str:
    """The ``Accept-Encoding`` header for a service at ``url``."""
    if is_loopback(url):
        return "identity"
    return "zstd, gzip" if _decodes_zstd() else "gzip"
