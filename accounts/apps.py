from __future__ import annotations

from django.apps import AppConfig


class AccountsConfig(AppConfig):
    name = "accounts"
    verbose_name = "Sign-in, second factor and sessions"

    def ready(self) -> None:
        from accounts import checks, signals  # noqa: F401  (registers checks and signal handlers)
