"""How many upserts a second the Business Central sandbox takes (a benchmark, not a test).

    .venv/bin/python bench/sandbox_businesscentral.py [--url http://127.0.0.1:8794] [--count 2000] [--threads 8]

Without --url it starts its own sandbox on a free port with a throwaway state directory. An
"upsert" is what the connector does for a key BC cannot upsert natively: a $filter lookup by
number, then a POST (new key) or a PATCH with If-Match (known key). Half the keys are written
twice, so the run mixes creates and updates.
"""

from __future__ import annotations

import argparse
import socket
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parent.parent
COMPANY = "5d2f7c8e-0000-4a1b-9c00-000000000001"
API = f"/v2.0/sandbox-tenant/production/api/v2.0/companies({COMPANY})"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_sandbox(state_dir: str) -> tuple[subprocess.Popen[bytes], str]:
    port = free_port()
    # The sandbox needs nothing of pscsync (no settings, no database): run its module directly.
    code = "import sys; from pathlib import Path; from connectors.sandboxes.businesscentral import serve; "
    code += "serve(port=int(sys.argv[1]), state_dir=Path(sys.argv[2]))"
    process = subprocess.Popen(
        [sys.executable, "-c", code, str(port), state_dir],
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            return process, f"http://127.0.0.1:{port}"
        except OSError:
            time.sleep(0.1)
    process.kill()
    raise SystemExit("the sandbox did not start")


def token(url: str) -> str:
    form = {
        "grant_type": "client_credentials",
        "client_id": "sandbox-client",
        "client_secret": "sandbox-secret",
        "scope": "https://api.businesscentral.dynamics.com/.default",
    }
    return httpx.post(f"{url}/sandbox-tenant/oauth2/v2.0/token", data=form).raise_for_status().json()["access_token"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", default="")
    parser.add_argument("--count", type=int, default=2000)
    parser.add_argument("--threads", type=int, default=8)
    args = parser.parse_args()
    process = None
    with tempfile.TemporaryDirectory() as state_dir:
        url = args.url
        if not url:
            process, url = start_sandbox(state_dir)
        try:
            httpx.post(f"{url}/_sandbox/reset").raise_for_status()
            headers = {"Authorization": f"Bearer {token(url)}"}
            client = httpx.Client(base_url=url, headers=headers, timeout=30, limits=httpx.Limits(max_connections=64))

            def upsert(n: int) -> int:
                number = f"B{n % (args.count // 2):06d}"
                found = client.get(f"{API}/customers", params={"$filter": f"number eq '{number}'"}).json()["value"]
                body = {"number": number, "displayName": f"Bench customer {n}"}
                if not found:
                    answer = client.post(f"{API}/customers", json=body)
                    if answer.status_code == 400:  # another thread created it first: update instead
                        found = client.get(f"{API}/customers", params={"$filter": f"number eq '{number}'"}).json()
                        found = found["value"]
                    else:
                        return answer.status_code
                record = found[0]
                patch = {"displayName": body["displayName"]}
                answer = client.patch(f"{API}/customers({record['id']})", json=patch, headers={"If-Match": "*"})
                return answer.status_code

            started = time.perf_counter()
            with ThreadPoolExecutor(max_workers=args.threads) as pool:
                statuses = list(pool.map(upsert, range(args.count)))
            elapsed = time.perf_counter() - started
            failed = [s for s in statuses if s not in (200, 201)]
            print(
                f"{args.count} upserts (lookup + create/update) over {args.threads} threads in {elapsed:.2f} s: "
                f"{args.count / elapsed:.0f} upserts/s ({len(failed)} failed)"
            )
        finally:
            if process is not None:
                process.terminate()
                process.wait(timeout=10)


if __name__ == "__main__":
    main()
