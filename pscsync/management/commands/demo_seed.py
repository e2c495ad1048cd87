"""Seed the demo firm's people, legal entities and connections. Safe to run again."""

from __future__ import annotations

import os
import secrets
from pathlib import Path
from typing import Any

from django.conf import settings
from django.core.management.base import BaseCommand
from django.db import transaction

from connectors.models import Connection
from connectors.sandboxes import SANDBOXES
from pscsync.models import LegalEntity
from pscsync.services import connection_save, new_webhook_secret, user_provision

DEMO_USERS = [("viewer", "viewer"), ("operator", "operator"), ("admin", "admin")]
# The documented demo credential of the NetSuite sandbox, read as a file (never imported).
NETSUITE_DEMO_KEY = Path(settings.BASE_DIR) / "connectors" / "sandboxes" / "netsuite" / "demo-private-key.pem"
BC_UK_COMPANY = "5d2f7c8e-0000-4a1b-9c00-000000000001"


def _sandbox_url(name: str) -> str:
    return f"http://127.0.0.1:{SANDBOXES[name][1]}"


class Command(BaseCommand):
    help = "Create the demo users (viewer, operator, admin), legal entities and the echo connection."

    def add_arguments(self, parser: Any) -> None:
        parser.add_argument("--echo-url", default="http://127.0.0.1:8790")
        parser.add_argument("--echo-token", default="sandbox-token")

    @transaction.atomic
    def handle(self, *args: Any, echo_url: str, echo_token: str, **opts: Any) -> None:
        password = os.environ.get("DEMO_PASSWORD", "")
        if len(password) < 12:
            raise SystemExit("DEMO_PASSWORD must be set to at least 12 characters")
        us, _ = LegalEntity.objects.update_or_create(
            code="us", defaults={"name": "Northwind Consulting Inc.", "currency": "USD", "country": "US"}
        )
        uk, _ = LegalEntity.objects.update_or_create(
            code="uk", defaults={"name": "Northwind Consulting Ltd.", "currency": "GBP", "country": "GB"}
        )
        for username, role in DEMO_USERS:
            user_provision(username=username, password=password, role=role, all_entities=True)
        existing = Connection.objects.filter(slug="echo-demo").first()
        credentials = existing.credentials() if existing else {}
        secret = (credentials.get("webhook_secrets") or [{"secret": new_webhook_secret()}])[0]["secret"]
        connection_save(
            slug="echo-demo",
            name="Engine self-test target",
            kind=Connection.Kind.TEST,
            vendor=Connection.Vendor.ECHO,
            base_url=echo_url,
            entities=[us, uk],
            credentials={"token": echo_token, "webhook_secrets": [{"secret": secret}]},
            is_sandbox=True,
        )
        self._vendor_connections(us, uk)
        self.stdout.write("demo firm seeded")

    def _vendor_connections(self, us: LegalEntity, uk: LegalEntity) -> None:
        """The firm's systems, each pointing at its sandbox: Salesforce for both entities, the
        US entity on Certinia + NetSuite, the UK entity (acquired) on Kantata + Business Central."""
        client = {"client_id": "sandbox-client", "client_secret": "sandbox-secret"}
        systems = [
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
        sandbox_of = {
            "salesforce": "salesforce",
            "certinia": "salesforce",
            "kantata": "kantata",
            "netsuite": "netsuite",
            "businesscentral": "businesscentral",
        }
        for slug, name, kind, vendor, entities, intake, version, credentials in systems:
            existing = Connection.objects.filter(slug=slug).first()
            connection_save(
                slug=slug,
                name=name,
                kind=kind,
                vendor=vendor,
                base_url=_sandbox_url(sandbox_of[vendor]),
                entities=entities,
                intake=intake,
                api_version=version,
                is_sandbox=True,
                # Keep credentials that exist (their webhook secrets are already in use).
                credentials=None if existing and existing.has_credentials else credentials,
            )
