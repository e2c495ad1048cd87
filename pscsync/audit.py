"""The audit trail: every human action and configuration change, with who, when, before, after."""

from __future__ import annotations

from typing import Any

from django.contrib.auth.models import AbstractBaseUser
from django.db.models import Model

from pscsync import clock
from pscsync.models import AuditEntry, LegalEntity


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
    return AuditEntry.objects.create(
        created_at=clock.now(),
        actor=actor if actor is not None and actor.is_authenticated else None,
        actor_label=actor_label or (actor.get_username() if actor is not None else "system"),
        action=action,
        object_type=obj._meta.label_lower,
        object_id=str(obj.pk),
        object_repr=str(obj)[:200],
        legal_entity=legal_entity,
        before=before or {},
        after=after or {},
        comment=comment,
        remote_addr=remote_addr,
    )
