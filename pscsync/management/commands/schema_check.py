"""python manage.py schema_check [--connection SLUG] [--accept]: read each connection's vendor
schema for the records its published mappings write, record governance findings
(pscsync.governance), scan alerts when something is new, and print what was found in words."""

from __future__ import annotations

from django.core.management.base import BaseCommand, CommandError, CommandParser

from connectors.models import Connection
from pscsync.governance import schema_check


class Command(BaseCommand):
    help = "Compare every connection's vendor schema with its published mappings; record findings."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--connection", default="", help="one connection's slug (default: every active one)")
        parser.add_argument(
            "--accept",
            action="store_true",
            help="take the vendor's schema as it is now as the new baseline (closes type and required findings)",
        )

    def handle(self, *args: object, **options: object) -> None:
        slug = str(options["connection"] or "")
        connections = None
        if slug:
            connection = Connection.objects.filter(slug=slug).first()
            if connection is None:
                raise CommandError(f"no connection is called {slug!r}")
            connections = [connection]
        results = schema_check(connections=connections, accept=bool(options["accept"]))
        new = 0
        for result in results:
            records = len(result.records_checked)
            self.stdout.write(
                f"{result.connection.name}: {records} record{'s' if records != 1 else ''} checked, "
                f"{len(result.findings)} open finding{'s' if len(result.findings) != 1 else ''}, "
                f"{result.resolved} resolved"
            )
            for finding in result.findings:
                self.stdout.write(f"  {'new: ' if finding in result.new else ''}{finding.detail}")
            for error in result.errors:
                self.stdout.write(f"  not checked: {error}")
            new += len(result.new)
        if new:
            from pscsync.governance import alerts_for_new_findings

            queued = alerts_for_new_findings()
            self.stdout.write(f"{new} new finding{'s' if new != 1 else ''}; {queued} alert message(s) queued")
