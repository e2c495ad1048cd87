"""The live stack of tests/integration, for the tests that must run last."""

from tests.integration.conftest import live, stack  # noqa: F401
