"""Seed the demo firm's people, legal entities and connections. Safe to run again."""

from __future__ import annotations

import os
from typing import Any

from django.conf import settings
from django.core.management.base import BaseCommand
from django.db import transaction

from connectors.models import Connection
from demo.firm import firm_connections_save
from pscsync.models import LegalEntity
from pscsync.services import connection_save, new_webhook_secret, user_provision

DEMO_USERS = [("viewer", "viewer"), ("operator", "operator"), ("admin", "admin")]


def _sandbox_url(name: str) -> str:
    return settings.SANDBOX_URLS[name]


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
        # The German entity (EUR) runs on its own Kantata account and Dynamics 365 Finance.
        de, _ = LegalEntity.objects.update_or_create(
            code="de", defaults={"name": "Northwind Consulting GmbH", "currency": "EUR", "country": "DE"}
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
        urls = {name: _sandbox_url(name) for name in settings.SANDBOX_URLS}
        firm_connections_save(us=us, uk=uk, de=de, sandbox_urls=urls)
        self.stdout.write("demo firm seeded")
