"""T25: connector base URLs that would reach our own network are refused at save and at call
time, and the HTTP client never connects anywhere but the address the check approved.

No test here sends a packet anywhere: connections are recorded by a stand-in network backend.
"""

from __future__ import annotations

import httpcore
import httpx
import pytest

from connectors import egress, http
from connectors.egress import DestinationRefused, check_destination
from connectors.errors import RejectedError, TransientError

PUBLIC = "151.101.1.69"


@pytest.fixture
def connections(monkeypatch):
    """Every TCP connection the pinned client tries: (address, port). None are made."""
    tried: list[tuple[str, int]] = []

    def record(self, host, port, *args, **kwargs):
        tried.append((host, port))
        raise httpcore.ConnectError("recorded, not connected (test)")

    monkeypatch.setattr(httpcore.SyncBackend, "connect_tcp", record)
    monkeypatch.setattr(egress, "_approved", {})
    monkeypatch.setattr(egress, "_cache", {})
    http.reset_client()
    yield tried
    http.reset_client()


@pytest.fixture
def dns(monkeypatch):
    """A DNS whose answers the test sets: name -> addresses."""
    answers: dict[str, list[str]] = {}

    def resolve(host: str, port: int) -> list[str]:
        if host in answers:
            return answers[host]
        import ipaddress

        try:
            return [str(ipaddress.ip_address(host.strip("[]")))]
        except ValueError:
            pass
        try:  # numeric forms such as 2130706433, as the C library reads them
            import socket

            return [socket.inet_ntoa(socket.inet_aton(host))]
        except OSError:
            raise DestinationRefused(f"the host {host} cannot be resolved") from None

    monkeypatch.setattr(egress, "_resolve", resolve)
    return answers


@pytest.mark.parametrize(
    ("url", "vendor", "sandbox", "reason"),
    [
        ("http://169.254.169.254/latest/meta-data/", "kantata", False, "https"),
        ("https://169.254.169.254/latest/meta-data/", "kantata", False, "link-local"),
        ("https://127.0.0.1/", "kantata", False, "loopback"),
        ("https://[::ffff:10.0.0.5]/", "kantata", False, "private"),
        ("https://[::ffff:127.0.0.1]/", "kantata", False, "loopback"),
        ("https://2130706433/", "kantata", False, "loopback"),  # 127.0.0.1 written as one number
        ("https://0x7f.1/", "kantata", False, "loopback"),
        ("https://100.64.1.1/", "kantata", False, "carrier-grade NAT"),
        ("https://[fd00::1]/", "kantata", False, "private"),
        ("https://evil.example.com/", "kantata", False, "not a kantata API host"),
        ("https://user:pass@api.mavenlink.com/", "kantata", False, "user name or password"),
        ("https://api.mavenlink.com:6379/", "kantata", False, "port 443"),
        ("https://10.0.0.5/", "kantata", True, "private"),  # sandbox: loopback only, never private
        ("https://16843009/", "kantata", False, "not a number"),  # 1.1.1.1, public but obfuscated
    ],
)
def test_t25_unsafe_destinations_are_refused(dns, connections, url, vendor, sandbox, reason) -> None:
    dns["api.mavenlink.com"] = [PUBLIC]
    dns["evil.example.com"] = [PUBLIC]
    with pytest.raises(DestinationRefused, match=reason):
        check_destination(url, vendor=vendor, is_sandbox=sandbox)
    assert connections == []


def test_t25_an_allowlisted_host_that_redirects_to_a_private_address_is_not_followed(monkeypatch) -> None:
    seen: list[str] = []

    def vendor(request: httpx.Request) -> httpx.Response:
        seen.append(str(request.url))
        return httpx.Response(302, headers={"Location": "http://10.0.0.5/admin"})

    monkeypatch.setattr(http, "_client", httpx.Client(transport=httpx.MockTransport(vendor), follow_redirects=False))
    try:
        with pytest.raises(RejectedError, match="redirects are not followed"):
            http.request("GET", "https://api.mavenlink.com/api/v1/workspaces")
    finally:
        http._client = None
    assert seen == ["https://api.mavenlink.com/api/v1/workspaces"]


def test_t25_the_client_really_is_configured_not_to_follow_redirects() -> None:
    http.reset_client()
    client = http._get_client()
    assert client.follow_redirects is False
    assert client.timeout.connect == http.CONNECT_TIMEOUT and client.timeout.read == http.READ_TIMEOUT
    assert isinstance(client._transport._pool._network_backend, http.PinnedBackend)
    http.reset_client()


def test_t25_a_name_that_rebinds_to_a_private_address_is_not_reached(dns, connections) -> None:
    """Checked while the name pointed at a public address; it now answers 10.0.0.5. The client
    connects to the address that was checked, never to the new answer."""
    host = "1234567.suitetalk.api.netsuite.com"
    dns[host] = [PUBLIC]
    check_destination(f"https://{host}/services/rest", vendor="netsuite", is_sandbox=False)
    dns[host] = ["10.0.0.5"]  # rebinding
    with pytest.raises(TransientError):
        http.request("GET", f"https://{host}/services/rest")
    assert connections == [(PUBLIC, 443)]
    # Once the approval has expired, the next check sees the private answer and refuses.
    egress._approved.clear()
    with pytest.raises(DestinationRefused, match="private"):
        check_destination(f"https://{host}/services/rest", vendor="netsuite", is_sandbox=False)
    with pytest.raises(TransientError):  # and the client alone refuses too
        http.request("GET", f"https://{host}/services/rest")
    assert connections == [(PUBLIC, 443)]


@pytest.mark.django_db
def test_t25_unsafe_addresses_are_refused_at_call_time_with_no_connection(echo_connection, dns, connections) -> None:
    """A connection saved as safe and changed behind the form's back (or whose DNS changed)."""
    from connectors.models import Connection
    from connectors.registry import connector_for

    for url in ("https://169.254.169.254/", "https://[::ffff:10.0.0.5]/", "https://user:pw@127.0.0.1/"):
        Connection.objects.filter(pk=echo_connection.pk).update(base_url=url, is_sandbox=False)
        echo_connection.refresh_from_db()
        with pytest.raises(RejectedError):
            connector_for(echo_connection).call("GET", echo_connection.base_url)
    assert connections == []
