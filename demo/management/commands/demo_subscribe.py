"""Point the demo firm's vendor sandboxes at pscsync's webhooks: the Salesforce org (CRM and
Certinia) pushes its change events, Business Central notifies on sales invoices. Kantata and
NetSuite are polled by beat. Safe to run again (the sandbox replaces a subscriber of the same URL)."""

from __future__ import annotations

import time
from typing import Any

import httpx
from django.core.management.base import BaseCommand, CommandError

from connectors.models import Connection
from demo.firm import firm_subscriptions_register

SLUGS = ("salesforce", "certinia-us", "kantata-uk", "netsuite-us", "businesscentral-uk")


class Command(BaseCommand):
    help = "Register the demo sandboxes' change notifications with pscsync's webhooks."

    def add_arguments(self, parser: Any) -> None:
        parser.add_argument("--web", default="http://127.0.0.1:8000", help="pscsync's URL as the sandboxes reach it")
        parser.add_argument("--wait", type=float, default=30.0, help="seconds to wait for web and sandboxes")

    def handle(self, *args: Any, web: str, wait: float, **opts: Any) -> None:
        connections = {c.slug: c for c in Connection.objects.filter(slug__in=SLUGS)}
        if "salesforce" not in connections:
            raise CommandError("the demo firm is not seeded: run demo_seed first")
        deadline = time.monotonic() + wait
        while True:
            try:
                # Salesforce replaces nothing by itself: clear our earlier subscribers first.
                for slug in ("salesforce", "certinia-us"):
                    base = connections[slug].base_url.rstrip("/")
                    httpx.delete(f"{base}/_sandbox/subscribers", timeout=5)
                done = firm_subscriptions_register(connections=connections, web_url=web)
                break
            except (httpx.HTTPError, OSError) as exc:
                if time.monotonic() > deadline:
                    raise CommandError(f"could not register the subscriptions: {exc}") from None
                time.sleep(1)
        for line in done:
            self.stdout.write(f"subscribed: {line}")
        # The sandboxes are up: read the ERPs' exchange rates now (beat repeats it every few hours),
        # so the firm's figures convert from its first day.
        from dashboards.tasks import fx_rates_read_task

        fx_rates_read_task.delay()
        self.stdout.write("exchange rates: reading from the ERPs")
