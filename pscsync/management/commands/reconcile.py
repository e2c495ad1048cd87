"""python manage.py reconcile [--entity us] [--period 2026-10] [--after-backlog 600]: run
reconciliation now and print, per entity and comparison, how many subjects were checked, matched,
and the mismatches by cause. `--after-backlog N` first waits up to N seconds for no handoff to be
pending or running (the demo, after its history: a record still queued is not a mismatch)."""

from __future__ import annotations

import time

from django.core.management.base import BaseCommand, CommandError, CommandParser

from pscsync.models import Handoff
from pscsync.reconciliation.services import reconcile


class Command(BaseCommand):
    help = "Reconcile CRM, PSA and ERP per legal entity and print a summary."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--entity", default="", help="legal entity code (default: every entity)")
        parser.add_argument("--period", default="", help="YYYY-MM: only this month's billed time and revenue")
        parser.add_argument(
            "--after-backlog",
            type=int,
            default=0,
            help="first wait up to this many seconds until no handoff is pending or running",
        )

    def handle(self, *args: object, **options: object) -> None:
        period = str(options["period"] or "")
        if period and (len(period) != 7 or period[4] != "-" or not (period[:4] + period[5:]).isdigit()):
            raise CommandError(f"--period must look like 2026-10, not {period!r}")
        deadline = time.monotonic() + int(str(options["after_backlog"] or 0))
        queued = Handoff.objects.filter(status__in=[Handoff.Status.PENDING, Handoff.Status.RUNNING])
        while time.monotonic() < deadline and queued.exists():
            time.sleep(2)
        try:
            runs = reconcile(entity=str(options["entity"] or "") or None, period=period)
        except LookupError as exc:
            raise CommandError(str(exc)) from None
        header = f"{'entity':<8} {'comparison':<12} {'checked':>7} {'matched':>7} {'cleared':>7}  mismatches by cause"
        self.stdout.write(header)
        self.stdout.write("-" * len(header))
        for run in runs:
            code = run.legal_entity.code
            if run.status != "complete":
                self.stdout.write(f"{code:<8} {run.status}: {run.error}")
                continue
            for comparison, figures in run.summary.items():
                causes = ", ".join(f"{c} {n}" for c, n in figures["mismatches"].items()) or "none"
                self.stdout.write(
                    f"{code:<8} {comparison:<12} {figures['checked']:>7} {figures['matched']:>7} "
                    f"{figures['cleared']:>7}  {causes}"
                )
            self.stdout.write(f"{code:<8} complete in {run.duration_ms} ms")
