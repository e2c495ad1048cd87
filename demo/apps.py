from __future__ import annotations

from django.apps import AppConfig


class DemoConfig(AppConfig):
    """No models: the demo's management commands (demo_seed, demo_subscribe, demo_traffic,
    simulate) and the firm's connections. The engine reaches the demo's sandboxes over HTTP."""

    name = "demo"
    verbose_name = "Demo firm"
