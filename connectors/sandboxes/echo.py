"""The echo target: a tiny system of record that the engine's own tests and benchmark write to.

It stands apart from pscsync (standard library only, reached over HTTP only) and counts what
matters to the fault tests on its own side: how many times each key was *created*. A second
create of the same key is impossible by construction (PUT upserts), so the count of creates per
key is the proof that a retried or recovered step adopted instead of writing twice.

Protocol (all JSON; every path but /_* needs "Authorization: Bearer <token>"):
  PUT  /records/<entity>/<key>   create (201) or update (200); answers the record with its id
  GET  /records/<entity>/<key>   the record, or 404
  GET  /changes?after=<n>        change feed for polling intake: {"changes": [...], "next": n}
  POST /_changes                 append a change to the feed (what a user did in this system)
  GET  /_stats                   {"creates": {"<entity>/<key>": n}, "updates": n, "records": n}
  GET  /_calls                   the last 1,000 authorised calls: {"calls": [{"method", "path",
                                 "traceparent"}]} (the W3C trace context each call carried)
  POST /_faults                  inject faults: {"mode": "status"|"drop_after_apply"|"latency",
                                 "status": 503, "retry_after": 2, "latency_ms": 500,
                                 "count": 3, "match": "INV-"}
  POST /_reset                   forget everything
State is journalled to <state-dir>/echo.jsonl and replayed on start, so it survives a restart.
"""

from __future__ import annotations

import argparse
import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, unquote, urlparse


class EchoState:
    def __init__(self, journal: Path | None) -> None:
        self.lock = threading.Lock()
        self.journal = journal
        self.reset(write=False)
        if journal is not None and journal.exists():
            for line in journal.read_text().splitlines():
                if line.strip():
                    self.apply(json.loads(line), write=False)

    def reset(self, *, write: bool = True) -> None:
        self.records: dict[str, dict[str, Any]] = {}
        self.creates: dict[str, int] = {}
        self.updates = 0
        self.changes: list[dict[str, Any]] = []
        self.faults: list[dict[str, Any]] = []
        self.calls: list[dict[str, str]] = []
        self.next_id = 1
        if write and self.journal is not None:
            self.journal.write_text("")

    def apply(self, entry: dict[str, Any], *, write: bool = True) -> dict[str, Any] | None:
        """Apply one journal entry; the journal is the state."""
        if entry["op"] == "put":
            ref = f"{entry['entity']}/{entry['key']}"
            existing = self.records.get(ref)
            if existing is None:
                record = {
                    "id": f"ECHO-{self.next_id}",
                    "entity": entry["entity"],
                    "key": entry["key"],
                    "created_at": entry["at"],
                }
                self.next_id += 1
                self.creates[ref] = self.creates.get(ref, 0) + 1
            else:
                record = existing
                self.updates += 1
            record["fields"] = entry["fields"]
            record["updated_at"] = entry["at"]
            self.records[ref] = record
            result = dict(record, created=existing is None)
        elif entry["op"] == "change":
            change = dict(entry["change"], id=len(self.changes) + 1)
            self.changes.append(change)
            result = change
        else:
            raise ValueError(f"unknown journal op {entry['op']!r}")
        if write and self.journal is not None:
            with self.journal.open("a") as fh:
                fh.write(json.dumps(entry) + "\n")
        return result

    def take_fault(self, path: str) -> dict[str, Any] | None:
        for fault in self.faults:
            if fault.get("match", "") in path and fault.get("count", 1) > 0:
                fault["count"] = fault.get("count", 1) - 1
                return dict(fault)
        return None


def make_handler(state: EchoState, token: str) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"
        # Headers and body are separate writes: without this each answer waits on delayed ACKs.
        disable_nagle_algorithm = True

        def log_message(self, format: str, *args: Any) -> None:  # quiet by default
            return

        def _send(self, status: int, body: Any, headers: dict[str, str] | None = None) -> None:
            data = json.dumps(body).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            for name, value in (headers or {}).items():
                self.send_header(name, value)
            self.end_headers()
            self.wfile.write(data)

        def _body(self) -> Any:
            length = int(self.headers.get("Content-Length") or 0)
            raw = self.rfile.read(length) if length else b""
            return json.loads(raw) if raw else None

        def _authorised(self) -> bool:
            if self.headers.get("Authorization") == f"Bearer {token}":
                call = {"method": self.command, "path": self.path, "traceparent": self.headers.get("traceparent", "")}
                with state.lock:
                    state.calls = [*state.calls[-999:], call]
                return True
            self._send(401, {"error": "invalid_token", "message": "a valid bearer token is required"})
            return False

        def _record_path(self, path: str) -> tuple[str, str] | None:
            parts = path.split("/")
            if len(parts) == 4 and parts[1] == "records" and parts[2] and parts[3]:
                return unquote(parts[2]), unquote(parts[3])
            return None

        def _fault(self, path: str) -> tuple[bool, dict[str, Any] | None]:
            """Apply an injected fault. Returns (answered, fault)."""
            with state.lock:
                fault = state.take_fault(path)
            if fault is None:
                return False, None
            if fault.get("latency_ms"):
                time.sleep(fault["latency_ms"] / 1000)
            if fault.get("mode") == "status":
                headers = {"Retry-After": str(fault["retry_after"])} if fault.get("retry_after") is not None else {}
                self._send(fault.get("status", 503), {"error": "injected", "status": fault.get("status", 503)}, headers)
                return True, fault
            return False, fault

        def do_GET(self) -> None:
            url = urlparse(self.path)
            if url.path == "/_stats":
                with state.lock:
                    self._send(200, {"creates": state.creates, "updates": state.updates, "records": len(state.records)})
                return
            if url.path == "/_calls":
                with state.lock:
                    self._send(200, {"calls": state.calls})
                return
            if url.path == "/_records":
                with state.lock:
                    self._send(200, {"records": list(state.records.values())})
                return
            if not self._authorised():
                return
            answered, _ = self._fault(url.path)
            if answered:
                return
            if url.path == "/changes":
                after = int(parse_qs(url.query).get("after", ["0"])[0] or 0)
                with state.lock:
                    batch = [c for c in state.changes if c["id"] > after][:100]
                self._send(200, {"changes": batch, "next": batch[-1]["id"] if batch else after})
                return
            ref = self._record_path(url.path)
            if ref is None:
                self._send(404, {"error": "not_found"})
                return
            with state.lock:
                record = state.records.get(f"{ref[0]}/{ref[1]}")
            if record is None:
                self._send(404, {"error": "not_found", "message": f"no {ref[0]} with key {ref[1]}"})
            else:
                self._send(200, record)

        def do_PUT(self) -> None:
            url = urlparse(self.path)
            if not self._authorised():
                return
            try:
                fields = self._body()
            except ValueError:
                self._send(400, {"error": "invalid_json"})
                return
            answered, fault = self._fault(url.path)
            if answered:
                return
            ref = self._record_path(url.path)
            if ref is None or not isinstance(fields, dict):
                self._send(400, {"error": "bad_request", "message": "PUT /records/<entity>/<key> with a JSON object"})
                return
            with state.lock:
                entry = {"op": "put", "entity": ref[0], "key": ref[1], "fields": fields, "at": time.time()}
                result = state.apply(entry)
            if fault is not None and fault.get("mode") == "drop_after_apply":
                # The write is applied; the caller never hears so. Close without an answer.
                self.close_connection = True
                self.wfile.flush()
                self.connection.close()
                return
            self._send(201 if result["created"] else 200, result)

        def do_POST(self) -> None:
            url = urlparse(self.path)
            body = self._body() or {}
            if url.path == "/_faults":
                with state.lock:
                    state.faults.append(body)
                self._send(200, {"faults": len(state.faults)})
            elif url.path == "/_reset":
                with state.lock:
                    state.reset()
                self._send(200, {"reset": True})
            elif url.path == "/_changes":
                with state.lock:
                    change = state.apply({"op": "change", "change": body})
                self._send(201, change)
            else:
                self._send(404, {"error": "not_found"})

    return Handler


def serve(*, port: int, token: str, state_dir: Path | None, host: str = "127.0.0.1") -> None:
    journal = None
    if state_dir is not None:
        state_dir.mkdir(parents=True, exist_ok=True)
        journal = state_dir / "echo.jsonl"
    state = EchoState(journal)
    server = ThreadingHTTPServer((host, port), make_handler(state, token))
    server.daemon_threads = True
    print(f"echo target listening on http://{host}:{port}", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="pscsync echo target")
    parser.add_argument("--port", type=int, default=8790)
    parser.add_argument("--token", default="sandbox-token")
    parser.add_argument("--state-dir", type=Path, default=None)
    args = parser.parse_args(argv)
    serve(port=args.port, token=args.token, state_dir=args.state_dir)


if __name__ == "__main__":
    main()
