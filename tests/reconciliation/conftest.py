"""Reconciliation tests: the firm's five connections on real sandboxes (shared per session, reset
per test), seeded through the vendors' APIs as if the flows had run (docs/flows.md keys)."""

from __future__ import annotations

from tests.connectors.conftest import sandbox_factory  # noqa: F401  (the session fixture, shared)
from tests.flows.conftest import firm  # noqa: F401
