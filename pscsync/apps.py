from __future__ import annotations

from django.apps import AppConfig
from django.db.models.signals import post_migrate


class PscsyncConfig(AppConfig):
    name = "pscsync"
    verbose_name = "Sync engine"

    def ready(self) -> None:
        from pscsync import (
            checks,  # noqa: F401  (registers system checks)
            ledger_days,
        )
        from pscsync.access import ensure_roles

        ledger_days.connect()

        # Framework glue: the role groups exist once the permissions do, on every migrate.
        post_migrate.connect(lambda **kwargs: ensure_roles(), sender=self, weak=False)
