"""Re-seal every connection's credentials with the current key (the first in PSCSYNC_CREDENTIALS_KEYS).

Key rotation, step by step (docs/security.md): put the new key first and keep the old one after
it; deploy; run this command; check it reports 0 rows left on old keys; remove the old key.
"""

from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand, CommandError
from django.db import transaction

from connectors.models import Connection
from pscsync import crypto
from pscsync.audit import audit_record


class Command(BaseCommand):
    help = "Re-encrypt connector credentials with the current credentials key."

    def add_arguments(self, parser: Any) -> None:
        parser.add_argument("--check", action="store_true", help="Only report rows not on the current key.")

    def handle(self, *args: Any, check: bool, **options: Any) -> None:
        current = crypto.current_key_id()
        stale = Connection.objects.exclude(credentials_sealed=b"").exclude(credentials_key_id=current)
        if check:
            count = stale.count()
            self.stdout.write(f"{count} connection(s) sealed with a key other than {current}")
            if count:
                raise CommandError("re-encryption needed: run reencrypt_credentials")
            return
        done = 0
        for pk in stale.values_list("pk", flat=True):
            with transaction.atomic():
                connection = Connection.objects.select_for_update().get(pk=pk)
                old_key = connection.credentials_key_id
                if old_key == current:
                    continue
                try:
                    data = connection.credentials()
                except crypto.CredentialsUnreadable as exc:
                    raise CommandError(f"{connection.slug}: {exc}") from None
                connection.set_credentials(data)
                connection.save(update_fields=["credentials_key_id", "credentials_sealed", "updated_at"])
                audit_record(
                    actor=None,
                    actor_label="system:reencrypt_credentials",
                    action="connection.credentials_reencrypted",
                    obj=connection,
                    before={"key_id": old_key},
                    after={"key_id": current},
                )
                done += 1
        self.stdout.write(f"re-encrypted {done} connection(s) with key {current}")
