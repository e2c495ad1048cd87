"""Vendor sandboxes: local simulators of each vendor's API, each its own process.

Nothing of pscsync imports these modules except the `sandbox` management command; they import
nothing of pscsync. Each entry: the module that runs it (it has `serve(port=, state_dir=, ...)`)
and its default port.
"""

from __future__ import annotations

import os

SANDBOXES: dict[str, tuple[str, int]] = {
    "echo": ("connectors.sandboxes.echo", 8790),
    "salesforce": ("connectors.sandboxes.salesforce", 8791),
    "kantata": ("connectors.sandboxes.kantata", 8792),
    "netsuite": ("connectors.sandboxes.netsuite", 8793),
    "businesscentral": ("connectors.sandboxes.businesscentral", 8794),
}


def sandbox_port(name: str) -> int:
    """The sandbox's port: its default plus PSCSYNC_SANDBOX_PORT_OFFSET (0 unless set), so a second
    demo on the same machine can run its own sandboxes beside the first."""
    return SANDBOXES[name][1] + int(os.environ.get("PSCSYNC_SANDBOX_PORT_OFFSET", "0") or 0)


def sandbox_url(name: str) -> str:
    return f"http://127.0.0.1:{sandbox_port(name)}"
