"""T26: connector secrets stay secret. A canary credential is seeded and then looked for in every
page, error page, log line, export and database dump; keys rotate by re-encryption.

The "swapped ciphertext fails to decrypt" half of T26 is tests/test_records.py
(test_ciphertext_moved_to_another_connection_does_not_decrypt).
"""

from __future__ import annotations

import io
import logging
import secrets

import pytest
from django.core.management import call_command
from django.urls import NoReverseMatch, reverse

from connectors.models import Connection
from pscsync.crypto import CredentialsUnreadable
from pscsync.services import connection_save

NEW_KEY = "t2:" + "bmV3LWtleS1mb3ItY3JlZGVudGlhbHMtMzItYnl0ZXM="


@pytest.fixture
def canary() -> str:
    return "CANARY-" + secrets.token_hex(12)


@pytest.mark.django_db(transaction=True)
def test_t26_the_canary_secret_never_appears_anywhere(
    client, admin, operator, echo_connection, echo, canary, caplog, capsys, monkeypatch
) -> None:
    from pscsync.intake import event_receive
    from pscsync.runner import handoff_run
    from tests.helpers import SECRET, change_body, sign
    from tests.test_access import EXPECTED, _args

    monkeypatch.setattr("pscsync.intake.handoffs_publish", lambda ids, **kw: None)
    monkeypatch.setattr("pscsync.dispatch.handoffs_publish", lambda ids, **kw: None)
    monkeypatch.setattr("pscsync.intake.events_ring", lambda ids, **kw: None)
    credentials = echo_connection.credentials()
    credentials["client_secret"] = canary
    echo_connection.set_credentials(credentials)
    echo_connection.save()
    seen: list[str] = []
    caplog.set_level(logging.DEBUG)

    # Work flows through: a signed webhook, a handoff run against the target (one step refused).
    body = change_body("OPP-CANARY")
    headers = sign(body, msg_id="evt-canary")
    extra = {f"HTTP_{k.upper().replace('-', '_')}": v for k, v in headers.items() if k != "content-type"}
    seen.append(client.post("/webhooks/echo-us/", data=body, content_type="application/json", **extra).content)
    echo.fault(mode="status", status=422, match="INV-OPP-CANARY", count=1)
    from connectors.registry import connector_for

    [change] = connector_for(echo_connection).parse_webhook(event_id="evt-c2", body=change_body("OPP-C2"))
    handoff = event_receive(connection=echo_connection, change=change, headers={}, raw_body="{}").handoff
    handoff_run(handoff_id=handoff.pk, worker="test")

    # Every page of the access matrix, as admin and operator, plus the connection's own pages.
    records = {"us": handoff}
    for user in (admin, operator):
        client.force_login(user)
        for name, (method, _) in EXPECTED.items():
            if name == "webhook":
                continue
            try:
                url = reverse(name, args=_args(name, records))
            except NoReverseMatch:
                url = ""  # a URL this test cannot build (new arguments): the matrix test covers it
            if url:
                response = client.generic(method, url)
                # Exports stream: read them whole, they must not hold the canary either.
                seen.append(b"".join(response.streaming_content) if response.streaming else response.content)
    client.force_login(admin)
    seen.append(client.get(f"/connections/{echo_connection.pk}/").content)
    seen.append(client.post(f"/connections/{echo_connection.pk}/test/").content)

    # The vendor refuses our credentials: the error path, its page and its log lines.
    credentials["token"] = canary
    echo_connection.set_credentials(credentials)
    echo_connection.save()
    seen.append(client.post(f"/connections/{echo_connection.pk}/test/").content)
    # Unreadable credentials (wrong key): the error page.
    Connection.objects.filter(pk=echo_connection.pk).update(credentials_key_id="gone")
    seen.append(client.post(f"/connections/{echo_connection.pk}/test/").content)
    client.raise_request_exception = False
    seen.append(client.get(f"/connections/{echo_connection.pk}/").content)

    # Exports: a full JSON dump of the database (what pg_dump would hold, table by table).
    dump = io.StringIO()
    call_command("dumpdata", stdout=dump)
    out, err = capsys.readouterr()

    places = {
        "pages": b"\n".join(seen).decode(errors="replace"),
        "logs": caplog.text,
        "stdout/stderr": out + err,
        "database dump": dump.getvalue(),
    }
    assert len(seen) > 20 and "OPP-CANARY" in places["database dump"]
    assert "Credentials are set" in places["pages"] and "refused our credentials" in places["pages"]
    for where, text in places.items():
        assert canary not in text, f"the canary secret leaked into {where}"
        assert SECRET not in text, f"the webhook secret leaked into {where}"


@pytest.mark.django_db
def test_t26_rotating_the_key_reencrypts_every_row(entities, settings, canary) -> None:
    old_keys = settings.CREDENTIALS_KEYS
    for slug in ("erp-a", "erp-b", "crm-a"):
        connection_save(
            slug=slug,
            name=slug,
            kind="erp",
            vendor="netsuite",
            base_url="https://example.test",
            entities=[entities["us"]],
            credentials={"client_secret": f"{canary}-{slug}"},
        )
    settings.CREDENTIALS_KEYS = f"{NEW_KEY},{old_keys}"
    out = io.StringIO()
    with pytest.raises(Exception, match="re-encryption needed"):
        call_command("reencrypt_credentials", "--check", stdout=out)
    call_command("reencrypt_credentials", stdout=out)
    assert "re-encrypted 3 connection(s) with key t2" in out.getvalue()
    assert set(Connection.objects.values_list("credentials_key_id", flat=True)) == {"t2"}
    call_command("reencrypt_credentials", "--check", stdout=out)  # nothing left on the old key

    settings.CREDENTIALS_KEYS = NEW_KEY  # the old key retired: every row still decrypts
    for c in Connection.objects.all():
        assert c.credentials() == {"client_secret": f"{canary}-{c.slug}"}
    settings.CREDENTIALS_KEYS = old_keys  # and none decrypts with the old key alone
    for c in Connection.objects.all():
        with pytest.raises(CredentialsUnreadable):
            c.credentials()


@pytest.mark.django_db
def test_t26_reencryption_is_audited_without_the_secret(entities, settings, canary) -> None:
    from pscsync.models import AuditEntry

    connection_save(
        slug="erp-a",
        name="erp-a",
        kind="erp",
        vendor="netsuite",
        base_url="https://example.test",
        entities=[entities["us"]],
        credentials={"client_secret": canary},
    )
    settings.CREDENTIALS_KEYS = f"{NEW_KEY},{settings.CREDENTIALS_KEYS}"
    call_command("reencrypt_credentials", stdout=io.StringIO())
    entry = AuditEntry.objects.get(action="connection.credentials_reencrypted")
    assert entry.before == {"key_id": "t1"} and entry.after == {"key_id": "t2"}
    assert canary not in str(entry.before) + str(entry.after) + entry.comment
