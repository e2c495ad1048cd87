"""Benchmark (not a test): upserts per second the Salesforce sandbox sustains.

Starts the sandbox on a free port with a fresh state directory, then sends 2000 upserts by
external id (PATCH /sobjects/Account/pscsync_Key__c/<key>) from 8 threads over keep-alive
connections, and prints upserts/s.

    SECRET_KEY=... .venv/bin/python bench/sandbox_salesforce.py [--upserts 2000] [--threads 8]
"""

from __future__ import annotations

import argparse
import os
import socket
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for(url: str) -> None:
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        try:
            httpx.get(url, timeout=1)
            return
        except httpx.TransportError:
            time.sleep(0.1)
    raise SystemExit(f"the sandbox did not start at {url}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--upserts", type=int, default=2000)
    parser.add_argument("--threads", type=int, default=8)
    args = parser.parse_args()
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    env = {"SECRET_KEY": "bench-only-secret-key-not-for-production-use-0123456789", **os.environ}
    with tempfile.TemporaryDirectory() as state:
        server = subprocess.Popen(
            [
                sys.executable,
                str(ROOT / "manage.py"),
                "sandbox",
                "salesforce",
                "--port",
                str(port),
                "--state-dir",
                state,
            ],
            env=env,
            stdout=subprocess.DEVNULL,
        )
        try:
            wait_for(f"{base}/services/data/")
            token = httpx.post(
                f"{base}/services/oauth2/token",
                data={
                    "grant_type": "client_credentials",
                    "client_id": "sandbox-client",
                    "client_secret": "sandbox-secret",
                },
            ).json()["access_token"]
            headers = {"Authorization": f"Bearer {token}"}
            clients = [httpx.Client(base_url=base, headers=headers, timeout=30) for _ in range(args.threads)]

            def upsert(n: int) -> int:
                client = clients[n % args.threads]
                # Every fourth upsert updates an account written before: a realistic mix.
                key = f"BENCH-{n if n % 4 else n // 4}"
                answer = client.patch(
                    f"/services/data/v62.0/sobjects/Account/pscsync_Key__c/{key}",
                    json={"Name": f"Bench client {n}", "Industry": "Consulting", "AnnualRevenue": n},
                )
                return answer.status_code

            started = time.perf_counter()
            with ThreadPoolExecutor(args.threads) as pool:
                statuses = list(pool.map(upsert, range(args.upserts)))
            elapsed = time.perf_counter() - started
            bad = [s for s in statuses if s not in (200, 201)]
            print(
                f"{args.upserts} upserts over {args.threads} threads in {elapsed:.2f} s: "
                f"{args.upserts / elapsed:.0f} upserts/s ({len(bad)} failed)"
            )
        finally:
            server.terminate()
            server.wait(10)


if __name__ == "__main__":
    main()
