"""The echo target with transient vendor errors, for bench/ingest's peer scenario (issue 18).

The echo target itself (connectors/sandboxes/echo.py) injects faults by count ("the next 3
writes matching INV-"), which cannot give "5% of writes" over a run. This wrapper answers a
transient 503 for a fixed share of writes before they are applied, and decides which ones
deterministically: the n-th PUT to a record fails when a hash of (its entity, the number that
ends its key, n) falls below the rate. The bench's keys differ between runs only by a run tag
before that number, so the same record meets the same answers in every run, whatever order the
workers write in, and runs are comparable; a retried write (n + 1) is decided afresh, as a
vendor's next try would be.

Extra paths (no token, like the target's own /_* paths):
  POST /_error_rate  {"rate": 0.05}   set the share of writes answered 503 (0 turns it off)
  GET  /_error_stats                  {"rate": r, "puts": n, "errors": e} since the last reset
POST /_reset also forgets the counts (not the rate).

  .venv/bin/python bench/echo_errors.py --port 8790 --token bench-echo-token --rate 0.05
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
import threading
from http.server import ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run as a script from bench/

from connectors.sandboxes.echo import EchoState, make_handler


def fails(path: str, attempt: int, rate: float) -> bool:
    """Whether the attempt-th PUT (1-based) to `path` is answered 503 at this error rate."""
    digest = hashlib.sha256(f"{record_identity(path)}#{attempt}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64 < rate


def record_identity(path: str) -> str:
    """'/records/invoice/INV-c-threads8-w1-errors-0-17' -> 'invoice/17': the run tag left out."""
    _, _, entity, key = path.split("/", 3)
    return f"{entity}/{key.rsplit('-', 1)[-1]}"


class ErrorBook:
    def __init__(self, rate: float) -> None:
        self.lock = threading.Lock()
        self.rate = rate
        self.reset()

    def reset(self) -> None:
        self.attempts: dict[str, int] = {}
        self.puts = 0
        self.errors = 0

    def take(self, path: str) -> bool:
        with self.lock:
            attempt = self.attempts.get(path, 0) + 1
            self.attempts[path] = attempt
            self.puts += 1
            failed = fails(path, attempt, self.rate)
            self.errors += failed
            return failed


def make_error_handler(state: EchoState, token: str, book: ErrorBook) -> type:
    base = make_handler(state, token)

    class Handler(base):  # type: ignore[misc,valid-type]
        def do_PUT(self) -> None:
            path = urlparse(self.path).path
            if path.startswith("/records/") and book.take(path):
                # Read the body first: the connection is kept alive for the client's next call.
                length = int(self.headers.get("Content-Length") or 0)
                if length:
                    self.rfile.read(length)
                self._send(503, {"error": "unavailable", "message": "injected transient error"})
                return
            super().do_PUT()

        def do_GET(self) -> None:
            if urlparse(self.path).path == "/_error_stats":
                with book.lock:
                    self._send(200, {"rate": book.rate, "puts": book.puts, "errors": book.errors})
                return
            super().do_GET()

        def do_POST(self) -> None:
            path = urlparse(self.path).path
            if path == "/_error_rate":
                length = int(self.headers.get("Content-Length") or 0)
                body: Any = json.loads(self.rfile.read(length)) if length else {}
                with book.lock:
                    book.rate = float(body.get("rate", 0.0))
                    book.reset()
                self._send(200, {"rate": book.rate})
                return
            if path == "/_reset":
                with book.lock:
                    book.reset()
            super().do_POST()

    return Handler


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="echo target with deterministic transient errors")
    parser.add_argument("--port", type=int, default=8790)
    parser.add_argument("--token", default="sandbox-token")
    parser.add_argument("--rate", type=float, default=0.0, help="share of writes answered 503, e.g. 0.05")
    args = parser.parse_args(argv)
    state = EchoState(None)
    server = ThreadingHTTPServer(("127.0.0.1", args.port), make_error_handler(state, args.token, ErrorBook(args.rate)))
    server.daemon_threads = True
    print(f"echo target (transient errors) listening on http://127.0.0.1:{args.port}", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()


if __name__ == "__main__":
    main()
