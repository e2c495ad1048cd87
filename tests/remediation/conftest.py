"""The workbench's tests use the flows' firm: the five connections on the real sandboxes."""

from tests.connectors.conftest import sandbox_factory  # noqa: F401
from tests.flows.conftest import firm  # noqa: F401
