"""The demo firm (Northwind Consulting) and its simulator: a Django app of its own beside the
engine, never imported by it (docs/engine.md, "Map of the parts"). `python -m demo` is `make demo`."""
