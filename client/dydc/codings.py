"""Which compressed answers the client asks for: none over loopback, where compressing costs
the service more time than the wire saves (a 1e6-sample JSON answer: gzip adds about 0.5 s,
zstd about 0.13 s, to about 0.3 s sent as it is; the service's docs/benchmarks.md), and zstd
(when ``zstandard`` is installed: the ``fast`` extra) or gzip over a network, where the
service compresses JSON answers of a size that pays."""

from __future__ import annotations

import ipaddress
from importlib.util import find_spec
from urllib.parse import urlsplit

__all__ = ["accept_encoding", "is_loopback"]


def is_loopback(url: str) -> bool:
    host = (urlsplit(url).hostname or "").lower()
    if host == "localhost" or host.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def accept_encoding(url: str) -> str:
    """The ``Accept-Encoding`` header for a service at ``url``."""
    if is_loopback(url):
        return "identity"
    return "zstd, gzip" if find_spec("zstandard") is not None else "gzip"
