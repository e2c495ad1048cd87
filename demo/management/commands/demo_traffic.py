"""Keep the demo alive: send signed changes to our own webhook, as a connected system would,
and now and then make the target misbehave so retries and the workbench have something to show."""

from __future__ import annotations

import json
import random
import time
from typing import Any

import httpx
from django.core.management.base import BaseCommand

from connectors.models import Connection
from connectors.signatures import standard_webhook_sign


class Command(BaseCommand):
    help = "Post a stream of signed demo changes to the echo connection's webhook."

    def add_arguments(self, parser: Any) -> None:
        parser.add_argument("--web", default="http://127.0.0.1:8000")
        parser.add_argument("--echo-url", default="http://127.0.0.1:8790")
        parser.add_argument("--every", type=float, default=3.0, help="seconds between changes")
        parser.add_argument("--count", type=int, default=0, help="stop after this many (0: run until stopped)")

    def handle(self, *args: Any, web: str, echo_url: str, every: float, count: int, **opts: Any) -> None:
        connection = Connection.objects.get(slug="echo-demo")
        secret = connection.credentials()["webhook_secrets"][0]["secret"]
        rng = random.Random()
        sent = 0
        versions: dict[str, int] = {}
        while count == 0 or sent < count:
            key = f"OPP-{rng.randint(1000, 1060)}"
            versions[key] = versions.get(key, 0) + 1
            if sent % 9 == 4:
                # A vendor rejection a person must look at.
                httpx.post(f"{echo_url}/_faults", json={"mode": "status", "status": 422, "match": f"INV-{key}"})
            elif sent % 7 == 3:
                # A short outage the engine rides out with retries.
                httpx.post(f"{echo_url}/_faults", json={"mode": "status", "status": 503, "count": 2, "match": key})
            body = json.dumps(
                {
                    "type": "opportunity.closed_won",
                    "key": key,
                    "version": versions[key],
                    "occurred_at": time.strftime("%Y-%m-%dT%H:%M:%S+00:00", time.gmtime()),
                    "legal_entity": rng.choice(["us", "us", "uk"]),
                    "data": {"account": f"Account {key[-2:]}", "amount": f"{rng.randint(20, 400) * 250}.00"},
                }
            ).encode()
            msg_id = f"demo-{time.time_ns()}"
            stamp = int(time.time())
            headers = {
                "webhook-id": msg_id,
                "webhook-timestamp": str(stamp),
                "webhook-signature": standard_webhook_sign(secret=secret, msg_id=msg_id, timestamp=stamp, body=body),
                "content-type": "application/json",
            }
            try:
                httpx.post(f"{web}/webhooks/echo-demo/", content=body, headers=headers, timeout=10)
            except httpx.HTTPError as exc:
                self.stderr.write(f"demo traffic: {exc}")
            sent += 1
            time.sleep(every)
