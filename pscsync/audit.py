"""The audit trail: every human action and configuration change, with who, when, before, after.

Append-only (the model refuses updates; PostgreSQL refuses them by trigger) and hash-chained:
each entry stores the previous entry's hash and a SHA-256 over its own content and that hash, so
`manage.py audit_verify` finds the first row that was changed, deleted or slipped in.
"""

from __future__ import annotations

import hashlib
import json
import logging
from typing import Any

from django.contrib.auth.models import AbstractBaseUser
from django.db import connection, transaction
from django.db.models import Model

from pscsync import clock
from pscsync.models import AuditEntry, LegalEntity

_external = logging.getLogger("pscsync.audit")

# One chain for the whole table: writers queue on this lock for the few microseconds of an insert.
_CHAIN_LOCK = 0x70736373  # "pscs"


def _canonical(value: Any) -> Any:
    """What JSONField will give back: the value through a JSON round trip."""
    return json.loads(json.dumps(value or {}, default=str))


def entry_hash(
    *,
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
    return hashlib.sha256(json.dumps(content, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def entry_hash_of(entry: AuditEntry, prev_hash: str) -> str:
    return entry_hash(
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
    actor: AbstractBaseUser | None,
    action: str,
    obj: Model,
    before: dict[str, Any] | None = None,
    after: dict[str, Any] | None = None,
    comment: str = "",
    legal_entity: LegalEntity | None = None,
    remote_addr: str | None = None,
    actor_label: str = "",
) -> AuditEntry:
    """Append one audit entry. Call it inside the transaction that makes the change."""
    with transaction.atomic():
        if connection.vendor == "postgresql":
            with connection.cursor() as cursor:
                cursor.execute("SELECT pg_advisory_xact_lock(%s)", [_CHAIN_LOCK])
        prev_hash = AuditEntry.objects.order_by("-pk").values_list("hash", flat=True).first() or ""
        entry = AuditEntry(
            created_at=clock.now(),
            actor=actor if actor is not None and actor.is_authenticated else None,
            actor_label=actor_label or (actor.get_username() if actor is not None else "system"),
            action=action,
            object_type=obj._meta.label_lower,
            object_id=str(obj.pk),
            object_repr=str(obj)[:200],
            legal_entity=legal_entity,
            before=_canonical(before),
            after=_canonical(after),
            comment=comment,
            remote_addr=remote_addr,
            prev_hash=prev_hash,
        )
        entry.hash = entry_hash_of(entry, prev_hash)
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
            },
            sort_keys=True,
            default=str,
        )
    )


def audit_verify() -> tuple[int, AuditEntry | None, str]:
    """Walk the chain in insertion order. Returns (entries checked, first broken entry, why)."""
    prev = ""
    checked = 0
    for entry in AuditEntry.objects.order_by("pk").iterator(chunk_size=2000):
        if entry.prev_hash != prev:
            return checked, entry, "its link to the previous entry is broken (a row was deleted or inserted)"
        if entry.hash != entry_hash_of(entry, prev):
            return checked, entry, "its content no longer matches its hash (the row was changed)"
        prev = entry.hash
        checked += 1
    return checked, None, ""
