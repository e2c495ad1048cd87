"""Contract-test fixtures: each vendor sandbox started as its own process over real HTTP."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from tests.helpers import PYTHON, ROOT, Process, free_port, wait_for_port


@dataclass
class RunningSandbox:
    name: str
    port: int
    process: Process

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def reset(self) -> None:
        httpx.post(f"{self.url}/_sandbox/reset", timeout=5).raise_for_status()

    def fault(self, **rule: object) -> None:
        httpx.post(f"{self.url}/_sandbox/faults", json=rule, timeout=5).raise_for_status()

    def clear_faults(self) -> None:
        httpx.delete(f"{self.url}/_sandbox/faults", timeout=5).raise_for_status()

    def journal(self) -> dict:
        return httpx.get(f"{self.url}/_sandbox/journal", timeout=5).json()

    def restart(self) -> None:
        self.process.stop()
        self.process.start()
        wait_for_port(self.port)


def start_sandbox(name: str, state_dir: Path) -> RunningSandbox:
    port = free_port()
    process = Process(
        f"sandbox-{name}",
        [PYTHON, str(ROOT / "manage.py"), "sandbox", name, "--port", str(port), "--state-dir", str(state_dir)],
        dict(os.environ),
        ROOT / "var" / "test-logs" / f"sandbox-{name}-{port}.log",
    )
    process.start()
    wait_for_port(port)
    return RunningSandbox(name=name, port=port, process=process)


@pytest.fixture(scope="session")
def sandbox_factory(tmp_path_factory):
    """Start a named sandbox once per session: sandbox_factory("netsuite")."""
    running: dict[str, RunningSandbox] = {}

    def get(name: str) -> RunningSandbox:
        if name not in running:
            running[name] = start_sandbox(name, tmp_path_factory.mktemp(f"sandbox-{name}"))
        sandbox = running[name]
        sandbox.reset()
        return sandbox

    yield get
    for sandbox in running.values():
        sandbox.process.stop()
