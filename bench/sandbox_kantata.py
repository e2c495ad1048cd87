"""How many upserts per second the Kantata sandbox takes (a benchmark, not a test).

An upsert is what the connector does: look the project up by its external reference, then create
it (with the reference) or update it. Two rounds over the same keys: the first creates, the second
updates. Starts its own sandbox on a free port with a throw-away store, unless --url is given.

    .venv/bin/python bench/sandbox_kantata.py [--upserts 2000] [--threads 8] [--url http://127.0.0.1:8792]
"""

from __future__ import annotations

import argparse
import socket
import subprocess
import sys
import tempfile
import threading
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
            httpx.get(f"{url}/_sandbox/journal?since=999999999", timeout=1)
            return
        except httpx.HTTPError:
            time.sleep(0.1)
    raise SystemExit(f"the sandbox at {url} did not start")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--upserts", type=int, default=2000)
    parser.add_argument("--threads", type=int, default=8)
    parser.add_argument("--url", default="")
    args = parser.parse_args()

    process = None
    url = args.url
    if not url:
        port = free_port()
        state = tempfile.mkdtemp(prefix="kantata-bench-")
        process = subprocess.Popen(
            [sys.executable, str(ROOT / "manage.py"), "sandbox", "kantata", "--port", str(port), "--state-dir", state],
            cwd=ROOT,
            stdout=subprocess.DEVNULL,
        )
        url = f"http://127.0.0.1:{port}"
    try:
        wait_for(url)
        httpx.post(f"{url}/_sandbox/reset").raise_for_status()
        token = httpx.post(
            f"{url}/oauth/token",
            json={"grant_type": "client_credentials", "client_id": "sandbox-client", "client_secret": "sandbox-secret"},
        ).json()["access_token"]
        local = threading.local()

        def client() -> httpx.Client:
            if not hasattr(local, "client"):
                local.client = httpx.Client(base_url=f"{url}/api/v1", headers={"Authorization": f"Bearer {token}"})
            return local.client

        def upsert(n: int, title: str) -> bool:
            key = f"OPP-{n:06}"
            found = client().get(
                "/workspaces",
                params={"external_reference_service_name": "pscsync", "external_reference_service_model_ref": key},
            )
            found.raise_for_status()
            ids = [r["id"] for r in found.json()["results"]]
            fields = {"title": f"{title} {n}", "price": 1_000_000 + n, "currency": "USD"}
            if ids:
                client().put(f"/workspaces/{ids[0]}", json={"workspace": fields}).raise_for_status()
                return False
            reference = {"service_name": "pscsync", "service_model": "workspace", "service_model_ref": key}
            client().post(
                "/workspaces", json={"workspace": {**fields, "external_reference": reference}}
            ).raise_for_status()
            return True

        for label, title in (("create", "Project"), ("update", "Project renamed")):
            started = time.monotonic()
            with ThreadPoolExecutor(args.threads) as pool:
                created = list(pool.map(lambda n, t=title: upsert(n, t), range(args.upserts)))
            seconds = time.monotonic() - started
            print(
                f"{label}: {args.upserts} upserts over {args.threads} threads in {seconds:.2f} s = "
                f"{args.upserts / seconds:.0f} upserts/s ({sum(created)} created)"
            )
        creates = httpx.get(f"{url}/_sandbox/journal").json()["creates_by_key"]
        print(f"keys created more than once: {sum(1 for c in creates.values() if c > 1)}")
    finally:
        if process is not None:
            process.terminate()
            process.wait(timeout=15)


if __name__ == "__main__":
    main()
