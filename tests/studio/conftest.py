"""Studio tests use the firm on the sandboxes (tests/flows) and the browser (tests/test_browser)."""

from tests.connectors.conftest import sandbox_factory  # noqa: F401
from tests.flows.conftest import firm  # noqa: F401
from tests.test_browser import page  # noqa: F401
