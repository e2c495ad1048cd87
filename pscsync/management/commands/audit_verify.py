"""Verify the audit trail's hash chain and name the first broken row."""

from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand, CommandError

from pscsync.audit import audit_verify


class Command(BaseCommand):
    help = "Verify the audit trail's hash chain; exit 1 naming the first broken row."

    def handle(self, *args: Any, **options: Any) -> None:
        checked, broken, why = audit_verify()
        if broken is not None:
            raise CommandError(
                f"audit chain broken at entry {broken.pk} ({broken.created_at:%Y-%m-%d %H:%M:%S} "
                f"{broken.actor_label} {broken.action} {broken.object_type}:{broken.object_id}): {why}; "
                f"{checked} entries before it are intact"
            )
        self.stdout.write(f"audit chain intact: {checked} entries")
