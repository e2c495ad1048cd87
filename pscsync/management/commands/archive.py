"""python manage.py archive: the bodies of finished handoffs past their entity's retention.

    archive --list                       archives made, and months now due
    archive --due                        archive every month past its entity's retention
    archive --entity us --month 2025-10  archive one month of one entity (refused within retention)
    archive --verify 12                  check archive 12's files against its manifest
    archive --restore 12                 write archive 12's bodies back (refused if a file changed)
    archive --entity us --retention 24   keep the US entity's bodies 24 months (audited)
    archive --partitions                 make the coming months' partitions; list them
    archive --drop-attempts 2025-10      drop October 2025's attempts partition (all archived)
    archive --audit-month 2024-10        move October 2024's audit trail to a file, drop its partition

Dropping partitions needs the tables' owner (pscsync.partitions).

pscsync.archive says what moves and what stays; docs/operations.md, "Retention and archives"."""

from __future__ import annotations

from django.core.management.base import BaseCommand, CommandError, CommandParser

from pscsync.archive import (
    ArchiveRefused,
    Month,
    archive_due,
    archive_month,
    archive_restore,
    archive_verify,
    archives_due,
    retention_set,
)
from pscsync.models import Archive, LegalEntity
from pscsync.partitions import (
    TABLES,
    attempts_drop,
    audit_month_archive,
    months_drop_due,
    partition_months,
    partitioned,
    partitions_ensure,
)

ACTOR = "system:manage.py archive"


class Command(BaseCommand):
    help = "Archive (or restore) the bodies of finished handoffs past their legal entity's retention."

    def add_arguments(self, parser: CommandParser) -> None:
        what = parser.add_mutually_exclusive_group(required=True)
        what.add_argument("--list", action="store_true", help="archives made, and months now due")
        what.add_argument("--due", action="store_true", help="archive every month past its entity's retention")
        what.add_argument("--month", help="YYYY-MM: archive this month of --entity")
        what.add_argument("--verify", type=int, metavar="ID", help="check an archive's files against its manifest")
        what.add_argument("--restore", type=int, metavar="ID", help="write an archive's bodies back")
        what.add_argument("--retention", type=int, metavar="MONTHS", help="set --entity's retention (audited)")
        what.add_argument("--partitions", action="store_true", help="make the coming months' partitions; list them")
        what.add_argument("--drop-attempts", metavar="YYYY-MM", help="drop a month's attempts partition")
        what.add_argument("--audit-month", metavar="YYYY-MM", help="move a month of the audit trail to a file")
        parser.add_argument("--entity", default="", help="legal entity code (with --month)")

    def handle(self, *args: object, **options: object) -> None:
        try:
            self._handle(options)
        except ArchiveRefused as refused:
            raise CommandError(str(refused)) from None

    def _handle(self, options: dict[str, object]) -> None:
        if options["list"]:
            for a in Archive.objects.select_related("legal_entity"):
                state = f"restored {a.restored_at:%-d %B %Y}" if a.restored_at else "archived"
                self.stdout.write(f"#{a.pk}  {a}: {a.handoffs:,} handoffs, {state}  ({a.directory})")
            for entity, month in archives_due():
                self.stdout.write(f"due: {entity.name} {month.label}")
            return
        if options["due"]:
            made = archive_due(actor_label=ACTOR)
            for a in made:
                self.stdout.write(f"archived {a}: {a.handoffs:,} handoffs into {a.directory}")
            self.stdout.write(f"{len(made)} month(s) archived")
            for kind in ("attempts", "events"):
                for month, rows in months_drop_due(kind, actor_label=ACTOR):
                    self.stdout.write(f"dropped the {kind} partition of {month.label}: {rows:,} rows")
            return
        if options["partitions"]:
            for name in partitions_ensure():
                self.stdout.write(f"created {name}")
            for table in TABLES if partitioned() else ():
                months = sorted(partition_months(table), key=lambda m: m.first)
                self.stdout.write(f"{table}: " + ", ".join(f"{m.first:%Y-%m}" for m in months) + " and a default")
            return
        if options["drop_attempts"]:
            month = Month.parse(str(options["drop_attempts"]))
            rows = attempts_drop(month=month, actor=None, actor_label=ACTOR)
            self.stdout.write(f"dropped the attempts partition of {month.label}: {rows:,} rows")
            return
        if options["audit_month"]:
            sealed = audit_month_archive(month=Month.parse(str(options["audit_month"])), actor=None, actor_label=ACTOR)
            self.stdout.write(f"archived {sealed}: {sealed.entries:,} entries into {sealed.directory}")
            return
        if options["month"] or options["retention"] is not None:
            found = LegalEntity.objects.filter(code=str(options["entity"] or "")).first()
            if found is None:
                raise CommandError("--month and --retention need --entity with a legal entity's code (e.g. us)")
            if options["retention"] is not None:
                retention_set(entity=found, months=int(str(options["retention"])), actor=None, actor_label=ACTOR)
                self.stdout.write(f"{found.name} keeps finished handoffs' bodies {found.retention_months} months")
                return
            a = archive_month(entity=found, month=Month.parse(str(options["month"])), actor=None, actor_label=ACTOR)
            self.stdout.write(f"archived {a}: {a.handoffs:,} handoffs into {a.directory}")
            return
        pk = int(str(options["verify"] or options["restore"]))
        archive = Archive.objects.filter(pk=pk).first()
        if archive is None:
            raise CommandError(f"there is no archive #{pk} (see --list)")
        if options["verify"]:
            problems = archive_verify(archive)
            if problems:
                raise CommandError(f"{archive}: " + "; ".join(problems))
            self.stdout.write(f"{archive}: every file matches its manifest")
            return
        rows = archive_restore(archive=archive, actor=None, actor_label=ACTOR)
        self.stdout.write(f"restored {archive}: {rows:,} rows")
