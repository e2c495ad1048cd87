"""Vendor sandboxes: local simulators of each vendor's API, each its own process.

Nothing of pscsync imports these modules except the `sandbox` command (manage.py hands it to
`main` before loading any settings); they import nothing of pscsync. The engine reaches them over
HTTP at settings.SANDBOX_URLS. Each entry: the module that runs it (it has `serve(port=, state_dir=, ...)`)
and its default port.
"""

from __future__ import annotations

import argparse
import importlib
import os
from pathlib import Path
from typing import Any

SANDBOXES: dict[str, tuple[str, int]] = {
    "echo": ("connectors.sandboxes.echo", 8790),
    "salesforce": ("connectors.sandboxes.salesforce", 8791),
    "kantata": ("connectors.sandboxes.kantata", 8792),
    "netsuite": ("connectors.sandboxes.netsuite", 8793),
    "businesscentral": ("connectors.sandboxes.businesscentral", 8794),
    "dynamicsfinance": ("connectors.sandboxes.dynamicsfinance", 8795),
    # A second Kantata account (the German entity's): the same simulator with its own store, as
    # one firm's two Kantata subscriptions are two accounts that see nothing of each other.
    "kantata-de": ("connectors.sandboxes.kantata", 8796),
}


def sandbox_port(name: str) -> int:
    """The sandbox's port: its default plus PSCSYNC_SANDBOX_PORT_OFFSET (0 unless set), so a second
    demo on the same machine can run its own sandboxes beside the first."""
    return SANDBOXES[name][1] + int(os.environ.get("PSCSYNC_SANDBOX_PORT_OFFSET", "0") or 0)


def sandbox_url(name: str) -> str:
    return f"http://127.0.0.1:{sandbox_port(name)}"


def sandbox_serve(*, name: str, port: int | None = None, state_dir: Path | None = None, token: str = "") -> None:
    """Run one sandbox in this process until stopped. Its state lives in `state_dir` (default:
    <PSCSYNC_VAR_DIR or ./var>/sandboxes/<name>). Needs nothing of pscsync: no settings, no key."""
    module_name, _ = SANDBOXES[name]
    module = importlib.import_module(module_name)
    var_dir = Path(os.environ.get("PSCSYNC_VAR_DIR") or Path(__file__).resolve().parents[2] / "var")
    kwargs: dict[str, Any] = {
        "port": port or sandbox_port(name),
        "state_dir": state_dir or var_dir / "sandboxes" / name,
    }
    if name == "echo":
        kwargs["token"] = token or "sandbox-token"
    if name == "kantata-de":
        kwargs["second_account"] = True
    module.serve(**kwargs)


def main(argv: list[str]) -> None:
    """`python manage.py sandbox <name> [--port N] [--state-dir DIR] [--token T]` without Django:
    manage.py hands the command here before loading settings, so a fresh machine (no SECRET_KEY,
    no database) can start a sandbox exactly as the README says."""
    parser = argparse.ArgumentParser(prog="manage.py sandbox", description="Run a vendor sandbox.")
    parser.add_argument("name", choices=sorted(SANDBOXES))
    parser.add_argument("--port", type=int, default=None)
    parser.add_argument("--state-dir", type=Path, default=None)
    parser.add_argument("--token", default="sandbox-token", help="echo only: the bearer token it accepts")
    args = parser.parse_args(argv)
    sandbox_serve(name=args.name, port=args.port, state_dir=args.state_dir, token=args.token)
