"""The demo firm's systems: Salesforce for every entity, the US entity on Certinia + NetSuite,
the UK entity (acquired) on Kantata + Business Central and, where the firm has one, the German
entity on its own Kantata account + Dynamics 365 Finance (legal entity demf), each pointing at its
sandbox, with the shipped mappings published. Used by demo_seed and by the flow tests."""

from __future__ import annotations

import secrets
from pathlib import Path
from typing import Any

from django.conf import settings

from connectors.models import Connection
from pscsync.flows.mapping_data import shipped_mappings_install
from pscsync.models import LegalEntity
from pscsync.services import connection_save, new_webhook_secret

# The documented demo credential of the NetSuite sandbox, read as a file (never imported).
NETSUITE_DEMO_KEY = Path(settings.BASE_DIR) / "connectors" / "sandboxes" / "netsuite" / "demo-private-key.pem"
BC_UK_COMPANY = "5d2f7c8e-0000-4a1b-9c00-000000000001"
SANDBOX_OF_VENDOR = {
    "salesforce": "salesforce",
    "certinia": "salesforce",
    "kantata": "kantata",
    "netsuite": "netsuite",
    "businesscentral": "businesscentral",
    "dynamicsfinance": "dynamicsfinance",
}
# A connection on a sandbox of its own rather than its vendor's: the German Kantata account.
SANDBOX_OF_CONNECTION = {"kantata-de": "kantata-de"}


def firm_connections_save(
    *, us: LegalEntity, uk: LegalEntity, sandbox_urls: dict[str, str], de: LegalEntity | None = None
) -> dict[str, Connection]:
    """Create or update the firm's connections (five, seven with the German entity `de`); keep
    credentials that exist (their webhook secrets may already be in use). Returns them by slug."""
    client = {"client_id": "sandbox-client", "client_secret": "sandbox-secret"}
    systems: list[tuple[str, str, str, str, list[LegalEntity], str, str, dict[str, Any]]] = [
        (
            "salesforce",
            "Salesforce (CRM)",
            "crm",
            "salesforce",
            [us, uk, *([de] if de else [])],
            "webhook",
            "v62.0",
            {**client, "webhook_secrets": [{"secret": new_webhook_secret()}]},
        ),
        (
            "certinia-us",
            "Certinia PSA (US)",
            "psa",
            "certinia",
            [us],
            "webhook",
            "v62.0",
            {**client, "webhook_secrets": [{"secret": new_webhook_secret()}]},
        ),
        ("kantata-uk", "Kantata OX (UK)", "psa", "kantata", [uk], "poll", "v1", client),
        (
            "netsuite-us",
            "NetSuite (US)",
            "erp",
            "netsuite",
            [us],
            "poll",
            "v1",
            {
                "account_id": "1234567_SB1",
                "client_id": "sandbox-client",
                "certificate_id": "sandbox-certificate",
                "private_key_pem": NETSUITE_DEMO_KEY.read_text(),
            },
        ),
        (
            "businesscentral-uk",
            "Business Central (UK)",
            "erp",
            "businesscentral",
            [uk],
            "webhook",
            "v2.0",
            {
                "tenant": "sandbox-tenant",
                "environment": "production",
                **client,
                "company_id": BC_UK_COMPANY,
                "client_state": secrets.token_urlsafe(24),
            },
        ),
    ]
    if de is not None:
        # The German entity's own Kantata account, polled like the UK's (its invoices are German
        # billing batches only), and D365 Finance's legal entity demf, polled for posted invoices
        # and payments (its business events are not wired).
        systems += [
            ("kantata-de", "Kantata OX (DE)", "psa", "kantata", [de], "poll", "v1", client),
            (
                "dynamicsfinance-de",
                "Dynamics 365 Finance (DE)",
                "erp",
                "dynamicsfinance",
                [de],
                "poll",
                "",
                {"tenant": "sandbox-tenant", **client, "data_area_id": "demf"},
            ),
        ]
    saved = {}
    for slug, name, kind, vendor, entities, intake, version, credentials in systems:
        existing = Connection.objects.filter(slug=slug).first()
        connection = connection_save(
            slug=slug,
            name=name,
            kind=kind,
            vendor=vendor,
            base_url=sandbox_urls[SANDBOX_OF_CONNECTION.get(slug) or SANDBOX_OF_VENDOR[vendor]],
            entities=entities,
            intake=intake,
            api_version=version,
            is_sandbox=True,
            credentials=None if existing and existing.has_credentials else credentials,
        )
        shipped_mappings_install(connection)
        saved[slug] = connection
    return saved


def firm_subscriptions_register(*, connections: dict[str, Connection], web_url: str) -> list[str]:
    """Point the vendors' change notifications at pscsync's webhooks: the Salesforce org pushes
    its change events to the CRM and the PSA connection (each keeps what concerns it), Business
    Central notifies on sales invoices (a payment changes its invoice). Both Kantata accounts,
    NetSuite and Dynamics 365 Finance are polled by beat.
    Returns what was registered, for the demo's start-up message."""
    import httpx

    from connectors.businesscentral import BusinessCentralConnector
    from connectors.registry import connector_of

    done = []
    for slug in ("salesforce", "certinia-us"):
        connection = connections.get(slug)
        if connection is None:
            continue
        secret = connection.credentials()["webhook_secrets"][0]["secret"]
        url = f"{web_url.rstrip('/')}/webhooks/{connection.slug}/"
        answer = httpx.post(
            f"{connection.base_url.rstrip('/')}/_sandbox/subscribers",
            json={"url": url, "secret": secret, "channel": "/data/ChangeEvents"},
            timeout=10,
        )
        answer.raise_for_status()
        done.append(f"{connection.name} -> {url}")
    bc = connections.get("businesscentral-uk")
    if bc is not None:
        connector = connector_of(bc, BusinessCentralConnector)
        # BC refuses subscriptions to customerPayments; a payment shows as its invoice changing.
        for entity in ("salesInvoices",):
            url = f"{web_url.rstrip('/')}/webhooks/{bc.slug}/"
            connector.subscribe(entity=entity, notification_url=url)
            done.append(f"{bc.name} {entity} -> {url}")
    return done
