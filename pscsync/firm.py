"""The demo firm's systems: Salesforce for both entities, the US entity on Certinia + NetSuite,
the UK entity (acquired) on Kantata + Business Central, each pointing at its sandbox, with the
shipped mappings published. Used by demo_seed and by the flow tests."""

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
}


def firm_connections_save(*, us: LegalEntity, uk: LegalEntity, sandbox_urls: dict[str, str]) -> dict[str, Connection]:
    """Create or update the firm's five connections; keep credentials that exist (their webhook
    secrets may already be in use). Returns them by slug."""
    client = {"client_id": "sandbox-client", "client_secret": "sandbox-secret"}
    systems: list[tuple[str, str, str, str, list[LegalEntity], str, str, dict[str, Any]]] = [
        (
            "salesforce",
            "Salesforce (CRM)",
            "crm",
            "salesforce",
            [us, uk],
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
    saved = {}
    for slug, name, kind, vendor, entities, intake, version, credentials in systems:
        existing = Connection.objects.filter(slug=slug).first()
        connection = connection_save(
            slug=slug,
            name=name,
            kind=kind,
            vendor=vendor,
            base_url=sandbox_urls[SANDBOX_OF_VENDOR[vendor]],
            entities=entities,
            intake=intake,
            api_version=version,
            is_sandbox=True,
            credentials=None if existing and existing.has_credentials else credentials,
        )
        shipped_mappings_install(connection)
        saved[slug] = connection
    return saved
