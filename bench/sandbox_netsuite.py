"""How many upserts per second the NetSuite sandbox takes (a benchmark, not a test).

An upsert is what the connector does: `PUT /services/rest/record/v1/customer/eid:<key>` (NetSuite
creates or updates by external id itself). Two rounds over the same keys: the first creates, the
second updates. Signs in with the demo certificate (a real JWT client assertion). Starts its own
sandbox on a free port with a throw-away store, unless --url is given.

    .venv/bin/python bench/sandbox_netsuite.py [--upserts 2000] [--threads 8] [--url http://127.0.0.1:8793]
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
sys.path.insert(0, str(ROOT))

from connectors.sandboxes.netsuite import jws  # noqa: E402 - after the path is set
from connectors.sandboxes.netsuite.keys import (  # noqa: E402
    DEMO_CERTIFICATE_ID,
    DEMO_CLIENT_ID,
    DEMO_PRIVATE_KEY_PEM,
)

TOKEN_PATH = "/services/rest/auth/oauth2/v1/token"  # a URL path


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


def sign_in(url: str) -> str:
    now = int(time.time())
    claims = {
        "iss": DEMO_CLIENT_ID,
        "scope": ["rest_webservices"],
        "aud": url + TOKEN_PATH,
        "iat": now,
        "exp": now + 300,
    }
    assertion = jws.sign(claims, private_key_pem=DEMO_PRIVATE_KEY_PEM, kid=DEMO_CERTIFICATE_ID)
    form = {
        "grant_type": "client_credentials",
        "client_assertion_type": "urn:ietf:params:oauth:client-assertion-type:jwt-bearer",
        "client_assertion": assertion,
    }
    answer = httpx.post(url + TOKEN_PATH, data=form)
    answer.raise_for_status()
    return answer.json()["access_token"]


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
        state = tempfile.mkdtemp(prefix="netsuite-bench-")
        process = subprocess.Popen(
            [sys.executable, str(ROOT / "manage.py"), "sandbox", "netsuite", "--port", str(port), "--state-dir", state],
            cwd=ROOT,
            stdout=subprocess.DEVNULL,
        )
        url = f"http://127.0.0.1:{port}"
    try:
        wait_for(url)
        httpx.post(f"{url}/_sandbox/reset").raise_for_status()
        token = sign_in(url)
        local = threading.local()

        def client() -> httpx.Client:
            if not hasattr(local, "client"):
                local.client = httpx.Client(
                    base_url=f"{url}/services/rest/record/v1", headers={"Authorization": f"Bearer {token}"}
                )
            return local.client

        def upsert(n: int, name: str) -> None:
            fields = {"companyName": f"{name} {n}", "subsidiary": {"id": "3"}, "currency": {"id": "1"}}
            client().put(f"/customer/eid:CUST-{n:06}", json=fields).raise_for_status()

        for label, name in (("create", "Client"), ("update", "Client renamed")):
            started = time.monotonic()
            with ThreadPoolExecutor(args.threads) as pool:
                list(pool.map(lambda n, t=name: upsert(n, t), range(args.upserts)))
            seconds = time.monotonic() - started
            print(
                f"{label}: {args.upserts} upserts over {args.threads} threads in {seconds:.2f} s = "
                f"{args.upserts / seconds:.0f} upserts/s"
            )
        creates = httpx.get(f"{url}/_sandbox/journal").json()["creates_by_key"]
        print(f"customers: {len(creates)}; keys created more than once: {sum(1 for c in creates.values() if c > 1)}")
    finally:
        if process is not None:
            process.terminate()
            process.wait(timeout=15)


if __name__ == "__main__":
    main()
