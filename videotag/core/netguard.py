"""Outbound URL guard: refuse hosts that resolve to loopback/private/link-local/reserved addresses.

Used by the API when a URL is submitted and by the download itself on every redirect hop, so a public URL
that redirects to an internal address is refused too.
"""

from __future__ import annotations

import ipaddress
import socket
import urllib.parse


def blocked_reason(ip: ipaddress.IPv4Address | ipaddress.IPv6Address) -> str | None:
    """Why `ip` is not a public address (None when it is)."""
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    for attr, what in (
        ("is_loopback", "loopback"),
        ("is_unspecified", "unspecified"),
        ("is_link_local", "link-local"),
        ("is_multicast", "multicast"),
        ("is_reserved", "reserved"),
        ("is_private", "private"),
    ):
        if getattr(ip, attr):
            return what
    if not ip.is_global:  # e.g. carrier-grade NAT 100.64/10, documentation ranges
        return "non-public"
    return None


def non_public_target(url: str) -> str | None:
    """A sentence saying why `url`'s host is not public, or None. Every resolved address must be public."""
    u = urllib.parse.urlsplit(url)
    if not u.hostname:
        return "URL has no host"
    try:
        infos = socket.getaddrinfo(u.hostname, u.port or (443 if u.scheme == "https" else 80), type=socket.SOCK_STREAM)
    except socket.gaierror as e:
        return f"cannot resolve host {u.hostname!r}: {e.strerror}"
    for info in infos:
        ip = ipaddress.ip_address(info[4][0].split("%", 1)[0])
        why = blocked_reason(ip)
        if why:
            return f"URL host {u.hostname!r} resolves to a {why} address ({ip}); refused"
    return None
