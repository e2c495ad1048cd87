"""One worker process for the limiter tests: calls the echo target through the real connector
(`Connector.call`, where the limiter sits) and prints, as one JSON line, what the limiter granted.

    python -m tests.limiter_worker <base_url> <token> <connection_id> <per_minute> <name> <calls> <start_at> [<parties>]

The connection is built in memory with a fixed id, as a worker would load it: the limiter keys
by that id, so both processes share one connection's limits without a shared database row.
`start_at` (time.time()) is when to start; with `parties`, the processes also wait for each
other at a barrier in Redis first (setting Django up may take longer than planned on a busy
machine), so their calls really overlap.
"""

from __future__ import annotations

import json
import os
import sys
import time


def main(argv: list[str]) -> None:
    base_url, token, connection_id, per_minute, name, calls, start_at = argv[:7]
    parties = int(argv[7]) if len(argv) > 7 else 1
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "pscsync.settings")
    import django

    django.setup()
    from connectors import limiter
    from connectors.echo import EchoConnector
    from connectors.errors import ConnectorError
    from connectors.models import Connection

    connection = Connection(
        pk=int(connection_id),
        slug=f"limiter-{connection_id}",
        name="Echo under a limit",
        kind=Connection.Kind.TEST,
        vendor=Connection.Vendor.ECHO,
        base_url=base_url,
        rate_limit_per_minute=int(per_minute),
        is_sandbox=True,
    )
    connection.set_credentials({"token": token})
    connector = EchoConnector(connection)
    grants: list[int] = []
    # Observe the grants the real limiter makes (Redis time of each), without changing them.
    real_acquire = limiter.acquire

    def observed(**kwargs):  # type: ignore[no-untyped-def]
        slot = real_acquire(**kwargs)
        grants.append(slot.granted_at_ms)
        return slot

    limiter.acquire = observed  # type: ignore[assignment]
    if parties > 1:
        import redis
        from django.conf import settings

        barrier = redis.Redis.from_url(settings.LIMITER_REDIS_URL)
        key = f"test:limiter:barrier:{connection_id}:{start_at}"  # one barrier per run
        barrier.incr(key)
        barrier.expire(key, 120)
        while int(barrier.get(key) or 0) < parties:
            time.sleep(0.01)
    time.sleep(max(0.0, float(start_at) - time.time()))
    errors = []
    asked_at = time.time()
    for n in range(int(calls)):
        try:
            connector.send("PUT", f"/records/limit/{name}-{n}", json={"n": n})
        except ConnectorError as exc:
            errors.append(f"{exc.__class__.__name__}: {exc.message}")
    print(json.dumps({"asked_at": asked_at, "grants": grants, "errors": errors}))


if __name__ == "__main__":
    main(sys.argv[1:])
