"""Verify the audit trail's keyed hash chain and name every broken row."""

from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand, CommandError

from pscsync.audit import audit_verify


class Command(BaseCommand):
    help = "Verify the audit trail's keyed hash chain; exit 1 naming every broken row."

    def handle(self, *args: Any, **options: Any) -> None:
        report = audit_verify()
        if report.unkeyed:
            self.stdout.write(
                f"{report.unkeyed} entries predate the keyed chain: checked with a plain hash, "
                "which someone with write access could recompute"
            )
        if report.breaks:
            for entry, why in report.breaks:
                self.stderr.write(
                    f"entry {entry.pk} ({entry.created_at:%Y-%m-%d %H:%M:%S} {entry.actor_label} {entry.action} "
                    f"{entry.object_type}:{entry.object_id}): {why}"
                )
            first = report.breaks[0][0]
            raise CommandError(
                f"audit chain broken at entry {first.pk}: {len(report.breaks)} problem(s) in "
                f"{report.checked} entries (listed above)"
            )
        archived = f", and {report.archived} in months moved to files (their boundary hashes match)"
        self.stdout.write(f"audit chain intact: {report.checked} entries" + (archived if report.archived else ""))
