"""Vendor sandboxes: local simulators of each vendor's API, each its own process.

Nothing of pscsync imports these modules except the `sandbox` management command; they import
nothing of pscsync. Each entry: the module that runs it (it has `serve(port=, state_dir=, ...)`)
and its default port.
"""

from __future__ import annotations

SANDBOXES: dict[str, tuple[str, int]] = {
    "echo": ("connectors.sandboxes.echo", 8790),
    "salesforce": ("connectors.sandboxes.salesforce", 8791),
    "kantata": ("connectors.sandboxes.kantata", 8792),
    "netsuite": ("connectors.sandboxes.netsuite", 8793),
    "businesscentral": ("connectors.sandboxes.businesscentral", 8794),
}
