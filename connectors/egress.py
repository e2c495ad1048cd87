"""Where connectors may send requests: vendor hosts over https, never private networks.

Checked when a connection is saved and again before every call (a DNS name can change what it
points at after it was saved). Connections marked as sandbox may point at loopback (our own
sandboxes on this machine) while PSCSYNC_ALLOW_SANDBOXES is on; never at other private addresses.

The check resolves the name once and remembers the addresses it approved; the HTTP client then
connects to exactly those (`connect_address`), so a name that re-resolves to a private address
between the check and the connection (DNS rebinding) is never reached.
"""

from __future__ import annotations

import fnmatch
import ipaddress
import logging
import re
import socket
import threading
import time
from urllib.parse import urlsplit

from django.conf import settings

from connectors.errors import RejectedError

_CGNAT = ipaddress.ip_network("100.64.0.0/10")
_cache: dict[tuple[str, int], tuple[float, list[str]]] = {}
_cache_lock = threading.Lock()
CACHE_SECONDS = 60.0
# (host, port) -> (expiry, addresses) that check_destination approved for connecting.
_approved: dict[tuple[str, int], tuple[float, list[str]]] = {}
_NUMERIC_HOST = re.compile(r"^(0x[0-9a-f]+|[0-9]+)(\.(0x[0-9a-f]+|[0-9]+)){0,3}$", re.IGNORECASE)


log = logging.getLogger("pscsync.egress")


class DestinationRefused(RejectedError):
    error_class = "rejected"


def _resolve(host: str, port: int) -> list[str]:
    now = time.monotonic()
    with _cache_lock:
        hit = _cache.get((host, port))
        if hit and hit[0] > now:
            return hit[1]
    try:
        infos = socket.getaddrinfo(host, port, proto=socket.IPPROTO_TCP)
    except socket.gaierror as exc:
        raise DestinationRefused(f"the host {host} cannot be resolved: {exc.strerror}") from None
    addresses = sorted({str(info[4][0]) for info in infos})
    with _cache_lock:
        _cache[(host, port)] = (now + CACHE_SECONDS, addresses)
    return addresses


def _kind(address: str) -> str:
    ip = ipaddress.ip_address(address.split("%", 1)[0])
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    if ip.is_loopback:
        return "loopback"
    if ip.is_link_local:
        return "link-local"
    if isinstance(ip, ipaddress.IPv4Address) and ip in _CGNAT:
        return "carrier-grade NAT"
    if ip.is_private or ip.is_multicast or ip.is_unspecified or ip.is_reserved:
        return "private"
    return "public"


def vendor_hosts(vendor: str) -> tuple[str, ...]:
    """The host patterns a vendor's connector declares (`api_hosts`); none for a vendor with no
    connector installed, so its connections reach no public host."""
    # Imported here: the registry imports the connectors, which import this module.
    from connectors.registry import connector_class

    try:
        return tuple(connector_class(vendor).api_hosts)
    except LookupError:
        return ()


def check_destination(url: str, *, vendor: str, is_sandbox: bool) -> None:
    """Raise DestinationRefused unless `url` is an allowed destination for this connection."""
    parts = urlsplit(url)
    if parts.username or parts.password:
        raise DestinationRefused("the address must not contain a user name or password")
    host = parts.hostname or ""
    if not host:
        raise DestinationRefused("the address has no host")
    sandbox_ok = is_sandbox and settings.ALLOW_SANDBOXES
    if parts.scheme != "https" and not (sandbox_ok and parts.scheme == "http"):
        raise DestinationRefused("the address must use https")
    try:
        port = parts.port or (443 if parts.scheme == "https" else 80)
    except ValueError:
        raise DestinationRefused("the address has an invalid port") from None
    addresses = _resolve(host, port)
    kinds = {_kind(address) for address in addresses}
    if sandbox_ok and kinds == {"loopback"}:
        _approve(host, port, addresses)
        return
    refused = kinds - {"public"}
    if refused:
        raise DestinationRefused(f"{host} points at a {sorted(refused)[0]} address; connectors may not call it")
    if parts.scheme != "https" or port != 443:
        raise DestinationRefused("vendor APIs are called over https on port 443 only")
    if _NUMERIC_HOST.match(host):
        raise DestinationRefused("the address must name the vendor's host, not a number")
    patterns = vendor_hosts(vendor)
    if not any(fnmatch.fnmatchcase(host.lower(), pattern) for pattern in patterns):
        allowed = ", ".join(patterns) or "no public host (sandbox only)"
        raise DestinationRefused(f"{host} is not a {vendor} API host (allowed: {allowed})")
    _approve(host, port, addresses)


def _approve(host: str, port: int, addresses: list[str]) -> None:
    with _cache_lock:
        _approved[(host.lower(), port)] = (time.monotonic() + CACHE_SECONDS, addresses)


def connect_address(host: str, port: int) -> str:
    """The address the HTTP client connects to for host:port: one that a check approved.

    A host no check approved (or whose approval expired) is resolved once and accepted only if
    every address is public, or loopback while sandboxes are allowed."""
    now = time.monotonic()
    with _cache_lock:
        hit = _approved.get((host.lower(), port))
    if hit and hit[0] > now:
        addresses = hit[1]
    else:
        addresses = _resolve(host, port)
        kinds = {_kind(address) for address in addresses}
        if not (kinds == {"public"} or (settings.ALLOW_SANDBOXES and kinds == {"loopback"})):
            log.warning("egress refused host=%r port=%s kinds=%s", host, port, sorted(kinds))
            raise DestinationRefused(f"{host} points at a non-public address; not connecting")
    address = addresses[0]
    log.debug("egress connect host=%r port=%s address=%s", host, port, address)
    return address


def check_public_url(url: str, *, allow_loopback: bool = False) -> list[str]:
    """Raise DestinationRefused unless `url` is https to public addresses only (any host name).
    Returns the addresses it vetted: connect to one of those, never to a fresh DNS answer.

    For addresses people type in that are not vendor APIs, e.g. outbound alert webhooks.
    `allow_loopback` (tests, demos) also accepts http to loopback and nothing else private."""
    parts = urlsplit(url)
    if parts.username or parts.password:
        raise DestinationRefused("the address must not contain a user name or password")
    host = parts.hostname or ""
    if not host:
        raise DestinationRefused("the address has no host")
    if parts.scheme != "https" and not (allow_loopback and parts.scheme == "http"):
        raise DestinationRefused("the address must use https")
    try:
        port = parts.port or (443 if parts.scheme == "https" else 80)
    except ValueError:
        raise DestinationRefused("the address has an invalid port") from None
    addresses = _resolve(host, port)
    kinds = {_kind(address) for address in addresses}
    if allow_loopback and kinds == {"loopback"}:
        return addresses
    refused = kinds - {"public"}
    if refused:
        raise DestinationRefused(f"{host} points at a {sorted(refused)[0]} address; alerts may not be sent there")
    if parts.scheme != "https":
        raise DestinationRefused("the address must use https")
    return addresses
