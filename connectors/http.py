"""All outbound HTTP goes through here: timeouts, no redirects, failures classified.

One httpx client per process keeps connections alive between steps. Tests and connectors never
reach deeper than `request()`.
"""

from __future__ import annotations

import email.utils
import json
import ssl
import time
from dataclasses import dataclass, field
from typing import Any

import httpcore
import httpx

from connectors.errors import RejectedError, TransientError, UnknownOutcomeError

CONNECT_TIMEOUT = 5.0
READ_TIMEOUT = 30.0

_client: httpx.Client | None = None


class PinnedBackend(httpcore.SyncBackend):
    """Connects to the address the egress check approved for the host, never a fresh DNS answer.
    TLS still verifies the certificate against the host name (httpcore passes it as SNI)."""

    def connect_tcp(self, host: str, port: int, *args: Any, **kwargs: Any) -> httpcore.NetworkStream:
        from connectors.egress import DestinationRefused, connect_address

        try:
            address = connect_address(host, port)
        except DestinationRefused as exc:
            raise httpcore.ConnectError(str(exc)) from exc
        return super().connect_tcp(address, port, *args, **kwargs)


class FixedAddressBackend(httpcore.SyncBackend):
    """Connects to one vetted address for one host and port, whatever DNS answers by then (DNS
    rebinding). The request keeps the host name: the Host header, TLS SNI and the certificate's
    host name check all use it (httpcore passes it as server_hostname)."""

    def __init__(self, host: str, port: int, address: str) -> None:
        self.host, self.port, self.address = host.lower(), port, address

    def connect_tcp(self, host: str, port: int, *args: Any, **kwargs: Any) -> httpcore.NetworkStream:
        if (host.lower(), port) != (self.host, self.port):
            raise httpcore.ConnectError(f"not connecting to {host}:{port}: only {self.host}:{self.port} was checked")
        return super().connect_tcp(self.address, port, *args, **kwargs)


def pinned_client(url: str, address: str, *, timeout: float, verify: ssl.SSLContext | bool = True) -> httpx.Client:
    """A one-off client for `url` that connects to `address` only (one the egress check vetted),
    follows no redirect and ignores proxy variables (a proxy would resolve the name itself).
    `verify` is for tests that bring their own certificate authority."""
    target = httpx.URL(url)
    port = target.port or (443 if target.scheme == "https" else 80)
    transport = httpx.HTTPTransport(verify=verify)
    transport._pool._network_backend = FixedAddressBackend(target.host, port, address)
    return httpx.Client(transport=transport, follow_redirects=False, timeout=timeout, trust_env=False)


def _get_client() -> httpx.Client:
    global _client
    if _client is None:
        limits = httpx.Limits(max_connections=20, max_keepalive_connections=10)
        transport = httpx.HTTPTransport(limits=limits)
        # httpx does not take a network backend; its pool does (covered by tests/test_egress_security.py).
        transport._pool._network_backend = PinnedBackend()
        _client = httpx.Client(
            transport=transport,
            follow_redirects=False,
            timeout=httpx.Timeout(READ_TIMEOUT, connect=CONNECT_TIMEOUT),
        )
    return _client


def reset_client() -> None:
    """Drop pooled connections (after fork, or in tests)."""
    global _client
    if _client is not None:
        _client.close()
    _client = None


@dataclass
class HttpResult:
    status: int
    body: Any
    headers: dict[str, str] = field(default_factory=dict)
    elapsed_ms: int = 0
    # The whole answer when it is not JSON (`body` keeps its first 2,000 characters for messages):
    # an XML document such as OData's $metadata.
    text: str = ""


def parse_retry_after(value: str | None) -> float | None:
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        parsed = email.utils.parsedate_to_datetime(value)
        return max(0.0, parsed.timestamp() - time.time()) if parsed else None


def _body(response: httpx.Response) -> Any:
    if not response.content:
        return None
    if response.headers.get("content-type", "").startswith("multipart/"):
        return response.text  # an OData $batch answer: its caller parses every part
    try:
        return response.json()
    except ValueError:
        return response.text[:2000]


def vendor_message(body: Any) -> str:
    """The human part of a vendor's error body, whatever its shape."""
    if isinstance(body, dict):
        for key in ("message", "error_description", "detail", "title", "error"):
            value = body.get(key)
            if isinstance(value, str) and value:
                return value
            if isinstance(value, dict):
                return vendor_message(value)
        return json.dumps(body)[:500]
    if isinstance(body, list) and body:
        return vendor_message(body[0])
    return str(body or "")[:500]


def request(
    method: str,
    url: str,
    *,
    json: Any = None,
    data: dict[str, str] | None = None,
    content: bytes | None = None,
    headers: dict[str, str] | None = None,
    params: dict[str, Any] | None = None,
    timeout: float | None = None,
    accept_statuses: tuple[int, ...] = (),
) -> HttpResult:
    """Send one request. 2xx and `accept_statuses` come back; everything else raises.

    `content` is a body sent as it is (an OData $batch's multipart body), with its own Content-Type header.
    A write whose fate we cannot know (timeout after sending, reset, 5xx) raises
    UnknownOutcomeError, so the engine looks the object up before writing it again.
    """
    is_write = method.upper() not in {"GET", "HEAD", "OPTIONS"}
    started = time.monotonic()
    try:
        response = _get_client().request(
            method,
            url,
            json=json,
            data=data,
            content=content,
            headers=headers,
            params=params,
            timeout=timeout or httpx.USE_CLIENT_DEFAULT,
        )
    except (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout) as exc:
        raise TransientError(f"could not connect to {httpx.URL(url).host}: {exc.__class__.__name__}") from exc
    except (httpx.ReadTimeout, httpx.WriteTimeout) as exc:
        cls = UnknownOutcomeError if is_write else TransientError
        raise cls(f"no answer from {httpx.URL(url).host} in time") from exc
    except (httpx.RemoteProtocolError, httpx.ReadError, httpx.WriteError) as exc:
        cls = UnknownOutcomeError if is_write else TransientError
        raise cls(f"connection to {httpx.URL(url).host} broke before the answer: {exc}") from exc
    elapsed_ms = int((time.monotonic() - started) * 1000)
    body = _body(response)
    result = HttpResult(
        status=response.status_code,
        body=body,
        headers=dict(response.headers),
        elapsed_ms=elapsed_ms,
        text=response.text if isinstance(body, str) else "",
    )
    status = response.status_code
    if 200 <= status < 300 or status in accept_statuses:
        return result
    if status == 429:
        raise TransientError(
            "the target is rate limiting us (429)",
            retry_after=parse_retry_after(response.headers.get("retry-after")),
            http_status=status,
            response=body,
        )
    if status >= 500:
        cls = UnknownOutcomeError if is_write else TransientError
        error = cls(f"the target failed with {status}", http_status=status, response=body)
        if status == 503:
            # "Unavailable, come back then": honoured like a 429's (the limiter pauses on it).
            error.retry_after = parse_retry_after(response.headers.get("retry-after"))
        raise error
    if 300 <= status < 400:
        raise RejectedError(f"the target redirected ({status}); redirects are not followed", http_status=status)
    if status in (401, 403):
        raise RejectedError(
            f"the target refused our credentials ({status}); check the connection's credentials",
            http_status=status,
            response=body,
        )
    raise RejectedError(
        f"the target rejected the request ({status}): {vendor_message(body)}", http_status=status, response=body
    )
