"""The audit trail: every human action and configuration change, with who, when, before, after.

Append-only (the model refuses updates; PostgreSQL refuses UPDATE, DELETE and TRUNCATE by
trigger, and the app's own database role may only SELECT and INSERT: `manage.py audit_db_roles`)
and chained: each entry stores the previous entry's hash and an HMAC-SHA256 over its own content
and that hash, keyed with PSCSYNC_AUDIT_KEYS (outside the database, rotatable: each row names its
key). Someone who can write the table but does not hold the key cannot re-chain a rewritten row,
so `manage.py audit_verify` names every row that was changed, deleted or slipped in.

Every row goes through `audit_append`, including sign-in attempts for accounts that do not exist;
each committed row is also copied to the external audit log (`_ship`).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import logging
from dataclasses import dataclass, field
from typing import Any

from django.conf import settings
from django.contrib.auth.models import User
from django.core.exceptions import ImproperlyConfigured
from django.db import connection, transaction
from django.db.models import Model

from pscsync import clock
from pscsync.models import AuditArchive, AuditEntry, LegalEntity

_external = logging.getLogger("pscsync.audit")

# One chain for the whole table: writers queue on this lock for the few microseconds of an insert.
_CHAIN_LOCK = 0x70736373  # "pscs"


def _canonical(value: Any) -> Any:
    """What JSONField will give back: the value through a JSON round trip."""
    return json.loads(json.dumps(value or {}, default=str))


def audit_keys() -> list[tuple[str, bytes]]:
    """(key id, key) pairs from PSCSYNC_AUDIT_KEYS, "id:base64[,id:base64]": the first signs new
    rows, all verify. Unset, one key is derived from SECRET_KEY (id "sk"), and the deploy check
    warns (accounts.W004): rotating SECRET_KEY would then orphan the chain's older rows."""
    raw = settings.AUDIT_KEYS
    if not raw:
        derived = hmac.new(settings.SECRET_KEY.encode(), b"pscsync audit chain", hashlib.sha256).digest()
        return [("sk", derived)]
    keys = []
    for item in raw.split(","):
        key_id, _, encoded = item.strip().partition(":")
        try:
            key = base64.urlsafe_b64decode(encoded)
        except ValueError:
            key = b""
        if not key_id or len(key) < 32 or len(key_id) > 20:
            raise ImproperlyConfigured("PSCSYNC_AUDIT_KEYS entries must be '<id>:<at least 32 bytes, urlsafe base64>'")
        keys.append((key_id, key))
    return keys


def entry_hash(
    *,
    key: bytes | None,
    prev_hash: str,
    created_at: Any,
    actor_id: int | None,
    actor_label: str,
    action: str,
    object_type: str,
    object_id: str,
    object_repr: str,
    legal_entity_id: int | None,
    before: Any,
    after: Any,
    comment: str,
    remote_addr: str | None,
) -> str:
    content = {
        "prev": prev_hash,
        "at": created_at.isoformat(),
        "actor": actor_id,
        "actor_label": actor_label,
        "action": action,
        "object": [object_type, object_id, object_repr],
        "entity": legal_entity_id,
        "before": before,
        "after": after,
        "comment": comment,
        "addr": remote_addr,
    }
    message = json.dumps(content, sort_keys=True, separators=(",", ":")).encode()
    if key is None:  # rows written before the chain was keyed (migration 0007); verify only
        return hashlib.sha256(message).hexdigest()
    return hmac.new(key, message, hashlib.sha256).hexdigest()


def entry_hash_of(entry: AuditEntry, prev_hash: str, key: bytes | None = None) -> str:
    return entry_hash(
        key=key,
        prev_hash=prev_hash,
        created_at=entry.created_at,
        actor_id=entry.actor_id,
        actor_label=entry.actor_label,
        action=entry.action,
        object_type=entry.object_type,
        object_id=entry.object_id,
        object_repr=entry.object_repr,
        legal_entity_id=entry.legal_entity_id,
        before=entry.before,
        after=entry.after,
        comment=entry.comment,
        remote_addr=entry.remote_addr,
    )


def audit_record(
    *,
    actor: User | None,
    action: str,
    obj: Model,
    before: dict[str, Any] | None = None,
    after: dict[str, Any] | None = None,
    comment: str = "",
    legal_entity: LegalEntity | None = None,
    remote_addr: str | None = None,
    actor_label: str = "",
) -> AuditEntry:
    """Append one audit entry about a record. Call it inside the transaction that makes the change."""
    return audit_append(
        actor=actor,
        action=action,
        object_type=obj._meta.label_lower,
        object_id=str(obj.pk),
        object_repr=str(obj)[:200],
        before=before,
        after=after,
        comment=comment,
        legal_entity=legal_entity,
        remote_addr=remote_addr,
        actor_label=actor_label,
    )


def audit_append(
    *,
    actor: User | None,
    action: str,
    object_type: str,
    object_id: str = "",
    object_repr: str = "",
    before: dict[str, Any] | None = None,
    after: dict[str, Any] | None = None,
    comment: str = "",
    legal_entity: LegalEntity | None = None,
    remote_addr: str | None = None,
    actor_label: str = "",
) -> AuditEntry:
    """The one writer of audit rows: chain the row to the last one, key its hash, and copy it to
    the external log after commit. Also for events with no record (a sign-in for an unknown name)."""
    key_id, key = audit_keys()[0]
    with transaction.atomic():
        if connection.vendor == "postgresql":
            with connection.cursor() as cursor:
                cursor.execute("SELECT pg_advisory_xact_lock(%s)", [_CHAIN_LOCK])
        prev_hash = AuditEntry.objects.order_by("-pk").values_list("hash", flat=True).first() or ""
        entry = AuditEntry(
            created_at=clock.now(),
            actor=actor if actor is not None and actor.is_authenticated else None,
            actor_label=(actor_label or (actor.get_username() if actor is not None else "system"))[:150],
            action=action,
            object_type=object_type,
            object_id=object_id,
            object_repr=object_repr[:200],
            legal_entity=legal_entity,
            before=_canonical(before),
            after=_canonical(after),
            comment=comment,
            remote_addr=remote_addr,
            prev_hash=prev_hash,
            key_id=key_id,
        )
        entry.hash = entry_hash_of(entry, prev_hash, key)
        entry.save()
        transaction.on_commit(lambda: _ship(entry))
        return entry


def _ship(entry: AuditEntry) -> None:
    """Copy a committed entry to the external audit log (logger `pscsync.audit`, routed by
    PSCSYNC_AUDIT_LOG_FILE or the deployment's log shipper), so tampering with the table is
    also visible against a store the application cannot rewrite."""
    _external.info(
        json.dumps(
            {
                "id": entry.pk,
                "at": entry.created_at.isoformat(),
                "actor": entry.actor_label,
                "action": entry.action,
                "object": f"{entry.object_type}:{entry.object_id}",
                "entity": entry.legal_entity_id,
                "before": entry.before,
                "after": entry.after,
                "comment": entry.comment,
                "addr": entry.remote_addr,
                "prev_hash": entry.prev_hash,
                "hash": entry.hash,
                "key_id": entry.key_id,
            },
            sort_keys=True,
            default=str,
        )
    )


def _seals() -> dict[str, AuditArchive]:
    """Archived months by the link their first entry had. A seal counts only if the keyed chain
    announced it (an `audit.month_archived` entry with the same two hashes), or if that
    announcement was itself in a month since archived: a row slipped into the seal table by
    someone without the key does not hide a deleted stretch."""
    seals = list(AuditArchive.objects.all())
    announced = {
        (a.get("prev_hash"), a.get("last_hash"))
        for a in AuditEntry.objects.filter(action="audit.month_archived").values_list("after", flat=True)
    }
    months = {s.month for s in seals}
    return {
        s.prev_hash: s
        for s in seals
        if (s.prev_hash, s.last_hash) in announced or s.created_at.date().replace(day=1) in months
    }


@dataclass
class ChainReport:
    """What `audit_verify` found: every break, not only the first, and how many rows predate the key."""

    checked: int = 0
    breaks: list[tuple[AuditEntry, str]] = field(default_factory=list)
    unkeyed: int = 0
    # Entries of months moved to files (AuditArchive) whose gap the chain accounts for.
    archived: int = 0

    @property
    def intact(self) -> bool:
        return not self.breaks


def audit_verify() -> ChainReport:
    """Walk the chain in insertion order and check each row twice: its link (does it point at
    the row before it: else a row was deleted or slipped in) and its content (does its keyed
    hash still match: else it was changed). After a break the walk goes on from the row as it
    stands, so each damaged row is named once and later damage is still found."""
    keys = dict(audit_keys())
    report = ChainReport()
    prev = ""
    keyed_seen = False
    seals = _seals()
    for entry in AuditEntry.objects.order_by("pk").iterator(chunk_size=2000):
        report.checked += 1
        if entry.prev_hash != prev:
            # A month moved to a file leaves a gap from its first link to its last hash.
            link, skipped = prev, 0
            while entry.prev_hash != link and link in seals:
                skipped += seals[link].entries
                link = seals.pop(link).last_hash
            if entry.prev_hash == link:
                report.archived += skipped
            else:
                broken = "its link to the previous entry is broken (a row was deleted or inserted)"
                report.breaks.append((entry, broken))
        if entry.key_id:
            keyed_seen = True
            key = keys.get(entry.key_id)
            if key is None:
                report.breaks.append((entry, f"it is signed with audit key {entry.key_id!r}, which is not configured"))
            elif not hmac.compare_digest(entry.hash, entry_hash_of(entry, entry.prev_hash, key)):
                report.breaks.append((entry, "its content no longer matches its keyed hash (the row was changed)"))
        elif keyed_seen:
            # Unkeyed rows are only the history from before the key; one after them is forged.
            report.breaks.append((entry, "it carries no audit key although keyed entries came before it"))
        else:
            report.unkeyed += 1
            if entry.hash != entry_hash_of(entry, entry.prev_hash):
                report.breaks.append((entry, "its content no longer matches its hash (the row was changed)"))
        prev = entry.hash
    return report
